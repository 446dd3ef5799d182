/**
 * End to end on network namespaces (root): two nodes (node1 with the bridge CNI, node2 with ptp), pods wired by the
 * real CNI plugins, an agent process per node with real iptables/ipset rules, real clients (curl and Node).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import t from 'tap';
import { HTTP_PORT, ECHO_PORT, MeshCluster, metricValue } from './mesh/cluster.js';
import { parsePcap, startCapture, Testbed, testbedUnavailableReason } from './testbed/index.js';

const unavailable = testbedUnavailableReason();
const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';
const SERVER = 'spiffe://cluster.local/ns/demo/sa/server';
const VIP = '10.96.0.10';
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

t.test('the L4 mesh across two nodes', { skip: unavailable }, async (t) => {
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'] });
  t.teardown(() => tb.destroy());
  const client = await tb.addPod('node1', 'client');
  const neighbour = await tb.addPod('node1', 'neighbour');
  const plain1 = await tb.addPod('node1', 'plain1');
  const server = await tb.addPod('node2', 'server');
  const plain2 = await tb.addPod('node2', 'plain2');
  const cluster = await MeshCluster.start(tb, {
    namespaces: { demo: { 'ambit.dev/mode': 'enabled' }, plain: {} },
    pods: {
      client: { namespace: 'demo', serviceAccount: 'client', app: 'client' },
      neighbour: { namespace: 'demo', serviceAccount: 'server', app: 'neighbour' },
      plain1: { namespace: 'plain', app: 'plain1' },
      server: { namespace: 'demo', serviceAccount: 'server', app: 'server' },
      plain2: { namespace: 'plain', app: 'plain2' },
    },
    services: [{ namespace: 'demo', name: 'server', clusterIP: VIP, selector: { app: 'server' }, ports: [{ port: 80, targetPort: 'http' }] }],
    agentArgs: ['--rules-resync-interval', '1'],
  });
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];

  t.test('the agent installed its rules: enrolled local pods in the ipset, DNAT to 15001 and 15006', async (t) => {
    const ipset = String((await tb.exec(node1.netns, 'ipset', ['list', 'ambit-pods-v4'])).stdout);
    t.match(ipset, client.ip);
    t.match(ipset, neighbour.ip);
    t.notMatch(ipset, plain1.ip, 'a pod outside the mesh is not captured');
    const nat = String((await tb.exec(node1.netns, 'iptables-save', ['-t', 'nat'])).stdout);
    t.match(nat, `-j DNAT --to-destination ${node1.ip}:15001`);
    t.match(nat, `-j DNAT --to-destination ${node1.ip}:15006`);
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
    const before = metricValue(await cluster.metrics(node2), 'istio_tcp_connections_opened_total', { connection_security_policy: 'none' });
    const body = JSON.parse(await cluster.curl(plain1, `http://${server.ip}:${HTTP_PORT}/`));
    t.equal(body.pod, 'server');
    await cluster.waitForLog(node2, (r) => r.msg === 'access' && r.path === 'plaintext');
    const after = metricValue(await cluster.metrics(node2), 'istio_tcp_connections_opened_total', { connection_security_policy: 'none', source_workload: 'plain1' });
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
    await tb.exec(node1.netns, 'ipset', ['flush', 'ambit-pods-v4']);
    const deadline = Date.now() + 5000;
    let nat = '';
    let ipset = '';
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      nat = String((await tb.exec(node1.netns, 'iptables-save', ['-t', 'nat'])).stdout);
      ipset = String((await tb.exec(node1.netns, 'ipset', ['list', 'ambit-pods-v4'])).stdout);
      if (nat.includes(`${node1.ip}:15001`) && ipset.includes(client.ip)) break;
    }
    t.match(nat, `-j DNAT --to-destination ${node1.ip}:15001`, 'the chain is back');
    t.match(ipset, client.ip, 'the set is back');
    t.equal(JSON.parse(await cluster.curl(client, `http://${server.ip}:${HTTP_PORT}/`)).pod, 'server');
    await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'hbone' && (r.dst as { ip: string }).ip === server.ip);
  });

  t.test('a clean shutdown removes every rule; a crash leaves them (fail closed) until --cleanup', async (t) => {
    t.equal(await cluster.stopAgent(node1), 0, 'SIGTERM: exit code 0');
    const nat1 = String((await tb.exec(node1.netns, 'iptables-save', ['-t', 'nat'])).stdout);
    t.notMatch(nat1, 'AMBIT', 'no Ambit chain left on node1');
    await t.rejects(tb.exec(node1.netns, 'ipset', ['list', 'ambit-pods-v4']), 'no ipset left on node1');

    process.kill(cluster.agentPid(node2), 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    const nat2 = String((await tb.exec(node2.netns, 'iptables-save', ['-t', 'nat'])).stdout);
    t.match(nat2, 'AMBIT-PREROUTING', 'the rules stay while the agent is down');
    await t.rejects(cluster.curl(plain2, `http://${server.ip}:${HTTP_PORT}/`), 'a captured connection is refused, never sent in plaintext');
    await run('ip', ['netns', 'exec', node2.netns, process.execPath, cluster.cliPath, 'agent', '--cleanup']);
    const after = String((await tb.exec(node2.netns, 'iptables-save', ['-t', 'nat'])).stdout);
    t.notMatch(after, 'AMBIT', '--cleanup removed the chain');
    const body = JSON.parse(await cluster.curl(plain2, `http://${server.ip}:${HTTP_PORT}/`));
    t.equal(body.pod, 'server', 'plain networking is back');
  });
});
