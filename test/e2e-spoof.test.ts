/**
 * Source identity comes from the source IP for captured traffic, so the mesh trusts the node's CNI to stop a pod
 * from using another pod's address (README, "Source identity"). This pins down what the testbed's two CNIs do (root):
 * node1 with the bridge plugin, node2 with ptp, the attacker a pod that may change its own addresses (NET_ADMIN in
 * its namespace; NET_RAW, which containers get by default, forges the same frames). On the bridge the attacker is
 * taken for its neighbour; an `-m rpfilter --invert -j DROP` rule in raw PREROUTING does not change that (measured: it
 * matched nothing on the bridge node, since the neighbour's address is routed through the same bridge), and on ptp,
 * where it does drop the forged packets, the handshake already fails without it. When the CNI or the agent binds pod
 * addresses to their ports, the bridge case must flip to a refusal.
 */
import t from 'tap';
import { HTTP_PORT, MeshCluster } from './mesh/cluster.js';
import { Testbed, testbedUnavailableReason, type TestbedPod } from './testbed/index.js';

const unavailable = testbedUnavailableReason();
const VICTIM = 'spiffe://cluster.local/ns/demo/sa/victim';

t.test('a pod that takes an enrolled neighbour\'s address', { skip: unavailable }, async (t) => {
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'] });
  t.teardown(() => tb.destroy());
  const attacker1 = await tb.addPod('node1', 'attacker1');
  const victim1 = await tb.addPod('node1', 'victim1');
  const attacker2 = await tb.addPod('node2', 'attacker2');
  const victim2 = await tb.addPod('node2', 'victim2');
  const server1 = await tb.addPod('node1', 'server1');
  const server2 = await tb.addPod('node2', 'server2');
  const cluster = await MeshCluster.start(tb, {
    namespaces: { demo: { 'ambit.dev/mode': 'enabled' } },
    pods: {
      attacker1: { namespace: 'demo', serviceAccount: 'attacker' },
      victim1: { namespace: 'demo', serviceAccount: 'victim' },
      attacker2: { namespace: 'demo', serviceAccount: 'attacker' },
      victim2: { namespace: 'demo', serviceAccount: 'victim' },
      server1: { namespace: 'demo', serviceAccount: 'server' },
      server2: { namespace: 'demo', serviceAccount: 'server' },
    },
  });

  /**
   * The attacker adds the victim's address to its eth0 and forgets its neighbours, so its next ARP request (for the
   * gateway) names the victim's address with the attacker's MAC; then it connects from that address.
   */
  const spoof = async (attacker: TestbedPod, victim: TestbedPod, to: TestbedPod): Promise<string> => {
    await tb.exec(attacker.netns, 'ip', ['addr', 'add', `${victim.ip}/32`, 'dev', 'eth0']);
    await tb.exec(attacker.netns, 'ip', ['neigh', 'flush', 'dev', 'eth0']);
    const result = await tb.exec(attacker.netns, 'curl', ['-sS', '--max-time', '2', '--interface', victim.ip, `http://${to.ip}:${HTTP_PORT}/`], { reject: false });
    await tb.exec(attacker.netns, 'ip', ['addr', 'del', `${victim.ip}/32`, 'dev', 'eth0']);
    return result.exitCode === 0 ? String(result.stdout).trim() : `curl exit ${result.exitCode}: ${String(result.stderr).trim()}`;
  };
  const spoofedFrom = (node: 'node1' | 'node2', victim: TestbedPod, to: TestbedPod) =>
    cluster.waitForLog(
      tb.node(node),
      // the victim itself never connects in this test: a record with its address is the attacker's
      (r) => r.msg === 'access' && r.direction === 'inbound' && (r.src as { ip?: string }).ip === victim.ip && (r.dst as { ip?: string }).ip === to.ip,
    );

  t.test('bridge CNI: taken for the neighbour, across nodes and on the same node (the CNI does not stop it)', async (t) => {
    t.match(JSON.parse(await spoof(attacker1, victim1, server2)), { pod: 'server2', client: victim1.ip }, 'the answer reached the attacker');
    t.match(await spoofedFrom('node2', victim1, server2), { src: { identity: VICTIM }, security: 'mutual_tls' }, "server2's agent saw the victim's identity");
    t.match(JSON.parse(await spoof(attacker1, victim1, server1)), { pod: 'server1', client: victim1.ip });
    t.match(await spoofedFrom('node1', victim1, server1), { src: { identity: VICTIM } }, "server1's agent too");
  });

  t.test('ptp CNI: no connection, since the replies are routed to the neighbour\'s own interface', async (t) => {
    t.match(await spoof(attacker2, victim2, server1), /^curl exit 28/, 'the handshake never completes');
  });
});
