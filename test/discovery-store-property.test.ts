/**
 * The workload store keeps its indexes change by change; this property says that is the same as deriving them from
 * scratch. Random sequences of batches (upserts and deletes of namespaces, nodes, pods, services, EndpointSlices;
 * pod networks; whole snapshots) drawn by fast-check from a fixed seed are applied to one store, and after each
 * batch every reader of it must equal that of a fresh store given the same final objects in one snapshot. A batch
 * emits one change when it changed something and none otherwise, readers called from its change listener already
 * see all of it, and a snapshot equal to the store's state changes nothing. On failure the seed and the shrunk
 * sequence are printed; AMBIT_PROPERTY_SEED and AMBIT_PROPERTY_CASES override the defaults.
 */
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import t from 'tap';
import { checkSequences } from './mesh/sequences.js';
import {
  convertObject,
  ENROLL_LABEL,
  ISTIO_DATAPLANE_LABEL,
  WorkloadStore,
  ZONE_LABEL,
  type ConvertedObject,
  type DiscoveryChange,
  type DiscoveryKind,
  type DiscoverySnapshot,
  type EndpointSlice,
  type NamespaceInfo,
  type NodeInfo,
  type PodInfo,
  type PodNetwork,
  type PodNetworkChange,
  type Service,
} from '../core/discovery/index.js';

const SEED = Number(process.env.AMBIT_PROPERTY_SEED ?? 20261202);
const CASES = Number(process.env.AMBIT_PROPERTY_CASES ?? 400);
const NODE_NAME = 'n1';

const NAMESPACES = ['a', 'b', 'ambit-system'];
const NODES = ['n1', 'n2', 'n3'];
const POD_NAMES = ['p1', 'p2', 'p3', 'p4', 'p5'];
const SERVICE_NAMES = ['s1', 's2', 's3'];
const SLICE_NAMES = ['e1', 'e2'];
/** Few addresses, so that pods share them (a stale record), and slices list pods and addresses that are none. */
const POD_IPS = ['10.0.0.1', '10.0.0.2', '10.0.0.3', 'fd00::1'];
const VIPS = ['10.96.0.1', '10.96.0.2', 'fd00:96::1'];
const SERVICE_PORTS = [53, 80, 81];
const POD_KEYS = NAMESPACES.flatMap((namespace) => POD_NAMES.map((name) => ({ namespace, name })));

function converted(obj: unknown): ConvertedObject | undefined {
  try {
    const result = convertObject(obj, 'cluster.local');
    return result.kind === 'skip' ? undefined : result;
  } catch {
    // A drawn object the converter refuses (two ports of one name): the batch goes without it.
    return undefined;
  }
}

const namespaceName = fc.constantFrom(...NAMESPACES);
const appNamespace = fc.constantFrom('a', 'b');

const namespaceObject: fc.Arbitrary<NamespaceInfo> = fc.record({
  name: namespaceName,
  labels: fc.constantFrom({}, { [ENROLL_LABEL]: 'enabled' }, { [ISTIO_DATAPLANE_LABEL]: 'ambient' }, { [ENROLL_LABEL]: 'disabled' }),
});

const nodeObject: fc.Arbitrary<NodeInfo> = fc.record({
  name: fc.constantFrom(...NODES),
  addresses: fc.constantFrom(['192.168.0.1'], ['192.168.0.2']),
  labels: fc.constantFrom({}, { [ZONE_LABEL]: 'z1' }, { [ZONE_LABEL]: 'z2' }),
});

const podObject: fc.Arbitrary<ConvertedObject | undefined> = fc
  .record({
    namespace: fc.oneof({ arbitrary: appNamespace, weight: 5 }, { arbitrary: fc.constant('ambit-system'), weight: 1 }),
    name: fc.constantFrom(...POD_NAMES),
    ips: fc.subarray(POD_IPS, { maxLength: 2 }),
    app: fc.constantFrom(undefined, 'web', 'db'),
    tier: fc.constantFrom(undefined, 'x'),
    optOut: fc.oneof({ arbitrary: fc.constant(false), weight: 4 }, { arbitrary: fc.constant(true), weight: 1 }),
    node: fc.constantFrom(undefined, ...NODES),
    phase: fc.constantFrom('Running', 'Running', 'Pending', 'Succeeded'),
    ready: fc.boolean(),
    hostNetwork: fc.oneof({ arbitrary: fc.constant(false), weight: 6 }, { arbitrary: fc.constant(true), weight: 1 }),
    httpPort: fc.constantFrom(undefined, 8080, 8081),
  })
  .map((p) =>
    converted({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: p.name,
        namespace: p.namespace,
        labels: { ...(p.app ? { app: p.app } : {}), ...(p.tier ? { tier: p.tier } : {}), ...(p.optOut ? { [ENROLL_LABEL]: 'disabled' } : {}) },
      },
      spec: { nodeName: p.node, hostNetwork: p.hostNetwork, containers: [{ name: 'main', ports: p.httpPort ? [{ name: 'http', containerPort: p.httpPort }] : [] }] },
      status: { phase: p.phase, podIPs: p.ips.map((ip) => ({ ip })), conditions: [{ type: 'Ready', status: p.ready ? 'True' : 'False' }] },
    }),
  );

const servicePort = fc.record({
  name: fc.constantFrom(undefined, 'http', 'dns'),
  port: fc.constantFrom(...SERVICE_PORTS),
  targetPort: fc.constantFrom(9000, 'http'),
  protocol: fc.constantFrom('TCP', 'TCP', 'UDP'),
});

const serviceObject: fc.Arbitrary<ConvertedObject | undefined> = fc
  .record({
    namespace: appNamespace,
    name: fc.constantFrom(...SERVICE_NAMES),
    selector: fc.constantFrom(undefined, { app: 'web' }, { app: 'db' }, { app: 'web', tier: 'x' }),
    clusterIPs: fc.subarray(VIPS, { maxLength: 2 }),
    ports: fc.array(servicePort, { minLength: 1, maxLength: 2 }),
  })
  .map((s) =>
    converted({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: s.name, namespace: s.namespace },
      spec: { ...(s.clusterIPs.length > 0 ? { clusterIPs: s.clusterIPs } : {}), ...(s.selector ? { selector: s.selector } : {}), ports: s.ports },
    }),
  );

const sliceEndpoint = fc.record({
  addresses: fc.constantFrom(...POD_IPS.filter((ip) => !ip.includes(':')), '192.0.2.9').map((ip) => [ip]),
  conditions: fc.constantFrom({}, { ready: false }, { ready: false, serving: true, terminating: true }),
  nodeName: fc.constantFrom(undefined, ...NODES),
  zone: fc.constantFrom(undefined, 'z9'),
});

const sliceObject: fc.Arbitrary<ConvertedObject | undefined> = fc
  .record({
    namespace: appNamespace,
    name: fc.constantFrom(...SLICE_NAMES),
    service: fc.constantFrom(undefined, 's1', 's2'),
    portName: fc.constantFrom(undefined, 'http'),
    endpoints: fc.array(sliceEndpoint, { maxLength: 3 }),
  })
  .map((e) =>
    converted({
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: e.name, namespace: e.namespace, labels: e.service ? { 'kubernetes.io/service-name': e.service } : {} },
      addressType: 'IPv4',
      ports: [{ ...(e.portName ? { name: e.portName } : {}), port: 8443 }],
      endpoints: e.endpoints,
    }),
  );

const upsert: fc.Arbitrary<DiscoveryChange | undefined> = fc.oneof(
  // Namespaces and nodes as often as the others: a change of one reaches many derived entries.
  { arbitrary: namespaceObject.map((object): DiscoveryChange => ({ op: 'upsert', kind: 'Namespace', object })), weight: 2 },
  { arbitrary: nodeObject.map((object): DiscoveryChange => ({ op: 'upsert', kind: 'Node', object })), weight: 3 },
  { arbitrary: podObject.map((object) => object && ({ op: 'upsert', ...object }) as DiscoveryChange), weight: 4 },
  { arbitrary: serviceObject.map((object) => object && ({ op: 'upsert', ...object }) as DiscoveryChange), weight: 2 },
  { arbitrary: sliceObject.map((object) => object && ({ op: 'upsert', ...object }) as DiscoveryChange), weight: 2 },
);

const deletion: fc.Arbitrary<DiscoveryChange> = fc.oneof(
  namespaceName.map((name): DiscoveryChange => ({ op: 'delete', kind: 'Namespace', name })),
  fc.constantFrom(...NODES).map((name): DiscoveryChange => ({ op: 'delete', kind: 'Node', name })),
  fc.record({ namespace: appNamespace, name: fc.constantFrom(...POD_NAMES) }).map((k): DiscoveryChange => ({ op: 'delete', kind: 'Pod', ...k })),
  fc.record({ namespace: appNamespace, name: fc.constantFrom(...SERVICE_NAMES) }).map((k): DiscoveryChange => ({ op: 'delete', kind: 'Service', ...k })),
  fc.record({ namespace: appNamespace, name: fc.constantFrom(...SLICE_NAMES) }).map((k): DiscoveryChange => ({ op: 'delete', kind: 'EndpointSlice', ...k })),
);

const change: fc.Arbitrary<DiscoveryChange | undefined> = fc.oneof({ arbitrary: upsert, weight: 3 }, { arbitrary: deletion, weight: 1 });

const networkChange: fc.Arbitrary<PodNetworkChange> = fc.oneof(
  fc
    .record({ pod: fc.constantFrom(...POD_KEYS), containerId: fc.constantFrom('c1', 'c2'), ips: fc.subarray(POD_IPS, { minLength: 1, maxLength: 2 }) })
    .map(({ pod, containerId, ips }): PodNetworkChange => ({ op: 'upsert', network: { ...pod, containerId, ips } })),
  fc
    .record({ pod: fc.constantFrom(...POD_KEYS), containerId: fc.constantFrom(undefined, 'c1') })
    .map(({ pod, containerId }): PodNetworkChange => ({ op: 'delete', ...pod, ...(containerId ? { containerId } : {}) })),
);

type Step =
  | { readonly kind: 'batch'; readonly changes: DiscoveryChange[] }
  | { readonly kind: 'networks'; readonly changes: PodNetworkChange[] }
  /** replaceAll: the objects of the snapshot, and no other. */
  | { readonly kind: 'snapshot'; readonly objects: ConvertedObject[] };

const step: fc.Arbitrary<Step> = fc.oneof(
  {
    arbitrary: fc.array(change, { minLength: 1, maxLength: 3 }).map((changes): Step => ({ kind: 'batch', changes: changes.filter((c) => c !== undefined) })),
    weight: 8,
  },
  { arbitrary: fc.array(networkChange, { minLength: 1, maxLength: 2 }).map((changes): Step => ({ kind: 'networks', changes })), weight: 2 },
  {
    arbitrary: fc.array(upsert, { maxLength: 8 }).map((upserts): Step => ({
      kind: 'snapshot',
      objects: upserts.flatMap((u) => (u === undefined || u.op !== 'upsert' ? [] : [{ kind: u.kind, object: u.object } as ConvertedObject])),
    })),
    weight: 1,
  },
);

/** The objects a store should hold, in the order of its maps (a key keeps its place until deleted). */
class Model {
  readonly objects: Record<DiscoveryKind, Map<string, ConvertedObject['object']>> = {
    Namespace: new Map(),
    Node: new Map(),
    Service: new Map(),
    Pod: new Map(),
    EndpointSlice: new Map(),
  };
  readonly networks = new Map<string, PodNetwork>();

  /** Applies a step; whether it changed anything (what the store must announce with one change). */
  apply(s: Step): boolean {
    if (s.kind === 'networks') return s.changes.map((c) => this.#network(c)).some(Boolean);
    const changes: DiscoveryChange[] =
      s.kind === 'batch'
        ? s.changes
        : [
            ...Object.entries(this.objects).flatMap(([kind, map]) =>
              [...map.keys()]
                .filter((key) => !s.objects.some((o) => o.kind === kind && keyOf(o.kind, o.object) === key))
                .map((key): DiscoveryChange => ({ op: 'delete', kind: kind as DiscoveryKind, ...splitKey(key) })),
            ),
            ...s.objects.map((o) => ({ op: 'upsert', ...o }) as DiscoveryChange),
          ];
    let changed = false;
    for (const c of changes) {
      const map = this.objects[c.kind];
      if (c.op === 'delete') {
        changed = map.delete(c.namespace === undefined ? c.name : `${c.namespace}/${c.name}`) || changed;
        continue;
      }
      const key = keyOf(c.kind, c.object);
      // An upsert equal to what the store holds changes nothing: the store keeps the object it has.
      if (JSON.stringify(map.get(key)) === JSON.stringify(c.object)) continue;
      map.set(key, c.object);
      changed = true;
    }
    return changed;
  }

  #network(c: PodNetworkChange): boolean {
    if (c.op === 'delete') {
      const key = `${c.namespace}/${c.name}`;
      const current = this.networks.get(key);
      if (current === undefined || (c.containerId !== undefined && current.containerId !== c.containerId)) return false;
      return this.networks.delete(key);
    }
    const key = `${c.network.namespace}/${c.network.name}`;
    if (JSON.stringify(this.networks.get(key)) === JSON.stringify(c.network)) return false;
    this.networks.set(key, c.network);
    return true;
  }

  snapshot(): DiscoverySnapshot {
    const values = <T>(kind: DiscoveryKind) => [...this.objects[kind].values()] as T[];
    return {
      namespaces: values<NamespaceInfo>('Namespace'),
      nodes: values<NodeInfo>('Node'),
      services: values<Service>('Service'),
      pods: values<PodInfo>('Pod'),
      endpointSlices: values<EndpointSlice>('EndpointSlice'),
    };
  }

  /** A store given the model's objects from scratch: one snapshot, then the pod networks. */
  fresh(): WorkloadStore {
    const store = new WorkloadStore({ nodeName: NODE_NAME });
    store.replaceAll(this.snapshot());
    store.applyPodNetworks([...this.networks.values()].map((network) => ({ op: 'upsert', network })));
    return store;
  }
}

function keyOf(kind: DiscoveryKind, object: ConvertedObject['object']): string {
  return kind === 'Namespace' || kind === 'Node' ? object.name : `${(object as Service).namespace}/${object.name}`;
}

function splitKey(key: string): { namespace?: string; name: string } {
  const [namespace, name] = key.split('/');
  return name === undefined ? { name: key } : { namespace, name };
}

/** Every reader of the store, for the objects the sequences draw from (the version aside: it counts batches). */
function readers(store: WorkloadStore, services: readonly Service[]): Record<string, unknown> {
  return {
    snapshot: { ...store.snapshot(), version: undefined },
    workloads: store.workloads(),
    byIp: [...POD_IPS, '192.0.2.9', '::ffff:10.0.0.1'].map((ip) => store.workloadByIp(ip)),
    local: store.localWorkloads(),
    localIps: [store.localEnrolledIps(4), store.localEnrolledIps(6)],
    byVip: VIPS.map((vip) => store.serviceByVip(vip)),
    endpoints: services.map((service) => SERVICE_PORTS.map((port) => store.serviceEndpoints(service, port))),
    servicesOf: POD_KEYS.map((pod) => store.servicesOf(pod)),
    pods: POD_KEYS.map((pod) => store.pod(pod.namespace, pod.name)),
    podNetworks: store.podNetworks(),
    zones: [undefined, ...NODES].map((node) => store.nodeZone(node)),
    namespaces: NAMESPACES.map((name) => store.namespace(name)),
  };
}

/** Why a sequence fails, or undefined when every step holds. */
function failureOf(steps: readonly Step[]): string | undefined {
  const store = new WorkloadStore({ nodeName: NODE_NAME });
  const model = new Model();
  let events = 0;
  let seenInListener: unknown;
  let listenerServices: readonly Service[] = [];
  store.on('change', () => {
    events += 1;
    seenInListener = readers(store, listenerServices);
  });
  for (const [i, s] of steps.entries()) {
    const before = events;
    const changed = model.apply(s);
    const services = [...model.objects.Service.values()] as Service[];
    listenerServices = services;
    if (s.kind === 'batch') store.applyBatch(s.changes);
    else if (s.kind === 'networks') store.applyPodNetworks(s.changes);
    else store.replaceAll(snapshotOf(s.objects));
    if (events - before !== (changed ? 1 : 0)) return `step ${i}: ${events - before} change events, expected ${changed ? 1 : 0}`;
    const incremental = readers(store, services);
    if (changed && !isDeepStrictEqual(seenInListener, incremental)) return `step ${i}: the change listener saw another state than the batch's end`;
    const expected = readers(model.fresh(), services);
    if (!isDeepStrictEqual(incremental, expected)) {
      const differing = Object.keys(incremental).filter((key) => !isDeepStrictEqual(incremental[key], expected[key]));
      return differing
        .map((key) => `step ${i}: ${key} differs from a store built from scratch:\n  incremental ${JSON.stringify(incremental[key])}\n  from scratch ${JSON.stringify(expected[key])}`)
        .join('\n');
    }
    const version = store.version;
    store.replaceAll(model.snapshot());
    if (events !== before + (changed ? 1 : 0) || store.version !== version) return `step ${i}: a snapshot equal to the store's state was a change`;
  }
  return undefined;
}

function snapshotOf(objects: readonly ConvertedObject[]): DiscoverySnapshot {
  const of = <K extends DiscoveryKind>(kind: K) => objects.filter((o) => o.kind === kind).map((o) => o.object);
  return {
    namespaces: of('Namespace') as NamespaceInfo[],
    nodes: of('Node') as NodeInfo[],
    services: of('Service') as Service[],
    pods: of('Pod') as PodInfo[],
    endpointSlices: of('EndpointSlice') as EndpointSlice[],
  };
}

t.test('a store kept change by change reads as one built from scratch', async (t) => {
  checkSequences(t, { step, maxLength: 30, seed: SEED, cases: CASES, failureOf, what: 'batches' });
});
