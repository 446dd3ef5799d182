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
 * further. A malformed object is rejected alone, with a log line naming it and the field, and counted: an update of
 * an object the view holds (the same uid) keeps its last good record, so one bad update does not take a running
 * workload out of the mesh; an object it never held, or another object under the same name (a new uid), has no
 * record. A policy travels as its object without status, and each agent converts it, so that an invalid one stands
 * as deny-all there exactly as in local mode.
 */
export class ClusterView {
  readonly #changes: ChangeSink;
  readonly #trustDomain: string;
  readonly #log: Logger;
  readonly #onRejected: (kind: string) => void;
  /** The records each kind holds, by key, so a relist can delete what is gone and a bad update keep the last good. */
  readonly #keys = new Map<WatchedKind, Map<string, Held>>();

  /** `onRejected`: told the kind of each object rejected (the controller counts them). */
  constructor(changes: ChangeSink, options: { trustDomain: string; log?: Logger; onRejected?: (kind: string) => void }) {
    this.#changes = changes;
    this.#trustDomain = options.trustDomain;
    this.#log = (options.log ?? silentLogger()).child({ component: 'cluster-view' });
    this.#onRejected = options.onRejected ?? (() => undefined);
  }

  /**
   * What the view makes of one object of `kind`, on its own: its record, or why it has none. Pure, so that a
   * reflector applies it to each object as it is read (its transform), and the object itself is not kept.
   */
  prepare(kind: WatchedKind, item: unknown): Prepared {
    const deletion = deletionFor(kind, item);
    if (deletion === undefined) return { deletion: undefined, uid: undefined, upsert: undefined, error: undefined };
    const object: Record<string, unknown> = { ...(item as Record<string, unknown>), apiVersion: kind.apiVersion, kind: kind.kind };
    const uid = uidOf(object);
    if (deletion.kind === 'Policy') {
      const record: PolicyRecord = { key: deletion.key, object: { apiVersion: kind.apiVersion, kind: kind.kind, metadata: trimmedMetadata(object.metadata), spec: object.spec } };
      return { deletion, uid, upsert: { op: 'upsert', kind: 'Policy', policy: record }, error: undefined };
    }
    try {
      const converted = convertObject(object, this.#trustDomain);
      return { deletion, uid, upsert: converted.kind === 'skip' ? undefined : { op: 'upsert', ...converted }, error: undefined };
    } catch (err) {
      if (!(err instanceof InvalidObjectError)) throw err;
      return { deletion, uid, upsert: undefined, error: err };
    }
  }

  /** A (re)list: `items` (prepared) is all there is of `kind`; what the view held of it and is not listed is deleted. */
  replace(kind: WatchedKind, items: readonly Prepared[]): void {
    const listed = new Set<string>();
    const changes: StreamChange[] = [];
    const uids = new Map<string, string | undefined>();
    for (const item of items) {
      const change = this.#resolve(kind, item);
      if (change === undefined) continue;
      if (change.upsert !== undefined) {
        listed.add(change.key);
        changes.push(change.upsert);
        uids.set(change.key, change.uid);
      } else if (change.keep) {
        listed.add(change.key);
      }
    }
    for (const [key, held] of this.#held(kind)) if (!listed.has(key)) changes.push(held.deletion);
    this.#apply(kind, changes, uids);
  }

  /** An object (prepared) was added or modified. */
  upsert(kind: WatchedKind, item: Prepared): void {
    const change = this.#resolve(kind, item);
    if (change === undefined || change.keep) return;
    this.#apply(kind, [change.upsert ?? change.deletion], new Map([[change.key, change.uid]]));
  }

  /** An object (prepared) was deleted. */
  delete(kind: WatchedKind, item: Prepared): void {
    const key = item.deletion;
    if (key !== undefined && this.#held(kind).has(changeKey(key))) this.#apply(kind, [key], new Map());
  }

  #held(kind: WatchedKind): Map<string, Held> {
    let held = this.#keys.get(kind);
    if (held === undefined) {
      held = new Map();
      this.#keys.set(kind, held);
    }
    return held;
  }

  /** `uids`: the uid of each upsert's object, by key, held beside its record. */
  #apply(kind: WatchedKind, changes: readonly StreamChange[], uids: ReadonlyMap<string, string | undefined>): void {
    const held = this.#held(kind);
    for (const change of changes) {
      if (change.op === 'delete') held.delete(changeKey(change));
      else held.set(changeKey(change), { deletion: deletionOf(change), uid: uids.get(changeKey(change)) });
    }
    this.#changes.apply(changes);
  }

  /**
   * The change a prepared object makes: an upsert; or, for an object the mesh cannot use, no upsert and the deletion
   * of whatever the view held for it (`keep` when that is the last good record of the same object, which stays).
   * Undefined when the object cannot even be named. A rejection is logged and counted here, once per object seen.
   */
  #resolve(
    kind: WatchedKind,
    item: Prepared,
  ): { key: string; uid: string | undefined; upsert: StreamChange | undefined; deletion: StreamChange & { op: 'delete' }; keep: boolean } | undefined {
    const { deletion, uid, upsert, error } = item;
    if (deletion === undefined) {
      this.#log.warn({ kind: kind.kind }, 'object without a name ignored');
      this.#onRejected(kind.kind);
      return undefined;
    }
    const key = changeKey(deletion);
    if (error === undefined) return { key, uid, upsert, deletion, keep: false };
    this.#onRejected(kind.kind);
    const held = this.#held(kind).get(key);
    const keep = held !== undefined && uid !== undefined && held.uid === uid;
    this.#log.warn(
      { kind: error.kind, namespace: error.namespace, name: error.objectName, field: error.field, reason: error.reason },
      `${error.message}; object rejected${keep ? ', its last good record stays' : held === undefined ? '' : ' (another object than the one held: its record is removed)'}`,
    );
    return { key, uid, upsert: undefined, deletion, keep };
  }
}

/**
 * One object as the view prepared it: the deletion of its record (undefined when it has no name), its uid, and its
 * record (an upsert) or the reason it has none (`error`; neither for an object the mesh skips, such as a pod
 * without an IP yet).
 */
export interface Prepared {
  readonly deletion: (StreamChange & { op: 'delete' }) | undefined;
  readonly uid: string | undefined;
  readonly upsert: StreamChange | undefined;
  readonly error: InvalidObjectError | undefined;
}

/** What the view holds of a record: its deletion, and the uid of the object it came from. */
interface Held {
  readonly deletion: StreamChange & { op: 'delete' };
  readonly uid: string | undefined;
}

function uidOf(object: Record<string, unknown>): string | undefined {
  const uid = (object.metadata as { uid?: unknown } | undefined)?.uid;
  return typeof uid === 'string' && uid !== '' ? uid : undefined;
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
