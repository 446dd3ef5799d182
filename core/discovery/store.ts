import { EventEmitter } from 'node:events';
import { silentLogger, type Logger } from '../log/index.js';
import { canonicalIp } from '../ip/index.js';
import { DEFAULT_ROOT_NAMESPACE } from '../enrollment/index.js';
import { resolveTargetPort, StoreIndex, type ServiceRef, type StoreEntries, type StoreEntry } from './store-index.js';
import {
  type ConvertedObject,
  type DiscoveryChange,
  type DiscoveryKind,
  type DiscoverySnapshot,
  type EndpointSlice,
  type Labels,
  type NamespaceInfo,
  type NodeInfo,
  type PodInfo,
  type PodNetwork,
  type PodNetworkChange,
  type Service,
  type ServiceEndpoint,
  type StoreChange,
  type Workload,
} from './types.js';

export type { ServiceRef } from './store-index.js';

export interface WorkloadStoreOptions {
  /** The SPIFFE trust domain sources put in identities; default cluster.local. */
  trustDomain?: string;
  /** The node this process runs on: `local*` readers answer for it, and are empty without it. */
  nodeName?: string;
  /** The mesh's own namespace (`--root-namespace`, default ambit-system): its pods are never enrolled. */
  rootNamespace?: string;
  log?: Logger;
}

/** The store for the admin config dump: absent values are null, so the JSON shows every field. */
export interface StoreDump {
  version: number;
  trustDomain: string;
  nodeName: string | null;
  namespaces: NamespaceInfo[];
  nodes: NodeInfo[];
  /** `endpoints` null: the mesh does not know them (no selector, no EndpointSlice). */
  services: Array<Omit<Service, 'selector'> & { selector: Labels | null; endpoints: DumpedEndpoint[] | null }>;
  endpointSlices: EndpointSlice[];
  workloads: Array<Omit<Workload, 'node'> & { node: string | null }>;
}

export interface DumpedEndpoint {
  servicePort: number;
  address: string;
  /** `namespace/name` of the pod at the address, if the store knows one. */
  workload: string | null;
}

const NO_ENDPOINTS: readonly ServiceEndpoint[] = Object.freeze([]);
const DEFAULT_SOURCE = 'default';
const DEFAULT_TRUST_DOMAIN = 'cluster.local';

/**
 * The store as the data path sees it: its readers, none of its writers. Only the sources (the local folder, CNI
 * events) write the store; a listener reads it.
 */
export type ReadonlyWorkloadStore = Pick<
  WorkloadStore,
  | 'trustDomain'
  | 'nodeName'
  | 'rootNamespace'
  | 'version'
  | 'synced'
  | 'podNetwork'
  | 'podNetworks'
  | 'pod'
  | 'workloadByIp'
  | 'localWorkloads'
  | 'localEnrolledIps'
  | 'serviceByVip'
  | 'serviceEndpoints'
  | 'servicesOf'
  | 'resolveTargetPort'
  | 'node'
  | 'nodeZone'
  | 'nodeIp'
  | 'namespace'
  | 'namespaces'
  | 'workloads'
  | 'snapshot'
>;

/**
 * What the mesh knows about the cluster: workloads (pods), services, namespaces and nodes, behind typed indexes.
 * Sources write it in batches of converted objects (`replaceAll`, `applyBatch`); the data path only reads it, and
 * its readers are map lookups or return a precomputed frozen list (every workload, and this node's, are built on the
 * first read after a change that touched them). A batch costs what it changes, not the size of the cluster
 * (StoreIndex). Emits `'change'` (StoreChange) once per batch that changed something.
 */
export class WorkloadStore extends EventEmitter {
  readonly trustDomain: string;
  readonly nodeName: string | undefined;
  readonly rootNamespace: string;
  readonly #log: Logger;
  readonly #entries: StoreEntries = {
    Namespace: new Map(),
    Pod: new Map(),
    Service: new Map(),
    Node: new Map(),
    EndpointSlice: new Map(),
  };
  readonly #networks = new Map<string, PodNetwork>();
  readonly #index: StoreIndex;
  /** Gives each object its place in its kind's order (StoreEntry.seq). */
  #nextSeq = 0;
  #currentVersion = 0;
  #hasSynced = false;

  constructor(options: WorkloadStoreOptions = {}) {
    super();
    this.trustDomain = options.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    this.nodeName = options.nodeName;
    this.rootNamespace = options.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
    this.#log = options.log ?? silentLogger();
    this.#index = new StoreIndex(this.#entries, this.#networks, { nodeName: this.nodeName, rootNamespace: this.rootNamespace, log: this.#log });
  }

  /** Counts applied batches that changed something; 0 until a source has delivered anything. */
  get version(): number {
    return this.#currentVersion;
  }

  /**
   * Whether a source has delivered a complete view of the cluster at least once: the local folder read with every
   * file accounted for, or a Kubernetes list finished. Until then, an object the store does not hold may simply not
   * have arrived, so "not known" must not be read as "not there" (the CNI handler answers "not ready" for a pod of
   * an unknown namespace, not "not enrolled").
   */
  get synced(): boolean {
    return this.#hasSynced;
  }

  /** A source's first complete delivery. It changes what readers may conclude, so it is a change: one `'change'`. */
  markSynced(source: string = DEFAULT_SOURCE): void {
    if (this.#hasSynced) return;
    this.#hasSynced = true;
    this.#commit(source);
  }

  /**
   * Makes the objects `source` owns exactly those of the snapshot: objects it wrote before and no longer lists
   * are removed; objects written by other sources are left alone. When two sources write the same object the
   * last write wins and ownership moves with it.
   */
  replaceAll(snapshot: DiscoverySnapshot, source: string = DEFAULT_SOURCE): void {
    const upserts: ConvertedObject[] = [
      ...snapshot.namespaces.map((object) => ({ kind: 'Namespace' as const, object })),
      ...snapshot.nodes.map((object) => ({ kind: 'Node' as const, object })),
      ...snapshot.services.map((object) => ({ kind: 'Service' as const, object })),
      ...snapshot.pods.map((object) => ({ kind: 'Pod' as const, object })),
      ...snapshot.endpointSlices.map((object) => ({ kind: 'EndpointSlice' as const, object })),
    ];
    const listed = new Set(upserts.map((u) => `${u.kind}:${keyOf(u)}`));
    const changes: DiscoveryChange[] = [];
    for (const [kind, entries] of Object.entries(this.#entries) as Array<[DiscoveryKind, Map<string, StoreEntry>]>) {
      for (const [key, entry] of entries) {
        if (entry.source === source && !listed.has(`${kind}:${key}`)) changes.push({ op: 'delete', kind, ...splitKey(key) });
      }
    }
    for (const upsert of upserts) changes.push({ op: 'upsert', ...upsert });
    this.applyBatch(changes, source);
  }

  /**
   * Applies upserts and deletes, in order, as one batch: one version, one `'change'`. The indexes are brought up to
   * date for what the batch changed only (StoreIndex), before the event.
   */
  applyBatch(changes: readonly DiscoveryChange[], source: string = DEFAULT_SOURCE): void {
    let changed = false;
    for (const change of changes) {
      const entries = this.#entries[change.kind];
      if (change.op === 'delete') {
        const namespaced = change.kind === 'Pod' || change.kind === 'Service' || change.kind === 'EndpointSlice';
        // The same default a manifest without metadata.namespace gets, so a delete finds what the upsert stored.
        const key = namespaced ? `${change.namespace ?? 'default'}/${change.name}` : change.name;
        if (!entries.delete(key)) continue;
        this.#index.mark(change.kind, key);
        changed = true;
        continue;
      }
      const key = keyOf(change);
      const previous = entries.get(key);
      // an upsert equal to what is held (as JSON: an absent field and an undefined one are the same) changes nothing:
      // resyncs and touched files do not wake the data path. The held record's JSON is made again for the comparison
      // rather than kept: a JSON copy of each record was a sixth of the agent's heap at 10k pods (bench/scale.ts).
      if (previous !== undefined && previous.source === source && JSON.stringify(previous.object) === JSON.stringify(change.object)) continue;
      // Map.set keeps an existing key's place, so the object keeps its seq; a new key goes last.
      entries.set(key, { object: change.object, source, seq: previous?.seq ?? this.#nextSeq++ });
      this.#index.mark(change.kind, key);
      changed = true;
    }
    if (changed) this.#commit(source);
  }

  /**
   * Records or forgets pod networks reported by the CNI plugin, as one batch. A pod with a recorded network takes
   * its IPs (and, when unscheduled in the object, this node) from it, so its rules exist before its status
   * catches up; after DEL, the object's own IPs count again.
   */
  applyPodNetworks(changes: readonly PodNetworkChange[], source: string = 'cni'): void {
    let changed = false;
    for (const change of changes) {
      if (change.op === 'delete') {
        const key = `${change.namespace}/${change.name}`;
        const current = this.#networks.get(key);
        if (current === undefined || (change.containerId !== undefined && current.containerId !== change.containerId)) continue;
        this.#networks.delete(key);
        this.#index.mark('Pod', key);
        changed = true;
        continue;
      }
      const network = Object.freeze({ ...change.network, ips: Object.freeze([...change.network.ips]) });
      const key = `${network.namespace}/${network.name}`;
      if (JSON.stringify(this.#networks.get(key)) === JSON.stringify(network)) continue;
      this.#networks.set(key, network);
      this.#index.mark('Pod', key);
      changed = true;
    }
    if (changed) this.#commit(source);
  }

  /** The CNI-reported network of a pod, if any. */
  podNetwork(namespace: string, name: string): PodNetwork | undefined {
    return this.#networks.get(`${namespace}/${name}`);
  }

  podNetworks(): readonly PodNetwork[] {
    return [...this.#networks.values()];
  }

  /** A pod object as its source gave it (terminated ones included), joined with nothing. */
  pod(namespace: string, name: string): PodInfo | undefined {
    return this.#entries.Pod.get(`${namespace}/${name}`)?.object as PodInfo | undefined;
  }

  #commit(source: string): void {
    this.#index.flush();
    this.#currentVersion += 1;
    this.#log.debug(
      { version: this.#currentVersion, source, workloads: this.#index.workloadCount, services: this.#entries.Service.size },
      'discovery store updated',
    );
    const event: StoreChange = { version: this.#currentVersion, source };
    this.emit('change', event);
  }

  /** The workload that owns a pod IP (host-network pods are not indexed: their IP is the node's). */
  workloadByIp(ip: string): Workload | undefined {
    const found = this.#index.workloadByIp(ip);
    if (found !== undefined) return found;
    // The indexes hold canonical text (convertObject writes it); another spelling of the same address finds it too.
    const canonical = canonicalIp(ip);
    return canonical === undefined || canonical === ip ? undefined : this.#index.workloadByIp(canonical);
  }

  /** Workloads scheduled on this store's node, enrolled or not. */
  localWorkloads(): readonly Workload[] {
    return this.#index.localWorkloads();
  }

  /** The pod IPs whose traffic this node captures (the ipset), sorted. */
  localEnrolledIps(family: 4 | 6): readonly string[] {
    return this.#index.localEnrolledIps(family);
  }

  serviceByVip(ip: string): Service | undefined {
    const found = this.#index.serviceByVip(ip);
    if (found !== undefined) return found;
    // The indexes hold canonical text (convertObject writes it); another spelling of the same address finds it too.
    const canonical = canonicalIp(ip);
    return canonical === undefined || canonical === ip ? undefined : this.#index.serviceByVip(canonical);
  }

  /**
   * Where a service's TCP port `port` goes. From its EndpointSlices where it has any: their ready endpoints, or when
   * none is ready the serving ones that are terminating (as kube-proxy falls back). Else from its selector: the ready
   * pods with an IP in its namespace whose labels match. Undefined when the mesh does not know where the service goes
   * (no selector and no EndpointSlice: `default/kubernetes` in a folder without its slice, or endpoints managed
   * outside the cluster); empty when it knows there is no endpoint.
   */
  serviceEndpoints(service: Service, port: number): readonly ServiceEndpoint[] | undefined {
    const byPort = this.#index.endpoints(`${service.namespace}/${service.name}`);
    if (byPort === undefined) return undefined;
    return byPort.get(port) ?? NO_ENDPOINTS;
  }

  /**
   * The Services `workload` is a member of: matched by a Service's selector (in its namespace) or listed in its
   * EndpointSlices, either one, since slices lag a new pod (routing, `serviceEndpoints`, takes the slices alone, as
   * kube-proxy does). Membership, not routing: every port, and whether or not the endpoint is ready or serving, since a pod that is not ready still receives connections to its own
   * address, and a policy aimed at its Service (targetRefs) must hold for them.
   */
  servicesOf(workload: Pick<Workload, 'namespace' | 'name'>): readonly ServiceRef[] {
    return this.#index.servicesOf(`${workload.namespace}/${workload.name}`);
  }

  /**
   * The port to dial on `workload` for `servicePort` of `service`: the numeric targetPort, or the workload's
   * container port of that name. Undefined when the service has no such port or the workload no such named port.
   */
  resolveTargetPort(service: Service, servicePort: number, workload: Workload): number | undefined {
    return resolveTargetPort(service, servicePort, workload);
  }

  node(name: string): NodeInfo | undefined {
    return this.#entries.Node.get(name)?.object as NodeInfo | undefined;
  }

  /** The node's `topology.kubernetes.io/zone`, for locality. */
  nodeZone(name: string | undefined): string | undefined {
    return this.#index.nodeZone(name);
  }

  /** The address other agents reach a node's HBONE listener on: its first InternalIP, else its first ExternalIP. */
  nodeIp(name: string): string | undefined {
    return this.node(name)?.addresses[0];
  }

  namespace(name: string): NamespaceInfo | undefined {
    return this.#entries.Namespace.get(name)?.object as NamespaceInfo | undefined;
  }

  namespaces(): NamespaceInfo[] {
    return [...this.#entries.Namespace.values()].map((e) => e.object as NamespaceInfo);
  }

  /** Every workload: pods that are not terminated, in every namespace. */
  workloads(): readonly Workload[] {
    return this.#index.workloads();
  }

  snapshot(): StoreDump {
    const services = [...this.#entries.Service.values()].map((e) => e.object as Service);
    return {
      version: this.#currentVersion,
      trustDomain: this.trustDomain,
      nodeName: this.nodeName ?? null,
      namespaces: this.namespaces(),
      nodes: [...this.#entries.Node.values()].map((e) => e.object as NodeInfo),
      services: services.map((s) => ({ ...s, selector: s.selector ?? null, endpoints: this.#dumpEndpoints(s) })),
      endpointSlices: [...this.#entries.EndpointSlice.values()].map((e) => e.object as EndpointSlice),
      workloads: this.workloads().map((w) => ({ ...w, node: w.node ?? null })),
    };
  }

  #dumpEndpoints(service: Service): DumpedEndpoint[] | null {
    const byPort = this.#index.endpoints(`${service.namespace}/${service.name}`);
    if (byPort === undefined) return null;
    return [...byPort].flatMap(([servicePort, endpoints]) =>
      endpoints.map((e) => ({ servicePort, address: `${e.ip}:${e.port}`, workload: e.workload ? `${e.workload.namespace}/${e.workload.name}` : null })),
    );
  }
}

function keyOf(converted: ConvertedObject): string {
  switch (converted.kind) {
    case 'Namespace':
    case 'Node':
      return converted.object.name;
    case 'Pod':
    case 'Service':
    case 'EndpointSlice':
      return `${converted.object.namespace}/${converted.object.name}`;
  }
}

function splitKey(key: string): { namespace?: string; name: string } {
  const slash = key.indexOf('/');
  return slash === -1 ? { name: key } : { namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}
