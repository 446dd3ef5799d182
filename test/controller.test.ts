/**
 * The controller on the API server double, in one process: its reflectors watch the double over HTTPS with a
 * kubeconfig, its stream serves an agent's ControllerStream (real TLS, a TokenReview of the agent's bound token), and
 * the agent's WorkloadStore and PolicyStore follow what is written through the API.
 */
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { ControllerStream } from '../agent/controller-stream.js';
import { Controller, loadControllerConfig, type ControllerDependencies } from '../controller/index.js';
import { createLogger } from '../core/log/index.js';
import { createRegistry } from '../core/metrics/index.js';
import { meshCaSecret, metricValue } from '../testbed/index.js';
import { within } from './mesh/hold.js';
import { LogCapture } from './mesh/loopback.js';
import { WorkloadStore } from '../core/discovery/index.js';
import { CertificateAuthority, TrustBundle } from '../core/identity/index.js';
import { PolicyStore } from '../core/policy/index.js';
import { ApiServer, boundServiceAccountUser, MESH_CUSTOM_RESOURCES } from '../testbed/index.js';

const CONTROLLER_ID = 'spiffe://cluster.local/ns/ambit-system/sa/ambit-controller';
const agentUser = (audiences?: string[]) =>
  boundServiceAccountUser({ namespace: 'ambit-system', serviceAccount: 'ambit-agent', podName: 'ambit-agent-x', podUid: 'uid-agent', nodeName: 'node1', ...(audiences === undefined ? {} : { audiences }) });

function pod(name: string, ip: string, extra: { ready?: boolean; restarts?: number } = {}) {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'shop', labels: { app: 'web' } },
    spec: { nodeName: 'node1', serviceAccountName: 'web', containers: [{ name: 'c', ports: [{ containerPort: 8080 }] }] },
    status: {
      phase: 'Running',
      podIP: ip,
      podIPs: [{ ip }],
      conditions: [{ type: 'Ready', status: extra.ready === false ? 'False' : 'True' }],
      containerStatuses: [{ name: 'c', restartCount: extra.restarts ?? 0 }],
    },
  };
}

async function rig(t: Test, deps: ControllerDependencies = {}) {
  const api = await ApiServer.start();
  for (const type of MESH_CUSTOM_RESOURCES) api.registerResource(type);
  api.addToken('controller-token', { username: 'system:serviceaccount:ambit-system:ambit-controller' });
  api.addToken('agent-token', agentUser(['ambit-controller']));
  api.addToken('agent-apiserver-token', agentUser());
  api.addToken('agent-token-2', agentUser(['ambit-controller']));
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-controller-'));
  const kubeconfig = path.join(dir, 'kubeconfig');
  await api.writeKubeconfig(kubeconfig, 'controller-token');
  const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
  api.objects('v1', 'namespaces').create({ metadata: { name: 'ambit-system' } });
  api.objects('v1', 'secrets').create(meshCaSecret(ca));
  await writeFile(path.join(dir, 'token'), 'agent-token');
  await writeFile(path.join(dir, 'wrong-audience-token'), 'agent-apiserver-token');
  await writeFile(path.join(dir, 'token-2'), 'agent-token-2');

  api.objects('v1', 'namespaces').create({ metadata: { name: 'shop', labels: { 'ambit.dev/mode': 'enabled' } } });
  api.objects('v1', 'pods').create(pod('a', '10.1.0.2'));
  api.objects('v1', 'services').create({ metadata: { name: 'web', namespace: 'shop' }, spec: { selector: { app: 'web' }, clusterIP: '10.96.0.10', ports: [{ port: 80, targetPort: 8080 }] } });

  const { config } = loadControllerConfig({}, ['--kubeconfig', kubeconfig, '--listen-host', '127.0.0.1', '--log-level', 'silent']);
  const controller = await Controller.start({ ...config!, ports: { stream: 0, metrics: 0, readiness: 0 } }, deps);
  const agent = (tokenFile = path.join(dir, 'token')) => {
    const store = new WorkloadStore({ nodeName: 'node1' });
    const policies = new PolicyStore();
    const client = new ControllerStream({
      url: `https://127.0.0.1:${controller.streamPort}`,
      controllerIdentity: CONTROLLER_ID,
      trustBundle: new TrustBundle(ca.rootPem),
      tokenFile,
      store,
      policies: policies.collection(),
    });
    t.teardown(() => client.close());
    /** Resolves once the store satisfies `condition`, checked after each applied change. */
    const until = (condition: () => boolean) =>
      new Promise<void>((resolve) => {
        if (condition()) return resolve();
        const check = () => {
          if (!condition()) return;
          client.off('applied', check).off('synced', check);
          resolve();
        };
        client.on('applied', check).on('synced', check);
      });
    return { store, policies, client, until };
  };
  t.teardown(async () => {
    await controller.close();
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { api, controller, agent, dir };
}

t.test('an agent follows the cluster through the controller: pods, enrollment, endpoints, policies', async (t) => {
  const { api, controller, agent } = await rig(t);
  const a = agent();
  const synced = once(a.client, 'synced');
  a.client.start();
  await synced;
  t.match(a.store.workloadByIp('10.1.0.2'), { name: 'a', namespace: 'shop', enrolled: true, identity: 'spiffe://cluster.local/ns/shop/sa/web' }, 'the pod, enrolled by its namespace');
  const web = a.store.serviceByVip('10.96.0.10');
  t.equal(web?.name, 'web', 'the Service by its ClusterIP');

  const pods = api.objects('v1', 'pods');
  pods.create(pod('b', '10.1.0.3'));
  await a.until(() => a.store.workloadByIp('10.1.0.3') !== undefined);
  await a.until(() => (a.store.serviceEndpoints(web!, 80) ?? []).length === 2);
  t.same((a.store.serviceEndpoints(web!, 80) ?? []).map((e) => e.ip).sort(), ['10.1.0.2', '10.1.0.3'], 'endpoints from the EndpointSlice the API keeps');

  // a restart count: the controller sends nothing. The pods watch is one stream, in order: once the marker pod
  // created after it has reached the agent, the restart count has been through the controller.
  const sent: string[] = [];
  controller.changes.on('delta', (delta) => {
    for (const change of delta.changes) if (change.kind === 'Pod' && change.op === 'upsert') sent.push(change.object.name);
  });
  pods.patch('a', { status: { containerStatuses: [{ name: 'c', restartCount: 7 }] } }, 'shop');
  pods.patch('b', { status: { conditions: [{ type: 'Ready', status: 'False' }] } }, 'shop');
  pods.create(pod('marker', '10.1.0.9'));
  await a.until(() => a.store.workloadByIp('10.1.0.9') !== undefined);
  t.equal(a.store.workloadByIp('10.1.0.3')?.ready, false, 'a readiness flip reaches the agent');
  t.same(sent, ['b', 'marker'], 'the restart count of a was sent to no agent');

  api.objects('v1', 'namespaces').patch('shop', { metadata: { labels: { 'ambit.dev/mode': null } } });
  await a.until(() => a.store.workloadByIp('10.1.0.2')?.enrolled === false);
  t.pass('unlabelled: its pods leave the mesh');

  api.objects('security.ambit.dev/v1', 'authorizationpolicies').create({ apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy', metadata: { name: 'deny', namespace: 'shop' }, spec: {} });
  const facts = () =>
    a.policies.decideFacts({ sourceIp: '10.1.0.2', plaintext: true, destination: a.store.workloadByIp('10.1.0.3')!, target: { host: '10.1.0.3', port: 8080 } }, () => []).decision;
  await a.until(() => facts() === 'DENY');
  t.pass('a policy created through the API is enforced by the agent');

  pods.delete('b', 'shop');
  await a.until(() => a.store.workloadByIp('10.1.0.3') === undefined);
  t.pass('a deleted pod is gone');
});

t.test('with the API server\'s watches down, the agent keeps its state; both catch up when they are back', async (t) => {
  const { api, agent } = await rig(t);
  const a = agent();
  const synced = once(a.client, 'synced');
  a.client.start();
  await synced;
  api.closeWatches({ refuse: true });
  api.objects('v1', 'pods').delete('a', 'shop');
  api.objects('v1', 'pods').create(pod('c', '10.1.0.4'));
  t.equal(a.store.workloadByIp('10.1.0.2')?.name, 'a', 'while the controller cannot watch, the agent serves its last state');
  api.acceptWatches();
  await a.until(() => a.store.workloadByIp('10.1.0.2') === undefined && a.store.workloadByIp('10.1.0.4') !== undefined);
  t.pass('the delete and the create made meanwhile reach the agent');
});

t.test('a token the API server issued for itself, not for the controller, is refused', async (t) => {
  const { agent, dir } = await rig(t);
  const a = agent(path.join(dir, 'wrong-audience-token'));
  // until the controller has listed every kind it answers 503 not_synced; then the token is judged
  const refused = new Promise<string>((resolve) => a.client.on('disconnected', ({ reason }) => !reason.includes('not_synced') && resolve(reason)));
  a.client.start();
  const reason = await refused;
  t.match(reason, /refused with 401: token_rejected: the token was not accepted: .*audience/, reason);
  t.notOk(a.client.synced, 'nothing streamed');
});

t.test('a token that cannot be checked (the API server is away) is refused with 503, not judged; it streams once the API is back', async (t) => {
  const { api, agent, dir } = await rig(t);
  const first = agent();
  const synced = once(first.client, 'synced');
  first.client.start();
  await synced;
  await api.stop();
  const b = agent(path.join(dir, 'token-2'));
  const refused = once(b.client, 'disconnected') as Promise<[{ reason: string }]>;
  b.client.start();
  const [{ reason }] = await refused;
  t.match(reason, /refused with 503: token_review_unavailable: the token could not be checked/, reason);
  t.notOk(b.client.synced, 'nothing streamed, and the token is not taken for a bad one');
  const streamed = once(b.client, 'synced');
  await api.resume();
  await streamed;
  t.ok(b.client.synced, 'the retry, with the API back, is checked and streamed');
});

t.test('a replica that cannot watch the API server stays ready and says how long in a metric; it recovers', async (t) => {
  let now = 1_000_000;
  const logs = new LogCapture();
  const registry = createRegistry();
  const { api, controller, agent } = await rig(t, { now: () => now, registry, log: createLogger({ level: 'warn', destination: logs }) });
  const a = agent();
  const synced = once(a.client, 'synced');
  a.client.start();
  await synced;
  const failing = async () => metricValue(await registry.metrics(), 'ambit_k8s_watch_failing_seconds', { kind: 'Pod' });
  t.equal(await failing(), 0, 'not failing');
  const failed = logs.waitFor((r) => r.msg === 'watch failed' && r.kind === 'Pod', 10_000);
  api.closeWatches({ refuse: true });
  await failed;
  now += 121_000;
  t.equal(await failing(), 121, 'failing for 121 s');
  t.same(controller.readiness, { ready: true }, 'and still ready: both replicas would fail alike');
  api.acceptWatches();
  await within(10_000, 'the watch is back', async () => (await failing()) === 0);
  t.pass('the watch opens again: the metric is back to 0');
});
