/**
 * The HBONE client's side of a trust-bundle change, against the real HboneClient and HboneServer on loopback: a
 * pooled session whose server chains to no root left keeps its open streams for the grace, then is closed with
 * them; one whose server still chains to a root keeps them.
 */
import { X509Certificate } from 'node:crypto';
import type http2 from 'node:http2';
import { once } from 'node:events';
import t, { type Test } from 'tap';
import { HBONE_REMOVED_ROOT_GRACE_MS, SecureContextCache } from '../core/hbone/index.js';
import { CertificateAuthority, sniForIdentity, TrustBundle } from '../core/identity/index.js';
import { FakeTime } from './mesh/fake-time.js';
import { CLIENT, echoServer, hboneClient, meshPki, roundTripper, SERVER } from './mesh/hbone-fixtures.js';

const pki = await meshPki([CLIENT, SERVER]);
const otherRoot = new X509Certificate((await CertificateAuthority.create({ trustDomain: 'cluster.local', commonName: 'Ambit Root CA 2' })).rootPem);
const currentRoot = new X509Certificate(pki.ca.rootPem);

async function openStream(t: Test) {
  const time = new FakeTime();
  const server = await echoServer(pki);
  const client = hboneClient(pki, { setTimer: time.setTimer });
  t.teardown(async () => {
    client.close();
    await server.close();
  });
  const stream = await client.connect({
    sourceIdentity: CLIENT,
    destinationIdentity: SERVER,
    via: { host: '127.0.0.1', port: server.address().port },
    authority: '127.0.0.1:9',
  });
  const roundTrip = roundTripper(stream);
  return { time, client, stream, roundTrip };
}

t.test("a server that chains to no root left: its streams are closed after the grace and not before", async (t) => {
  const { time, client, stream, roundTrip } = await openStream(t);
  t.equal(await roundTrip('before'), 'before');
  client.retireSessions([otherRoot]);
  t.same(time.delays, [HBONE_REMOVED_ROOT_GRACE_MS], 'one deadline, of the grace');
  time.advance(HBONE_REMOVED_ROOT_GRACE_MS - 1);
  t.equal(await roundTrip('within the grace'), 'within the grace', 'the open stream still carries 1 ms before it');
  const closed = new Promise<void>((resolve) => (stream as http2.ClientHttp2Stream).once('close', () => resolve()));
  time.advance(1);
  await closed;
  t.ok(stream.destroyed, 'at the deadline the stream is closed');
});

t.test('a server that still chains to a root: no deadline, its streams carry on; a root back in time lifts it', async (t) => {
  const { time, client, roundTrip } = await openStream(t);
  client.retireSessions([currentRoot, otherRoot]);
  t.same(time.delays, [], 'no deadline');
  client.retireSessions([otherRoot]);
  t.equal(time.pending, 1, 'a deadline once the root is gone');
  client.retireSessions([currentRoot]);
  t.equal(time.pending, 0, 'lifted when the root comes back');
  time.advance(HBONE_REMOVED_ROOT_GRACE_MS);
  t.equal(await roundTrip('still'), 'still', 'the stream carries on');
});

t.test('a session the server sent GOAWAY, out of the pool with a stream still open, gets the deadline too', async (t) => {
  const time = new FakeTime();
  const bundle = new TrustBundle(pki.ca.rootPem);
  const contexts = new SecureContextCache(bundle);
  const server = await echoServer(pki, {
    trustBundle: bundle,
    resolveSni: async (sni) => (sni === sniForIdentity(SERVER) ? { identity: SERVER, context: contexts.get(pki.creds.get(SERVER)!) } : undefined),
    setTimer: new FakeTime().setTimer,
  });
  const client = hboneClient(pki, { setTimer: time.setTimer });
  t.teardown(async () => {
    client.close();
    await server.close();
  });
  const stream = await client.connect({ sourceIdentity: CLIENT, destinationIdentity: SERVER, via: { host: '127.0.0.1', port: server.address().port }, authority: '127.0.0.1:9' });
  const roundTrip = roundTripper(stream);
  t.equal(await roundTrip('before'), 'before');
  // The server's bundle loses the client's root: it sends GOAWAY and keeps the open stream for its own grace.
  const goaway = once(stream.session!, 'goaway');
  bundle.replace(otherRoot.toString(), 'the test');
  await goaway;
  t.equal(await roundTrip('after goaway'), 'after goaway', 'the stream still carries');
  client.retireSessions([otherRoot]);
  t.equal(time.pending, 1, 'the session out of the pool has its deadline');
  const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
  time.advance(HBONE_REMOVED_ROOT_GRACE_MS);
  await closed;
  t.ok(stream.destroyed, 'and its stream is closed at it');
});
