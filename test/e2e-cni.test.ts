/**
 * Enrollment through the chained CNI plugin, end to end on network namespaces (root): the testbed runs each node's
 * conflist as a container runtime does (primary plugin, then ambit-cni with prevResult and containerd's CNI_ARGS),
 * on a bridge node (br_netfilter on) and a ptp node; `ambit cni install` chains the single-executable plugin in;
 * agents are processes with real iptables/ipset rules.
 */
import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { buildCniSea } from '../cni/index.js';
import { CLI_PATH, ECHO_PORT, HTTP_PORT, inEnrolledSet, MeshCluster, parsePcap, readCniConfDir, startCapture, Testbed, type TestbedNode, type TestbedPod } from '../testbed/index.js';
import { holdConnection, within } from './mesh/hold.js';
import { needsTestbed } from './prerequisites.js';

const unavailable = needsTestbed();
const MESH = { 'ambit.dev/mode': 'enabled' };

/**
 * A client that keeps sending: one HTTP request with the marker every 50 ms on a fresh connection; prints one JSON
 * line per attempt (`ok` or the error code).
 */
const SENDER = `
const net = require('node:net');
const [host, port, marker] = process.argv.slice(1);
let n = 0;
function once() {
  const id = n++;
  const s = net.connect({ host, port: Number(port) });
  let body = '';
  const done = (result) => { s.destroy(); console.log(JSON.stringify({ id, t: Date.now(), result })); };
  s.setTimeout(2000, () => done('timeout'));
  s.on('connect', () => s.write('POST / HTTP/1.1\\r\\nhost: x\\r\\nconnection: close\\r\\ncontent-length: ' + marker.length + '\\r\\nx-marker: ' + marker + '\\r\\n\\r\\n' + marker));
  s.on('data', (c) => (body += c));
  s.on('end', () => done(body.startsWith('HTTP/1.1 200') ? 'ok' : 'bad'));
  s.on('error', (e) => done(e.code || e.message));
}
setInterval(once, 50);
`;

t.test('enrollment through the chained CNI plugin', { skip: unavailable }, async (t) => {
  const plugin = (await buildCniSea()).outFile;
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'] });
  t.teardown(() => tb.destroy());
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];
  const cluster = await MeshCluster.start(tb, { namespaces: { mesh: { ...MESH }, plain: {} }, pods: {} });
  const socket = (node: TestbedNode) => join(cluster.runDir(node), 'cni.sock');
  const cni = (node: TestbedNode, command: 'install' | 'uninstall', extra: string[] = []) =>
    tb.exec(node.netns, process.execPath, [
      CLI_PATH, 'cni', command, '--cni-conf-dir', node.cniConfDir, '--cni-bin-dir', node.cniBinDir, '--agent-socket', socket(node),
      ...(command === 'install' ? ['--enrollment-file', join(cluster.stateDir(node), 'enrollment.json')] : []), ...extra,
    ]);

  /** What the kubelet does: the pod object exists, the runtime networks it, the status gets its IP, the app starts. */
  const startPod = async (name: string, node: TestbedNode, namespace: string, labels: Record<string, string> = {}): Promise<TestbedPod> => {
    await cluster.declarePod(name, node, { namespace, serviceAccount: name, labels });
    const pod = await tb.addPod(node, name, { k8s: { namespace } });
    await cluster.setPodIp(name, pod.ip);
    await cluster.startWorkload(pod);
    return pod;
  };

  t.test('install chains ambit-cni last in each node\'s conflist and copies the executable', async (t) => {
    for (const node of [node1, node2]) {
      const { stdout } = await cni(node, 'install', ['--plugin', plugin]);
      t.match(String(stdout), /chained in .*\.conflist \(added\)/);
      const conflist = await readCniConfDir(node.cniConfDir);
      t.same(conflist.plugins.map((p) => p['type']), [node.cni, 'ambit-cni'], `${node.name}: primary first, ambit-cni last`);
      t.equal(conflist.plugins[1]?.['agentSocket'], socket(node));
      t.equal(conflist.plugins[1]?.['enrollmentFile'], join(cluster.stateDir(node), 'enrollment.json'));
      t.ok(((await stat(join(node.cniBinDir, 'ambit-cni'))).mode & 0o111) !== 0, 'the plugin is executable');
      const again = await cni(node, 'install', ['--plugin', plugin]);
      t.match(String(again.stdout), /\(unchanged\)/, 'installing twice changes nothing');
    }
  });

  let web: TestbedPod;
  let client: TestbedPod;
  t.test('an enrolled pod has its rules before ADD returns, on the ptp node and on the bridge node', async (t) => {
    await cluster.declarePod('web', node2, { namespace: 'mesh', serviceAccount: 'web' });
    web = await tb.addPod(node2, 'web', { k8s: { namespace: 'mesh' } });
    t.ok(await inEnrolledSet(tb, node2, web.ip), 'the IP is in the enrolled set as soon as ADD returns');
    t.same((web.cniResult as { ips: unknown[] }).ips.length, 1, 'the result passed through the chain carries the IP');
    await cluster.setPodIp('web', web.ip);
    await cluster.startWorkload(web);
    const record = await cluster.waitForLog(node2, (r) => r.msg === 'CNI ADD: pod enrolled, rules in place');
    t.match(record, { pod: 'mesh/web', ips: [web.ip] });

    client = await startPod('client', node1, 'mesh');
    t.ok(await inEnrolledSet(tb, node1, client.ip), 'bridge node too');
    const body = JSON.parse(await cluster.curl(client, `http://${web.ip}:${HTTP_PORT}/`));
    t.equal(body.pod, 'web', 'the two enrolled pods talk through the mesh');
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'hbone' && (r.dst as { ip: string }).ip === web.ip);
  });

  t.test('a pod outside the mesh is untouched', async (t) => {
    const before = String((await tb.exec(node2.netns, 'iptables-save', [])).stdout);
    const db = await startPod('db', node2, 'plain');
    t.notOk(await inEnrolledSet(tb, node2, db.ip), 'not in the enrolled set');
    const after = String((await tb.exec(node2.netns, 'iptables-save', [])).stdout);
    t.notMatch(after.replace(before, ''), db.ip, 'no rule names it');
    const opted = await startPod('opted-out', node2, 'mesh', { 'ambit.dev/mode': 'disabled' });
    t.notOk(await inEnrolledSet(tb, node2, opted.ip), 'a pod that opts out of an enrolled namespace is not captured');
  });

  t.test('agent down: an enrolled ADD fails with a CNI error, one outside the mesh succeeds', async (t) => {
    const gone = await startPod('gone', node2, 'mesh');
    t.ok(await inEnrolledSet(tb, node2, gone.ip));
    t.equal(await cluster.stopAgent(node2), 0, 'clean shutdown');
    t.ok(await inEnrolledSet(tb, node2, web.ip), 'the rules stay while the agent is away');
    // As after a reboot: /var/run is empty (no socket, no pod record); only the persistent enrollment file is left.
    await rm(cluster.runDir(node2), { recursive: true, force: true });
    await cluster.declarePod('web2', node2, { namespace: 'mesh' });
    const started = Date.now();
    const failure = (await tb.addPod(node2, 'web2', { k8s: { namespace: 'mesh' } }).catch((err: unknown) => err)) as { cniError?: { code: number; msg: string } };
    t.equal(failure.cniError?.code, 11, 'CNI error 11, try again later');
    t.match(failure.cniError?.msg, /mesh\/web2/, 'the message names the pod');
    t.ok(Date.now() - started < 4000, 'fails promptly (the socket is gone: no timeout to wait for)');
    await cluster.declarePod('db2', node2, { namespace: 'plain' });
    const db2 = await tb.addPod(node2, 'db2', { k8s: { namespace: 'plain' } });
    t.ok(db2.ip, 'a pod outside the mesh starts while the agent is down');

    // Meanwhile a pod is deleted (its DEL cannot reach the agent, and must not fail) and another opts in.
    await tb.removePod(gone);
    await cluster.forgetPod('gone');
    const optedOut = tb.pod('opted-out');
    await cluster.setPodLabels('opted-out', {});

    await cluster.startAgent(node2);
    t.notOk(await inEnrolledSet(tb, node2, gone.ip), 'ready means reconciled: the deleted pod is out of the set');
    t.ok(await inEnrolledSet(tb, node2, optedOut.ip), 'and the pod that opted in meanwhile is in it');
    t.ok(await inEnrolledSet(tb, node2, web.ip), 'the pods that did not change stay captured');
    await cluster.setPodLabels('opted-out', { 'ambit.dev/mode': 'disabled' });
    await within(1000, 'opted out again', async () => !(await inEnrolledSet(tb, node2, optedOut.ip)));
    const web2 = await tb.addPod(node2, 'web2', { k8s: { namespace: 'mesh' } });
    t.ok(await inEnrolledSet(tb, node2, web2.ip), "the runtime's retry succeeds once the agent is back");
  });

  t.test('before its first full sync the agent holds back pods of unknown namespaces, keeps capturing what it captured, and is not ready; the root namespace never waits', async (t) => {
    // The local source's first full sync is its first load with every file read and parsed: an agent that starts
    // while the file with namespace `team` does not parse knows nothing of `team` yet.
    const teamFile = join(cluster.configDir, 'team.yaml');
    const podDoc = (name: string, labels: Record<string, string> = {}, namespace = 'team', ip?: string) => ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace, labels },
      spec: { nodeName: node2.name, containers: [{ name: 'app' }] },
      // Pending, no IP in the status: only the CNI-reported network (cni-pods.json) knows where the pod is.
      status: ip === undefined ? { phase: 'Pending' } : { phase: 'Running', podIP: ip, conditions: [{ type: 'Ready', status: 'True' }] },
    });
    const teamDocs = (docs: object[]) => docs.map((d) => `---\n${JSON.stringify(d)}\n`).join('');
    const teamNamespace = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'team', labels: MESH } };
    const writeTeam = async (text: string) => {
      await writeFile(`${teamFile}.tmp`, text);
      await rename(`${teamFile}.tmp`, teamFile);
    };
    t.teardown(() => rm(teamFile, { force: true }));
    const enrollmentFile = join(cluster.stateDir(node2), 'enrollment.json');
    const readiness = async () => String((await tb.exec(node2.netns, 'curl', ['-sS', '--max-time', '5', '-w', ' %{http_code}', 'http://127.0.0.1:15021/healthz/ready'])).stdout);

    // Before the restart `team` parses, and two of its pods run enrolled, captured through their CNI-reported networks.
    await writeTeam(teamDocs([teamNamespace, podDoc('t0'), podDoc('t2')]));
    await within(2000, 'the agent has read team', async () => (JSON.parse(await readFile(enrollmentFile, 'utf8')) as { enrolledNamespaces: string[] }).enrolledNamespaces.includes('team'));
    const t0 = await tb.addPod(node2, 't0', { k8s: { namespace: 'team' } });
    const t2 = await tb.addPod(node2, 't2', { k8s: { namespace: 'team' } });
    t.ok((await inEnrolledSet(tb, node2, t0.ip)) && (await inEnrolledSet(tb, node2, t2.ip)), 'both are captured');

    t.equal(await cluster.stopAgent(node2), 0);
    const before = await readFile(enrollmentFile, 'utf8');
    // Broken mid-document; the new agent process has never parsed it.
    await writeTeam(teamDocs([teamNamespace, podDoc('t1'), podDoc('t0'), podDoc('t2')]).slice(0, -3));
    await cluster.startAgent(node2);
    t.match(cluster.logs(node2).find((r) => r.msg === 'config folder loaded'), { synced: false, unknownFiles: ['team.yaml'] }, 'the agent is up, its first load incomplete');
    t.ok(await inEnrolledSet(tb, node2, t0.ip), 'a pod the agent captured stays captured while its file has never parsed');
    t.ok(await inEnrolledSet(tb, node2, t2.ip), 'so does the other');
    t.match(await readiness(), /^not ready: [^\n]*first full sync[^\n]*\n 503$/, 'readiness (15021) says it is not synced yet: 503');

    const failure = (await tb.addPod(node2, 't1', { k8s: { namespace: 'team' } }).catch((err: unknown) => err)) as { cniError?: { code: number; msg: string } };
    t.equal(failure.cniError?.code, 11, 'an unknown namespace before the first full sync: CNI error 11, try again later');
    t.match(failure.cniError?.msg, /pod team\/t1: namespace team is not known to the agent yet: .*first full sync/);
    const other = (await tb.addPod(node2, 'n1', { k8s: { namespace: 'nowhere' } }).catch((err: unknown) => err)) as { cniError?: { code: number } };
    t.equal(other.cniError?.code, 11, 'so is any other unknown namespace: the agent cannot tell yet');
    const ctl = await tb.addPod(node2, 'ctl', { k8s: { namespace: 'ambit-system' } });
    t.ok(ctl.ip, "the mesh's own namespace starts at once");
    t.notOk(await inEnrolledSet(tb, node2, ctl.ip), 'and is not captured');
    t.equal(await readFile(enrollmentFile, 'utf8'), before, 'a partial view does not replace the enrollment file');

    // The file parses: t0 has opted out meanwhile, t2 is still enrolled (known only by its CNI record), and the root
    // namespace carries the enrollment label, with ctl's IP in its status.
    const rootNamespace = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ambit-system', labels: MESH } };
    await writeTeam(teamDocs([teamNamespace, podDoc('t1'), podDoc('t0', { 'ambit.dev/mode': 'disabled' }), podDoc('t2'), rootNamespace, podDoc('ctl', {}, 'ambit-system', ctl.ip)]));
    await cluster.waitForLog(node2, (r) => r.msg === 'config folder loaded' && r.synced === true);
    await within(1000, 'the opted-out pod leaves the set once the file parses', async () => !(await inEnrolledSet(tb, node2, t0.ip)));
    t.ok(await inEnrolledSet(tb, node2, t2.ip), 'the enrolled one stays: its CNI record outlived the restart');
    t.notOk(await inEnrolledSet(tb, node2, ctl.ip), 'the root namespace is not captured, labelled or not');
    await within(1000, 'ready after the first full sync', async () => (await readiness()) === 'ready\n 200');
    const t1 = await tb.addPod(node2, 't1', { k8s: { namespace: 'team' } });
    t.ok(await inEnrolledSet(tb, node2, t1.ip), "after the sync the runtime's retry enrolls the pod");
    const n1 = await tb.addPod(node2, 'n1', { k8s: { namespace: 'nowhere' } });
    t.notOk(await inEnrolledSet(tb, node2, n1.ip), 'and a namespace absent from the folder is not enrolled: the pod starts');
    await within(1000, 'the enrollment file lists team', async () => (JSON.parse(await readFile(enrollmentFile, 'utf8')) as { enrolledNamespaces: string[] }).enrolledNamespaces.includes('team'));
    for (const pod of [t0, t1, t2, n1, ctl]) await tb.removePod(pod);
    await rm(teamFile);
    await within(1000, 'team is gone', async () => !(await inEnrolledSet(tb, node2, t1.ip)) && !(await inEnrolledSet(tb, node2, t2.ip)));
  });

  t.test('agent killed with SIGKILL while a client keeps sending: no plaintext on the wire, traffic resumes', async (t) => {
    const marker = `ambit-crash-marker-${process.pid}-${Date.now()}`;
    const capture = await startCapture(node1.netns, node1.uplink, 'tcp');
    const sender = tb.spawn(client.netns, process.execPath, ['-e', SENDER, web.ip, String(HTTP_PORT), marker], { buffer: false });
    const results: Array<{ t: number; result: string }> = [];
    let partial = '';
    sender.stdout!.setEncoding('utf8');
    sender.stdout!.on('data', (chunk: string) => {
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) if (line) results.push(JSON.parse(line) as { t: number; result: string });
    });
    await within(5000, 'traffic flows', async () => results.some((r) => r.result === 'ok'));
    t.equal(await cluster.stopAgent(node1, 'SIGKILL'), null, 'the agent is killed');
    const killedAt = Date.now();
    await within(5000, 'attempts while the agent is down', async () => results.filter((r) => r.t > killedAt + 100).length > 5);
    t.ok(await inEnrolledSet(tb, node1, client.ip), 'its rules outlive it');
    // Attempts end up to a moment after the agent is ready and before its log line reaches the test: the window
    // of "down" closes when the restart begins.
    const restartingAt = Date.now();
    await cluster.startAgent(node1);
    const restartedAt = Date.now();
    await within(5000, 'traffic resumes', async () => results.some((r) => r.t > restartedAt && r.result === 'ok'));
    sender.kill();
    const pcap = await capture.stop();
    const during = results.filter((r) => r.t > killedAt + 100 && r.t < restartingAt);
    t.ok(during.length > 5, `attempts while the agent was down (${during.length})`);
    t.ok(during.every((r) => r.result !== 'ok'), 'none of them got through');
    t.notOk(pcap.includes(Buffer.from(marker)), 'the marker never crossed the wire in the clear');
    const packets = parsePcap(pcap);
    const offPort = packets.filter((p) => p.srcPort !== 15008 && p.dstPort !== 15008);
    t.same(offPort.map((p) => `${p.src}:${p.srcPort}>${p.dst}:${p.dstPort}`), [], 'every packet between the nodes is HBONE');
  });

  t.test('relabelling moves running pods in and out of the mesh within 1 s', async (t) => {
    const held = await holdConnection(tb, client, web.ip, ECHO_PORT);
    await cluster.setNamespaceLabels('mesh', {});
    const out = await within(1000, 'unlabelled namespace leaves the mesh', async () => !(await inEnrolledSet(tb, node2, web.ip)) && !(await inEnrolledSet(tb, node1, client.ip)));
    t.ok(out <= 1000, `out of the mesh in ${out} ms`);
    await within(3000, 'the open connection is closed', () => held.lines.includes('closed'));
    t.same(held.lines, ['open', 'end', 'closed'], 'its open connection was closed cleanly (FIN, not a reset)');
    held.stop();
    const plainBody = JSON.parse(await cluster.curl(client, `http://${web.ip}:${HTTP_PORT}/`));
    t.equal(plainBody.pod, 'web', 'the pods keep running and talk in plain TCP');
    await cluster.setNamespaceLabels('mesh', { ...MESH });
    const back = await within(1000, 'relabelled namespace rejoins', async () => (await inEnrolledSet(tb, node2, web.ip)) && (await inEnrolledSet(tb, node1, client.ip)));
    t.ok(back <= 1000, `back in the mesh in ${back} ms`);
    await cluster.setPodLabels('web', { 'ambit.dev/mode': 'disabled' });
    const podOut = await within(1000, 'a pod label opts one pod out', async () => !(await inEnrolledSet(tb, node2, web.ip)));
    t.ok(podOut <= 1000, `pod opted out in ${podOut} ms`);
    await cluster.setPodLabels('web', {});
    await within(1000, 'the pod rejoins', () => inEnrolledSet(tb, node2, web.ip));
  });

  t.test("with the agent down, the plugin takes the mesh's own namespace from the agent's enrollment file", async (t) => {
    const enrollmentFile = join(cluster.stateDir(node2), 'enrollment.json');
    const readSnapshot = async () => JSON.parse(await readFile(enrollmentFile, 'utf8')) as { rootNamespace?: string; enrolledNamespaces: string[] };
    // Both labelled: under an agent whose root namespace is mesh-root, ambit-system is a namespace like any other.
    await cluster.setNamespaceLabels('mesh-root', { ...MESH });
    await cluster.setNamespaceLabels('ambit-system', { ...MESH });
    t.teardown(async () => {
      await cluster.stopAgent(node2);
      await cluster.setNamespaceLabels('mesh-root', {});
      await cluster.setNamespaceLabels('ambit-system', {});
      await cluster.startAgent(node2);
    });
    t.equal(await cluster.stopAgent(node2), 0);
    await cluster.startAgent(node2, ['--root-namespace', 'mesh-root']);
    await within(2000, 'the agent lists ambit-system as enrolled', async () => (await readSnapshot()).enrolledNamespaces.includes('ambit-system'));
    const snapshot = await readSnapshot();
    t.equal(snapshot.rootNamespace, 'mesh-root', 'the enrollment file names the root namespace');
    t.notOk(snapshot.enrolledNamespaces.includes('mesh-root'), 'and does not list it as enrolled, labelled or not');

    t.equal(await cluster.stopAgent(node2), 0, 'the agent is down');
    const own = await tb.addPod(node2, 'root-ctl', { k8s: { namespace: 'mesh-root' } });
    t.ok(own.ip, "a pod of the agent's root namespace starts while it is down");
    t.notOk(await inEnrolledSet(tb, node2, own.ip), 'uncaptured');
    await tb.removePod(own);
    const failure = (await tb.addPod(node2, 'sys-1', { k8s: { namespace: 'ambit-system' } }).catch((err: unknown) => err)) as { cniError?: { code: number; msg: string } };
    t.equal(failure.cniError?.code, 11, 'a pod of ambit-system, enrolled under this agent, waits for it: CNI error 11');
    t.match(failure.cniError?.msg, /pod ambit-system\/sys-1 is in the mesh/);
  });

  t.test('a pod that joins the mesh through the store (a relabel) loses the connections it had; its new ones are captured', async (t) => {
    await cluster.setNamespaceLabels('late', {});
    const late = await startPod('late-1', node1, 'late');
    const db = tb.pod('db');
    t.notOk(await inEnrolledSet(tb, node1, late.ip), 'outside the mesh at first');
    const outbound = await holdConnection(tb, late, db.ip, ECHO_PORT);
    const inbound = await holdConnection(tb, db, late.ip, ECHO_PORT);
    t.teardown(async () => {
      outbound.stop();
      inbound.stop();
      await tb.removePod(late);
      await cluster.forgetPod('late-1');
      await cluster.setNamespaceLabels('late', {});
    });
    t.equal(await outbound.poke(), 'echo', 'before: the connection it opened carries data, in the clear');
    t.equal(await inbound.poke(), 'echo', 'so does the one opened to it');

    const since = Date.now();
    await cluster.setNamespaceLabels('late', { ...MESH });
    await within(2000, 'the relabelled namespace joins', async () =>
      cluster.logs(node1).some((r) => r.msg === 'enrolled pod set updated' && r.set === 'ambit-pods-v4' && Number(r.added) > 0 && Number(r.time) >= since),
    );
    t.ok(await inEnrolledSet(tb, node1, late.ip), 'captured');
    t.equal(await outbound.poke(), 'error ECONNRESET', 'after: the connection it opened is reset at its next packet, not carried in the clear');
    t.equal(await inbound.poke(), 'error ECONNRESET', 'and so is the one opened to it');
    const ended = cluster.logs(node1).find((r) => r.msg === 'tracked connections of pods that joined the mesh ended' && Number(r.time) >= since);
    t.match(ended, { pods: [late.ip] }, 'the agent says so');
    t.ok(Number(ended?.flows) >= 2, `naming how many flows it ended (${String(ended?.flows)})`);

    const sinceJoin = Date.now();
    t.equal(JSON.parse(await cluster.curl(late, `http://${db.ip}:${HTTP_PORT}/`)).pod, 'db');
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'passthrough' && Number(r.time) >= sinceJoin && (r.src as { ip: string }).ip === late.ip);
    t.pass('a new connection from it is captured');
    t.equal(JSON.parse(await cluster.curl(db, `http://${late.ip}:${HTTP_PORT}/`)).pod, 'late-1');
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'plaintext' && Number(r.time) >= sinceJoin && (r.dst as { ip: string }).ip === late.ip);
    t.pass('and so is a new connection to it');
  });

  t.test('uninstall: plain networking again, no Ambit chain, ipset or plugin left', async (t) => {
    for (const node of [node1, node2]) {
      await cni(node, 'uninstall');
      const conflist = await readCniConfDir(node.cniConfDir);
      t.same(conflist.plugins.map((p) => p['type']), [node.cni], `${node.name}: only the primary plugin remains`);
      await t.rejects(stat(join(node.cniBinDir, 'ambit-cni')), { code: 'ENOENT' }, 'the executable is gone');
      const rules = String((await tb.exec(node.netns, 'iptables-save', [])).stdout);
      t.notMatch(rules, /AMBIT/i, `${node.name}: no Ambit chain or rule`);
      const sets = String((await tb.exec(node.netns, 'ipset', ['list', '-n'])).stdout);
      t.notMatch(sets, /ambit/, `${node.name}: no Ambit ipset`);
      await t.rejects(readFile(join(cluster.stateDir(node), 'enrollment.json')), { code: 'ENOENT' }, 'no enrollment file left behind');
      await t.rejects(readFile(join(cluster.runDir(node), 'cni-pods.json')), { code: 'ENOENT' }, 'no pod record left behind');
    }
    const body = JSON.parse(await cluster.curl(client, `http://${web.ip}:${HTTP_PORT}/`));
    t.equal(body.pod, 'web', 'pods talk over plain networking');
    t.equal(body.client, client.ip, 'directly, from the client pod itself');
    const late = await tb.addPod(node2, 'late', { k8s: { namespace: 'mesh' } });
    t.ok(late.ip, 'new pods start without the plugin');
    t.notOk(await inEnrolledSet(tb, node2, late.ip).catch(() => false), 'and are not captured');
  });
});
