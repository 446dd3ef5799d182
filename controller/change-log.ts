import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { changeKey, type StreamChange } from '../core/stream/index.js';

/** How many versions back an agent can resume from; one that is further behind gets a snapshot. */
export const DEFAULT_HISTORY_VERSIONS = 10_000;

/** One version: the changes that made it. */
export interface Delta {
  readonly version: number;
  readonly changes: readonly StreamChange[];
}

interface Held {
  readonly change: StreamChange & { op: 'upsert' };
  readonly fingerprint: string;
}

export interface ChangeLogEvents {
  delta: [Delta];
}

/**
 * What the controller streams: the current records, numbered by version, and the recent deltas. Every change goes
 * through `apply`, which drops what changes nothing an agent uses (an upsert equal to the record held: the
 * conversion has already left out status-only fields, so a restart count or a condition's timestamp ends here) and
 * gives the rest one new version. The epoch names this numbering; it is new in every process.
 */
export class ChangeLog extends EventEmitter<ChangeLogEvents> {
  readonly epoch: string = randomUUID();
  #version = 0;
  readonly #records = new Map<string, Held>();
  readonly #history: Delta[] = [];
  readonly #historyVersions: number;

  constructor(options: { historyVersions?: number } = {}) {
    super();
    // one listener per streaming agent: thousands are normal
    this.setMaxListeners(0);
    this.#historyVersions = options.historyVersions ?? DEFAULT_HISTORY_VERSIONS;
  }

  get version(): number {
    return this.#version;
  }

  /** How many records are held. */
  get size(): number {
    return this.#records.size;
  }

  /**
   * Applies changes in order; those that change a record make one new version and one `delta` event. Returns the
   * delta, or undefined when nothing changed.
   */
  apply(changes: readonly StreamChange[]): Delta | undefined {
    const effective: StreamChange[] = [];
    for (const change of changes) {
      const key = changeKey(change);
      if (change.op === 'delete') {
        if (this.#records.delete(key)) effective.push(change);
        continue;
      }
      const fingerprint = JSON.stringify(change);
      if (this.#records.get(key)?.fingerprint === fingerprint) continue;
      this.#records.set(key, { change, fingerprint });
      effective.push(change);
    }
    if (effective.length === 0) return undefined;
    this.#version += 1;
    const delta: Delta = { version: this.#version, changes: effective };
    this.#history.push(delta);
    if (this.#history.length > this.#historyVersions) this.#history.splice(0, this.#history.length - this.#historyVersions);
    this.emit('delta', delta);
    return delta;
  }

  /** Every record now, as the upserts of a snapshot. */
  snapshot(): Array<StreamChange & { op: 'upsert' }> {
    return [...this.#records.values()].map((held) => held.change);
  }

  /**
   * The deltas after `version` of `epoch`, for an agent that holds that state; undefined when this log cannot bring
   * it up to date (another epoch, a version it never had, or one older than its history): it needs a snapshot.
   */
  since(epoch: string, version: number): Delta[] | undefined {
    if (epoch !== this.epoch || !Number.isSafeInteger(version) || version < 0 || version > this.#version) return undefined;
    if (version === this.#version) return [];
    const oldest = this.#history[0];
    if (oldest === undefined || oldest.version > version + 1) return undefined;
    return this.#history.slice(version + 1 - oldest.version);
  }
}
