/** The agent's end of the CNI socket: protocol handling, bad input, and the enrollment decisions behind ADD/DEL/CHECK. */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { CniHandler, decidePodEnrollment, type PodEnrollmentFacts } from '../agent/cni-handler.js';
import { CniServer } from '../agent/cni-server.js';
import { CNI_PROTOCOL_VERSION, parseCniResponse, type CniRequest, type CniResponse } from '../core/cni/index.js';
import { convertObject, ENROLL_LABEL, ISTIO_DATAPLANE_LABEL, type PodInfo } from '../core/discovery/index.js';
import { silentLogger } from '../core/log/log.js';
import { storeWith } from './mesh/store.js';

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-cni-agent-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Sends raw bytes, returns everything the agent answers before it closes. */
function exchange(path: string, payload: string | undefined, options: { end?: boolean } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(path);
    let data = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (data += chunk));
    socket.once('error', reject);
    socket.once('close', () => resolve(data));
    socket.once('connect', () => {
      if (payload !== undefined) socket.write(payload);
      if (options.end) socket.end();
    });
  });
}

async function request(path: string, body: unknown): Promise<CniResponse> {
  return parseCniResponse((await exchange(path, `${JSON.stringify(body)}\n`)).trim());
}

t.test('the socket: private, one exchange per connection, bad input refused, a stalled client blocks nobody', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'run', 'cni.sock');
  const seen: CniRequest[] = [];
  const server = await CniServer.listen({
    path,
    log: silentLogger(),
    requestTimeoutMs: 300,
    handle: async (req) => {
      seen.push(req);
      return { version: CNI_PROTOCOL_VERSION, ok: true, enrolled: false, reason: 'test' };
    },
  });
  t.teardown(() => server.close());
  t.equal((await stat(path)).mode & 0o777, 0o600, 'socket mode 0600');
  t.equal((await stat(join(dir, 'run'))).mode & 0o777, 0o700, 'its folder is 0700');

  const stalled = net.connect(path);
  t.teardown(() => stalled.destroy());
  await new Promise((r) => stalled.once('connect', r));
  stalled.write('{"version":1,"op":"add"');

  const ok = await request(path, { version: 1, op: 'status' });
  t.same(ok, { version: 1, ok: true, enrolled: false, reason: 'test' }, 'served while another client stalls');

  const cases: Array<[string, string, string, RegExp]> = [
    ['not JSON', 'hello\n', 'bad-request', /not valid JSON/],
    ['not an object', '[1,2]\n', 'bad-request', /not a JSON object/],
    ['no version', '{"op":"status"}\n', 'bad-request', /version/],
    ['unknown version', '{"version":7,"op":"status"}\n', 'unsupported-version', /version 7 is not supported/],
    ['unknown op', '{"version":1,"op":"reboot"}\n', 'bad-request', /"op" must be one of/],
    ['add without pod', '{"version":1,"op":"add"}\n', 'bad-request', /no "pod"/],
    ['bad namespace', '{"version":1,"op":"add","pod":{"namespace":"Bad_NS","name":"p","containerId":"c","ips":["10.0.0.1"]}}\n', 'bad-request', /namespace/],
    ['bad IP', '{"version":1,"op":"add","pod":{"namespace":"a","name":"p","containerId":"c","ips":["10.0.0.999"]}}\n', 'bad-request', /not an IP/],
    ['add without IPs', '{"version":1,"op":"add","pod":{"namespace":"a","name":"p","containerId":"c","ips":[]}}\n', 'bad-request', /no IPs/],
    [
      'an interface name no kernel accepts',
      '{"version":1,"op":"add","pod":{"namespace":"a","name":"p","containerId":"c","ips":["10.0.0.1"],"hostInterfaces":["veth 1"]}}\n',
      'bad-request',
      /hostInterfaces/,
    ],
    ['too long', `${'x'.repeat(20_000)}\n`, 'bad-request', /longer than/],
  ];
  for (const [what, payload, code, message] of cases) {
    const response = parseCniResponse((await exchange(path, payload)).trim());
    t.equal(response.ok, false, `${what}: refused`);
    if (!response.ok) {
      t.equal(response.error.code, code, `${what}: ${code}`);
      t.match(response.error.message, message, `${what}: says why`);
      if (code === 'unsupported-version') t.same(response.error.supportedVersions, [1], 'names the versions it speaks');
    }
  }
  const cut = parseCniResponse((await exchange(path, '{"version":1,"op":"status"}', { end: true })).trim());
  t.equal(cut.ok, false, 'a request without its newline, then EOF, is refused');

  const dropped = await new Promise<number>((resolve) => {
    const started = Date.now();
    stalled.once('close', () => resolve(Date.now() - started));
  });
  t.ok(dropped < 1000, 'the stalled client is dropped after the request timeout');
  t.equal(seen.length, 1, 'only the one valid request reached the handler');

  const second = CniServer.listen({ path, log: silentLogger(), handle: async () => ok });
  await t.rejects(second, /another agent is listening/, 'a second agent on the same socket is refused');
});

t.test('a stale socket file left by a crash is replaced; a file that is not a socket is not', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'cni.sock');
  // A crashed agent leaves its socket file with nobody listening: make one with a process that exits at once.
  const { execFileSync } = await import('node:child_process');
  execFileSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`]);
  t.ok((await stat(path)).isSocket(), 'the stale socket file is there');
  const second = await CniServer.listen({ path, log: silentLogger(), handle: async () => ({ version: 1, ok: true }) });
  t.teardown(() => second.close());
  t.same(await request(path, { version: 1, op: 'status' }), { version: 1, ok: true });
  const { writeFile } = await import('node:fs/promises');
  const notSocket = join(dir, 'file.sock');
  await writeFile(notSocket, 'x');
  await t.rejects(CniServer.listen({ path: notSocket, log: silentLogger(), handle: async () => ({ version: 1, ok: true }) }), /not a socket/);
});

const ns = (name: string, labels: Record<string, string> = {}) => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } });
const podObject = (name: string, namespace: string, extra: { labels?: Record<string, string>; hostNetwork?: boolean; node?: string; ip?: string } = {}) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace, labels: extra.labels ?? {} },
  spec: { nodeName: extra.node ?? 'node1', hostNetwork: extra.hostNetwork, containers: [{ name: 'app' }] },
  status: extra.ip ? { phase: 'Running', podIP: extra.ip } : { phase: 'Pending' },
});

t.test('enrollment decisions, with the reason the runtime shows', async (t) => {
  const podInfo = (labels: Record<string, string> = {}, hostNetwork = false): PodInfo => {
    const c = convertObject(podObject('p', 'a', { labels, hostNetwork }), 'cluster.local');
    if (c.kind !== 'Pod') throw new Error('pod');
    return c.object;
  };
  const enrolled = { name: 'a', labels: { [ENROLL_LABEL]: 'enabled' } };
  const istio = { name: 'a', labels: { [ISTIO_DATAPLANE_LABEL]: 'ambient' } };
  const plain = { name: 'a', labels: {} };
  const cases: Array<[string, PodEnrollmentFacts['namespace'], PodInfo | undefined, string, RegExp]> = [
    ['namespace enrolled', enrolled, podInfo(), 'enrolled', /namespace a has ambit.dev\/mode=enabled/],
    ['istio label', istio, podInfo(), 'enrolled', /istio.io\/dataplane-mode=ambient/],
    ['namespace not labelled', plain, podInfo(), 'not-enrolled', /not labelled/],
    ['namespace unknown', undefined, podInfo(), 'not-enrolled', /not known/],
    ['pod opts out', enrolled, podInfo({ [ENROLL_LABEL]: 'disabled' }), 'not-enrolled', /opts out with ambit.dev\/mode=disabled/],
    ['pod opts out the istio way', enrolled, podInfo({ [ISTIO_DATAPLANE_LABEL]: 'none' }), 'not-enrolled', /istio.io\/dataplane-mode=none/],
    ['host network', enrolled, podInfo({}, true), 'not-enrolled', /host network/],
    ['pod not seen yet', enrolled, undefined, 'pod-unknown', /has not seen pod a\/p/],
    ['pod not seen, namespace plain', plain, undefined, 'not-enrolled', /not labelled/],
  ];
  for (const [what, namespace, pod, kind, reason] of cases) {
    const decision = decidePodEnrollment({ namespaceName: 'a', podName: 'p', namespace, pod, synced: true, rootNamespace: 'ambit-system' });
    t.equal(decision.kind, kind, what);
    t.match(decision.reason, reason, `${what}: reason`);
  }
});

t.test('enrollment decisions before the first full sync, and in the root namespace', async (t) => {
  const pod = convertObject(podObject('p', 'a'), 'cluster.local');
  if (pod.kind !== 'Pod') throw new Error('pod');
  const enrolled = { name: 'a', labels: { [ENROLL_LABEL]: 'enabled' } };
  const decide = (namespaceName: string, namespace: PodEnrollmentFacts['namespace'], synced: boolean, rootNamespace = 'ambit-system') =>
    decidePodEnrollment({ namespaceName, podName: 'p', namespace, pod: pod.object, synced, rootNamespace });
  t.match(decide('a', undefined, false), { kind: 'not-synced', reason: /namespace a is not known to the agent yet: .*first full sync/ }, 'unknown before the sync: not ready');
  t.match(decide('a', undefined, true), { kind: 'not-enrolled', reason: /namespace a is not known to the agent$/ }, 'unknown after the sync: not enrolled');
  t.match(decide('a', enrolled, false), { kind: 'enrolled' }, 'a known namespace needs no sync');
  const root = { name: 'ambit-system', labels: { [ENROLL_LABEL]: 'enabled' } };
  for (const synced of [false, true]) {
    t.match(decide('ambit-system', undefined, synced), { kind: 'not-enrolled', reason: /the mesh's own \(--root-namespace\)/ }, `root namespace unknown, synced ${synced}: never waits`);
    t.match(decide('ambit-system', root, synced), { kind: 'not-enrolled' }, `root namespace labelled, synced ${synced}: never enrolled`);
  }
  t.match(decide('ambit-system', root, true, 'mesh-system'), { kind: 'enrolled' }, 'another root namespace: ambit-system is an ordinary namespace');
});

t.test('before the first full sync: an unknown namespace waits for it, the snapshot is not written, the root namespace never waits', async (t) => {
  const dir = await tempDir(t);
  const store = storeWith([ns('mesh', { [ENROLL_LABEL]: 'enabled' }), podObject('web', 'mesh')], 'node1', { synced: false });
  const handler: CniHandler = new CniHandler({
    store,
    nodeName: 'node1',
    rootNamespace: 'ambit-system',
    runDir: dir,
    stateDir: dir,
    reconcileNow: () => handler.writeEnrollmentSnapshot(),
    podCreated: () => {},
    ruleInPlace: async () => true,
    uninstall: async () => undefined,
    ready: () => true,
    log: silentLogger(),
    podWaitMs: 200,
  });
  const pod = (name: string, namespace: string, ip: string) => ({ namespace, name, containerId: 'c1', ips: [ip] });
  await t.rejects(handler.handle({ version: 1, op: 'add', pod: pod('late', 'team', '10.244.1.7') }), { code: 'not-ready', message: /namespace team is not known to the agent yet.*first full sync.*; try again$/ });
  await t.rejects(handler.handle({ version: 1, op: 'check', pod: pod('late', 'team', '10.244.1.7') }), { code: 'not-ready' }, 'CHECK too');
  t.same(await handler.handle({ version: 1, op: 'add', pod: pod('ctl', 'ambit-system', '10.244.1.8') }), { version: 1, ok: true, enrolled: false, reason: "namespace ambit-system is the mesh's own (--root-namespace): its pods are never enrolled" });
  t.same(await handler.handle({ version: 1, op: 'add', pod: pod('web', 'mesh', '10.244.1.5') }), { version: 1, ok: true, enrolled: true, reason: 'namespace mesh has ambit.dev/mode=enabled' }, 'a pod of a known namespace needs no sync');
  await t.rejects(stat(join(dir, 'enrollment.json')), { code: 'ENOENT' }, 'no enrollment file from a partial view');

  // An ADD waiting for the sync is answered when it comes, not at its deadline.
  const waiting = handler.handle({ version: 1, op: 'add', pod: pod('late', 'team', '10.244.1.7') });
  store.markSynced();
  t.same(await waiting, { version: 1, ok: true, enrolled: false, reason: 'namespace team is not known to the agent' }, 'after the sync an unknown namespace is not enrolled');
  await handler.writeEnrollmentSnapshot();
  t.same(JSON.parse(await readFile(join(dir, 'enrollment.json'), 'utf8')).enrolledNamespaces, ['mesh'], 'written once synced');
});

t.test('the enrollment file names the root namespace and never lists it', async (t) => {
  const dir = await tempDir(t);
  const store = storeWith([ns('mesh', { [ENROLL_LABEL]: 'enabled' }), ns('ambit-system', { [ENROLL_LABEL]: 'enabled' }), ns('mesh-system', { [ENROLL_LABEL]: 'enabled' })]);
  const handlerFor = (rootNamespace: string) =>
    new CniHandler({ store, nodeName: 'node1', rootNamespace, runDir: dir, stateDir: dir, reconcileNow: async () => {}, podCreated: () => {}, ruleInPlace: async () => true, uninstall: async () => undefined, ready: () => true, log: silentLogger() });
  const read = async () => JSON.parse(await readFile(join(dir, 'enrollment.json'), 'utf8')) as { rootNamespace?: string; enrolledNamespaces: string[] };
  await handlerFor('ambit-system').writeEnrollmentSnapshot();
  t.match(await read(), { rootNamespace: 'ambit-system', enrolledNamespaces: ['mesh', 'mesh-system'] });
  await handlerFor('mesh-system').writeEnrollmentSnapshot();
  t.match(await read(), { rootNamespace: 'mesh-system', enrolledNamespaces: ['ambit-system', 'mesh'] }, "another agent's root namespace: ambit-system is listed, mesh-system is not");
});

t.test("an agent writes the enrollment file at its first sync, enrolled namespaces or not: an older agent's file is replaced", async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'enrollment.json');
  await writeFile(file, JSON.stringify({ version: 1, written: 'then', enrolledNamespaces: [] }));
  const store = storeWith([ns('plain')]);
  const handler = new CniHandler({ store, nodeName: 'node1', rootNamespace: 'mesh-system', runDir: dir, stateDir: dir, reconcileNow: async () => {}, podCreated: () => {}, ruleInPlace: async () => true, uninstall: async () => undefined, ready: () => true, log: silentLogger() });
  await handler.writeEnrollmentSnapshot();
  t.match(JSON.parse(await readFile(file, 'utf8')), { rootNamespace: 'mesh-system', enrolledNamespaces: [] });
});

t.test('ADD records the network and answers after the reconcile; DEL and CHECK; restart restores; uninstall', async (t) => {
  const dir = await tempDir(t);
  const store = storeWith([ns('mesh', { [ENROLL_LABEL]: 'enabled' }), ns('plain'), podObject('web', 'mesh'), podObject('db', 'plain'), podObject('other', 'mesh', { node: 'node2' })]);
  const applied: string[][] = [];
  const created: string[][] = [];
  let uninstalled = 0;
  const handler = new CniHandler({
    store,
    nodeName: 'node1',
    rootNamespace: 'ambit-system',
    runDir: dir,
    stateDir: dir,
    podCreated: (ips) => created.push([...ips]),
    reconcileNow: async () => {
      applied.push([...store.localEnrolledIps(4), ...store.localEnrolledIps(6)]);
      await handler.writeEnrollmentSnapshot();
    },
    ruleInPlace: async (ip) => applied.at(-1)?.includes(ip) ?? false,
    uninstall: async ({ ifMarked, removeFiles }) => {
      uninstalled++;
      if (ifMarked) return 'cancelled in this test';
      await removeFiles();
      return undefined;
    },
    ready: () => true,
    log: silentLogger(),
    podWaitMs: 200,
  });
  const pod = (name: string, namespace: string, ips: string[], containerId = 'c1') => ({ namespace, name, containerId, ips });
  const add = await handler.handle({ version: 1, op: 'add', pod: { ...pod('web', 'mesh', ['10.244.1.5']), hostInterfaces: ['cni0', 'veth1'] } });
  t.same(add, { version: 1, ok: true, enrolled: true, reason: 'namespace mesh has ambit.dev/mode=enabled' });
  t.same(applied.at(-1), ['10.244.1.5'], 'the reconcile that ran before the answer had the pod');
  t.same(created, [['10.244.1.5']], 'and knew it for a pod just created (no connections of its own to end)');
  const persisted = JSON.parse(await readFile(join(dir, 'cni-pods.json'), 'utf8')) as { pods: unknown[] };
  t.match(persisted.pods, [{ name: 'web', ips: ['10.244.1.5'], hostInterfaces: ['cni0', 'veth1'] }], 'the network and its host interfaces are recorded for a restart');
  t.equal((await stat(join(dir, 'cni-pods.json'))).mode & 0o777, 0o600);
  const snapshot = JSON.parse(await readFile(join(dir, 'enrollment.json'), 'utf8')) as { enrolledNamespaces: string[] };
  t.same(snapshot.enrolledNamespaces, ['mesh'], 'the enrollment file names the enrolled namespaces');

  const reconciles = applied.length;
  t.same(await handler.handle({ version: 1, op: 'add', pod: pod('db', 'plain', ['10.244.1.6']) }), {
    version: 1,
    ok: true,
    enrolled: false,
    reason: 'namespace plain is not labelled ambit.dev/mode=enabled',
  });
  t.equal(applied.length, reconciles, 'a pod outside the mesh costs no reconcile');
  t.equal(created.length, 1, 'and is not marked as created in the mesh');

  const started = Date.now();
  await t.rejects(handler.handle({ version: 1, op: 'add', pod: pod('late', 'mesh', ['10.244.1.7']) }), { code: 'not-ready', message: /has not seen pod mesh\/late yet/ });
  t.ok(Date.now() - started >= 180, 'waited for the pod object before giving up');
  await t.rejects(handler.handle({ version: 1, op: 'add', pod: pod('other', 'mesh', ['10.244.1.8']) }), { code: 'not-ready', message: /scheduled on node2/ });
  const dualStack = { ...pod('web', 'mesh', ['10.244.1.5', 'fd00::5']), hostInterfaces: ['cni0', 'veth1'] };
  t.match(await handler.handle({ version: 1, op: 'add', pod: dualStack }), { ok: true, enrolled: true }, 'a dual-stack pod is enrolled (its IPv6 is refused by the rules)');
  t.same(applied.at(-1), ['10.244.1.5', 'fd00::5'], 'answered after the reconcile that put both addresses in their sets');

  t.same(await handler.handle({ version: 1, op: 'check', pod: dualStack }), { version: 1, ok: true, enrolled: true, reason: 'namespace mesh has ambit.dev/mode=enabled' });
  applied.push(['10.244.1.5']);
  await t.rejects(handler.handle({ version: 1, op: 'check', pod: dualStack }), { code: 'rules-missing', message: /fd00::5 is not in the enrolled pod sets/ }, 'CHECK tests the IPv6 address too');
  applied.push(['10.244.1.5', 'fd00::5']);
  applied.push([]);
  await t.rejects(handler.handle({ version: 1, op: 'check', pod: pod('web', 'mesh', ['10.244.1.5']) }), { code: 'rules-missing' }, 'CHECK asks the kernel state, not memory');

  // A restart: a new store (the pod still Pending, so only the record knows its IP) and a new handler.
  const store2 = storeWith([ns('mesh', { [ENROLL_LABEL]: 'enabled' }), podObject('web', 'mesh')]);
  const handler2 = new CniHandler({ store: store2, nodeName: 'node1', rootNamespace: 'ambit-system', runDir: dir, stateDir: dir, reconcileNow: async () => {}, podCreated: () => {}, ruleInPlace: async () => true, uninstall: async () => undefined, ready: () => true, log: silentLogger() });
  t.equal(await handler2.restore(), 1);
  t.same(store2.localEnrolledIps(4), ['10.244.1.5'], 'after a restart the pod is captured again from the record');
  t.same(store2.podNetwork('mesh', 'web')?.hostInterfaces, ['cni0', 'veth1'], 'and bound to its interface again');
  const store3 = storeWith([ns('mesh', { [ENROLL_LABEL]: 'enabled' })]);
  const handler3 = new CniHandler({ store: store3, nodeName: 'node1', rootNamespace: 'ambit-system', runDir: dir, stateDir: dir, reconcileNow: async () => {}, podCreated: () => {}, ruleInPlace: async () => true, uninstall: async () => undefined, ready: () => true, log: silentLogger() });
  t.equal(await handler3.restore(), 0, 'a pod deleted while the agent was down is dropped');
  t.same(store3.podNetworks(), [], 'from the store too');

  // A restart before the first full sync: the pod's file may just not have parsed yet, so its record stays.
  await handler.handle({ version: 1, op: 'add', pod: pod('web', 'mesh', ['10.244.1.5']) });
  const store4 = storeWith([ns('mesh', { [ENROLL_LABEL]: 'enabled' })], 'node1', { synced: false });
  const handler4 = new CniHandler({ store: store4, nodeName: 'node1', rootNamespace: 'ambit-system', runDir: dir, stateDir: dir, reconcileNow: async () => {}, podCreated: () => {}, ruleInPlace: async () => true, uninstall: async () => undefined, ready: () => true, log: silentLogger() });
  t.equal(await handler4.restore(), 1, 'before the first full sync a record of a pod the store lacks is kept');
  t.equal((JSON.parse(await readFile(join(dir, 'cni-pods.json'), 'utf8')) as { pods: unknown[] }).pods.length, 1, 'and stays on disk');
  store4.applyBatch([{ op: 'upsert', kind: 'Pod', object: store2.pod('mesh', 'web')! }]);
  store4.markSynced();
  t.equal(await handler4.forgetNetworksOfGonePods(), 0, 'the file parsed and has the pod: the record stays');
  t.same(store4.localEnrolledIps(4), ['10.244.1.5'], 'and still captures it');
  store4.applyBatch([{ op: 'delete', kind: 'Pod', namespace: 'mesh', name: 'web' }]);
  t.equal(await handler4.forgetNetworksOfGonePods(), 1, 'once synced, a record without its pod goes');

  t.same(await handler.handle({ version: 1, op: 'del', pod: pod('web', 'mesh', [], 'another-sandbox') }), { version: 1, ok: true, reason: 'pod network removed' });
  t.same(store.localEnrolledIps(4), ['10.244.1.5'], "a DEL for another sandbox keeps this one's network");
  await handler.handle({ version: 1, op: 'del', pod: pod('web', 'mesh', []) });
  t.same(store.localEnrolledIps(4), [], 'DEL releases it');
  t.same(await handler.handle({ version: 1, op: 'del', pod: pod('never', 'mesh', []) }), { version: 1, ok: true, reason: 'pod network not known (nothing to do)' }, 'DEL of an unknown pod succeeds');

  t.same(await handler.handle({ version: 1, op: 'uninstall', ifMarked: true }), { version: 1, ok: false, error: { code: 'cancelled', message: 'cancelled in this test' } }, 'a refusal (an uninstall cancelled first) is an error naming why');
  t.ok(await stat(join(dir, 'enrollment.json')), 'and the files stay');
  t.same(await handler.handle({ version: 1, op: 'uninstall' }), { version: 1, ok: true, reason: 'rules removed' });
  t.equal(uninstalled, 2);
  await t.rejects(stat(join(dir, 'enrollment.json')), { code: 'ENOENT' }, 'uninstall leaves no state behind');
});

t.test('uninstall states: status waits for the marker to be read, a cancel still queued keeps the plugin out and ADD waiting, a done node starts pods plain', async (t) => {
  const dir = await tempDir(t);
  const store = storeWith([ns('mesh', { [ENROLL_LABEL]: 'enabled' }), podObject('web', 'mesh', { ip: '10.244.1.5' })]);
  let requested: boolean | undefined;
  let state: 'none' | 'done' | 'cancelling' = 'none';
  const handler = new CniHandler({
    store, nodeName: 'node1', rootNamespace: 'ambit-system', runDir: dir, stateDir: dir, reconcileNow: async () => {}, podCreated: () => {}, ruleInPlace: async () => true,
    uninstall: async () => undefined, uninstallRequested: () => requested, uninstallState: () => state, ready: () => true, log: silentLogger(),
  });
  const web = { version: 1, op: 'add' as const, pod: { namespace: 'mesh', name: 'web', containerId: 'c1', ips: ['10.244.1.5'] } };
  await t.rejects(handler.handle({ version: 1, op: 'status' }), { code: 'not-ready', message: /not read yet whether the mesh is being uninstalled/ }, 'the marker not read yet: no answer the installer could take for a cancel');
  requested = true;
  t.match(await handler.handle({ version: 1, op: 'status' }), { ok: true, uninstall: true });
  state = 'cancelling';
  await t.rejects(handler.handle(web), { code: 'not-ready', message: /cancelled and the rules are coming back/ }, 'a pod that starts while a cancel puts the rules back waits for them');
  state = 'done';
  t.match(await handler.handle(web), { ok: true, enrolled: false, reason: /uninstalled from this node/ }, 'once done, a pod starts outside the mesh');
  requested = false;
  state = 'none';
  t.match(await handler.handle({ version: 1, op: 'status' }), { ok: true, reason: 'agent ready' });
  t.notOk('uninstall' in (await handler.handle({ version: 1, op: 'status' })));
});
