import { readdirSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { execa, execaSync } from 'execa';
import { AmbitError, errnoCode } from '../core/errors/index.js';

/** Where `ip netns add` mounts named namespaces: listing it is what `ip netns list` does, without an exec. */
export const NETNS_DIR = '/var/run/netns';

/**
 * Where `ip netns exec NAME` finds files to bind-mount over /etc for the programs it runs (`hosts`: the testbed's
 * cluster DNS). Deleting a namespace deletes its folder.
 */
export const NETNS_ETC_DIR = '/etc/netns';

/**
 * Every testbed namespace is `ambit-<6 hex>-wire`, `...-n<i>` or `...-n<i>p<j>`; stale-namespace removal only ever
 * touches names that match this exactly, so it cannot delete anything another tool made.
 */
export const TESTBED_NETNS_PATTERN = /^ambit-([0-9a-f]{6})-(?:wire|n\d+(?:p\d+)?)$/;

/** The host end of a testbed's host link (`ambit-<6 hex>-h`, 14 characters: within a link name's 15). */
export function hostLinkName(prefix: string): string {
  return `${prefix}h`;
}

/** Deletes a testbed's host link; one already gone (with its wire namespace) is not an error. */
export async function deleteHostLink(prefix: string): Promise<void> {
  const result = await execa('ip', ['link', 'del', hostLinkName(prefix)], { reject: false });
  if (result.exitCode !== 0 && !/Cannot find device/.test(result.stderr)) throw new Error(result.stderr.trim());
}

export function deleteHostLinkSync(prefix: string): void {
  execaSync('ip', ['link', 'del', hostLinkName(prefix)], { reject: false });
}

export function listNamespaces(): string[] {
  try {
    return readdirSync(NETNS_DIR);
  } catch {
    return [];
  }
}

export function namespacesWithPrefix(prefix: string): string[] {
  return listNamespaces().filter((name) => name.startsWith(prefix));
}

/**
 * Runs several `ip` commands in one process (`ip -batch`), stopping at the first failure: starting a process costs
 * tens of milliseconds, and a testbed needs dozens of commands. `netns` scopes every line to that namespace.
 */
export async function ipBatch(lines: string[], netns?: string): Promise<void> {
  const args = [...(netns === undefined ? [] : ['-n', netns]), '-batch', '-'];
  const input = lines.join('\n') + '\n';
  const result = await execa('ip', args, { input, reject: false });
  if (result.exitCode !== 0) {
    const where = netns === undefined ? '' : ` in ${netns}`;
    const why = result.stderr.trim() || result.message;
    throw new AmbitError('TESTBED_SETUP_FAILED', `ip batch${where} failed: ${why}\ncommands:\n${input}`, { cause: result });
  }
}

/**
 * Deletes namespaces, continuing past failures (`-force`), so one missing namespace does not keep the rest alive.
 * Resolves with the `ip` error text, empty when all went.
 */
export async function deleteNamespaces(names: string[]): Promise<string> {
  if (names.length === 0) return '';
  const result = await execa('ip', ['-force', '-batch', '-'], { input: deleteLines(names), reject: false });
  await Promise.all(names.map((name) => rm(path.join(NETNS_ETC_DIR, name), { recursive: true, force: true })));
  return result.exitCode === 0 ? '' : result.stderr;
}

/** The synchronous twin of `deleteNamespaces`, for process-exit handlers where nothing asynchronous runs. */
export function deleteNamespacesSync(names: string[]): void {
  if (names.length === 0) return;
  execaSync('ip', ['-force', '-batch', '-'], { input: deleteLines(names), reject: false });
  for (const name of names) rmSync(path.join(NETNS_ETC_DIR, name), { recursive: true, force: true });
}

function deleteLines(names: string[]): string {
  return names.map((name) => `netns del ${name}\n`).join('');
}

/**
 * PIDs of the processes living in any of the namespaces, in one exec; such processes keep a namespace's devices alive
 * after its name is deleted.
 */
export async function namespacePids(names: string[]): Promise<number[]> {
  if (names.length === 0) return [];
  const result = await execa('ip', ['-force', '-batch', '-'], { input: pidsLines(names), reject: false });
  return parsePids(result.stdout);
}

export function namespacePidsSync(names: string[]): number[] {
  if (names.length === 0) return [];
  return parsePids(execaSync('ip', ['-force', '-batch', '-'], { input: pidsLines(names), reject: false }).stdout);
}

function pidsLines(names: string[]): string {
  return names.map((name) => `netns pids ${name}\n`).join('');
}

function parsePids(stdout: string): number[] {
  return stdout.split('\n').filter((line) => /^\d+$/.test(line)).map(Number);
}

/** Kills each PID, ignoring those already gone. */
export function killPids(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch (err) {
      if (errnoCode(err) !== 'ESRCH') throw err;
    }
  }
}
