/**
 * End to end on network namespaces (root): a peer node that goes silent. With an HBONE session from node1's agent
 * to node2's pooled, node2's port 15008 is blackholed (iptables DROP: no FIN, no RST, as a node that lost power or a
 * firewall that drops). New connections from a node1 pod must be failed by the agent at its own deadlines (the
 * CONNECT's answer, then the new session's handshake: 10 s each), with a reason, instead of hanging; and once the
 * DROP is gone a fresh session must carry them. The agents run with their default timings: what an operator would see.
 */
import t from 'tap';
import { HBONE_CONNECT_TIMEOUT_MS, HBONE_KEEPALIVE_TIMEOUT_MS, HBONE_RESPONSE_TIMEOUT_MS } from '../core/hbone/index.js';
import { HTTP_PORT, MeshCluster, Testbed, type TestbedNode } from '../testbed/index.js';
import { needsTestbed } from './prerequisites.js';

const unavailable = needsTestbed();
/** The issue's bound on how long a new connection toward a dead peer may hang: the agent's deadlines must be below it. */
const ISSUE_BOUND_MS = 15_000;
const AGENT_DEADLINE_MS = Math.max(HBONE_RESPONSE_TIMEOUT_MS, HBONE_CONNECT_TIMEOUT_MS);
/**
 * What proves that the agent failed a connection at its deadline: its log line with the reason, and curl seeing a
 * reset rather than its own --max-time. The wall-clock bound on top is the deadline with as much again for a loaded
 * 2-core machine (netns exec, curl's start, both agents' event loops), and curl's limit is above that: a connection
 * the agent left hanging fails the test by curl's timeout message and by the bound alike.
 */
const FAIL_WITHIN_MS = 2 * AGENT_DEADLINE_MS;
const CURL_MAX_TIME_S = (3 * FAIL_WITHIN_MS) / 1000;
/** The PING sent at the CONNECT's deadline goes unanswered for HBONE_KEEPALIVE_TIMEOUT_MS; thrice that, for the same machine. */
const DEAD_SESSION_WITHIN_MS = 3 * HBONE_KEEPALIVE_TIMEOUT_MS;

t.test('HBONE notices a dead peer node: new connections fail at the agent\'s deadlines, a fresh session follows', { skip: unavailable }, async (t) => {
  t.ok(AGENT_DEADLINE_MS < ISSUE_BOUND_MS, `the agent's deadlines (${AGENT_DEADLINE_MS} ms) are below the issue's bound (${ISSUE_BOUND_MS} ms)`);
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: 'bridge' });
  t.teardown(() => tb.destroy());
  const client = await tb.addPod('node1', 'client');
  const server = await tb.addPod('node2', 'server');
  const cluster = await MeshCluster.start(tb, {
    namespaces: { demo: { 'ambit.dev/mode': 'enabled' } },
    pods: {
      client: { namespace: 'demo', serviceAccount: 'client' },
      server: { namespace: 'demo', serviceAccount: 'server' },
    },
  });
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];
  const url = `http://${server.ip}:${HTTP_PORT}/`;
  const hbone = `${node2.ip}:15008`;

  /** The local ports of node1's established TCP connections to node2's HBONE listener: one per pooled session. */
  const sessions = async (node: TestbedNode): Promise<string[]> => {
    const { stdout } = await tb.exec(node.netns, 'ss', ['-tnH', 'state', 'established', 'dst', hbone]);
    return String(stdout).split('\n').filter(Boolean).map((line) => line.trim().split(/\s+/)[2] ?? '');
  };
  /** A request from the client pod: its failure (curl's message) and how long it took. */
  const attempt = async (): Promise<{ error: string | undefined; ms: number }> => {
    const started = Date.now();
    const error = await cluster.curl(client, url, ['--max-time', String(CURL_MAX_TIME_S)]).then(
      () => undefined,
      (err: unknown) => String((err as { stderr?: string }).stderr ?? err).trim(),
    );
    return { error, ms: Date.now() - started };
  };

  t.equal(JSON.parse(await cluster.curl(client, url)).pod, 'server', 'a first connection node1 → node2 pools a session');
  const pooled = await sessions(node1);
  t.equal(pooled.length, 1, `one HBONE session is open (${pooled.join(', ')})`);

  const drop = ['INPUT', '-p', 'tcp', '--dport', '15008', '-j', 'DROP'];
  await tb.exec(node2.netns, 'iptables', ['-I', ...drop]);
  let dropping = true;
  const undrop = async () => {
    if (!dropping) return;
    dropping = false;
    await tb.exec(node2.netns, 'iptables', ['-D', ...drop]);
  };
  t.teardown(undrop);

  const onPooled = await attempt();
  t.match(onPooled.error, /Connection reset by peer/, `a new connection over the pooled session is reset by the agent, not left to curl's timeout: ${onPooled.error}`);
  t.ok(onPooled.ms < FAIL_WITHIN_MS, `within ${FAIL_WITHIN_MS} ms: ${onPooled.ms} ms`);
  const timedOut = await cluster.waitForLog(node1, (r) => r.msg === 'connection refused' && r.reason === 'response_timeout');
  t.match(timedOut, { hbone, detail: new RegExp(`no answer within ${HBONE_RESPONSE_TIMEOUT_MS} ms; maybe the peer node is down, or a NetworkPolicy or firewall blocks HBONE port 15008`) }, 'the source agent says why');

  // The unanswered CONNECT made the agent PING the session; unanswered, the session is dropped.
  const dead = await cluster.waitForLog(node1, (r) => r.msg === 'HBONE connection closed' && r.reason === 'peer_unresponsive', DEAD_SESSION_WITHIN_MS);
  t.match(dead, { peer: hbone, detail: new RegExp(`no answer to a PING within ${HBONE_KEEPALIVE_TIMEOUT_MS} ms`) }, 'the dead session is closed and left the pool');

  const onFresh = await attempt();
  t.match(onFresh.error, /Connection reset by peer/, `with the peer still silent, a new session cannot be opened, and the agent says so: ${onFresh.error}`);
  t.ok(onFresh.ms < FAIL_WITHIN_MS, `within ${FAIL_WITHIN_MS} ms too: ${onFresh.ms} ms`);
  const unreachable = await cluster.waitForLog(node1, (r) => r.msg === 'connection refused' && r.reason === 'connect_failed');
  t.match(unreachable, { hbone, detail: new RegExp(`timed out after ${HBONE_CONNECT_TIMEOUT_MS} ms; maybe a NetworkPolicy or firewall blocks HBONE port 15008`) });

  await undrop();
  t.equal(JSON.parse(await cluster.curl(client, url)).pod, 'server', 'once the peer is back, connections succeed');
  const fresh = await sessions(node1);
  t.equal(fresh.length, 1, `over one session (${fresh.join(', ')})`);
  t.notOk(fresh.includes(pooled[0]!), 'a fresh one, not the session that went silent');
});
