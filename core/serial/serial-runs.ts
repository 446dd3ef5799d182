/**
 * Runs an async job one at a time, coalescing: a trigger while a run is in flight earns exactly one more run after
 * it, however many triggers came, so the last run always starts after the last trigger (it reads the state that
 * caused it). What the CA folder, the trust-bundle folder, the config folder and the controller's CA Secret each
 * need: a change seen during a read must not be lost, nor read once per event. A run that throws is handed to
 * `onError` and never stops the next.
 */
export class SerialRuns {
  readonly #run: () => Promise<void>;
  readonly #onError: (err: unknown) => void;
  #running: Promise<void> | undefined;
  #again = false;
  #stopped = false;

  constructor(run: () => Promise<void>, onError: (err: unknown) => void) {
    this.#run = run;
    this.#onError = onError;
  }

  /** Runs now, or once more after the run in flight; resolves when the runs are done. After stop(), runs nothing. */
  trigger(): Promise<void> {
    if (this.#stopped) return this.#running ?? Promise.resolve();
    if (this.#running !== undefined) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      do {
        this.#again = false;
        await this.#run().catch(this.#onError);
      } while (this.#again && !this.#stopped);
    })().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  /** No run after the one in flight; resolves once it has finished. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#running;
  }
}
