import type { ServerResponse } from 'node:http';
import type { SetTimer } from '../../core/timer/index.js';
import { apiVersionOf } from './resources.js';
import type { FieldSelector, LabelSelector } from './selectors.js';
import { labelsOf } from './selectors.js';
import type { StatusError } from './status.js';
import { keyOf } from './store.js';
import { child, str, type JsonObject, type ResourceType, type StoreEvent, type WatchEventType } from './types.js';

export interface WatchFilter {
  readonly type: ResourceType;
  /** undefined: every namespace. */
  readonly namespace: string | undefined;
  readonly labels: LabelSelector;
  readonly fields: FieldSelector;
}

export interface WatchStreamOptions {
  readonly filter: WatchFilter;
  readonly bookmarks: boolean;
  readonly bookmarkIntervalMs: number;
  /** The server's end of the stream (`timeoutSeconds`), undefined for none. */
  readonly timeoutMs: number | undefined;
  readonly timer: SetTimer;
  /** The store's resourceVersion now: what a bookmark carries. */
  readonly currentRv: () => number;
  readonly onClose: () => void;
}

/**
 * The lines of one store event, by the type a watcher sees it as (ADDED, MODIFIED or DELETED, by its selector):
 * each is serialised once, however many watchers take it, so that the fan-out of a change costs a write per watcher.
 */
export class EventLines {
  readonly #event: StoreEvent;
  readonly #lines = new Map<WatchEventType, Buffer>();

  constructor(event: StoreEvent) {
    this.#event = event;
  }

  get event(): StoreEvent {
    return this.#event;
  }

  line(type: WatchEventType): Buffer {
    let line = this.#lines.get(type);
    if (line === undefined) this.#lines.set(type, (line = encodeLine(type, this.#event.object)));
    return line;
  }
}

function encodeLine(type: WatchEventType, object: JsonObject): Buffer {
  return Buffer.from(`${JSON.stringify({ type, object })}\n`);
}

/**
 * One open watch: compact JSON lines on a chunked response, filtered by the watcher's selectors. An object that
 * stops matching is sent as DELETED and one that starts matching as ADDED, as the real server's watch cache does,
 * so a client's cache holds exactly what its selector selects.
 */
export class WatchStream {
  readonly #res: ServerResponse;
  readonly #options: WatchStreamOptions;
  readonly #cancels: (() => void)[] = [];
  #stalled = false;
  #closed = false;

  constructor(res: ServerResponse, options: WatchStreamOptions) {
    this.#res = res;
    this.#options = options;
    res.on('close', () => this.close());
    if (options.timeoutMs !== undefined) this.#cancels.push(options.timer(() => this.close(), options.timeoutMs));
    if (options.bookmarks) this.#scheduleBookmark();
  }

  get bookmarks(): boolean {
    return this.#options.bookmarks;
  }

  get resourceType(): ResourceType {
    return this.#options.filter.type;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Sends what an event means to this watcher, if anything; `lines` is shared by every watcher of the event. */
  deliver(lines: EventLines): void {
    const { event } = lines;
    const { filter } = this.#options;
    if (event.key !== keyOf(filter.type)) return;
    const now = this.#matches(event.object);
    if (event.type === 'MODIFIED') {
      const before = event.previous !== undefined && this.#matches(event.previous);
      if (now && before) this.#write(lines.line('MODIFIED'));
      else if (now) this.#write(lines.line('ADDED'));
      else if (before) this.#write(lines.line('DELETED'));
    } else if (now) {
      this.#write(lines.line(event.type));
    }
  }

  /** The synthetic ADDED of a watch from resourceVersion 0 (or none): the current objects first. */
  sendInitial(objects: readonly JsonObject[]): void {
    for (const object of objects) if (this.#matches(object)) this.#send('ADDED', object);
  }

  sendBookmark(): void {
    const { type } = this.#options.filter;
    this.#send('BOOKMARK', { kind: type.kind, apiVersion: apiVersionOf(type), metadata: { resourceVersion: String(this.#options.currentRv()) } });
  }

  /** An ERROR event with `status` (410 Expired for the reflector), then the end of the stream, as the real server. */
  fail(status: StatusError): void {
    this.sendError(status);
    this.close();
  }

  /** An ERROR event with `status`, the stream left open. */
  sendError(status: StatusError): void {
    this.#send('ERROR', status.toStatus());
  }

  /** Keeps the connection open but sends nothing more: a watch that hangs without an error. */
  stall(): void {
    this.#stalled = true;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const cancel of this.#cancels) cancel();
    this.#cancels.length = 0;
    if (!this.#res.writableEnded) this.#res.end();
    this.#options.onClose();
  }

  #matches(object: JsonObject): boolean {
    const { filter } = this.#options;
    if (filter.namespace !== undefined && str(child(object, 'metadata').namespace) !== filter.namespace) return false;
    return filter.labels.matches(labelsOf(object)) && filter.fields.matches(object);
  }

  #send(type: WatchEventType, object: JsonObject): void {
    if (this.#closed || this.#stalled) return;
    this.#write(encodeLine(type, object));
  }

  #write(line: Buffer): void {
    if (this.#closed || this.#stalled) return;
    this.#res.write(line);
  }

  #scheduleBookmark(): void {
    const cancel = this.#options.timer(() => {
      this.#cancels.splice(this.#cancels.indexOf(cancel), 1);
      if (this.#closed) return;
      this.sendBookmark();
      this.#scheduleBookmark();
    }, this.#options.bookmarkIntervalMs);
    this.#cancels.push(cancel);
  }
}
