import { randomBytes, randomUUID } from 'node:crypto';
import { apiVersionOf, typeKey } from './resources.js';
import { expired, notFound, StatusError } from './status.js';
import { child, isJsonObject, str, type Json, type JsonObject, type ResourceType, type StoreEvent } from './types.js';

/** How many changes a watch may resume from by default; a watch from an older resourceVersion gets 410 Expired. */
export const DEFAULT_HISTORY_SIZE = 1000;
/** Continue tokens kept at once: a paginated list holds its snapshot until then (or until `compact`). */
const SNAPSHOT_LIMIT = 64;
const NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;

export type StoreListener = (event: StoreEvent) => void;

interface Snapshot {
  readonly rv: number;
  readonly items: readonly JsonObject[];
}

/**
 * The etcd of the double: every object of every kind, one resourceVersion counter for all of them (as etcd's
 * revision), and a bounded history of changes that watches resume from. Events reach listeners in resourceVersion
 * order even when a listener writes (the EndpointSlice controller does): a write made while delivering is queued.
 */
export class ObjectStore {
  #rv = 1;
  /** Events at or below this resourceVersion are gone from the history. */
  #compactedRv = 1;
  readonly #historySize: number;
  readonly #history: StoreEvent[] = [];
  readonly #objects = new Map<string, Map<string, JsonObject>>();
  readonly #listeners = new Set<StoreListener>();
  readonly #queue: StoreEvent[] = [];
  #delivering = false;
  readonly #snapshots = new Map<string, Snapshot>();

  constructor(historySize = DEFAULT_HISTORY_SIZE) {
    this.#historySize = historySize;
  }

  get resourceVersion(): number {
    return this.#rv;
  }

  get compactedResourceVersion(): number {
    return this.#compactedRv;
  }

  subscribe(listener: StoreListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The objects of a kind (all namespaces when `namespace` is undefined), sorted by namespace/name as etcd keys are. */
  list(type: ResourceType, namespace?: string): JsonObject[] {
    const objects = this.#objects.get(keyOf(type));
    if (objects === undefined) return [];
    return [...objects.entries()]
      .filter(([id]) => namespace === undefined || id.startsWith(`${namespace}/`))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, object]) => object);
  }

  get(type: ResourceType, namespace: string, name: string): JsonObject | undefined {
    return this.#objects.get(keyOf(type))?.get(`${type.namespaced ? namespace : ''}/${name}`);
  }

  /** Events after `rv` (for one kind, or all when `key` is undefined); 410 Expired when the history no longer has them. */
  eventsSince(rv: number, key?: string): StoreEvent[] {
    if (rv < this.#compactedRv) throw expired(`too old resource version: ${rv} (${this.#compactedRv})`);
    return this.#history.filter((e) => e.rv > rv && (key === undefined || e.key === key));
  }

  create(type: ResourceType, namespace: string, body: JsonObject): JsonObject {
    const meta = { ...child(body, 'metadata') };
    let name = str(meta.name);
    const generateName = str(meta.generateName);
    if ((name === undefined || name === '') && generateName !== undefined) name = `${generateName}${randomSuffix()}`;
    if (name === undefined || !validName(type, name)) {
      const rule = type.pathSegmentName === true ? 'may not be "." or "..", nor contain "/" or "%"' : 'a lowercase RFC 1123 subdomain is required';
      throw new StatusError(422, 'Invalid', `${type.kind} "${name ?? ''}" is invalid: metadata.name: ${rule}`);
    }
    if (type.namespaced) this.#requireNamespace(type, namespace, name);
    if (this.get(type, namespace, name) !== undefined) {
      throw new StatusError(409, 'AlreadyExists', `${resourceName(type)} "${name}" already exists`, { name, group: type.group, kind: type.resource });
    }
    const rv = this.#next();
    const object = stamped(type, namespace, name, body, { uid: randomUUID(), resourceVersion: String(rv), generation: 1, creationTimestamp: timestamp() });
    this.#put(type, namespace, name, object);
    this.#record({ type: 'ADDED', key: keyOf(type), rv, object });
    return object;
  }

  /**
   * Replaces an object: a stale `metadata.resourceVersion` is 409 Conflict (optimistic concurrency), none means
   * unconditional. uid and creationTimestamp stay; generation grows when anything but metadata and status changed.
   */
  update(type: ResourceType, namespace: string, name: string, body: JsonObject): JsonObject {
    const current = this.get(type, namespace, name);
    if (current === undefined) throw notFound(type.resource, name, type.group);
    const meta = child(body, 'metadata');
    const currentMeta = child(current, 'metadata');
    const wanted = str(meta.resourceVersion);
    if (wanted !== undefined && wanted !== str(currentMeta.resourceVersion)) {
      throw new StatusError(
        409,
        'Conflict',
        `Operation cannot be fulfilled on ${resourceName(type)} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
        { name, group: type.group, kind: type.resource },
      );
    }
    if (str(meta.name) !== undefined && meta.name !== name) throw new StatusError(400, 'BadRequest', `the name of the object (${str(meta.name)}) does not match the name on the URL (${name})`);
    const rv = this.#next();
    const generation = typeof currentMeta.generation === 'number' ? currentMeta.generation : 1;
    const object = stamped(type, namespace, name, body, {
      uid: currentMeta.uid ?? null,
      creationTimestamp: currentMeta.creationTimestamp ?? null,
      ...(currentMeta.deletionTimestamp !== undefined ? { deletionTimestamp: currentMeta.deletionTimestamp } : {}),
      resourceVersion: String(rv),
      generation: specChanged(current, body) ? generation + 1 : generation,
    });
    this.#put(type, namespace, name, object);
    this.#record({ type: 'MODIFIED', key: keyOf(type), rv, object, previous: current });
    return object;
  }

  /** Removes an object at once (no finalizers, no grace period); the DELETED event carries the delete's own resourceVersion. */
  delete(type: ResourceType, namespace: string, name: string): JsonObject {
    const current = this.get(type, namespace, name);
    if (current === undefined) throw notFound(type.resource, name, type.group);
    const rv = this.#next();
    const object: JsonObject = { ...current, metadata: { ...child(current, 'metadata'), resourceVersion: String(rv) } };
    this.#objects.get(keyOf(type))?.delete(`${type.namespaced ? namespace : ''}/${name}`);
    this.#record({ type: 'DELETED', key: keyOf(type), rv, object });
    return object;
  }

  /** Sets `metadata.deletionTimestamp`, as a graceful delete does while the kubelet stops the pod. */
  markTerminating(type: ResourceType, namespace: string, name: string): JsonObject {
    const current = this.get(type, namespace, name);
    if (current === undefined) throw notFound(type.resource, name, type.group);
    const meta = { ...child(current, 'metadata'), deletionTimestamp: timestamp() };
    const rv = this.#next();
    const object: JsonObject = { ...current, metadata: { ...meta, resourceVersion: String(rv) } };
    this.#put(type, namespace, name, object);
    this.#record({ type: 'MODIFIED', key: keyOf(type), rv, object, previous: current });
    return object;
  }

  /** Keeps `items` (a list's result at `rv`) for a paginated list and names it with an opaque token. */
  saveSnapshot(rv: number, items: readonly JsonObject[]): string {
    const id = randomBytes(12).toString('base64url');
    this.#snapshots.set(id, { rv, items });
    for (const old of this.#snapshots.keys()) {
      if (this.#snapshots.size <= SNAPSHOT_LIMIT) break;
      this.#snapshots.delete(old);
    }
    return id;
  }

  snapshot(id: string): Snapshot {
    const snapshot = this.#snapshots.get(id);
    if (snapshot === undefined || snapshot.rv < this.#compactedRv) {
      throw expired('The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.');
    }
    return snapshot;
  }

  /** Forgets every change so far, as an etcd compaction: watches from an older resourceVersion and open continue tokens expire. */
  compact(): void {
    this.#history.length = 0;
    this.#compactedRv = this.#rv;
    this.#snapshots.clear();
  }

  /** A namespaced object is created in a namespace that exists and is not Terminating (the NamespaceLifecycle admission). */
  #requireNamespace(type: ResourceType, namespace: string, name: string): void {
    if (namespace === '') throw new StatusError(400, 'BadRequest', 'a namespaced object needs a namespace');
    const found = this.#objects.get(NAMESPACES_KEY)?.get(`/${namespace}`);
    if (found === undefined) throw notFound('namespaces', namespace);
    if (child(found, 'metadata').deletionTimestamp !== undefined) {
      const message = `unable to create new content in namespace ${namespace} because it is being terminated`;
      throw new StatusError(403, 'Forbidden', `${resourceName(type)} "${name}" is forbidden: ${message}`, {
        name,
        group: type.group,
        kind: type.resource,
        causes: [{ reason: 'NamespaceTerminating', message, field: 'metadata.namespace' }],
      });
    }
  }

  #next(): number {
    this.#rv += 1;
    return this.#rv;
  }

  #put(type: ResourceType, namespace: string, name: string, object: JsonObject): void {
    const key = keyOf(type);
    let objects = this.#objects.get(key);
    if (objects === undefined) this.#objects.set(key, (objects = new Map()));
    objects.set(`${type.namespaced ? namespace : ''}/${name}`, object);
  }

  #record(event: StoreEvent): void {
    this.#history.push(event);
    while (this.#history.length > this.#historySize) {
      const dropped = this.#history.shift();
      if (dropped !== undefined) this.#compactedRv = dropped.rv;
    }
    this.#queue.push(event);
    if (this.#delivering) return;
    this.#delivering = true;
    try {
      for (let next = this.#queue.shift(); next !== undefined; next = this.#queue.shift()) {
        for (const listener of [...this.#listeners]) listener(next);
      }
    } finally {
      this.#delivering = false;
    }
  }
}

const NAMESPACES_KEY = typeKey('', 'v1', 'namespaces');

/**
 * `body` as stored: its type meta from the path, its name and namespace from the request, and the fields the
 * server owns (`system`) over whatever the client sent for them. A cluster-scoped object has no namespace.
 */
function stamped(type: ResourceType, namespace: string, name: string, body: JsonObject, system: JsonObject): JsonObject {
  const { namespace: _namespace, ...meta } = child(body, 'metadata');
  return {
    ...body,
    apiVersion: apiVersionOf(type),
    kind: type.kind,
    metadata: { ...meta, name, ...(type.namespaced ? { namespace } : {}), ...system },
  };
}

function validName(type: ResourceType, name: string): boolean {
  if (type.pathSegmentName === true) return name !== '' && name !== '.' && name !== '..' && !/[/%]/.test(name);
  return NAME.test(name);
}

/** RFC 3339 to the second, as the API server writes timestamps. */
function timestamp(): string {
  return new Date().toISOString().replace(/\.\d+Z$/, 'Z');
}

export function keyOf(type: ResourceType): string {
  return typeKey(type.group, type.version, type.resource);
}

function resourceName(type: ResourceType): string {
  return type.group === '' ? type.resource : `${type.resource}.${type.group}`;
}

/** Five characters of [a-z0-9], as generateName's suffix. */
function randomSuffix(): string {
  const alphabet = 'bcdfghjklmnpqrstvwxz2456789';
  return [...randomBytes(5)].map((b) => alphabet[b % alphabet.length]).join('');
}

/** Whether anything but metadata and status changed: what makes the real server bump `metadata.generation`. */
function specChanged(before: JsonObject, after: JsonObject): boolean {
  const strip = (o: JsonObject): string => {
    const { metadata: _m, status: _s, kind: _k, apiVersion: _a, ...rest } = o;
    return canonical(rest);
  };
  return strip(before) !== strip(after);
}

/** JSON with object keys sorted at every level, so that key order does not count as a change. */
export function canonical(value: Json): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (isJsonObject(value)) {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k] ?? null)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}
