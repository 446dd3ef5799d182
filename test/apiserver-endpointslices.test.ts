/**
 * The double's EndpointSlice controller is incremental (a pod change recomputes only the slices of the Services
 * that select it before or after; a Service change only its own). Property: after any sequence of pod and Service
 * creates, label and status changes, terminations and deletes, drawn by fast-check from a fixed seed, every slice is
 * what a full recompute from all the pods of the namespace gives, and only Services with a selector have one.
 * AMBIT_PROPERTY_SEED and AMBIT_PROPERTY_CASES override the defaults; a failure prints the seed and the shrunk steps.
 */
import fc from 'fast-check';
import t from 'tap';
import { checkSequences } from './mesh/sequences.js';
import { selectorMatches } from '../core/discovery/index.js';
import { comparable, desiredSlice, EndpointSliceController, sliceName } from '../testbed/apiserver/endpointslices.js';
import { DEFAULT_RESOURCES, ResourceRegistry } from '../testbed/apiserver/resources.js';
import { labelsOf } from '../testbed/apiserver/selectors.js';
import { canonical, ObjectStore } from '../testbed/apiserver/store.js';
import type { JsonObject, ResourceType } from '../testbed/apiserver/types.js';

const SEED = Number(process.env.AMBIT_PROPERTY_SEED ?? 20261203);
const CASES = Number(process.env.AMBIT_PROPERTY_CASES ?? 300);
const NAMESPACES = ['a', 'b'] as const;
const PODS = ['p1', 'p2', 'p3'] as const;
const SERVICES = ['s1', 's2'] as const;

/** Few enough that selectors and pods often meet: pods move in and out of Services. */
const labels = fc.constantFrom<Record<string, string>>({}, { app: 'x' }, { app: 'y' }, { tier: 'x' }, { app: 'x', tier: 'x' }, { app: 'y', tier: 'x', track: 'y' });
const target = { namespace: fc.constantFrom(...NAMESPACES) };
const step = fc.oneof(
  fc.record({
    op: fc.constant('pod' as const),
    ...target,
    name: fc.constantFrom(...PODS),
    labels,
    ip: fc.constantFrom(undefined, '10.0.0.1', '10.0.0.2'),
    ready: fc.boolean(),
    phase: fc.constantFrom('Running', 'Pending', 'Succeeded'),
    port: fc.constantFrom('http', 'grpc'),
  }),
  fc.record({ op: fc.constant('terminate' as const), ...target, name: fc.constantFrom(...PODS) }),
  fc.record({ op: fc.constant('delete-pod' as const), ...target, name: fc.constantFrom(...PODS) }),
  fc.record({
    op: fc.constant('service' as const),
    ...target,
    name: fc.constantFrom(...SERVICES),
    selector: labels,
    targetPort: fc.constantFrom<string | number>('http', 'grpc', 8080),
  }),
  fc.record({ op: fc.constant('delete-service' as const), ...target, name: fc.constantFrom(...SERVICES) }),
);
type Step = typeof step extends fc.Arbitrary<infer S> ? S : never;

function typeOf(registry: ResourceRegistry, group: string, resource: string): ResourceType {
  const type = registry.get(group, 'v1', resource);
  if (type === undefined) throw new Error(`${resource} is not registered`);
  return type;
}

/** Creates or replaces (an update of an existing object, so the controller sees MODIFIED with the old labels). */
function put(store: ObjectStore, type: ResourceType, namespace: string, name: string, body: JsonObject): void {
  if (store.get(type, namespace, name) === undefined) store.create(type, namespace, body);
  else store.update(type, namespace, name, body);
}

function apply(store: ObjectStore, registry: ResourceRegistry, s: Step): void {
  const pods = typeOf(registry, '', 'pods');
  const services = typeOf(registry, '', 'services');
  switch (s.op) {
    case 'pod':
      put(store, pods, s.namespace, s.name, {
        metadata: { name: s.name, labels: s.labels },
        spec: { nodeName: 'node1', containers: [{ name: 'c', ports: [{ name: s.port, containerPort: s.port === 'http' ? 8080 : 9090 }] }] },
        status: { phase: s.phase, ...(s.ip === undefined ? {} : { podIP: s.ip }), conditions: [{ type: 'Ready', status: s.ready ? 'True' : 'False' }] },
      });
      return;
    case 'terminate':
      if (store.get(pods, s.namespace, s.name) !== undefined) store.markTerminating(pods, s.namespace, s.name);
      return;
    case 'delete-pod':
      if (store.get(pods, s.namespace, s.name) !== undefined) store.delete(pods, s.namespace, s.name);
      return;
    case 'service':
      put(store, services, s.namespace, s.name, { metadata: { name: s.name }, spec: { selector: s.selector, ports: [{ name: 'web', port: 80, targetPort: s.targetPort }] } });
      return;
    case 'delete-service':
      if (store.get(services, s.namespace, s.name) !== undefined) store.delete(services, s.namespace, s.name);
      return;
  }
}

/** The reference: every slice recomputed from every pod of its namespace, as the double's first controller did. */
function failureOf(steps: readonly Step[]): string | undefined {
  const registry = new ResourceRegistry();
  for (const type of DEFAULT_RESOURCES) registry.register(type);
  const store = new ObjectStore();
  const controller = new EndpointSliceController(store, registry);
  const namespaces = typeOf(registry, '', 'namespaces');
  for (const name of NAMESPACES) store.create(namespaces, '', { metadata: { name } });
  const pods = typeOf(registry, '', 'pods');
  const slices = typeOf(registry, 'discovery.k8s.io', 'endpointslices');
  try {
    for (const [i, s] of steps.entries()) {
      apply(store, registry, s);
      for (const namespace of NAMESPACES) {
        const expected = new Set<string>();
        for (const service of store.list(typeOf(registry, '', 'services'), namespace)) {
          const name = String((service.metadata as JsonObject).name);
          const selector = (service.spec as JsonObject).selector as Record<string, string>;
          const slice = store.get(slices, namespace, sliceName(name));
          if (Object.keys(selector).length === 0) {
            if (slice !== undefined) return `step ${i}: ${namespace}/${name} has no selector but a slice`;
            continue;
          }
          expected.add(sliceName(name));
          const selected = store.list(pods, namespace).filter((pod) => selectorMatches(selector, labelsOf(pod)) && hasAddress(pod));
          const wanted = canonical(comparable(desiredSlice(namespace, service, selected)));
          if (slice === undefined) return `step ${i}: ${namespace}/${name} has no slice`;
          if (canonical(comparable(slice)) !== wanted) return `step ${i}: the slice of ${namespace}/${name} is ${canonical(comparable(slice))}, a full recompute gives ${wanted}`;
        }
        const held = store.list(slices, namespace).map((slice) => String((slice.metadata as JsonObject).name));
        const extra = held.filter((name) => !expected.has(name));
        if (extra.length > 0) return `step ${i}: slices without a Service that selects: ${extra.join(', ')}`;
      }
    }
    return undefined;
  } finally {
    controller.stop();
  }
}

function hasAddress(pod: JsonObject): boolean {
  const status = pod.status as JsonObject;
  return typeof status.podIP === 'string' && status.podIP !== '' && status.phase !== 'Succeeded' && status.phase !== 'Failed';
}

t.test('incremental EndpointSlices equal a full recompute after any sequence of pod and Service changes', async (t) => {
  checkSequences(t, { step, maxLength: 40, size: 'max', seed: SEED, cases: CASES, failureOf, what: 'changes' });
});
