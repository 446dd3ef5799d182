/** How a client that reconnects (the reflector, the discovery stream) waits between failed attempts, and when it forgets them. */
export interface BackoffOptions {
  /** The first delay. */
  initialMs: number;
  /** No delay is longer. */
  maxMs: number;
  /** A connection healthy this long forgets the failures before it: the next failure waits `initialMs` again. */
  resetAfterMs: number;
}

/**
 * client-go's reflector backs off from 800 ms to 30 s and forgets after 2 minutes healthy; an API server that is
 * restarting (or one that throttles with 429) must not be hammered by every watcher of every replica at once.
 */
export const DEFAULT_BACKOFF: BackoffOptions = Object.freeze({ initialMs: 800, maxMs: 30_000, resetAfterMs: 120_000 });

/**
 * Exponential backoff with "equal jitter": attempt n waits between half and all of min(initial·2ⁿ, max). The jitter
 * spreads the reconnects of many watchers after an API server restart; keeping the lower half fixed makes each delay
 * at least the previous one until the cap, so a failing server sees the pressure fall, never rise again by chance.
 */
export class Backoff {
  readonly #options: BackoffOptions;
  readonly #random: () => number;
  #attempt = 0;
  #healthySince: number | undefined;

  constructor(options: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random) {
    if (!(options.initialMs > 0) || !(options.maxMs >= options.initialMs) || !(options.resetAfterMs >= 0)) {
      throw new RangeError(`backoff needs 0 < initialMs <= maxMs and resetAfterMs >= 0, got ${JSON.stringify(options)}`);
    }
    this.#options = options;
    this.#random = random;
  }

  /** Marks the start of a healthy period (a list done, a watch answered); a later failure checks how long it lasted. */
  healthy(now: number): void {
    this.#healthySince ??= now;
  }

  /** The delay before the next attempt, after a failure at `now`. */
  failed(now: number): number {
    if (this.#healthySince !== undefined && now - this.#healthySince >= this.#options.resetAfterMs) this.#attempt = 0;
    this.#healthySince = undefined;
    const base = Math.min(this.#options.maxMs, this.#options.initialMs * 2 ** Math.min(this.#attempt, 30));
    this.#attempt += 1;
    return Math.round(base / 2 + (base / 2) * this.#random());
  }
}
