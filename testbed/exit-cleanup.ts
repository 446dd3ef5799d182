/** Something that can undo itself without awaiting: the last chance when the process is exiting. */
export interface SyncTeardown {
  teardownSync(): void;
}

const INTERRUPTS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];

const live = new Set<SyncTeardown>();
let installed = false;

/**
 * Keeps `item` torn down if the process exits or is interrupted before it is released. The handlers are installed
 * only while something is registered, so a process that cleaned up after itself gets its default signal behaviour
 * back.
 */
export function registerForExit(item: SyncTeardown): void {
  live.add(item);
  if (installed) return;
  installed = true;
  process.on('exit', teardownAll);
  // Prepended so the teardown runs before other handlers of the same signal decide to exit (signal-exit, used by
  // tap, re-raises the signal only when it sees no foreign listener, so ours must be gone by the time it runs).
  for (const signal of INTERRUPTS) process.prependListener(signal, onInterrupt);
}

export function releaseFromExit(item: SyncTeardown): void {
  live.delete(item);
  if (live.size === 0) uninstall();
}

function uninstall(): void {
  if (!installed) return;
  installed = false;
  process.removeListener('exit', teardownAll);
  for (const signal of INTERRUPTS) process.removeListener(signal, onInterrupt);
}

function teardownAll(): void {
  for (const item of [...live]) {
    live.delete(item);
    try {
      item.teardownSync();
    } catch {
      // Best effort while exiting: one failed teardown must not stop the others.
    }
  }
}

function onInterrupt(signal: NodeJS.Signals): void {
  teardownAll();
  uninstall();
  // Nobody else handles the signal: re-raise it so the process dies of it, as it would have without us.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}
