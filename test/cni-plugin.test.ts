/**
 * The ambit-cni plugin: its decisions as pure functions with stub I/O, then the executable (`node dist/cni/main.js`
 * and the single executable) run as the container runtime runs it, against a fake agent on a unix socket.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CNI_PROTOCOL_VERSION, parseCniRequest, encodeCniMessage, type CniRequest, type CniResponse } from '../core/cni/index.js';
import { isAmbitError } from '../core/errors/errors.js';
import {
  CNI_ERROR_CODES,
  SUPPORTED_CNI_VERSIONS,
  STDIN_LIMIT,
  askAgent,
  buildAddResult,
  buildCniSea,
  enrollmentFileVerdict,
  parseCidrAddress,
  parseCniArgs,
  parseNetworkConfig,
  hostInterfacesFromResult,
  podIpsFromResult,
  runCniPlugin,
  type PluginIo,
} from '../cni/index.js';
import { needsRoot, skipReason } from './prerequisites.js';

const PLUGIN_MAIN = fileURLToPath(new URL('../cni/main.js', import.meta.url));

/** What bridge + host-local return: the bridge and the host veth without `sandbox`, the pod's eth0 with it. */
const BRIDGE_RESULT = Object.freeze({
  cniVersion: '1.0.0',
  interfaces: [
    { name: 'cni0', mac: '0a:58:0a:f4:01:01' },
    { name: 'veth5e1c2a7b', mac: '6e:2c:11:aa:bb:cc' },
    { name: 'eth0', mac: '0a:58:0a:f4:01:05', sandbox: '/var/run/netns/cni-1234' },
  ],
  ips: [{ interface: 2, address: '10.244.1.5/24', gateway: '10.244.1.1' }],
  routes: [{ dst: '0.0.0.0/0' }],
  dns: {},
});
/** ptp: the host veth carries the gateway's address, which is not the pod's. */
const PTP_RESULT = Object.freeze({
  cniVersion: '1.0.0',
  interfaces: [
    { name: 'veth0a1b2c3d', mac: 'aa:aa:aa:aa:aa:aa' },
    { name: 'eth0', mac: 'bb:bb:bb:bb:bb:bb', sandbox: '/var/run/netns/cni-5678' },
  ],
  ips: [
    { interface: 0, address: '10.244.2.1/32' },
    { interface: 1, address: '10.244.2.7/32', gateway: '10.244.2.1' },
    { interface: 1, address: 'FD00:10:244:2:0:0:0:7/128' },
  ],
});

const K8S_ARGS = 'IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc123def456;K8S_POD_UID=4f9c0d6e-2b1a-4c3d-9e8f-0a1b2c3d4e5f';

/** Where the executable is, or why this Node cannot make one (the test is then skipped, saying so). */
async function singleExecutable(): Promise<{ outFile: string } | { skip: string }> {
  try {
    return await buildCniSea();
  } catch (err) {
    if (isAmbitError(err, 'CNI_SEA_UNSUPPORTED')) return { skip: `this Node binary cannot build a single executable: ${err.message}` };
    throw err;
  }
}
// Built before any test starts: postject's injection holds this process's event loop for seconds, which would
// stall the fake agents of tests running meanwhile.
const built = await singleExecutable();
const seaSkip = skipReason('skip' in built ? built.skip : undefined);

// ---------------------------------------------------------------------------------------------------------------
// Pure parts

t.test('CNI_ARGS: containerd\'s pairs, with odd pairs skipped', async (t) => {
  const args = parseCniArgs(`${K8S_ARGS};junk;=x;K=a=b`);
  t.equal(args.get('K8S_POD_NAMESPACE'), 'demo');
  t.equal(args.get('K8S_POD_NAME'), 'web-1');
  t.equal(args.get('IgnoreUnknown'), '1');
  t.equal(args.get('K'), 'a=b', 'a value may contain =');
  t.notOk(args.has('junk'));
  t.equal(parseCniArgs('').size, 0);
});

t.test('pod IPs: the sandbox side of bridge and ptp results, canonical, without duplicates', async (t) => {
  t.same(podIpsFromResult(BRIDGE_RESULT), ['10.244.1.5']);
  t.same(podIpsFromResult(PTP_RESULT), ['10.244.2.7', 'fd00:10:244:2::7'], 'the host veth\'s address is not the pod\'s');
  t.same(podIpsFromResult({ ips: [{ address: '10.1.1.1/24' }, { address: '10.1.1.1/24' }] }), ['10.1.1.1'], 'no interface index: the pod\'s');
  t.same(podIpsFromResult({}), [], 'a result without ips');
  t.same(podIpsFromResult({ interfaces: [{ name: 'eth0', sandbox: '' }], ips: [{ interface: 0, address: '10.1.1.1/24' }] }), [], 'an empty sandbox is the host side');
});

t.test('host interfaces: those of the result outside the sandbox, names Linux accepts only', async (t) => {
  t.same(hostInterfacesFromResult(BRIDGE_RESULT), ['cni0', 'veth5e1c2a7b'], 'bridge: the bridge and the host veth (the agent tells them apart)');
  t.same(hostInterfacesFromResult(PTP_RESULT), ['veth0a1b2c3d']);
  t.same(hostInterfacesFromResult({ interfaces: [{ name: 'eth0', sandbox: '' }, { name: 'eth0', sandbox: '' }] }), ['eth0'], 'an empty sandbox is the host side, once');
  t.same(
    hostInterfacesFromResult({ interfaces: [{ name: 'a b' }, { name: 'x'.repeat(16) }, { name: '..' }, { name: 7 }, { name: 'veth/1' }] }),
    [],
    'a name no kernel would accept never reaches the agent',
  );
  t.same(hostInterfacesFromResult({}), []);
});

t.test('pod IPs: a malformed result is refused naming the field', async (t) => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['ips not a list', { ips: {} }, /prevResult\.ips" is not a list/],
    ['ip not an object', { ips: ['10.1.1.1/24'] }, /ips\[0\]" is not an object/],
    ['address without prefix', { ips: [{ address: '10.1.1.1' }] }, /ips\[0\]\.address" is not an address in CIDR form/],
    ['address not an IP', { ips: [{ address: 'pod/24' }] }, /CIDR/],
    ['interface out of range', { interfaces: [], ips: [{ interface: 0, address: '10.1.1.1/24' }] }, /ips\[0\]\.interface" is not an index/],
    ['interfaces not a list', { interfaces: 'eth0' }, /interfaces" is not a list/],
    ['sandbox not a string', { interfaces: [{ sandbox: 1 }] }, /sandbox" is not a string/],
  ];
  for (const [name, result, message] of cases) {
    t.throws(() => podIpsFromResult(result), { code: 'CNI_INVALID_CONFIG', cniCode: 7, message }, name);
  }
});

t.test('CIDR addresses', async (t) => {
  t.equal(parseCidrAddress('10.0.0.1/8'), '10.0.0.1');
  t.equal(parseCidrAddress('2001:DB8:0::1/64'), '2001:db8::1');
  for (const bad of ['10.0.0.1/33', '::1/129', '10.0.0.1/', '10.0.0.1/x', 'fe80::1%eth0/64', '010.0.0.1/8', 12, undefined]) {
    t.equal(parseCidrAddress(bad), undefined, `${String(bad)} is refused`);
  }
});

const stdinOf = (value: unknown): { data: Buffer; overLimit: boolean } => ({ data: Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)), overLimit: false });

t.test('network config: defaults, and the exact code for each kind of mistake', async (t) => {
  const config = parseNetworkConfig(stdinOf({ cniVersion: '1.0.0', name: 'k8s', type: 'ambit-cni', unknownKey: true }));
  t.same(config, {
    cniVersion: '1.0.0',
    name: 'k8s',
    type: 'ambit-cni',
    agentSocket: '/var/run/ambit/cni.sock',
    agentTimeoutMs: 5000,
    enrollmentFile: '/var/lib/ambit/enrollment.json',
    prevResult: undefined,
  });
  const stale = parseNetworkConfig(stdinOf({ cniVersion: '1.0.0', name: 'k8s', type: 'ambit-cni', rootNamespace: 'Not_A_Namespace' }));
  t.notOk('rootNamespace' in stale, "a rootNamespace an older installer wrote is ignored: the plugin takes the agent's from the enrollment file");
  const base = { cniVersion: '1.0.0', name: 'k8s', type: 'ambit-cni' };
  const cases: [string, unknown, number, RegExp][] = [
    ['not JSON', '{"cniVersion":', 6, /not valid JSON/],
    ['not an object', '[1]', 6, /not a JSON object/],
    ['no cniVersion', { name: 'k8s', type: 'ambit-cni' }, 7, /"cniVersion"/],
    ['cniVersion 0.2.0', { ...base, cniVersion: '0.2.0' }, 1, /0\.2\.0" is not supported/],
    ['no name', { ...base, name: undefined }, 7, /"name"/],
    ['no type', { ...base, type: '' }, 7, /"type"/],
    ['relative agentSocket', { ...base, agentSocket: 'run/cni.sock' }, 7, /"agentSocket" must be an absolute path/],
    ['relative enrollmentFile', { ...base, enrollmentFile: 'enrollment.json' }, 7, /"enrollmentFile" must be an absolute path/],
    ['agentSocket too long', { ...base, agentSocket: `/${'x'.repeat(120)}` }, 7, /"agentSocket" is longer than 107 bytes/],
    ['agentTimeoutMs too small', { ...base, agentTimeoutMs: 10 }, 7, /"agentTimeoutMs" must be an integer from 100 to 60000/],
    ['agentTimeoutMs not an integer', { ...base, agentTimeoutMs: 1000.5 }, 7, /"agentTimeoutMs"/],
    ['agentTimeoutMs a string', { ...base, agentTimeoutMs: '5000' }, 7, /"agentTimeoutMs"/],
    ['prevResult a list', { ...base, prevResult: [] }, 7, /"prevResult" is not an object/],
    ['meshNamespace not a namespace name', { ...base, meshNamespace: 'Ambit_System' }, 7, /"meshNamespace" must be a namespace name, got "Ambit_System"/],
  ];
  for (const [name, value, cniCode, message] of cases) {
    t.throws(() => parseNetworkConfig(stdinOf(value)), { cniCode, message }, name);
  }
  t.throws(() => parseNetworkConfig({ data: Buffer.alloc(10), overLimit: true }), { cniCode: 6, message: /larger than 1048576 bytes/ });
});

t.test('ADD result: the previous result with the configuration\'s cniVersion first', async (t) => {
  const result = buildAddResult('1.1.0', BRIDGE_RESULT);
  t.same(result, { ...BRIDGE_RESULT, cniVersion: '1.1.0' });
  t.equal(Object.keys(result)[0], 'cniVersion');
});

t.test('enrollment file verdicts', async (t) => {
  const file = '/run/ambit/enrollment.json';
  const snapshot = JSON.stringify({ version: 1, written: '2025-01-01T00:00:00Z', rootNamespace: 'ambit-system', enrolledNamespaces: ['demo'] });
  t.match(enrollmentFileVerdict('demo', file, snapshot), { enrolled: true, details: /written 2025-01-01/, warning: undefined });
  t.match(enrollmentFileVerdict('other', file, snapshot), { enrolled: false, warning: undefined });
  t.match(enrollmentFileVerdict('ambit-system', file, snapshot), { enrolled: false, details: /namespace ambit-system is the mesh's own \(the agent's --root-namespace in enrollment file/ });
  t.match(enrollmentFileVerdict('demo', file, undefined), { enrolled: false, warning: /does not exist \(no Ambit agent has written it on this node yet\)/ }, 'no file: no agent has written one here');
  // The DaemonSet's installer names its namespace in the entry: an agent is on its way, and only what it needs starts.
  const installed = { meshNamespace: 'ambit-system' };
  t.match(enrollmentFileVerdict('demo', file, undefined, installed), { enrolled: 'unknown', details: /does not exist: no Ambit agent has read the cluster on this node yet.*only pods of ambit-system and kube-system start/, warning: undefined }, 'no file on a node the DaemonSet installed: nobody here knows yet');
  t.match(enrollmentFileVerdict('ambit-system', file, undefined, installed), { enrolled: false, warning: undefined }, "the mesh's own namespace starts: the controller must, for the agent to read the cluster");
  t.match(enrollmentFileVerdict('kube-system', file, undefined, installed), { enrolled: false, warning: undefined }, "kube-system starts: the cluster's DNS must, for the agent to reach the controller");
  t.match(enrollmentFileVerdict('other', file, snapshot, installed), { enrolled: false, details: /written 2025-01-01/ }, 'once the agent has written the file, the file alone decides');
  t.match(enrollmentFileVerdict('kube-system', file, JSON.stringify({ version: 1, written: 'now', rootNamespace: 'mesh-system', enrolledNamespaces: ['kube-system'] }), installed), { enrolled: true }, "and the file's root namespace, not the entry's");
  t.match(enrollmentFileVerdict('demo', file, '{"enrolledNamespaces": "demo"}'), { enrolled: 'unknown', details: /is not an enrollment file/, warning: undefined });
  t.match(enrollmentFileVerdict('demo', file, ''), { enrolled: 'unknown', details: /is not an enrollment file \(enrollment file is not valid JSON/ }, 'an empty file is not "no file"');
  t.match(enrollmentFileVerdict('demo', file, undefined, { readError: new Error('EACCES') }), { enrolled: 'unknown', details: /cannot be read \(EACCES\)/, warning: undefined });
  t.match(
    enrollmentFileVerdict('ambit-system', file, '{"rootNamespace":"Not_A_Namespace","enrolledNamespaces":[]}'),
    { enrolled: 'unknown', details: /is not an enrollment file \(enrollment file "rootNamespace" is not a namespace name: "Not_A_Namespace"\), which names the mesh's own namespace too/ },
  );

  // The root namespace is the agent's, whatever it is: the enrollment file says which.
  const custom = JSON.stringify({ version: 1, written: 'now', rootNamespace: 'mesh-system', enrolledNamespaces: ['ambit-system'] });
  t.match(enrollmentFileVerdict('mesh-system', file, custom), { enrolled: false, details: /mesh-system is the mesh's own/ });
  t.match(enrollmentFileVerdict('ambit-system', file, custom), { enrolled: true }, 'under another root namespace, ambit-system is a namespace like any other');

  // An agent that predates rootNamespace left its root namespace out of the list, as every agent does: what it lists
  // waits, what it does not starts.
  const older = JSON.stringify({ version: 1, written: 'then', enrolledNamespaces: ['demo'] });
  t.match(enrollmentFileVerdict('demo', file, older), { enrolled: true, details: /written then by an agent that predates "rootNamespace": it names no root namespace, so every namespace it lists waits for the agent, which rewrites the file once it has read the cluster/ });
  t.match(enrollmentFileVerdict('ambit-system', file, older), { enrolled: false, warning: undefined });
});

/** Stub I/O: each part unused by a case throws, the linkerd "must not be called" stub. */
function stubIo(parts: Partial<PluginIo> & { stdin?: unknown }): PluginIo & { warnings: string[] } {
  const warnings: string[] = [];
  const mustNot = (what: string) => () => {
    throw new Error(`${what} must not be called`);
  };
  return {
    warnings,
    readStdin: parts.readStdin ?? (async () => stdinOf(parts.stdin)),
    askAgent: parts.askAgent ?? mustNot('askAgent'),
    readEnrollmentFile: parts.readEnrollmentFile ?? mustNot('readEnrollmentFile'),
    warn: (line) => warnings.push(line),
  };
}
const addEnv = (extra: Record<string, string> = {}) => ({
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'c0ffee',
  CNI_NETNS: '/var/run/netns/cni-1234',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
  CNI_ARGS: K8S_ARGS,
  ...extra,
});
const addConfig = (extra: Record<string, unknown> = {}) => ({ cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'ambit-cni', prevResult: BRIDGE_RESULT, ...extra });
const parseOut = (stdout: string) => JSON.parse(stdout) as Record<string, unknown>;

t.test('runCniPlugin: a container that is not a pod never reaches the agent or the enrollment file', async (t) => {
  const io = stubIo({ stdin: addConfig() });
  const outcome = await runCniPlugin(addEnv({ CNI_ARGS: 'IgnoreUnknown=1' }), io);
  t.equal(outcome.exitCode, 0);
  t.same(parseOut(outcome.stdout), BRIDGE_RESULT);
  t.same(io.warnings, []);
});

t.test('runCniPlugin: VERSION reads no stdin', async (t) => {
  const outcome = await runCniPlugin({ CNI_COMMAND: 'VERSION' }, stubIo({ readStdin: () => Promise.reject(new Error('stdin must not be read')) }));
  t.same(parseOut(outcome.stdout), { cniVersion: '1.1.0', supportedVersions: SUPPORTED_CNI_VERSIONS });
});

t.test('runCniPlugin: the request the agent gets', async (t) => {
  const asked: { socket: string; request: CniRequest; timeoutMs: number }[] = [];
  const io = stubIo({
    stdin: addConfig({ agentSocket: '/run/a/cni.sock', agentTimeoutMs: 700, prevResult: PTP_RESULT }),
    askAgent: async (socket, request, timeoutMs) => {
      asked.push({ socket, request, timeoutMs });
      return { version: CNI_PROTOCOL_VERSION, ok: true, enrolled: true };
    },
  });
  const outcome = await runCniPlugin(addEnv(), io);
  t.equal(outcome.exitCode, 0);
  t.same(asked, [
    {
      socket: '/run/a/cni.sock',
      timeoutMs: 700,
      request: {
        version: CNI_PROTOCOL_VERSION,
        op: 'add',
        pod: {
          namespace: 'demo',
          name: 'web-1',
          containerId: 'abc123def456',
          ips: ['10.244.2.7', 'fd00:10:244:2::7'],
          hostInterfaces: ['veth0a1b2c3d'],
          netns: '/var/run/netns/cni-1234',
        },
      },
    },
  ]);
  t.doesNotThrow(() => parseCniRequest(JSON.stringify(asked[0]?.request)), 'the agent\'s own parser accepts it');
});

t.test('runCniPlugin: without K8S_POD_INFRA_CONTAINER_ID the container ID is CNI_CONTAINERID', async (t) => {
  let pod: unknown;
  const io = stubIo({
    stdin: addConfig(),
    askAgent: async (_socket, request) => {
      pod = 'pod' in request ? request.pod : undefined;
      return { version: 1, ok: true };
    },
  });
  await runCniPlugin(addEnv({ CNI_ARGS: 'K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1' }), io);
  t.match(pod, { containerId: 'c0ffee' });
});

t.test('runCniPlugin: a pod without an IP fails only when its namespace is enrolled', async (t) => {
  const noIp = addConfig({ prevResult: { cniVersion: '1.0.0', interfaces: [], ips: [] } });
  const enrolled = JSON.stringify({ version: 1, written: 'now', enrolledNamespaces: ['demo'] });
  const failed = await runCniPlugin(addEnv(), stubIo({ stdin: noIp, readEnrollmentFile: async () => enrolled }));
  t.match(parseOut(failed.stdout), { code: 102, msg: /pod demo\/web-1 is in the mesh .* lists no IP/ });
  const unknown = await runCniPlugin(addEnv(), stubIo({ stdin: noIp, readEnrollmentFile: async () => '' }));
  t.match(parseOut(unknown.stdout), { code: 11, msg: /^cannot tell whether pod demo\/web-1 is in the mesh: .* lists no IP .* is not an enrollment file/ }, 'an empty file: cannot tell, retry');
  const passed = await runCniPlugin(addEnv(), stubIo({ stdin: noIp, readEnrollmentFile: async () => enrolled.replace('demo', 'other') }));
  t.equal(passed.exitCode, 0);
});

t.test('runCniPlugin: the agent\'s refusals map to CNI codes', async (t) => {
  const cases: [string, number, RegExp][] = [
    ['not-ready', 11, /^the Ambit agent is not ready for pod demo\/web-1: rules pending; the runtime will retry$/],
    ['rules-missing', 101, /redirect rules are missing/],
    ['internal', 100, /the Ambit agent refused pod demo\/web-1: rules pending/],
    ['bad-request', 100, /refused/],
  ];
  for (const [code, cniCode, msg] of cases) {
    const io = stubIo({ stdin: addConfig(), askAgent: async () => ({ version: 1, ok: false, error: { code, message: 'rules pending' } }) as CniResponse });
    const outcome = await runCniPlugin(addEnv(), io);
    t.equal(outcome.exitCode, 1, code);
    t.match(parseOut(outcome.stdout), { cniVersion: '1.0.0', code: cniCode, msg, details: `agent error code ${code}` }, code);
  }
});

t.test('runCniPlugin: a failing stdin is an I/O error, a bug is 199 without a stack on stdout', async (t) => {
  const io = stubIo({ readStdin: () => Promise.reject(new Error('EIO')) });
  t.match(parseOut((await runCniPlugin(addEnv(), io)).stdout), { code: 5, msg: /stdin: EIO/ });
  const buggy = stubIo({ stdin: addConfig(), askAgent: async () => ({ version: 1, ok: false }) as unknown as CniResponse });
  const outcome = await runCniPlugin(addEnv(), buggy);
  t.match(parseOut(outcome.stdout), { code: 199, msg: /failed unexpectedly/ });
  t.notMatch(outcome.stdout, /\n\s+at /);
  t.match(buggy.warnings[0], /\n\s+at /, 'the stack goes to stderr');
});

t.test('the error code table has no duplicates and keeps 1-99 to the spec\'s codes', async (t) => {
  const codes = Object.values(CNI_ERROR_CODES);
  t.equal(new Set(codes).size, codes.length);
  t.same(codes.filter((c) => c < 100), [1, 4, 5, 6, 7, 11]);
});

t.test('askAgent: an answer in pieces, and every way an agent can fail to answer, saying which', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ambit-cni-'));
  const servers: net.Server[] = [];
  t.teardown(async () => {
    for (const server of servers) server.close();
    await rm(dir, { recursive: true, force: true });
  });
  /** An agent that reads the request line, then does `behave`. */
  const agentAt = async (behave: (socket: net.Socket) => void): Promise<string> => {
    const socketPath = path.join(dir, `${servers.length}.sock`);
    const server = net.createServer((s) => {
      s.on('error', () => undefined);
      s.once('data', () => behave(s));
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    return socketPath;
  };
  const request: CniRequest = { version: CNI_PROTOCOL_VERSION, op: 'add', pod: { namespace: 'demo', name: 'web-1', containerId: 'abc', ips: ['10.1.1.1'] } };

  const pieces = await agentAt((s) => {
    s.write('{"version":1,');
    setTimeout(() => s.end('"ok":true,"enrolled":true}\n'), 20);
  });
  t.same(await askAgent(pieces, request, 2000), { version: 1, ok: true, enrolled: true });

  const failures: [string, (socket: net.Socket) => void, RegExp][] = [
    ['closes at once', (s) => s.end(), /closed the connection without answering/],
    ['closes mid-answer', (s) => s.end('{"version":1,'), /closed the connection in the middle of its answer/],
    ['answers too much', (s) => s.write('x'.repeat(20_000)), /garbled reply: longer than 16384 bytes/],
    ['answers a non-response', (s) => s.end('{"version":1}\n'), /garbled reply: response has no boolean "ok"/],
  ];
  for (const [name, behave, message] of failures) {
    await t.rejects(askAgent(await agentAt(behave), request, 2000), { code: 'CNI_AGENT_UNREACHABLE', message }, name);
  }
  await t.rejects(askAgent(path.join(dir, 'absent.sock'), request, 2000), { code: 'CNI_AGENT_UNREACHABLE', message: /^ENOENT: no socket/ });
});

// ---------------------------------------------------------------------------------------------------------------
// The executable

interface Run {
  readonly exitCode: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
}

/** Runs the plugin as the runtime does: only the given environment, the config on stdin. */
function runPlugin(command: string, args: string[], env: Record<string, string | undefined>, stdin: string | Buffer = ''): Promise<Run> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const cleanEnv = Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined));
    const child = spawn(command, args, { env: cleanEnv, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    // The plugin stops reading an oversized stdin and exits: the rest of our write fails with EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(stdin);
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (exitCode) => {
      clearTimeout(killer);
      resolve({ exitCode, stdout, stderr, ms: performance.now() - started });
    });
  });
}

/** stdout holds exactly one JSON object (and a newline). */
function onlyJson(t: Test, run: Run): Record<string, unknown> {
  t.match(run.stdout, /^\{.*\}\n$/s, 'stdout is one JSON document');
  let value: unknown;
  t.doesNotThrow(() => (value = JSON.parse(run.stdout)), 'stdout parses');
  t.ok(typeof value === 'object' && value !== null && !Array.isArray(value), 'stdout is a JSON object');
  return (value ?? {}) as Record<string, unknown>;
}

function expectCniError(t: Test, run: Run, code: number, msg?: RegExp): Record<string, unknown> {
  t.equal(run.exitCode, 1, `exit code 1 (stderr: ${run.stderr.trim()})`);
  const error = onlyJson(t, run);
  t.equal(error.code, code, `CNI error code ${code}: ${String(error.msg)}`);
  t.type(error.msg, 'string');
  t.type(error.cniVersion, 'string');
  t.type(error.details, 'string');
  if (msg) t.match(error.msg, msg);
  t.notMatch(run.stdout, /\n\s+at /, 'no stack trace on stdout');
  return error;
}

function expectPassthrough(t: Test, run: Run, prevResult: object, cniVersion = '1.0.0'): void {
  t.equal(run.exitCode, 0, `exit code 0 (stdout: ${run.stdout.trim()}, stderr: ${run.stderr.trim()})`);
  t.same(onlyJson(t, run), { ...prevResult, cniVersion }, 'prevResult passed through unchanged');
}

type Answer = CniResponse | 'hang' | 'garbage' | ((request: CniRequest) => CniResponse);

/** The agent's side of the socket, as small as the protocol allows; it keeps every request it got. */
class FakeAgent {
  readonly requests: CniRequest[] = [];
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();

  constructor(answer: Answer) {
    this.#server = net.createServer((socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
      socket.on('error', () => undefined);
      let buffered = '';
      socket.setEncoding('utf8').on('data', (chunk: string) => {
        buffered += chunk;
        const newline = buffered.indexOf('\n');
        if (newline < 0) return;
        const request = parseCniRequest(buffered.slice(0, newline));
        this.requests.push(request);
        if (answer === 'hang') return;
        if (answer === 'garbage') {
          socket.end('this is not JSON\n');
          return;
        }
        socket.end(encodeCniMessage(typeof answer === 'function' ? answer(request) : answer));
      });
    });
  }

  listen(socketPath: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(socketPath, () => resolve());
    });
  }

  close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

interface NodeDir {
  readonly dir: string;
  readonly socket: string;
  env(extra?: Record<string, string | undefined>): Record<string, string | undefined>;
  config(extra?: Record<string, unknown>): string;
  agent(answer: Answer): Promise<FakeAgent>;
  /** Writes the enrollment file as the agent does (root namespace ambit-system); null: as an agent that predates it did. */
  enroll(namespaces: string[], rootNamespace?: string | null): Promise<void>;
}

/** A node's run directory in a temp dir, removed with everything in it when the test ends. */
async function makeNode(t: Test): Promise<NodeDir> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ambit-cni-'));
  const socket = path.join(dir, 'cni.sock');
  const agents: FakeAgent[] = [];
  t.teardown(async () => {
    await Promise.all(agents.map((a) => a.close()));
    await rm(dir, { recursive: true, force: true });
  });
  return {
    dir,
    socket,
    env: (extra = {}) => ({ ...addEnv(), ...extra }),
    config: (extra = {}) => JSON.stringify(addConfig({ agentSocket: socket, enrollmentFile: path.join(dir, 'enrollment.json'), ...extra })),
    agent: async (answer) => {
      const agent = new FakeAgent(answer);
      await agent.listen(socket);
      agents.push(agent);
      return agent;
    },
    enroll: (namespaces, rootNamespace = 'ambit-system') =>
      writeFile(path.join(dir, 'enrollment.json'), JSON.stringify({ version: 1, written: new Date().toISOString(), enrolledNamespaces: namespaces, ...(rootNamespace === null ? {} : { rootNamespace }) })),
  };
}

const node = (env: Record<string, string | undefined>, stdin: string | Buffer = '') => runPlugin(process.execPath, [PLUGIN_MAIN], env, stdin);

/** How long starting the plugin takes on this machine now: VERSION touches neither stdin nor sockets. */
async function startupMs(run: (env: Record<string, string | undefined>) => Promise<Run>): Promise<number> {
  return (await run({ CNI_COMMAND: 'VERSION' })).ms;
}

t.test('VERSION', async (t) => {
  const run = await node({ CNI_COMMAND: 'VERSION' });
  t.equal(run.exitCode, 0);
  t.same(onlyJson(t, run), { cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
});

t.test('ADD of an enrolled pod: the agent gets the pod, the result passes through', async (t) => {
  const n = await makeNode(t);
  const agent = await n.agent({ version: CNI_PROTOCOL_VERSION, ok: true, enrolled: true, reason: 'namespace demo has ambit.dev/mode=enabled' });
  const run = await node(n.env(), n.config({ cniVersion: '1.1.0' }));
  expectPassthrough(t, run, BRIDGE_RESULT, '1.1.0');
  t.same(agent.requests, [
    {
      version: 1,
      op: 'add',
      pod: { namespace: 'demo', name: 'web-1', containerId: 'abc123def456', netns: '/var/run/netns/cni-1234', ips: ['10.244.1.5'], hostInterfaces: ['cni0', 'veth5e1c2a7b'] },
    },
  ]);
});

t.test('ADD of a pod outside the mesh passes through', async (t) => {
  const n = await makeNode(t);
  const agent = await n.agent({ version: CNI_PROTOCOL_VERSION, ok: true, enrolled: false });
  expectPassthrough(t, await node(n.env(), n.config()), BRIDGE_RESULT);
  t.equal(agent.requests.length, 1);
});

t.test('ADD under cniVersion 0.3.1 (flannel\'s and Calico\'s conflists)', async (t) => {
  const n = await makeNode(t);
  await n.agent({ version: CNI_PROTOCOL_VERSION, ok: true, enrolled: true });
  const prevResult = { ...BRIDGE_RESULT, cniVersion: '0.3.1', ips: [{ version: '4', interface: 2, address: '10.244.1.5/24' }] };
  expectPassthrough(t, await node(n.env(), n.config({ cniVersion: '0.3.1', prevResult })), prevResult, '0.3.1');
});

t.test('ADD the agent refuses fails with its message', async (t) => {
  const n = await makeNode(t);
  await n.agent({ version: CNI_PROTOCOL_VERSION, ok: false, error: { code: 'internal', message: 'ipset restore failed: exit 1' } });
  expectCniError(t, await node(n.env(), n.config()), 100, /the Ambit agent refused pod demo\/web-1: ipset restore failed: exit 1/);
});

t.test('ADD against an agent of another socket protocol version fails naming both versions and what to do', async (t) => {
  const n = await makeNode(t);
  const message = `protocol version ${CNI_PROTOCOL_VERSION} is not supported; this agent speaks ${CNI_PROTOCOL_VERSION + 1}`;
  await n.agent({ version: CNI_PROTOCOL_VERSION + 1, ok: false, error: { code: 'unsupported-version', message, supportedVersions: [CNI_PROTOCOL_VERSION + 1] } });
  const error = expectCniError(
    t,
    await node(n.env(), n.config()),
    100,
    new RegExp(`^pod demo/web-1 cannot be enrolled: the Ambit agent on this node speaks CNI socket protocol version ${CNI_PROTOCOL_VERSION + 1} and this ambit-cni plugin version ${CNI_PROTOCOL_VERSION}, .*restart the ambit-agent pod on this node`),
  );
  t.match(error.details, `the agent speaks protocol versions ${CNI_PROTOCOL_VERSION + 1}, this plugin ${CNI_PROTOCOL_VERSION}`);
});

t.test('ADD the agent is not ready for fails with "try again later"', async (t) => {
  const n = await makeNode(t);
  await n.agent({ version: CNI_PROTOCOL_VERSION, ok: false, error: { code: 'not-ready', message: 'the agent has not reconciled yet' } });
  expectCniError(t, await node(n.env(), n.config()), 11, /^the Ambit agent is not ready for pod demo\/web-1: the agent has not reconciled yet; the runtime will retry$/);
});

t.test('ADD with the agent down and the namespace enrolled: try again later', async (t) => {
  const n = await makeNode(t);
  await n.enroll(['demo', 'shop']);
  const run = await node(n.env(), n.config());
  const error = expectCniError(
    t,
    run,
    11,
    /^pod demo\/web-1 is in the mesh \(namespace demo is enrolled\) but the Ambit agent at .*cni\.sock did not answer: ENOENT: no socket.*; the runtime will retry$/,
  );
  t.match(error.details, /enrollment file .*enrollment\.json written /);
});

/** A socket file nobody listens on: what a crashed agent leaves behind (connect gives ECONNREFUSED). */
async function staleSocket(socketPath: string): Promise<void> {
  const script = `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, 'SIGKILL'))`;
  await new Promise<void>((resolve, reject) => spawn(process.execPath, ['-e', script], { stdio: 'ignore' }).on('exit', () => resolve()).on('error', reject));
  await stat(socketPath);
}

t.test('ADD with the agent down and the namespace not enrolled passes through at once', async (t) => {
  const n = await makeNode(t);
  await n.enroll(['shop']);
  // A long timeout, so that waiting for it would show; "at once" is within a second of a bare start on a busy machine.
  const config = n.config({ agentTimeoutMs: 20_000 });
  const absent = await node(n.env(), config);
  const baseline = await startupMs(node);
  expectPassthrough(t, absent, BRIDGE_RESULT);
  t.ok(absent.ms < baseline + 1000, `no socket: ${absent.ms.toFixed(0)} ms (a bare start: ${baseline.toFixed(0)} ms)`);
  t.equal(absent.stderr, '', 'nothing to warn about: the enrollment file is clear');

  await staleSocket(n.socket);
  const refused = await node(n.env(), config);
  expectPassthrough(t, refused, BRIDGE_RESULT);
  t.ok(refused.ms < baseline + 1000, `connection refused: ${refused.ms.toFixed(0)} ms (a bare start: ${baseline.toFixed(0)} ms)`);
  await n.enroll(['demo']);
  expectCniError(t, await node(n.env(), config), 11, /did not answer: ECONNREFUSED: nothing listens/);
});

t.test('ADD with the agent down and no enrollment file passes through with a warning', async (t) => {
  const n = await makeNode(t);
  const run = await node(n.env(), n.config());
  expectPassthrough(t, run, BRIDGE_RESULT);
  t.match(run.stderr, /^ambit-cni: the Ambit agent at .* did not answer \(ENOENT.*\) and .*enrollment\.json does not exist .*pod demo\/web-1 starts without mesh capture/);
});

t.test("ADD with the agent down and no enrollment file on a node the DaemonSet installed: only kube-system's and the mesh's pods start", async (t) => {
  const n = await makeNode(t);
  const config = n.config({ meshNamespace: 'ambit-system' });
  const pod = (namespace: string) => n.env({ CNI_ARGS: `K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=web-1` });
  for (const namespace of ['demo', 'plain']) {
    const run = await node(pod(namespace), config);
    expectCniError(t, run, 11, new RegExp(`^cannot tell whether pod ${namespace}/web-1 is in the mesh: the Ambit agent at .* did not answer \\(ENOENT.*\\) and .*enrollment\\.json does not exist: no Ambit agent has read the cluster on this node yet.*only pods of ambit-system and kube-system start; the runtime will retry$`));
    t.equal(run.stderr, '', `${namespace}: no warning, the CNI error says it`);
  }
  for (const namespace of ['kube-system', 'ambit-system']) {
    const run = await node(pod(namespace), config);
    expectPassthrough(t, run, BRIDGE_RESULT);
    t.equal(run.stderr, '', `${namespace} starts`);
  }
  await n.enroll(['demo']);
  expectPassthrough(t, await node(pod('plain'), config), BRIDGE_RESULT);
  t.pass('once the agent has written the file, a namespace it does not enroll starts again');
});

/**
 * The files the plugin may find after a power loss or a mistake, and what each must not be taken for: "no agent
 * ever ran here". Each fails ADD with 11 (the runtime retries) and names the file and what is wrong with it.
 */
const UNUSABLE_ENROLLMENT_FILES: Array<[string, (file: string) => Promise<unknown>, RegExp]> = [
  ['empty, as a power loss before the data reached the disk leaves it', (file) => writeFile(file, ''), /is not an enrollment file \(enrollment file is not valid JSON/],
  ['truncated', (file) => writeFile(file, '{"version":1,"enrolledNamespaces":["de'), /is not an enrollment file \(enrollment file is not valid JSON/],
  ['corrupt bytes', (file) => writeFile(file, Buffer.from([0, 0, 0xff, 0x7b])), /is not an enrollment file \(enrollment file is not valid JSON/],
  ['JSON without the list of namespaces', (file) => writeFile(file, '{"enrolledNamespaces":"demo"}'), /is not an enrollment file \(enrollment file has no "enrolledNamespaces" list/],
  // As root, mode bits do not stop a read; a folder in the file's place makes the read itself fail (EISDIR).
  ['a folder in its place, so that reading it fails (EISDIR)', (file) => mkdir(file), /cannot be read \(EISDIR/],
];

t.test('ADD with the agent down and an enrollment file that cannot be used: try again later, naming the file and why', async (t) => {
  const n = await makeNode(t);
  const file = path.join(n.dir, 'enrollment.json');
  for (const [what, make, why] of UNUSABLE_ENROLLMENT_FILES) {
    await rm(file, { recursive: true, force: true });
    await make(file);
    const run = await node(n.env(), n.config());
    const error = expectCniError(t, run, 11, new RegExp(`^cannot tell whether pod demo/web-1 is in the mesh: the Ambit agent at .*cni\\.sock did not answer \\(ENOENT.*\\) and ${file.replace(/[.]/g, '\\.')} ${why.source}.*the runtime will retry`));
    t.match(error.details, new RegExp(`${file.replace(/[.]/g, '\\.')} `), `${what}: details name the file`);
    t.pass(`${what}: ADD fails with 11`);
  }
});

/** Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH is held to mode bits, as a hardened runtime's plugins are. */
const SETPRIV = ['/usr/bin/setpriv', '--bounding-set', '-dac_override,-dac_read_search'];
const noDacOverride = needsRoot("it drops root's file-permission override") || skipReason(existsSync(SETPRIV[0]!) ? undefined : `needs ${SETPRIV[0]} (util-linux)`);

t.test('ADD with the agent down and an enrollment file the plugin may not read (EACCES: root without CAP_DAC_OVERRIDE, a file of another user, mode 0600)', { skip: noDacOverride }, async (t) => {
  const n = await makeNode(t);
  const file = path.join(n.dir, 'enrollment.json');
  await n.enroll(['shop']);
  await chown(file, 65534, 65534);
  await chmod(file, 0o600);
  const run = await runPlugin(SETPRIV[0]!, [...SETPRIV.slice(1), process.execPath, PLUGIN_MAIN], n.env(), n.config());
  expectCniError(t, run, 11, /^cannot tell whether pod demo\/web-1 is in the mesh: .* and .*enrollment\.json cannot be read \(EACCES: permission denied.*the runtime will retry/);
  t.equal(run.stderr, '', 'nothing on stderr: the CNI error says it all');
  expectPassthrough(t, await node(n.env(), n.config()), BRIDGE_RESULT);
  t.pass('the same file, readable with the override, says the pod is not enrolled: the failure above was the read');
});

t.test("ADD with the agent down: the mesh's own namespace is the one the agent wrote into the enrollment file", async (t) => {
  const n = await makeNode(t);
  const file = path.join(n.dir, 'enrollment.json');
  const pod = (namespace: string) => n.env({ CNI_ARGS: `K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=controller-1` });
  await n.enroll(['ambit-system'], 'mesh-system');
  expectPassthrough(t, await node(pod('mesh-system'), n.config()), BRIDGE_RESULT);
  t.pass("the agent's root namespace starts");
  // A rootNamespace key an older installer left in the conflist does not count: only the agent's does.
  expectCniError(t, await node(pod('ambit-system'), n.config({ rootNamespace: 'ambit-system' })), 11, /pod ambit-system\/controller-1 is in the mesh \(namespace ambit-system is enrolled\)/);

  await n.enroll(['demo'], null);
  expectPassthrough(t, await node(pod('ambit-system'), n.config()), BRIDGE_RESULT);
  const held = expectCniError(t, await node(pod('demo'), n.config()), 11, /pod demo\/controller-1 is in the mesh \(namespace demo is enrolled\)/);
  t.match(held.details, /predates "rootNamespace": it names no root namespace, so every namespace it lists waits for the agent/, 'a file of an older agent: what it lists waits, saying why');

  for (const [what, make] of UNUSABLE_ENROLLMENT_FILES) {
    await rm(file, { recursive: true, force: true });
    await make(file);
    expectCniError(t, await node(pod('ambit-system'), n.config()), 11, /^cannot tell whether pod ambit-system\/controller-1 is in the mesh: .*, which names the mesh's own namespace too, so no pod starts on it; the runtime will retry$/);
    t.pass(`${what}: the file that would name the root namespace cannot be used, so its pods wait for the agent too`);
  }
});

t.test('ADD with an agent that accepts and never answers fails after agentTimeoutMs for an enrolled namespace', async (t) => {
  const n = await makeNode(t);
  await n.enroll(['demo']);
  const agent = await n.agent('hang');
  const run = await node(n.env(), n.config({ agentTimeoutMs: 300 }));
  expectCniError(t, run, 11, /did not answer: no answer within 300 ms/);
  t.equal(agent.requests.length, 1);
  t.ok(run.ms >= 300 && run.ms < 3000, `failed after ${run.ms.toFixed(0)} ms`);
});

t.test('ADD with a garbled reply is treated as an agent that cannot be reached', async (t) => {
  const n = await makeNode(t);
  await n.enroll(['demo']);
  await n.agent('garbage');
  expectCniError(t, await node(n.env(), n.config()), 11, /garbled reply: response is not valid JSON/);
  await n.enroll([]);
  expectPassthrough(t, await node(n.env(), n.config()), BRIDGE_RESULT);
});

t.test('a container without K8S_POD_* in CNI_ARGS passes through without the agent', async (t) => {
  const n = await makeNode(t);
  await n.enroll(['demo']);
  const agent = await n.agent({ version: CNI_PROTOCOL_VERSION, ok: false, error: { code: 'internal', message: 'must not be asked' } });
  expectPassthrough(t, await node(n.env({ CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_UID=x' }), n.config()), BRIDGE_RESULT);
  expectPassthrough(t, await node(n.env({ CNI_ARGS: undefined }), n.config()), BRIDGE_RESULT);
  t.equal(agent.requests.length, 0);
});

t.test('DEL tells the agent and never fails', async (t) => {
  const n = await makeNode(t);
  const down = await node(n.env({ CNI_COMMAND: 'DEL', CNI_NETNS: undefined, CNI_PATH: undefined }), n.config());
  t.equal(down.exitCode, 0, 'agent down');
  t.equal(down.stdout, '');
  t.match(down.stderr, /could not tell the Ambit agent .* pod demo\/web-1 is gone/);

  const agent = await n.agent({ version: CNI_PROTOCOL_VERSION, ok: false, error: { code: 'internal', message: 'no such pod' } });
  const unknown = await node(n.env({ CNI_COMMAND: 'DEL', CNI_NETNS: '' }), n.config({ prevResult: undefined }));
  t.equal(unknown.exitCode, 0, 'a pod the agent does not know');
  t.equal(unknown.stdout, '');
  t.same(agent.requests, [{ version: 1, op: 'del', pod: { namespace: 'demo', name: 'web-1', containerId: 'abc123def456', ips: [] } }]);

  const broken = await node(n.env({ CNI_COMMAND: 'DEL' }), n.config({ prevResult: { ips: 'nope' } }));
  t.equal(broken.exitCode, 0, 'a malformed prevResult does not stop DEL');
});

t.test('DEL waits at most a second for a stalled agent', async (t) => {
  const n = await makeNode(t);
  await n.agent('hang');
  const run = await node(n.env({ CNI_COMMAND: 'DEL' }), n.config({ agentTimeoutMs: 30_000 }));
  const baseline = await startupMs(node);
  t.equal(run.exitCode, 0);
  t.equal(run.stdout, '');
  t.ok(run.ms < baseline + 2000, `${run.ms.toFixed(0)} ms (a bare start: ${baseline.toFixed(0)} ms)`);
});

t.test('CHECK', async (t) => {
  const n = await makeNode(t);
  let answer: CniResponse = { version: 1, ok: true, enrolled: true };
  const agent = await n.agent(() => answer);
  const ok = await node(n.env({ CNI_COMMAND: 'CHECK' }), n.config());
  t.equal(ok.exitCode, 0);
  t.equal(ok.stdout, '');
  t.match(agent.requests[0], { op: 'check', pod: { namespace: 'demo', ips: ['10.244.1.5'] } });
  answer = { version: 1, ok: false, error: { code: 'rules-missing', message: '10.244.1.5 is not in ipset ambit-pods-v4' } };
  expectCniError(t, await node(n.env({ CNI_COMMAND: 'CHECK' }), n.config()), 101, /redirect rules are missing: 10\.244\.1\.5 is not in ipset/);
  expectCniError(t, await node(n.env({ CNI_COMMAND: 'CHECK' }), n.config({ cniVersion: '0.3.1' })), 1, /CHECK needs cniVersion 0\.4\.0/);
  expectCniError(t, await node(n.env({ CNI_COMMAND: 'CHECK' }), n.config({ prevResult: undefined })), 7, /needs "prevResult"/);
});

t.test('CHECK with the agent down fails only for an enrolled namespace', async (t) => {
  const n = await makeNode(t);
  await n.enroll(['shop']);
  const run = await node(n.env({ CNI_COMMAND: 'CHECK' }), n.config());
  t.equal(run.exitCode, 0);
  t.equal(run.stdout, '');
  await n.enroll(['demo']);
  expectCniError(t, await node(n.env({ CNI_COMMAND: 'CHECK' }), n.config()), 11);
});

t.test('STATUS succeeds for a valid configuration, agent or not', async (t) => {
  const n = await makeNode(t);
  const run = await node({ CNI_COMMAND: 'STATUS' }, n.config({ cniVersion: '1.1.0', prevResult: undefined }));
  t.equal(run.exitCode, 0);
  t.equal(run.stdout, '');
  expectCniError(t, await node({ CNI_COMMAND: 'STATUS' }, n.config({ cniVersion: '1.1.0', agentTimeoutMs: 0 })), 7, /"agentTimeoutMs"/);
  expectCniError(t, await node({ CNI_COMMAND: 'STATUS' }, n.config({ cniVersion: '1.0.0' })), 1, /STATUS needs cniVersion 1\.1\.0/);
  const gc = await node({ CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' }, n.config({ cniVersion: '1.1.0' }));
  t.equal(gc.exitCode, 0, 'GC: nothing of the plugin\'s own to collect');
});

t.test('bad input: the exact CNI error code for each', async (t) => {
  const n = await makeNode(t);
  expectCniError(t, await node(n.env(), '{"cniVersion": "1.0.0", '), 6, /not valid JSON/);
  expectCniError(t, await node(n.env(), ''), 6, /not valid JSON/);
  expectCniError(t, await node(n.env(), n.config({ prevResult: undefined })), 7, /ADD needs "prevResult": ambit-cni is a chained plugin/);
  expectCniError(t, await node(n.env(), n.config({ prevResult: { ips: '10.244.1.5/24' } })), 7, /"prevResult\.ips" is not a list/);
  expectCniError(t, await node(n.env(), n.config({ prevResult: { ips: [{ interface: 0, address: '10.244.1.5' }], interfaces: [{ name: 'eth0', sandbox: '/x' }] } })), 7, /not an address in CIDR form/);
  expectCniError(t, await node(n.env({ CNI_ARGS: 'IgnoreUnknown=1' }), n.config({ prevResult: { ips: {} } })), 7, /is not a list/);
  const unsupported = expectCniError(t, await node(n.env(), n.config({ cniVersion: '0.2.0' })), 1, /cniVersion "0\.2\.0" is not supported; ambit-cni supports 0\.3\.0, 0\.3\.1, 0\.4\.0, 1\.0\.0, 1\.1\.0/);
  t.equal(unsupported.cniVersion, '1.1.0', 'an error before the version is known speaks the newest');
  expectCniError(t, await node(n.env(), n.config({ cniVersion: '2.0.0' })), 1);
  expectCniError(t, await node(n.env(), n.config({ agentSocket: 'cni.sock' })), 7, /"agentSocket" must be an absolute path/);
  expectCniError(t, await node(n.env({ CNI_COMMAND: 'FROB' }), n.config()), 4, /CNI_COMMAND "FROB" is not one of/);
});

t.test('each missing CNI_* variable is error 4 naming it', async (t) => {
  const n = await makeNode(t);
  const cases: [string, string][] = [
    ['ADD', 'CNI_COMMAND'],
    ['ADD', 'CNI_CONTAINERID'],
    ['ADD', 'CNI_NETNS'],
    ['ADD', 'CNI_IFNAME'],
    ['ADD', 'CNI_PATH'],
    ['CHECK', 'CNI_NETNS'],
    ['DEL', 'CNI_CONTAINERID'],
    ['DEL', 'CNI_IFNAME'],
  ];
  for (const [command, variable] of cases) {
    const run = await node(n.env({ CNI_COMMAND: command, [variable]: undefined }), n.config());
    expectCniError(t, run, 4, new RegExp(`^${variable} is not set`));
  }
  const empty = await node(n.env({ CNI_IFNAME: '' }), n.config());
  expectCniError(t, empty, 4, /^CNI_IFNAME is not set/);
});

t.test('10 MB on stdin is refused promptly, unread', async (t) => {
  const n = await makeNode(t);
  const huge = Buffer.alloc(10 * 1024 * 1024, 0x20);
  const run = await node(n.env(), huge);
  const baseline = await startupMs(node);
  expectCniError(t, run, 6, new RegExp(`larger than ${STDIN_LIMIT} bytes`));
  t.ok(run.ms < baseline + 2000, `${run.ms.toFixed(0)} ms (a bare start: ${baseline.toFixed(0)} ms)`);
});

// ---------------------------------------------------------------------------------------------------------------
// The single executable: built once into dist/ (about 100 MB) at the top of this file, reused while up to date.

t.test('the single executable runs the same plugin', { skip: seaSkip }, async (t) => {
  if (!('outFile' in built)) return;
  const outFile = built.outFile;
  const sea = (env: Record<string, string | undefined>, stdin: string | Buffer = '') => runPlugin(outFile, [], env, stdin);
  const version = await sea({ CNI_COMMAND: 'VERSION' });
  t.equal(version.exitCode, 0);
  t.same(onlyJson(t, version), { cniVersion: '1.1.0', supportedVersions: SUPPORTED_CNI_VERSIONS });
  t.equal(version.stderr, '', 'no experimental-feature warning');

  const n = await makeNode(t);
  await n.enroll(['shop']);
  const outside = await sea(n.env(), n.config({ agentTimeoutMs: 20_000 }));
  const baseline = await startupMs(sea);
  expectPassthrough(t, outside, BRIDGE_RESULT);
  t.ok(outside.ms < baseline + 1000, `a pod outside the mesh with the agent down: ${outside.ms.toFixed(0)} ms (a bare start: ${baseline.toFixed(0)} ms)`);

  const agent = await n.agent({ version: CNI_PROTOCOL_VERSION, ok: true, enrolled: true });
  expectPassthrough(t, await sea(n.env(), n.config()), BRIDGE_RESULT);
  t.match(agent.requests, [{ op: 'add', pod: { namespace: 'demo', name: 'web-1', ips: ['10.244.1.5'] } }]);
  expectCniError(t, await sea(n.env(), '{'), 6);

  t.equal((await buildCniSea()).built, false, 'a second build with nothing changed is skipped');
});
