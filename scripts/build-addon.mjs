// The package's `install` script: builds the native addon (build/Release/ambit_sockopt.node) with node-gyp.
// It checks the toolchain first so a missing compiler fails with the package to install, not a gyp backtrace.
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function onPath(command) {
  for (const directory of (process.env.PATH ?? '').split(path.delimiter)) {
    if (directory === '') continue;
    try {
      accessSync(path.join(directory, command), constants.X_OK);
      return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

const missing = [];
if (!onPath('python3')) missing.push('python3');
if (!onPath('make')) missing.push('make');
if (!onPath('cc') && !onPath('gcc')) missing.push('a C compiler (cc or gcc)');
if (missing.length > 0) {
  console.error(
    `ambit: cannot build the native addon: missing ${missing.join(', ')}. On Debian: apt-get install -y python3 make gcc`,
  );
  process.exit(1);
}

// npm points npm_config_node_gyp at its bundled node-gyp.js; run directly, look for npm's copy next to this node.
function nodeGypCommand() {
  const bundledWithNpm = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  for (const script of [process.env.npm_config_node_gyp, bundledWithNpm]) {
    if (script && existsSync(script)) return { command: process.execPath, args: [script] };
  }
  if (onPath('node-gyp')) return { command: 'node-gyp', args: [] };
  console.error('ambit: cannot build the native addon: node-gyp not found. Run it through npm (`npm ci`) or install node-gyp.');
  process.exit(1);
}

// Without a nodedir node-gyp downloads Node's headers; a Node installed with its headers (Debian's nodejs,
// the official tarball) builds offline against them when their version is the running one.
function localHeadersArgs() {
  if (process.env.npm_config_nodedir) return [];
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  try {
    const versionHeader = readFileSync(path.join(prefix, 'include', 'node', 'node_version.h'), 'utf8');
    const part = (name) => versionHeader.match(new RegExp(`#define NODE_${name}_VERSION (\\d+)`))?.[1];
    if (`v${part('MAJOR')}.${part('MINOR')}.${part('PATCH')}` === process.version) return [`--nodedir=${prefix}`];
  } catch {
    // no local headers: node-gyp fetches them
  }
  return [];
}

const nodeGyp = nodeGypCommand();
const result = spawnSync(nodeGyp.command, [...nodeGyp.args, 'rebuild', ...localHeadersArgs()], {
  cwd: repoRoot,
  stdio: 'inherit',
});
if (result.error) {
  console.error(`ambit: cannot run node-gyp: ${result.error.message}`);
  process.exit(1);
}
process.exit(result.status ?? 1);
