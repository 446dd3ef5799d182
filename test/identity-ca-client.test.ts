/** The agent's end of the controller's CA (core/identity/ca-protocol.ts), against a real HTTP/2 TLS server. */
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import {
  CA_MAX_RESPONSE_BYTES,
  CA_PATH,
  CaRefusedError,
  CertificateAuthority,
  generateKeyAndCsr,
  RemoteCaIssuer,
  TrustBundle,
  type RemoteCaIssuerOptions,
} from '../core/identity/index.js';
import { createLogger } from '../core/log/index.js';
import { LogCapture } from './mesh/loopback.js';

const CONTROLLER = 'spiffe://cluster.local/ns/ambit-system/sa/ambit-controller';
const ID = 'spiffe://cluster.local/ns/shop/sa/web';
const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
const otherCa = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
const { csrPem } = await generateKeyAndCsr(ID);

interface Received {
  method: string | undefined;
  path: string | undefined;
  authorization: string | undefined;
  contentType: string | undefined;
  body: string;
}

type Respond = (stream: http2.ServerHttp2Stream, request: Received) => void | Promise<void>;

function json(stream: http2.ServerHttp2Stream, status: number, body: unknown): void {
  stream.respond({ ':status': status, 'content-type': 'application/json' });
  stream.end(JSON.stringify(body));
}

/** Signs as the controller would, without its checks: what the client does with the answer is under test. */
const signs: Respond = async (stream, request) => {
  const { csr } = JSON.parse(request.body) as { csr: string };
  json(stream, 200, { certChainPem: await ca.sign(csr, { spiffeId: ID }) });
};

/** An HTTP/2 TLS 1.3 server with a certificate for `identity` from `signer`, answering each request with `respond`. */
async function caServer(t: Test, options: { identity?: string; signer?: CertificateAuthority; respond?: Respond } = {}) {
  const { keyPem, certPem } = await (options.signer ?? ca).issueKeyAndCert(options.identity ?? CONTROLLER);
  const received: Received[] = [];
  const server = http2.createSecureServer({ key: keyPem, cert: certPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] });
  const sessions = new Set<http2.ServerHttp2Session>();
  let handshakes = 0;
  server.on('secureConnection', () => {
    handshakes += 1;
  });
  server.on('session', (session) => {
    sessions.add(session);
    session.on('close', () => sessions.delete(session));
  });
  const state = { respond: options.respond ?? signs };
  server.on('stream', (stream, headers) => {
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('end', () => {
      const request: Received = {
        method: headers[':method'],
        path: headers[':path'],
        authorization: headers.authorization,
        contentType: headers['content-type'],
        body: Buffer.concat(chunks).toString('utf8'),
      };
      received.push(request);
      void Promise.resolve(state.respond(stream, request)).catch((err: unknown) => stream.destroy(err as Error));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(async () => {
    for (const session of sessions) session.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    received,
    handshakes: () => handshakes,
    set respond(respond: Respond) {
      state.respond = respond;
    },
  };
}

async function tokenFile(t: Test, token: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-ca-token-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'token');
  await writeFile(file, token);
  return file;
}

function client(t: Test, options: Partial<RemoteCaIssuerOptions> & { url: string; tokenFile: string }): RemoteCaIssuer {
  const issuer = new RemoteCaIssuer({ controllerIdentity: CONTROLLER, trustBundle: new TrustBundle(ca.rootPem), ...options });
  t.teardown(() => issuer.close());
  return issuer;
}

t.test('signs over one session, with the token read again at each request', async (t) => {
  const server = await caServer(t);
  const token = await tokenFile(t, 'token-one\n');
  const logs = new LogCapture();
  const issuer = client(t, { url: server.url, tokenFile: token, log: createLogger({ level: 'trace', destination: logs }) });

  const { certChainPem } = await issuer.sign(csrPem, ID);
  const leaf = new X509Certificate(certChainPem);
  t.equal(leaf.subjectAltName, `URI:${ID}`, 'the answer is the leaf the CA signed');
  t.ok(leaf.checkIssued(new X509Certificate(ca.rootPem)));
  t.match(server.received, [{ method: 'POST', path: CA_PATH, authorization: 'Bearer token-one', contentType: 'application/json' }]);
  t.same(JSON.parse(server.received[0]!.body), { csr: csrPem }, 'the body is the CSR, as the protocol has it');

  await writeFile(token, 'token-two');
  await issuer.sign(csrPem, ID);
  t.equal(server.received[1]?.authorization, 'Bearer token-two', 'a rotated token is the one sent next');
  t.equal(server.handshakes(), 1, 'both requests on one session');
  t.notOk(logs.records.some((record) => JSON.stringify(record).includes('token-')), 'the token is never logged');
});

t.test('a missing or empty token fails before anything is sent', async (t) => {
  const server = await caServer(t);
  const token = await tokenFile(t, ' \n');
  await t.rejects(client(t, { url: server.url, tokenFile: token }).sign(csrPem, ID), { code: 'CA_NO_TOKEN', message: `the CA token ${token} is empty; it must hold the projected service-account token of audience ambit-ca` });
  const absent = path.join(path.dirname(token), 'absent');
  await t.rejects(client(t, { url: server.url, tokenFile: absent }).sign(csrPem, ID), { code: 'CA_NO_TOKEN', message: new RegExp(`cannot read the CA token ${absent}: .*ENOENT`) });
  t.equal(server.received.length, 0);
});

t.test('a refusal is CA_REFUSED with the status, the reason and the message of the controller', async (t) => {
  const server = await caServer(t, { respond: (stream) => json(stream, 403, { reason: 'identity_not_on_node', message: 'no pod with service account shop/web runs on node node1' }) });
  const issuer = client(t, { url: server.url, tokenFile: await tokenFile(t, 'token') });
  const err = await issuer.sign(csrPem, ID).catch((error: unknown) => error);
  t.ok(err instanceof CaRefusedError);
  t.match(err, {
    code: 'CA_REFUSED',
    status: 403,
    reason: 'identity_not_on_node',
    message: 'the controller refused spiffe://cluster.local/ns/shop/sa/web: 403 identity_not_on_node: no pod with service account shop/web runs on node node1',
  });

  server.respond = (stream) => {
    stream.respond({ ':status': 502, 'content-type': 'text/html' });
    stream.end('<html>bad gateway</html>');
  };
  await t.rejects(issuer.sign(csrPem, ID), { code: 'CA_REFUSED', status: 502, reason: 'unknown', message: /502 unknown: the answer is not the CA's refusal: "<html>bad gateway<\/html>"/ }, 'an answer outside the protocol is quoted');
  server.respond = (stream) => json(stream, 200, { certificate: 'x' });
  await t.rejects(issuer.sign(csrPem, ID), { code: 'CA_BAD_ANSWER', message: /answered 200 for .* without a certChainPem/ });
});

t.test('a server that is not the controller is refused', async (t) => {
  const impostor = await caServer(t, { identity: 'spiffe://cluster.local/ns/shop/sa/impostor' });
  const issuer = client(t, { url: impostor.url, tokenFile: await tokenFile(t, 'secret-token') });
  await t.rejects(issuer.sign(csrPem, ID), {
    code: 'CA_WRONG_PEER',
    message: new RegExp(`^the server at ${impostor.url} is not the controller: its certificate carries URI:spiffe://cluster.local/ns/shop/sa/impostor, not the URI ${CONTROLLER}`),
  });
  t.equal(impostor.received.length, 0, 'the token and the CSR never reach it');

  const untrusted = await caServer(t, { signer: otherCa });
  const toUntrusted = client(t, { url: untrusted.url, tokenFile: await tokenFile(t, 'secret-token') });
  await t.rejects(toUntrusted.sign(csrPem, ID), { code: 'CA_UNAVAILABLE', message: new RegExp(`^cannot ask the controller at ${untrusted.url} to sign ${ID}: .*certificate`) }, 'nor one outside the trust bundle');
  t.equal(untrusted.received.length, 0);
});

t.test('an oversized answer is refused, and the session serves the next request', async (t) => {
  const server = await caServer(t, { respond: (stream) => json(stream, 200, { certChainPem: 'x'.repeat(CA_MAX_RESPONSE_BYTES) }) });
  const issuer = client(t, { url: server.url, tokenFile: await tokenFile(t, 'token') });
  await t.rejects(issuer.sign(csrPem, ID), { code: 'CA_BAD_ANSWER', message: new RegExp(`with more than ${CA_MAX_RESPONSE_BYTES} bytes`) });
  server.respond = signs;
  t.match(await issuer.sign(csrPem, ID), { certChainPem: /BEGIN CERTIFICATE/ });
  t.equal(server.handshakes(), 1);
});

t.test('the session follows the trust bundle: new roots are the next request\'s', async (t) => {
  const server = await caServer(t);
  const bundle = new TrustBundle(ca.rootPem);
  const issuer = client(t, { url: server.url, tokenFile: await tokenFile(t, 'token'), trustBundle: bundle });
  await issuer.sign(csrPem, ID);

  bundle.replace(otherCa.rootPem, 'the next bundle');
  await t.rejects(issuer.sign(csrPem, ID), { code: 'CA_UNAVAILABLE', message: /certificate/ }, 'the session verified against the old roots is not reused');
  bundle.replace(otherCa.rootPem + ca.rootPem, 'the bundle after');
  t.match(await issuer.sign(csrPem, ID), { certChainPem: /BEGIN CERTIFICATE/ });
  t.equal(server.received.length, 2, 'only the requests to a trusted controller were sent');
});

t.test('no answer is CA_UNAVAILABLE: a closed port, a request left unanswered', async (t) => {
  const server = await caServer(t, { respond: () => undefined });
  const token = await tokenFile(t, 'token');
  const issuer = client(t, { url: server.url, tokenFile: token, timeoutMs: 200 });
  await t.rejects(issuer.sign(csrPem, ID), { code: 'CA_UNAVAILABLE', message: `the controller at ${server.url} did not answer the CSR for ${ID} within 0.2 s` });

  const closed = http2.createSecureServer({});
  closed.listen(0, '127.0.0.1');
  await once(closed, 'listening');
  const closedUrl = `https://127.0.0.1:${(closed.address() as AddressInfo).port}`;
  await new Promise((resolve) => closed.close(resolve));
  await t.rejects(client(t, { url: closedUrl, tokenFile: token }).sign(csrPem, ID), { code: 'CA_UNAVAILABLE', message: new RegExp(`^cannot ask the controller at ${closedUrl} to sign ${ID}: connect ECONNREFUSED`) });
});

t.test('close() ends the session and stops following the trust bundle', async (t) => {
  const server = await caServer(t);
  const bundle = new TrustBundle(ca.rootPem);
  const issuer = client(t, { url: server.url, tokenFile: await tokenFile(t, 'token'), trustBundle: bundle });
  await issuer.sign(csrPem, ID);
  t.equal(bundle.listenerCount('change'), 1);
  issuer.close();
  t.equal(bundle.listenerCount('change'), 0);
  await t.rejects(issuer.sign(csrPem, ID), { code: 'CA_CLIENT_CLOSED' });
  t.throws(() => new RemoteCaIssuer({ url: server.url, controllerIdentity: CONTROLLER, trustBundle: bundle, tokenFile: '/t', timeoutMs: 0 }), { code: 'BAD_TIMEOUT' });
});
