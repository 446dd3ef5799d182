/**
 * A clock and its timers (the `now` and `setTimer` that CertStore and HboneServer take), moved by the test: a
 * renewal due in twelve hours, or a deadline in thirty seconds, happens when the test says so.
 */
export class FakeTime {
  #now = Date.now();
  readonly #timers = new Set<{ at: number; callback: () => void }>();
  /** The delay of every timer set, in order. */
  readonly delays: number[] = [];

  readonly now = (): number => this.#now;

  readonly setTimer = (callback: () => void, delayMs: number): (() => void) => {
    const timer = { at: this.#now + delayMs, callback };
    this.#timers.add(timer);
    this.delays.push(delayMs);
    return () => this.#timers.delete(timer);
  };

  /** Timers set and neither fired nor cancelled. */
  get pending(): number {
    return this.#timers.size;
  }

  /** Moves the clock by `ms` and fires nothing: as when the process was suspended and its timers are late. */
  skip(ms: number): void {
    this.#now += ms;
  }

  /** Moves the clock by `ms`, firing each timer that falls due on the way, in order. */
  advance(ms: number): void {
    const until = this.#now + ms;
    for (;;) {
      const due = [...this.#timers].filter((timer) => timer.at <= until).sort((a, b) => a.at - b.at)[0];
      if (due === undefined) break;
      this.#timers.delete(due);
      this.#now = due.at;
      due.callback();
    }
    this.#now = until;
  }
}
