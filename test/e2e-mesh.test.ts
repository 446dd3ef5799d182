/**
 * End to end on network namespaces (root): two nodes (node1 with the bridge CNI, node2 with ptp), pods wired by the
 * real CNI plugins, an agent process per node with real iptables/ipset rules, real clients (curl and Node).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { AMBIT_BRIDGE_MAC, AMBIT_BRIDGE_TABLE } from '../agent/rules/bridge.js';
import { AMBIT_LOCAL_DNAT_CHAIN, AMBIT_MANGLE_CHAIN, AMBIT_MANGLE_OUTPUT_CHAIN, buildLocalDnatChainRules, buildMangleChainRules, buildMangleOutputChainRules } from '../agent/rules/iptables.js';
import { TRANSPARENT_ROUTE_TABLE, TRANSPARENT_RULE_PRIORITY } from '../agent/rules/routing.js';
import { HTTP_PORT, ECHO_PORT, MeshCluster, metricValue, parsePcap, startCapture, Testbed, type TestbedNode, type TestbedPod } from '../testbed/index.js';
import { needsTestbed } from './prerequisites.js';

const unavailable = needsTestbed();
const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';
const SERVER = 'spiffe://cluster.local/ns/demo/sa/server';
const VIP = '10.96.0.10';
/** default/kubernetes: no selector, and no EndpointSlice in the folder. */
const API_VIP = '10.96.0.1';
const SLICED_VIP = '10.96.0.20';
/** No Service of the mesh: passed through, to wherever the node's own NAT sends it. */
const NAT_VIP = '10.96.0.30';
const run = promisify(execFile);

/** A Node client in a pod: sends `bytes` random bytes to the echo port, half-closes, checks the echo is identical. */
const NODE_ECHO_CLIENT = `
const net = require('node:net'); const crypto = require('node:crypto');
const [host, port, size] = process.argv.slice(1);
const payload = crypto.randomBytes(Number(size)); const chunks = [];
const s = net.connect({ host, port: Number(port), allowHalfOpen: true }, () => s.end(payload));
s.on('data', (c) => chunks.push(c));
s.on('end', () => { const back = Buffer.concat(chunks); console.log(JSON.stringify({ sent: payload.length, received: back.length, same: back.equals(payload) })); s.destroy(); });
s.on('error', (e) => { console.log(JSON.stringify({ error: e.code || e.message })); process.exit(0); });
`;

/** A Node HTTP client in a pod: GETs the URL and prints the body (the workload's `{ pod, client }`) or the error. */
const NODE_HTTP_CLIENT = `
const http = require('node:http');
http.get(process.argv[1], (res) => { let body = ''; res.on('data', (c) => (body += c)); res.on('end', () => console.log(body.trim())); })
  .on('error', (e) => console.log(JSON.stringify({ error: e.code || e.message })));
`;

/** Everything Ambit installs in a node's namespace, as the tools print it, for presence and absence checks. */
async function nodeRules(
  tb: Testbed,
  node: TestbedNode,
): Promise<{ nat: string; mangle: string; filter: string; rules: string; routes: string; bridgeTables: string; fdb: string }> {
  const out = async (file: string, args: string[]) => String((await tb.exec(node.netns, file, args)).stdout);
  return {
    nat: await out('iptables-save', ['-t', 'nat']),
    mangle: await out('iptables-save', ['-t', 'mangle']),
    filter: await out('iptables-save', ['-t', 'filter']),
    rules: await out('ip', ['rule', 'show']),
    routes: await out('ip', ['route', 'show', 'table', String(TRANSPARENT_ROUTE_TABLE)]),
    bridgeTables: await out('nft', ['list', 'tables', 'bridge']),
    fdb: await out('bridge', ['fdb', 'show']),
  };
}

t.test('the L4 mesh across two nodes', { skip: unavailable }, async (t) => {
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'] });
  t.teardown(() => tb.destroy());
  const client = await tb.addPod('node1', 'client');
  const neighbour = await tb.addPod('node1', 'neighbour');
  const plain1 = await tb.addPod('node1', 'plain1');
  const server = await tb.addPod('node2', 'server');
  const peer2 = await tb.addPod('node2', 'peer2');
  const plain2 = await tb.addPod('node2', 'plain2');
  const cluster = await MeshCluster.start(tb, {
    namespaces: { demo: { 'ambit.dev/mode': 'enabled' }, plain: {} },
    pods: {
      client: { namespace: 'demo', serviceAccount: 'client', app: 'client' },
      neighbour: { namespace: 'demo', serviceAccount: 'server', app: 'neighbour' },
      plain1: { namespace: 'plain', app: 'plain1' },
      server: { namespace: 'demo', serviceAccount: 'server', app: 'server' },
      peer2: { namespace: 'demo', serviceAccount: 'client', app: 'peer2' },
      plain2: { namespace: 'plain', app: 'plain2' },
    },
    services: [
      { namespace: 'demo', name: 'server', clusterIP: VIP, selector: { app: 'server' }, ports: [{ port: 80, targetPort: 'http' }] },
      { namespace: 'default', name: 'kubernetes', clusterIP: API_VIP, ports: [{ name: 'https', port: 443, targetPort: 6443 }] },
      { namespace: 'demo', name: 'sliced', clusterIP: SLICED_VIP, ports: [{ name: 'web', port: 80, targetPort: 80 }] },
    ],
    // A selector-less service whose endpoints someone else manages: the slice names the server pod by address.
    endpointSlices: [
      {
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: { name: 'sliced-1', namespace: 'demo', labels: { 'kubernetes.io/service-name': 'sliced' } },
        addressType: 'IPv4',
        ports: [{ name: 'web', port: HTTP_PORT, protocol: 'TCP' }],
        endpoints: [{ addresses: [server.ip], conditions: { ready: true }, nodeName: 'node2' }],
      },
    ],
    agentArgs: ['--rules-resync-interval', '1'],
  });
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];

  /** The client address the workload at `to` saw for a request from `from`, through curl or a Node client. */
  const clientSeen = async (from: TestbedPod, to: { ip: string }, via: 'curl' | 'node', port = HTTP_PORT): Promise<{ pod: string; client: string }> => {
    const url = `http://${to.ip}:${port}/`;
    const text = via === 'curl' ? await cluster.curl(from, url) : String((await tb.exec(from.netns, process.execPath, ['-e', NODE_HTTP_CLIENT, url])).stdout);
    const { pod, client } = JSON.parse(text) as { pod: string; client: string };
    return { pod, client };
  };

  /**
   * The node's service proxy sends API_VIP:443 to `to`, port HTTP_PORT, as kube-proxy does locally originated traffic:
   * a DNAT in OUTPUT behind a route to the VIP (a node has a default route; the testbed's nodes do not).
   */
  const routeApiVip = async (t: Test, to: string) => {
    const dnat = ['OUTPUT', '-d', API_VIP, '-p', 'tcp', '--dport', '443', '-j', 'DNAT', '--to-destination', `${to}:${HTTP_PORT}`];
    const route = [`${API_VIP}/32`, 'dev', node1.uplink];
    await tb.exec(node1.netns, 'iptables', ['-t', 'nat', '-A', ...dnat]);
    t.teardown(() => tb.exec(node1.netns, 'iptables', ['-t', 'nat', '-D', ...dnat]));
    await tb.exec(node1.netns, 'ip', ['route', 'add', ...route]);
    t.teardown(() => tb.exec(node1.netns, 'ip', ['route', 'del', ...route]));
  };

  t.test('the agent installed its rules: enrolled local pods in the ipset, DNAT to 15001 and 15006', async (t) => {
    const ipset = String((await tb.exec(node1.netns, 'ipset', ['list', 'ambit-pods-v4'])).stdout);
    t.match(ipset, client.ip);
    t.match(ipset, neighbour.ip);
    t.notMatch(ipset, plain1.ip, 'a pod outside the mesh is not captured');
    const nat = String((await tb.exec(node1.netns, 'iptables-save', ['-t', 'nat'])).stdout);
    t.match(nat, `-j DNAT --to-destination ${node1.ip}:15001`);
    t.match(nat, `-j DNAT --to-destination ${node1.ip}:15006`);
  });

  t.test('and the routing of replies to transparent connections: marks, fwmark rule, local route, bridge redirect', async (t) => {
    for (const node of [node1, node2]) {
      const rules = await nodeRules(tb, node);
      t.match(rules.mangle, `-A PREROUTING -j ${AMBIT_MANGLE_CHAIN}`, `${node.name}: the mangle jump`);
      t.match(rules.mangle, `-A OUTPUT -j ${AMBIT_MANGLE_OUTPUT_CHAIN}`, `${node.name}: the mangle OUTPUT jump`);
      const chainRules = (chain: string) => rules.mangle.split('\n').filter((line) => line.startsWith(`-A ${chain} `));
      t.same(chainRules(AMBIT_MANGLE_CHAIN), buildMangleChainRules(), `${node.name}: the PREROUTING mark rules, as iptables-save prints them`);
      t.same(chainRules(AMBIT_MANGLE_OUTPUT_CHAIN), buildMangleOutputChainRules(), `${node.name}: the OUTPUT mark rules, as iptables-save prints them`);
      t.match(rules.mangle, '-m socket --transparent --nowildcard -j MARK --set-xmark 0x2000/0x2000', `${node.name}: replies of delivered connections`);
      t.match(rules.mangle, '-m set --match-set ambit-pods-v4 src -j CONNMARK --set-xmark 0x2000/0x2000', `${node.name}: passthrough connections marked`);
      const filterRules = rules.filter.split('\n').filter((line) => line.startsWith('-A '));
      t.equal(filterRules.find((line) => line.startsWith('-A OUTPUT ')), `-A OUTPUT -j ${AMBIT_LOCAL_DNAT_CHAIN}`, `${node.name}: the filter OUTPUT jump, first`);
      t.same(filterRules.filter((line) => line.startsWith(`-A ${AMBIT_LOCAL_DNAT_CHAIN} `)), buildLocalDnatChainRules(), `${node.name}: the reset of a passthrough NATed to a local pod`);
      t.match(rules.rules, `${TRANSPARENT_RULE_PRIORITY}:\tfrom all fwmark 0x2000/0x2000 lookup ${TRANSPARENT_ROUTE_TABLE}`, `${node.name}: the fwmark rule`);
      t.match(rules.routes, 'local default dev lo', `${node.name}: the local route`);
      t.match(rules.bridgeTables, `table bridge ${AMBIT_BRIDGE_TABLE}`, `${node.name}: the bridge table`);
    }
    t.match((await nodeRules(tb, node1)).fdb, `${AMBIT_BRIDGE_MAC} dev cni0 master cni0 permanent`, 'the bridge node: cni0 has the fdb entry');
    t.notMatch((await nodeRules(tb, node2)).fdb, AMBIT_BRIDGE_MAC, 'the ptp node has no bridge to give one');
  });

  t.test('the server sees the client pod, not the node: cross-node, both directions, curl and Node', async (t) => {
    for (const via of ['curl', 'node'] as const) {
      t.same(await clientSeen(client, server, via), { pod: 'server', client: client.ip }, `bridge node to ptp node (${via})`);
      t.same(await clientSeen(server, neighbour, via), { pod: 'neighbour', client: server.ip }, `ptp node to bridge node (${via})`);
    }
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'hbone' && (r.src as { ip: string }).ip === server.ip && r.direction === 'inbound');
  });

  t.test('the server sees the client pod on the same node: over the bridge, and over ptp', async (t) => {
    for (const via of ['curl', 'node'] as const) {
      t.same(await clientSeen(client, neighbour, via), { pod: 'neighbour', client: client.ip }, `bridge: the reply is switched to the agent, not to the client (${via})`);
      t.same(await clientSeen(neighbour, client, via), { pod: 'client', client: neighbour.ip }, `bridge, the other way (${via})`);
      t.same(await clientSeen(peer2, server, via), { pod: 'server', client: peer2.ip }, `ptp (${via})`);
    }
  });

  t.test('plaintext inbound shows the real client too: from another node, and from the same bridge', async (t) => {
    for (const via of ['curl', 'node'] as const) {
      t.same(await clientSeen(plain1, server, via), { pod: 'server', client: plain1.ip }, `cross-node (${via})`);
      t.same(await clientSeen(plain1, neighbour, via), { pod: 'neighbour', client: plain1.ip }, `same bridge (${via})`);
    }
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'plaintext' && (r.src as { ip: string }).ip === plain1.ip);
  });

  t.test("passthrough keeps the pod's address: to a pod outside the mesh on another node, on the same bridge, on the same ptp node", async (t) => {
    for (const via of ['curl', 'node'] as const) {
      t.same(await clientSeen(client, plain2, via), { pod: 'plain2', client: client.ip }, `cross-node (${via})`);
      t.same(await clientSeen(client, plain1, via), { pod: 'plain1', client: client.ip }, `same bridge: the reply is switched to the agent, not to the client (${via})`);
      t.same(await clientSeen(peer2, plain2, via), { pod: 'plain2', client: peer2.ip }, `same ptp node (${via})`);
    }
  });

  t.test("a rule that drops the pod's address at the destination (a NetworkPolicy stand-in) blocks its passthrough too", async (t) => {
    t.same(await clientSeen(client, plain2, 'curl'), { pod: 'plain2', client: client.ip }, 'allowed before the rules');
    t.same(await clientSeen(client, plain1, 'curl'), { pod: 'plain1', client: client.ip }, 'allowed before the rules, same bridge');
    // Where a policy engine would refuse client → plain2 and client → plain1: the destination node's FORWARD chain,
    // and the destination pod itself.
    const rules = [
      { netns: node2.netns, rule: ['FORWARD', '-s', client.ip, '-d', plain2.ip, '-p', 'tcp', '--dport', String(HTTP_PORT), '-j', 'DROP'] },
      { netns: plain1.netns, rule: ['INPUT', '-s', client.ip, '-p', 'tcp', '--dport', String(HTTP_PORT), '-j', 'DROP'] },
    ];
    for (const { netns, rule } of rules) {
      await tb.exec(netns, 'iptables', ['-I', ...rule]);
      t.teardown(() => tb.exec(netns, 'iptables', ['-D', ...rule]));
    }
    const refusals = [plain2, plain1].map((to) =>
      cluster.waitForLog(node1, (r) => r.msg === 'connection refused' && r.reason === 'upstream_timeout' && (r.dst as { ip: string } | undefined)?.ip === to.ip, 15_000),
    );
    await Promise.all([
      t.rejects(cluster.curl(client, `http://${plain2.ip}:${HTTP_PORT}/`), 'cross-node: blocked'),
      t.rejects(cluster.curl(client, `http://${plain1.ip}:${HTTP_PORT}/`), 'same bridge: blocked'),
    ]);
    await Promise.all(refusals);
    for (const { netns, rule } of rules) {
      const counted = String((await tb.exec(netns, 'iptables', ['-nvxL', rule[0]!])).stdout)
        .split('\n')
        .find((line) => line.includes('DROP') && line.includes(client.ip));
      t.ok(Number(counted?.trim().split(/\s+/)[0]) > 0, `the rule in ${rule[0]} dropped the agent's packets from ${client.ip}`);
    }
  });

  t.test('cross-node pod to pod, curl', async (t) => {
    const body = JSON.parse(await cluster.curl(client, `http://${server.ip}:${HTTP_PORT}/`));
    t.equal(body.pod, 'server');
    const src = await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'hbone');
    t.match(src, { src: { ip: client.ip, identity: CLIENT }, dst: { ip: server.ip, identity: SERVER }, hbone: `${node2.ip}:15008` });
    const dst = await cluster.waitForLog(node2, (r) => r.msg === 'access' && r.path === 'hbone');
    t.match(dst, { src: { identity: CLIENT, ip: client.ip }, dst: { identity: SERVER }, security: 'mutual_tls' });
    const m2 = await cluster.metrics(node2);
    t.ok(metricValue(m2, 'istio_tcp_connections_opened_total', { reporter: 'destination', source_principal: CLIENT, destination_principal: SERVER }) >= 1);
  });

  t.test('cross-node pod to pod, a Node client moving 4 MiB both ways', async (t) => {
    const { stdout } = await tb.exec(client.netns, process.execPath, ['-e', NODE_ECHO_CLIENT, server.ip, String(ECHO_PORT), String(4 * 1024 * 1024)]);
    t.same(JSON.parse(String(stdout)), { sent: 4 * 1024 * 1024, received: 4 * 1024 * 1024, same: true });
  });

  t.test('pod to ClusterIP: the agent picks a ready endpoint', async (t) => {
    const body = JSON.parse(await cluster.curl(client, `http://${VIP}/`));
    t.equal(body.pod, 'server');
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.service === 'server.demo.svc.cluster.local');
  });

  t.test("a selector-less service: to its EndpointSlice's endpoint over HBONE; without a slice, through to its VIP", async (t) => {
    const body = JSON.parse(await cluster.curl(client, `http://${SLICED_VIP}/`));
    t.equal(body.pod, 'server', "the slice's endpoint, on the slice's port");
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'hbone' && r.service === 'sliced.demo.svc.cluster.local');
    await routeApiVip(t, plain2.ip);
    const api = JSON.parse(await cluster.curl(client, `http://${API_VIP}:443/`));
    t.match(api, { pod: 'plain2', client: client.ip }, "default/kubernetes is passed through to its VIP, from the pod's address");
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'passthrough' && r.service === 'kubernetes.default.svc.cluster.local' && (r.dst as { ip: string }).ip === API_VIP);
  });

  t.test("passthrough to the node's own address (a hostNetwork workload), directly or behind a VIP, keeps the pod's address", async (t) => {
    t.teardown(await cluster.startWorkload({ name: 'host1', netns: node1.netns }));
    for (const via of ['curl', 'node'] as const) {
      t.same(await clientSeen(client, node1, via), { pod: 'host1', client: client.ip }, `to the node IP (${via})`);
    }
    await routeApiVip(t, node1.ip);
    const api = JSON.parse(await cluster.curl(client, `http://${API_VIP}:443/`));
    t.match(api, { pod: 'host1', client: client.ip }, 'to a VIP the node sends to itself (the API server of a control-plane node)');
  });

  t.test("a passthrough the node's NAT sends to an enrolled pod of this node is reset; to another node's, it is captured there", async (t) => {
    // kube-proxy's DNAT of locally originated traffic (a NodePort, an external or LoadBalancer IP), for a VIP the
    // mesh does not know: the agent passes it through, and the node's NAT picks the backend.
    const route = [`${NAT_VIP}/32`, 'dev', node1.uplink];
    await tb.exec(node1.netns, 'ip', ['route', 'add', ...route]);
    t.teardown(() => tb.exec(node1.netns, 'ip', ['route', 'del', ...route]));
    let dnat: string[] = [];
    const dnatTo = async (to: string) => {
      if (dnat.length > 0) await tb.exec(node1.netns, 'iptables', ['-t', 'nat', '-D', ...dnat]);
      dnat = ['OUTPUT', '-d', NAT_VIP, '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', `${to}:${HTTP_PORT}`];
      await tb.exec(node1.netns, 'iptables', ['-t', 'nat', '-A', ...dnat]);
    };
    t.teardown(() => (dnat.length > 0 ? tb.exec(node1.netns, 'iptables', ['-t', 'nat', '-D', ...dnat]) : undefined));

    // To neighbour, enrolled on node1: delivered locally, it would never cross PREROUTING, so never node1's inbound
    // listener, and neighbour's STRICT or AuthorizationPolicy would not be applied.
    await dnatTo(neighbour.ip);
    const refusal = cluster.waitForLog(
      node1,
      (r) => r.msg === 'connection refused' && r.path === 'passthrough' && r.reason === 'upstream_refused' && (r.dst as { ip: string } | undefined)?.ip === NAT_VIP,
      15_000,
    );
    await t.rejects(cluster.curl(client, `http://${NAT_VIP}/`), 'refused, not delivered in plaintext past the policy');
    const logged = await refusal;
    t.match(logged, { src: { ip: client.ip }, detail: /enrolled pod of this node/ }, 'the agent says why');
    const counted = String((await tb.exec(node1.netns, 'iptables', ['-nvxL', AMBIT_LOCAL_DNAT_CHAIN])).stdout)
      .split('\n')
      .find((line) => line.includes('REJECT'));
    t.ok(Number(counted?.trim().split(/\s+/)[0]) > 0, 'the filter rule reset it');
    t.same(await clientSeen(client, neighbour, 'curl'), { pod: 'neighbour', client: client.ip }, "the agent's own delivery to neighbour (no DNAT) still passes");

    // To server, enrolled on node2: captured by node2's PREROUTING, judged by its agent.
    await dnatTo(server.ip);
    t.same(await clientSeen(client, { ip: NAT_VIP }, 'curl', 80), { pod: 'server', client: client.ip }, 'another node: passed through');
    await cluster.waitForLog(node2, (r) => r.msg === 'access' && r.path === 'plaintext' && (r.src as { ip: string }).ip === client.ip && (r.dst as { ip: string }).ip === server.ip);
  });

  t.test('same node over the bridge (br_netfilter): delivered by the agent, reported by both sides', async (t) => {
    const body = JSON.parse(await cluster.curl(client, `http://${neighbour.ip}:${HTTP_PORT}/`));
    t.equal(body.pod, 'neighbour');
    const rec = await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'local' && r.direction === 'inbound');
    t.match(rec, { src: { identity: CLIENT }, dst: { ip: neighbour.ip, identity: SERVER } });
  });

  t.test('mesh pod to a pod outside the mesh: passthrough', async (t) => {
    const body = JSON.parse(await cluster.curl(client, `http://${plain2.ip}:${HTTP_PORT}/`));
    t.equal(body.pod, 'plain2');
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'passthrough' && (r.dst as { ip: string }).ip === plain2.ip);
  });

  t.test('pod outside the mesh to a mesh pod: plaintext inbound, allowed and counted', async (t) => {
    // The series of plaintext from plain1 alone: node2 also counts its pods' passthrough connections as 'none'.
    const series = { reporter: 'destination', connection_security_policy: 'none', source_workload: 'plain1' };
    const before = metricValue(await cluster.metrics(node2), 'istio_tcp_connections_opened_total', series);
    const body = JSON.parse(await cluster.curl(plain1, `http://${server.ip}:${HTTP_PORT}/`));
    t.equal(body.pod, 'server');
    await cluster.waitForLog(node2, (r) => r.msg === 'access' && r.path === 'plaintext');
    const after = metricValue(await cluster.metrics(node2), 'istio_tcp_connections_opened_total', series);
    t.equal(after, before + 1);
  });

  t.test('on the wire between the nodes: only TLS to 15008, never the plaintext marker', async (t) => {
    const marker = `ambit-marker-${process.pid}-${Date.now()}-do-not-leak`;
    const capture = await startCapture(node1.netns, node1.uplink, 'tcp');
    await cluster.curl(client, `http://${server.ip}:${HTTP_PORT}/`, ['-H', `x-marker: ${marker}`, '--data', marker]);
    const pcap = await capture.stop();
    const packets = parsePcap(pcap);
    t.ok(packets.length > 0, 'the capture saw the traffic');
    t.notOk(pcap.includes(Buffer.from(marker)), 'the marker never crosses in the clear');
    const offPort = packets.filter((p) => p.srcPort !== 15008 && p.dstPort !== 15008);
    t.same(offPort.map((p) => `${p.src}:${p.srcPort}>${p.dst}:${p.dstPort}`), [], 'every TCP packet between the nodes is HBONE');
    const records = packets.filter((p) => p.payload.length > 0);
    t.ok(records.length > 0 && records.every((p) => [0x14, 0x15, 0x16, 0x17].includes(p.payload[0] as number)), 'payloads are TLS records');
  });

  t.test('rules flushed by someone else are repaired by the agent', async (t) => {
    await tb.exec(node1.netns, 'iptables', ['-t', 'nat', '-F', 'AMBIT-PREROUTING']);
    await tb.exec(node1.netns, 'iptables', ['-t', 'mangle', '-F', AMBIT_MANGLE_CHAIN]);
    await tb.exec(node1.netns, 'iptables', ['-t', 'mangle', '-F', AMBIT_MANGLE_OUTPUT_CHAIN]);
    await tb.exec(node1.netns, 'iptables', ['-t', 'filter', '-F', AMBIT_LOCAL_DNAT_CHAIN]);
    await tb.exec(node1.netns, 'ipset', ['flush', 'ambit-pods-v4']);
    await tb.exec(node1.netns, 'ip', ['rule', 'del', 'priority', String(TRANSPARENT_RULE_PRIORITY)]);
    await tb.exec(node1.netns, 'ip', ['route', 'flush', 'table', String(TRANSPARENT_ROUTE_TABLE)]);
    await tb.exec(node1.netns, 'nft', ['delete', 'table', 'bridge', AMBIT_BRIDGE_TABLE]);
    await tb.exec(node1.netns, 'bridge', ['fdb', 'del', AMBIT_BRIDGE_MAC, 'dev', 'cni0', 'self']);
    const deadline = Date.now() + 5000;
    let nat = '';
    let ipset = '';
    let rules = await nodeRules(tb, node1);
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      nat = String((await tb.exec(node1.netns, 'iptables-save', ['-t', 'nat'])).stdout);
      ipset = String((await tb.exec(node1.netns, 'ipset', ['list', 'ambit-pods-v4'])).stdout);
      rules = await nodeRules(tb, node1);
      const transparentBack =
        rules.mangle.includes('--transparent') && rules.mangle.includes('CONNMARK') && rules.rules.includes(`lookup ${TRANSPARENT_ROUTE_TABLE}`) && rules.routes.includes('local default') &&
        rules.bridgeTables.includes(AMBIT_BRIDGE_TABLE) && rules.fdb.includes(AMBIT_BRIDGE_MAC) && rules.filter.includes(`-A ${AMBIT_LOCAL_DNAT_CHAIN} `);
      if (nat.includes(`${node1.ip}:15001`) && ipset.includes(client.ip) && transparentBack) break;
    }
    t.match(nat, `-j DNAT --to-destination ${node1.ip}:15001`, 'the chain is back');
    t.match(ipset, client.ip, 'the set is back');
    t.match(rules.mangle, '-m socket --transparent', 'the mark rule is back');
    t.match(rules.mangle, `-A ${AMBIT_MANGLE_OUTPUT_CHAIN} -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN`, 'the connection mark rule is back');
    t.match(rules.filter, buildLocalDnatChainRules()[0]!, 'the reset of a passthrough NATed to a local pod is back');
    t.match(rules.rules, `lookup ${TRANSPARENT_ROUTE_TABLE}`, 'the fwmark rule is back');
    t.match(rules.routes, 'local default dev lo', 'the local route is back');
    t.match(rules.bridgeTables, AMBIT_BRIDGE_TABLE, 'the bridge table is back');
    t.match(rules.fdb, AMBIT_BRIDGE_MAC, 'the fdb entry is back');
    t.equal(JSON.parse(await cluster.curl(client, `http://${server.ip}:${HTTP_PORT}/`)).pod, 'server');
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'hbone' && (r.dst as { ip: string }).ip === server.ip);
    t.same(await clientSeen(client, neighbour, 'curl'), { pod: 'neighbour', client: client.ip }, 'same-node transparency works again');
    t.same(await clientSeen(client, plain2, 'curl'), { pod: 'plain2', client: client.ip }, 'passthrough from the pod works again');
  });

  t.test('a shutdown or a crash leaves the rules (fail closed) until --cleanup removes every piece', async (t) => {
    const assertAllGone = async (node: TestbedNode) => {
      const rules = await nodeRules(tb, node);
      t.notMatch(rules.nat, 'AMBIT', `${node.name}: no nat chain`);
      t.notMatch(rules.mangle, 'AMBIT', `${node.name}: no mangle chain`);
      t.notMatch(rules.filter, 'AMBIT', `${node.name}: no filter chain`);
      t.notMatch(rules.rules, `lookup ${TRANSPARENT_ROUTE_TABLE}`, `${node.name}: no fwmark rule`);
      t.equal(rules.routes.trim(), '', `${node.name}: an empty route table`);
      t.notMatch(rules.bridgeTables, AMBIT_BRIDGE_TABLE, `${node.name}: no bridge table`);
      t.notMatch(rules.fdb, AMBIT_BRIDGE_MAC, `${node.name}: no fdb entry`);
      await t.rejects(tb.exec(node.netns, 'ipset', ['list', 'ambit-pods-v4']), `${node.name}: no ipset`);
    };

    t.equal(await cluster.stopAgent(node1), 0, 'SIGTERM: exit code 0');
    t.equal(await cluster.stopAgent(node2, 'SIGKILL'), null, 'SIGKILL: the agent is gone, no exit code');
    for (const node of [node1, node2]) {
      const rules = await nodeRules(tb, node);
      t.match(rules.nat, 'AMBIT-PREROUTING', `${node.name}: the rules stay while the agent is down`);
      t.match(rules.mangle, AMBIT_MANGLE_CHAIN);
      t.match(rules.mangle, AMBIT_MANGLE_OUTPUT_CHAIN);
      t.match(rules.filter, AMBIT_LOCAL_DNAT_CHAIN);
    }
    await t.rejects(cluster.curl(plain2, `http://${server.ip}:${HTTP_PORT}/`), 'a captured connection is refused, never sent in plaintext');

    for (const node of [node1, node2]) {
      await run('ip', ['netns', 'exec', node.netns, process.execPath, cluster.cliPath, 'agent', '--cleanup']);
      await assertAllGone(node);
    }
    await run('ip', ['netns', 'exec', node1.netns, process.execPath, cluster.cliPath, 'agent', '--cleanup']);
    t.pass('--cleanup again finds nothing to do and succeeds');
    t.same(await clientSeen(plain2, server, 'curl'), { pod: 'server', client: plain2.ip }, 'plain networking is back');
    t.same(await clientSeen(client, neighbour, 'curl'), { pod: 'neighbour', client: client.ip }, 'same-bridge traffic is plainly switched again');
  });
});
