/**
 * Bad input at the HBONE listener (15008). Each case is refused with one log line naming the reason and a metric,
 * and the agent keeps serving well-behaved clients afterwards. Each test looks only at what it caused: the log
 * records written since it started, and how much the counters rose meanwhile, so it holds in any order.
 */
import type http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import t, { type Test } from 'tap';
import { CertificateAuthority, sniForIdentity } from '../core/identity/index.js';
import { metricValue } from '../testbed/index.js';
import { hboneSession, NODE_IPS, pod, startLoopbackMesh, type LogWindow, type LoopbackMesh } from './mesh/loopback.js';

const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';
const SERVER = 'spiffe://cluster.local/ns/demo/sa/server';

let mesh: LoopbackMesh;
let good: { keyPem: string; certPem: string };
t.before(async () => {
  mesh = await startLoopbackMesh();
  good = await mesh.ca.issueKeyAndCert(CLIENT);
});
t.teardown(async () => {
  await mesh?.close();
});

function refusals(reason: string): Promise<number> {
  return mesh.agents.node2.registry.metrics().then((m) => metricValue(m, 'ambit_connections_refused_total', { direction: 'hbone', reason }));
}

/** What one test caused at node2: its log records, and how much a refusal counter rose since it started. */
async function observe(...reasons: string[]): Promise<{ logs: LogWindow; rose: (reason: string) => Promise<number> }> {
  const before = new Map<string, number>();
  for (const reason of reasons) before.set(reason, await refusals(reason));
  const logs = mesh.logs.node2.window();
  return { logs, rose: async (reason) => (await refusals(reason)) - (before.get(reason) ?? 0) };
}

/**
 * Waits for this test's refusal record with `reason` (and matching `detail`, when given), then checks that each
 * refusal the counter saw was logged once: the HBONE server and the agent's telemetry must not both log it.
 */
async function refusedOnce(t: Test, seen: Awaited<ReturnType<typeof observe>>, reason: string, count = 1, detail?: RegExp): Promise<void> {
  const record = await seen.logs.waitFor((r) => r.msg === 'connection refused' && r.reason === reason && (detail === undefined || detail.test(String(r.detail))));
  t.equal(await seen.rose(reason), count, `${reason}: counted ${count}`);
  t.equal(seen.logs.filter((r) => r.reason === reason).length, count, `${reason}: one log line per refusal (${String(record.detail)})`);
}

/**
 * A raw TLS connection to node2's 15008; resolves with how it ended and how many bytes the server sent after the
 * handshake (an accepted client would get the server's HTTP/2 SETTINGS at once; a refused one gets nothing).
 */
function tlsAttempt(options: tls.ConnectionOptions): Promise<{ error?: string; received: number }> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: NODE_IPS.node2,
      port: mesh.ports.hbone,
      servername: sniForIdentity(SERVER),
      ALPNProtocols: ['h2'],
      ca: mesh.ca.rootPem,
      checkServerIdentity: () => undefined,
      ...options,
    });
    let error: string | undefined;
    let received = 0;
    socket.on('data', (chunk: Buffer) => (received += chunk.length));
    socket.on('error', (err) => (error = err.message));
    // TLS 1.3 reports a refused client certificate after the client's handshake finished: read to see the alert.
    socket.on('secureConnect', () => socket.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
    socket.on('close', () => resolve({ error, received }));
    socket.setTimeout(3000, () => socket.destroy(new Error('timeout')));
  });
}

/** An mTLS HTTP/2 session to node2 with the given client certificate, SNI for `sniIdentity`. */
function session(sniIdentity = SERVER, creds = good): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const s = hboneSession(mesh, creds, sniIdentity);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

function request(s: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders): Promise<{ status: number; reason: string | undefined }> {
  return new Promise((resolve, reject) => {
    const stream = s.request(headers, { endStream: false });
    stream.once('response', (h) => {
      resolve({ status: Number(h[':status']), reason: h['ambit-reason'] as string | undefined });
      stream.close();
    });
    stream.once('error', reject);
  });
}

async function stillServing(t: Test): Promise<void> {
  const s = await session();
  const res = await request(s, { ':method': 'CONNECT', ':authority': `${pod('c').ip}:${mesh.appPort}` });
  t.equal(res.status, 200, 'a well-behaved client is still served');
  s.close();
}

t.test('the probe itself: a good client certificate gets the server\'s HTTP/2 preface', async (t) => {
  const result = await tlsAttempt({ key: good.keyPem, cert: good.certPem });
  t.ok(result.received > 0, 'an accepted client receives SETTINGS');
});

t.test('plain bytes instead of TLS', async (t) => {
  const seen = await observe('tls_handshake_failed');
  await new Promise<void>((resolve) => {
    const socket = net.connect(mesh.ports.hbone, NODE_IPS.node2, () => socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve());
  });
  await refusedOnce(t, seen, 'tls_handshake_failed');
  await stillServing(t);
});

t.test('TLS without a client certificate', async (t) => {
  const seen = await observe('tls_handshake_failed');
  const result = await tlsAttempt({});
  t.equal(result.received, 0, `the server sent nothing and closed (${result.error ?? 'no error event'})`);
  await refusedOnce(t, seen, 'tls_handshake_failed');
  await stillServing(t);
});

t.test('a client certificate from another CA', async (t) => {
  const other = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
  const creds = await other.issueKeyAndCert(CLIENT);
  const seen = await observe('tls_handshake_failed');
  const result = await tlsAttempt({ key: creds.keyPem, cert: creds.certPem });
  t.equal(result.received, 0, `the server sent nothing and closed (${result.error ?? 'no error event'})`);
  await refusedOnce(t, seen, 'tls_handshake_failed', 1, /client certificate refused: UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
  await stillServing(t);
});

t.test('an expired client certificate', async (t) => {
  const creds = await mesh.ca.issueKeyAndCert(CLIENT, { notBefore: new Date(Date.now() - 3 * 86_400_000), notAfter: new Date(Date.now() - 86_400_000) });
  const seen = await observe('tls_handshake_failed');
  const result = await tlsAttempt({ key: creds.keyPem, cert: creds.certPem });
  t.equal(result.received, 0, `the server sent nothing and closed (${result.error ?? 'no error event'})`);
  await refusedOnce(t, seen, 'tls_handshake_failed', 1, /CERT_HAS_EXPIRED|expired/i);
  await stillServing(t);
});

t.test('SNI that names no local identity', async (t) => {
  const seen = await observe('tls_handshake_failed');
  const result = await tlsAttempt({ key: good.keyPem, cert: good.certPem, servername: sniForIdentity('spiffe://cluster.local/ns/demo/sa/nobody') });
  t.equal(result.received, 0, `the server sent nothing and closed (${result.error ?? 'no error event'})`);
  await refusedOnce(t, seen, 'tls_handshake_failed', 1, /no local workload identity for SNI/);
});

t.test('a method other than CONNECT', async (t) => {
  const seen = await observe('method_not_allowed');
  const s = await session();
  const res = await request(s, { ':method': 'GET', ':path': '/', ':authority': `${pod('c').ip}:${mesh.appPort}` });
  t.same(res, { status: 405, reason: 'method_not_allowed' });
  await refusedOnce(t, seen, 'method_not_allowed');
  s.close();
  await stillServing(t);
});

t.test('a malformed authority', async (t) => {
  const seen = await observe('bad_authority');
  const s = await session();
  for (const authority of ['not-an-address', `${pod('c').ip}:0`, `${pod('c').ip}:99999`, 'svc.demo:80']) {
    const res = await request(s, { ':method': 'CONNECT', ':authority': authority });
    t.same(res, { status: 400, reason: 'bad_authority' }, authority);
  }
  await refusedOnce(t, seen, 'bad_authority', 4);
  s.close();
  await stillServing(t);
});

t.test('an authority that is not a local pod', async (t) => {
  const seen = await observe('not_local', 'unknown_destination', 'not_enrolled');
  const s = await session();
  t.same(await request(s, { ':method': 'CONNECT', ':authority': `${pod('a').ip}:${mesh.appPort}` }), { status: 404, reason: 'not_local' });
  t.same(await request(s, { ':method': 'CONNECT', ':authority': `10.99.99.99:${mesh.appPort}` }), { status: 404, reason: 'unknown_destination' });
  t.same(await request(s, { ':method': 'CONNECT', ':authority': `${pod('x').ip}:${mesh.appPort}` }), { status: 403, reason: 'not_enrolled' });
  for (const reason of ['not_local', 'unknown_destination', 'not_enrolled']) await refusedOnce(t, seen, reason);
  s.close();
  await stillServing(t);
});

t.test('an authority whose workload has another identity than the TLS session', async (t) => {
  const seen = await observe('identity_mismatch');
  const s = await session(SERVER);
  const res = await request(s, { ':method': 'CONNECT', ':authority': `${pod('d').ip}:${mesh.appPort}` });
  t.same(res, { status: 403, reason: 'identity_mismatch' });
  await refusedOnce(t, seen, 'identity_mismatch');
  s.close();
  await stillServing(t);
});

t.test('a CONNECT to a closed port gets a clean error, not a hang', async (t) => {
  const seen = await observe('upstream_refused');
  const s = await session();
  const started = Date.now();
  const res = await request(s, { ':method': 'CONNECT', ':authority': `${pod('c').ip}:${mesh.closedPort}` });
  t.same(res, { status: 503, reason: 'upstream_refused' });
  t.ok(Date.now() - started < 2000);
  await refusedOnce(t, seen, 'upstream_refused');
  s.close();
  await stillServing(t);
});
