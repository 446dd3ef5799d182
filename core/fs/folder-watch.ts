import { watch, type FSWatcher } from 'node:fs';
import type { Logger } from '../log/index.js';

/** Quiet time after the last change on disk before `onChange`; a burst of writes (two renames) costs one call. */
const FOLDER_WATCH_DEBOUNCE_MS = 100;
/** After the watch dies (the folder was removed or replaced), watch it again this often. */
const REWATCH_DELAY_MS = 1000;

export interface FolderWatch {
  close(): void;
}

/**
 * Calls `onChange` after changes in `dir`, debounced. The folder is watched, not its files: a file saved through a
 * temporary file and a rename, or a Kubernetes Secret mount that swaps its `..data` link, replaces the inode. A
 * removed or replaced folder silently ends an inotify watch, so a failed watch is set up again, with one call to
 * `onChange` once it is back (what changed meanwhile was not seen).
 */
export function watchFolder(dir: string, onChange: () => void, log: Logger): FolderWatch {
  let watcher: FSWatcher | undefined;
  let debounce: NodeJS.Timeout | undefined;
  let rewatch: NodeJS.Timeout | undefined;
  let failing = false;
  let closed = false;
  const changed = () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      if (!closed) onChange();
    }, FOLDER_WATCH_DEBOUNCE_MS);
  };
  const start = (): void => {
    try {
      watcher = watch(dir, { persistent: false }, changed);
    } catch (err) {
      if (!failing) log.error({ err, dir }, 'cannot watch the folder; retrying every second');
      failing = true;
      restart();
      return;
    }
    if (failing) changed();
    failing = false;
    watcher.on('error', (err) => {
      log.error({ err, dir }, 'the folder watch failed; watching it again');
      failing = true;
      restart();
    });
  };
  const restart = (): void => {
    watcher?.close();
    watcher = undefined;
    clearTimeout(rewatch);
    rewatch = setTimeout(() => {
      if (!closed) start();
    }, REWATCH_DELAY_MS);
    rewatch.unref();
  };
  start();
  return {
    close() {
      closed = true;
      clearTimeout(debounce);
      clearTimeout(rewatch);
      watcher?.close();
    },
  };
}
