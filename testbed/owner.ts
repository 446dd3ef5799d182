import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { errnoCode } from '../core/errors/index.js';
import { deleteHostLink, deleteNamespaces, killPids, listNamespaces, namespacePids, TESTBED_NETNS_PATTERN } from './netns.js';

/**
 * Owner records live in /run, beside the namespaces themselves (both vanish at reboot), and not in the temp dir,
 * whose location depends on each process's TMPDIR.
 */
export const OWNER_DIR = '/run/ambit-testbed';

/** Who made a testbed: the PID and its start time, so a recycled PID is not mistaken for the owner. */
interface OwnerRecord {
  pid: number;
  startTime: string;
  tmpDir: string;
}

export function ownerFile(id: string): string {
  return join(OWNER_DIR, `${id}.json`);
}

/**
 * Claims a testbed id for this process. Fails (EEXIST) when the id is taken, which makes the id unique among live
 * testbeds. Written before the first namespace, removed after the last, so a namespace without a live owner is stale.
 */
export function claimOwnership(id: string, tmpDir: string): void {
  mkdirSync(OWNER_DIR, { recursive: true });
  const record: OwnerRecord = { pid: process.pid, startTime: processStartTime(process.pid) ?? '', tmpDir };
  writeFileSync(ownerFile(id), JSON.stringify(record), { flag: 'wx' });
}

export function releaseOwnership(id: string): void {
  rmSync(ownerFile(id), { force: true });
}

/** Who holds the host link (a testbed id): the one address on the host's side, so one testbed at a time has it. */
const HOST_LINK_HOLDER = join(OWNER_DIR, 'host-link');
const HOST_LINK_POLL_MS = 250;

/**
 * Waits until no live testbed holds the host link, then takes it for `id`; a holder whose creator is gone is stale and
 * loses it. Rejects after `timeoutMs`, naming the holder.
 */
export async function claimHostLink(id: string, timeoutMs: number): Promise<void> {
  mkdirSync(OWNER_DIR, { recursive: true });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      writeFileSync(HOST_LINK_HOLDER, id, { flag: 'wx' });
      return;
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw err;
    }
    const holder = readHolder();
    const owner = holder === undefined ? undefined : await readOwner(holder);
    if (holder !== undefined && (owner === undefined || !isAlive(owner))) {
      releaseHostLink(holder);
      continue;
    }
    if (Date.now() > deadline) throw new Error(`testbed ${holder ?? '?'} holds the host link (${HOST_LINK_HOLDER}) still after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, HOST_LINK_POLL_MS));
  }
}

function readHolder(): string | undefined {
  try {
    return readFileSync(HOST_LINK_HOLDER, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** Gives the host link up, if `id` holds it. */
export function releaseHostLink(id: string): void {
  if (readHolder() === id) rmSync(HOST_LINK_HOLDER, { force: true });
}

/** Field 22 of /proc/<pid>/stat: clock ticks from boot to the process's start. Undefined when there is no such PID. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses; the fields after its closing one do not.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19];
  } catch {
    return undefined;
  }
}

async function readOwner(id: string): Promise<OwnerRecord | undefined> {
  try {
    return JSON.parse(await readFile(ownerFile(id), 'utf8')) as OwnerRecord;
  } catch {
    return undefined;
  }
}

function isAlive(owner: OwnerRecord): boolean {
  return processStartTime(owner.pid) === owner.startTime;
}

/**
 * Deletes the namespaces of testbeds whose creating process is gone (killed with SIGKILL, or crashed in a way that
 * skipped the exit handlers), with the processes still running in them, their temp dirs and owner records.
 * Namespaces of live testbeds, and any name not shaped like a testbed's, are never touched.
 * Resolves with the names of the deleted namespaces.
 */
export async function removeStaleTestbeds(): Promise<string[]> {
  const namespacesById = new Map<string, string[]>();
  for (const id of await recordedIds()) namespacesById.set(id, []);
  for (const name of listNamespaces()) {
    const id = TESTBED_NETNS_PATTERN.exec(name)?.[1];
    if (id !== undefined) namespacesById.set(id, [...(namespacesById.get(id) ?? []), name]);
  }
  const removed: string[] = [];
  for (const [id, names] of namespacesById) {
    const owner = await readOwner(id);
    if (owner !== undefined && isAlive(owner)) continue;
    killPids(await namespacePids(names));
    await deleteNamespaces(names);
    await deleteHostLink(`ambit-${id}-`).catch(() => undefined);
    const remaining = listNamespaces();
    removed.push(...names.filter((name) => !remaining.includes(name)));
    if (owner !== undefined && basename(owner.tmpDir).startsWith(`ambit-${id}-`)) {
      await rm(owner.tmpDir, { recursive: true, force: true });
    }
    releaseOwnership(id);
  }
  return removed;
}

async function recordedIds(): Promise<string[]> {
  try {
    const files = await readdir(OWNER_DIR);
    return files.flatMap((file) => /^([0-9a-f]{6})\.json$/.exec(file)?.[1] ?? []);
  } catch {
    return [];
  }
}
