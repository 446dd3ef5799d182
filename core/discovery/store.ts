import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { silentLogger, type Logger } from '../log/index.js';
import { canonicalIp } from '../ip/index.js';
import { DEFAULT_ROOT_NAMESPACE, isWorkloadEnrolled } from '../enrollment/index.js';
import { selectorMatches } from './selector.js';
import {
  ZONE_LABEL,
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

interface Entry {
  readonly object: ConvertedObject['object'];
  readonly source: string;
  /** Equal fingerprints mean an upsert changes nothing: resyncs and touched files do not wake the data path. */
  readonly fingerprint: string;
  /** Reused while neither the pod, its network nor its enrollment changes, so a workload keeps its identity. */
  workload?: Workload;
  /** The pod network the cached workload was built with. */
  network?: PodNetwork | undefined;
}

/** The derived indexes; rebuilt together after each batch and swapped in at once, so readers never see half. */
interface Indexes {
  readonly workloads: readonly Workload[];
  readonly byIp: ReadonlyMap<string, Workload>;
  readonly local: readonly Workload[];
  readonly localEnrolledIps: { readonly 4: readonly string[]; readonly 6: readonly string[] };
  readonly services: readonly Service[];
  readonly serviceByVip: ReadonlyMap<string, Service>;
  /** By `namespace/name`, then by TCP service port; a service the mesh knows no endpoints of has no entry. */
  readonly endpoints: ReadonlyMap<string, ReadonlyMap<number, readonly ServiceEndpoint[]>>;
  /** By workload `namespace/name`: the Services it is an endpoint of (`servicesOf`). */
  readonly servicesByWorkload: ReadonlyMap<string, readonly ServiceRef[]>;
}

/** A Service by name, as policies' targetRefs name it. */
export interface ServiceRef {
  readonly namespace: string;
  readonly name: string;
}

const NONE: readonly Workload[] = Object.freeze([]);
const NO_ENDPOINTS: readonly ServiceEndpoint[] = Object.freeze([]);
const NO_SERVICES: readonly ServiceRef[] = Object.freeze([]);
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
 * every reader is a map lookup or returns a precomputed frozen list. Emits `'change'` (StoreChange) once per batch
 * that changed something.
 */
export class WorkloadStore extends EventEmitter {
  readonly trustDomain: string;
  readonly nodeName: string | undefined;
  readonly rootNamespace: string;
  readonly #log: Logger;
  readonly #entries: Record<DiscoveryKind, Map<string, Entry>> = {
    Namespace: new Map(),
    Pod: new Map(),
    Service: new Map(),
    Node: new Map(),
    EndpointSlice: new Map(),
  };
  readonly #networks = new Map<string, PodNetwork>();
  #indexes: Indexes = buildEmptyIndexes();
  #currentVersion = 0;
  #hasSynced = false;

  constructor(options: WorkloadStoreOptions = {}) {
    super();
    this.trustDomain = options.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    this.nodeName = options.nodeName;
    this.rootNamespace = options.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
    this.#log = options.log ?? silentLogger();
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
    for (const [kind, entries] of Object.entries(this.#entries) as Array<[DiscoveryKind, Map<string, Entry>]>) {
      for (const [key, entry] of entries) {
        if (entry.source === source && !listed.has(`${kind}:${key}`)) changes.push({ op: 'delete', kind, ...splitKey(key) });
      }
    }
    for (const upsert of upserts) changes.push({ op: 'upsert', ...upsert });
    this.applyBatch(changes, source);
  }

  /** Applies upserts and deletes, in order, as one batch: one index rebuild, one version, one `'change'`. */
  applyBatch(changes: readonly DiscoveryChange[], source: string = DEFAULT_SOURCE): void {
    let changed = false;
    for (const change of changes) {
      const entries = this.#entries[change.kind];
      if (change.op === 'delete') {
        const namespaced = change.kind === 'Pod' || change.kind === 'Service' || change.kind === 'EndpointSlice';
        // The same default a manifest without metadata.namespace gets, so a delete finds what the upsert stored.
        changed = entries.delete(namespaced ? `${change.namespace ?? 'default'}/${change.name}` : change.name) || changed;
        continue;
      }
      const key = keyOf(change);
      const fingerprint = JSON.stringify(change.object);
      const previous = entries.get(key);
      if (previous !== undefined && previous.fingerprint === fingerprint && previous.source === source) continue;
      entries.set(key, { object: change.object, source, fingerprint });
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
        changed = true;
        continue;
      }
      const network = Object.freeze({ ...change.network, ips: Object.freeze([...change.network.ips]) });
      const key = `${network.namespace}/${network.name}`;
      if (JSON.stringify(this.#networks.get(key)) === JSON.stringify(network)) continue;
      this.#networks.set(key, network);
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
    this.#indexes = this.#buildIndexes();
    this.#currentVersion += 1;
    this.#log.debug(
      { version: this.#currentVersion, source, workloads: this.#indexes.workloads.length, services: this.#indexes.services.length },
      'discovery store updated',
    );
    const event: StoreChange = { version: this.#currentVersion, source };
    this.emit('change', event);
  }

  /** The workload that owns a pod IP (host-network pods are not indexed: their IP is the node's). */
  workloadByIp(ip: string): Workload | undefined {
    const found = this.#indexes.byIp.get(ip);
    if (found !== undefined) return found;
    // The indexes hold canonical text (convertObject writes it); another spelling of the same address finds it too.
    const canonical = canonicalIp(ip);
    return canonical === undefined || canonical === ip ? undefined : this.#indexes.byIp.get(canonical);
  }

  /** Workloads scheduled on this store's node, enrolled or not. */
  localWorkloads(): readonly Workload[] {
    return this.#indexes.local;
  }

  /** The pod IPs whose traffic this node captures (the ipset), sorted. */
  localEnrolledIps(family: 4 | 6): readonly string[] {
    return this.#indexes.localEnrolledIps[family];
  }

  serviceByVip(ip: string): Service | undefined {
    const found = this.#indexes.serviceByVip.get(ip);
    if (found !== undefined) return found;
    // The indexes hold canonical text (convertObject writes it); another spelling of the same address finds it too.
    const canonical = canonicalIp(ip);
    return canonical === undefined || canonical === ip ? undefined : this.#indexes.serviceByVip.get(canonical);
  }

  /**
   * Where a service's TCP port `port` goes. From its EndpointSlices where it has any: their ready endpoints, or when
   * none is ready the serving ones that are terminating (as kube-proxy falls back). Else from its selector: the ready
   * pods with an IP in its namespace whose labels match. Undefined when the mesh does not know where the service goes
   * (no selector and no EndpointSlice: `default/kubernetes` in a folder without its slice, or endpoints managed
   * outside the cluster); empty when it knows there is no endpoint.
   */
  serviceEndpoints(service: Service, port: number): readonly ServiceEndpoint[] | undefined {
    const byPort = this.#indexes.endpoints.get(`${service.namespace}/${service.name}`);
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
    return this.#indexes.servicesByWorkload.get(`${workload.namespace}/${workload.name}`) ?? NO_SERVICES;
  }

  /**
   * The port to dial on `workload` for `servicePort` of `service`: the numeric targetPort, or the workload's
   * container port of that name. Undefined when the service has no such port or the workload no such named port.
   */
  resolveTargetPort(service: Service, servicePort: number, workload: Workload): number | undefined {
    // The mesh carries TCP: when a port number is served over TCP and UDP, the TCP mapping is the one that counts.
    const mapping =
      service.ports.find((p) => p.port === servicePort && p.protocol === 'TCP') ?? service.ports.find((p) => p.port === servicePort);
    if (mapping === undefined) return undefined;
    if (typeof mapping.targetPort === 'number') return mapping.targetPort;
    return workload.containerPorts.find((p) => p.name === mapping.targetPort && p.protocol === mapping.protocol)?.port;
  }

  node(name: string): NodeInfo | undefined {
    return this.#entries.Node.get(name)?.object as NodeInfo | undefined;
  }

  /** The node's `topology.kubernetes.io/zone`, for locality. */
  nodeZone(name: string | undefined): string | undefined {
    return name === undefined ? undefined : this.node(name)?.labels[ZONE_LABEL];
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
    return this.#indexes.workloads;
  }

  snapshot(): StoreDump {
    const { workloads, services } = this.#indexes;
    return {
      version: this.#currentVersion,
      trustDomain: this.trustDomain,
      nodeName: this.nodeName ?? null,
      namespaces: this.namespaces(),
      nodes: [...this.#entries.Node.values()].map((e) => e.object as NodeInfo),
      services: services.map((s) => ({ ...s, selector: s.selector ?? null, endpoints: this.#dumpEndpoints(s) })),
      endpointSlices: [...this.#entries.EndpointSlice.values()].map((e) => e.object as EndpointSlice),
      workloads: workloads.map((w) => ({ ...w, node: w.node ?? null })),
    };
  }

  #dumpEndpoints(service: Service): DumpedEndpoint[] | null {
    const byPort = this.#indexes.endpoints.get(`${service.namespace}/${service.name}`);
    if (byPort === undefined) return null;
    return [...byPort].flatMap(([servicePort, endpoints]) =>
      endpoints.map((e) => ({ servicePort, address: `${e.ip}:${e.port}`, workload: e.workload ? `${e.workload.namespace}/${e.workload.name}` : null })),
    );
  }

  #buildIndexes(): Indexes {
    const workloads: Workload[] = [];
    const byIp = new Map<string, Workload>();
    const local: Workload[] = [];
    const localIps = { 4: [] as string[], 6: [] as string[] };
    const byNamespace = new Map<string, Workload[]>();

    for (const [key, entry] of this.#entries.Pod) {
      const pod = entry.object as PodInfo;
      if (pod.terminated) continue;
      const enrolled = isWorkloadEnrolled(this.namespace(pod.namespace), pod, this.rootNamespace);
      // While the runtime's report of the pod's current sandbox stands (until its DEL), its IPs win: the status may
      // be behind (not yet written, or still the previous sandbox's), and the kubelet updates it only after ADD.
      const network = pod.hostNetwork ? undefined : this.#networks.get(key);
      if (entry.workload === undefined || entry.workload.enrolled !== enrolled || entry.network !== network) {
        entry.workload = toWorkload(network ? { ...pod, ips: network.ips, node: pod.node ?? this.nodeName } : pod, enrolled);
        entry.network = network;
      }
      const workload = entry.workload;
      workloads.push(workload);
      append(byNamespace, workload.namespace, workload);
      if (!workload.hostNetwork) {
        for (const ip of workload.ips) {
          const holder = byIp.get(ip);
          // Two live pods cannot share an IP for long (one is a stale record): prefer the ready one, else the first.
          if (holder !== undefined && (holder.ready || !workload.ready)) {
            this.#log.warn({ ip, kept: `${holder.namespace}/${holder.name}`, ignored: `${workload.namespace}/${workload.name}` }, 'two pods claim one IP');
            continue;
          }
          byIp.set(ip, workload);
        }
      }
      if (this.nodeName !== undefined && workload.node === this.nodeName) {
        local.push(workload);
        if (workload.enrolled) {
          for (const ip of workload.ips) localIps[isIP(ip) === 6 ? 6 : 4].push(ip);
        }
      }
    }

    const services: Service[] = [];
    const serviceByVip = new Map<string, Service>();
    const endpoints = new Map<string, ReadonlyMap<number, readonly ServiceEndpoint[]>>();
    const slicesByService = new Map<string, EndpointSlice[]>();
    const servicesByWorkload = new Map<string, ServiceRef[]>();
    for (const entry of this.#entries.EndpointSlice.values()) {
      const slice = entry.object as EndpointSlice;
      if (slice.serviceName !== undefined) append(slicesByService, `${slice.namespace}/${slice.serviceName}`, slice);
    }
    for (const entry of this.#entries.Service.values()) {
      const service = entry.object as Service;
      services.push(service);
      for (const vip of service.vips) {
        const holder = serviceByVip.get(vip);
        if (holder !== undefined) {
          this.#log.warn({ vip, kept: `${holder.namespace}/${holder.name}`, ignored: `${service.namespace}/${service.name}` }, 'two services claim one cluster IP');
          continue;
        }
        serviceByVip.set(vip, service);
      }
      const key = `${service.namespace}/${service.name}`;
      const slices = slicesByService.get(key);
      const selector = service.selector;
      const selected = selector === undefined ? NONE : (byNamespace.get(service.namespace) ?? []).filter((w) => selectorMatches(selector, w.labels));
      if (slices !== undefined) {
        endpoints.set(key, this.#endpointsFromSlices(service, slices, byIp));
      } else if (selector !== undefined) {
        endpoints.set(key, this.#endpointsFromPods(service, selected.filter((w) => w.ready && w.ips.length > 0)));
      }
      // Membership is the selector's match and the slices' listing together: a new pod is selected the moment it
      // exists, but listed only once the endpoint controller writes its slice, and a targetRefs policy must hold for
      // it in between. A slice may list any address; only a workload of the Service's own namespace is its member.
      const members = new Set<Workload>(selected);
      for (const slice of slices ?? []) {
        for (const endpoint of slice.endpoints) {
          const workload = byIp.get(endpoint.ip);
          if (workload !== undefined && workload.namespace === service.namespace) members.add(workload);
        }
      }
      const ref: ServiceRef = Object.freeze({ namespace: service.namespace, name: service.name });
      for (const workload of members) append(servicesByWorkload, `${workload.namespace}/${workload.name}`, ref);
    }

    return {
      workloads: Object.freeze(workloads),
      byIp,
      local: Object.freeze(local),
      localEnrolledIps: { 4: Object.freeze(localIps[4].sort()), 6: Object.freeze(localIps[6].sort()) },
      services: Object.freeze(services),
      serviceByVip,
      endpoints,
      servicesByWorkload: freezeLists(servicesByWorkload),
    };
  }

  /** Each TCP port of `service` served by the slice port of the same name (and protocol), as kube-proxy maps them. */
  #endpointsFromSlices(service: Service, slices: readonly EndpointSlice[], byIp: ReadonlyMap<string, Workload>): ReadonlyMap<number, readonly ServiceEndpoint[]> {
    const byPort = new Map<number, readonly ServiceEndpoint[]>();
    for (const servicePort of service.ports) {
      if (servicePort.protocol !== 'TCP' || byPort.has(servicePort.port)) continue;
      const name = servicePort.name ?? '';
      const ready = new Map<string, ServiceEndpoint>();
      const servingTerminating = new Map<string, ServiceEndpoint>();
      for (const slice of slices) {
        const port = slice.ports.find((p) => p.name === name && p.protocol === servicePort.protocol);
        if (port === undefined) continue;
        for (const endpoint of slice.endpoints) {
          const list = endpoint.ready ? ready : endpoint.serving && endpoint.terminating ? servingTerminating : undefined;
          const address = `${endpoint.ip}:${port.port}`;
          // One address in two slices (while the controller moves it) is one endpoint.
          if (list === undefined || list.has(address)) continue;
          const zone = endpoint.zone ?? this.nodeZone(endpoint.node);
          list.set(address, Object.freeze({ ip: endpoint.ip, port: port.port, workload: byIp.get(endpoint.ip), node: endpoint.node, zone }));
        }
      }
      byPort.set(servicePort.port, Object.freeze([...(ready.size > 0 ? ready : servingTerminating).values()]));
    }
    return byPort;
  }

  #endpointsFromPods(service: Service, pods: readonly Workload[]): ReadonlyMap<number, readonly ServiceEndpoint[]> {
    const byPort = new Map<number, readonly ServiceEndpoint[]>();
    for (const servicePort of service.ports) {
      if (servicePort.protocol !== 'TCP' || byPort.has(servicePort.port)) continue;
      const list: ServiceEndpoint[] = [];
      for (const workload of pods) {
        const port = this.resolveTargetPort(service, servicePort.port, workload);
        if (port === undefined) continue;
        const zone = this.nodeZone(workload.node);
        for (const ip of workload.ips) list.push(Object.freeze({ ip, port, workload, node: workload.node, zone }));
      }
      byPort.set(servicePort.port, Object.freeze(list));
    }
    return byPort;
  }
}

function buildEmptyIndexes(): Indexes {
  return {
    workloads: NONE,
    byIp: new Map(),
    local: NONE,
    localEnrolledIps: { 4: Object.freeze([]), 6: Object.freeze([]) },
    services: Object.freeze([]),
    serviceByVip: new Map(),
    endpoints: new Map(),
    servicesByWorkload: new Map(),
  };
}

function toWorkload(pod: PodInfo, enrolled: boolean): Workload {
  const { terminated: _terminated, ...fields } = pod;
  return Object.freeze({ ...fields, enrolled });
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

function append<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list === undefined) map.set(key, [value]);
  else list.push(value);
}

function freezeLists<K, V>(map: Map<K, V[]>): ReadonlyMap<K, readonly V[]> {
  for (const list of map.values()) Object.freeze(list);
  return map;
}
