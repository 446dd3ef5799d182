import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { AmbitError, errnoCode } from '../errors/index.js';
import type { Logger } from '../log/index.js';
import { convertObject, InvalidObjectError } from './convert.js';
import { SerialRuns } from '../serial/index.js';
import { parseManifests } from './manifest-file.js';
import type { WorkloadStore } from './store.js';
import type { ConvertedObject, DiscoverySnapshot, EndpointSlice, NamespaceInfo, NodeInfo, PodInfo, Service } from './types.js';

export interface LocalSourceOptions {
  dir: string;
  store: WorkloadStore;
  log: Logger;
  /** Quiet time after the last change on disk before reloading; a burst of writes costs one reload. */
  debounceMs?: number;
  /** Kinds other programs keep (policies, routes): read from the same folder, handed over on each reload. */
  collections?: readonly LocalCollection[];
}

/**
 * A kind of object that another part of the mesh keeps, read from the folder with the discovery objects. Its
 * `convert` claims an object (returning it under a unique key), passes (undefined) or throws InvalidObjectError;
 * `rejected` hears of each rejection, so the collection can fail closed for it; `replaceAll` receives every claimed
 * object after each reload, before the store's own batch.
 */
export interface LocalCollection<T = unknown> {
  convert(object: unknown): { key: string; object: T } | undefined;
  rejected?(error: InvalidObjectError, object: unknown): { key: string; object: T } | undefined;
  replaceAll(objects: T[]): void;
}

/** A problem found in the last reload; `code` is MANIFEST_PARSE_FAILED, INVALID_OBJECT or DUPLICATE_OBJECT. */
export interface LocalSourceProblem {
  readonly file: string;
  readonly code: string;
  readonly message: string;
  readonly kind?: string;
  readonly namespace?: string;
  readonly name?: string;
  readonly field?: string;
}

/** The argument of the `'reload'` event: one per reload, whether or not the store changed. */
export interface LocalReload {
  readonly storeVersion: number;
  readonly problems: readonly LocalSourceProblem[];
}

const DEFAULT_DEBOUNCE_MS = 100;
/** A file rewritten without pause must still be picked up: reload at the latest this long after the first event. */
const MAX_RELOAD_DELAY_MS = 1000;
/** After the watcher dies (the folder was removed or replaced), try to watch it again this often. */
const REWATCH_DELAY_MS = 1000;
const MANIFEST_FILE = /\.(ya?ml|json)$/;
/** The store source name, so a local folder and a Kubernetes watch can feed one store without removing each other. */
const SOURCE_NAME = 'local';

/**
 * Feeds the store from a folder of ordinary Kubernetes YAML or JSON (*.yaml, *.yml, *.json; not subfolders; files
 * starting with `.` are editor and ConfigMap-mount internals and are skipped). Each reload reads every file and
 * replaces everything this source put in the store in one batch. A file that does not parse keeps the objects of
 * its last good version; a malformed object is rejected alone; an object defined in two files is taken from the
 * later file in name order. Emits `'reload'` (LocalReload) after every reload.
 */
export class LocalSource extends EventEmitter {
  readonly #dir: string;
  readonly #store: WorkloadStore;
  readonly #log: Logger;
  readonly #debounceMs: number;
  /** Each file's objects as of its last successful parse. */
  readonly #lastGoodObjects = new Map<string, readonly unknown[]>();
  #problems: readonly LocalSourceProblem[] = [];
  readonly #collections: readonly LocalCollection[];
  #watcher: FSWatcher | undefined;
  #debounceTimer: NodeJS.Timeout | undefined;
  #rewatchTimer: NodeJS.Timeout | undefined;
  #firstPendingEventAt: number | undefined;
  readonly #reloads = new SerialRuns(
    () => this.#loadOnce(),
    (err) => this.#log.error({ err }, 'config folder reload failed; keeping the previous state'),
  );
  /** Files of the load in progress whose objects are not known (unreadable or unparsable, with no good version). */
  #unknownFiles: string[] = [];
  /** Set while the folder cannot be watched, so the retry loop logs once, not every second. */
  #watchFailing = false;
  #closed = false;

  constructor(options: LocalSourceOptions) {
    super();
    this.#dir = options.dir;
    this.#store = options.store;
    this.#log = options.log.child({ component: 'discovery-local', dir: options.dir });
    this.#debounceMs = options.debounceMs ?? DEFAULT_DEBOUNCE_MS;
    this.#collections = options.collections ?? [];
  }

  /**
   * Loads the folder into the store, then watches it. Resolves once the store holds the first load; rejects with
   * CONFIG_DIR_NOT_FOUND when the folder does not exist. The first load in which every manifest file could be read
   * and parsed marks the store synced (its first full sync); a file that could not be leaves the store unsynced
   * until a reload reads it.
   */
  async start(): Promise<void> {
    let isDirectory: boolean;
    try {
      isDirectory = (await stat(this.#dir)).isDirectory();
    } catch (err) {
      throw new AmbitError('CONFIG_DIR_NOT_FOUND', `config folder ${this.#dir}: ${errnoCode(err) ?? 'cannot be read'}; create it or fix the path`, {
        cause: err,
      });
    }
    if (!isDirectory) throw new AmbitError('CONFIG_DIR_NOT_FOUND', `config folder ${this.#dir}: is not a folder`);
    // Watch before the first read, so a write landing during the load is not missed.
    this.#startWatching();
    await this.#reload();
  }

  /** What the last reload rejected or overrode. */
  lastErrors(): readonly LocalSourceProblem[] {
    return this.#problems;
  }

  /** Stops watching; resolves once an in-flight reload has finished, after which the store is not written again. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#debounceTimer);
    clearTimeout(this.#rewatchTimer);
    this.#watcher?.close();
    this.#watcher = undefined;
    await this.#reloads.stop();
  }

  #startWatching(): void {
    if (this.#closed) return;
    try {
      // The folder, not each file: editors that save through a temporary file and a rename replace the file's inode.
      this.#watcher = watch(this.#dir, { persistent: true }, () => this.#scheduleReload());
    } catch (err) {
      if (!this.#watchFailing) this.#log.error({ err }, 'cannot watch the config folder; retrying every second');
      this.#watchFailing = true;
      this.#restartWatching();
      return;
    }
    this.#watchFailing = false;
    this.#watcher.on('error', (err) => {
      this.#log.error({ err }, 'config folder watch failed; watching it again');
      this.#restartWatching();
    });
  }

  /** A removed or replaced folder silently ends an inotify watch; a new watch sees the folder that is there now. */
  #restartWatching(): void {
    this.#watcher?.close();
    this.#watcher = undefined;
    clearTimeout(this.#rewatchTimer);
    this.#rewatchTimer = setTimeout(() => {
      this.#startWatching();
      if (this.#watcher !== undefined) this.#scheduleReload();
    }, REWATCH_DELAY_MS);
  }

  #scheduleReload(): void {
    if (this.#closed) return;
    const now = Date.now();
    this.#firstPendingEventAt ??= now;
    const delay = Math.max(0, Math.min(this.#debounceMs, this.#firstPendingEventAt + MAX_RELOAD_DELAY_MS - now));
    clearTimeout(this.#debounceTimer);
    this.#debounceTimer = setTimeout(() => {
      this.#firstPendingEventAt = undefined;
      void this.#reload();
    }, delay);
  }

  /** One reload at a time; a change seen during a reload earns exactly one more. */
  #reload(): Promise<void> {
    return this.#reloads.trigger();
  }

  async #loadOnce(): Promise<void> {
    const problems: LocalSourceProblem[] = [];
    this.#unknownFiles = [];
    let files: string[];
    try {
      files = (await readdir(this.#dir)).filter((f) => MANIFEST_FILE.test(f) && !f.startsWith('.')).sort();
    } catch (err) {
      // A vanished folder is more likely a redeploy in progress than an order to empty the mesh.
      this.#log.error({ err }, 'cannot list the config folder; keeping the previous state');
      if (!this.#closed) this.#restartWatching();
      return;
    }
    for (const file of this.#lastGoodObjects.keys()) {
      if (!files.includes(file)) this.#lastGoodObjects.delete(file);
    }

    const byKey = new Map<string, { converted: ConvertedObject; file: string }>();
    const collected = this.#collections.map(() => new Map<string, unknown>());
    for (const file of files) {
      const objects = await this.#readFileObjects(file, problems);
      if (objects === undefined) continue;
      for (const object of objects) {
        if (this.#collect(object, file, problems, collected)) continue;
        const converted = this.#convert(object, file, problems);
        if (converted === undefined) continue;
        const key = `${converted.kind} ${objectRef(converted)}`;
        const earlier = byKey.get(key);
        if (earlier !== undefined) {
          const message = `${key} is defined in ${earlier.file} and ${file}; using ${file}`;
          this.#log.warn({ file, earlierFile: earlier.file, kind: converted.kind, object: objectRef(converted) }, message);
          problems.push({ file, code: 'DUPLICATE_OBJECT', message, kind: converted.kind, ...refFields(converted) });
          byKey.delete(key);
        }
        byKey.set(key, { converted, file });
      }
    }
    if (this.#closed) return;

    const snapshot = { namespaces: [] as NamespaceInfo[], pods: [] as PodInfo[], services: [] as Service[], nodes: [] as NodeInfo[], endpointSlices: [] as EndpointSlice[] } satisfies DiscoverySnapshot;
    for (const { converted } of byKey.values()) {
      if (converted.kind === 'Namespace') snapshot.namespaces.push(converted.object);
      else if (converted.kind === 'Pod') snapshot.pods.push(converted.object);
      else if (converted.kind === 'Service') snapshot.services.push(converted.object);
      else if (converted.kind === 'EndpointSlice') snapshot.endpointSlices.push(converted.object);
      else snapshot.nodes.push(converted.object);
    }
    this.#problems = Object.freeze(problems);
    this.#collections.forEach((collection, i) => collection.replaceAll([...collected[i]!.values()]));
    this.#store.replaceAll(snapshot, SOURCE_NAME);
    // The first load in which every file's objects are known is the source's first full sync.
    if (this.#unknownFiles.length === 0) this.#store.markSynced(SOURCE_NAME);
    const unknownFiles = this.#unknownFiles.length === 0 ? {} : { unknownFiles: this.#unknownFiles };
    this.#log.info({ files: files.length, objects: byKey.size, problems: problems.length, version: this.#store.version, synced: this.#store.synced, ...unknownFiles }, 'config folder loaded');
    const event: LocalReload = { storeVersion: this.#store.version, problems: this.#problems };
    this.emit('reload', event);
  }

  /** The file's objects now, or as of its last good parse when it is half-written; undefined when it has none. */
  async #readFileObjects(file: string, problems: LocalSourceProblem[]): Promise<readonly unknown[] | undefined> {
    const previous = this.#lastGoodObjects.get(file);
    let text: string;
    try {
      text = await readFile(join(this.#dir, file), 'utf8');
    } catch (err) {
      // Gone between listing and reading (it is being replaced), or a folder named like a file.
      if (errnoCode(err) === 'EISDIR') return previous;
      this.#log.warn({ err, file }, 'cannot read manifest file; keeping its previous objects');
      if (previous === undefined) this.#unknownFiles.push(file);
      return previous;
    }
    if (text.length === 0) {
      // An empty file is a write in progress (truncate and rewrite) or one a power loss cut short, never an order to
      // drop what it held: it keeps its previous objects, and with none it is unknown, so a first load does not
      // count as a full sync without it (its Namespace would read as not enrolled). A file emptied on purpose is
      // deleted, or holds a comment: that parses, to no objects, and counts.
      if (previous === undefined) {
        this.#log.warn({ file, reason: 'empty' }, 'manifest file is empty and was never read; the store stays unsynced until it parses or is deleted');
        this.#unknownFiles.push(file);
      } else {
        this.#log.warn({ file, reason: 'empty' }, 'manifest file is empty; keeping its previous objects (delete it, or leave a comment in it, to remove them)');
      }
      return previous;
    }
    try {
      const objects = parseManifests(text, file);
      this.#lastGoodObjects.set(file, objects);
      return objects;
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.#log.error({ file, err }, `${message}; keeping the file's previous objects`);
      problems.push({ file, code: err instanceof AmbitError ? err.code : 'MANIFEST_PARSE_FAILED', message });
      if (previous === undefined) this.#unknownFiles.push(file);
      return previous;
    }
  }

  /** True when a collection claimed the object (kept, or rejected and reported). */
  #collect(object: unknown, file: string, problems: LocalSourceProblem[], collected: Array<Map<string, unknown>>): boolean {
    for (const [i, collection] of this.#collections.entries()) {
      let claimed: { key: string; object: unknown } | undefined;
      try {
        claimed = collection.convert(object);
      } catch (err) {
        if (!(err instanceof InvalidObjectError)) throw err;
        const fields = { kind: err.kind, namespace: err.namespace, name: err.objectName, field: err.field };
        this.#log.warn({ file, ...fields, reason: err.reason }, `${file}: ${err.message}; object rejected`);
        problems.push({ file, code: err.code, message: err.message, ...fields });
        claimed = collection.rejected?.(err, object);
        if (claimed !== undefined) collected[i]!.set(claimed.key, claimed.object);
        return true;
      }
      if (claimed === undefined) continue;
      if (collected[i]!.has(claimed.key)) {
        const message = `${claimed.key} is defined twice; using the one in ${file}`;
        this.#log.warn({ file, object: claimed.key }, message);
        problems.push({ file, code: 'DUPLICATE_OBJECT', message });
      }
      collected[i]!.set(claimed.key, claimed.object);
      return true;
    }
    return false;
  }

  #convert(object: unknown, file: string, problems: LocalSourceProblem[]): ConvertedObject | undefined {
    try {
      const converted = convertObject(object, this.#store.trustDomain);
      return converted.kind === 'skip' ? undefined : converted;
    } catch (err) {
      if (!(err instanceof InvalidObjectError)) throw err;
      const fields = { kind: err.kind, namespace: err.namespace, name: err.objectName, field: err.field };
      this.#log.warn({ file, ...fields, reason: err.reason }, `${file}: ${err.message}; object rejected`);
      problems.push({ file, code: err.code, message: err.message, ...fields });
      return undefined;
    }
  }
}

function objectRef(converted: ConvertedObject): string {
  const { namespace, name } = refFields(converted);
  return namespace === undefined ? name : `${namespace}/${name}`;
}

function refFields(converted: ConvertedObject): { namespace?: string; name: string } {
  if (converted.kind === 'Pod' || converted.kind === 'Service' || converted.kind === 'EndpointSlice') return { namespace: converted.object.namespace, name: converted.object.name };
  return { name: converted.object.name };
}
