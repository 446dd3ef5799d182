/**
 * AuthorizationPolicy `targetRefs` to a Service, decided on the real stores (a local folder read by LocalSource into
 * the WorkloadStore and the PolicyStore, then `decideFacts` as the agent calls it): the policy applies to the mesh
 * workloads that are the Service's members: those its selector matches and those its EndpointSlices list.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { LocalSource, WorkloadStore, type Workload } from '../core/discovery/index.js';
import { silentLogger } from '../core/log/log.js';
import { PolicyStore, type InboundDecision } from '../core/policy/index.js';

const NS = 'team';
const CLIENT = 'spiffe://cluster.local/ns/team/sa/client';
const OTHER = 'spiffe://cluster.local/ns/team/sa/other';

function pod(name: string, ip: string, labels: Record<string, string>, ready = true): object {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: NS, labels },
    spec: { nodeName: 'node1', serviceAccountName: name, containers: [{ name: 'app', ports: [{ containerPort: 5432 }] }] },
    status: { phase: 'Running', podIP: ip, conditions: [{ type: 'Ready', status: ready ? 'True' : 'False' }] },
  };
}

function policy(name: string, spec: object): object {
  return { apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy', metadata: { name, namespace: NS }, spec };
}

const objects = [
  { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS, labels: { 'ambit.dev/mode': 'enabled' } } },
  pod('db-0', '10.0.3.1', { app: 'db' }),
  pod('db-1', '10.0.3.2', { app: 'db' }, false),
  pod('cache-0', '10.0.3.3', { app: 'cache' }, false),
  pod('web-0', '10.0.3.4', { app: 'web' }),
  // No selector: its endpoints are its EndpointSlice's, as for a Service whose endpoints a controller manages.
  { apiVersion: 'v1', kind: 'Service', metadata: { name: 'db', namespace: NS }, spec: { clusterIP: '10.96.3.1', ports: [{ name: 'pg', port: 5432, protocol: 'TCP' }] } },
  {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: 'db-abcde', namespace: NS, labels: { 'kubernetes.io/service-name': 'db' } },
    addressType: 'IPv4',
    ports: [{ name: 'pg', port: 5432, protocol: 'TCP' }],
    endpoints: [
      { addresses: ['10.0.3.1'], conditions: { ready: true } },
      { addresses: ['10.0.3.2'], conditions: { ready: false, serving: false } },
    ],
  },
  { apiVersion: 'v1', kind: 'Service', metadata: { name: 'cache', namespace: NS }, spec: { clusterIP: '10.96.3.2', selector: { app: 'cache' }, ports: [{ port: 6379, protocol: 'TCP' }] } },
  policy('deny-db', { action: 'DENY', targetRefs: [{ kind: 'Service', group: '', name: 'db' }], rules: [{ from: [{ source: { principals: ['cluster.local/ns/team/sa/other'] } }] }] }),
  policy('allow-db', { action: 'ALLOW', targetRefs: [{ kind: 'Service', group: '', name: 'db' }], rules: [{ from: [{ source: { principals: ['cluster.local/ns/team/sa/client'] } }] }] }),
  policy('deny-cache', { action: 'DENY', targetRefs: [{ kind: 'Service', group: '', name: 'cache' }], rules: [{}] }),
];

async function load(t: Test, folder: readonly object[] = objects): Promise<{ store: WorkloadStore; policies: PolicyStore }> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-targetrefs-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'cluster.yaml'), folder.map((o) => `---\n${JSON.stringify(o)}\n`).join(''));
  const store = new WorkloadStore({ nodeName: 'node1' });
  const policies = new PolicyStore({ log: silentLogger() });
  const source = new LocalSource({ dir, store, log: silentLogger(), collections: [policies.collection()] });
  t.teardown(() => source.close());
  await source.start();
  t.same(source.lastErrors(), [], 'the folder loads without problems');
  return { store, policies };
}

function decide(store: WorkloadStore, policies: PolicyStore, from: string, to: string): InboundDecision {
  const destination = store.workloads().find((w: Workload) => w.name === to);
  if (destination === undefined) throw new Error(`no workload ${to}`);
  return policies.decideFacts(
    { sourceIp: '10.0.3.9', sourceIdentity: from, plaintext: false, destination, target: { host: destination.ips[0]!, port: 5432 } },
    (workload) => store.servicesOf(workload),
  );
}

t.test('targetRefs to a Service without a selector applies to the pods of its EndpointSlices', async (t) => {
  const { store, policies } = await load(t);
  t.match(decide(store, policies, OTHER, 'db-0'), { decision: 'DENY', policy: `${NS}/deny-db`, reason: 'denied_by_policy' }, 'the DENY aimed at the Service holds for its endpoint');
  t.match(decide(store, policies, CLIENT, 'db-0'), { decision: 'ALLOW', policy: `${NS}/allow-db`, reason: 'allowed_by_policy' }, 'the ALLOW lets its principal in');
  t.match(decide(store, policies, 'spiffe://cluster.local/ns/team/sa/third', 'db-0'), { decision: 'DENY', reason: 'not_allowed_by_any_policy' }, 'and nobody else: the ALLOW applies');
  t.match(decide(store, policies, OTHER, 'db-1'), { decision: 'DENY', policy: `${NS}/deny-db` }, 'an endpoint that is not ready is still the Service\'s: its own address takes connections');
  t.match(decide(store, policies, OTHER, 'web-0'), { decision: 'ALLOW', reason: 'no_policy' }, 'a pod that is no endpoint of the Service is untouched');
});

t.test('targetRefs to a Service with a selector and no slice applies to the pods it selects, ready or not', async (t) => {
  const { store, policies } = await load(t);
  t.match(decide(store, policies, CLIENT, 'cache-0'), { decision: 'DENY', policy: `${NS}/deny-cache`, reason: 'denied_by_policy' });
  t.same(store.servicesOf({ namespace: NS, name: 'web-0' }), [], 'web-0 is no Service\'s endpoint');
  t.same(store.servicesOf({ namespace: NS, name: 'db-0' }), [{ namespace: NS, name: 'db' }], 'db-0 is the endpoint of db');
});

t.test('targetRefs to a Service with a selector holds for a new pod its EndpointSlice does not list yet', async (t) => {
  // api-1 was just created (CNI ADD captures it at once); the endpoint controller has not added it to the slice.
  const { store, policies } = await load(t, [
    objects[0]!,
    pod('api-0', '10.0.3.5', { app: 'api' }),
    pod('api-1', '10.0.3.6', { app: 'api' }, false),
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'api', namespace: NS }, spec: { clusterIP: '10.96.3.3', selector: { app: 'api' }, ports: [{ name: 'http', port: 5432, protocol: 'TCP' }] } },
    {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: 'api-abcde', namespace: NS, labels: { 'kubernetes.io/service-name': 'api' } },
      addressType: 'IPv4',
      ports: [{ name: 'http', port: 5432, protocol: 'TCP' }],
      endpoints: [{ addresses: ['10.0.3.5'], conditions: { ready: true } }],
    },
    policy('deny-api', { action: 'DENY', targetRefs: [{ kind: 'Service', group: '', name: 'api' }], rules: [{ from: [{ source: { principals: ['cluster.local/ns/team/sa/other'] } }] }] }),
  ]);
  t.match(decide(store, policies, OTHER, 'api-1'), { decision: 'DENY', policy: `${NS}/deny-api`, reason: 'denied_by_policy' }, 'the DENY holds for the pod the selector matches');
  t.match(decide(store, policies, OTHER, 'api-0'), { decision: 'DENY', policy: `${NS}/deny-api` }, 'and for the one the slice lists');
  const service = store.serviceByVip('10.96.3.3')!;
  t.same(store.serviceEndpoints(service, 5432)?.map((e) => e.ip), ['10.0.3.5'], 'routing still takes the slice alone');
});
