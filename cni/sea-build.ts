/**
 * Builds `ambit-cni` as a single executable (Node SEA), for nodes whose host has no Node.js: the runtime runs the
 * plugin from the host's CNI bin directory, outside the agent's container.
 *
 * Node 20's SEA runs one CommonJS script that may load only built-in modules, so dist/cni/main.js is bundled into
 * one CJS file with esbuild; `node --experimental-sea-config` turns it into a blob, which postject injects into a
 * copy of this Node binary. esbuild and postject are devDependencies: the image build runs this, not the node.
 * The blob's format belongs to the Node version that wrote it, so the binary is always this process's own.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type * as Esbuild from 'esbuild';
import { AmbitError } from '../core/errors/index.js';

/** The fuse Node's SEA support looks for; postject flips its `:0` to `:1` when it injects the blob. */
export const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';
const SEA_RESOURCE_NAME = 'NODE_SEA_BLOB';
const DIST_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** The plugin's entry, compiled by tsc. */
const PLUGIN_ENTRY = path.join(DIST_DIR, 'cni', 'main.js');
export const DEFAULT_CNI_SEA_FILE = path.join(DIST_DIR, 'ambit-cni');
/**
 * The SEA's own configuration. No V8 code cache: for a 14 KB script it saved nothing measurable (the start-up is
 * Node's own), and it would rule out import().
 */
const SEA_SETTINGS = Object.freeze({ disableExperimentalSEAWarning: true, useCodeCache: false });

export interface BuildCniSeaOptions {
  /** Where the executable goes (default dist/ambit-cni); a `.stamp` file beside it records what it was built from. */
  readonly outFile?: string;
  /** Build even when the stamp says the executable is up to date. */
  readonly force?: boolean;
  /** Progress lines (default: none). */
  readonly log?: (line: string) => void;
}

export interface BuildCniSeaResult {
  readonly outFile: string;
  /** False when the existing executable was up to date and left alone. */
  readonly built: boolean;
}

interface Postject {
  inject(filename: string, resourceName: string, resourceData: Buffer, options: { sentinelFuse: string }): Promise<void>;
}

/**
 * Builds the single executable, or leaves it when it is up to date: same bundle, same Node binary, same settings.
 * Needs `npm run build` first (it bundles dist/cni/main.js) and a Node binary built with SEA support, as the
 * official ones are. Writes to a temporary file beside `outFile` and renames it, so a concurrent run or a
 * reader never sees half an executable.
 */
export async function buildCniSea(options: BuildCniSeaOptions = {}): Promise<BuildCniSeaResult> {
  const outFile = path.resolve(options.outFile ?? DEFAULT_CNI_SEA_FILE);
  const log = options.log ?? (() => undefined);
  const bundle = await bundlePlugin();
  const node = await stat(process.execPath);
  const stamp = createHash('sha256')
    .update(JSON.stringify({ node: process.version, execPath: process.execPath, size: node.size, mtime: node.mtimeMs, settings: SEA_SETTINGS }))
    .update(bundle)
    .digest('hex');
  const stampFile = `${outFile}.stamp`;
  if (!options.force && (await isUpToDate(outFile, stampFile, stamp))) {
    log(`ambit-cni: ${outFile} is up to date`);
    return { outFile, built: false };
  }

  const nodeBinary = await readFile(process.execPath);
  if (nodeBinary.indexOf(`${SEA_FUSE}:0`) < 0) {
    throw new AmbitError(
      'CNI_SEA_UNSUPPORTED',
      `${process.execPath} cannot carry a single executable application (no unflipped SEA fuse ${SEA_FUSE}); build with an official Node.js ${process.version} binary`,
    );
  }
  const workDir = await mkdtemp(path.join(path.dirname(outFile), '.ambit-cni-sea-'));
  try {
    const script = path.join(workDir, 'ambit-cni.cjs');
    const blob = path.join(workDir, 'ambit-cni.blob');
    const config = path.join(workDir, 'sea-config.json');
    const binary = path.join(workDir, 'ambit-cni');
    await writeFile(script, bundle);
    await writeFile(config, JSON.stringify({ main: script, output: blob, ...SEA_SETTINGS }));
    log(`ambit-cni: writing the SEA blob (${bundle.length} bytes of script)`);
    await runNode(['--experimental-sea-config', config], workDir);
    await writeFile(binary, nodeBinary, { mode: 0o755 });
    log(`ambit-cni: injecting the blob into a copy of ${process.execPath}`);
    const postject = createRequire(import.meta.url)('postject') as Postject;
    await postject.inject(binary, SEA_RESOURCE_NAME, await readFile(blob), { sentinelFuse: SEA_FUSE });
    await chmod(binary, 0o755);
    await rename(binary, outFile);
    await writeFile(stampFile, `${stamp}\n`);
    log(`ambit-cni: built ${outFile}`);
    return { outFile, built: true };
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

/** The plugin and everything it imports as one CommonJS script that needs only Node's built-in modules. */
async function bundlePlugin(): Promise<Buffer> {
  try {
    await stat(PLUGIN_ENTRY);
  } catch (err) {
    throw new AmbitError('CNI_SEA_BUILD', `${PLUGIN_ENTRY} is missing: run \`npm run build\` first`, { cause: err });
  }
  let esbuild: typeof Esbuild;
  try {
    esbuild = await import('esbuild');
  } catch (err) {
    throw new AmbitError('CNI_SEA_BUILD', 'esbuild is not installed: the SEA build needs the devDependencies (`npm ci`)', { cause: err });
  }
  const result = await esbuild.build({
    entryPoints: [PLUGIN_ENTRY],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: `node${process.versions.node.split('.')[0]}`,
    minify: true,
    legalComments: 'none',
    write: false,
    logLevel: 'silent',
  });
  const output = result.outputFiles[0];
  if (output === undefined) throw new AmbitError('CNI_SEA_BUILD', `esbuild produced no output for ${PLUGIN_ENTRY}`);
  // The SEA runs the script as a CommonJS function body, where a #! line is a syntax error.
  return Buffer.from(output.text.replace(/^#!.*\n/, ''));
}

async function isUpToDate(outFile: string, stampFile: string, stamp: string): Promise<boolean> {
  try {
    const [existing] = await Promise.all([readFile(stampFile, 'utf8'), stat(outFile)]);
    return existing.trim() === stamp;
  } catch {
    return false;
  }
}

async function runNode(args: string[], cwd: string): Promise<void> {
  // Without NODE_OPTIONS: a test runner's loaders (tap's) must not run inside the blob generator.
  const { NODE_OPTIONS: _ignored, ...env } = process.env;
  try {
    await promisify(execFile)(process.execPath, args, { cwd, env, timeout: 120_000 });
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    throw new AmbitError('CNI_SEA_BUILD', `node ${args.join(' ')} failed: ${stderr.trim() || (err as Error).message}`, { cause: err });
  }
}
