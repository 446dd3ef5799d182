/**
 * What the agent remembers per workload goes when the workload does: the HBONE server's SNI names (the real
 * HboneServer, real mTLS clients) and the telemetry's series, cached counts and exported metrics alike (the real
 * AgentTelemetry on a real registry).
 */
import http2 from 'node:http2';
import tls from 'node:tls';
import { Registry } from 'prom-client';
import t from 'tap';
import { AgentTelemetry, SERIES_RETENTION_MS, type ConnectionRecord } from '../agent/telemetry.js';
import { HboneServer } from '../core/hbone/index.js';
import { sniForIdentity } from '../core/identity/index.js';
import { silentLogger } from '../core/log/log.js';
import { metricValue } from '../testbed/index.js';
import { meshPki } from './mesh/hbone-fixtures.js';

const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';
const A = 'spiffe://cluster.local/ns/demo/sa/a';
const B = 'spiffe://cluster.local/ns/demo/sa/b';

t.test('the HBONE server forgets the SNI names of identities that left; open sessions keep theirs', async (t) => {
  const { ca, trustBundle, contexts, creds: credentials } = await meshPki([A, B]);
  /** The node's workloads now: what the agent's SNI table would say. */
  const local = new Set([A, B]);
  const seen: string[] = [];
  const server = new HboneServer({
    host: '127.0.0.1',
    port: 0,
    trustBundle,
    resolveSni: async (servername) => {
      const identity = [...local].find((id) => sniForIdentity(id) === servername);
      return identity ? { identity, context: contexts.get(credentials.get(identity)!) } : undefined;
    },
    onConnect: (stream, request) => {
      seen.push(request.localIdentity);
      stream.respond({ ':status': 200 }, { endStream: true });
    },
  });
  await server.listen();
  t.teardown(() => server.close());
  const client = await ca.issueKeyAndCert(CLIENT);
  const { port } = server.address();
  const session = (identity: string) =>
    new Promise<http2.ClientHttp2Session>((resolve, reject) => {
      const s = http2.connect(`https://127.0.0.1:${port}`, {
        createConnection: () =>
          tls.connect({ host: '127.0.0.1', port, servername: sniForIdentity(identity), ALPNProtocols: ['h2'], key: client.keyPem, cert: client.certPem, ca: ca.rootPem, checkServerIdentity: () => undefined }),
      });
      s.once('connect', () => resolve(s));
      s.once('error', reject);
      t.teardown(() => s.destroy());
    });
  const status = (s: http2.ClientHttp2Session) =>
    new Promise<number>((resolve, reject) => {
      const stream = s.request({ ':method': 'CONNECT', ':authority': '10.0.0.1:80' }, { endStream: false });
      stream.once('response', (h) => resolve(Number(h[':status'])));
      stream.once('error', reject);
    });

  const toA = await session(A);
  t.equal(await status(toA), 200);
  const toB = await session(B);
  t.equal(await status(toB), 200);
  t.equal(server.sniNames, 2, 'one SNI name per identity asked for');
  local.delete(A);
  server.retainIdentities(local);
  t.equal(server.sniNames, 1, "the name of the identity that left is gone");
  t.equal(await status(toA), 200, 'a session opened for it still knows which identity it was opened for');
  t.same(seen, [A, B, A], 'each stream was handed its session\'s local identity');
  await t.rejects(session(A), 'a new handshake for the identity that left is refused');
  t.equal(server.sniNames, 1);
});

function record(source: string, destination: string): ConnectionRecord {
  return {
    reporter: 'destination',
    path: 'hbone',
    source: { ip: '10.0.0.1', port: 1000, workload: source, namespace: 'demo', identity: CLIENT },
    destination: { ip: '10.0.0.2', port: 80, workload: destination, namespace: 'demo', identity: A },
    security: 'mutual_tls',
    startedAt: Date.now(),
  };
}

t.test('the telemetry drops the series of workloads gone for SERIES_RETENTION_MS, never one with an open connection', async (t) => {
  const registry = new Registry();
  const telemetry = new AgentTelemetry(registry, silentLogger());
  const gone = record('client', 'old');
  const staying = record('client', 'current');
  const exists = (namespace: string, workload: string) => namespace === 'demo' && workload !== 'old';
  telemetry.opened(gone);
  telemetry.opened(staying);
  telemetry.closed(staying, { received: 1, sent: 1 });
  t.equal(metricValue(await registry.metrics(), 'ambit_connections_active', { direction: 'inbound' }), 1, 'scraped with one connection open');
  const t0 = Date.now();
  telemetry.prune(exists, t0 + 10 * SERIES_RETENTION_MS);
  t.equal(telemetry.seriesCount, 2, 'a series with an open connection stays, however long its workload is gone');
  telemetry.closed(gone, { received: 5, sent: 7 });
  telemetry.prune(exists, t0);
  t.equal(telemetry.seriesCount, 2, 'just gone: it stays, so that a scrape reads its last counts');
  const last = await registry.metrics();
  t.equal(metricValue(last, 'istio_tcp_connections_closed_total', { destination_workload: 'old' }), 1, 'and they are read');
  telemetry.prune(exists, t0 + SERIES_RETENTION_MS - 1);
  t.equal(telemetry.seriesCount, 2, 'not yet');
  telemetry.prune(exists, t0 + SERIES_RETENTION_MS);
  t.equal(telemetry.seriesCount, 1, 'after the retention it goes');
  const after = await registry.metrics();
  t.notMatch(after, /destination_workload="old"/, 'from the exported metrics too');
  t.equal(metricValue(after, 'istio_tcp_connections_opened_total', { destination_workload: 'current' }), 1, 'the series of a workload that exists stays');
  t.equal(metricValue(after, 'ambit_connections_active', { direction: 'inbound' }), 0, 'the active gauge counts the dropped series\' last close');
});
