export { ENROLL_LABEL, ISTIO_DATAPLANE_LABEL } from '../enrollment/index.js';

/** The label that links an EndpointSlice to its Service (same namespace), as kube-proxy reads it. */
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
/** A Node's zone, which an EndpointSlice copies onto its endpoints. */
export const ZONE_LABEL = 'topology.kubernetes.io/zone';

import type { Labels } from '../enrollment/index.js';
export type { Labels };

export interface ContainerPort {
  readonly name?: string;
  readonly port: number;
  readonly protocol: string;
}

/** A pod as the data path sees it. Objects handed out by the store are frozen. */
export interface Workload {
  /** metadata.uid, or `${namespace}/${name}` when the object has none (hand-written local files). */
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  /** The name metrics use for `*_workload` labels: canonical-name labels, else the owning controller, else the pod. */
  readonly workloadName: string;
  readonly serviceAccount: string;
  /** spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount> */
  readonly identity: string;
  readonly node: string | undefined;
  /** Canonical text form (IPv6 compressed, lower case), so lookups by socket address match. */
  readonly ips: readonly string[];
  readonly labels: Labels;
  readonly hostNetwork: boolean;
  /** Running (or phase unknown), not being deleted, and no Ready=False condition. */
  readonly ready: boolean;
  /** Captured by the mesh: its namespace enrolls it, the pod does not opt out, and it has its own network namespace. */
  readonly enrolled: boolean;
  readonly containerPorts: readonly ContainerPort[];
}

/**
 * A converted pod before the store joins it with its namespace. Terminal pods (Succeeded, Failed) are kept so a
 * watch source can upsert whatever it sees, but they never become workloads: their IPs are free for reuse.
 */
export interface PodInfo extends Omit<Workload, 'enrolled'> {
  readonly terminated: boolean;
}

export interface ServicePort {
  readonly name?: string;
  readonly port: number;
  /** A port number, or the name of a container port on each endpoint. */
  readonly targetPort: number | string;
  readonly protocol: string;
}

export interface Service {
  readonly namespace: string;
  readonly name: string;
  /** name.namespace.svc.cluster.local */
  readonly hostname: string;
  /** ClusterIPs, without `None`; empty for headless and ExternalName services. */
  readonly vips: readonly string[];
  readonly ports: readonly ServicePort[];
  /** Undefined when the service selects no pods (no selector, or an empty one, as Kubernetes treats it). */
  readonly selector: Labels | undefined;
  readonly labels: Labels;
}

/** One endpoint of an EndpointSlice, its conditions read as Kubernetes defines their absence. */
export interface SliceEndpoint {
  /** The first address, canonical: the API says the addresses are fungible and a consumer may use only the first, as kube-proxy does. */
  readonly ip: string;
  /** `ready` absent: ready. */
  readonly ready: boolean;
  /** `serving` absent: as `ready`. */
  readonly serving: boolean;
  /** `terminating` absent: not terminating. */
  readonly terminating: boolean;
  readonly node: string | undefined;
  readonly zone: string | undefined;
}

export interface SlicePort {
  /** The Service port it serves, by name; '' for the single unnamed port. */
  readonly name: string;
  readonly port: number;
  readonly protocol: string;
}

/**
 * A `discovery.k8s.io/v1` EndpointSlice with IP addresses (FQDN slices name hosts, which the mesh cannot route by).
 * Where a Service has any, they are its endpoints, instead of the pods its selector matches.
 */
export interface EndpointSlice {
  readonly namespace: string;
  readonly name: string;
  /** The `kubernetes.io/service-name` label; undefined: the slice belongs to no Service. */
  readonly serviceName: string | undefined;
  readonly addressType: 'IPv4' | 'IPv6';
  readonly ports: readonly SlicePort[];
  readonly endpoints: readonly SliceEndpoint[];
}

/** Where one port of a Service can be reached: an address and port to dial, and where it runs. */
export interface ServiceEndpoint {
  readonly ip: string;
  readonly port: number;
  /** The pod that has the address, when the store knows one: whether it is in the mesh decides how to get there. */
  readonly workload: Workload | undefined;
  readonly node: string | undefined;
  readonly zone: string | undefined;
}

export interface NodeInfo {
  readonly name: string;
  /** IP addresses only: InternalIP first, then ExternalIP. */
  readonly addresses: readonly string[];
  readonly labels: Labels;
}

export interface NamespaceInfo {
  readonly name: string;
  readonly labels: Labels;
}

export type DiscoveryKind = 'Namespace' | 'Pod' | 'Service' | 'Node' | 'EndpointSlice';

/** One object ready for the store. */
export type ConvertedObject =
  | { readonly kind: 'Namespace'; readonly object: NamespaceInfo }
  | { readonly kind: 'Pod'; readonly object: PodInfo }
  | { readonly kind: 'Service'; readonly object: Service }
  | { readonly kind: 'Node'; readonly object: NodeInfo }
  | { readonly kind: 'EndpointSlice'; readonly object: EndpointSlice };

/** What `convertObject` makes of a Kubernetes object: something for the store, or a kind discovery does not use. */
export type Converted = ConvertedObject | { readonly kind: 'skip'; readonly reason: string };

/** Everything one source knows, handed to the store in one batch. */
export interface DiscoverySnapshot {
  readonly namespaces: readonly NamespaceInfo[];
  readonly pods: readonly PodInfo[];
  readonly services: readonly Service[];
  readonly nodes: readonly NodeInfo[];
  readonly endpointSlices: readonly EndpointSlice[];
}

/** One change of an incremental batch; a delete of a namespaced kind without `namespace` means `default`. */
export type DiscoveryChange =
  | ({ readonly op: 'upsert' } & ConvertedObject)
  | { readonly op: 'delete'; readonly kind: DiscoveryKind; readonly namespace?: string; readonly name: string };

/**
 * A pod's network as the container runtime reported it through the CNI plugin, before (or instead of) the pod's
 * status carrying its IPs. It gives an enrolled pod its rules from its first packet; the pod object still decides
 * everything else (labels, identity, readiness).
 */
export interface PodNetwork {
  readonly namespace: string;
  readonly name: string;
  /** The sandbox the runtime made the network for: a DEL of an older sandbox does not remove a newer one's. */
  readonly containerId: string;
  /** Canonical text form. */
  readonly ips: readonly string[];
  /** The interfaces outside the sandbox that CNI ADD reported (the pod's host-side veth, its bridge): see CniPod. */
  readonly hostInterfaces?: readonly string[];
}

export type PodNetworkChange =
  | { readonly op: 'upsert'; readonly network: PodNetwork }
  /** Removes the entry; with `containerId`, only when it is that sandbox's. */
  | { readonly op: 'delete'; readonly namespace: string; readonly name: string; readonly containerId?: string };

/** The argument of the store's `'change'` event. */
export interface StoreChange {
  readonly version: number;
  readonly source: string;
}
