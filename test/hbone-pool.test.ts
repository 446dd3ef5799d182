/** The HBONE client's pool against a real HBONE server on loopback: sharing, the stream limit, idle close, identity. */
import type http2 from 'node:http2';
import t from 'tap';
import { HboneClient, HboneServer, refuseStream, SecureContextCache } from '../core/hbone/index.js';
import { CertificateAuthority, sniForIdentity, TrustBundle } from '../core/identity/index.js';

const CLIENT = 'spiffe://cluster.local/ns/a/sa/client';
const SERVER = 'spiffe://cluster.local/ns/b/sa/server';
const OTHER = 'spiffe://cluster.local/ns/b/sa/other';

/** A mesh CA, a certificate for each identity, and the TLS context cache both ends build their contexts from. */
async function meshPki(identities: string[]) {
  const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
  const creds = new Map<string, { keyPem: string; certChainPem: string }>();
  for (const id of identities) {
    const { keyPem, certPem } = await ca.issueKeyAndCert(id);
    creds.set(id, { keyPem, certChainPem: certPem });
  }
  const trustBundle = new TrustBundle(ca.rootPem);
  return { trustBundle, creds, contexts: new SecureContextCache(trustBundle) };
}

t.test('pooling', async (t) => {
  const { trustBundle, creds, contexts } = await meshPki([CLIENT, SERVER, OTHER]);
  const served: string[] = [];
  const server = new HboneServer({
    host: '127.0.0.1',
    port: 0,
    trustBundle,
    // The server answers for SERVER and, to test the client's check, presents SERVER's certificate for OTHER too.
    resolveSni: async (sni) => {
      const identity = [SERVER, OTHER].find((id) => sniForIdentity(id) === sni);
      return identity ? { identity, context: contexts.get(creds.get(SERVER)!) } : undefined;
    },
    onConnect: (stream: http2.ServerHttp2Stream, request) => {
      served.push(request.peerIdentity);
      stream.respond({ ':status': 200 });
      stream.pipe(stream);
    },
  });
  await server.listen();
  const port = server.address().port;
  const client = new HboneClient({
    contextFor: async (id) => contexts.get(creds.get(id)!),
    sniFor: sniForIdentity,
    maxStreamsPerConnection: 100,
    idleTimeoutMs: 200,
  });
  t.teardown(async () => {
    client.close();
    await server.close();
  });
  const request = { sourceIdentity: CLIENT, destinationIdentity: SERVER, via: { host: '127.0.0.1', port }, authority: '127.0.0.1:9' };

  const streams = await Promise.all(Array.from({ length: 150 }, () => client.connect(request)));
  t.equal(client.connectionCount(), 2, '150 concurrent streams use two connections of at most 100 streams');
  t.equal(served.length, 150);
  t.ok(served.every((id) => id === CLIENT), 'the server saw the client identity on every stream');

  const echoed = await new Promise<string>((resolve) => {
    const s = streams[0]!;
    let text = '';
    s.setEncoding('utf8');
    s.on('data', (c: string) => (text += c));
    s.on('end', () => resolve(text));
    s.end('ping');
  });
  t.equal(echoed, 'ping', 'bytes flow both ways and half-close travels as END_STREAM');

  for (const s of streams) s.destroy();
  await new Promise((r) => setTimeout(r, 50));
  const again = await client.connect(request);
  t.equal(client.connectionCount(), 2, 'a new stream reuses a pooled connection');
  again.destroy();
  await new Promise((r) => setTimeout(r, 600));
  t.equal(client.connectionCount(), 0, 'idle connections are closed after the idle timeout');

  await t.rejects(client.connect({ ...request, destinationIdentity: OTHER }), { code: 'HBONE_CONNECT_FAILED', message: /presented identity .*sa\/server, expected .*sa\/other/ }, 'the client checks the server identity');
  await t.rejects(client.connect({ ...request, via: { host: '127.0.0.1', port: 1 } }), { code: 'HBONE_CONNECT_FAILED', message: /is the Ambit agent running/ }, 'a refused connection says what to check');
});

t.test('open: the first bytes travel before the answer; a refusal or an early close rejects `established`', async (t) => {
  const { trustBundle, creds, contexts } = await meshPki([CLIENT, SERVER]);
  /** What each stream's server side read before it answered. */
  const readBeforeAnswer = new Map<string, string>();
  const server = new HboneServer({
    host: '127.0.0.1',
    port: 0,
    trustBundle,
    resolveSni: async (sni) => (sni === sniForIdentity(SERVER) ? { identity: SERVER, context: contexts.get(creds.get(SERVER)!) } : undefined),
    onConnect: (stream: http2.ServerHttp2Stream, request) => {
      const authority = `${request.target.host}:${request.target.port}`;
      // Port 3 never answers; the others answer only once the client's first bytes are here.
      if (authority.endsWith(':3')) return;
      stream.once('data', (chunk: Buffer) => {
        readBeforeAnswer.set(authority, chunk.toString());
        if (authority.endsWith(':2')) {
          refuseStream(stream, 403, 'denied', 'ns/deny-all rule 0');
          return;
        }
        stream.respond({ ':status': 200 });
        stream.end(`got ${chunk.toString()}`);
      });
    },
  });
  await server.listen();
  const client = new HboneClient({ contextFor: async (id) => contexts.get(creds.get(id)!), sniFor: sniForIdentity });
  t.teardown(async () => {
    client.close();
    await server.close();
  });
  const request = (port: number) => ({ sourceIdentity: CLIENT, destinationIdentity: SERVER, via: { host: '127.0.0.1', port: server.address().port }, authority: `127.0.0.1:${port}` });

  const accepted = await client.open(request(1));
  accepted.stream.write('hello');
  await accepted.established;
  t.equal(readBeforeAnswer.get('127.0.0.1:1'), 'hello', 'the server read the bytes before it answered 200');
  const reply = await new Promise<string>((resolve) => {
    let text = '';
    accepted.stream.setEncoding('utf8').on('data', (c: string) => (text += c)).on('end', () => resolve(text));
    accepted.stream.end();
  });
  t.equal(reply, 'got hello');

  const refused = await client.open(request(2));
  refused.stream.on('error', () => undefined);
  refused.stream.write('let me in');
  await t.rejects(refused.established, { code: 'HBONE_REFUSED', status: 403, reason: 'denied', policy: 'ns/deny-all rule 0' }, 'a refusal rejects with its status, reason and policy');

  const unanswered = await client.open(request(3));
  unanswered.stream.write('anyone?');
  setTimeout(() => unanswered.stream.close(), 50);
  await t.rejects(unanswered.established, { code: 'HBONE_STREAM_CLOSED', reason: 'stream_closed' }, 'a stream closed before its answer rejects');
});
