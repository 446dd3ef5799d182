import type { Testbed, TestbedPod } from '../../testbed/index.js';

/**
 * Polls until `predicate` holds, every `intervalMs` (longer for a probe that costs its target CPU); resolves with the
 * time it took, or rejects naming `what` after `timeoutMs`.
 */
export async function within(timeoutMs: number, what: string, predicate: () => boolean | Promise<boolean>, intervalMs = 25): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await predicate()) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Holds one echo connection open; prints `open` once echoed, `echo` for each later echo, then how it ended: `end`
 * (FIN), the error, `closed`. A line on its stdin sends more.
 */
const HOLDER = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port), allowHalfOpen: true }, () => s.write('hello'));
s.once('data', () => {
  console.log('open');
  s.on('data', () => console.log('echo'));
});
s.on('end', () => { console.log('end'); s.end(); });
s.on('error', (e) => console.log('error ' + (e.code || e.message)));
s.on('close', () => console.log('closed'));
process.stdin.on('data', () => s.write('again'));
`;

/** How long a poke waits for the holder to say what happened: an echo, or the reset, comes within a round trip. */
const POKE_TIMEOUT_MS = 5000;

export interface HeldConnection {
  /** What the holder printed so far: `open`, `echo`..., then `end` / `error <code>` / `closed`. */
  readonly lines: string[];
  /** Sends a few bytes over the connection and resolves with the holder's next line: `echo` when they came back. */
  poke(): Promise<string>;
  stop(): void;
}

/** Opens a long-lived connection from `pod` to an echo server and resolves once it carried a first echo. */
export async function holdConnection(tb: Testbed, pod: TestbedPod, host: string, port: number): Promise<HeldConnection> {
  const child = tb.spawn(pod.netns, process.execPath, ['-e', HOLDER, host, String(port)], { buffer: false });
  const lines: string[] = [];
  const waiting: Array<{ index: number; resolve: (line: string) => void }> = [];
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    lines.push(...chunk.split('\n').filter(Boolean));
    for (const waiter of waiting.filter((w) => lines.length > w.index)) {
      waiting.splice(waiting.indexOf(waiter), 1);
      waiter.resolve(lines[waiter.index]!);
    }
  });
  await within(5000, `a connection from ${pod.name} to ${host}:${port} is open`, () => lines.includes('open'));
  const poke = () =>
    new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${pod.name} -> ${host}:${port}: no echo and no error within ${POKE_TIMEOUT_MS} ms of a poke`)), POKE_TIMEOUT_MS);
      waiting.push({
        index: lines.length,
        resolve: (line) => {
          clearTimeout(timer);
          resolve(line);
        },
      });
      child.stdin!.write('\n');
    });
  return { lines, poke, stop: () => child.kill() };
}
