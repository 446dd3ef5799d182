#!/usr/bin/env node
/**
 * The `ambit-cni` executable, run by the container runtime (ESM under node, or bundled into a single executable).
 * It reads at most STDIN_LIMIT bytes of stdin, runs the plugin, prints one result or CNI error, and exits: always,
 * and promptly.
 */
import { readFile } from 'node:fs/promises';
import { askAgent } from './agent-client.js';
import { AGENT_TIMEOUT_MAX_MS, CNI_ERROR_CODES, CNI_SPEC_VERSION, STDIN_TIMEOUT_MS, runCniPlugin, type PluginIo, type StdinContent } from './plugin.js';

/** The last resort against a hang: every wait inside has its own, shorter deadline. */
const WATCHDOG_MS = STDIN_TIMEOUT_MS + AGENT_TIMEOUT_MAX_MS + 5000;

function readStdin(limit: number): Promise<StdinContent> {
  return new Promise((resolve, reject) => {
    const stdin = process.stdin;
    const chunks: Buffer[] = [];
    let length = 0;
    const finish = (err: Error | undefined, overLimit = false): void => {
      clearTimeout(timer);
      stdin.removeAllListeners('data');
      stdin.on('error', () => undefined);
      // Stop reading: a caller that writes more than a config must not keep us here, and an error ends the run.
      stdin.destroy();
      if (err) reject(err);
      else resolve({ data: Buffer.concat(chunks, length), overLimit });
    };
    const timer = setTimeout(() => finish(new Error(`stdin was not closed within ${STDIN_TIMEOUT_MS} ms`)), STDIN_TIMEOUT_MS);
    stdin.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      length += chunk.length;
      if (length > limit) finish(undefined, true);
    });
    stdin.once('end', () => finish(undefined));
    stdin.once('error', (err) => finish(err));
  });
}

async function readEnrollmentFile(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

const io: PluginIo = {
  readStdin,
  askAgent,
  readEnrollmentFile,
  warn: (message) => process.stderr.write(`ambit-cni: ${message}\n`),
};

function exit(stdout: string, exitCode: number): void {
  // Exit once stdout is flushed: a socket or stdin left open must not keep the runtime waiting.
  process.stdout.once('error', () => process.exit(exitCode));
  process.stdout.write(stdout, () => process.exit(exitCode));
}

setTimeout(() => {
  const msg = `ambit-cni did not finish within ${WATCHDOG_MS} ms`;
  exit(`${JSON.stringify({ cniVersion: CNI_SPEC_VERSION, code: CNI_ERROR_CODES.CNI_INTERNAL, msg, details: '' })}\n`, 1);
}, WATCHDOG_MS).unref();

runCniPlugin(process.env, io).then(
  (outcome) => exit(outcome.stdout, outcome.exitCode),
  (err: unknown) => {
    // runCniPlugin never rejects; if it does, say so without a stack on stdout.
    process.stderr.write(`ambit-cni: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    exit(`${JSON.stringify({ cniVersion: CNI_SPEC_VERSION, code: CNI_ERROR_CODES.CNI_INTERNAL, msg: 'ambit-cni failed unexpectedly', details: '' })}\n`, 1);
  },
);
