/**
 * End to end on network namespaces (root): a peer node that goes silent. With an HBONE session from node1's agent
 * to node2's pooled, node2's port 15008 is blackholed (iptables DROP: no FIN, no RST, as a node that lost power or a
 * firewall that drops). New connections from a node1 pod must fail within 15 s with a reason, and once the DROP is
 * gone a fresh session must carry them. The agents run with their default timings: what an operator would see.
 */
import t from 'tap';
import { HTTP_PORT, MeshCluster } from './mesh/cluster.js';
import { Testbed, type TestbedNode } from './testbed/index.js';
import { needsTestbed } from './prerequisites.js';

const unavailable = needsTestbed();
/** The bound on how long a new connection toward a dead peer may hang. */
const FAIL_WITHIN_MS = 15_000;

t.test('HBONE notices a dead peer node: new connections fail within 15 s, a fresh session follows', { skip: unavailable }, async (t) => {
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
    const error = await cluster.curl(client, url, ['--max-time', '60']).then(
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
  t.ok(onPooled.error, `a new connection over the pooled session fails: ${onPooled.error}`);
  t.ok(onPooled.ms < FAIL_WITHIN_MS, `within ${FAIL_WITHIN_MS} ms: ${onPooled.ms} ms`);
  const timedOut = await cluster.waitForLog(node1, (r) => r.msg === 'connection refused' && r.reason === 'response_timeout');
  t.match(timedOut, { hbone, detail: /no answer within 10000 ms; maybe the peer node is down, or a NetworkPolicy or firewall blocks HBONE port 15008/ }, 'the source agent says why');

  // The unanswered CONNECT made the agent PING the session; unanswered, the session is dropped.
  const dead = await cluster.waitForLog(node1, (r) => r.msg === 'HBONE connection closed' && r.reason === 'peer_unresponsive', 10_000);
  t.match(dead, { peer: hbone, detail: /no answer to a PING within 5000 ms/ }, 'the dead session is closed and left the pool');

  const onFresh = await attempt();
  t.ok(onFresh.error, `with the peer still silent, a new session cannot be opened: ${onFresh.error}`);
  t.ok(onFresh.ms < FAIL_WITHIN_MS, `within ${FAIL_WITHIN_MS} ms too: ${onFresh.ms} ms`);
  const unreachable = await cluster.waitForLog(node1, (r) => r.msg === 'connection refused' && r.reason === 'connect_failed');
  t.match(unreachable, { hbone, detail: /timed out after 10000 ms; maybe a NetworkPolicy or firewall blocks HBONE port 15008/ });

  await undrop();
  t.equal(JSON.parse(await cluster.curl(client, url)).pod, 'server', 'once the peer is back, connections succeed');
  const fresh = await sessions(node1);
  t.equal(fresh.length, 1, `over one session (${fresh.join(', ')})`);
  t.notOk(fresh.includes(pooled[0]!), 'a fresh one, not the session that went silent');
});
