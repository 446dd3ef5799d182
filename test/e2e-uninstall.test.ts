/**
 * `ambit uninstall` on the network-namespace testbed (root; issue 15): the mesh started from the rendered manifests,
 * an enrolled namespace with traffic over mTLS; the command marks the mesh as uninstalling, every node's CNI
 * installer unchains the plugin and its agent removes every rule, ipset and file, and only then are the objects
 * deleted. `ambit uninstall --check`, run in each node's namespace on the node's folders, finds Ambit there before
 * and nothing after; a pod started afterwards in the labelled namespace is plain.
 */
import { execa } from 'execa';
import t from 'tap';
import { UNINSTALL_CONFIGMAP_NAME } from '../core/enrollment/index.js';
import { CLI_PATH, curlFrom, HTTP_PORT, KubeCluster, parsePcap, readCniConfDir, startCapture, Testbed, type TestbedNode } from '../testbed/index.js';
import { within } from './mesh/hold.js';
import { needsTestbed } from './prerequisites.js';

const unavailable = needsTestbed();
const NAMESPACE = 'shop';

interface Checks {
  ok: boolean;
  checks: Array<{ id: string; ok: boolean; message: string; hint?: string }>;
}

t.test('ambit uninstall gives every node plain networking back before it deletes anything', { skip: unavailable }, async (t) => {
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'], hostLink: true });
  t.teardown(() => tb.destroy());
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];
  const cluster = await KubeCluster.start(tb, { namespaces: { [NAMESPACE]: { 'ambit.dev/mode': 'enabled' } } });
  t.teardown(() => cluster.close());
  const client = await cluster.startPod('client', node1, { namespace: NAMESPACE, serviceAccount: 'client' });
  const server = await cluster.startPod('server', node2, { namespace: NAMESPACE, serviceAccount: 'server' });
  t.equal(JSON.parse(await curlFrom(tb, client, `http://${server.ip}:${HTTP_PORT}/`)).pod, 'server', 'meshed traffic flows');

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

  await t.test('a node that does not finish in time: nothing is deleted, and running it again finishes', async (t) => {
    t.equal(await cluster.stopCniInstaller(node2), 0, "node2's installer is away (a crash loop, an old image)");
    const result = await execa(process.execPath, [CLI_PATH, 'uninstall', '--kubeconfig', cluster.kubeconfig, '--timeout', '10', '--output', 'json'], { reject: false });
    t.equal(result.exitCode, 1, 'exit 1');
    const report = JSON.parse(result.stdout) as { ok: boolean; nodes: Array<{ node: string; done: boolean }>; deleted: string[]; message: string };
    t.same(report.nodes, [{ node: 'node1', done: true }, { node: 'node2', done: false }], 'node1 finished, node2 did not');
    t.match(report.message, /node2 \(waiting for its CNI installer\).*Nothing was deleted/);
    t.same(report.deleted, []);
    t.ok(cluster.api.objects('v1', 'namespaces').get('ambit-system'), 'ambit-system is still there');
    t.ok(cluster.api.objects('v1', 'configmaps').get(UNINSTALL_CONFIGMAP_NAME, 'ambit-system'), 'the mesh stays marked as uninstalling');
    const stillChained = await readCniConfDir(node2.cniConfDir);
    t.ok(stillChained.plugins.some((plugin) => plugin['type'] === 'ambit-cni'), 'node2 keeps its plugin: nothing half-done there');
    // the sidecar restarts (kubelet restarts a native sidecar): it must not chain the plugin again, and finishes
    await cluster.startCniInstaller(node2);
    await cluster.waitForLog(node2, (record) => record.msg === 'uninstall requested over the CNI socket: every rule and ipset removed', 10_000);
  });

  await t.test('uninstall: every node is done, then the objects go', async (t) => {
    const result = await execa(process.execPath, [CLI_PATH, 'uninstall', '--kubeconfig', cluster.kubeconfig, '--timeout', '60', '--output', 'json'], { reject: false });
    t.equal(result.exitCode, 0, `uninstalled: ${result.stderr}`);
    const report = JSON.parse(result.stdout) as { ok: boolean; nodes: Array<{ node: string; done: boolean }>; deleted: string[]; stillLabelled: string[] };
    t.same(report.nodes, [{ node: 'node1', done: true }, { node: 'node2', done: true }], 'both agents said done');
    t.ok(report.deleted.includes('Namespace/ambit-system'), 'then the namespace was deleted');
    t.same(report.stillLabelled, [NAMESPACE], 'and it says which namespaces keep the label');
    await within(10_000, 'ambit-system is gone (Terminating, then its objects, then itself)', () => cluster.api.objects('v1', 'namespaces').get('ambit-system') === undefined);
    // the double has no kubelet: the DaemonSet's pods go as a kubelet stops them
    for (const node of [node1, node2]) t.same(await cluster.stopAgentPod(node), { agent: 0, installer: 0 }, `${node.name}: the agent and its installer stop cleanly`);
    for (const node of [node1, node2]) {
      const conflist = await readCniConfDir(node.cniConfDir);
      t.notOk(conflist.plugins.some((plugin) => plugin['type'] === 'ambit-cni'), `${node.name}: the plugin is out of the conflist`);
      await cluster.waitForLog(node, (record) => record.msg === 'uninstall requested over the CNI socket: every rule and ipset removed', 1000);
    }
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
    t.notOk(cluster.api.objects('v1', 'configmaps').get(UNINSTALL_CONFIGMAP_NAME, 'ambit-system'), 'the marker went with the namespace');
  });
});
