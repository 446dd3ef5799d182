/**
 * Fail closed from the first second (issue 15 item 4), on network namespaces (root): a pod of an enrolled namespace
 * sends no packet uncaptured, whichever of the DaemonSet's CNI installer and agent starts first on a new node, after
 * an agent crash, and after a reboot; and a plugin that meets an agent of another socket protocol version says so.
 * The installer and the agent start as the rendered DaemonSet starts them (testbed/kube-cluster.ts), each when the
 * subtest says; pods are networked through the node's real conflist, ADD retried by the test as the kubelet retries.
 *
 * node2 goes first (agent, then plugin) and serves as the destination for node1, which goes through the rest in turn:
 * plugin first on a new node, an agent crash, a reboot, a protocol version skew.
 */
import { readdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { askAgent } from '../cni/index.js';
import { CNI_PROTOCOL_VERSION, CNI_SOCKET_NAME, ENROLLMENT_FILE_NAME, encodeCniMessage, type CniResponse } from '../core/cni/index.js';
import {
  captureDuring,
  curlFrom,
  ECHO_PORT,
  HTTP_PORT,
  inEnrolledSet,
  KubeCluster,
  readCniConfDir,
  startWorkload,
  Testbed,
  type PodSpec,
  type TestbedNode,
  type TestbedPod,
} from '../testbed/index.js';
import { holdConnection, within } from './mesh/hold.js';
import { needsTestbed, needsTools } from './prerequisites.js';

const unavailable = needsTestbed() || needsTools(['kubectl', 'tcpdump', 'ipset'], 'renders the manifests, captures the wire, reads the enrolled set');
const MESH = 'shop';
const PLAIN = 'plain';
const MESH_NAMESPACE = 'ambit-system';
/** How long the agent may take to capture a pod it learns of from the API (e2e-kubernetes holds it to a second too). */
const PROPAGATION_MS = 1000;
/** The DaemonSet's CNI error for "try again later", and for an agent that refuses. */
const TRY_AGAIN_LATER = 11;
const AGENT_REFUSED = 100;

interface CniFailure {
  cniError?: { code: number; msg: string; details?: string };
}

t.test('fail closed from the first second: the DaemonSet starting in either order, a crash, a reboot, a protocol skew', { skip: unavailable }, async (t) => {
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'], hostLink: true });
  t.teardown(() => tb.destroy());
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];
  const cluster = await KubeCluster.start(tb, {
    namespaces: { [MESH]: { 'ambit.dev/mode': 'enabled' }, [PLAIN]: {} },
    startDaemonSet: false,
  });
  t.teardown(() => cluster.close());

  const spec = (namespace: string, name: string): PodSpec => ({ namespace, serviceAccount: name });
  /** The runtime's ADD of a pod that must fail: resolves with its CNI error (undefined when the ADD succeeded). */
  const addFails = async (name: string, node: TestbedNode, namespace: string): Promise<CniFailure['cniError']> => {
    const outcome = await cluster.networkPod(name, node, spec(namespace, name)).then(
      () => undefined,
      (err: unknown) => err as CniFailure,
    );
    return outcome?.cniError;
  };
  /**
   * The runtime's ADD (again, after failures) of an enrolled pod, that must succeed with the pod captured before it
   * returns: its IP is in the enrolled set while the API still has none for it. Then its status and its application.
   */
  const startCaptured = async (t: Test, name: string, node: TestbedNode): Promise<TestbedPod> => {
    const pod = await cluster.networkPod(name, node, spec(MESH, name));
    t.ok(await inEnrolledSet(tb, node, pod.ip), `${name}: in ambit-pods-v4 as soon as ADD returns, before its status has an IP (its first packet is captured)`);
    cluster.reportPodIp(pod, spec(MESH, name));
    await startWorkload(tb, pod);
    return pod;
  };
  let requests = 0;
  /** A request from `from` to `to` with a fresh marker, tcpdump on `from`'s uplink: who answered, and what crossed. */
  const request = async (from: TestbedPod, to: TestbedPod) => {
    const marker = `marker-${process.pid}-${++requests}`;
    const { result, packets } = await captureDuring(from.node.netns, from.node.uplink, 'tcp', () =>
      curlFrom(tb, from, `http://${to.ip}:${HTTP_PORT}/`, ['-H', `x-marker: ${marker}`, '--max-time', '3']).then(
        (body) => (JSON.parse(body) as { pod: string }).pod,
        (err: unknown) => `failed: ${String(err)}`,
      ),
    );
    return { answeredBy: result, plaintext: packets.some((p) => p.payload.includes(marker)), hbone: packets.some((p) => p.dstPort === 15008 && p.payload.length > 0) };
  };
  const expectMeshed = async (t: Test, from: TestbedPod, to: TestbedPod) => {
    const outcome = await request(from, to);
    t.equal(outcome.answeredBy, to.name, `${from.name} -> ${to.name} is answered`);
    t.notOk(outcome.plaintext, `${from.name} -> ${to.name}: the request never crosses in plaintext`);
    t.ok(outcome.hbone, `${from.name} -> ${to.name}: it crosses as HBONE, to 15008`);
  };
  const pluginTypes = async (node: TestbedNode) => (await readCniConfDir(node.cniConfDir)).plugins.map((p) => p['type']);
  const enrollmentFile = (node: TestbedNode) => join(cluster.stateDir(node), ENROLLMENT_FILE_NAME);
  const exists = (file: string) => readFile(file).then(() => true, () => false);

  let server: TestbedPod;
  t.test('agent first, then plugin (node2): a pod that starts before the plugin is chained is captured once the agent learns its IP, and loses the connections it had; later pods go through ADD', async (t) => {
    await cluster.startAgent(node2);
    t.same(await pluginTypes(node2), [node2.cni], 'the installer has not run: no ambit-cni in the conflist');
    const db = await cluster.startPod('db', node2, spec(PLAIN, 'db'));

    const since = Date.now();
    server = await cluster.networkPod('server', node2, spec(MESH, 'server'));
    await startWorkload(tb, server);
    t.notOk(await inEnrolledSet(tb, node2, server.ip), 'no ADD reached the agent, and the API has no IP for the pod: not captured (the window the plugin exists to close)');
    const held = await holdConnection(tb, server, db.ip, ECHO_PORT);
    t.teardown(() => held.stop());
    t.equal(await held.poke(), 'echo', 'a connection it opened meanwhile carries data, in the clear');

    cluster.reportPodIp(server, spec(MESH, 'server'));
    const took = await within(PROPAGATION_MS, 'captured once its status has its IP', () => inEnrolledSet(tb, node2, server.ip));
    t.pass(`captured ${took} ms after the kubelet reported its IP (the agent's own pod watch)`);
    await cluster.waitForLog(node2, (r) => r.msg === 'tracked connections of pods that joined the mesh ended' && (r.pods as string[]).includes(server.ip) && Number(r.time) >= since);
    // The reset may already have come (the flow's next packet may be the peer's); else the next poke brings it.
    const ended = held.lines.includes('error ECONNRESET') ? 'error ECONNRESET' : await held.poke();
    t.equal(ended, 'error ECONNRESET', 'the connection it had is reset, not carried on in the clear');
    t.notOk(
      cluster.logs(node2).some((r) => typeof r.msg === 'string' && r.msg.startsWith('CNI ADD') && r.pod === `${MESH}/server`),
      'the agent never heard of it through ADD',
    );

    await cluster.startCniInstaller(node2);
    t.same(await pluginTypes(node2), [node2.cni, 'ambit-cni'], 'the installer chained ambit-cni last');
    await startCaptured(t, 'web', node2);
    await cluster.waitForLog(node2, (r) => r.msg === 'CNI ADD: pod enrolled, rules in place' && r.pod === `${MESH}/web`);
  });

  let client: TestbedPod;
  t.test('plugin first, agent not yet up (node1, a new node): every pod waits but kube-system\'s and the mesh\'s own; once the agent is up, the retried ADD captures the pod', async (t) => {
    await cluster.startCniInstaller(node1);
    const entry = (await readCniConfDir(node1.cniConfDir)).plugins.at(-1);
    t.match(entry, { type: 'ambit-cni', meshNamespace: MESH_NAMESPACE }, "chained, naming the DaemonSet's namespace");
    t.notOk(await exists(enrollmentFile(node1)), 'no agent has ever written the enrollment file on this node');

    const enrolled = await addFails('client', node1, MESH);
    t.equal(enrolled?.code, TRY_AGAIN_LATER, 'an enrolled pod fails ADD: try again later');
    t.match(enrolled?.msg, /^cannot tell whether pod shop\/client is in the mesh: the Ambit agent at .*cni\.sock did not answer \(ENOENT: no socket: the agent has not started on this node\) and .*enrollment\.json does not exist: no Ambit agent has read the cluster on this node yet/);
    const plain = await addFails('other', node1, PLAIN);
    t.equal(plain?.code, TRY_AGAIN_LATER, 'so does a pod of a namespace that is not enrolled: nobody on this node can tell yet');
    t.match(plain?.msg, /until this node's Ambit agent \(the DaemonSet's in ambit-system\) is up, only pods of ambit-system and kube-system start/, 'the message says which pods start and what they wait for');
    const dns = await cluster.networkPod('coredns', node1, spec('kube-system', 'coredns'));
    t.ok(dns.ip, 'a kube-system pod starts (the agent needs the cluster DNS to reach its controller)');
    const mesh = await cluster.networkPod('ambit-controller-1', node1, spec(MESH_NAMESPACE, 'ambit-controller'));
    t.ok(mesh.ip, "a pod of the mesh's own namespace starts (the controller, which the agent reads the cluster from)");

    await cluster.startAgent(node1);
    t.ok(await exists(enrollmentFile(node1)), 'the agent wrote the enrollment file at its first full sync');
    client = await startCaptured(t, 'client', node1);
    await expectMeshed(t, client, server);
    await expectMeshed(t, server, client);
    t.pass('and node2\'s pod, captured through the store, reaches it over mTLS too');
    const other = await cluster.networkPod('other', node1, spec(PLAIN, 'other'));
    t.notOk(await inEnrolledSet(tb, node1, other.ip), 'the retried pod outside the mesh starts, uncaptured');
  });

  t.test('agent crash (SIGKILL, node1): an enrolled pod\'s ADD fails while it is down, and succeeds once it is back', async (t) => {
    t.equal(await cluster.stopAgent(node1, 'SIGKILL'), null, 'killed');
    t.ok(await inEnrolledSet(tb, node1, client.ip), 'the rules stay in the kernel: its pods stay captured (and refused)');
    const failure = await addFails('after-crash', node1, MESH);
    t.equal(failure?.code, TRY_AGAIN_LATER, 'an enrolled pod fails ADD: try again later');
    t.match(failure?.msg, /^pod shop\/after-crash is in the mesh \(namespace shop is enrolled\) but the Ambit agent at .*cni\.sock did not answer: ECONNREFUSED/, 'the enrollment file says its namespace is enrolled; the dead agent left its socket');
    const plain = await cluster.networkPod('plain-after-crash', node1, spec(PLAIN, 'plain-after-crash'));
    t.ok(plain.ip, 'a pod outside the mesh starts');
    await cluster.startAgent(node1);
    await startCaptured(t, 'after-crash', node1);
  });

  t.test('reboot (node1): the run folder and the kernel state are gone, the state folder is not; enrolled pods wait for the DaemonSet, then start captured', async (t) => {
    const lost = await cluster.rebootNode(node1);
    t.ok(lost.some((pod) => pod.name === 'client'), 'the pods are gone with the boot');
    t.same(await readdir(cluster.runDir(node1)).catch(() => []), [], 'the run folder is empty: no socket, no record of CNI-reported pods');
    t.ok(await exists(enrollmentFile(node1)), 'the state folder kept the enrollment file');
    t.equal((await tb.exec(node1.netns, 'ipset', ['list', '-n'])).stdout.trim(), '', 'no ipset is left in the kernel');
    t.same(await pluginTypes(node1), [node1.cni, 'ambit-cni'], 'the conflist kept ambit-cni');

    // The kubelet starts the node's pods again before the DaemonSet's pod is back.
    const failure = await addFails('client', node1, MESH);
    t.equal(failure?.code, TRY_AGAIN_LATER, 'an enrolled pod fails ADD: try again later');
    t.match(failure?.msg, /^pod shop\/client is in the mesh \(namespace shop is enrolled\) but the Ambit agent at .*cni\.sock did not answer: ENOENT/, 'the enrollment file says its namespace is enrolled');
    const other = await cluster.networkPod('other', node1, spec(PLAIN, 'other'));
    t.ok(other.ip, 'a pod outside the mesh starts');

    await cluster.startCniInstaller(node1);
    await cluster.startAgent(node1);
    client = await startCaptured(t, 'client', node1);
    await expectMeshed(t, client, server);
  });

  t.test('socket protocol version skew: the agent refuses another version, naming its own; the plugin fails ADD naming both and saying what to do', async (t) => {
    const socket = join(cluster.runDir(node1), CNI_SOCKET_NAME);
    const other = CNI_PROTOCOL_VERSION + 1;
    const pod = { namespace: MESH, name: 'skew', containerId: 'skew-1', ips: ['10.244.1.250'] };
    const refusal = await askAgent(socket, { version: other, op: 'add', pod }, 5000);
    t.match(refusal, { ok: false, error: { code: 'unsupported-version', supportedVersions: [CNI_PROTOCOL_VERSION] } }, "the real agent, asked in another version by the plugin's own client");
    t.match(refusal.ok ? '' : refusal.error.message, `protocol version ${other} is not supported; this agent speaks ${CNI_PROTOCOL_VERSION}`);

    // An agent of another release on the node's socket: the runtime's ADD through the node's conflist and the real plugin.
    t.equal(await cluster.stopAgent(node1), 0, 'the agent stops cleanly');
    const skewed = await listenAsAgentOfVersion(socket, other);
    t.teardown(() => new Promise<void>((resolve) => skewed.close(() => resolve())));
    const failure = await addFails('skew', node1, MESH);
    t.equal(failure?.code, AGENT_REFUSED, 'ADD fails: the agent refused');
    t.match(
      failure?.msg,
      new RegExp(`^pod shop/skew cannot be enrolled: the Ambit agent on this node speaks CNI socket protocol version ${other} and this ambit-cni plugin version ${CNI_PROTOCOL_VERSION}, so they come from different Ambit releases; .*restart the ambit-agent pod on this node`),
      'the message names both versions and what to do',
    );
    t.match(failure?.details, `the agent speaks protocol versions ${other}, this plugin ${CNI_PROTOCOL_VERSION}`);
  });
});

/**
 * A stand-in agent that speaks only protocol `version`: every request, whatever its version, gets the refusal the real
 * agent gives a version it does not speak (agent/cni-server.ts), in `version`.
 */
async function listenAsAgentOfVersion(socketPath: string, version: number): Promise<net.Server> {
  const server = net.createServer((socket) => {
    let received = '';
    socket.setEncoding('utf8');
    socket.on('error', () => undefined);
    socket.on('data', (chunk: string) => {
      received += chunk;
      const newline = received.indexOf('\n');
      if (newline < 0) return;
      const asked = (JSON.parse(received.slice(0, newline)) as { version: number }).version;
      const response: CniResponse = {
        version,
        ok: false,
        error: { code: 'unsupported-version', message: `protocol version ${asked} is not supported; this agent speaks ${version}`, supportedVersions: [version] },
      };
      socket.end(encodeCniMessage(response));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  return server;
}
