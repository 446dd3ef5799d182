import { watchFolder, type FolderWatch } from '../fs/index.js';
import type { Logger } from '../log/index.js';
import { SerialRuns } from '../serial/index.js';

export interface FolderReloadOptions {
  dir: string;
  /** Reads the folder and takes what changed; a folder that does not load is `load`'s to handle (keep what is in use). */
  load: () => Promise<void>;
  log: Logger;
  /** The error line when `load` throws anyway (a listener it calls, for one). */
  failure: string;
}

/**
 * The reload rule of the watched identity folders (local mode's CA folder, kubernetes mode's trust bundle): the folder
 * is watched from construction, and read again after each change, one read at a time; a change seen during a read
 * earns exactly one more, so the state read last is the one on disk. A `load` that throws is logged and never stops
 * the watch.
 */
export class FolderReload {
  readonly #runs: SerialRuns;
  #watch: FolderWatch | undefined;

  constructor(options: FolderReloadOptions) {
    this.#runs = new SerialRuns(options.load, (err) => options.log.error({ err }, options.failure));
    this.#watch = watchFolder(options.dir, () => void this.reload(), options.log);
  }

  /** Reads the folder now, or once more after the read in flight; resolves when the reads are done. */
  reload(): Promise<void> {
    return this.#runs.trigger();
  }

  /** Stops watching; resolves once a reload in flight has finished. */
  async close(): Promise<void> {
    this.#watch?.close();
    this.#watch = undefined;
    await this.#runs.stop();
  }
}
