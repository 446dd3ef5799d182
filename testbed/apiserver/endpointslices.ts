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
 */
export class EndpointSliceController {
  readonly #store: ObjectStore;
  readonly #pods: ResourceType;
  readonly #services: ResourceType;
  readonly #slices: ResourceType;
  readonly #unsubscribe: () => void;

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
    const meta = child(event.object, 'metadata');
    const namespace = str(meta.namespace) ?? '';
    if (kind === 'Service' && event.type === 'DELETED') {
      this.#deleteSlice(namespace, str(meta.name) ?? '');
      return;
    }
    const services = kind === 'Service' ? [event.object] : this.#store.list(this.#services, namespace);
    for (const service of services) this.#reconcile(namespace, service);
  }

  #reconcile(namespace: string, service: JsonObject): void {
    const serviceName = str(child(service, 'metadata').name) ?? '';
    const selector = stringMap(child(service, 'spec').selector);
    if (selector === undefined) {
      this.#deleteSlice(namespace, serviceName);
      return;
    }
    const pods = this.#store.list(this.#pods, namespace).filter((pod) => selectorMatches(selector, labelsOf(pod)) && podIp(pod) !== undefined);
    const wanted: JsonObject = {
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

function comparable(slice: JsonObject): JsonObject {
  return { endpoints: slice.endpoints ?? [], ports: slice.ports ?? [], labels: child(slice, 'metadata').labels ?? {} };
}

function required(type: ResourceType | undefined): ResourceType {
  if (type === undefined) throw new StatusError(500, 'InternalError', 'the EndpointSlice controller needs pods, services and endpointslices registered');
  return type;
}

