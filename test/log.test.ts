/**
 * The log destination: lines batched in order, none lost when the process ends, however it ends, and a stdout that
 * stalls does not keep the process from ending.
 */
import { execFile, spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { LineBatcher } from '../core/log/log.js';

const LOG_MODULE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'core', 'log', 'index.js');

t.test('the batcher hands lines on joined and in order, once it holds enough or when flushed', async (t) => {
  const written: string[] = [];
  const batcher = new LineBatcher({ write: (data: string) => written.push(data) }, 10);
  batcher.write('abc\n');
  batcher.write('def\n');
  t.same(written, [], 'below the batch size nothing is written');
  batcher.write('ghi\n');
  t.same(written, ['abc\ndef\nghi\n'], 'reaching it writes the lines as one string, in order');
  batcher.write('jkl\n');
  batcher.flush();
  batcher.flush();
  t.same(written, ['abc\ndef\nghi\n', 'jkl\n'], 'a flush writes the rest; an empty flush writes nothing');
});

/** Runs a script that logs `count` lines through createLogger's stdout destination, then ends as `ending` says. */
function logAndEnd(count: number, ending: string): Promise<{ code: number | null; lines: string[] }> {
  const script = `
    const { createLogger } = await import(${JSON.stringify(LOG_MODULE)});
    const log = createLogger({ name: 'test' });
    for (let i = 0; i < ${count}; i++) log.info({ i }, 'line');
    ${ending}
  `;
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout) => {
      if (err && err.code === undefined) reject(err);
      else resolve({ code: child.exitCode, lines: stdout.split('\n').filter(Boolean) });
    });
  });
}

const ENDINGS = [
  { name: 'the event loop runs empty', ending: '', code: 0, late: false },
  { name: 'process.exit() right after logging', ending: 'process.exit(3);', code: 3, late: false },
  {
    name: 'a later line after a pause past the flush interval',
    ending: "await new Promise((r) => setTimeout(r, 300)); log.info({ i: -1 }, 'late');",
    code: 0,
    late: true,
  },
];

for (const { name, ending, code, late } of ENDINGS) {
  t.test(`every line reaches stdout, in order, when ${name}`, async (t) => {
    const count = 5000;
    const result = await logAndEnd(count, ending);
    t.equal(result.code, code);
    const numbers = result.lines.map((l) => (JSON.parse(l) as { i: number }).i);
    const expected = Array.from({ length: count }, (_, i) => i);
    if (late) expected.push(-1);
    t.same(numbers, expected);
  });
}

/**
 * Runs a script that logs far more than stdout takes, with stdout a pipe nobody reads, then ends as `ending` says;
 * resolves with its exit code, or 'hung' if it was still running `limitMs` later (then it is killed). The agent's
 * SIGTERM, which ends the process by letting its event loop run empty: log-stall.test.
 */
function stallAndEnd(ending: string, limitMs: number): Promise<number | 'hung'> {
  // process.stdout is touched as in the agent (a library does): Node then makes the descriptor non-blocking.
  const script = `
    const { createLogger } = await import(${JSON.stringify(LOG_MODULE)});
    const log = createLogger({ name: 'test' });
    void process.stdout;
    const filler = 'x'.repeat(4000);
    for (let i = 0; i < 5000; i++) log.info({ filler }, 'line');
    await new Promise((r) => setTimeout(r, 300));
    ${ending}
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  child.stdout.pause();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve('hung');
    }, limitMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code ?? 'hung');
    });
  });
}

t.test('a stalled stdout does not keep process.exit() from ending the process', async (t) => {
  t.equal(await stallAndEnd('process.exit(3);', 5000), 3, 'it ends, with its exit code, within 5 s');
});
