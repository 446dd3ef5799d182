import { isIP } from 'node:net';
import type { Logger } from '../log/index.js';
import { isWorkloadEnrolled } from '../enrollment/index.js';
import { selectorMatches } from './selector.js';
import {
  ZONE_LABEL,
  type ConvertedObject,
  type DiscoveryKind,
  type EndpointSlice,
  type NamespaceInfo,
  type NodeInfo,
  type PodInfo,
  type PodNetwork,
  type Service,
  type ServiceEndpoint,
  type Workload,
} from './types.js';

/** One object as the store holds it. */
export interface StoreEntry {
  readonly object: ConvertedObject['object'];
  readonly source: string;
  /**
   * The object's place in the order its kind is listed in (the order of its map: first insertion since its last
   * delete). Derived lists that keep that order (workloads, endpoints of a selector, the first of two claimants of
   * one IP) sort their few members by it instead of walking the whole map.
   */
  readonly seq: number;
}

export type StoreEntries = Readonly<Record<DiscoveryKind, Map<string, StoreEntry>>>;

/** A Service by name, as policies' targetRefs name it. */
export interface ServiceRef {
  readonly namespace: string;
  readonly name: string;
}

export interface StoreIndexOptions {
  readonly nodeName: string | undefined;
  readonly rootNamespace: string;
  readonly log: Logger;
}

/** A pod that is a workload (not terminated), as the indexes hold it. */
interface PodState {
  /** The entry and network the workload was built from: while both stand and its enrollment holds, it is reused. */
  readonly entry: StoreEntry;
  readonly network: PodNetwork | undefined;
  readonly workload: Workload;
  /** The Services (keys) whose selector matches the workload. */
  readonly selectedBy: Set<string>;
}

interface ServiceState {
  readonly service: Service;
  readonly ref: ServiceRef;
  /** The selector pair the service is filed under in #servicesByLabel, if it has a selector. */
  readonly pair: string | undefined;
  /** The workloads (pod keys) its selector matches. */
  readonly selected: Set<string>;
}

interface SliceState {
  readonly entry: StoreEntry;
  /** `namespace/name` of the Service the slice belongs to. */
  readonly service: string;
}

/** This node's workloads and the IPs it captures, built on read. */
interface LocalView {
  readonly workloads: readonly Workload[];
  readonly 4: readonly string[];
  readonly 6: readonly string[];
}

const NO_SERVICES: readonly ServiceRef[] = Object.freeze([]);
const NO_WORKLOADS: readonly Workload[] = Object.freeze([]);
const NO_IPS: readonly string[] = Object.freeze([]);

/**
 * The store's derived indexes, kept up to date change by change: the store marks what a batch changed (`mark*`),
 * and `flush` re-derives only what depends on it: a pod its workload, its IP entries and the endpoints and
 * memberships of the Services that select it or whose slices list its IPs; a Service its VIPs, endpoints and
 * members; a slice its Service; a namespace the enrollment of its workloads; a node the zones of the endpoints on
 * it. So the cost of a change follows what it touches, not the size of the cluster. Lists that only a rare reader
 * walks in full (every workload; this node's, for the capture set) are built on read and kept until a change
 * touches them.
 *
 * Readers never see half a batch: the store marks and flushes a batch synchronously, in one turn of the event loop
 * with no await, and emits its change only after the flush, so no reader (the data path runs on the same thread)
 * can run between the first change of a batch and the last.
 */
export class StoreIndex {
  readonly #entries: StoreEntries;
  readonly #networks: ReadonlyMap<string, PodNetwork>;
  readonly #options: StoreIndexOptions;

  readonly #pods = new Map<string, PodState>();
  /** Pod keys of the live pods that claim an IP (not host-network). */
  readonly #claims = new KeySets();
  readonly #byIp = new Map<string, Workload>();
  readonly #podsByNamespace = new KeySets();
  readonly #podsByLabel = new KeySets();
  readonly #podsByNode = new KeySets();

  readonly #services = new Map<string, ServiceState>();
  /** Each Service with a selector, filed under one of its pairs: a pod it selects carries that pair. */
  readonly #servicesByLabel = new KeySets();
  readonly #vipClaims = new KeySets();
  readonly #serviceByVip = new Map<string, Service>();
  /** By `namespace/name`, then by TCP service port; a service the mesh knows no endpoints of has no entry. */
  readonly #endpoints = new Map<string, ReadonlyMap<number, readonly ServiceEndpoint[]>>();
  /** By Service: the workloads (pod keys) that are its members (`servicesOf`). */
  readonly #members = new Map<string, Set<string>>();
  /** The same, by workload: the Services (keys) it is a member of, and the frozen list `servicesOf` returns. */
  readonly #memberOf = new KeySets();
  readonly #refs = new Map<string, readonly ServiceRef[]>();

  readonly #slices = new Map<string, SliceState>();
  readonly #slicesByService = new KeySets();
  readonly #slicesByIp = new KeySets();
  readonly #slicesByNode = new KeySets();

  #workloadList: readonly Workload[] | undefined;
  #local: LocalView | undefined;

  readonly #dirty = {
    Namespace: new Set<string>(),
    Node: new Set<string>(),
    Service: new Set<string>(),
    EndpointSlice: new Set<string>(),
    Pod: new Set<string>(),
  } satisfies Record<DiscoveryKind, Set<string>>;
  readonly #dirtyIps = new Set<string>();
  readonly #dirtyVips = new Set<string>();
  /** Services whose endpoints and members are to be derived again. */
  readonly #dirtyEndpoints = new Set<string>();
  /** Workloads whose `servicesOf` list is to be built again. */
  readonly #dirtyRefs = new Set<string>();

  constructor(entries: StoreEntries, networks: ReadonlyMap<string, PodNetwork>, options: StoreIndexOptions) {
    this.#entries = entries;
    this.#networks = networks;
    this.#options = options;
  }

  /** The object `key` of `kind` was upserted or deleted, or (for a pod) its network changed. */
  mark(kind: DiscoveryKind, key: string): void {
    this.#dirty[kind].add(key);
  }

  /** Derives again what the marked changes touch. */
  flush(): void {
    const dirty = this.#dirty;
    // a record that makes a derivation throw must not leave the marks behind, or every later batch throws with it
    try {
      for (const name of dirty.Namespace) for (const key of this.#podsByNamespace.values(name)) dirty.Pod.add(key);
      for (const name of dirty.Node) {
        for (const key of this.#podsByNode.values(name)) for (const service of this.#pods.get(key)?.selectedBy ?? []) this.#dirtyEndpoints.add(service);
        for (const key of this.#slicesByNode.values(name)) this.#dirtyEndpoints.add((this.#slices.get(key) as SliceState).service);
      }
      for (const key of dirty.Service) this.#reindexService(key);
      for (const key of dirty.EndpointSlice) this.#reindexSlice(key);
      for (const key of dirty.Pod) this.#reindexPod(key);
      for (const ip of this.#dirtyIps) this.#resolveIp(ip);
      for (const vip of this.#dirtyVips) this.#resolveVip(vip);
      for (const key of this.#dirtyEndpoints) this.#deriveService(key);
      for (const key of this.#dirtyRefs) this.#deriveRefs(key);
    } finally {
      for (const set of [...Object.values(dirty), this.#dirtyIps, this.#dirtyVips, this.#dirtyEndpoints, this.#dirtyRefs]) set.clear();
    }
  }

  get workloadCount(): number {
    return this.#pods.size;
  }

  workloadByIp(ip: string): Workload | undefined {
    return this.#byIp.get(ip);
  }

  serviceByVip(ip: string): Service | undefined {
    return this.#serviceByVip.get(ip);
  }

  endpoints(serviceKey: string): ReadonlyMap<number, readonly ServiceEndpoint[]> | undefined {
    return this.#endpoints.get(serviceKey);
  }

  servicesOf(podKey: string): readonly ServiceRef[] {
    return this.#refs.get(podKey) ?? NO_SERVICES;
  }

  /** Every workload, in the order of the pods. */
  workloads(): readonly Workload[] {
    if (this.#workloadList === undefined) {
      const list: Workload[] = [];
      for (const key of this.#entries.Pod.keys()) {
        const state = this.#pods.get(key);
        if (state !== undefined) list.push(state.workload);
      }
      this.#workloadList = Object.freeze(list);
    }
    return this.#workloadList;
  }

  localWorkloads(): readonly Workload[] {
    return this.#localView().workloads;
  }

  localEnrolledIps(family: 4 | 6): readonly string[] {
    return this.#localView()[family];
  }

  nodeZone(name: string | undefined): string | undefined {
    return name === undefined ? undefined : (this.#entries.Node.get(name)?.object as NodeInfo | undefined)?.labels[ZONE_LABEL];
  }

  #localView(): LocalView {
    if (this.#local !== undefined) return this.#local;
    const { nodeName } = this.#options;
    if (nodeName === undefined || this.#podsByNode.size(nodeName) === 0) {
      this.#local = { workloads: NO_WORKLOADS, 4: NO_IPS, 6: NO_IPS };
      return this.#local;
    }
    const workloads = this.#inPodOrder(this.#podsByNode.values(nodeName)).map((state) => state.workload);
    const ips = { 4: [] as string[], 6: [] as string[] };
    for (const workload of workloads) {
      if (workload.enrolled) for (const ip of workload.ips) ips[isIP(ip) === 6 ? 6 : 4].push(ip);
    }
    this.#local = { workloads: Object.freeze(workloads), 4: Object.freeze(ips[4].sort()), 6: Object.freeze(ips[6].sort()) };
    return this.#local;
  }

  #inPodOrder(keys: Iterable<string>): PodState[] {
    return [...keys].map((key) => this.#pods.get(key) as PodState).sort((a, b) => a.entry.seq - b.entry.seq);
  }

  #seq(kind: 'Service' | 'EndpointSlice', key: string): number {
    return (this.#entries[kind].get(key) as StoreEntry).seq;
  }

  #reindexPod(key: string): void {
    const entry = this.#entries.Pod.get(key);
    const pod = entry?.object as PodInfo | undefined;
    const state = this.#pods.get(key);
    let next: PodState | undefined;
    if (entry !== undefined && pod !== undefined && !pod.terminated) {
      const { nodeName, rootNamespace } = this.#options;
      const enrolled = isWorkloadEnrolled(this.#entries.Namespace.get(pod.namespace)?.object as NamespaceInfo | undefined, pod, rootNamespace);
      // While the runtime's report of the pod's current sandbox stands (until its DEL), its IPs win: the status may
      // be behind (not yet written, or still the previous sandbox's), and the kubelet updates it only after ADD.
      const network = pod.hostNetwork ? undefined : this.#networks.get(key);
      if (state !== undefined && state.entry === entry && state.network === network && state.workload.enrolled === enrolled) return;
      const workload = toWorkload(network ? { ...pod, ips: network.ips, node: pod.node ?? nodeName } : pod, enrolled);
      next = { entry, network, workload, selectedBy: new Set() };
    }
    if (state === undefined && next === undefined) return;
    if (state !== undefined) this.#unindexPod(key, state);
    if (next !== undefined) this.#indexPod(key, next);
    this.#workloadList = undefined;
  }

  #unindexPod(key: string, state: PodState): void {
    const { workload } = state;
    if (!workload.hostNetwork) {
      for (const ip of workload.ips) {
        this.#claims.delete(ip, key);
        this.#dirtyIps.add(ip);
      }
    }
    this.#podsByNamespace.delete(workload.namespace, key);
    for (const label in workload.labels) this.#podsByLabel.delete(labelKey(workload.namespace, label, workload.labels[label] as string), key);
    if (workload.node !== undefined) this.#podsByNode.delete(workload.node, key);
    if (workload.node !== undefined && workload.node === this.#options.nodeName) this.#local = undefined;
    for (const service of state.selectedBy) {
      this.#services.get(service)?.selected.delete(key);
      this.#dirtyEndpoints.add(service);
    }
    this.#pods.delete(key);
  }

  #indexPod(key: string, state: PodState): void {
    const { workload } = state;
    this.#pods.set(key, state);
    if (!workload.hostNetwork) {
      for (const ip of workload.ips) {
        // Two live pods cannot share an IP for long (one is a stale record): #resolveIp prefers the ready one.
        if (this.#claims.size(ip) > 0 && !this.#claims.has(ip, key)) {
          this.#options.log.warn({ ip, pods: [...this.#claims.values(ip), key] }, 'two pods claim one IP');
        }
        this.#claims.add(ip, key);
        this.#dirtyIps.add(ip);
      }
    }
    this.#podsByNamespace.add(workload.namespace, key);
    for (const label in workload.labels) {
      const pair = labelKey(workload.namespace, label, workload.labels[label] as string);
      this.#podsByLabel.add(pair, key);
      for (const service of this.#servicesByLabel.values(pair)) {
        const serviceState = this.#services.get(service) as ServiceState;
        if (!selectorMatches(serviceState.service.selector ?? {}, workload.labels)) continue;
        serviceState.selected.add(key);
        state.selectedBy.add(service);
        this.#dirtyEndpoints.add(service);
      }
    }
    if (workload.node !== undefined) this.#podsByNode.add(workload.node, key);
    if (workload.node !== undefined && workload.node === this.#options.nodeName) this.#local = undefined;
  }

  /** The holder of an IP: the first ready claimant in pod order, else the first. */
  #resolveIp(ip: string): void {
    let winner: PodState | undefined;
    for (const key of this.#claims.values(ip)) {
      const state = this.#pods.get(key) as PodState;
      if (winner === undefined || (winner.workload.ready === state.workload.ready ? state.entry.seq < winner.entry.seq : state.workload.ready)) winner = state;
    }
    if (winner?.workload === this.#byIp.get(ip)) return;
    if (winner === undefined) this.#byIp.delete(ip);
    else this.#byIp.set(ip, winner.workload);
    for (const slice of this.#slicesByIp.values(ip)) this.#dirtyEndpoints.add((this.#slices.get(slice) as SliceState).service);
  }

  #reindexService(key: string): void {
    const entry = this.#entries.Service.get(key);
    const state = this.#services.get(key);
    if (state !== undefined) {
      for (const vip of state.service.vips) {
        this.#vipClaims.delete(vip, key);
        this.#dirtyVips.add(vip);
      }
      if (state.pair !== undefined) this.#servicesByLabel.delete(state.pair, key);
      for (const pod of state.selected) this.#pods.get(pod)?.selectedBy.delete(key);
      // Its place among the services may have moved (deleted and created again), and servicesOf lists them in order.
      for (const pod of this.#members.get(key) ?? []) this.#dirtyRefs.add(pod);
      this.#services.delete(key);
    }
    this.#dirtyEndpoints.add(key);
    if (entry === undefined) return;
    const service = entry.object as Service;
    for (const vip of service.vips) {
      if (this.#vipClaims.size(vip) > 0) this.#options.log.warn({ vip, services: [...this.#vipClaims.values(vip), key] }, 'two services claim one cluster IP');
      this.#vipClaims.add(vip, key);
      this.#dirtyVips.add(vip);
    }
    const selector = service.selector;
    const pairs = selector === undefined ? [] : Object.keys(selector).map((label) => labelKey(service.namespace, label, selector[label] as string));
    const next: ServiceState = {
      service,
      ref: state?.ref ?? Object.freeze({ namespace: service.namespace, name: service.name }),
      // The pair fewest other services are filed under, so that a pod's labels find few candidates.
      pair: smallest(pairs, this.#servicesByLabel),
      selected: new Set(),
    };
    this.#services.set(key, next);
    if (next.pair !== undefined) this.#servicesByLabel.add(next.pair, key);
    // A pod it selects carries every pair of the selector: the pair fewest pods carry bounds the search.
    const narrowest = smallest(pairs, this.#podsByLabel);
    for (const pod of narrowest === undefined ? [] : (this.#podsByLabel.values(narrowest))) {
      const podState = this.#pods.get(pod) as PodState;
      if (selector === undefined || !selectorMatches(selector, podState.workload.labels)) continue;
      next.selected.add(pod);
      podState.selectedBy.add(key);
    }
  }

  /** The holder of a cluster IP: the first claimant in service order. */
  #resolveVip(vip: string): void {
    let winner: string | undefined;
    for (const key of this.#vipClaims.values(vip)) if (winner === undefined || this.#seq('Service', key) < this.#seq('Service', winner)) winner = key;
    if (winner === undefined) this.#serviceByVip.delete(vip);
    else this.#serviceByVip.set(vip, (this.#services.get(winner) as ServiceState).service);
  }

  #reindexSlice(key: string): void {
    const entry = this.#entries.EndpointSlice.get(key);
    const state = this.#slices.get(key);
    if (state !== undefined) {
      this.#slicesByService.delete(state.service, key);
      this.#dirtyEndpoints.add(state.service);
      for (const endpoint of (state.entry.object as EndpointSlice).endpoints) {
        this.#slicesByIp.delete(endpoint.ip, key);
        if (endpoint.node !== undefined) this.#slicesByNode.delete(endpoint.node, key);
      }
      this.#slices.delete(key);
    }
    const slice = entry?.object as EndpointSlice | undefined;
    if (entry === undefined || slice === undefined || slice.serviceName === undefined) return;
    const service = `${slice.namespace}/${slice.serviceName}`;
    this.#slices.set(key, { entry, service });
    this.#slicesByService.add(service, key);
    this.#dirtyEndpoints.add(service);
    for (const endpoint of slice.endpoints) {
      this.#slicesByIp.add(endpoint.ip, key);
      if (endpoint.node !== undefined) this.#slicesByNode.add(endpoint.node, key);
    }
  }

  /** A service's endpoints and members, from its slices and the workloads its selector matches. */
  #deriveService(key: string): void {
    const state = this.#services.get(key);
    const members = new Set<string>();
    if (state === undefined) {
      this.#endpoints.delete(key);
    } else {
      const { service } = state;
      const slices = [...(this.#slicesByService.values(key))]
        .sort((a, b) => this.#seq('EndpointSlice', a) - this.#seq('EndpointSlice', b))
        .map((slice) => (this.#slices.get(slice) as SliceState).entry.object as EndpointSlice);
      const selected = this.#inPodOrder(state.selected).map((pod) => pod.workload);
      if (slices.length > 0) this.#endpoints.set(key, this.#endpointsFromSlices(service, slices));
      else if (service.selector !== undefined) this.#endpoints.set(key, this.#endpointsFromPods(service, selected.filter((w) => w.ready && w.ips.length > 0)));
      else this.#endpoints.delete(key);
      // Membership is the selector's match and the slices' listing together: a new pod is selected the moment it
      // exists, but listed only once the endpoint controller writes its slice, and a targetRefs policy must hold for
      // it in between. A slice may list any address; only a workload of the Service's own namespace is its member.
      for (const workload of selected) members.add(`${workload.namespace}/${workload.name}`);
      for (const slice of slices) {
        for (const endpoint of slice.endpoints) {
          const workload = this.#byIp.get(endpoint.ip);
          if (workload !== undefined && workload.namespace === service.namespace) members.add(`${workload.namespace}/${workload.name}`);
        }
      }
    }
    const previous = this.#members.get(key);
    for (const pod of previous ?? []) {
      if (members.has(pod)) continue;
      this.#memberOf.delete(pod, key);
      this.#dirtyRefs.add(pod);
    }
    for (const pod of members) {
      if (previous?.has(pod)) continue;
      this.#memberOf.add(pod, key);
      this.#dirtyRefs.add(pod);
    }
    if (members.size > 0) this.#members.set(key, members);
    else this.#members.delete(key);
  }

  /** A workload's `servicesOf`: its Services in service order. */
  #deriveRefs(pod: string): void {
    if (this.#memberOf.size(pod) === 0) {
      this.#refs.delete(pod);
      return;
    }
    const ordered = [...this.#memberOf.values(pod)].sort((a, b) => this.#seq('Service', a) - this.#seq('Service', b));
    this.#refs.set(pod, Object.freeze(ordered.map((service) => (this.#services.get(service) as ServiceState).ref)));
  }

  /** Each TCP port of `service` served by the slice port of the same name (and protocol), as kube-proxy maps them. */
  #endpointsFromSlices(service: Service, slices: readonly EndpointSlice[]): ReadonlyMap<number, readonly ServiceEndpoint[]> {
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
          list.set(address, Object.freeze({ ip: endpoint.ip, port: port.port, workload: this.#byIp.get(endpoint.ip), node: endpoint.node, zone }));
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
        const port = resolveTargetPort(service, servicePort.port, workload);
        if (port === undefined) continue;
        const zone = this.nodeZone(workload.node);
        for (const ip of workload.ips) list.push(Object.freeze({ ip, port, workload, node: workload.node, zone }));
      }
      byPort.set(servicePort.port, Object.freeze(list));
    }
    return byPort;
  }
}

/**
 * The port to dial on `workload` for `servicePort` of `service`: the numeric targetPort, or the workload's
 * container port of that name. Undefined when the service has no such port or the workload no such named port.
 */
export function resolveTargetPort(service: Service, servicePort: number, workload: Workload): number | undefined {
  // The mesh carries TCP: when a port number is served over TCP and UDP, the TCP mapping is the one that counts.
  const mapping = service.ports.find((p) => p.port === servicePort && p.protocol === 'TCP') ?? service.ports.find((p) => p.port === servicePort);
  if (mapping === undefined) return undefined;
  if (typeof mapping.targetPort === 'number') return mapping.targetPort;
  return workload.containerPorts.find((p) => p.name === mapping.targetPort && p.protocol === mapping.protocol)?.port;
}

function toWorkload(pod: PodInfo, enrolled: boolean): Workload {
  const { terminated: _terminated, ...fields } = pod;
  return Object.freeze({ ...fields, enrolled });
}

/** A label pair of a namespace, as the selector indexes file it (NUL cannot occur in a name or a label). */
function labelKey(namespace: string, label: string, value: string): string {
  return `${namespace}\u0000${label}\u0000${value}`;
}

/** Of `keys`, the one with the fewest members in `index` (absent: none); undefined for no keys. */
function smallest(keys: readonly string[], index: KeySets): string | undefined {
  let best: string | undefined;
  let size = Infinity;
  for (const key of keys) {
    const count = index.size(key);
    if (count < size) [best, size] = [key, count];
  }
  return best;
}

const NONE: readonly string[] = Object.freeze([]);

/**
 * Sets of strings by key, for the store's indexes. A key with one member holds the string itself: most of them have
 * one (a pod's IP, the Services of one pod, a slice's endpoint IP, a label pair of one deployment), and a Set of one
 * costs about 200 bytes of heap, most of the store's at 10k pods (bench/scale.ts). A key with none is removed.
 */
class KeySets {
  readonly #map = new Map<string, string | Set<string>>();

  add(key: string, value: string): void {
    const held = this.#map.get(key);
    if (held === undefined) this.#map.set(key, value);
    else if (typeof held !== 'string') held.add(value);
    else if (held !== value) this.#map.set(key, new Set([held, value]));
  }

  delete(key: string, value: string): void {
    const held = this.#map.get(key);
    if (held === undefined) return;
    if (typeof held === 'string') {
      if (held === value) this.#map.delete(key);
      return;
    }
    held.delete(value);
    if (held.size === 1) this.#map.set(key, held.values().next().value as string);
  }

  /**
   * The members of `key`, in the order they were added (none: an empty list). For two or more it is the live Set:
   * a caller that changes this KeySets while it iterates copies it first.
   */
  values(key: string): Iterable<string> {
    const held = this.#map.get(key);
    return held === undefined ? NONE : typeof held === 'string' ? [held] : held;
  }

  size(key: string): number {
    const held = this.#map.get(key);
    return held === undefined ? 0 : typeof held === 'string' ? 1 : held.size;
  }

  has(key: string, value: string): boolean {
    const held = this.#map.get(key);
    return held === undefined ? false : typeof held === 'string' ? held === value : held.has(value);
  }
}
