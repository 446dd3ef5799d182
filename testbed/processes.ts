import { once } from 'node:events';
import type { ChildProcess } from 'node:child_process';
import { errnoCode } from '../core/errors/index.js';

/** How long a process gets between SIGTERM and SIGKILL. */
const STOP_GRACE_MS = 2000;

/**
 * Processes are started detached, so each leads its own process group: signalling the group by its id also reaches
 * whatever the process forked (a `bash -c` pipeline, a server's workers).
 */
export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  // -0 would be this process's own group.
  if (pid <= 0) throw new RangeError(`not a process id: ${pid}`);
  try {
    process.kill(-pid, signal);
  } catch (err) {
    if (errnoCode(err) !== 'ESRCH') throw err;
  }
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** SIGTERM, then SIGKILL if the process is still there after the grace period. Resolves once it has exited. */
export async function stopProcess(child: ChildProcess): Promise<void> {
  const pid = child.pid;
  if (pid === undefined || hasExited(child)) return;
  const exited = once(child, 'exit');
  signalGroup(pid, 'SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const graceOver = new Promise<'grace-over'>((resolve) => {
    timer = setTimeout(() => resolve('grace-over'), STOP_GRACE_MS);
  });
  try {
    if ((await Promise.race([exited, graceOver])) === 'grace-over') {
      signalGroup(pid, 'SIGKILL');
      await exited;
    }
  } finally {
    clearTimeout(timer);
  }
}
