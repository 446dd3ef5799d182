import { selectorMatches, type Labels } from '../../core/discovery/index.js';
import type { ResourceRegistry } from './resources.js';
import { labelsOf } from './selectors.js';
import { canonical, type ObjectStore } from './store.js';
import { StatusError } from './status.js';
import { child, isJsonObject, str, type Json, type JsonObject, type ResourceType, type StoreEvent } from './types.js';

export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
const MANAGED_BY_LABEL = 'endpointslice.kubernetes.io/managed-by';
const MANAGED_BY = 'endpointslice-controller.k8s.io';

/**
 * The part of kube-controller-manager the mesh reads: one EndpointSlice per Service with a selector, holding the
 * selected pods that have an IP, their readiness, and the Service's ports with numeric target ports. It runs inside
 * the store's event delivery, so its writes follow the pod or Service change that caused them in resourceVersion order.
 * It is incremental, so that the double stays cheap at 50k pods (the scale bench): a pod change recomputes only the
 * slices of the Services of its namespace whose selector matches its labels before or after, found through an index
 * of the Services by one of their selector's pairs; a Service change recomputes only its own slice, from an index of
 * the pods by label pair. `test/apiserver-endpointslices.test.ts` checks it against a full recompute.
 */
export class EndpointSliceController {
  readonly #store: ObjectStore;
  readonly #pods: ResourceType;
  readonly #services: ResourceType;
  readonly #slices: ResourceType;
  readonly #unsubscribe: () => void;
  /** namespace → pod name → its labels now. */
  readonly #podLabels = new Map<string, Map<string, Labels>>();
  /** namespace → `key=value` → the names of the pods with that label. */
  readonly #podsByLabel = new Map<string, Map<string, Set<string>>>();
  /** namespace → Service name → its selector (Services without one are not held). */
  readonly #selectors = new Map<string, Map<string, Labels>>();
  /** namespace → `key=value` of the first pair of a selector → the names of the Services with that selector. */
  readonly #servicesByPair = new Map<string, Map<string, Set<string>>>();

  /** Starts on an empty store (the double makes it first): the indexes are built from the events. */
  constructor(store: ObjectStore, registry: ResourceRegistry) {
    this.#store = store;
    this.#pods = required(registry.get('', 'v1', 'pods'));
    this.#services = required(registry.get('', 'v1', 'services'));
    this.#slices = required(registry.get('discovery.k8s.io', 'v1', 'endpointslices'));
    this.#unsubscribe = store.subscribe((event) => this.#onEvent(event));
  }

  stop(): void {
    this.#unsubscribe();
  }

  #onEvent(event: StoreEvent): void {
    const kind = str(event.object.kind);
    if (kind !== 'Pod' && kind !== 'Service') return;
    const namespace = namespaceOf(event.object);
    const name = nameOf(event.object);
    if (kind === 'Service') {
      const selector = event.type === 'DELETED' ? undefined : stringMap(child(event.object, 'spec').selector);
      this.#indexService(namespace, name, selector);
      if (event.type === 'DELETED') this.#deleteSlice(namespace, name);
      else this.#reconcile(namespace, event.object, selector);
      return;
    }
    const before = this.#podLabels.get(namespace)?.get(name);
    const after = event.type === 'DELETED' ? undefined : labelsOf(event.object);
    this.#indexPod(namespace, name, after);
    const affected = new Set([...this.#servicesSelecting(namespace, before), ...this.#servicesSelecting(namespace, after)]);
    for (const serviceName of [...affected].sort(byName)) {
      const service = this.#store.get(this.#services, namespace, serviceName);
      if (service !== undefined) this.#reconcile(namespace, service, this.#selectors.get(namespace)?.get(serviceName));
    }
  }

  /** The Services of `namespace` whose selector matches `labels`. */
  #servicesSelecting(namespace: string, labels: Labels | undefined): string[] {
    if (labels === undefined) return [];
    const byPair = this.#servicesByPair.get(namespace);
    const selectors = this.#selectors.get(namespace);
    if (byPair === undefined || selectors === undefined) return [];
    const found: string[] = [];
    for (const [key, value] of Object.entries(labels)) {
      for (const serviceName of byPair.get(pair(key, value)) ?? []) {
        const selector = selectors.get(serviceName);
        if (selector !== undefined && selectorMatches(selector, labels)) found.push(serviceName);
      }
    }
    return found;
  }

  /** The pods of `namespace` that `selector` selects, sorted by name (as the store lists them). */
  #selectedPods(namespace: string, selector: Labels): JsonObject[] {
    const byLabel = this.#podsByLabel.get(namespace);
    const labels = this.#podLabels.get(namespace);
    if (byLabel === undefined || labels === undefined) return [];
    let smallest: Set<string> | undefined;
    for (const [key, value] of Object.entries(selector)) {
      const names = byLabel.get(pair(key, value));
      if (names === undefined) return [];
      if (smallest === undefined || names.size < smallest.size) smallest = names;
    }
    const pods: JsonObject[] = [];
    for (const podName of [...(smallest ?? [])].sort(byName)) {
      if (!selectorMatches(selector, labels.get(podName) ?? {})) continue;
      const pod = this.#store.get(this.#pods, namespace, podName);
      if (pod !== undefined) pods.push(pod);
    }
    return pods;
  }

  #indexPod(namespace: string, name: string, labels: Labels | undefined): void {
    const held = this.#podLabels.get(namespace);
    const before = held?.get(name);
    const byLabel = this.#podsByLabel.get(namespace);
    for (const [key, value] of Object.entries(before ?? {})) removeFrom(byLabel, pair(key, value), name);
    if (labels === undefined) {
      held?.delete(name);
      return;
    }
    mapIn(this.#podLabels, namespace).set(name, labels);
    const index = mapIn(this.#podsByLabel, namespace);
    for (const [key, value] of Object.entries(labels)) addTo(index, pair(key, value), name);
  }

  #indexService(namespace: string, name: string, selector: Labels | undefined): void {
    const before = this.#selectors.get(namespace)?.get(name);
    if (before !== undefined) removeFrom(this.#servicesByPair.get(namespace), firstPair(before), name);
    if (selector === undefined) {
      this.#selectors.get(namespace)?.delete(name);
      return;
    }
    mapIn(this.#selectors, namespace).set(name, selector);
    addTo(mapIn(this.#servicesByPair, namespace), firstPair(selector), name);
  }

  #reconcile(namespace: string, service: JsonObject, selector: Labels | undefined): void {
    const serviceName = nameOf(service);
    if (selector === undefined) {
      this.#deleteSlice(namespace, serviceName);
      return;
    }
    const pods = this.#selectedPods(namespace, selector).filter((pod) => podIp(pod) !== undefined);
    const wanted = desiredSlice(namespace, service, pods);
    const current = this.#store.get(this.#slices, namespace, sliceName(serviceName));
    if (current === undefined) {
      this.#store.create(this.#slices, namespace, wanted);
    } else if (canonical(comparable(current)) !== canonical(comparable(wanted))) {
      this.#store.update(this.#slices, namespace, sliceName(serviceName), { ...wanted, metadata: { ...child(current, 'metadata'), ...child(wanted, 'metadata') } });
    }
  }

  #deleteSlice(namespace: string, serviceName: string): void {
    if (this.#store.get(this.#slices, namespace, sliceName(serviceName)) !== undefined) this.#store.delete(this.#slices, namespace, sliceName(serviceName));
  }
}

/**
 * The slice a Service with `selector` should have, given all the pods of its namespace: what the incremental
 * controller keeps, computed from scratch (the reference of its test).
 */
export function desiredSlice(namespace: string, service: JsonObject, pods: readonly JsonObject[]): JsonObject {
  const serviceName = nameOf(service);
  return {
    metadata: {
      name: sliceName(serviceName),
      namespace,
      labels: { [SERVICE_NAME_LABEL]: serviceName, [MANAGED_BY_LABEL]: MANAGED_BY },
      ownerReferences: [{ apiVersion: 'v1', kind: 'Service', name: serviceName, uid: child(service, 'metadata').uid ?? '', controller: true, blockOwnerDeletion: true }],
    },
    addressType: 'IPv4',
    endpoints: pods.map(endpointOf),
    ports: slicePorts(service, pods),
  };
}

/** One slice per Service is all the double makes; the real controller splits at 100 endpoints. */
export function sliceName(serviceName: string): string {
  return `${serviceName}-slice`;
}

function endpointOf(pod: JsonObject): JsonObject {
  const meta = child(pod, 'metadata');
  const conditions = child(pod, 'status').conditions;
  const ready = Array.isArray(conditions) && conditions.some((c) => isJsonObject(c) && c.type === 'Ready' && c.status === 'True');
  const terminating = meta.deletionTimestamp !== undefined && meta.deletionTimestamp !== null;
  const nodeName = str(child(pod, 'spec').nodeName);
  return {
    addresses: [podIp(pod) ?? ''],
    conditions: { ready: ready && !terminating, serving: ready, terminating },
    targetRef: { kind: 'Pod', namespace: meta.namespace ?? '', name: meta.name ?? '', uid: meta.uid ?? '' },
    ...(nodeName === undefined ? {} : { nodeName }),
  };
}

/** A named targetPort is resolved through the first selected pod that has a container port of that name. */
function slicePorts(service: JsonObject, pods: readonly JsonObject[]): JsonObject[] {
  const ports = child(service, 'spec').ports;
  if (!Array.isArray(ports)) return [];
  return ports.filter(isJsonObject).flatMap((port) => {
    const target = port.targetPort ?? port.port ?? null;
    const number = typeof target === 'number' ? target : typeof target === 'string' ? namedPort(pods, target) : undefined;
    if (number === undefined) return [];
    return [{ ...(port.name === undefined ? {} : { name: port.name }), port: number, protocol: port.protocol ?? 'TCP', ...(port.appProtocol === undefined ? {} : { appProtocol: port.appProtocol }) }];
  });
}

function namedPort(pods: readonly JsonObject[], name: string): number | undefined {
  if (/^\d+$/.test(name)) return Number(name);
  for (const pod of pods) {
    const containers = child(pod, 'spec').containers;
    for (const container of Array.isArray(containers) ? containers.filter(isJsonObject) : []) {
      const ports = container.ports;
      for (const port of Array.isArray(ports) ? ports.filter(isJsonObject) : []) {
        if (port.name === name && typeof port.containerPort === 'number') return port.containerPort;
      }
    }
  }
  return undefined;
}

function podIp(pod: JsonObject): string | undefined {
  const ip = str(child(pod, 'status').podIP);
  const phase = str(child(pod, 'status').phase);
  return ip === undefined || ip === '' || phase === 'Succeeded' || phase === 'Failed' ? undefined : ip;
}

function stringMap(value: Json | undefined): Labels | undefined {
  if (!isJsonObject(value) || Object.keys(value).length === 0) return undefined;
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) if (typeof v === 'string') labels[k] = v;
  return labels;
}

function namespaceOf(object: JsonObject): string {
  return str(child(object, 'metadata').namespace) ?? '';
}

function nameOf(object: JsonObject): string {
  return str(child(object, 'metadata').name) ?? '';
}

function pair(key: string, value: string): string {
  return `${key}=${value}`;
}

/** The pair a selector is indexed by: any one would do, as a pod it selects has them all. */
function firstPair(selector: Labels): string {
  const [key = ''] = Object.keys(selector).sort(byName);
  return pair(key, selector[key] ?? '');
}

function byName(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function mapIn<V>(maps: Map<string, Map<string, V>>, key: string): Map<string, V> {
  let map = maps.get(key);
  if (map === undefined) maps.set(key, (map = new Map()));
  return map;
}

function addTo(index: Map<string, Set<string>>, key: string, name: string): void {
  let names = index.get(key);
  if (names === undefined) index.set(key, (names = new Set()));
  names.add(name);
}

function removeFrom(index: Map<string, Set<string>> | undefined, key: string, name: string): void {
  const names = index?.get(key);
  if (names === undefined) return;
  names.delete(name);
  if (names.size === 0) index?.delete(key);
}

export function comparable(slice: JsonObject): JsonObject {
  return { endpoints: slice.endpoints ?? [], ports: slice.ports ?? [], labels: child(slice, 'metadata').labels ?? {} };
}

function required(type: ResourceType | undefined): ResourceType {
  if (type === undefined) throw new StatusError(500, 'InternalError', 'the EndpointSlice controller needs pods, services and endpointslices registered');
  return type;
}

