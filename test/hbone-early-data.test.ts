/**
 * The bytes a destination agent holds before its 200 (a client's first bytes, sent right behind the CONNECT) are
 * capped: HBONE_EARLY_DATA_STREAM_BYTES a stream, EARLY_DATA_AGENT_BYTES an agent. A stream past its cap, or one
 * that would take the agent past its own, is refused and counted; the source agent never sends more than the cap
 * before the answer, so a large first write still goes through whole. Two real agents on loopback (no root); the
 * pod is one that does not accept yet (its listen queue is full), so the destination holds while its connect waits.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import t from 'tap';
import { EARLY_DATA_AGENT_BYTES } from '../agent/early-data.js';
import { HBONE_EARLY_DATA_STREAM_BYTES, REASON_HEADER } from '../core/hbone/index.js';
import { metricValue } from '../testbed/index.js';
import { within } from './mesh/hold.js';
import { exchange, hboneSession, pod, startLoopbackMesh, type LoopbackMesh } from './mesh/loopback.js';
import { needsTools } from './prerequisites.js';

const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';
const SERVER = 'spiffe://cluster.local/ns/demo/sa/server';

/**
 * A pod application that listens with a queue of one and accepts nothing until it reads a line on stdin; then it
 * echoes every connection (and half-closes after its client did). The first line it prints is its port.
 */
const SLOW_POD = `
import socket, sys, threading
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(0)
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
def echo(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
`;

const unavailable = needsTools(['python3'], 'the pod that does not accept yet');

t.test('early data before the 200 is capped, refused past the cap, and counted', { skip: unavailable }, async (t) => {
  const mesh: LoopbackMesh = await startLoopbackMesh();
  t.teardown(() => mesh.close());
  const c = pod('c');
  const slow = spawn('python3', ['-c', SLOW_POD, c.ip], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => {
    slow.kill('SIGKILL');
  });
  const slowPort = await new Promise<number>((resolve, reject) => {
    slow.stdout.setEncoding('utf8');
    slow.stdout.once('data', (line: string) => resolve(Number(line.trim())));
    slow.once('exit', (code) => reject(new Error(`the slow pod exited (${code})`)));
  });
  // The one connection its queue takes: every connect after it waits (its SYNs are dropped) until the pod accepts.
  const filler = net.connect({ host: c.ip, port: slowPort });
  filler.on('error', () => undefined);
  t.teardown(() => filler.destroy());
  await new Promise((resolve) => filler.once('connect', resolve));

  const node2 = mesh.agents.node2;
  const metrics = async () => node2.registry.metrics();
  const refused = async (reason: string) => metricValue(await metrics(), 'ambit_connections_refused_total', { direction: 'hbone', reason });
  const held = async () => metricValue(await metrics(), 'ambit_hbone_early_data_bytes');
  const creds = await mesh.ca.issueKeyAndCert(CLIENT);
  const sessions: http2.ClientHttp2Session[] = [];
  t.teardown(() => sessions.forEach((s) => s.destroy()));
  /** A raw mTLS HTTP/2 session to node2's 15008, as a source agent that does not keep to the cap would open it. */
  const session = () =>
    new Promise<http2.ClientHttp2Session>((resolve, reject) => {
      const s = hboneSession(mesh, creds, SERVER);
      sessions.push(s);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
  /** A CONNECT to the slow pod with `bytes` of data right behind it; resolves with the answer, if one comes. */
  const connectWith = (s: http2.ClientHttp2Session, bytes: number) => {
    const stream = s.request({ ':method': 'CONNECT', ':authority': `${c.ip}:${slowPort}` }, { endStream: false });
    stream.on('error', () => undefined);
    stream.write(Buffer.alloc(bytes, 1));
    const answer = new Promise<{ status: number; reason: string | undefined }>((resolve) => {
      stream.once('response', (h) => resolve({ status: Number(h[':status']), reason: h[REASON_HEADER] as string | undefined }));
    });
    return { stream, answer };
  };

  t.test('a stream that sends more than its cap before the 200 is refused at once', async (t) => {
    const s = await session();
    const started = Date.now();
    const { answer } = connectWith(s, HBONE_EARLY_DATA_STREAM_BYTES + 1);
    t.match(await answer, { status: 413, reason: 'early_data_limit' }, `refused, ${Date.now() - started} ms after the CONNECT (the pod's connect is still waiting)`);
    t.equal(await refused('early_data_limit'), 1, 'counted');
    await within(3000, 'the refused stream holds nothing', async () => (await held()) === 0);
  });

  t.test('the agent holds at most its cap over all streams: the stream that would pass it is refused', async (t) => {
    const streams = EARLY_DATA_AGENT_BYTES / HBONE_EARLY_DATA_STREAM_BYTES;
    const opened: Array<ReturnType<typeof connectWith>> = [];
    // 100 streams a session, as the agent allows: every stream at its own cap, none refused for it.
    for (let i = 0; i < streams; i += 100) {
      const s = await session();
      for (let j = i; j < Math.min(streams, i + 100); j++) opened.push(connectWith(s, HBONE_EARLY_DATA_STREAM_BYTES));
    }
    await within(10_000, `the agent holds ${EARLY_DATA_AGENT_BYTES} bytes`, async () => (await held()) === EARLY_DATA_AGENT_BYTES, 100);
    const one = connectWith(await session(), 1);
    t.match(await one.answer, { status: 503, reason: 'early_data_overload' }, 'one byte more, on a new stream, is refused');
    t.equal(await refused('early_data_overload'), 1, 'counted');
    t.equal(await refused('early_data_limit'), 1, 'no stream at its own cap was refused for it');
    for (const { stream } of opened) stream.close(http2.constants.NGHTTP2_CANCEL);
    await within(5000, 'the cancelled streams give their bytes back', async () => (await held()) === 0, 100);
  });

  t.test('the source agent sends at most the cap before the 200: a large first write arrives whole', async (t) => {
    const payload = randomBytes(1024 * 1024);
    const socket = await mesh.connect('a', { host: c.ip, port: slowPort });
    const reply = exchange(socket, payload);
    await within(5000, 'the destination holds the first bytes', async () => (await held()) === HBONE_EARLY_DATA_STREAM_BYTES, 50);
    slow.stdin.write('accept\n');
    const echoed = await reply;
    t.equal(echoed.length, payload.length, 'every byte came back');
    t.equal(createHash('sha256').update(echoed).digest('hex'), createHash('sha256').update(payload).digest('hex'), 'in order');
    t.equal(await refused('early_data_limit'), 1, 'the source kept to the cap: no refusal');
  });
});
