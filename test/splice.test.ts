/**
 * The agent's splice on real loopback sockets: bulk chunks coalesced into one writev, half-close, abort, a bare
 * destroy; and Agent.close(), which destroys the sockets it accepted, settling the connections it carries.
 */
import net from 'node:net';
import { Duplex, PassThrough } from 'node:stream';
import t from 'tap';
import { splice } from '../agent/proxy.js';
import { pod, startLoopbackMesh } from './mesh/loopback.js';

/** A connected pair of loopback sockets, both half-open capable; closed at teardown. */
async function socketPair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const client = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
  await new Promise((resolve) => client.once('connect', resolve));
  const peer = await accepted;
  server.close();
  t.teardown(() => {
    client.destroy();
    peer.destroy();
  });
  return [client, peer];
}

function collect(stream: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve) => stream.once('end', () => resolve(Buffer.concat(chunks))));
}

t.test('the pieces of HTTP/2 frames that arrive in one turn go to the socket in one writev', async (t) => {
  const [out, peer] = await socketPair();
  // Count how the socket's writes reach libuv: one `_writev` with many chunks is one syscall.
  const batches: number[] = [];
  const writev = out._writev!.bind(out);
  out._writev = (chunks, cb) => {
    batches.push(chunks.length);
    writev(chunks, cb);
  };
  const write = out._write.bind(out);
  out._write = (chunk, encoding, cb) => {
    batches.push(1);
    write(chunk, encoding, cb);
  };
  const src = new PassThrough({ allowHalfOpen: true });
  const done = splice(src, out);
  const received = collect(peer);
  // A 16 KiB DATA frame straddles two TLS records: HTTP/2 hands it over as two uneven pieces, neither 16 KiB.
  const pieces = [16375, 9, 16375, 9, 16375, 9, 16375, 9].map((n, i) => Buffer.alloc(n, i));
  for (const piece of pieces) src.write(piece);
  await new Promise((resolve) => setImmediate(resolve));
  src.end();
  peer.end();
  const got = await received;
  t.equal(got.length, pieces.reduce((s, p) => s + p.length, 0), 'every byte arrives');
  t.ok(got.equals(Buffer.concat(pieces)), 'in order');
  t.equal(await done, undefined, 'no error');
  t.ok(batches.length <= 2, `the pieces were written in at most two syscalls (${batches.join(', ')} chunks per write)`);
});

t.test('a small chunk is written at once, not held for coalescing', async (t) => {
  const [out, peer] = await socketPair();
  const src = new PassThrough({ allowHalfOpen: true });
  void splice(src, out);
  src.write(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
  t.equal(out.writableLength, 0, 'nothing waits in the socket buffer after the write');
  const first = await new Promise<Buffer>((resolve) => peer.once('data', resolve));
  t.equal(first.toString(), 'GET / HTTP/1.1\r\n\r\n');
  const gone = howItEnds(peer);
  src.destroy();
  t.equal(await gone, 'ECONNRESET', 'a source destroyed before its end resets the socket');
});

t.test('half-close: one side ends, the other direction keeps flowing', async (t) => {
  const [a1, a2] = await socketPair();
  const [b1, b2] = await socketPair();
  const done = splice(a2, b1);
  const atB = collect(b2);
  a1.end('request');
  t.equal((await atB).toString(), 'request', 'the end reached the far side as a FIN');
  const atA = collect(a1);
  b2.end('response after the client half-closed');
  t.equal((await atA).toString(), 'response after the client half-closed');
  t.equal(await done, undefined);
});

t.test('an abort on one side resets the other', async (t) => {
  const [a1, a2] = await socketPair();
  const [b1, b2] = await socketPair();
  const done = splice(a2, b1);
  const reset = new Promise<string | undefined>((resolve) => b2.once('error', (err: NodeJS.ErrnoException) => resolve(err.code)));
  b2.on('close', () => undefined);
  a1.resetAndDestroy();
  t.equal(await reset, 'ECONNRESET', 'the far side sees a reset, not a clean end');
  t.type(await done, Error, 'the splice reports the error');
});

/** Resolves with `promise`, or rejects naming `what` if it has not settled within `ms`: a bound on a hang, not a wait. */
function settlesWithin<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not settled within ${ms} ms`)), ms);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

/** Resolves with how a socket's peer saw it go: 'end' (FIN) or the error code (a reset). */
function howItEnds(socket: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    socket.on('data', () => undefined);
    socket.once('end', () => resolve('end'));
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

t.test('a bare destroy() of one side (a close without an end) aborts the other, and the splice settles', async (t) => {
  const [a1, a2] = await socketPair();
  const [b1, b2] = await socketPair();
  const done = splice(a2, b1);
  a1.write('in flight');
  await new Promise((resolve) => b2.once('data', resolve));
  const far = howItEnds(b2);
  // What Agent.close() does to the sockets it accepted: no error, no end, just gone.
  a2.destroy();
  t.equal(await settlesWithin(far, 3000, 'the far side is told'), 'ECONNRESET', 'the far side sees a reset: its stream did not end, it was cut');
  const error = await settlesWithin(done, 3000, 'the splice');
  t.match(error, { code: 'STREAM_CLOSED_EARLY' }, 'and reports why');
});

t.test('an abort that comes after the end was passed on still closes the socket, and the splice settles', async (t) => {
  const [a1, a2] = await socketPair();
  // the other side as an HTTP/2 stream behaves: END_STREAM, then RST_STREAM (a destination that revokes it)
  const stream = new Duplex({
    read() {},
    write(_chunk, _encoding, callback) {
      callback();
    },
  });
  const done = splice(a2, stream);
  const atA = collect(a1);
  const closed = new Promise<void>((resolve) => a2.once('close', () => resolve()));
  // the reset comes in the same read as the end: the socket's shutdown is still in flight when it is aborted
  stream.once('end', () => stream.destroy(new Error('stream reset by peer')));
  stream.push('last words');
  stream.push(null);
  t.equal((await atA).toString(), 'last words', 'the end reached the socket: its FIN went out');
  await settlesWithin(closed, 3000, 'the ended socket closes');
  t.pass('the socket whose FIN went out is closed, not left open (libuv refuses to reset a shut-down socket)');
  t.match(await settlesWithin(done, 3000, 'the splice'), { message: 'stream reset by peer' }, 'the splice settles with the reset');
});

t.test('a side that closes after both its directions ended leaves the other to finish cleanly', async (t) => {
  const [a1, a2] = await socketPair();
  const [b1, b2] = await socketPair();
  const done = splice(a2, b1);
  const atA = collect(a1);
  const atB = collect(b2);
  a1.end('request');
  t.equal((await atB).toString(), 'request');
  b2.end('response');
  t.equal((await atA).toString(), 'response');
  a1.destroy();
  t.equal(await settlesWithin(done, 3000, 'the splice'), undefined, 'a close after a complete exchange is no error');
});

t.test('Agent.close() settles the connections it carries: each is reported closed, and the pod side is cut', async (t) => {
  const mesh = await startLoopbackMesh();
  t.teardown(() => mesh.close());
  const socket = await mesh.connect('a', { host: pod('l').ip, port: mesh.appPort });
  const client = howItEnds(socket);
  socket.write('held open');
  await new Promise((resolve) => socket.once('data', resolve));
  await mesh.agents.node1.close();
  await client;
  // Both records of the same-node connection (source and destination) are written when its splice settles.
  const records = await Promise.all(
    ['outbound', 'inbound'].map((direction) =>
      mesh.logs.node1.waitFor((r) => r.msg === 'access' && r.path === 'local' && r.direction === direction),
    ),
  );
  for (const record of records) t.match(record, { outcome: 'error', bytes_received: 9, bytes_sent: 9 }, `the ${String(record.direction)} record says it was cut`);
});
