/**
 * End to end on a dual-stack testbed (root): the mesh carries IPv4 only, so the IPv6 TCP of an enrolled pod must be
 * refused on every path (from it and to it, same node and across nodes), never carried in the clear, while pods
 * outside the mesh keep their IPv6. Node1 uses the bridge CNI, node2 ptp; real ip6tables, ipset and nft.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import t from 'tap';
import { buildCniSea } from '../cni/index.js';
import { CLI_PATH, HTTP_PORT, MeshCluster, Testbed, type TestbedNode, type TestbedPod } from '../testbed/index.js';
import { needsTestbed } from './prerequisites.js';

const unavailable = needsTestbed();
const run = promisify(execFile);
const V6_PORT = 9600;
const REJECT_CHAIN = 'AMBIT-IPV6-REJECT';
/** How often the agents check and repair their rules (--rules-resync-interval). */
const RESYNC_S = 1;
/**
 * How long a repair may take: it comes at the next resync, and a resync is a few iptables, ipset and nft execs, each
 * some tens of ms on an idle machine and several times that on a loaded 2-core one. Twenty intervals is ample, and
 * still far below the test's timeout, so an agent that does not repair fails here.
 */
const REPAIR_WITHIN_MS = 20 * RESYNC_S * 1000;

/** Answers every connection with the address it came from; prints `listening` once bound to [::]. */
const V6_SERVER = `
const server = require('node:net').createServer((socket) => socket.on('error', () => socket.destroy()).end(socket.remoteAddress));
server.listen(${V6_PORT}, '::', () => console.log('listening'));
`;

/** Connects to [host]:port; prints `ok <address the server saw>`, the error code, or `timeout`. */
const V6_CLIENT = `
const [host, port] = process.argv.slice(1);
const socket = require('node:net').connect({ host, port: Number(port) });
let seen = '';
socket.setTimeout(3000, () => { console.log('timeout'); socket.destroy(); });
socket.on('data', (chunk) => (seen += chunk));
socket.on('end', () => { console.log('ok ' + seen); socket.destroy(); });
socket.on('error', (err) => console.log(err.code));
`;

t.test('the IPv6 TCP of enrolled pods is refused, in and out; pods outside the mesh keep theirs', { skip: unavailable }, async (t) => {
  // built before the agents start: injecting the executable holds this process's event loop for seconds
  const plugin = (await buildCniSea()).outFile;
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'], ipv6: true });
  t.teardown(() => tb.destroy());
  const client = await tb.addPod('node1', 'client');
  const neighbour = await tb.addPod('node1', 'neighbour');
  const plain1 = await tb.addPod('node1', 'plain1');
  const server = await tb.addPod('node2', 'server');
  const plain2 = await tb.addPod('node2', 'plain2');
  for (const pod of tb.pods) t.ok(pod.ip6, `${pod.name} has an IPv6 address from the CNI (${pod.ip6})`);
  const cluster = await MeshCluster.start(tb, {
    namespaces: { demo: { 'ambit.dev/mode': 'enabled' }, plain: {} },
    pods: {
      client: { namespace: 'demo', serviceAccount: 'client' },
      neighbour: { namespace: 'demo', serviceAccount: 'server' },
      plain1: { namespace: 'plain' },
      server: { namespace: 'demo', serviceAccount: 'server' },
      plain2: { namespace: 'plain' },
    },
    agentArgs: ['--rules-resync-interval', String(RESYNC_S)],
  });
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];
  await Promise.all(tb.pods.map((pod) => startV6Server(tb, pod)));

  const v6 = async (from: TestbedPod, to: TestbedPod): Promise<string> =>
    String((await tb.exec(from.netns, process.execPath, ['-e', V6_CLIENT, to.ip6 as string, String(V6_PORT)])).stdout).trim();
  /** Chains ambit-cni into the node's CNI config, so that the agent learns each new pod's host interface at ADD. */
  const installCni = async (node: TestbedNode): Promise<void> => {
    await tb.exec(node.netns, process.execPath, [
      CLI_PATH, 'cni', 'install', '--plugin', plugin, '--cni-conf-dir', node.cniConfDir, '--cni-bin-dir', node.cniBinDir,
      '--agent-socket', `${cluster.runDir(node)}/cni.sock`, '--enrollment-file', `${cluster.stateDir(node)}/enrollment.json`,
    ]);
  };
  const v6Set = async (node: TestbedNode): Promise<string> => String((await tb.exec(node.netns, 'ipset', ['list', 'ambit-pods-v6'])).stdout);

  t.test('the enrolled pods IPv6 addresses are in ambit-pods-v6, with the reject chain in INPUT and FORWARD', async (t) => {
    const set1 = await v6Set(node1);
    t.match(set1, client.ip6 as string);
    t.match(set1, neighbour.ip6 as string);
    t.notMatch(set1, plain1.ip6 as string, 'a pod outside the mesh is not in it');
    t.match(await v6Set(node2), server.ip6 as string);
    for (const node of [node1, node2]) {
      const filter = String((await tb.exec(node.netns, 'ip6tables-save', ['-t', 'filter'])).stdout);
      t.match(filter, `-A INPUT -j ${REJECT_CHAIN}`, `${node.name}: INPUT jumps to the chain`);
      t.match(filter, `-A FORWARD -j ${REJECT_CHAIN}`, `${node.name}: FORWARD jumps to the chain`);
    }
  });

  t.test('from an enrolled pod: refused with a reset, same node (bridge) and across nodes, to meshed and plain pods', async (t) => {
    t.equal(await v6(client, neighbour), 'ECONNREFUSED', 'same bridge, to an enrolled pod');
    t.equal(await v6(client, plain1), 'ECONNREFUSED', 'same bridge, to a plain pod');
    t.equal(await v6(client, server), 'ECONNREFUSED', 'across nodes, to an enrolled pod');
    t.equal(await v6(client, plain2), 'ECONNREFUSED', 'across nodes, to a plain pod');
  });

  t.test('to an enrolled pod: refused, same node (bridge and ptp) and across nodes', async (t) => {
    t.equal(await v6(plain1, neighbour), 'ECONNREFUSED', 'same bridge');
    t.equal(await v6(plain2, server), 'ECONNREFUSED', 'same ptp node');
    t.equal(await v6(plain1, server), 'ECONNREFUSED', 'across nodes');
  });

  t.test('between pods outside the mesh, IPv6 works', async (t) => {
    t.equal(await v6(plain1, plain2), `ok ${plain1.ip6}`, 'across nodes');
    t.equal(await v6(plain2, plain1), `ok ${plain2.ip6}`, 'the other way');
  });

  t.test('IPv4 is still carried by the mesh, from the client\'s address', async (t) => {
    t.match(JSON.parse(await cluster.curl(client, `http://${server.ip}:${HTTP_PORT}/`)), { pod: 'server', client: client.ip }, 'transparent');
    t.match(await cluster.metrics(node2), 'ambit_upstream_source{mode="transparent"} 1', 'the default mode, exported');
  });

  t.test('a dual-stack pod enrolled through CNI ADD: both addresses are in their sets when ADD returns', async (t) => {
    await installCni(node2);
    await cluster.declarePod('dual', node2, { namespace: 'demo', serviceAccount: 'dual' });
    const dual = await tb.addPod(node2, 'dual', { k8s: { namespace: 'demo' } });
    t.ok(dual.ip6, `the CNI gave it an IPv6 address too (${dual.ip6})`);
    t.match(await v6Set(node2), dual.ip6 as string, 'its IPv6 address is in ambit-pods-v6 as soon as ADD returns');
    t.equal((await tb.exec(node2.netns, 'ipset', ['test', 'ambit-pods-v4', dual.ip], { reject: false })).exitCode, 0, 'and its IPv4 one in ambit-pods-v4');
    await cluster.setPodIp('dual', dual.ip);
    await cluster.startWorkload(dual);
    await startV6Server(tb, dual);
    t.equal(await v6(plain2, dual), 'ECONNREFUSED', 'its IPv6 TCP is refused');
    await startV6Server(tb, node2);
    const filter2 = String((await tb.exec(node2.netns, 'ip6tables-save', ['-t', 'filter'])).stdout);
    t.match(filter2, new RegExp(`-A ${REJECT_CHAIN} -i \\S+ -p tcp -m conntrack --ctdir ORIGINAL -j REJECT`), 'its routed veth, in');
    t.match(filter2, new RegExp(`-A ${REJECT_CHAIN} -o \\S+ -p tcp -j REJECT`), 'and out');
    // REJECT's reset to a link-local source is routed without its interface, so it reaches the pod only when the
    // kernel's first fe80::/64 route happens to be the pod's veth: refused either way, reset or not
    t.match(
      await v6ll(tb, dual, await hostVethLinkLocal(tb, node2, dual)),
      /^(ECONNREFUSED|timeout)$/,
      'to the node over link-local, through its routed veth: refused (-i rule)',
    );
    t.match(await v6ll(tb, plain2, await hostVethLinkLocal(tb, node2, plain2)), /^ok fe80:/, 'a plain pod reaches the node that way');
    t.match(JSON.parse(await cluster.curl(client, `http://${dual.ip}:${HTTP_PORT}/`)), { pod: 'dual', client: client.ip }, 'its IPv4 is carried by the mesh');
  });

  t.test('over link-local fe80:: (in no set), a pod enrolled through CNI ADD is refused by its bridge port', async (t) => {
    await installCni(node1);
    await cluster.declarePod('linklocal', node1, { namespace: 'demo', serviceAccount: 'linklocal' });
    const enrolled = await tb.addPod(node1, 'linklocal', { k8s: { namespace: 'demo' } });
    await cluster.setPodIp('linklocal', enrolled.ip);
    await startV6Server(tb, enrolled);
    await startV6Server(tb, node1);
    const hostLinkLocal = await bridgeLinkLocal(tb, node1);
    t.equal(await v6ll(tb, enrolled, await podLinkLocal(tb, plain1)), 'ECONNREFUSED', 'from the enrolled pod to a plain one: reset');
    t.equal(await v6ll(tb, plain1, await podLinkLocal(tb, enrolled)), 'ECONNREFUSED', 'from a plain pod to the enrolled one: reset');
    t.equal(await v6ll(tb, enrolled, hostLinkLocal), 'timeout', 'from the enrolled pod to the node\'s link-local address: dropped (bridge input hook)');
    t.match(await v6ll(tb, plain1, hostLinkLocal), /^ok fe80:/, 'a plain pod still reaches the node over link-local');
    t.equal(await v6(plain1, enrolled), 'ECONNREFUSED', 'its global address is still refused');
    const filter = String((await tb.exec(node1.netns, 'ip6tables-save', ['-t', 'filter'])).stdout);
    t.match(filter, new RegExp(`-A ${REJECT_CHAIN} -p tcp -m physdev --physdev-in \\S+ -m conntrack --ctdir ORIGINAL -j REJECT`), 'its bridge port, in');
    t.match(filter, new RegExp(`-A ${REJECT_CHAIN} -p tcp -m physdev --physdev-out \\S+ -j REJECT`), 'and out');
    t.match(String((await tb.exec(node1.netns, 'nft', ['list', 'set', 'bridge', 'ambit', 'ports6'], { reject: false })).stdout), /elements = \{ "\S+" \}/, 'in the bridge table');
  });

  t.test('the rules are repaired when someone flushes them', async (t) => {
    const mark = cluster.logs(node1).length;
    // Each repair is logged after the flush it answers: a resync may refill the set before the chain is flushed or
    // after it is rewritten, so both lines are looked for from the mark, in either order.
    await tb.exec(node1.netns, 'ipset', ['flush', 'ambit-pods-v6']);
    await tb.exec(node1.netns, 'ip6tables', ['-F', REJECT_CHAIN]);
    // A resync runs install() and then a forced pod sync, which rewrites the chain with its interface rules too: a
    // flush that lands between the two is repaired by the sync, and install() then finds the chain in place.
    const rewrote = (r: Record<string, unknown>) =>
      (r.msg === 'redirect rules installed' && Array.isArray(r.chains) && r.chains.includes(REJECT_CHAIN)) ||
      (r.msg === 'IPv6 reject chain refuses the bound pods by interface' && r.chain === REJECT_CHAIN);
    await cluster.waitForLog(node1, rewrote, REPAIR_WITHIN_MS, mark);
    await cluster.waitForLog(node1, (r) => r.msg === 'enrolled pod set updated' && r.set === 'ambit-pods-v6', REPAIR_WITHIN_MS, mark);
    const filter = String((await tb.exec(node1.netns, 'ip6tables-save', ['-t', 'filter'])).stdout);
    t.match(filter, `-A ${REJECT_CHAIN} -p tcp`, 'the reject chain has its rules again');
    t.match(filter, `-A ${REJECT_CHAIN} -p tcp -m physdev --physdev-in`, 'its interface rules too');
    t.match(await v6Set(node1), client.ip6 as string, 'the set holds the pod again');
    t.equal(await v6(client, plain2), 'ECONNREFUSED', 'refused again');
  });

  t.test('a relabel out of the mesh lifts the refusal', async (t) => {
    await cluster.setPodLabels('client', { 'ambit.dev/mode': 'disabled' });
    await cluster.waitForLog(node1, (r) => r.msg === 'enrolled pod set updated' && r.set === 'ambit-pods-v6' && r.removed === 1);
    t.notMatch(await v6Set(node1), client.ip6 as string, 'gone from the set');
    t.equal(await v6(client, plain2), `ok ${client.ip6}`, 'across nodes');
    t.equal(await v6(client, plain1), `ok ${client.ip6}`, 'same bridge');
    t.equal(await v6(client, neighbour), 'ECONNREFUSED', 'an enrolled destination still refuses it');
  });

  t.test('--cleanup removes the IPv6 chain, its jumps and the set', async (t) => {
    for (const node of [node1, node2]) {
      await cluster.stopAgent(node);
      await run('ip', ['netns', 'exec', node.netns, process.execPath, cluster.cliPath, 'agent', '--cleanup']);
      t.notMatch(String((await tb.exec(node.netns, 'ip6tables-save')).stdout), 'AMBIT', `${node.name}: no IPv6 rules`);
      t.notMatch(String((await tb.exec(node.netns, 'ipset', ['list', '-n'])).stdout), 'ambit-pods-v6', `${node.name}: no IPv6 set`);
      t.notMatch(String((await tb.exec(node.netns, 'nft', ['list', 'tables'])).stdout), 'ambit', `${node.name}: no bridge table`);
    }
    t.equal(await v6(plain1, neighbour), `ok ${plain1.ip6}`, 'plain IPv6 networking is back');
    const linkLocalPod = tb.pods.find((pod) => pod.name === 'linklocal');
    if (linkLocalPod) t.match(await v6ll(tb, plain1, await podLinkLocal(tb, linkLocalPod)), /^ok fe80:/, 'over link-local too');
  });
});

/** Connects from `from` to a link-local address through its eth0, as V6_CLIENT prints the outcome. */
async function v6ll(tb: Testbed, from: TestbedPod, address: string): Promise<string> {
  return String((await tb.exec(from.netns, process.execPath, ['-e', V6_CLIENT, `${address}%eth0`, String(V6_PORT)])).stdout).trim();
}

/** The kernel-assigned fe80:: address of a pod's eth0 (in no set); fails while it is still tentative (DAD). */
async function podLinkLocal(tb: Testbed, pod: TestbedPod): Promise<string> {
  return linkLocalOf(tb, pod.netns, ['dev', 'eth0'], pod.name);
}

/** The node's fe80:: address on the pods' bridge. */
async function bridgeLinkLocal(tb: Testbed, node: TestbedNode): Promise<string> {
  const bridges = JSON.parse(String((await tb.exec(node.netns, 'ip', ['-j', 'link', 'show', 'type', 'bridge'])).stdout)) as Array<{ ifname: string }>;
  if (bridges.length !== 1) throw new Error(`${node.name} has ${bridges.length} bridges, not one: ${JSON.stringify(bridges)}`);
  return linkLocalOf(tb, node.netns, ['dev', bridges[0]!.ifname], `${node.name}'s bridge ${bridges[0]!.ifname}`);
}

/** The node's fe80:: address on the host end of a pod's veth (a routed CNI's next hop). */
async function hostVethLinkLocal(tb: Testbed, node: TestbedNode, pod: TestbedPod): Promise<string> {
  const [eth0] = JSON.parse(String((await tb.exec(pod.netns, 'ip', ['-j', 'link', 'show', 'dev', 'eth0'])).stdout)) as Array<{ link_index?: number }>;
  const links = JSON.parse(String((await tb.exec(node.netns, 'ip', ['-j', 'link', 'show'])).stdout)) as Array<{ ifindex: number; ifname: string }>;
  const veth = links.find((link) => link.ifindex === eth0?.link_index);
  if (veth === undefined) throw new Error(`no host end of ${pod.name}'s veth on ${node.name}`);
  return linkLocalOf(tb, node.netns, ['dev', veth.ifname], `${node.name}'s ${veth.ifname}`);
}

async function linkLocalOf(tb: Testbed, netns: string, selector: string[], what: string): Promise<string> {
  const links = JSON.parse(String((await tb.exec(netns, 'ip', ['-6', '-j', 'addr', 'show', ...selector, 'scope', 'link'])).stdout)) as Array<{
    addr_info?: Array<{ local?: string; tentative?: boolean }>;
  }>;
  const address = links.flatMap((link) => link.addr_info ?? []).find((info) => info.local?.startsWith('fe80:'));
  if (address?.local === undefined || address.tentative === true) throw new Error(`${what} has no usable link-local address: ${JSON.stringify(links)}`);
  return address.local;
}

/** Starts the IPv6 listener in a pod or node (stopped with the testbed) and waits until it is bound. */
async function startV6Server(tb: Testbed, pod: { name: string; netns: string }): Promise<void> {
  const child = tb.spawn(pod.netns, process.execPath, ['-e', V6_SERVER], { buffer: false });
  await new Promise<void>((resolve, reject) => {
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('listening')) resolve();
    });
    void child.then((result) => reject(new Error(`IPv6 listener in ${pod.name} exited: ${String(result.stderr)}`)));
  });
}
