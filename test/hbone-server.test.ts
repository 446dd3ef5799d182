/**
 * The HBONE server's own limits, against the real HboneServer on loopback: a handshake that does not finish, more
 * connections than the cap (the listener's and one source's), idle connections, a client that falls silent, a client
 * whose root left the trust bundle; and one log line per refusal.
 */
import { once } from 'node:events';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import t from 'tap';
import { HBONE_REMOVED_ROOT_GRACE_MS, SecureContextCache, type HboneRefusal, type HboneSessionClose, type HboneSessionCloseDetail } from '../core/hbone/index.js';
import { CertificateAuthority, sniForIdentity, TrustBundle } from '../core/identity/index.js';
import { createLogger } from '../core/log/log.js';
import { FakeTime } from './mesh/fake-time.js';
import { CLIENT, echo, echoServer, meshPki, roundTripper, SERVER, silenceableRelay } from './mesh/hbone-fixtures.js';
import { LogCapture } from './mesh/loopback.js';

const pki = await meshPki([CLIENT, SERVER]);

/**
 * An mTLS HTTP/2 session to `port` as CLIENT, the way a peer agent opens one (without its pool), from `localAddress`
 * (loopback is all of 127.0.0.0/8, so each such address is another source).
 */
function session(port: number, localAddress = '127.0.0.1', onSocket: (socket: tls.TLSSocket) => void = () => {}): http2.ClientHttp2Session {
  const creds = pki.creds.get(CLIENT)!;
  return http2.connect(`https://127.0.0.1:${port}`, {
    createConnection: () => {
      const socket = tls.connect({
        socket: net.connect({ host: '127.0.0.1', port, localAddress }),
        servername: sniForIdentity(SERVER),
        ALPNProtocols: ['h2'],
        key: creds.keyPem,
        cert: creds.certChainPem,
        ca: pki.ca.rootPem,
        checkServerIdentity: () => undefined,
      });
      onSocket(socket);
      return socket;
    },
  });
}

/** Resolves on the emitter's 'close', whatever error came before it (events.once would reject on the error). */
function closed(emitter: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => emitter.once('close', () => resolve()));
}

/**
 * Opens a session that the server is to close at accept, before any TLS: resolves once it has closed and the
 * server has reported the refusal, with whether its handshake finished all the same.
 */
async function refusedAtAccept(port: number, refused: ReturnType<typeof refusals>, localAddress?: string): Promise<{ handshook: boolean }> {
  const refusal = refused.next();
  const s = session(port, localAddress);
  s.on('error', () => undefined);
  let handshook = false;
  s.once('connect', () => (handshook = true));
  await closed(s);
  await refusal;
  return { handshook };
}

/** Opens a CONNECT that the server holds open; resolves, once the server has it, with `released`: its close there. */
async function holdStream(client: http2.ClientHttp2Session, serverStream: Promise<http2.ServerHttp2Stream>): Promise<{ released: Promise<void> }> {
  const stream = client.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:9' }, { endStream: false });
  stream.on('error', () => undefined);
  const held = await serverStream;
  held.on('error', () => undefined);
  return { released: closed(held) };
}

/** Collects the server's refusals and resolves `next()` on the next one. */
function refusals() {
  const seen: Array<{ reason: HboneRefusal; remoteAddress: string | undefined; message: string }> = [];
  let notify = () => {};
  return {
    seen,
    onRefused: (reason: HboneRefusal, detail: { remoteAddress: string | undefined; message: string }) => {
      seen.push({ reason, ...detail });
      notify();
    },
    next: () => new Promise<void>((resolve) => (notify = resolve)),
  };
}

t.test('a TLS handshake that does not finish is ended at the handshake timeout', { timeout: 10_000 }, async (t) => {
  const refused = refusals();
  const server = await echoServer(pki, { handshakeTimeoutMs: 200, onRefused: refused.onRefused });
  t.teardown(() => server.close());
  const socket = net.connect(server.address().port, '127.0.0.1');
  socket.on('error', () => undefined);
  const refusal = refused.next();
  await once(socket, 'close');
  await refusal;
  t.match(refused.seen, [{ reason: 'tls_handshake_timeout', remoteAddress: '127.0.0.1' }], 'the connection that said nothing was closed and counted');
});

t.test('connections past the cap are refused; one that ends makes room', { timeout: 10_000 }, async (t) => {
  const refused = refusals();
  const server = await echoServer(pki, { maxConnections: 2, onRefused: refused.onRefused });
  const port = server.address().port;
  const open: http2.ClientHttp2Session[] = [];
  t.teardown(async () => {
    for (const s of open) s.destroy();
    await server.close();
  });
  for (let i = 0; i < 2; i++) {
    const s = session(port);
    open.push(s);
    await once(s, 'connect');
  }
  t.notOk((await refusedAtAccept(port, refused)).handshook, 'the third connection was closed before its handshake');
  t.match(refused.seen, [{ reason: 'too_many_connections', message: /maximum of 2 connections/ }]);

  const gone = once(open[0]!, 'close');
  open[0]!.destroy();
  await gone;
  const fourth = session(port);
  open.push(fourth);
  await once(fourth, 'connect');
  t.pass('once one has closed, a new connection is accepted');
});

t.test('past the per-source cap a source is refused while another still gets in; one that ends makes room', { timeout: 10_000 }, async (t) => {
  const refused = refusals();
  const serverSessions: http2.ServerHttp2Session[] = [];
  const server = await echoServer(pki, {
    maxConnectionsPerSource: 2,
    onRefused: refused.onRefused,
    onConnect: (stream) => {
      serverSessions.push(stream.session as http2.ServerHttp2Session);
      stream.respond({ ':status': 200 });
      stream.pipe(stream);
    },
  });
  const port = server.address().port;
  const open: http2.ClientHttp2Session[] = [];
  t.teardown(async () => {
    for (const s of open) s.destroy();
    await server.close();
  });
  const carries = (s: http2.ClientHttp2Session, text: string) => echo(s.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:9' }, { endStream: false }), text);
  for (let i = 0; i < 2; i++) {
    const s = session(port, '127.0.0.1');
    open.push(s);
    t.equal(await carries(s, `first ${i}`), `first ${i}`);
  }
  t.notOk((await refusedAtAccept(port, refused, '127.0.0.1')).handshook, "the source's third connection was closed before its handshake");

  const other = session(port, '127.0.0.2');
  open.push(other);
  t.equal(await carries(other, 'another source'), 'another source', 'a second source still gets in while the first is capped');
  t.match(refused.seen, [{ reason: 'too_many_connections_from_source', remoteAddress: '127.0.0.1', message: /127\.0\.0\.1 holds the listener's per-source maximum of 2 connections/ }]);
  t.equal(refused.seen.length, 1, 'refused once: the TLS socket left behind by the refusal is not a second (tls_handshake_failed)');

  // Its stream has ended, so the server closes the session when the client goes; then the slot is free.
  const gone = closed(serverSessions[0]!);
  open[0]!.destroy();
  await gone;
  const again = session(port, '127.0.0.1');
  open.push(again);
  t.equal(await carries(again, 'room again'), 'room again', 'once one of its connections has closed, the source gets in again');
});

t.test('idle connections: closed when they carry no stream, kept while the client answers PINGs', { timeout: 10_000 }, async (t) => {
  const server = await echoServer(pki, { idleTimeoutMs: 200, keepaliveTimeoutMs: 1000 });
  const port = server.address().port;
  const idle = session(port);
  const busy = session(port);
  t.teardown(async () => {
    idle.destroy();
    busy.destroy();
    await server.close();
  });
  await Promise.all([once(idle, 'connect'), once(busy, 'connect')]);
  const stream = busy.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:9' }, { endStream: false });
  await once(stream, 'response');

  await once(idle, 'goaway');
  await once(idle, 'close');
  t.pass('the connection without a stream was closed (GOAWAY) after the idle timeout');
  await once(busy, 'ping');
  await once(busy, 'ping');
  t.notOk(busy.closed || busy.destroyed, 'the one with a quiet stream was asked twice whether it lives, and kept');
  stream.end('still here');
  const [back] = (await once(stream.setEncoding('utf8'), 'data')) as [string];
  t.equal(back, 'still here', 'its stream still works');
});

t.test('a client that falls silent with a stream open is dropped when it does not answer a PING', { timeout: 10_000 }, async (t) => {
  const logs = new LogCapture();
  let onServerStream: (stream: http2.ServerHttp2Stream) => void = () => {};
  const serverStream = new Promise<http2.ServerHttp2Stream>((resolve) => (onServerStream = resolve));
  const server = await echoServer(pki, {
    idleTimeoutMs: 200,
    keepaliveTimeoutMs: 200,
    log: createLogger({ level: 'debug', destination: logs }),
    onConnect: (stream) => {
      stream.respond({ ':status': 200 });
      onServerStream(stream);
    },
  });
  const relay = await silenceableRelay(server.address().port);
  const client = session(relay.port);
  client.on('error', () => undefined);
  t.teardown(async () => {
    client.destroy();
    await relay.close();
    await server.close();
  });
  const { released } = await holdStream(client, serverStream);
  relay.blackhole();
  await released;
  t.pass('the server closed the stream of the silent client');
  const record = await logs.waitFor((r) => r.msg === 'HBONE connection closed' && r.reason === 'peer_unresponsive');
  t.match(record, { level: 40, remote: '127.0.0.1', detail: /no answer to a PING within 200 ms/ }, 'and said why, once');
});

t.test('a client that ends its connection with a stream open: the server closes the stream, not only at the idle check', { timeout: 10_000 }, async (t) => {
  let onServerStream: (stream: http2.ServerHttp2Stream) => void = () => {};
  const serverStream = new Promise<http2.ServerHttp2Stream>((resolve) => (onServerStream = resolve));
  // The idle check is far past the test's own timeout: only the client's FIN can close the stream in time.
  const server = await echoServer(pki, {
    idleTimeoutMs: 600_000,
    onConnect: (stream) => {
      stream.respond({ ':status': 200 });
      onServerStream(stream);
    },
  });
  let tlsSocket: tls.TLSSocket | undefined;
  const client = session(server.address().port, '127.0.0.1', (socket) => (tlsSocket = socket));
  client.on('error', () => undefined);
  t.teardown(async () => {
    client.destroy();
    await server.close();
  });
  const { released } = await holdStream(client, serverStream);
  // A FIN on the TCP connection, under the HTTP/2 session: the client can send no more frames.
  tlsSocket!.end();
  await released;
  t.pass('the server closed the stream of a client that ended its connection');
});

t.test('a refusal is logged once: by the server without a callee, else only by the callee', async (t) => {
  for (const withCallee of [false, true]) {
    const logs = new LogCapture();
    const refused = refusals();
    const server = await echoServer(pki, { log: createLogger({ level: 'debug', destination: logs }), ...(withCallee ? { onRefused: refused.onRefused } : {}) });
    const s = session(server.address().port);
    const stream = s.request({ ':method': 'GET', ':path': '/' });
    const [headers] = (await once(stream, 'response')) as [http2.IncomingHttpHeaders];
    t.equal(headers[':status'], 405);
    s.destroy();
    await server.close();
    const lines = logs.records.filter((r) => r.reason === 'method_not_allowed');
    if (withCallee) {
      t.same(lines, [], 'with a callee the server writes no line of its own');
      t.match(refused.seen, [{ reason: 'method_not_allowed' }], 'the callee gets the refusal to log and count');
    } else {
      t.match(lines, [{ level: 40, msg: 'HBONE connection refused', detail: /not CONNECT/ }], 'without one the server logs it, once');
    }
  }
});

t.test('a session whose root left the trust bundle: GOAWAY at once, its streams closed after the grace and not before', { timeout: 10_000 }, async (t) => {
  const bundle = new TrustBundle(pki.ca.rootPem);
  const contexts = new SecureContextCache(bundle);
  const nextRoot = (await CertificateAuthority.create({ trustDomain: 'cluster.local', commonName: 'Ambit Root CA 2' })).rootPem;
  const time = new FakeTime();
  const closes: Array<{ reason: HboneSessionClose } & HboneSessionCloseDetail> = [];
  const streams: http2.ServerHttp2Stream[] = [];
  const server = await echoServer(pki, {
    trustBundle: bundle,
    resolveSni: async (sni) => (sni === sniForIdentity(SERVER) ? { identity: SERVER, context: contexts.get(pki.creds.get(SERVER)!) } : undefined),
    setTimer: time.setTimer,
    onSessionClosed: (reason, detail) => closes.push({ reason, ...detail }),
    onConnect: (stream) => {
      streams.push(stream);
      stream.respond({ ':status': 200 });
      stream.pipe(stream);
    },
  });
  const client = session(server.address().port);
  client.on('error', () => undefined);
  t.teardown(async () => {
    client.destroy();
    await server.close();
  });
  const stream = client.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:9' }, { endStream: false });
  const roundTrip = roundTripper(stream);
  t.equal(await roundTrip('before'), 'before');

  const goaway = once(client, 'goaway');
  bundle.replace(nextRoot, 'the test');
  await goaway;
  t.pass('GOAWAY as soon as the root left');
  t.same(time.delays, [HBONE_REMOVED_ROOT_GRACE_MS], 'one deadline, of the default grace');
  t.equal(await roundTrip('in the grace'), 'in the grace', 'the open stream still carries bytes');

  time.advance(HBONE_REMOVED_ROOT_GRACE_MS - 1);
  t.equal(await roundTrip('a millisecond before'), 'a millisecond before', 'and still does a millisecond before the deadline');
  t.same(closes, [], 'nothing closed yet');

  const serverStreamClosed = closed(streams[0]!);
  const clientStreamClosed = closed(stream);
  time.advance(1);
  await Promise.all([serverStreamClosed, clientStreamClosed, closed(client)]);
  t.pass('at the deadline the session is destroyed and its stream closed on both ends');
  t.match(closes, [{ reason: 'trust_root_removed', remoteAddress: '127.0.0.1', peerIdentity: CLIENT, streams: 1, message: /chains to no root of the trust bundle/ }], 'counted and logged once');
  t.equal(time.pending, 0);
});

t.test('a root that comes back within the grace lifts the deadline', { timeout: 10_000 }, async (t) => {
  const bundle = new TrustBundle(pki.ca.rootPem);
  const contexts = new SecureContextCache(bundle);
  const nextRoot = (await CertificateAuthority.create({ trustDomain: 'cluster.local', commonName: 'Ambit Root CA 2' })).rootPem;
  const time = new FakeTime();
  const closes: HboneSessionClose[] = [];
  const server = await echoServer(pki, {
    trustBundle: bundle,
    resolveSni: async (sni) => (sni === sniForIdentity(SERVER) ? { identity: SERVER, context: contexts.get(pki.creds.get(SERVER)!) } : undefined),
    setTimer: time.setTimer,
    removedRootGraceMs: 5_000,
    onSessionClosed: (reason) => closes.push(reason),
  });
  const client = session(server.address().port);
  t.teardown(async () => {
    client.destroy();
    await server.close();
  });
  const stream = client.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:9' }, { endStream: false });
  await once(stream, 'response');
  const goaway = once(client, 'goaway');
  bundle.replace(nextRoot, 'the test');
  await goaway;
  t.same(time.delays, [5_000], 'the configured grace');
  bundle.replace(`${pki.ca.rootPem}${nextRoot}`, 'the test');
  t.equal(time.pending, 0, 'the deadline is cancelled once the client chains to a root again');
  time.advance(5_000);
  t.equal(await echo(stream, 'kept'), 'kept', 'its stream runs to its end');
  t.same(closes, []);
});
