// `npm test`'s runner (after the build and lint): the unit and in-process tests two files at a time, then the
// network-namespace end-to-end tests one file at a time (each builds namespaces, a host link and agent processes:
// .taprc's jobs: 1). Files given on the command line run alone, as tap would run them.
// With AMBIT_TEST_NODE24=1 (.ci/run), `npm run test:node24`'s run (scripts/test-node24.mjs, the in-process tests on
// Node 24) goes alongside the end-to-end phase, which mostly waits on processes and the network, and its output
// follows theirs; either failing fails the run. dist/ is not rebuilt meanwhile: the build came first.
import { spawn } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { repoRoot, TAP_RUN, testFiles } from './test-files.mjs';

/** The runs going now: a signal to this runner (npm passes it to its child only) goes on to them. */
const children = new Set();
/** Done on the way out: the Node 24 log's folder. */
const cleanups = [];
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, () => {
    for (const child of children) child.kill(signal);
    // tap ends its test processes and their teardowns run; then this runner goes, as the signal would have it
    void Promise.all([...children].map((child) => new Promise((resolve) => child.once('close', resolve))))
      .then(() => Promise.all(cleanups.map((cleanup) => cleanup())))
      .finally(() => process.exit(signal === 'SIGTERM' ? 143 : 130));
  });
}

/** Runs `node args` in the repository; resolves with its exit code (a signal counts as 1). */
function run(args, options = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd: repoRoot, stdio: options.stdio ?? 'inherit', env: process.env });
    children.add(child);
    child.once('close', () => children.delete(child));
    if (options.output) {
      child.stdout.pipe(options.output, { end: false });
      child.stderr.pipe(options.output, { end: false });
    }
    child.on('error', () => resolve(1));
    child.on('close', (code) => resolve(code ?? 1));
  });
}

const named = process.argv.slice(2);
if (named.length > 0) process.exit(await run([TAP_RUN, ...named]));

const { testbed, inProcess } = testFiles();
const started = Date.now();
const seconds = () => `${Math.round((Date.now() - started) / 1000)} s`;
console.log(`run-tests: ${inProcess.length} unit and in-process test files, two at a time`);
const inProcessCode = await run([TAP_RUN, '--jobs', '2', ...inProcess]);
console.log(`run-tests: unit and in-process tests done (${seconds()}), exit ${inProcessCode}`);

let node24 = Promise.resolve({ code: 0 });
if (process.env.AMBIT_TEST_NODE24 === '1') {
  const logDir = await mkdtemp(path.join(os.tmpdir(), 'ambit-node24-log-'));
  cleanups.push(() => rm(logDir, { recursive: true, force: true }));
  const logFile = path.join(logDir, 'node24.log');
  const output = createWriteStream(logFile);
  console.log(`run-tests: the in-process tests on Node 24 run alongside the end-to-end tests; their output follows`);
  node24 = run([path.join(repoRoot, 'scripts', 'test-node24.mjs')], { stdio: ['ignore', 'pipe', 'pipe'], output })
    .then(async (code) => {
      await new Promise((resolve) => output.end(resolve));
      const text = readFileSync(logFile, 'utf8');
      await rm(logDir, { recursive: true, force: true });
      return { code, text };
    })
    // the log lost is a failed run, said as such, never an unhandled rejection mid-run
    .catch((err) => ({ code: 1, text: `run-tests: the Node 24 run's output could not be read: ${err instanceof Error ? err.message : String(err)}\n` }));
}
console.log(`run-tests: ${testbed.length} network-namespace end-to-end test files, one at a time`);
const testbedCode = await run([TAP_RUN, '--jobs', '1', ...testbed]);
console.log(`run-tests: end-to-end tests done (${seconds()}), exit ${testbedCode}`);
const { code: node24Code, text } = await node24;
if (text !== undefined) {
  process.stdout.write(text);
  console.log(`run-tests: Node 24 run exit ${node24Code} (${seconds()})`);
}
process.exit(inProcessCode !== 0 || testbedCode !== 0 || node24Code !== 0 ? 1 : 0);
