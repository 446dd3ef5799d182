import type { Duplex } from 'node:stream';

/** How long a connection being closed gets to finish its FIN exchange before it is torn down. */
export const CLOSE_GRACE_MS = 1_000;

interface Tracked {
  readonly ends: readonly Duplex[];
}

/**
 * The connections the agent carries, by the pod IPs at their ends, so that a pod leaving the mesh (a relabel, an
 * opt-out) loses the connections the mesh was carrying for it: their rules are gone, and traffic the mesh no longer
 * governs must not keep flowing through it.
 */
export class ConnectionRegistry {
  readonly #byIp = new Map<string, Set<Tracked>>();

  /** Registers a carried connection under its end IPs; returns the function that forgets it (on close). */
  track(ips: readonly string[], ends: readonly Duplex[]): () => void {
    const tracked: Tracked = { ends };
    const unique = [...new Set(ips.filter((ip) => ip !== ''))];
    for (const ip of unique) {
      let set = this.#byIp.get(ip);
      if (set === undefined) this.#byIp.set(ip, (set = new Set()));
      set.add(tracked);
    }
    return () => {
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

  /**
   * Closes every connection with an end at one of `ips` cleanly: both ends are ended (FIN, END_STREAM), so each
   * peer reads the end of its stream rather than a reset; whatever has not closed after CLOSE_GRACE_MS is destroyed.
   * Returns how many connections it closed.
   */
  closeFor(ips: Iterable<string>): number {
    const closing = new Set<Tracked>();
    for (const ip of ips) for (const tracked of this.#byIp.get(ip) ?? []) closing.add(tracked);
    for (const { ends } of closing) {
      for (const end of ends) if (!end.destroyed) end.end();
      setTimeout(() => {
        for (const end of ends) if (!end.destroyed) end.destroy();
      }, CLOSE_GRACE_MS).unref();
    }
    return closing.size;
  }
}
