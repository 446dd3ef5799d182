/**
 * The agent's data path in one process on loopback (no root): two agents, pods as listeners, the original
 * destination injected. Cross-node over HBONE, same-node, ClusterIP, passthrough, plaintext inbound, a closed port.
 */
import { createHash, randomBytes } from 'node:crypto';
import t from 'tap';
import { metricValue } from '../testbed/index.js';
import { exchange, exchangeOrErrorCode, pod, SERVICE_PORT, SERVICE_VIP, startLoopbackMesh, type LoopbackMesh } from './mesh/loopback.js';

let mesh: LoopbackMesh;
t.before(async () => {
  mesh = await startLoopbackMesh();
});
t.teardown(async () => {
  await mesh?.close();
});

const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';
const SERVER = 'spiffe://cluster.local/ns/demo/sa/server';

t.test('cross-node pod to pod goes over HBONE with both identities', async (t) => {
  const c = pod('c');
  const socket = await mesh.connect('a', { host: c.ip, port: mesh.appPort });
  const reply = await exchange(socket, 'hello over hbone');
  t.equal(reply.toString(), 'hello over hbone', 'the echo came back whole');

  const src = await mesh.logs.node1.waitFor((r) => r.msg === 'access' && r.path === 'hbone');
  t.match(src, { direction: 'outbound', src: { identity: CLIENT, ip: pod('a').ip }, dst: { identity: SERVER, ip: c.ip }, bytes_received: 16, bytes_sent: 16, outcome: 'ok' });
  const dst = await mesh.logs.node2.waitFor((r) => r.msg === 'access' && r.path === 'hbone');
  t.match(dst, { direction: 'inbound', src: { identity: CLIENT, ip: pod('a').ip }, dst: { identity: SERVER }, security: 'mutual_tls' });

  const m1 = await mesh.agents.node1.registry.metrics();
  const m2 = await mesh.agents.node2.registry.metrics();
  const labels = { source_principal: CLIENT, destination_principal: SERVER, connection_security_policy: 'mutual_tls' };
  t.equal(metricValue(m1, 'istio_tcp_connections_opened_total', { ...labels, reporter: 'source', source_workload: 'a', destination_workload: 'c' }), 1);
  t.equal(metricValue(m2, 'istio_tcp_connections_opened_total', { ...labels, reporter: 'destination' }), 1);
  t.equal(metricValue(m1, 'istio_tcp_received_bytes_total', { reporter: 'source' }), 16, 'request bytes counted at the source');
  t.equal(metricValue(m2, 'istio_tcp_sent_bytes_total', { reporter: 'destination' }), 16, 'response bytes counted at the destination');
});

t.test('a large transfer keeps every byte in order both ways (backpressure, half-close)', async (t) => {
  const payload = randomBytes(8 * 1024 * 1024);
  const socket = await mesh.connect('a', { host: pod('c').ip, port: mesh.appPort });
  const reply = await exchange(socket, payload);
  t.equal(reply.length, payload.length);
  t.equal(createHash('sha256').update(reply).digest('hex'), createHash('sha256').update(payload).digest('hex'));
});

t.test('150 concurrent connections are all carried whole (pooling itself: hbone-pool.test)', async (t) => {
  const c = pod('c');
  const replies = await Promise.all(
    Array.from({ length: 150 }, async (_, i) => exchange(await mesh.connect('a', { host: c.ip, port: mesh.appPort }), `msg-${i}`)),
  );
  replies.forEach((r, i) => t.equal(r.toString(), `msg-${i}`));
  const m1 = await mesh.agents.node1.registry.metrics();
  t.ok(metricValue(m1, 'istio_tcp_connections_opened_total', { reporter: 'source', destination_workload: 'c' }) >= 151);
});

t.test('same-node traffic is delivered directly and reported by both sides', async (t) => {
  const l = pod('l');
  const reply = await exchange(await mesh.connect('a', { host: l.ip, port: mesh.appPort }), 'same node');
  t.equal(reply.toString(), 'same node');
  const rec = await mesh.logs.node1.waitFor((r) => r.msg === 'access' && r.path === 'local' && r.direction === 'inbound');
  t.match(rec, { src: { identity: CLIENT }, dst: { identity: SERVER, ip: l.ip } });
  const m1 = await mesh.agents.node1.registry.metrics();
  t.equal(metricValue(m1, 'istio_tcp_connections_opened_total', { reporter: 'destination', destination_workload: 'l' }), 1);
  t.equal(metricValue(m1, 'istio_tcp_connections_opened_total', { reporter: 'source', destination_workload: 'l' }), 1);
});

t.test('a ClusterIP is resolved by the agent to a ready endpoint', async (t) => {
  const reply = await exchange(await mesh.connect('a', { host: SERVICE_VIP, port: SERVICE_PORT }), 'via service');
  t.equal(reply.toString(), 'via service');
  const rec = await mesh.logs.node1.waitFor((r) => r.msg === 'access' && r.service === 'svc-c.demo.svc.cluster.local');
  t.match(rec, { path: 'hbone', dst: { ip: pod('c').ip, port: mesh.appPort, identity: SERVER } });
  const m1 = await mesh.agents.node1.registry.metrics();
  t.equal(metricValue(m1, 'istio_tcp_connections_opened_total', { destination_service: 'svc-c.demo.svc.cluster.local' }), 1);
});

t.test('a destination outside the mesh gets plain passthrough', async (t) => {
  const x = pod('x');
  const reply = await exchange(await mesh.connect('a', { host: x.ip, port: mesh.appPort }), 'to a plain pod');
  t.equal(reply.toString(), 'to a plain pod');
  const rec = await mesh.logs.node1.waitFor((r) => r.msg === 'access' && r.path === 'passthrough');
  t.match(rec, { security: 'none', dst: { ip: x.ip } });
});

t.test('plaintext into an enrolled pod is allowed (PERMISSIVE), logged and counted', async (t) => {
  const c = pod('c');
  const reply = await exchange(await mesh.connectPlaintext(pod('x').ip, { host: c.ip, port: mesh.appPort }), 'plaintext in');
  t.equal(reply.toString(), 'plaintext in');
  const rec = await mesh.logs.node2.waitFor((r) => r.msg === 'access' && r.path === 'plaintext');
  t.match(rec, { security: 'none', src: { ip: pod('x').ip }, dst: { ip: c.ip, identity: SERVER } });
  t.notOk((rec.src as Record<string, unknown>).identity, 'plaintext has no principal');
  const m2 = await mesh.agents.node2.registry.metrics();
  t.equal(metricValue(m2, 'istio_tcp_connections_opened_total', { reporter: 'destination', connection_security_policy: 'none', source_principal: 'unknown' }), 1);
});

t.test('plaintext to a pod outside the mesh is refused on the inbound listener', async (t) => {
  const result = await exchangeOrErrorCode(() => mesh.connectPlaintext(pod('c').ip, { host: pod('x').ip, port: mesh.appPort }), 'x');
  t.equal(result, 'ECONNRESET');
  await mesh.logs.node2.waitFor((r) => r.msg === 'connection refused' && r.reason === 'not_enrolled');
});

t.test('a connection to a closed port gets a clean, prompt error through the mesh', async (t) => {
  const started = Date.now();
  const result = await exchangeOrErrorCode(() => mesh.connect('a', { host: pod('c').ip, port: mesh.closedPort }), 'anyone?');
  t.equal(result, 'ECONNRESET', 'the client sees a reset, as without the mesh');
  t.ok(Date.now() - started < 3000, 'no hang');
  const src = await mesh.logs.node1.waitFor((r) => r.msg === 'connection refused' && r.reason === 'upstream_refused');
  t.match(src, { direction: 'outbound' });
  await mesh.logs.node2.waitFor((r) => r.msg === 'connection refused' && r.reason === 'upstream_refused');
});

t.test('a captured connection from an address that is not a local enrolled pod is refused', async (t) => {
  const result = await exchangeOrErrorCode(() => mesh.connect('x', { host: pod('c').ip, port: mesh.appPort }), 'sneaky');
  t.equal(result, 'ECONNRESET');
  await mesh.logs.node2.waitFor((r) => r.msg === 'connection refused' && r.reason === 'unknown_source');
});

t.test('readiness and metrics are served', async (t) => {
  t.equal(mesh.agents.node1.ready, true);
  const text = await mesh.agents.node1.registry.metrics();
  t.match(text, /ambit_cert_expiration_timestamp_seconds\{identity="spiffe:\/\/cluster.local\/ns\/demo\/sa\/client",kind="workload"\}/);  t.match(text, 'ambit_upstream_source{mode="node"} 1', 'asked for connections from the node address, and says so');
});
