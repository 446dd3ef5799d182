/**
 * The HBONE client's pool against a real HBONE server on loopback: sharing, the stream limit, idle close, identity,
 * and how it notices a dead peer (PING, the deadline on a CONNECT's answer, the maximum age of a connection).
 */
import { once } from 'node:events';
import type http2 from 'node:http2';
import t from 'tap';
import { HboneClient, HboneError, HboneServer, refuseStream } from '../core/hbone/index.js';
import { sniForIdentity } from '../core/identity/index.js';
import { createLogger } from '../core/log/log.js';
import { CLIENT, echo, echoServer, hboneClient, meshPki, OTHER, SERVER, silenceableRelay } from './mesh/hbone-fixtures.js';
import { LogCapture } from './mesh/loopback.js';

t.test('pooling', async (t) => {
  const { trustBundle, creds, contexts } = await meshPki([CLIENT, SERVER, OTHER]);
  const logs = new LogCapture();
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
    log: createLogger({ level: 'debug', destination: logs }),
  });
  t.teardown(async () => {
    client.close();
    await server.close();
  });
  const request = { sourceIdentity: CLIENT, destinationIdentity: SERVER, via: { host: '127.0.0.1', port }, authority: '127.0.0.1:9' };

  const streams = await Promise.all(Array.from({ length: 150 }, () => client.connect(request)));
  // The pool releases a stream's slot on its 'close': waiting for that event, not for time, says it is free again.
  const streamsClosed = Promise.all(streams.map((s) => once(s, 'close')));
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
  await streamsClosed;
  const again = await client.connect(request);
  t.equal(client.connectionCount(), 2, 'a new stream reuses a pooled connection');
  const idle = logs.window();
  const againClosed = once(again, 'close');
  again.destroy();
  await againClosed;
  // Both connections are idle now: each closes when its own idle timer expires.
  const idleClose = (r: Record<string, unknown>) => r.msg === 'HBONE connection closed' && r.reason === 'idle';
  await idle.waitFor(() => idle.filter(idleClose).length === 2);
  t.equal(client.connectionCount(), 0, 'idle connections are closed after the idle timeout');

  await t.rejects(client.connect({ ...request, destinationIdentity: OTHER }), { code: 'HBONE_CONNECT_FAILED', message: /presented identity .*sa\/server, expected .*sa\/other/ }, 'the client checks the server identity');
  await t.rejects(client.connect({ ...request, via: { host: '127.0.0.1', port: 1 } }), { code: 'HBONE_CONNECT_FAILED', message: /is the Ambit agent running/ }, 'a refused connection says what to check');
});

t.test('open: the first bytes travel before the answer; a refusal or an early close rejects `established`', async (t) => {
  const { trustBundle, creds, contexts } = await meshPki([CLIENT, SERVER]);
  /** What each stream's server side read before it answered. */
  const readBeforeAnswer = new Map<string, string>();
  let onUnanswered = () => {};
  const unansweredArrived = new Promise<void>((resolve) => (onUnanswered = resolve));
  const server = new HboneServer({
    host: '127.0.0.1',
    port: 0,
    trustBundle,
    resolveSni: async (sni) => (sni === sniForIdentity(SERVER) ? { identity: SERVER, context: contexts.get(creds.get(SERVER)!) } : undefined),
    onConnect: (stream: http2.ServerHttp2Stream, request) => {
      const authority = `${request.target.host}:${request.target.port}`;
      // Port 3 never answers; the others answer only once the client's first bytes are here.
      if (authority.endsWith(':3')) {
        onUnanswered();
        return;
      }
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
  await unansweredArrived;
  unanswered.stream.close();
  await t.rejects(unanswered.established, { code: 'HBONE_STREAM_CLOSED', reason: 'stream_closed' }, 'a stream closed before its answer rejects');
});

const pki = await meshPki([CLIENT, SERVER]);

t.test('keepalive: a connection whose peer goes silent is found dead by PING, its streams fail with the reason', { timeout: 10_000 }, async (t) => {
  const server = await echoServer(pki);
  const relay = await silenceableRelay(server.address().port);
  const logs = new LogCapture();
  const client = hboneClient(pki, { keepaliveIntervalMs: 50, keepaliveTimeoutMs: 200, log: createLogger({ level: 'debug', destination: logs }) });
  t.teardown(async () => {
    client.close();
    await relay.close();
    await server.close();
  });
  const request = { sourceIdentity: CLIENT, destinationIdentity: SERVER, via: { host: '127.0.0.1', port: relay.port }, authority: '127.0.0.1:9' };

  const stream = await client.connect(request);
  // The stream stays open and quiet; the client pings and the server answers, so the connection stays.
  await relay.fromServer(3);
  t.equal(client.connectionCount(), 1, 'a peer that answers PINGs keeps its connection');
  t.notOk(stream.destroyed, 'and its stream');

  const failed = once(stream, 'error');
  relay.blackhole();
  const [err] = (await failed) as [Error];
  t.equal(client.connectionCount(), 0, 'the dead connection has left the pool');
  t.ok(err instanceof HboneError, 'its stream failed with an HboneError');
  t.match(err, { code: 'HBONE_PEER_UNRESPONSIVE', reason: 'peer_unresponsive', message: /no answer to a PING within 200 ms; .*firewall blocks HBONE port/ }, 'that says why');
  const dead = await logs.waitFor((r) => r.msg === 'HBONE connection closed' && r.reason === 'peer_unresponsive');
  t.match(dead, { level: 40, peer: `127.0.0.1:${relay.port}`, detail: /no answer to a PING within 200 ms/ }, 'one warning names the peer and why');

  t.equal(await echo(await client.connect(request), 'again'), 'again', 'a new stream gets a fresh connection, which works');
  t.equal(client.connectionCount(), 1);
});

t.test('a CONNECT the peer does not answer fails at the deadline, with the reason and a hint', { timeout: 10_000 }, async (t) => {
  const server = await echoServer(pki);
  const client = hboneClient(pki, { responseTimeoutMs: 100 });
  t.teardown(async () => {
    client.close();
    await server.close();
  });
  const via = { host: '127.0.0.1', port: server.address().port };
  const { stream, established } = await client.open({ sourceIdentity: CLIENT, destinationIdentity: SERVER, via, authority: '127.0.0.1:3' });
  const streamClosed = once(stream, 'close');
  await t.rejects(
    established,
    { code: 'HBONE_RESPONSE_TIMEOUT', reason: 'response_timeout', status: 0, message: /no answer within 100 ms; .*NetworkPolicy or firewall blocks HBONE port/ },
    'the stream fails with the reason and what to check',
  );
  await streamClosed;
  t.pass('and the stream is closed (cancelled at the peer)');
  t.equal(await echo(await client.connect({ sourceIdentity: CLIENT, destinationIdentity: SERVER, via, authority: '127.0.0.1:9' }), 'ok'), 'ok', 'the connection still serves streams that are answered');
});

t.test('a connection past its maximum age takes no new streams and closes when its last stream ends', async (t) => {
  const server = await echoServer(pki);
  let now = 1_000_000;
  const client = hboneClient(pki, { maxSessionAgeMs: 60_000, now: () => now });
  t.teardown(async () => {
    client.close();
    await server.close();
  });
  const request = { sourceIdentity: CLIENT, destinationIdentity: SERVER, via: { host: '127.0.0.1', port: server.address().port }, authority: '127.0.0.1:9' };

  const old = await client.connect(request);
  now += 59_999;
  const young = await client.connect(request);
  t.equal(client.connectionCount(), 1, 'before its maximum age the connection takes new streams');
  now += 1;
  const newer = await client.connect(request);
  t.equal(client.connectionCount(), 2, 'at its maximum age it takes none: a new connection opens');
  t.equal(await echo(old, 'still'), 'still', 'the streams it has keep working');
  t.equal(client.connectionCount(), 2, 'it stays while a stream is open');
  t.equal(await echo(young, 'last'), 'last');
  t.equal(client.connectionCount(), 1, 'and closes when its last stream ends');
  t.equal(await echo(newer, 'new'), 'new');
  t.equal(client.connectionCount(), 1, 'a younger connection stays pooled when idle');
});
