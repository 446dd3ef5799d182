import type { Duplex } from 'node:stream';
import { abortStream } from './proxy.js';
import type { ConnectionTracker } from './types.js';

/** How long a connection being closed gets to finish its FIN exchange before it is torn down. */
export const CLOSE_GRACE_MS = 1_000;

/** What a tracked connection answers when asked whether policy still allows it; undefined: not a policy matter. */
export type Reauthorize<T> = () => T | undefined;

interface Tracked<T> {
  readonly ends: readonly Duplex[];
  readonly reauthorize: Reauthorize<T> | undefined;
}

export interface ConnectionRegistryOptions<T> {
  /** Judges an answer of `Reauthorize`: true closes the connection. */
  isDenied: (answer: T) => boolean;
  /** Told of the answers that closed connections, to log and count them. */
  onRevoked: (answers: T[]) => void;
}

/**
 * The connections the agent carries, by the pod IPs at their ends, so that a pod leaving the mesh (a relabel, an
 * opt-out) loses the connections the mesh was carrying for it, and a policy change reaches open connections too.
 */
export class ConnectionRegistry<T = unknown> implements ConnectionTracker<T> {
  readonly #byIp = new Map<string, Set<Tracked<T>>>();
  readonly #all = new Set<Tracked<T>>();
  readonly #options: ConnectionRegistryOptions<T>;
  /** Counts the revalidations and closes: a connection decided at an older count missed one while it connected. */
  #epoch = 0;

  constructor(options: ConnectionRegistryOptions<T>) {
    this.#options = options;
  }

  /**
   * Where the registry is now, for a connection to note when it is decided: passed back to `track`, it tells whether
   * a revalidation or a close ran while the connection was still connecting to its upstream, and so missed it.
   */
  get epoch(): number {
    return this.#epoch;
  }

  /**
   * Registers a carried connection under its end IPs; returns the function that forgets it (on close). When it was
   * decided (`decidedAt`, an `epoch`) before a revalidation or a close that it was not yet there for, it is asked
   * again at once: a DENY or a pod that left the mesh while it connected must not leave it open until the next change.
   */
  track(ips: readonly string[], ends: readonly Duplex[], reauthorize?: Reauthorize<T>, decidedAt?: number): () => void {
    const tracked: Tracked<T> = { ends, reauthorize };
    const unique = [...new Set(ips.filter((ip) => ip !== ''))];
    this.#all.add(tracked);
    for (const ip of unique) {
      let set = this.#byIp.get(ip);
      if (set === undefined) this.#byIp.set(ip, (set = new Set()));
      set.add(tracked);
    }
    if (reauthorize !== undefined && decidedAt !== undefined && decidedAt !== this.#epoch) {
      const answer = reauthorize();
      // No answer: an end is no longer an enrolled pod of this node, which the reconcile's closeFor would have closed.
      if (answer === undefined) this.#closeCleanly(tracked);
      else if (this.#options.isDenied(answer)) {
        for (const end of ends) abortStream(end);
        this.#options.onRevoked([answer]);
      }
    }
    return () => {
      this.#all.delete(tracked);
      for (const ip of unique) {
        const set = this.#byIp.get(ip);
        set?.delete(tracked);
        if (set?.size === 0) this.#byIp.delete(ip);
      }
    };
  }

  /** How many connections have an end at `ip`. */
  count(ip: string): number {
    return this.#byIp.get(ip)?.size ?? 0;
  }

  get size(): number {
    return this.#all.size;
  }

  /**
   * Closes every connection with an end at one of `ips` cleanly: both ends are ended (FIN, END_STREAM), so each
   * peer reads the end of its stream rather than a reset; whatever has not closed after CLOSE_GRACE_MS is destroyed.
   * Returns how many connections it closed.
   */
  closeFor(ips: Iterable<string>): number {
    this.#epoch++;
    const closing = new Set<Tracked<T>>();
    for (const ip of ips) for (const tracked of this.#byIp.get(ip) ?? []) closing.add(tracked);
    for (const tracked of closing) this.#closeCleanly(tracked);
    return closing.size;
  }

  #closeCleanly({ ends }: Tracked<T>): void {
    for (const end of ends) if (!end.destroyed) end.end();
    setTimeout(() => {
      for (const end of ends) if (!end.destroyed) end.destroy();
    }, CLOSE_GRACE_MS).unref();
  }

  /**
   * Asks every open connection whether it is still allowed, judged by `isDenied`. A connection that is not is reset
   * at both ends at once (access revoked: no grace for bytes in flight); `onRevoked` hears of those. Returns the
   * answers that closed one.
   */
  revalidate(): T[] {
    this.#epoch++;
    const revoked: T[] = [];
    for (const tracked of this.#all) {
      const answer = tracked.reauthorize?.();
      if (answer === undefined || !this.#options.isDenied(answer)) continue;
      revoked.push(answer);
      for (const end of tracked.ends) abortStream(end);
    }
    if (revoked.length > 0) this.#options.onRevoked(revoked);
    return revoked;
  }
}
