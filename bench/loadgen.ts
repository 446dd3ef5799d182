/**
 * Load generator run inside a client pod by `npm run bench`. Prints one JSON object on stdout.
 *   latency: `--connections` persistent connections to an echo server, together `--rate` requests/s of `--size`
 *            bytes each, for `--seconds`; every request's round trip is timed (p50/p99 in µs).
 *   connect: `--connections` loops that each open a connection, exchange one byte, and close, for `--seconds`.
 *   hold:    opens `--connections` connections, checks each echoes, prints `ready`, holds them until stdin closes.
 */
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    mode: { type: 'string' },
    host: { type: 'string' },
    port: { type: 'string' },
    connections: { type: 'string', default: '16' },
    rate: { type: 'string', default: '1000' },
    size: { type: 'string', default: '1024' },
    seconds: { type: 'string', default: '5' },
  },
});
const host = values.host as string;
const port = Number(values.port);
const connections = Number(values.connections);
const seconds = Number(values.seconds);

function open(): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, noDelay: true }, () => resolve(socket));
    socket.once('error', reject);
  });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

async function latency(): Promise<object> {
  const size = Number(values.size);
  const intervalMs = (1000 * connections) / Number(values.rate);
  const payload = Buffer.alloc(size, 0x61);
  const samples: number[] = [];
  let errors = 0;
  const deadline = performance.now() + seconds * 1000;
  const sockets = await Promise.all(Array.from({ length: connections }, open));
  await Promise.all(
    sockets.map(
      (socket, i) =>
        new Promise<void>((resolve) => {
          let next = performance.now() + (i * intervalMs) / connections;
          let pending = 0;
          let sentAt = 0;
          const send = () => {
            if (performance.now() >= deadline) {
              socket.destroy();
              resolve();
              return;
            }
            pending = size;
            sentAt = performance.now();
            socket.write(payload);
          };
          socket.on('data', (chunk: Buffer) => {
            pending -= chunk.length;
            if (pending > 0) return;
            samples.push((performance.now() - sentAt) * 1000);
            next += intervalMs;
            setTimeout(send, Math.max(0, next - performance.now()));
          });
          socket.on('error', () => {
            errors++;
            resolve();
          });
          setTimeout(send, Math.max(0, next - performance.now()));
        }),
    ),
  );
  samples.sort((a, b) => a - b);
  return { requests: samples.length, errors, p50_us: percentile(samples, 50), p99_us: percentile(samples, 99), seconds };
}

async function connect(): Promise<object> {
  let count = 0;
  let errors = 0;
  /** Per connection: from connect() to the first byte back (µs), the latency a new connection adds. */
  const samples: number[] = [];
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const one = () =>
    new Promise<void>((resolve) => {
      const opened = performance.now();
      const socket = net.connect({ host, port, noDelay: true }, () => socket.write('x'));
      socket.once('data', () => {
        count++;
        samples.push((performance.now() - opened) * 1000);
        socket.end();
      });
      socket.once('error', () => {
        errors++;
        resolve();
      });
      socket.once('close', () => resolve());
    });
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (performance.now() < deadline) await one();
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  samples.sort((a, b) => a - b);
  return { connections: count, errors, conn_per_s: count / elapsed, seconds: elapsed, connect_p50_us: percentile(samples, 50), connect_p99_us: percentile(samples, 99) };
}

async function hold(): Promise<void> {
  const sockets: net.Socket[] = [];
  for (let i = 0; i < connections; i += 50) {
    const batch = await Promise.all(Array.from({ length: Math.min(50, connections - i) }, open));
    await Promise.all(
      batch.map(
        (s) =>
          new Promise<void>((resolve) => {
            s.once('data', () => resolve());
            s.write('x');
          }),
      ),
    );
    sockets.push(...batch);
  }
  process.stdout.write(`${JSON.stringify({ ready: sockets.length })}\n`);
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.once('end', resolve));
  for (const s of sockets) s.destroy();
}

const modes: Record<string, () => Promise<object | void>> = { latency, connect, hold };
const run = modes[values.mode ?? ''];
if (!run) {
  process.stderr.write('usage: loadgen --mode latency|connect|hold --host H --port P [...]\n');
  process.exit(2);
}
run().then(
  (result) => {
    if (result) process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(0);
  },
  (err: unknown) => {
    process.stderr.write(`loadgen: ${String(err)}\n`);
    process.exit(1);
  },
);
