import { isIP } from 'node:net';
import { AmbitError } from '../errors/index.js';
import { spiffeId } from '../identity/index.js';
import { canonicalIp } from '../ip/index.js';
import { isDnsLabel, isDnsSubdomain } from '../names/index.js';
import {
  SERVICE_NAME_LABEL,
  type ContainerPort,
  type Converted,
  type EndpointSlice,
  type Labels,
  type NamespaceInfo,
  type NodeInfo,
  type PodInfo,
  type Service,
  type ServicePort,
  type SliceEndpoint,
  type SlicePort,
} from './types.js';

/** The DNS suffix of Service names; unlike the trust domain it is fixed by the cluster's DNS, not by the mesh. */
export const CLUSTER_DOMAIN = 'cluster.local';

/** Labels that name the workload for metrics, in Istio's order of preference, so dashboards show the same names. */
const CANONICAL_NAME_LABELS = ['service.istio.io/canonical-name', 'app.kubernetes.io/name', 'app'];
/** The alphabet of Kubernetes' generated name suffixes (rand.SafeEncodeString): no vowels, no look-alikes. */
const REPLICA_SET_HASH_SUFFIX = /^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}$/;
/** A CronJob names each Job `<cronjob>-<scheduled minute>`; one metric series per run would be useless. */
const CRON_JOB_SUFFIX = /^(.+)-\d{8,10}$/;

const DNS_1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const IANA_SERVICE_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
const PROTOCOLS = new Set(['TCP', 'UDP', 'SCTP']);

/** A Kubernetes object that cannot be used; the fields let a source log it as structured data. */
export class InvalidObjectError extends AmbitError {
  readonly kind: string;
  readonly namespace: string | undefined;
  readonly objectName: string | undefined;
  readonly field: string;
  readonly reason: string;

  constructor(details: { kind: string; namespace: string | undefined; objectName: string | undefined; field: string; reason: string }) {
    const name = details.objectName ?? '<unnamed>';
    const ref = details.namespace === undefined ? name : `${details.namespace}/${name}`;
    super('INVALID_OBJECT', `${details.kind} ${ref}: field ${details.field}: ${details.reason}`);
    this.kind = details.kind;
    this.namespace = details.namespace;
    this.objectName = details.objectName;
    this.field = details.field;
    this.reason = details.reason;
  }
}

type Fields = Record<string, unknown>;

/**
 * Reads an object's fields and names the object in every failure; `namespace` is undefined for cluster-scoped kinds.
 * Other kinds' converters (policies) build on it.
 */
export class ObjectReader {
  constructor(
    readonly kind: string,
    readonly namespace: string | undefined,
    readonly name: string | undefined,
  ) {}

  fail(field: string, reason: string): never {
    throw new InvalidObjectError({ kind: this.kind, namespace: this.namespace, objectName: this.name, field, reason });
  }

  record(value: unknown, field: string): Fields | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'object' || Array.isArray(value)) this.fail(field, `must be an object, got ${describe(value)}`);
    return value as Fields;
  }

  array(value: unknown, field: string): unknown[] {
    if (value === undefined || value === null) return [];
    if (!Array.isArray(value)) this.fail(field, `must be a list, got ${describe(value)}`);
    return value;
  }

  string(value: unknown, field: string): string | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'string') this.fail(field, `must be a string, got ${describe(value)}`);
    return value;
  }

  boolean(value: unknown, field: string): boolean {
    if (value === undefined || value === null) return false;
    if (typeof value !== 'boolean') this.fail(field, `must be true or false, got ${describe(value)}`);
    return value;
  }

  port(value: unknown, field: string): number {
    if (value === undefined || value === null) this.fail(field, 'is required');
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
      this.fail(field, `must be a port number from 1 to 65535, got ${describe(value)}`);
    }
    return value;
  }

  ip(value: unknown, field: string): string {
    const text = this.string(value, field);
    if (text === undefined) this.fail(field, 'is required');
    const canonical = canonicalIp(text);
    if (canonical === undefined) this.fail(field, `must be an IPv4 or IPv6 address, got ${JSON.stringify(text)}`);
    return canonical;
  }

  protocol(value: unknown, field: string): string {
    const protocol = this.string(value, field) ?? 'TCP';
    if (!PROTOCOLS.has(protocol)) this.fail(field, `must be TCP, UDP or SCTP, got ${JSON.stringify(protocol)}`);
    return protocol;
  }

  portName(value: unknown, field: string): string | undefined {
    const name = this.string(value, field);
    if (name !== undefined && !isIanaServiceName(name)) {
      this.fail(field, `must be a port name (at most 15 lower-case letters, digits and '-', with a letter), got ${JSON.stringify(name)}`);
    }
    return name;
  }

  labels(value: unknown, field: string): Labels {
    const map = this.record(value, field);
    const labels: Record<string, string> = {};
    if (map === undefined) return Object.freeze(labels);
    for (const [key, labelValue] of Object.entries(map)) {
      if (typeof labelValue !== 'string') this.fail(`${field}.${key}`, `must be a string, got ${describe(labelValue)} (quote it)`);
      labels[key] = labelValue;
    }
    return Object.freeze(labels);
  }
}

/**
 * Converts one Kubernetes object (raw JSON, or a model instance from @kubernetes/client-node) into what the store
 * keeps. Kinds discovery does not use are skipped; a malformed object of a used kind throws InvalidObjectError
 * (code INVALID_OBJECT) naming the object, the field and the reason.
 */
export function convertObject(obj: unknown, trustDomain: string): Converted {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
    throw new InvalidObjectError({ kind: 'Object', namespace: undefined, objectName: undefined, field: '.', reason: `must be a Kubernetes object, got ${describe(obj)}` });
  }
  const fields = obj as Fields;
  const kind = fields.kind;
  const apiVersion = fields.apiVersion;
  if (typeof kind !== 'string' || kind === '' || typeof apiVersion !== 'string' || apiVersion === '') {
    const metadata = typeof fields.metadata === 'object' && fields.metadata !== null ? (fields.metadata as Fields) : {};
    const name = typeof metadata.name === 'string' ? metadata.name : undefined;
    const field = typeof kind !== 'string' || kind === '' ? 'kind' : 'apiVersion';
    throw new InvalidObjectError({ kind: typeof kind === 'string' && kind !== '' ? kind : 'Object', namespace: undefined, objectName: name, field, reason: 'is required' });
  }
  if (apiVersion === 'discovery.k8s.io/v1' && kind === 'EndpointSlice') {
    const slice = convertEndpointSlice(fields);
    return slice === undefined ? { kind: 'skip', reason: 'an FQDN EndpointSlice names hosts; the mesh routes by address' } : { kind, object: slice };
  }
  if (apiVersion !== 'v1') return { kind: 'skip', reason: `${apiVersion} ${kind} is not used by discovery` };
  switch (kind) {
    case 'Namespace':
      return { kind, object: convertNamespace(fields) };
    case 'Pod':
      return { kind, object: convertPod(fields, trustDomain) };
    case 'Service':
      return { kind, object: convertService(fields) };
    case 'Node':
      return { kind, object: convertNode(fields) };
    default:
      return { kind: 'skip', reason: `v1 ${kind} is not used by discovery` };
  }
}

function readMetadata(kind: string, fields: Fields, namespaced: boolean): { reader: ObjectReader; metadata: Fields; name: string } {
  const metadataValue = fields.metadata;
  const unnamed: ObjectReader = new ObjectReader(kind, namespaced ? 'default' : undefined, undefined);
  const metadata = unnamed.record(metadataValue, 'metadata');
  if (metadata === undefined) unnamed.fail('metadata', 'is required');
  const rawName = typeof metadata.name === 'string' && metadata.name !== '' ? metadata.name : undefined;
  let namespace: string | undefined;
  if (namespaced) {
    const named = new ObjectReader(kind, 'default', rawName);
    namespace = named.string(metadata.namespace, 'metadata.namespace') || 'default';
    if (!isDnsLabel(namespace)) named.fail('metadata.namespace', `must be a DNS label, got ${JSON.stringify(namespace)}`);
  }
  const reader: ObjectReader = new ObjectReader(kind, namespace, rawName);
  const name = reader.string(metadata.name, 'metadata.name');
  if (name === undefined || name === '') reader.fail('metadata.name', 'is required');
  return { reader, metadata, name };
}

function convertNamespace(fields: Fields): NamespaceInfo {
  const { reader, metadata, name } = readMetadata('Namespace', fields, false);
  if (!isDnsLabel(name)) reader.fail('metadata.name', `must be a DNS label, got ${JSON.stringify(name)}`);
  return Object.freeze({ name, labels: reader.labels(metadata.labels, 'metadata.labels') });
}

function convertPod(fields: Fields, trustDomain: string): PodInfo {
  const { reader, metadata, name } = readMetadata('Pod', fields, true);
  const namespace = reader.namespace ?? 'default';
  if (!isDnsSubdomain(name)) reader.fail('metadata.name', `must be a DNS subdomain, got ${JSON.stringify(name)}`);
  const uid = reader.string(metadata.uid, 'metadata.uid') || `${namespace}/${name}`;
  const labels = reader.labels(metadata.labels, 'metadata.labels');
  const owners = readOwners(reader, metadata.ownerReferences);
  const deleting = metadata.deletionTimestamp !== undefined && metadata.deletionTimestamp !== null;

  const spec = reader.record(fields.spec, 'spec') ?? {};
  // serviceAccount is the deprecated spelling the API server still fills in.
  const serviceAccount =
    reader.string(spec.serviceAccountName, 'spec.serviceAccountName') || reader.string(spec.serviceAccount, 'spec.serviceAccount') || 'default';
  if (!isDnsSubdomain(serviceAccount)) {
    reader.fail('spec.serviceAccountName', `must be a DNS subdomain, got ${JSON.stringify(serviceAccount)}`);
  }
  const node = reader.string(spec.nodeName, 'spec.nodeName') || undefined;
  const hostNetwork = reader.boolean(spec.hostNetwork, 'spec.hostNetwork');
  const containerPorts = readContainerPorts(reader, spec);

  const status = reader.record(fields.status, 'status') ?? {};
  const phase = reader.string(status.phase, 'status.phase');
  const ips: string[] = [];
  reader.array(status.podIPs, 'status.podIPs').forEach((entry, i) => {
    const podIp = reader.record(entry, `status.podIPs[${i}]`) ?? reader.fail(`status.podIPs[${i}]`, 'must be an object with an ip');
    addUnique(ips, reader.ip(podIp.ip, `status.podIPs[${i}].ip`));
  });
  const podIp = reader.string(status.podIP, 'status.podIP');
  if (ips.length === 0 && podIp) ips.push(reader.ip(podIp, 'status.podIP'));
  const readyFalse = reader.array(status.conditions, 'status.conditions').some((entry, i) => {
    const condition = reader.record(entry, `status.conditions[${i}]`) ?? {};
    const type = reader.string(condition.type, `status.conditions[${i}].type`);
    const conditionStatus = reader.string(condition.status, `status.conditions[${i}].status`);
    return type === 'Ready' && conditionStatus === 'False';
  });
  const terminated = phase === 'Succeeded' || phase === 'Failed';

  return Object.freeze({
    uid,
    name,
    namespace,
    workloadName: workloadNameOf(name, labels, owners),
    serviceAccount,
    identity: spiffeId(trustDomain, namespace, serviceAccount),
    node,
    ips: Object.freeze(ips),
    labels,
    hostNetwork,
    // A pod being deleted keeps running while it drains; like an EndpointSlice, stop sending it new connections.
    ready: !terminated && (phase === undefined || phase === 'Running') && !deleting && !readyFalse,
    containerPorts,
    terminated,
  });
}

function readOwners(reader: ObjectReader, value: unknown): Array<{ kind: string; name: string; controller: boolean }> {
  return reader.array(value, 'metadata.ownerReferences').map((entry, i) => {
    const field = `metadata.ownerReferences[${i}]`;
    const owner = reader.record(entry, field) ?? {};
    return {
      kind: reader.string(owner.kind, `${field}.kind`) ?? '',
      name: reader.string(owner.name, `${field}.name`) ?? '',
      controller: reader.boolean(owner.controller, `${field}.controller`),
    };
  });
}

function readContainerPorts(reader: ObjectReader, spec: Fields): readonly ContainerPort[] {
  const ports: ContainerPort[] = [];
  const collect = (listField: 'containers' | 'initContainers', onlySidecars: boolean) => {
    reader.array(spec[listField], `spec.${listField}`).forEach((entry, i) => {
      const field = `spec.${listField}[${i}]`;
      const container = reader.record(entry, field) ?? {};
      // Only init containers that keep running (native sidecars) serve traffic.
      if (onlySidecars && reader.string(container.restartPolicy, `${field}.restartPolicy`) !== 'Always') return;
      reader.array(container.ports, `${field}.ports`).forEach((portEntry, j) => {
        const portField = `${field}.ports[${j}]`;
        const port = reader.record(portEntry, portField) ?? {};
        const name = reader.portName(port.name, `${portField}.name`);
        ports.push(
          Object.freeze({
            ...(name === undefined ? {} : { name }),
            port: reader.port(port.containerPort, `${portField}.containerPort`),
            protocol: reader.protocol(port.protocol, `${portField}.protocol`),
          }),
        );
      });
    });
  };
  collect('containers', false);
  collect('initContainers', true);
  return Object.freeze(ports);
}

function convertService(fields: Fields): Service {
  const { reader, metadata, name } = readMetadata('Service', fields, true);
  const namespace = reader.namespace ?? 'default';
  if (!DNS_1035_LABEL.test(name) || name.length > 63) {
    reader.fail('metadata.name', `must be a DNS label starting with a letter, got ${JSON.stringify(name)}`);
  }
  const labels = reader.labels(metadata.labels, 'metadata.labels');
  const spec = reader.record(fields.spec, 'spec') ?? {};
  const type = reader.string(spec.type, 'spec.type');

  const vips: string[] = [];
  const clusterIp = reader.string(spec.clusterIP, 'spec.clusterIP');
  const clusterIps = spec.clusterIPs === undefined || spec.clusterIPs === null ? undefined : reader.array(spec.clusterIPs, 'spec.clusterIPs');
  if (clusterIps !== undefined && clusterIps.length > 0) {
    clusterIps.forEach((ip, i) => {
      if (ip !== 'None') addUnique(vips, reader.ip(ip, `spec.clusterIPs[${i}]`));
    });
  } else if (clusterIp && clusterIp !== 'None') {
    vips.push(reader.ip(clusterIp, 'spec.clusterIP'));
  }
  // An ExternalName service is a DNS alias; whatever clusterIP a hand-written file gives it is never routed.
  if (type === 'ExternalName') vips.length = 0;

  const ports = reader.array(spec.ports, 'spec.ports').map((entry, i): ServicePort => {
    const field = `spec.ports[${i}]`;
    const servicePort = reader.record(entry, field) ?? {};
    const portName = reader.string(servicePort.name, `${field}.name`);
    if (portName !== undefined && !isDnsLabel(portName)) reader.fail(`${field}.name`, `must be a DNS label, got ${JSON.stringify(portName)}`);
    const port = reader.port(servicePort.port, `${field}.port`);
    return Object.freeze({
      ...(portName === undefined ? {} : { name: portName }),
      port,
      targetPort: readTargetPort(reader, servicePort.targetPort, `${field}.targetPort`, port),
      protocol: reader.protocol(servicePort.protocol, `${field}.protocol`),
    });
  });

  const selector = reader.labels(spec.selector, 'spec.selector');
  return Object.freeze({
    namespace,
    name,
    hostname: `${name}.${namespace}.svc.${CLUSTER_DOMAIN}`,
    vips: Object.freeze(vips),
    ports: Object.freeze(ports),
    // Kubernetes treats an empty selector as none: such a service gets no endpoints from the control plane.
    selector: Object.keys(selector).length === 0 ? undefined : selector,
    labels,
  });
}

function readTargetPort(reader: ObjectReader, value: unknown, field: string, servicePort: number): number | string {
  if (value === undefined || value === null) return servicePort;
  if (typeof value === 'number') return reader.port(value, field);
  if (typeof value === 'string' && isIanaServiceName(value)) return value;
  return reader.fail(field, `must be a port number or a container port name, got ${describe(value)}`);
}

/** Undefined for an FQDN slice, which is valid but has no address to dial. */
function convertEndpointSlice(fields: Fields): EndpointSlice | undefined {
  const { reader, metadata, name } = readMetadata('EndpointSlice', fields, true);
  const namespace = reader.namespace ?? 'default';
  if (!isDnsSubdomain(name)) reader.fail('metadata.name', `must be a DNS subdomain, got ${JSON.stringify(name)}`);
  const labels = reader.labels(metadata.labels, 'metadata.labels');
  const addressType = reader.string(fields.addressType, 'addressType');
  if (addressType === 'FQDN') return undefined;
  if (addressType !== 'IPv4' && addressType !== 'IPv6') {
    return reader.fail('addressType', addressType === undefined ? 'is required (IPv4, IPv6 or FQDN)' : `must be IPv4, IPv6 or FQDN, got ${JSON.stringify(addressType)}`);
  }
  const family = addressType === 'IPv4' ? 4 : 6;

  const ports = reader.array(fields.ports, 'ports').flatMap((entry, i): SlicePort[] => {
    const field = `ports[${i}]`;
    const port = reader.record(entry, field) ?? {};
    const portName = reader.string(port.name, `${field}.name`) ?? '';
    if (portName !== '' && !isDnsLabel(portName)) reader.fail(`${field}.name`, `must be a DNS label or empty, got ${JSON.stringify(portName)}`);
    const protocol = reader.protocol(port.protocol, `${field}.protocol`);
    // Without a number the API leaves the port to the consumer's reading; the mesh has nothing to dial then.
    if (port.port === undefined || port.port === null) return [];
    return [Object.freeze({ name: portName, port: reader.port(port.port, `${field}.port`), protocol })];
  });

  const endpoints = reader.array(fields.endpoints, 'endpoints').map((entry, i): SliceEndpoint => {
    const field = `endpoints[${i}]`;
    const endpoint = reader.record(entry, field) ?? {};
    const addresses = reader.array(endpoint.addresses, `${field}.addresses`);
    if (addresses.length === 0) reader.fail(`${field}.addresses`, 'must hold at least one address');
    const ips = addresses.map((address, j) => {
      const ip = reader.ip(address, `${field}.addresses[${j}]`);
      if (isIP(ip) !== family) reader.fail(`${field}.addresses[${j}]`, `must be an ${addressType} address, as the slice's addressType says, got ${JSON.stringify(address)}`);
      return ip;
    });
    const conditions = reader.record(endpoint.conditions, `${field}.conditions`) ?? {};
    const ready = optionalBoolean(reader, conditions.ready, `${field}.conditions.ready`) ?? true;
    return Object.freeze({
      ip: ips[0]!,
      ready,
      serving: optionalBoolean(reader, conditions.serving, `${field}.conditions.serving`) ?? ready,
      terminating: optionalBoolean(reader, conditions.terminating, `${field}.conditions.terminating`) ?? false,
      node: reader.string(endpoint.nodeName, `${field}.nodeName`) || undefined,
      zone: reader.string(endpoint.zone, `${field}.zone`) || undefined,
    });
  });

  return Object.freeze({
    namespace,
    name,
    serviceName: labels[SERVICE_NAME_LABEL] || undefined,
    addressType,
    ports: Object.freeze(ports),
    endpoints: Object.freeze(endpoints),
  });
}

/** An endpoint condition: absent means what the API says it means, which differs per condition. */
function optionalBoolean(reader: ObjectReader, value: unknown, field: string): boolean | undefined {
  return value === undefined || value === null ? undefined : reader.boolean(value, field);
}

function convertNode(fields: Fields): NodeInfo {
  const { reader, metadata, name } = readMetadata('Node', fields, false);
  if (!isDnsSubdomain(name)) reader.fail('metadata.name', `must be a DNS subdomain, got ${JSON.stringify(name)}`);
  const labels = reader.labels(metadata.labels, 'metadata.labels');
  const status = reader.record(fields.status, 'status') ?? {};
  const internal: string[] = [];
  const external: string[] = [];
  reader.array(status.addresses, 'status.addresses').forEach((entry, i) => {
    const field = `status.addresses[${i}]`;
    const address = reader.record(entry, field) ?? {};
    const type = reader.string(address.type, `${field}.type`);
    // Hostname and DNS entries are names, not addresses the agent can dial.
    if (type === 'InternalIP') addUnique(internal, reader.ip(address.address, `${field}.address`));
    else if (type === 'ExternalIP') addUnique(external, reader.ip(address.address, `${field}.address`));
    else reader.string(address.address, `${field}.address`);
  });
  const addresses = [...internal];
  for (const ip of external) addUnique(addresses, ip);
  return Object.freeze({ name, addresses: Object.freeze(addresses), labels });
}

function workloadNameOf(podName: string, labels: Labels, owners: ReadonlyArray<{ kind: string; name: string; controller: boolean }>): string {
  for (const label of CANONICAL_NAME_LABELS) {
    const value = labels[label];
    if (value) return value;
  }
  const owner = owners.find((o) => o.controller) ?? (owners.length === 1 ? owners[0] : undefined);
  if (owner === undefined || owner.name === '') return podName;
  if (owner.kind === 'ReplicaSet') {
    const hash = labels['pod-template-hash'];
    if (hash && owner.name.endsWith(`-${hash}`)) return owner.name.slice(0, -hash.length - 1);
    return REPLICA_SET_HASH_SUFFIX.exec(owner.name)?.[1] ?? owner.name;
  }
  if (owner.kind === 'Job') return CRON_JOB_SUFFIX.exec(owner.name)?.[1] ?? owner.name;
  return owner.name;
}

function isIanaServiceName(name: string): boolean {
  return name.length <= 15 && IANA_SERVICE_NAME.test(name) && /[a-z]/.test(name) && !name.includes('--');
}

function addUnique(list: string[], value: string): void {
  if (!list.includes(value)) list.push(value);
}

/** A value as a validation message shows it: `the string "x"`, `number 3`, `a list`. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'string') return `the string ${JSON.stringify(value)}`;
  return `${typeof value} ${String(value)}`;
}
