/**
 * TLS at the two real HBONE ends, HboneServer and HboneClient, on loopback: what each end refuses (resumption,
 * TLS 1.2, a missing SNI, a certificate without the expected SPIFFE ID) and how the server picks its certificate.
 */
import type http2 from 'node:http2';
import type tls from 'node:tls';
import t, { type Test } from 'tap';
import { HboneServer, SecureContextCache } from '../core/hbone/index.js';
import { CertificateAuthority, sniForIdentity, TrustBundle } from '../core/identity/index.js';
import { tlsProbe, type TlsProbeResult } from './mesh/tls-probe.js';

const CLIENT = 'spiffe://cluster.local/ns/a/sa/client';
const SERVER = 'spiffe://cluster.local/ns/b/sa/server';

const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
const issued = new Map<string, { keyPem: string; certChainPem: string }>();
for (const id of [CLIENT, SERVER]) {
  const { keyPem, certPem } = await ca.issueKeyAndCert(id);
  issued.set(id, { keyPem, certChainPem: certPem });
}
const creds = (id: string) => issued.get(id)!;
const trustBundle = new TrustBundle(ca.rootPem);

interface Served {
  server: HboneServer;
  port: number;
  /** The peer identity of each CONNECT the server accepted. */
  accepted: string[];
  /** The reason of each refusal the server made itself. */
  refused: string[];
}

/** A real HboneServer answering for `identities` (by SNI), each with the certificate `certFor` gives it. */
async function serve(t: Test, identities: string[] = [SERVER], certFor: (id: string) => { keyPem: string; certChainPem: string } = creds): Promise<Served> {
  const contexts = new SecureContextCache(trustBundle);
  const accepted: string[] = [];
  const refused: string[] = [];
  const server = new HboneServer({
    host: '127.0.0.1',
    port: 0,
    trustBundle,
    resolveSni: async (sni) => {
      const identity = identities.find((id) => sniForIdentity(id) === sni);
      return identity ? { identity, context: contexts.get(certFor(identity)) } : undefined;
    },
    onConnect: (stream: http2.ServerHttp2Stream, request) => {
      accepted.push(request.peerIdentity);
      stream.respond({ ':status': 200 });
      stream.end();
    },
    onRefused: (reason) => refused.push(reason),
  });
  await server.listen();
  t.teardown(() => server.close());
  return { server, port: server.address().port, accepted, refused };
}

/** A raw TLS client of CLIENT's against the server, asking for SERVER by SNI unless `options` say otherwise. */
function attempt(port: number, options: tls.ConnectionOptions): Promise<TlsProbeResult> {
  return tlsProbe({
    host: '127.0.0.1',
    port,
    servername: sniForIdentity(SERVER),
    ca: ca.rootPem,
    key: creds(CLIENT).keyPem,
    cert: creds(CLIENT).certChainPem,
    ...options,
  });
}

t.test('a session ticket never resumes: each connection is a full handshake with a certificate', async (t) => {
  const { port } = await serve(t);
  const first = await attempt(port, {});
  t.ok(first.received > 0, `the first connection is accepted (${first.error ?? 'no error'})`);
  t.equal(first.reused, false, 'the first connection is a full handshake');
  if (first.session === undefined) {
    t.pass('the server issued no ticket');
    return;
  }
  const second = await attempt(port, { session: first.session });
  t.equal(second.reused, false, 'a ticket offered again does not resume the session');
  t.ok(second.received > 0, `the full handshake is accepted (${second.error ?? 'no error'})`);

  // Resumption would skip the client certificate: a client with none must still be refused.
  const withoutCert = await attempt(port, { session: first.session, key: undefined, cert: undefined });
  t.equal(withoutCert.reused, false, 'no resumption without a certificate either');
  t.equal(withoutCert.received, 0, `a client without a certificate is refused (${withoutCert.error ?? 'no error event'})`);
});

t.test('a TLS 1.2 client is refused', async (t) => {
  const served = await serve(t);
  const result = await attempt(served.port, { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
  t.equal(result.secure, false, 'no handshake');
  t.match(result.error, /protocol version|wrong version|unsupported protocol/i);
  t.same(served.refused, ['tls_handshake_failed'], 'the server counts the refusal');
});

t.test('a client without SNI is refused', async (t) => {
  const served = await serve(t);
  // Node sends no SNI for an IP address host unless told to; an empty servername sends none either.
  const result = await attempt(served.port, { servername: '' });
  t.equal(result.received, 0, `the server sent nothing (${result.error ?? 'no error event'})`);
  t.equal(result.secure, false, 'no handshake');
  t.same(served.refused, ['tls_handshake_failed']);
  t.same(served.accepted, []);
});
