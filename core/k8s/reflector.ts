import type { Registry } from 'prom-client';
import { AmbitError, isAmbitError } from '../errors/index.js';
import type { Logger } from '../log/index.js';
import { Backoff, DEFAULT_BACKOFF, realTimer, type BackoffOptions, type SetTimer } from '../timer/index.js';
import { ApiStatusError, KubeApi, statusError, type KubeCredentials } from './api.js';
import { ReflectorMetrics, type RelistReason, type RewatchReason } from './metrics.js';
import { checkCollectionPath, DEFAULT_PAGE_SIZE, listQuery, watchQuery, watchTimeoutSeconds, type Selectors } from './query.js';
import type { KubeObject } from './types.js';
import { decodeWatchLine, ListPageDecoder, watchLineSplitter, type WatchEvent } from './watch-stream.js';

/**
 * What a reflector feeds. After every list, one `replace` with the whole state (what is not in it was deleted while
 * the reflector was not watching); then one call per watch event. The consumer decides what to keep; a callback
 * that throws makes the reflector list again (after a backoff), so the consumer is handed a whole state once more.
 */
export interface ReflectorConsumer<T = KubeObject> {
  replace(items: T[], resourceVersion: string): void;
  added(object: T): void;
  modified(object: T): void;
  deleted(object: T): void;
}

export interface ReflectorOptions<T = KubeObject> extends Selectors {
  kubeConfig: KubeCredentials;
  /** The kind, for metrics (label `kind`) and logs; one reflector a kind a registry. */
  kind: string;
  /** The collection, e.g. `/api/v1/pods` or `/api/v1/namespaces/demo/services`. */
  path: string;
  consumer: ReflectorConsumer<T>;
  /**
   * What the consumer gets of each object, applied as each one is read (client-go's TransformFunc): a list's raw
   * objects are then never all held at once, only what this keeps of them. Without it, the objects themselves.
   */
  transform?: (object: KubeObject) => T;
  log: Logger;
  registry: Registry;
  pageSize?: number;
  /**
   * A watch silent this long (no byte, no bookmark) is dead and opened again; default BOOKMARK_STALL_MS once a
   * bookmark has been heard, WATCH_STALL_GRACE_MS past the watch's timeout before.
   */
  stallTimeoutMs?: number;
  /** A list response silent this long is abandoned and the list retried. */
  listTimeoutMs?: number;
  backoff?: BackoffOptions;
  setTimer?: SetTimer;
  now?: () => number;
  /** In [0, 1): draws the watch timeouts and the backoff's jitter. */
  random?: () => number;
}

/**
 * How long past the timeoutSeconds it asked for a watch may stay silent: the server ends the watch at its timeout,
 * so silence beyond it (and a slow close) means a dead connection that TCP may not notice for many minutes.
 */
export const WATCH_STALL_GRACE_MS = 30_000;
/**
 * Once this reflector has heard a bookmark, how long a watch may stay silent: the API server's watch cache sends a
 * watch that allows bookmarks one about every minute (its bookmarkFrequency), with or without events, so silence past
 * a minute and a half is a dead connection, noticed in 90 s rather than at the end of a 300–600 s timeout. A server
 * that has sent none (no watch cache for the kind) keeps the timeout-based deadline, and its quiet watches are left be.
 */
export const BOOKMARK_STALL_MS = 90_000;
/** How long a list response may send nothing: a list from the watch cache starts at once, one from etcd in seconds. */
export const LIST_TIMEOUT_MS = 60_000;
/** A list at a resourceVersion newer than the server's watch cache: 504 with the cause ResourceVersionTooLarge. */
function isTooLargeResourceVersion(err: ApiStatusError): boolean {
  return err.status === 504 && (err.apiStatus.causes.includes('ResourceVersionTooLarge') || err.apiStatus.message.includes('Too large resource version'));
}

/** client-go's rule: a watch that ends within a second with nothing in it is a failure (backoff), not a normal close. */
const SHORT_WATCH_MS = 1000;

/** What to do next: list (why), or watch from the position held (why it is a watch again, if it is). */
type Next = { list: RelistReason; delayMs: number } | { watch: RewatchReason | 'listed'; delayMs: number } | undefined;

/**
 * List, then watch, of one kind of object, for as long as it runs: a watch that ends is opened again from the last
 * resourceVersion; a 410 (history gone, as an HTTP status or an ERROR event) lists again at once; any other failure
 * is logged once and retried after a backoff. It never stops on its own. client-node's ListWatch is not used: it
 * stops for good on any error but a 410, never times out a dead watch, asks for no bookmarks, waits for the server
 * to close a stream after an in-stream 410, and lists without pages or selectors (see the issue 13 note).
 */
export class Reflector<T = KubeObject> {
  readonly #api: KubeApi;
  readonly #kind: string;
  readonly #path: string;
  readonly #selectors: Selectors;
  readonly #consumer: ReflectorConsumer<T>;
  readonly #transform: (object: KubeObject) => T;
  readonly #log: Logger;
  readonly #metrics: ReflectorMetrics;
  readonly #pageSize: number;
  readonly #stallTimeoutMs: number | undefined;
  readonly #listTimeoutMs: number;
  readonly #backoff: Backoff;
  readonly #setTimer: SetTimer;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #stop = new AbortController();
  #running: Promise<void> | undefined;
  #cancelSleep: (() => void) | undefined;
  #resourceVersion: string | undefined;
  /** The server refused a list at the position held: lists are quorum reads until one succeeds. */
  #positionUnavailable = false;
  #synced = false;
  #syncWaiters: { resolve: () => void; reject: (err: Error) => void }[] = [];
  #lastHeardAt: number;
  /** When the list or watch began failing with no success since; undefined while healthy. */
  #failingSince: number | undefined;
  /** Whether a watch of this reflector has had a bookmark: from then on, one a minute is expected. */
  #bookmarksHeard = false;
  /** Events since the last list, and why that list was made: a 410 right after a 410's relist backs off. */
  #eventsSinceList = 0;
  #lastListReason: RelistReason = 'initial';

  constructor(options: ReflectorOptions<T>) {
    if (!/^[A-Za-z][A-Za-z0-9.]*$/.test(options.kind)) {
      throw new AmbitError('K8S_BAD_REFLECTOR', `reflector kind ${JSON.stringify(options.kind)} is not a kind name (like Pod)`);
    }
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
    for (const [name, value] of [['pageSize', pageSize], ['stallTimeoutMs', options.stallTimeoutMs], ['listTimeoutMs', options.listTimeoutMs]] as const) {
      if (value !== undefined && !(Number.isInteger(value) && value > 0)) {
        throw new AmbitError('K8S_BAD_REFLECTOR', `reflector ${options.kind}: ${name} must be a positive integer, got ${value}`);
      }
    }
    this.#path = checkCollectionPath(options.path);
    this.#api = new KubeApi(options.kubeConfig);
    this.#kind = options.kind;
    this.#selectors = { labelSelector: options.labelSelector, fieldSelector: options.fieldSelector };
    this.#consumer = options.consumer;
    this.#transform = options.transform ?? ((object) => object as T);
    this.#pageSize = pageSize;
    this.#stallTimeoutMs = options.stallTimeoutMs;
    this.#listTimeoutMs = options.listTimeoutMs ?? LIST_TIMEOUT_MS;
    this.#setTimer = options.setTimer ?? realTimer;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#backoff = new Backoff(options.backoff ?? DEFAULT_BACKOFF, this.#random);
    this.#lastHeardAt = this.#now();
    this.#log = options.log.child({ component: 'reflector', kind: options.kind, path: options.path, ...this.#selectors });
    this.#metrics = new ReflectorMetrics(
      options.registry,
      options.kind,
      () => (this.#now() - this.#lastHeardAt) / 1000,
      () => this.failingForMs / 1000,
    );
  }

  /** Starts listing and watching; a second call does nothing. */
  start(): void {
    if (this.#running !== undefined || this.#stop.signal.aborted) return;
    this.#log.info({ server: this.#api.server }, 'reflector starting');
    this.#running = this.#run();
  }

  /** Whether a list has been handed to the consumer: from then on it holds a whole state. */
  get synced(): boolean {
    return this.#synced;
  }

  /** The position: the resourceVersion of the last list, event or bookmark. */
  get resourceVersion(): string | undefined {
    return this.#resourceVersion;
  }

  /**
   * How long the list or watch has failed with no success in between (a list that came whole, a watch that opened);
   * 0 while healthy. A 410 or a watch the server ended is no failure.
   */
  get failingForMs(): number {
    return this.#failingSince === undefined ? 0 : this.#now() - this.#failingSince;
  }

  /** Resolves once synced; rejects if the reflector is stopped first. */
  whenSynced(): Promise<void> {
    if (this.#synced) return Promise.resolve();
    if (this.#stop.signal.aborted) return Promise.reject(this.#stoppedError());
    return new Promise((resolve, reject) => this.#syncWaiters.push({ resolve, reject }));
  }

  /** Stops: aborts the request in flight and the timer waited on, and resolves when nothing is left open. */
  async stop(): Promise<void> {
    if (!this.#stop.signal.aborted) {
      this.#stop.abort();
      this.#cancelSleep?.();
      for (const waiter of this.#syncWaiters.splice(0)) waiter.reject(this.#stoppedError());
    }
    await this.#running;
    this.#metrics.close();
  }

  #stoppedError(): AmbitError {
    return new AmbitError('K8S_REFLECTOR_STOPPED', `the ${this.#kind} reflector was stopped before it synced`);
  }

  async #run(): Promise<void> {
    let next: Next = { list: 'initial', delayMs: 0 };
    while (next !== undefined && !this.#stop.signal.aborted) {
      if (next.delayMs > 0) await this.#sleep(next.delayMs);
      if (this.#stop.signal.aborted) break;
      if ('list' in next) {
        next = await this.#listStep(next.list);
      } else {
        if (next.watch !== 'listed') this.#metrics.rewatch(next.watch);
        next = await this.#watchStep();
      }
    }
    this.#log.info({ resourceVersion: this.#resourceVersion }, 'reflector stopped');
  }

  async #listStep(reason: RelistReason): Promise<Next> {
    this.#metrics.relist(reason);
    this.#lastListReason = reason;
    try {
      await this.#list();
      return { watch: 'listed', delayMs: 0 };
    } catch (err) {
      if (this.#stop.signal.aborted) return undefined;
      if (isAmbitError(err, 'K8S_CONTINUE_EXPIRED')) {
        // At once, unless this list was itself a retry for a 410: a server that expires every token gets a backoff.
        const delayMs = reason === 'expired' ? this.#backoff.failed(this.#now()) : 0;
        this.#log.info({ reason: err.code, retryInMs: delayMs }, 'list pages expired (410 on continue), listing again from the first page');
        return { list: 'expired', delayMs };
      }
      const delayMs = this.#backoff.failed(this.#now());
      this.#logFailure('list failed', err, delayMs);
      const again: RelistReason = isAmbitError(err, 'K8S_STALLED') ? 'stalled' : isAmbitError(err, 'K8S_CONSUMER_FAILED') ? 'consumer' : 'error';
      return { list: again, delayMs };
    }
  }

  async #watchStep(): Promise<Next> {
    try {
      const end = await this.#watch();
      if (end === 'closed') return { watch: 'closed', delayMs: 0 };
      return this.#expired();
    } catch (err) {
      if (this.#stop.signal.aborted) return undefined;
      if (err instanceof ApiStatusError && err.status === 410) return this.#expired();
      if (isAmbitError(err, 'K8S_STALLED')) {
        this.#logFailure('watch stalled, opening it again', err, 0);
        return { watch: 'stalled', delayMs: 0 };
      }
      const delayMs = this.#backoff.failed(this.#now());
      if (isAmbitError(err, 'K8S_CONSUMER_FAILED')) {
        this.#logFailure('the consumer failed on a watch event, listing again', err, delayMs);
        return { list: 'consumer', delayMs };
      }
      this.#logFailure('watch failed', err, delayMs);
      return { watch: 'error', delayMs };
    }
  }

  /** The watch history is gone: list again, at once unless the last list was for a 410 too and nothing came since. */
  #expired(): Next {
    const delayMs = this.#lastListReason === 'expired' && this.#eventsSinceList === 0 ? this.#backoff.failed(this.#now()) : 0;
    this.#log.info({ resourceVersion: this.#resourceVersion, retryInMs: delayMs }, 'watch history expired (410), listing again');
    return { list: 'expired', delayMs };
  }

  #healthy(): void {
    this.#backoff.healthy(this.#now());
    this.#failingSince = undefined;
  }

  /** One line a failure: what failed, its stable code and message, the retry; never the request (it holds the token). */
  #logFailure(message: string, err: unknown, retryInMs: number): void {
    this.#failingSince ??= this.#now();
    const code = isAmbitError(err) ? err.code : typeof err === 'object' && err !== null && 'code' in err ? String(err.code) : undefined;
    const status = err instanceof ApiStatusError ? err.status : undefined;
    this.#log.warn({ reason: code, status, error: err instanceof Error ? err.message : String(err), resourceVersion: this.#resourceVersion, retryInMs }, message);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const cancel = this.#setTimer(() => {
        this.#cancelSleep = undefined;
        resolve();
      }, ms);
      this.#cancelSleep = () => {
        cancel();
        this.#cancelSleep = undefined;
        resolve();
      };
    });
  }

  /**
   * Runs one request under a deadline on silence: `touch` pushes it back, and past `idleMs` without one the request
   * is aborted with K8S_STALLED. Stopping the reflector aborts it too. One timer per deadline, re-armed for what is
   * left when it fires early, rather than one timer per chunk.
   */
  async #attempt<T>(idleMs: number, what: string, run: (signal: AbortSignal, touch: () => void) => Promise<T>): Promise<T> {
    const attempt = new AbortController();
    const onStop = (): void => attempt.abort(this.#stop.signal.reason);
    this.#stop.signal.addEventListener('abort', onStop, { once: true });
    let last = this.#now();
    let cancelTimer: () => void = () => undefined;
    const arm = (delayMs: number): void => {
      cancelTimer = this.#setTimer(() => {
        const silent = this.#now() - last;
        if (silent >= idleMs) {
          attempt.abort(new AmbitError('K8S_STALLED', `${what} sent nothing for ${Math.round(silent / 1000)} s`));
        } else {
          arm(idleMs - silent);
        }
      }, delayMs);
    };
    arm(idleMs);
    try {
      return await run(attempt.signal, () => {
        last = this.#now();
      });
    } catch (err) {
      throw attempt.signal.aborted ? attempt.signal.reason : err;
    } finally {
      cancelTimer();
      this.#stop.signal.removeEventListener('abort', onStop);
    }
  }

  /**
   * The resourceVersion a list asks for (client-go's relistResourceVersion): `0` for the first, then the position
   * held (a state not older than what the consumer has seen), or unset when that position was refused.
   */
  #listResourceVersion(): string {
    if (this.#positionUnavailable) return '';
    return this.#resourceVersion ?? '0';
  }

  /**
   * Lists every page, then hands the whole state to the consumer. A relist at the position held that the server
   * refuses (504 ResourceVersionTooLarge: its cache is behind that position) is retried at once as a quorum read, and
   * the following lists stay quorum reads until one succeeds, as client-go's reflector does. (A 410 cannot come: a
   * list at a position without a limit is "not older than", which no compaction expires.)
   */
  async #list(): Promise<void> {
    const at = this.#listResourceVersion();
    let listed: { items: T[]; resourceVersion: string };
    try {
      listed = await this.#listPages(at);
    } catch (err) {
      if (at === '' || at === '0' || !(err instanceof ApiStatusError) || !isTooLargeResourceVersion(err)) throw err;
      this.#positionUnavailable = true;
      this.#log.info({ resourceVersion: at, status: err.status, error: err.message }, 'the server cannot list at the position held; listing with a quorum read');
      listed = await this.#listPages('');
    }
    const { items, resourceVersion } = listed;
    this.#call('replace', undefined, () => this.#consumer.replace(items, resourceVersion));
    this.#resourceVersion = resourceVersion;
    this.#positionUnavailable = false;
    this.#eventsSinceList = 0;
    this.#lastHeardAt = this.#now();
    this.#healthy();
    this.#log.info({ items: items.length, resourceVersion }, 'listed');
    if (!this.#synced) {
      this.#synced = true;
      for (const waiter of this.#syncWaiters.splice(0)) waiter.resolve();
    }
  }

  /** Every page of one list at `resourceVersion`, under the list's deadline on silence. */
  #listPages(resourceVersion: string): Promise<{ items: T[]; resourceVersion: string }> {
    return this.#attempt(this.#listTimeoutMs, `the list of ${this.#kind}`, async (signal, touch) => {
      const all: T[] = [];
      let token: string | undefined;
      for (;;) {
        touch();
        const { response, release } = await this.#api.get(this.#path, listQuery(this.#selectors, this.#pageSize, token, resourceVersion), signal);
        let page;
        try {
          if (response.statusCode !== 200) {
            const err = await statusError(response, `list ${this.#kind}`);
            if (err.status === 410 && token !== undefined) {
              throw new AmbitError('K8S_CONTINUE_EXPIRED', err.message, { cause: err });
            }
            throw err;
          }
          // item by item as the bytes come, each transformed at once (a list from the watch cache is one page)
          const decoder = new ListPageDecoder((object) => this.#call('list', object, () => this.#transform(object)));
          for await (const chunk of response as AsyncIterable<Buffer>) {
            touch();
            decoder.push(chunk);
          }
          page = decoder.end();
        } finally {
          release();
        }
        for (const item of page.items) all.push(item);
        if (page.continueToken === undefined) return { items: all, resourceVersion: page.resourceVersion };
        token = page.continueToken;
      }
    });
  }

  /** One watch from the position held, until it ends ('closed') or its history is gone ('expired'). */
  async #watch(): Promise<'closed' | 'expired'> {
    const resourceVersion = this.#resourceVersion;
    if (resourceVersion === undefined) throw new AmbitError('K8S_REFLECTOR_STATE', 'a watch needs the resourceVersion of a list');
    const timeoutSeconds = watchTimeoutSeconds(this.#random);
    const timeoutDeadlineMs = timeoutSeconds * 1000 + WATCH_STALL_GRACE_MS;
    const idleMs = this.#stallTimeoutMs ?? (this.#bookmarksHeard ? Math.min(BOOKMARK_STALL_MS, timeoutDeadlineMs) : timeoutDeadlineMs);
    const query = watchQuery(this.#selectors, resourceVersion, timeoutSeconds);
    return this.#attempt(idleMs, `the watch of ${this.#kind}`, async (signal, touch) => {
      const { response, release } = await this.#api.get(this.#path, query, signal);
      try {
        if (response.statusCode !== 200) throw await statusError(response, `watch ${this.#kind}`);
        touch();
        this.#healthy();
        const started = this.#now();
        const splitter = watchLineSplitter();
        let lines = 0;
        for await (const chunk of response as AsyncIterable<Buffer>) {
          touch();
          for (const line of splitter.push(chunk)) {
            lines += 1;
            if (this.#deliver(decodeWatchLine(line)) === 'expired') return 'expired';
          }
        }
        if (splitter.pending) throw new AmbitError('K8S_WATCH_CUT', 'the watch stream ended inside a line');
        if (lines === 0 && this.#now() - started < SHORT_WATCH_MS) {
          throw new AmbitError('K8S_WATCH_SHORT', 'the server ended the watch at once with nothing in it');
        }
        return 'closed';
      } finally {
        release();
      }
    });
  }

  /** Hands one event on and moves the position; an ERROR event ends the watch (a 410 at once, without the server). */
  #deliver(event: WatchEvent): 'expired' | undefined {
    this.#lastHeardAt = this.#now();
    switch (event.type) {
      case 'ERROR':
        this.#metrics.event('error');
        if (event.status.code === 410) return 'expired';
        throw new ApiStatusError(event.status.code, event.status, `watch ${this.#kind} (ERROR event)`);
      case 'BOOKMARK':
        this.#metrics.event('bookmark');
        this.#bookmarksHeard = true;
        this.#eventsSinceList += 1;
        this.#resourceVersion = event.resourceVersion;
        return undefined;
      case 'ADDED':
        this.#call(event.type, event.object, () => this.#consumer.added(this.#transform(event.object)));
        break;
      case 'MODIFIED':
        this.#call(event.type, event.object, () => this.#consumer.modified(this.#transform(event.object)));
        break;
      case 'DELETED':
        this.#call(event.type, event.object, () => this.#consumer.deleted(this.#transform(event.object)));
        break;
    }
    this.#metrics.event(event.type === 'ADDED' ? 'added' : event.type === 'MODIFIED' ? 'modified' : 'deleted');
    this.#eventsSinceList += 1;
    this.#resourceVersion = event.object.metadata.resourceVersion;
    return undefined;
  }

  #call<R>(what: string, object: KubeObject | undefined, callback: () => R): R {
    try {
      return callback();
    } catch (err) {
      const name = object === undefined ? '' : ` ${object.metadata.namespace ?? ''}/${object.metadata.name}`;
      throw new AmbitError('K8S_CONSUMER_FAILED', `the ${this.#kind} consumer failed on ${what}${name}: ${(err as Error).message}`, { cause: err });
    }
  }
}
