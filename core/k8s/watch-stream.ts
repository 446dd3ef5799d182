import { AmbitError } from '../errors/index.js';
import type { KubeObject, KubeStatus } from './types.js';
import { LineSplitter } from '../lines/index.js';
import { ListItemSplitter } from './list-stream.js';

/**
 * The longest watch line the reflector holds: one object of the largest kind it watches, with room. A server (or a
 * man in the middle with a stolen CA) that sends an endless line must not grow the heap until the process dies.
 */
export const MAX_WATCH_LINE_BYTES = 16 * 1024 * 1024;

/** A splitter for one watch's lines: at most MAX_WATCH_LINE_BYTES of an unfinished one. */
export function watchLineSplitter(maxLength = MAX_WATCH_LINE_BYTES): LineSplitter {
  return new LineSplitter({ maxLength, code: 'K8S_WATCH_LINE_TOO_LONG', what: 'a watch line' });
}

/** One decoded watch event: an object change, a bookmark (only a position), or an ERROR with its Status. */
export type WatchEvent =
  | { type: 'ADDED' | 'MODIFIED' | 'DELETED'; object: KubeObject }
  | { type: 'BOOKMARK'; resourceVersion: string }
  | { type: 'ERROR'; status: KubeStatus };

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The object's metadata as the reflector needs it (a name and a resourceVersion, both strings), or a refusal naming
 * what is missing: an object without a resourceVersion would move the watch position nowhere, or backwards.
 */
export function checkObject(value: unknown, where: string): KubeObject {
  if (!isRecord(value) || !isRecord(value.metadata)) {
    throw new AmbitError('K8S_BAD_OBJECT', `${where}: the object has no metadata`);
  }
  const { name, namespace, resourceVersion } = value.metadata;
  if (typeof name !== 'string' || name === '') throw new AmbitError('K8S_BAD_OBJECT', `${where}: metadata.name is missing`);
  if (namespace !== undefined && typeof namespace !== 'string') {
    throw new AmbitError('K8S_BAD_OBJECT', `${where}: metadata.namespace of ${name} is not a string`);
  }
  if (typeof resourceVersion !== 'string' || resourceVersion === '') {
    throw new AmbitError('K8S_BAD_OBJECT', `${where}: metadata.resourceVersion of ${name} is missing`);
  }
  return value as KubeObject;
}

/** A Status object's code, reason and message, as far as the server gave them. */
export function statusOf(value: unknown): KubeStatus {
  const record = isRecord(value) ? value : {};
  return {
    code: typeof record.code === 'number' ? record.code : 0,
    reason: typeof record.reason === 'string' ? record.reason : '',
    message: typeof record.message === 'string' ? record.message : '',
    causes: causesOf(record.details),
  };
}

function causesOf(details: unknown): string[] {
  const causes = isRecord(details) && Array.isArray(details.causes) ? (details.causes as unknown[]) : [];
  return causes.flatMap((cause) => (isRecord(cause) && typeof cause.reason === 'string' ? [cause.reason] : []));
}

/** Decodes one watch line; a line that is not a watch event is refused, since the position after it is unknown. */
export function decodeWatchLine(line: string): WatchEvent {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch (err) {
    throw new AmbitError('K8S_BAD_WATCH_EVENT', 'a watch line is not JSON', { cause: err });
  }
  if (!isRecord(parsed)) throw new AmbitError('K8S_BAD_WATCH_EVENT', 'a watch line is not a JSON object');
  const { type, object } = parsed;
  switch (type) {
    case 'ADDED':
    case 'MODIFIED':
    case 'DELETED':
      return { type, object: checkObject(object, `watch event ${type}`) };
    case 'BOOKMARK': {
      const metadata = isRecord(object) && isRecord(object.metadata) ? object.metadata : {};
      if (typeof metadata.resourceVersion !== 'string' || metadata.resourceVersion === '') {
        throw new AmbitError('K8S_BAD_WATCH_EVENT', 'a BOOKMARK has no metadata.resourceVersion');
      }
      return { type, resourceVersion: metadata.resourceVersion };
    }
    case 'ERROR':
      return { type, status: statusOf(object) };
    default:
      throw new AmbitError('K8S_BAD_WATCH_EVENT', `unknown watch event type ${JSON.stringify(type)}`);
  }
}

/**
 * The longest list response read: far past a whole watch-cache list of the largest cluster Kubernetes supports
 * (150k pods of ~6 KB: 900 MB, in one page at RV=0), which is read item by item and never held whole; a server that
 * never ends its list must not grow the heap until the process dies.
 */
export const MAX_LIST_BYTES = 4 * 1024 * 1024 * 1024;

/** The parts of a list response the reflector uses: its items, its resourceVersion, its continue token. */
export interface ListPage<T = KubeObject> {
  items: T[];
  resourceVersion: string;
  continueToken: string | undefined;
}

/**
 * Decodes one page of a list as its bytes arrive: each item is parsed, checked and handed to `transform` on its own
 * (what the reader keeps of it), so the page's objects are never all held at once. A malformed item refuses the page
 * (the consumer must not see half a state).
 */
export class ListPageDecoder<T = KubeObject> {
  readonly #splitter: ListItemSplitter;
  readonly #transform: (object: KubeObject) => T;
  readonly #items: T[] = [];
  readonly #maxListBytes: number;
  #bytes = 0;

  constructor(transform: (object: KubeObject) => T, options: { maxItemBytes?: number; maxListBytes?: number } = {}) {
    this.#transform = transform;
    this.#splitter = new ListItemSplitter({ maxItemBytes: options.maxItemBytes ?? MAX_WATCH_LINE_BYTES });
    this.#maxListBytes = options.maxListBytes ?? MAX_LIST_BYTES;
  }

  push(chunk: Buffer): void {
    this.#bytes += chunk.length;
    if (this.#bytes > this.#maxListBytes) throw new AmbitError('K8S_RESPONSE_TOO_LARGE', `the list response is longer than ${this.#maxListBytes} bytes`);
    for (const text of this.#splitter.push(chunk)) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        throw new AmbitError('K8S_BAD_LIST', `list item ${this.#items.length} is not JSON`, { cause: err });
      }
      this.#items.push(this.#transform(checkObject(parsed, `list item ${this.#items.length}`)));
    }
  }

  end(): ListPage<T> {
    const envelope = this.#splitter.end();
    const metadata = envelope.metadata;
    if (!Array.isArray(envelope.items) || !isRecord(metadata)) throw new AmbitError('K8S_BAD_LIST', 'the list response has no items or no metadata');
    if (envelope.items.length > 0) throw new AmbitError('K8S_BAD_LIST', 'a list item is not an object');
    const { resourceVersion } = metadata;
    const token = metadata.continue;
    if (typeof resourceVersion !== 'string' || resourceVersion === '') {
      throw new AmbitError('K8S_BAD_LIST', 'the list response has no metadata.resourceVersion');
    }
    if (token !== undefined && typeof token !== 'string') throw new AmbitError('K8S_BAD_LIST', 'metadata.continue is not a string');
    return { items: this.#items, resourceVersion, continueToken: token === '' ? undefined : token };
  }
}

/** Decodes one whole page of a list (ListPageDecoder, in one piece). */
export function decodeListPage(body: string): ListPage {
  const decoder = new ListPageDecoder((object) => object);
  decoder.push(Buffer.from(body));
  return decoder.end();
}
