/**
 * `ambit uninstall` on the network-namespace testbed (root; issue 15): Ambit installed by `kubectl apply -k manifests/`
 * on a double that enforces RBAC, the testbed running what was applied (KubeCluster, install 'kubectl'), an enrolled
 * namespace with traffic over mTLS. The command marks the mesh as uninstalling (an annotation on the agents' ServiceAccount),
 * every node's CNI installer unchains the plugin and its agent removes every rule, ipset and file, and only then are
 * the objects deleted. A node that does not finish deletes nothing; a cancel puts the finished nodes back in the mesh.
 * `ambit uninstall --check`, run in each node's namespace on the node's folders, finds Ambit there before and nothing
 * after; a pod started afterwards in the labelled namespace is plain.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import { askAgent } from '../cni/agent-client.js';
import { CNI_PROTOCOL_VERSION, CNI_SOCKET_NAME } from '../core/cni/index.js';
import { AGENT_SERVICE_ACCOUNT_NAME, UNINSTALL_ANNOTATION } from '../core/enrollment/index.js';
import { CHECKOUT_DIR, CLI_PATH, curlFrom, HTTP_PORT, KubeCluster, parsePcap, readCniConfDir, startCapture, Testbed, type TestbedNode } from '../testbed/index.js';
import { within } from './mesh/hold.js';
import { needsTestbed, needsTools } from './prerequisites.js';

const unavailable = needsTestbed() || needsTools(['kubectl'], 'installs with kubectl apply -k');
const NAMESPACE = 'shop';

interface Checks {
  ok: boolean;
  checks: Array<{ id: string; ok: boolean; message: string; hint?: string }>;
}

t.test('ambit uninstall gives every node plain networking back before it deletes anything', { skip: unavailable }, async (t) => {
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'], hostLink: true });
  t.teardown(() => tb.destroy());
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];
  const cluster = await KubeCluster.start(tb, { namespaces: { [NAMESPACE]: { 'ambit.dev/mode': 'enabled' } }, install: 'kubectl' });
  t.teardown(() => cluster.close());
  const home = await mkdtemp(path.join(tmpdir(), 'ambit-uninstall-home-'));
  t.teardown(() => rm(home, { recursive: true, force: true }));
  const env = { HOME: home, KUBECONFIG: cluster.kubeconfig };
  const kubectl = (args: string[]) => execa('kubectl', args, { env, cwd: CHECKOUT_DIR });
  await kubectl(['apply', '-k', 'manifests/']);
  await cluster.installed();
  const client = await cluster.startPod('client', node1, { namespace: NAMESPACE, serviceAccount: 'client' });
  const server = await cluster.startPod('server', node2, { namespace: NAMESPACE, serviceAccount: 'server' });
  t.equal(JSON.parse(await curlFrom(tb, client, `http://${server.ip}:${HTTP_PORT}/`)).pod, 'server', 'meshed traffic flows');

  const uninstall = async (args: string[]) => {
    const result = await execa(process.execPath, [CLI_PATH, 'uninstall', '--output', 'json', ...args], { env, reject: false });
    return { exitCode: result.exitCode, stderr: result.stderr, report: JSON.parse(result.stdout || '{}') as { ok: boolean; nodes: Array<{ node: string; done: boolean }>; deleted: string[]; stillLabelled: string[]; message: string } };
  };
  const chained = async (node: TestbedNode) => (await readCniConfDir(node.cniConfDir)).plugins.some((plugin) => plugin['type'] === 'ambit-cni');
  const inIpset = async (node: TestbedNode, ip: string) => (await tb.exec(node.netns, 'ipset', ['test', 'ambit-pods-v4', ip], { reject: false })).exitCode === 0;
  const marked = () => ((cluster.api.objects('v1', 'serviceaccounts').get(AGENT_SERVICE_ACCOUNT_NAME, 'ambit-system')?.metadata as { annotations?: Record<string, string> } | undefined)?.annotations ?? {})[UNINSTALL_ANNOTATION];
  /** `ambit uninstall --check` as it runs on `node`: in its namespace, on its folders. */
  const leftovers = async (node: TestbedNode): Promise<{ exitCode: number | undefined; report: Checks }> => {
    const result = await tb.exec(node.netns, process.execPath, [
      CLI_PATH, 'uninstall', '--check', '--output', 'json',
      '--cni-conf-dir', cluster.nodePath(node, '/etc/cni/net.d'), '--cni-bin-dir', cluster.nodePath(node, '/opt/cni/bin'),
      '--run-dir', cluster.runDir(node), '--state-dir', cluster.stateDir(node),
    ], { reject: false });
    return { exitCode: result.exitCode, report: JSON.parse(String(result.stdout)) as Checks };
  };

  await t.test('before: --check finds the rules, the CNI entry and executable, and the files on each node', async (t) => {
    for (const node of [node1, node2]) {
      const { exitCode, report } = await leftovers(node);
      t.equal(exitCode, 1, `${node.name}: exit 1`);
      t.equal(report.ok, false);
      const failed = report.checks.filter((check) => !check.ok).map((check) => check.id).sort();
      t.same(failed, ['node-cni-binary', 'node-cni-config', 'node-rules', 'node-run-files', 'node-state-files'], `${node.name}: every kind of leftover is seen`);
      t.ok(report.checks.every((check) => check.ok || (check.hint ?? '') !== ''), 'each failure has a hint');
    }
  });

  await t.test('a node that does not finish in time: nothing is deleted; a cancel puts the node that finished back in the mesh', async (t) => {
    t.equal(await cluster.stopCniInstaller(node2), 0, "node2's installer is away (a crash loop, an old image)");
    const { exitCode, report } = await uninstall(['--timeout', '10']);
    t.equal(exitCode, 1, 'exit 1');
    t.same(report.nodes, [{ node: 'node1', done: true }, { node: 'node2', done: false }], 'node1 finished, node2 did not');
    t.match(report.message, /node2 \(waiting for its CNI installer\).*Nothing was deleted/);
    t.same(report.deleted, []);
    t.ok(cluster.api.objects('v1', 'namespaces').get('ambit-system'), 'ambit-system is still there');
    t.ok(marked(), 'the mesh stays marked as uninstalling');
    t.ok(await chained(node2), 'node2 keeps its plugin: nothing half-done there');
    t.notOk(await chained(node1), 'node1 is unchained');
    t.notOk(await inIpset(node1, client.ip), "node1's rules are gone");

    await kubectl(['-n', 'ambit-system', 'annotate', 'serviceaccount', AGENT_SERVICE_ACCOUNT_NAME, `${UNINSTALL_ANNOTATION}-`]);
    await within(15_000, "node1's installer chains the plugin again", () => chained(node1));
    await within(15_000, "node1's agent captures its pods again", () => inIpset(node1, client.ip));
    t.equal(JSON.parse(await curlFrom(tb, client, `http://${server.ip}:${HTTP_PORT}/`)).pod, 'server', 'meshed traffic flows again');
    // a pod started now goes through the plugin, whose executable the uninstall had removed: it is back, and captures
    const fresh = await cluster.startPod('fresh', node1, { namespace: NAMESPACE, serviceAccount: 'fresh' });
    t.ok(await inIpset(node1, fresh.ip), 'a new pod on node1 starts in the mesh');
    t.equal(JSON.parse(await curlFrom(tb, fresh, `http://${server.ip}:${HTTP_PORT}/`)).pod, 'server', 'and its traffic flows');
    // an installer that read "uninstall" just before the cancel, and asks now: the agent refuses, the rules stay
    const late = await askAgent(path.join(cluster.runDir(node1), CNI_SOCKET_NAME), { version: CNI_PROTOCOL_VERSION, op: 'uninstall', ifMarked: true }, 10_000);
    t.match(late, { ok: false, error: { code: 'cancelled', message: /no longer marked as uninstalling/ } }, 'an uninstall asked after the cancel is refused');
    t.ok(await inIpset(node1, client.ip), "and node1's rules stay");
    // node2's sidecar comes back (kubelet restarts a native sidecar)
    await cluster.startCniInstaller(node2);
  });

  await t.test('uninstall: every node is done, then the objects go', async (t) => {
    const { exitCode, stderr, report } = await uninstall(['--timeout', '60']);
    t.equal(exitCode, 0, `uninstalled: ${stderr}`);
    t.same(report.nodes, [{ node: 'node1', done: true }, { node: 'node2', done: true }], 'both agents said done');
    t.ok(report.deleted.includes('Namespace/ambit-system'), 'then the namespace was deleted');
    t.ok(report.deleted.includes('ClusterRole/ambit-agent'), 'and the cluster roles');
    t.same(report.stillLabelled, [NAMESPACE], 'and it says which namespaces keep the label');
    await within(10_000, 'ambit-system is gone (Terminating, then its objects, then itself)', () => cluster.api.objects('v1', 'namespaces').get('ambit-system') === undefined);
    // the DaemonSet's pods went with the namespace, and the testbed stopped their processes as a kubelet does
    await within(10_000, 'the agents stopped', async () => {
      await cluster.installed();
      return tb.nodes.every((node) => cluster.logs(node).some((record) => record.msg === 'agent stopped'));
    });
    for (const node of [node1, node2]) t.notOk(await chained(node), `${node.name}: the plugin is out of the conflist`);
  });

  await t.test('after: --check finds nothing on either node, and traffic is plain', async (t) => {
    for (const node of [node1, node2]) {
      const { exitCode, report } = await leftovers(node);
      t.equal(exitCode, 0, `${node.name}: nothing left (${report.checks.filter((c) => !c.ok).map((c) => c.message).join('; ')})`);
    }
    // a pod of the still-labelled namespace, started now: no plugin, no rule; its traffic crosses the wire in plaintext
    const later = await cluster.startPod('later', node1, { namespace: NAMESPACE, serviceAccount: 'later' });
    const capture = await startCapture(node1.netns, node1.uplink, 'tcp');
    const marker = `uninstalled-${process.pid}`;
    let body: string;
    let pcap: Buffer;
    try {
      body = await curlFrom(tb, later, `http://${server.ip}:${HTTP_PORT}/`, ['-H', `x-marker: ${marker}`]);
    } finally {
      pcap = await capture.stop();
    }
    t.equal((JSON.parse(body) as { pod: string }).pod, 'server', 'the new pod reaches the server');
    t.ok(parsePcap(pcap).some((packet) => packet.payload.includes(marker)), 'in plaintext: the mesh is out of the path');
  });
});
