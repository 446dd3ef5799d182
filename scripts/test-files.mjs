// Which compiled test files there are, in two sets: those that build network namespaces and run agents as processes
// (they call needsTestbed(), test/prerequisites.ts), which run one file at a time, and the unit and in-process ones,
// which run two at a time. `npm test` (scripts/run-tests.mjs) and `npm run test:node24` both take their files here.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const TESTBED_CALL = /\bneedsTestbed\(\)/;

/** dist/test/**\/*.test.js, relative to the repository, split into { testbed, inProcess }. */
export function testFiles() {
  const testDir = path.join(repoRoot, 'dist', 'test');
  if (!existsSync(testDir)) throw new Error(`${testDir} is missing: run \`npm run build\` first`);
  const files = readdirSync(testDir, { recursive: true })
    .filter((file) => file.endsWith('.test.js'))
    .sort()
    .map((file) => path.join('dist', 'test', file));
  const testbed = files.filter((file) => TESTBED_CALL.test(readFileSync(path.join(repoRoot, file), 'utf8')));
  return { testbed, inProcess: files.filter((file) => !testbed.includes(file)) };
}

/** tap's runner, started with `node` (a path: the Node to test on). */
export const TAP_RUN = path.join(repoRoot, 'node_modules', 'tap', 'dist', 'esm', 'run.mjs');
