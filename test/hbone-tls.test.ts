/**
 * TLS at the two real HBONE ends, HboneServer and HboneClient, on loopback: what each end refuses (resumption,
 * TLS 1.2, a missing SNI, a certificate without the expected SPIFFE ID) and how the server picks its certificate.
 */
import type http2 from 'node:http2';
import type tls from 'node:tls';
import t, { type Test } from 'tap';
import forge from 'node-forge';
import { HboneClient, HboneServer, SecureContextCache, type WorkloadCredentials } from '../core/hbone/index.js';
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
const creds = (id: string): WorkloadCredentials => issued.get(id)!;
const trustBundle = new TrustBundle(ca.rootPem);

interface Served {
  server: HboneServer;
  port: number;
  /** The peer identity of each CONNECT the server accepted. */
  accepted: string[];
  /** The reason of each refusal the server made itself. */
  refused: string[];
  /** What each refusal said (OpenSSL's verification error for a refused certificate). */
  details: string[];
}

/** A real HboneServer answering for `identities` (by SNI), each with the certificate `certFor` gives it. */
async function serve(t: Test, identities: string[] = [SERVER], certFor: (id: string) => WorkloadCredentials = creds): Promise<Served> {
  const contexts = new SecureContextCache(trustBundle);
  const accepted: string[] = [];
  const refused: string[] = [];
  const details: string[] = [];
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
    onRefused: (reason, detail) => {
      refused.push(reason);
      details.push(detail.message);
    },
  });
  await server.listen();
  t.teardown(() => server.close());
  return { server, port: server.address().port, accepted, refused, details };
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

const HOUR_MS = 3600_000;
const OTHER = 'spiffe://cluster.local/ns/b/sa/other';
const otherCa = await CertificateAuthority.create({ trustDomain: 'cluster.local' });

async function issue(from: CertificateAuthority, id: string, options: { notBefore?: Date; notAfter?: Date } = {}): Promise<WorkloadCredentials> {
  const { keyPem, certPem } = await from.issueKeyAndCert(id, options);
  return { keyPem, certChainPem: certPem };
}

/**
 * A leaf of the mesh CA's that names no SPIFFE ID (a DNS name instead): the CA itself never signs one, so it is made
 * with the CA's key, as a misconfigured or foreign issuer of the same root would.
 */
async function leafWithoutSpiffeId(): Promise<WorkloadCredentials> {
  const { mkdtemp, readFile, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-hbone-tls-'));
  try {
    await ca.save(dir);
    const caKey = forge.pki.privateKeyFromPem(await readFile(path.join(dir, 'ca.key'), 'utf8'));
    const keys = forge.pki.rsa.generateKeyPair(2048);
    const cert = forge.pki.createCertificate();
    cert.publicKey = keys.publicKey;
    cert.serialNumber = '01';
    cert.validity.notBefore = new Date(Date.now() - HOUR_MS);
    cert.validity.notAfter = new Date(Date.now() + HOUR_MS);
    cert.setSubject([{ shortName: 'CN', value: 'not-a-workload' }]);
    cert.setIssuer(forge.pki.certificateFromPem(ca.rootPem).subject.attributes);
    cert.setExtensions([
      { name: 'basicConstraints', cA: false },
      { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 2, value: 'not-a-workload.example' }] },
    ]);
    cert.sign(caKey, forge.md.sha256.create());
    return { keyPem: forge.pki.privateKeyToPem(keys.privateKey), certChainPem: forge.pki.certificateToPem(cert) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const expiredValidity = { notBefore: new Date(Date.now() - 48 * HOUR_MS), notAfter: new Date(Date.now() - HOUR_MS) };
const otherLeaf = await issue(ca, OTHER);
const foreignLeaves = { server: await issue(otherCa, SERVER), client: await issue(otherCa, CLIENT) };
const expiredLeaves = { server: await issue(ca, SERVER, expiredValidity), client: await issue(ca, CLIENT, expiredValidity) };

/**
 * How a client whose certificate the server refused sees it: in TLS 1.3 the client's handshake is done before the
 * server has checked the certificate, so the refusal (an alert) ends the session while the first CONNECT is on it.
 */
const CLIENT_REFUSED_IN_TLS = { status: 0, code: /^HBONE_(CONNECT_FAILED|STREAM_CLOSED|STREAM_FAILED)$/ };

/** A real HboneClient whose source identity CLIENT holds `clientCreds`. */
function clientWith(t: Test, clientCreds: WorkloadCredentials = creds(CLIENT)): HboneClient {
  const contexts = new SecureContextCache(trustBundle);
  const client = new HboneClient({ contextFor: async () => contexts.get(clientCreds), sniFor: sniForIdentity });
  t.teardown(() => client.close());
  return client;
}

function connectRequest(port: number, destinationIdentity = SERVER) {
  return { sourceIdentity: CLIENT, destinationIdentity, via: { host: '127.0.0.1', port }, authority: '127.0.0.1:9' };
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

t.test('HboneClient and HboneServer accept each other; the server sees the client\'s identity', async (t) => {
  const served = await serve(t);
  const stream = await clientWith(t).connect(connectRequest(served.port));
  stream.destroy();
  t.same(served.accepted, [CLIENT]);
  t.same(served.refused, []);
});

t.test('the server answers each SNI with that identity\'s certificate', async (t) => {
  const served = await serve(t, [SERVER, OTHER], (id) => (id === OTHER ? otherLeaf : creds(id)));
  for (const id of [SERVER, OTHER]) {
    const result = await attempt(served.port, { servername: sniForIdentity(id) });
    t.equal(result.peerCertificate?.subjectAltName, `URI:${id}`, `SNI for ${id} gets its certificate`);
  }
  const client = clientWith(t);
  (await client.connect(connectRequest(served.port, OTHER))).destroy();
  (await client.connect(connectRequest(served.port, SERVER))).destroy();
  t.same(served.accepted, [CLIENT, CLIENT], 'HboneClient reaches both identities through one listener');
});

t.test('HboneClient refuses a server whose URI SAN is not the identity it asked for', async (t) => {
  // A server that answers OTHER's SNI with SERVER's certificate: the one mistake SNI routing could make.
  const served = await serve(t, [SERVER, OTHER], () => creds(SERVER));
  await t.rejects(clientWith(t).connect(connectRequest(served.port, OTHER)), {
    code: 'HBONE_CONNECT_FAILED',
    message: /HBONE_PEER_IDENTITY.*presented identity spiffe:\/\/cluster\.local\/ns\/b\/sa\/server, expected spiffe:\/\/cluster\.local\/ns\/b\/sa\/other/,
  });
  t.same(served.accepted, []);
});

t.test('a certificate without a SPIFFE ID is refused at either end', async (t) => {
  const anonymous = await leafWithoutSpiffeId();
  const asServer = await serve(t, [SERVER], () => anonymous);
  await t.rejects(clientWith(t).connect(connectRequest(asServer.port)), { code: 'HBONE_CONNECT_FAILED', message: /presented identity \(none\), expected .*sa\/server/ }, 'the client refuses such a server');

  const served = await serve(t);
  await t.rejects(clientWith(t, anonymous).connect(connectRequest(served.port)), { code: 'HBONE_REFUSED', status: 401, reason: 'no_peer_identity' }, 'the server refuses such a client');
  t.same(served.refused, ['no_peer_identity']);
  t.same(served.accepted, []);
});

t.test('a certificate from another CA is refused at either end', async (t) => {
  const foreignServer = await serve(t, [SERVER], () => foreignLeaves.server);
  await t.rejects(clientWith(t).connect(connectRequest(foreignServer.port)), { code: 'HBONE_CONNECT_FAILED', message: /UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT|unable to verify/i });
  t.same(foreignServer.accepted, []);

  const served = await serve(t);
  await t.rejects(clientWith(t, foreignLeaves.client).connect(connectRequest(served.port)), CLIENT_REFUSED_IN_TLS);
  t.same(served.refused, ['tls_handshake_failed']);
  t.match(served.details[0], /client certificate refused: .*(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT)/);
  t.same(served.accepted, []);
});

t.test('an expired certificate is refused at either end', async (t) => {
  const expiredServer = await serve(t, [SERVER], () => expiredLeaves.server);
  await t.rejects(clientWith(t).connect(connectRequest(expiredServer.port)), { code: 'HBONE_CONNECT_FAILED', message: /CERT_HAS_EXPIRED|certificate has expired/ });

  const served = await serve(t);
  await t.rejects(clientWith(t, expiredLeaves.client).connect(connectRequest(served.port)), CLIENT_REFUSED_IN_TLS);
  t.same(served.refused, ['tls_handshake_failed']);
  t.match(served.details[0], /CERT_HAS_EXPIRED/);
  t.same(served.accepted, []);
});
