// `npm run test:node24`: the unit and in-process tests (dist/test, built by `npm run build`) again on Node 24, the
// image's runtime (Dockerfile), while the machines run Node 20. Node 24 is the registry's node-<platform>-<arch>
// package at the version package.json's config.node24 pins (test/manifests.test.ts checks that the Dockerfile
// has the same), installed once into $AMBIT_NODE24_PREFIX (default: ambit-node-<version> in the temp dir). The native
// addon needs no second build: it is N-API (binding.gyp), so the one built for Node 20 loads on 24 (sockopt.test.ts).
// Left out: the network-namespace end-to-end tests, the files that call needsTestbed() (test/prerequisites.ts), which
// CI runs on Node 20 and which take most of its time. Any other new test file is picked up as it is.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot, TAP_RUN, testFiles } from './test-files.mjs';

const version = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')).config.node24;
const packageName = `node-${process.platform}-${process.arch}`;
const prefix = process.env.AMBIT_NODE24_PREFIX || path.join(os.tmpdir(), `ambit-node-${version}`);
const binDir = path.join(prefix, 'node_modules', packageName, 'bin');
const node = path.join(binDir, 'node');

function installedVersion() {
  if (!existsSync(node)) return undefined;
  return execFileSync(node, ['--version'], { encoding: 'utf8' }).trim();
}

function fail(message) {
  console.error(`test:node24: ${message}`);
  process.exit(1);
}

if (typeof version !== 'string' || !/^24\.\d+\.\d+$/.test(version)) fail(`package.json config.node24 must be a 24.x.y version, got ${JSON.stringify(version)}`);
const tests = testFiles().inProcess;
if (installedVersion() !== `v${version}`) {
  const npm = spawnSync('npm', ['install', '--no-save', '--no-package-lock', '--no-audit', '--no-fund', '--prefix', prefix, `${packageName}@${version}`], { stdio: 'inherit' });
  if (npm.status !== 0) fail(`could not install ${packageName}@${version} from the npm registry into ${prefix}`);
  if (installedVersion() !== `v${version}`) fail(`${node} is not v${version} after the install`);
}

// Node 24 first on PATH too, for whatever starts `node` by name; tap starts the test files with its own execPath.
const env = { ...process.env, PATH: `${binDir}${path.delimiter}${process.env.PATH ?? ''}` };
console.log(`test:node24: node --version: ${execFileSync('node', ['--version'], { encoding: 'utf8', env }).trim()} (${node}); ${tests.length} test files`);
const started = process.hrtime.bigint();
// two files at a time, as `npm test` runs them (scripts/run-tests.mjs)
const tap = spawnSync(node, [TAP_RUN, '--jobs', '2', ...tests], { cwd: repoRoot, env, stdio: 'inherit' });
console.log(`test:node24: ${(Number(process.hrtime.bigint() - started) / 1e9).toFixed(0)} s on Node ${version}`);
process.exit(tap.status ?? 1);
