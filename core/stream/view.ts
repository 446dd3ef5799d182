import { convertObject, InvalidObjectError, type DiscoveryKind } from '../discovery/index.js';
import { silentLogger, type Logger } from '../log/index.js';
import { changeKey, type PolicyRecord, type StreamChange } from './protocol.js';

/** Where the view's changes go: the controller's change log, or an agent's store. */
export interface ChangeSink {
  apply(changes: readonly StreamChange[]): unknown;
}

/** A kind the controller watches, as the API serves it. */
export interface WatchedKind {
  /** The store's kind, or 'Policy' for the policy kinds (agents convert those). */
  readonly record: DiscoveryKind | 'Policy';
  readonly apiVersion: string;
  readonly kind: string;
  /** The API path of the collection, for the reflector: `/api/v1/pods`, `/apis/discovery.k8s.io/v1/endpointslices`. */
  readonly path: string;
  readonly namespaced: boolean;
}

const core = (kind: DiscoveryKind, plural: string, namespaced: boolean): WatchedKind => ({ record: kind, apiVersion: 'v1', kind, path: `/api/v1/${plural}`, namespaced });
const policy = (group: string, kind: string, plural: string): WatchedKind => ({ record: 'Policy', apiVersion: `${group}/v1`, kind, path: `/apis/${group}/v1/${plural}`, namespaced: true });

/** What the controller watches: the discovery kinds, and Ambit's policy kinds (Istio's too with `--istio-api`). */
export function watchedKinds(options: { istioApi?: boolean } = {}): WatchedKind[] {
  return [
    core('Namespace', 'namespaces', false),
    core('Node', 'nodes', false),
    core('Pod', 'pods', true),
    core('Service', 'services', true),
    { record: 'EndpointSlice', apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', path: '/apis/discovery.k8s.io/v1/endpointslices', namespaced: true },
    policy('security.ambit.dev', 'AuthorizationPolicy', 'authorizationpolicies'),
    policy('security.ambit.dev', 'PeerAuthentication', 'peerauthentications'),
    ...(options.istioApi ? [policy('security.istio.io', 'AuthorizationPolicy', 'authorizationpolicies'), policy('security.istio.io', 'PeerAuthentication', 'peerauthentications')] : []),
  ];
}

/**
 * Turns what the reflectors see into the stream's changes. An object becomes its compact record (core/discovery's
 * conversion); the change log then drops an update whose record did not change, so a status-only update goes no
 * further. A malformed object is rejected alone, with a log line naming it and the field, and the mesh forgets it (as
 * local mode does). A policy travels as its object without status, and each agent converts it, so that an invalid one
 * stands as deny-all there exactly as in local mode.
 */
export class ClusterView {
  readonly #changes: ChangeSink;
  readonly #trustDomain: string;
  readonly #log: Logger;
  /** The record keys each kind holds, so a relist can delete what is gone. */
  readonly #keys = new Map<WatchedKind, Map<string, StreamChange & { op: 'delete' }>>();

  constructor(changes: ChangeSink, options: { trustDomain: string; log?: Logger }) {
    this.#changes = changes;
    this.#trustDomain = options.trustDomain;
    this.#log = (options.log ?? silentLogger()).child({ component: 'cluster-view' });
  }

  /** A (re)list: `items` is all there is of `kind`; what the view held of it and is not listed is deleted. */
  replace(kind: WatchedKind, items: readonly unknown[]): void {
    const listed = new Set<string>();
    const changes: StreamChange[] = [];
    for (const item of items) {
      const change = this.#convert(kind, item);
      if (change?.upsert === undefined) continue;
      listed.add(change.key);
      changes.push(change.upsert);
    }
    for (const [key, deletion] of this.#held(kind)) if (!listed.has(key)) changes.push(deletion);
    this.#apply(kind, changes);
  }

  /** An object was added or modified. */
  upsert(kind: WatchedKind, item: unknown): void {
    const change = this.#convert(kind, item);
    if (change === undefined) return;
    this.#apply(kind, [change.upsert ?? change.deletion]);
  }

  /** An object was deleted. */
  delete(kind: WatchedKind, item: unknown): void {
    const change = this.#convert(kind, item);
    if (change !== undefined && this.#held(kind).has(change.key)) this.#apply(kind, [change.deletion]);
  }

  #held(kind: WatchedKind): Map<string, StreamChange & { op: 'delete' }> {
    let held = this.#keys.get(kind);
    if (held === undefined) {
      held = new Map();
      this.#keys.set(kind, held);
    }
    return held;
  }

  #apply(kind: WatchedKind, changes: readonly StreamChange[]): void {
    const held = this.#held(kind);
    for (const change of changes) {
      if (change.op === 'delete') held.delete(changeKey(change));
      else held.set(changeKey(change), deletionOf(change));
    }
    this.#changes.apply(changes);
  }

  /**
   * The record of `item`: an upsert, or (for an object the mesh cannot use, malformed or skipped) undefined `upsert`
   * with the deletion of whatever the view held for it. Undefined when the object cannot even be named.
   */
  #convert(kind: WatchedKind, item: unknown): { key: string; upsert: StreamChange | undefined; deletion: StreamChange & { op: 'delete' } } | undefined {
    const deletion = deletionFor(kind, item);
    if (deletion === undefined) {
      this.#log.warn({ kind: kind.kind }, 'object without a name ignored');
      return undefined;
    }
    const ref = changeKey(deletion);
    const object: Record<string, unknown> = { ...(item as Record<string, unknown>), apiVersion: kind.apiVersion, kind: kind.kind };
    if (deletion.kind === 'Policy') {
      const record: PolicyRecord = { key: deletion.key, object: { apiVersion: kind.apiVersion, kind: kind.kind, metadata: trimmedMetadata(object.metadata), spec: object.spec } };
      return { key: ref, upsert: { op: 'upsert', kind: 'Policy', policy: record }, deletion };
    }
    try {
      const converted = convertObject(object, this.#trustDomain);
      if (converted.kind === 'skip') return { key: ref, upsert: undefined, deletion };
      return { key: ref, upsert: { op: 'upsert', ...converted }, deletion };
    } catch (err) {
      if (!(err instanceof InvalidObjectError)) throw err;
      this.#log.warn({ kind: err.kind, namespace: err.namespace, name: err.objectName, field: err.field, reason: err.reason }, `${err.message}; object rejected`);
      return { key: ref, upsert: undefined, deletion };
    }
  }
}

/** The delete of a watched object's record; undefined when the object has no name. */
function deletionFor(kind: WatchedKind, item: unknown): (StreamChange & { op: 'delete' }) | undefined {
  const metadata = (item as { metadata?: { name?: unknown; namespace?: unknown } } | null)?.metadata;
  const name = metadata?.name;
  if (typeof name !== 'string' || name === '') return undefined;
  const namespace = typeof metadata?.namespace === 'string' && metadata.namespace !== '' ? metadata.namespace : 'default';
  if (kind.record === 'Policy') return { op: 'delete', kind: 'Policy', key: `${kind.apiVersion} ${kind.kind} ${namespace}/${name}` };
  return kind.namespaced ? { op: 'delete', kind: kind.record, namespace, name } : { op: 'delete', kind: kind.record, name };
}

function deletionOf(change: StreamChange & { op: 'upsert' }): StreamChange & { op: 'delete' } {
  if (change.kind === 'Policy') return { op: 'delete', kind: 'Policy', key: change.policy.key };
  const object = change.object as { name: string; namespace?: string };
  return change.kind === 'Namespace' || change.kind === 'Node'
    ? { op: 'delete', kind: change.kind, name: object.name }
    : { op: 'delete', kind: change.kind, namespace: object.namespace ?? 'default', name: object.name };
}

/**
 * Name, namespace and uid: what a policy's conversion reads. Not managedFields, and not annotations, where
 * `kubectl apply` keeps a whole copy of the object.
 */
function trimmedMetadata(metadata: unknown): Record<string, unknown> {
  const m = (metadata ?? {}) as Record<string, unknown>;
  const kept: Record<string, unknown> = {};
  for (const field of ['name', 'namespace', 'uid']) if (m[field] !== undefined) kept[field] = m[field];
  return kept;
}
