import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import { execa } from 'execa';
import t from 'tap';
import {
  HOST_LINK_IP,
  parsePcap,
  removeStaleTestbeds,
  startCapture,
  Testbed,
  type TestbedNode,
  type TestbedPod,
} from '../testbed/index.js';
import { ownerFile } from '../testbed/owner.js';
import { needsTestbed } from './prerequisites.js';

const testbedOptions = { skip: needsTestbed() };
const TESTBED_INDEX_URL = new URL('../testbed/index.js', import.meta.url).href;
const SERVER_PORT = 8080;
/** Answers every request with the client address it saw, so a test can tell whether anything NATed the traffic. */
const ECHO_CLIENT_SERVER = `
  require('http')
    .createServer((req, res) => res.end('client ' + req.socket.remoteAddress.replace('::ffff:', '')))
    .listen(${SERVER_PORT}, () => console.log('listening'))`;

async function namespacesListed(prefix: string): Promise<string[]> {
  const { stdout } = await execa('ip', ['netns', 'list']);
  return stdout.split('\n').map((line) => line.split(' ')[0] ?? '').filter((name) => name.startsWith(prefix));
}

/** A zombie still answers kill(pid, 0); only /proc tells it has stopped running. */
function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function untilStopped(pid: number, timeoutMs = 3000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isRunning(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return true;
}

function untilLine(stream: Readable | null, pattern: RegExp, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`no line matching ${pattern} in ${timeoutMs} ms; got: ${text}`)), timeoutMs);
    stream?.on('data', function onData(chunk: Buffer) {
      text += chunk.toString();
      const line = text.split('\n').find((candidate) => pattern.test(candidate));
      if (line === undefined) return;
      clearTimeout(timer);
      stream.removeListener('data', onData);
      resolve(line);
    });
  });
}

async function curl(testbed: Testbed, from: TestbedPod, to: TestbedPod): Promise<string> {
  const { stdout } = await testbed.exec(from.netns, 'curl', ['-sS', '--max-time', '5', `http://${to.ip}:${SERVER_PORT}/`]);
  return stdout;
}

t.test('options are validated before anything is made', async (t) => {
  const invalid = (message: RegExp) => ({ code: 'TESTBED_INVALID_OPTIONS', message });
  await t.rejects(Testbed.create({ nodes: 0, podsPerNode: 1 }), invalid(/nodes must be an integer from 1/));
  await t.rejects(Testbed.create({ nodes: 1, podsPerNode: 254 }), invalid(/podsPerNode/));
  await t.rejects(Testbed.create({ nodes: 2, podsPerNode: 1, cni: ['bridge'] }), invalid(/1 plugins for 2 nodes/));
  const flannel = 'flannel' as unknown as 'bridge';
  await t.rejects(Testbed.create({ nodes: 1, podsPerNode: 1, cni: flannel }), invalid(/'flannel' is not supported/));
});

t.test('parsePcap refuses what is not a pcap file', async (t) => {
  t.throws(() => parsePcap(Buffer.alloc(10)), { code: 'TESTBED_BAD_PCAP' });
  t.throws(() => parsePcap(Buffer.alloc(24)), { code: 'TESTBED_BAD_PCAP', message: /magic/ });
});

t.test('2 nodes × 2 pods: pods reach each other, captures see the wire, destroy leaves nothing', testbedOptions, async (t) => {
  const createStarted = performance.now();
  const testbed = await Testbed.create({ nodes: 2, podsPerNode: 2, cni: ['bridge', 'ptp'] });
  const createMs = Math.round(performance.now() - createStarted);
  t.teardown(() => testbed.destroy());
  t.comment(`create(2 nodes × 2 pods): ${createMs} ms`);

  t.match(testbed.prefix, /^ambit-[0-9a-f]{6}-$/);
  t.same(
    testbed.nodes.map(({ name, netns, ip, podCidr, uplink, cni }) => ({ name, netns, ip, podCidr, uplink, cni })),
    [
      { name: 'node1', netns: `${testbed.prefix}n1`, ip: '10.250.0.1', podCidr: '10.244.1.0/24', uplink: 'eth0', cni: 'bridge' },
      { name: 'node2', netns: `${testbed.prefix}n2`, ip: '10.250.0.2', podCidr: '10.244.2.0/24', uplink: 'eth0', cni: 'ptp' },
    ],
  );
  t.same(testbed.pods.map((pod) => pod.name), ['pod-1-1', 'pod-1-2', 'pod-2-1', 'pod-2-2']);
  t.equal(new Set(testbed.pods.map((pod) => pod.ip)).size, 4, 'every pod has its own IP');
  for (const pod of testbed.pods) {
    t.match(pod.ip, new RegExp(`^10\\.244\\.${pod.node.index}\\.\\d+$`), `${pod.name} is in ${pod.node.podCidr}`);
    const { stdout } = await testbed.exec(pod.netns, 'ip', ['-4', '-o', 'addr', 'show', 'dev', 'eth0']);
    t.match(stdout, `inet ${pod.ip}/24`, `${pod.name}'s eth0 carries the address CNI returned`);
    const lease = `${testbed.tmpDir}/ipam/${pod.node.name}/ambit-testbed/${pod.ip}`;
    t.ok(existsSync(lease), `${pod.name}'s lease is in the testbed's IPAM dir`);
  }
  t.notOk(existsSync('/var/lib/cni/networks/ambit-testbed'), 'nothing leased in the host IPAM dir');
  t.throws(() => testbed.pod('pod-9-9'), { code: 'TESTBED_UNKNOWN_POD' });

  const [node1, node2] = testbed.nodes as [TestbedNode, TestbedNode];
  const sysctl = async (netns: string, key: string) => (await testbed.exec(netns, 'cat', [`/proc/sys/${key}`])).stdout.trim();
  const bridgeNf = await sysctl(node1.netns, 'net/bridge/bridge-nf-call-iptables');
  t.equal(bridgeNf, '1', 'bridged traffic crosses iptables on the bridge node');
  t.equal(await sysctl(node1.netns, 'net/ipv4/ip_forward'), '1');
  t.equal(await sysctl(node2.netns, 'net/ipv4/ip_forward'), '1');
  const hasCni0 = async (node: TestbedNode) =>
    (await testbed.exec(node.netns, 'ip', ['link', 'show', 'cni0'], { reject: false })).exitCode === 0;
  t.ok(await hasCni0(node1), 'node1 has the cni0 bridge');
  t.notOk(await hasCni0(node2), 'node2 (ptp) has none');

  const pod11 = testbed.pod('pod-1-1');
  const pod12 = testbed.pod('pod-1-2');
  const pod21 = testbed.pod('pod-2-1');
  const pod22 = testbed.pod('pod-2-2');
  const servers = [pod11, pod21].map((pod) => testbed.spawn(pod.netns, 'node', ['-e', ECHO_CLIENT_SERVER]));
  await Promise.all(servers.map((server) => untilLine(server.stdout, /listening/)));

  const capture = await startCapture(node1.netns, 'eth0', `tcp port ${SERVER_PORT}`);
  t.equal(await curl(testbed, pod12, pod21), `client ${pod12.ip}`, 'cross-node bridge → ptp, client address kept');
  t.equal(await curl(testbed, pod22, pod11), `client ${pod22.ip}`, 'cross-node ptp → bridge');
  t.equal(await curl(testbed, pod12, pod11), `client ${pod12.ip}`, 'same node over the bridge');
  t.equal(await curl(testbed, pod22, pod21), `client ${pod22.ip}`, 'same node over ptp');
  const tcpShell = await testbed.exec(pod11.netns, 'bash', ['-c', `echo > /dev/tcp/${pod21.ip}/${SERVER_PORT}`], { reject: false });
  t.equal(tcpShell.exitCode, 0, 'plain TCP connect works too');

  const packets = parsePcap(await capture.stop());
  const SYN = 0x02;
  const syn = packets.find((p) => p.src === pod12.ip && p.dst === pod21.ip && p.dstPort === SERVER_PORT && p.tcpFlags === SYN);
  t.ok(syn, 'node1 eth0 saw the SYN of the cross-node connection');
  t.ok(packets.some((p) => p.src === pod12.ip && p.payload.includes('GET / HTTP/1.1')), 'and its request in plaintext');
  t.ok(packets.some((p) => p.src === pod21.ip && p.payload.includes(`client ${pod12.ip}`)), 'and the answer');
  t.ok(packets.some((p) => p.src === pod22.ip && p.dst === pod11.ip), 'and the connection from node2');
  t.notOk(packets.some((p) => p.src === pod12.ip && p.dst === pod11.ip), 'same-node traffic never reaches the uplink');
  t.notOk(packets.some((p) => p.src === pod22.ip && p.dst === pod21.ip), 'nor does node2-local traffic');

  const badFilter = startCapture(node1.netns, 'eth0', 'not a ( filter');
  await t.rejects(badFilter, { code: 'TESTBED_CAPTURE_FAILED' }, 'a bad filter fails fast');

  const extra = await testbed.addPod(node2);
  t.equal(extra.name, 'pod-2-3');
  t.match(extra.ip, /^10\.244\.2\.\d+$/);
  t.equal(await curl(testbed, extra, pod11), `client ${extra.ip}`, 'an added pod is reachable at once');
  await t.rejects(testbed.addPod('node2', 'pod-2-3'), { code: 'TESTBED_DUPLICATE_POD' });
  await testbed.removePod(extra);
  t.notOk(testbed.pods.includes(extra), 'removePod forgets the pod');
  t.same(await namespacesListed(extra.netns), [], "removePod deletes the pod's namespace");
  t.notOk(existsSync(`${testbed.tmpDir}/ipam/node2/ambit-testbed/${extra.ip}`), 'CNI DEL released the lease');

  const serverPids = servers.flatMap((server) => server.pid ?? []);
  const destroyStarted = performance.now();
  await testbed.destroy();
  const destroyMs = Math.round(performance.now() - destroyStarted);
  t.comment(`destroy(2 nodes × 2 pods, 2 processes): ${destroyMs} ms`);
  t.same(await namespacesListed(testbed.prefix), [], 'no namespace with the prefix is left');
  t.notOk(existsSync(testbed.tmpDir), 'the temp dir is gone');
  t.notOk(existsSync(ownerFile(testbed.prefix.slice('ambit-'.length, -1))), 'the owner record is gone');
  for (const pid of serverPids) t.notOk(isRunning(pid), `server ${pid} was stopped`);
  await testbed.destroy();
  t.pass('destroy is idempotent');
  t.throws(() => testbed.spawn(pod11.netns, 'true'), { code: 'TESTBED_DESTROYED' });
});

t.test('a create that fails half-way tears down what it made', testbedOptions, async (t) => {
  const logs: string[] = [];
  await t.rejects(
    Testbed.create({
      nodes: 2,
      podsPerNode: 1,
      cni: ['bridge', 'ptp'],
      cniConfigOverrides: { ipam: { type: 'no-such-ipam' } },
      log: (msg) => logs.push(msg),
    }),
    { code: 'TESTBED_CNI_FAILED', message: /CNI (bridge|ptp) ADD .* failed: code \d+: .*no-such-ipam/ },
  );
  const [, prefix, tmpDir] = /creating testbed (ambit-[0-9a-f]{6}-) .* in (\S+)$/.exec(logs[0] ?? '') ?? [];
  t.ok(prefix, `the log names the testbed: ${logs[0]}`);
  t.same(await namespacesListed(prefix ?? 'ambit-'), [], 'no namespace left');
  t.notOk(tmpDir !== undefined && existsSync(tmpDir), 'no temp dir left');
});

/** Runs a process that builds a testbed with a sleeping process in a pod, and reports what it made. */
async function startCreator(afterCreate: string) {
  const script = `
    const { Testbed } = await import(${JSON.stringify(TESTBED_INDEX_URL)});
    const testbed = await Testbed.create({ nodes: 1, podsPerNode: 1 });
    const sleeper = testbed.spawn(testbed.pods[0].netns, 'sleep', ['1000']);
    console.log(JSON.stringify({ prefix: testbed.prefix, tmpDir: testbed.tmpDir, sleeperPid: sleeper.pid }));
    ${afterCreate}`;
  const creator = execa('node', ['--input-type=module', '-e', script], { reject: false });
  const made = await untilLine(creator.stdout, /prefix/, 20_000);
  return { creator, ...(JSON.parse(made) as { prefix: string; tmpDir: string; sleeperPid: number }) };
}

t.test('an interrupted creator leaves nothing behind', testbedOptions, async (t) => {
  const { creator, prefix, tmpDir, sleeperPid } = await startCreator('setInterval(() => {}, 1000);');
  t.equal((await namespacesListed(prefix)).length, 3, 'wire, node and pod exist while it runs');
  creator.kill('SIGTERM');
  const result = await creator;
  t.equal(result.signal, 'SIGTERM', 'it still dies of the signal');
  t.same(await namespacesListed(prefix), []);
  t.notOk(existsSync(tmpDir));
  t.ok(await untilStopped(sleeperPid), 'its process in the pod was killed');
});

t.test('a creator that exits without destroy() leaves nothing behind', testbedOptions, async (t) => {
  const { creator, prefix, tmpDir, sleeperPid } = await startCreator('process.exit(0);');
  t.equal((await creator).exitCode, 0);
  t.same(await namespacesListed(prefix), []);
  t.notOk(existsSync(tmpDir));
  t.ok(await untilStopped(sleeperPid));
});

t.test('removeStaleTestbeds removes the testbed of a killed creator and spares live ones', testbedOptions, async (t) => {
  const live = await Testbed.create({ nodes: 1, podsPerNode: 0 });
  t.teardown(() => live.destroy());
  const { creator, prefix, tmpDir, sleeperPid } = await startCreator('setInterval(() => {}, 1000);');
  creator.kill('SIGKILL');
  await creator;
  const stale = await namespacesListed(prefix);
  t.equal(stale.length, 3, 'SIGKILL skips every handler: the namespaces stay');

  const removed = await removeStaleTestbeds();
  t.same(removed.filter((name) => name.startsWith(prefix)).sort(), stale.sort(), 'it reports what it removed');
  t.same(await namespacesListed(prefix), []);
  t.notOk(existsSync(tmpDir), "the dead creator's temp dir is gone");
  t.ok(await untilStopped(sleeperPid), 'the process left in the pod was killed');
  t.same((await namespacesListed(live.prefix)).sort(), [`${live.prefix}n1`, `${live.prefix}wire`], 'a live testbed is spared');
});

t.test('a host link: the nodes reach a server in the host namespace, and destroy removes the link', testbedOptions, async (t) => {
  const tb = await Testbed.create({ nodes: 1, podsPerNode: 0, hostLink: true });
  t.teardown(() => tb.destroy());
  const link = `${tb.prefix}h`;
  t.equal(tb.hostIp, HOST_LINK_IP);
  const server = createServer((_req, res) => res.end('host')).listen(0, HOST_LINK_IP);
  t.teardown(() => server.close());
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const { stdout } = await tb.exec(tb.node('node1').netns, 'curl', ['-sS', '--max-time', '5', `http://${HOST_LINK_IP}:${port}/`]);
  t.equal(stdout, 'host', 'a node reaches the host on the wire');
  t.equal((await execa('ip', ['link', 'show', link], { reject: false })).exitCode, 0, 'the link is in the host namespace');
  server.close();
  await tb.destroy();
  t.not((await execa('ip', ['link', 'show', link], { reject: false })).exitCode, 0, 'and gone after destroy()');
});

t.test('a testbed without a host link cannot spawn on the host', testbedOptions, async (t) => {
  const tb = await Testbed.create({ nodes: 1, podsPerNode: 0 });
  t.teardown(() => tb.destroy());
  t.equal(tb.hostIp, undefined);
  t.throws(() => tb.spawnOnHost('true'), { code: 'TESTBED_INVALID_OPTIONS' });
});
