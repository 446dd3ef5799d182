import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { AmbitError, errnoCode } from '../core/errors/index.js';
import { SOCKOPT_ADDON_PATH, originalDestination, setTransparent, transparentSocket } from '../core/sockopt/index.js';
import { needsRoot, needsTools } from './prerequisites.js';

/** A connected loopback pair: `accepted` is the server's side, the one a capturing listener would query. */
async function loopbackPair(t: Test): Promise<{ client: net.Socket; accepted: net.Socket }> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepting = once(server, 'connection');
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const [accepted] = (await accepting) as [net.Socket];
  await once(client, 'connect');
  t.teardown(() => {
    client.destroy();
    accepted.destroy();
    server.close();
  });
  return { client, accepted };
}

t.test('a connection that was not DNATed has no original destination', async (t) => {
  const { accepted } = await loopbackPair(t);
  // With conntrack active in this namespace (someone's nat rules), the kernel answers with the real destination.
  let result: unknown;
  try {
    result = originalDestination(accepted);
  } catch (err) {
    t.ok(err instanceof AmbitError, 'an AmbitError');
    t.equal((err as AmbitError).code, 'ORIGINAL_DST_UNAVAILABLE');
    const expected = existsSync('/sys/module/nf_conntrack') ? 'ENOENT' : 'ENOPROTOOPT';
    t.equal(errnoCode((err as AmbitError).cause), expected, `the kernel said ${expected}`);
    t.match((err as Error).message, /127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+/, 'the message names the connection');
    return;
  }
  t.same(result, { address: '127.0.0.1', port: accepted.localPort, family: 4 }, 'conntrack reports the real destination');
});

t.test('a socket without a file descriptor is refused', async (t) => {
  t.throws(() => originalDestination(new net.Socket()), { code: 'NO_FD' });
  t.throws(() => setTransparent(new net.Socket(), true), { code: 'NO_FD' });
});

t.test('bad arguments are TypeErrors', async (t) => {
  const addon = createRequire(import.meta.url)(SOCKOPT_ADDON_PATH) as Record<string, (...args: unknown[]) => unknown>;
  const originalDst = addon.originalDst!;
  t.throws(() => originalDst(-1, 4), new TypeError('originalDst: fd must be an integer from 0 to 2147483647'));
  t.throws(() => originalDst('3', 4), TypeError);
  t.throws(() => originalDst(1.5, 4), TypeError);
  t.throws(() => originalDst(3, 5), new TypeError('originalDst: family must be 4 or 6'));
  t.throws(() => originalDst(3), new TypeError('originalDst: expected 2 arguments, got 1'));
  t.throws(() => addon.setTransparent!(3, 4, 1), new TypeError('setTransparent: on must be a boolean'));
  t.throws(() => originalDst(2 ** 30, 4), { code: 'EBADF', syscall: 'getsockopt', errno: -9 }, 'a closed fd is EBADF');

  const { client } = await loopbackPair(t);
  t.throws(() => setTransparent(client, 'yes' as unknown as boolean), TypeError, 'the wrappers pass TypeErrors through');

  const open = addon.transparentSocket!;
  t.throws(() => open(), new TypeError('transparentSocket: expected 1 arguments, got 0'));
  t.throws(() => open(17), new TypeError('transparentSocket: address must be an IPv4 or IPv6 address string'));
  t.throws(() => open('x'.repeat(100)), new TypeError('transparentSocket: address must be an IPv4 or IPv6 address string'), 'too long to be one');
  t.throws(() => open('10.0.0.300'), new TypeError('transparentSocket: address "10.0.0.300" is not an IPv4 or IPv6 address'));
  t.throws(() => open('fe80::1%eth0'), TypeError, 'a scope is not an address');
  t.throws(() => transparentSocket('localhost'), TypeError, 'the wrapper passes TypeErrors through');
});

const skipNamespace = needsRoot('network namespaces and iptables') || needsTools(['ip', 'iptables', 'ip6tables']);
const skipUnprivileged = skipNamespace || needsTools(['setpriv'], 'util-linux');

// Runs inside the namespace: every connection goes to a DNATed address and the accepting side reports what
// originalDestination says. The parent cannot enter a namespace, so this is a separate process.
const CHILD_SCRIPT = `
import net from 'node:net';
import { once } from 'node:events';

const { originalDestination, setTransparent } = await import(process.argv[2]);

async function connectThrough(listen, connect, onConnected = () => {}) {
  const server = net.createServer();
  server.listen({ host: listen.host, port: listen.port, ipv6Only: false });
  await once(server, 'listening');
  const accepting = once(server, 'connection');
  const client = net.connect(connect.port, connect.host);
  await once(client, 'connect');
  const [accepted] = await accepting;
  let result;
  try {
    result = originalDestination(accepted);
  } catch (err) {
    result = { error: err.code, cause: err.cause?.code };
  }
  onConnected(client, accepted);
  const received = once(accepted, 'data');
  client.write('x');
  await received;
  client.destroy();
  accepted.destroy();
  server.close();
  return result;
}

const report = {
  ipv4: await connectThrough({ host: '127.0.0.1', port: 15001 }, { host: '127.0.0.1', port: 7777 }, (_, accepted) => {
    setTransparent(accepted, true);
  }),
  ipv6: await connectThrough({ host: '::1', port: 15001 }, { host: '::1', port: 7777 }),
  dualStack: await connectThrough({ host: '::', port: 15002 }, { host: '127.0.0.1', port: 7778 }),
  notCaptured: await connectThrough({ host: '127.0.0.1', port: 15003 }, { host: '127.0.0.1', port: 15003 }),
};
process.stdout.write(JSON.stringify(report));
`;

/** A fresh network namespace with lo up, deleted when the test ends; `run` executes a command inside it. */
function namespaceFor(t: Test, role: string): { name: string; run: (command: string, ...args: string[]) => string } {
  const name = `ambit-sockopt-${role}-${randomBytes(4).toString('hex')}`;
  execFileSync('ip', ['netns', 'add', name]);
  t.teardown(() => execFileSync('ip', ['netns', 'delete', name]));
  const run = (command: string, ...args: string[]): string => execFileSync('ip', ['netns', 'exec', name, command, ...args], { encoding: 'utf8' });
  run('ip', 'link', 'set', 'lo', 'up');
  return { name, run };
}

function writeScratchScript(t: Test, name: string, text: string): string {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'ambit-sockopt-'));
  t.teardown(() => rmSync(scratch, { recursive: true, force: true }));
  const file = path.join(scratch, name);
  writeFileSync(file, text);
  return file;
}

// Runs inside a namespace as root: what a plain bind and a transparent one do with an address the host lacks, that
// the descriptor Node adopts keeps its bound address through connect, and that failures leave no descriptor behind.
const TRANSPARENT_SCRIPT = `
import net from 'node:net';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';

const { transparentSocket } = await import(process.argv[2]);
const openFds = () => readdirSync('/proc/self/fd').length;
const report = {};

const server = net.createServer((socket) => socket.end(socket.remoteAddress));
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const { port } = server.address();

const plain = net.connect({ host: '127.0.0.1', port, localAddress: '203.0.113.7' });
report.plainBind = await new Promise((resolve) => {
  plain.once('connect', () => resolve('connected'));
  plain.once('error', (err) => resolve(err.code));
});

const v4 = transparentSocket('203.0.113.7');
report.v4Bound = v4.address();
v4.destroy();
const v6 = transparentSocket('2001:db8::7');
report.v6Bound = v6.address();
v6.destroy();

// 127.0.0.5 is local, so the listener's reply comes back without any routing: this shows the bound address survives
// Node adopting the descriptor and connecting it
const adopted = transparentSocket('127.0.0.5', { allowHalfOpen: true });
adopted.connect({ host: '127.0.0.1', port });
const chunks = [];
adopted.on('data', (chunk) => chunks.push(chunk));
await once(adopted, 'end');
report.adoptedLocal = adopted.address();
report.serverSaw = Buffer.concat(chunks).toString();
adopted.destroy();

const before = openFds();
try {
  transparentSocket('fe80::1');
  report.bindFailure = 'no error';
} catch (err) {
  report.bindFailure = { code: err.code, cause: err.cause?.code, syscall: err.cause?.syscall, message: err.message };
}
report.fdsLeaked = openFds() - before;
server.close();
process.stdout.write(JSON.stringify(report));
`;

t.test('transparentSocket binds to an address the host lacks, keeps it through connect, and leaks nothing', { skip: skipNamespace }, async (t) => {
  const ns = namespaceFor(t, 'tp');
  const script = writeScratchScript(t, 'transparent.mjs', TRANSPARENT_SCRIPT);
  const report = JSON.parse(ns.run(process.execPath, script, new URL('../core/sockopt/index.js', import.meta.url).href)) as Record<string, unknown>;
  t.equal(report.plainBind, 'EADDRNOTAVAIL', 'without IP_TRANSPARENT a non-local bind fails');
  t.same(report.v4Bound, { address: '203.0.113.7', family: 'IPv4', port: 0 }, 'with it the bind succeeds; the port waits for connect');
  t.same(report.v6Bound, { address: '2001:db8::7', family: 'IPv6', port: 0 }, 'IPv6 too');
  t.equal(report.serverSaw, '127.0.0.5', 'the peer sees the bound address');
  t.match(report.adoptedLocal, { address: '127.0.0.5', family: 'IPv4' });
  t.match(
    report.bindFailure,
    { code: 'SOCKOPT_FAILED', cause: 'EINVAL', syscall: 'bind', message: /bound transparently to fe80::1: bind\(fe80::1\) failed/ },
    'a failed bind (a link-local address without an interface) names the call',
  );
  t.equal(report.fdsLeaked, 0, 'and closes the descriptor it made');
});

// Runs without CAP_NET_ADMIN and CAP_NET_RAW: the addon refuses and leaks nothing; the agent's start-up check refuses
// transparent connections, and a transparent connector fails its connection rather than fall back to the host address.
const UNPRIVILEGED_SCRIPT = `
import net from 'node:net';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';

const { transparentSocket } = await import(process.argv[2]);
const { UpstreamConnector, checkUpstreamSource } = await import(process.argv[3]);
const openFds = () => readdirSync('/proc/self/fd').length;
const report = {};
const failure = (err) => ({ code: err.code, cause: err.cause?.code, message: err.message });

const before = openFds();
try {
  transparentSocket('203.0.113.7');
  report.refusal = 'no error';
} catch (err) {
  report.refusal = failure(err);
}
report.fdsLeaked = openFds() - before;
try {
  checkUpstreamSource({ upstreamSource: 'transparent', manageRules: true });
  report.startCheck = 'no error';
} catch (err) {
  report.startCheck = failure(err);
}

const server = net.createServer((socket) => socket.end(socket.remoteAddress));
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const target = { host: '127.0.0.1', port: server.address().port };
const transparent = new UpstreamConnector({ source: 'transparent', nodeIp: '10.250.0.1' });
report.transparentConnect = await transparent.connect(target, '10.244.1.2').then((socket) => { socket.destroy(); return 'connected'; }, failure);
const node = new UpstreamConnector({ source: 'node', nodeIp: '10.250.0.1' });
const socket = await node.connect(target, '10.244.1.2');
const chunks = [];
socket.on('data', (chunk) => chunks.push(chunk));
await once(socket, 'end');
report.nodeSeen = Buffer.concat(chunks).toString();
socket.destroy();
server.close();
process.stdout.write(JSON.stringify(report));
`;

t.test('without CAP_NET_ADMIN: EPERM, no descriptor left, no start in transparent mode, and never a silent fallback', { skip: skipUnprivileged }, async (t) => {
  const ns = namespaceFor(t, 'np');
  const script = writeScratchScript(t, 'unprivileged.mjs', UNPRIVILEGED_SCRIPT);
  const modules = [new URL('../core/sockopt/index.js', import.meta.url).href, new URL('../agent/proxy.js', import.meta.url).href];
  const report = JSON.parse(ns.run('setpriv', '--bounding-set=-net_admin,-net_raw', process.execPath, script, ...modules)) as Record<string, unknown>;
  t.match(report.refusal, { code: 'SOCKOPT_FAILED', cause: 'EPERM', message: /IP_TRANSPARENT.*needs CAP_NET_ADMIN/ }, 'refused, with the capability to add');
  t.equal(report.fdsLeaked, 0, 'the descriptor is closed');
  t.match(report.startCheck, { code: 'UPSTREAM_SOURCE_UNAVAILABLE', cause: 'SOCKOPT_FAILED', message: /CAP_NET_ADMIN.*--upstream-source node/ }, 'the agent would not start');
  t.match(report.transparentConnect, { code: 'SOCKOPT_FAILED' }, 'a transparent connection fails, it does not come from the host address');
  t.equal(report.nodeSeen, '127.0.0.1', 'asked for, the host address works');
});

t.test('reads the original destination of DNATed connections in a network namespace', { skip: skipNamespace }, async (t) => {
  const { run: inNamespace } = namespaceFor(t, 'dnat');
  const dnat = (iptables: string, from: string, to: string, port: number): void => {
    inNamespace(iptables, '-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', from, '--dport', String(port), '-j', 'DNAT', '--to-destination', to);
  };
  dnat('iptables', '127.0.0.1', '127.0.0.1:15001', 7777);
  dnat('ip6tables', '::1', '[::1]:15001', 7777);
  dnat('iptables', '127.0.0.1', '127.0.0.1:15002', 7778);
  // A counter that proves the option reached the kernel: the client's data arrives at a socket that xt_socket finds
  // transparent.
  inNamespace('iptables', '-t', 'mangle', '-A', 'PREROUTING', '-p', 'tcp', '--dport', '15001', '-m', 'socket', '--transparent', '-j', 'ACCEPT');

  const childScript = writeScratchScript(t, 'report-original-destination.mjs', CHILD_SCRIPT);
  const sockoptModule = new URL('../core/sockopt/index.js', import.meta.url).href;
  const report = JSON.parse(inNamespace(process.execPath, childScript, sockoptModule)) as Record<string, unknown>;

  t.same(report.ipv4, { address: '127.0.0.1', port: 7777, family: 4 }, 'IPv4 DNAT');
  t.same(report.ipv6, { address: '::1', port: 7777, family: 6 }, 'IPv6 DNAT');
  t.same(report.dualStack, { address: '127.0.0.1', port: 7778, family: 4 }, 'IPv4 client of a dual-stack listener');
  // conntrack is active in the namespace now, so an untouched connection reports its own destination
  t.same(report.notCaptured, { address: '127.0.0.1', port: 15003, family: 4 }, 'a connection nat did not rewrite');

  const packets = (table: string, chain: string): number => {
    const rule = inNamespace('iptables', '-t', table, '-L', chain, '-n', '-v', '-x').split('\n')[2] ?? '';
    return Number(rule.trim().split(/\s+/)[0]);
  };
  t.ok(packets('mangle', 'PREROUTING') > 0, 'packets found an IP_TRANSPARENT socket');
});
