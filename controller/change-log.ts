import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { changeKey, MAX_MESSAGE_BYTES, SNAPSHOT_CHUNK, type StreamChange } from '../core/stream/index.js';

/** How many versions back an agent can resume from; one that is further behind gets a snapshot. */
export const DEFAULT_HISTORY_VERSIONS = 10_000;

/** One version: the changes that made it. */
export interface Delta {
  readonly version: number;
  readonly changes: readonly StreamChange[];
}

interface Held {
  readonly change: StreamChange & { op: 'upsert' };
  /** The change as JSON: what a repeat is compared with, and its size on the wire. */
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
  readonly #maxMessageBytes: number;

  /** `maxMessageBytes`: the most JSON of changes one delta, or one chunk of a snapshot, carries. */
  constructor(options: { historyVersions?: number; maxMessageBytes?: number } = {}) {
    super();
    // one listener per streaming agent: thousands are normal
    this.setMaxListeners(0);
    this.#historyVersions = options.historyVersions ?? DEFAULT_HISTORY_VERSIONS;
    this.#maxMessageBytes = options.maxMessageBytes ?? MAX_MESSAGE_BYTES;
  }

  get version(): number {
    return this.#version;
  }

  /** How many records are held. */
  get size(): number {
    return this.#records.size;
  }

  /**
   * Applies changes in order; those that change a record make new versions, one `delta` event each: one version,
   * unless their JSON passes maxMessageBytes (a relist of a big cluster), when they are cut into consecutive
   * versions of at most that much each, so that no line of the stream outgrows what an agent reads. Each version is
   * a state the cluster could have been in: changes to single records, in the order they came. Returns the deltas
   * (none when nothing changed).
   */
  apply(changes: readonly StreamChange[]): Delta[] {
    const deltas: Delta[] = [];
    let batch: StreamChange[] = [];
    let bytes = 0;
    const cut = () => {
      if (batch.length === 0) return;
      this.#version += 1;
      const delta: Delta = { version: this.#version, changes: batch };
      this.#history.push(delta);
      deltas.push(delta);
      batch = [];
      bytes = 0;
    };
    for (const change of changes) {
      const key = changeKey(change);
      let size: number;
      if (change.op === 'delete') {
        if (!this.#records.delete(key)) continue;
        size = Buffer.byteLength(JSON.stringify(change));
      } else {
        const fingerprint = JSON.stringify(change);
        if (this.#records.get(key)?.fingerprint === fingerprint) continue;
        this.#records.set(key, { change, fingerprint });
        size = Buffer.byteLength(fingerprint);
      }
      if (bytes + size > this.#maxMessageBytes) cut();
      batch.push(change);
      bytes += size + 1;
    }
    cut();
    if (this.#history.length > this.#historyVersions) this.#history.splice(0, this.#history.length - this.#historyVersions);
    for (const delta of deltas) this.emit('delta', delta);
    return deltas;
  }

  /** Every record now, as the upserts of a snapshot. */
  snapshot(): Array<StreamChange & { op: 'upsert' }> {
    return [...this.#records.values()].map((held) => held.change);
  }

  /**
   * Every record now, in the chunks of a snapshot's `records` lines: at most SNAPSHOT_CHUNK records and
   * maxMessageBytes of JSON each (a chunk holds one record at least, however big).
   */
  snapshotChunks(): Array<Array<StreamChange & { op: 'upsert' }>> {
    const chunks: Array<Array<StreamChange & { op: 'upsert' }>> = [];
    let chunk: Array<StreamChange & { op: 'upsert' }> = [];
    let bytes = 0;
    for (const held of this.#records.values()) {
      const size = Buffer.byteLength(held.fingerprint) + 1;
      if (chunk.length > 0 && (chunk.length === SNAPSHOT_CHUNK || bytes + size > this.#maxMessageBytes)) {
        chunks.push(chunk);
        chunk = [];
        bytes = 0;
      }
      chunk.push(held.change);
      bytes += size;
    }
    if (chunk.length > 0) chunks.push(chunk);
    return chunks;
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
