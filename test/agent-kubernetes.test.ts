/**
 * An agent in Kubernetes mode, in process (no rules): the controller on the API server double streams it the
 * cluster, and its own watch of Namespaces and this node's Pods goes to the double directly. It serves before the
 * controller answers, and is ready on the first snapshot.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { Agent, AGENT_STARTED_LOG, loadAgentConfig } from '../agent/index.js';
import { Controller, loadControllerConfig } from '../controller/index.js';
import { CertificateAuthority } from '../core/identity/index.js';
import { UNINSTALL_ANNOTATION } from '../core/enrollment/index.js';
import { createLogger } from '../core/log/index.js';
import { ApiServer, boundServiceAccountUser, MESH_CUSTOM_RESOURCES, meshCaSecret } from '../testbed/index.js';
import { LogCapture } from './mesh/loopback.js';

const pod = (name: string, ip: string, node = 'node1') => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: 'shop', labels: { app: name } },
  spec: { nodeName: node, serviceAccountName: name, containers: [{ name: 'c' }] },
  status: { phase: 'Running', podIP: ip, podIPs: [{ ip }] },
});

t.test('kubernetes mode: ready on the controller\'s snapshot, and its own watch sees this node\'s pods without it', async (t) => {
  const api = await ApiServer.start();
  for (const type of MESH_CUSTOM_RESOURCES) api.registerResource(type);
  api.objects('v1', 'namespaces').create({ metadata: { name: 'ambit-system' } });
  api.objects('v1', 'serviceaccounts').create({ metadata: { name: 'ambit-agent', namespace: 'ambit-system' } });
  const agentPod = api.objects('v1', 'pods').create({
    metadata: { name: 'ambit-agent-1', namespace: 'ambit-system' },
    spec: { nodeName: 'node1', serviceAccountName: 'ambit-agent', hostNetwork: true, containers: [{ name: 'agent' }] },
    status: { phase: 'Running' },
  });
  const podUid = String((agentPod.metadata as { uid: string }).uid);
  const agentUser = boundServiceAccountUser({ namespace: 'ambit-system', serviceAccount: 'ambit-agent', podName: 'ambit-agent-1', podUid, nodeName: 'node1' });
  api.addToken('controller-token', { username: 'system:serviceaccount:ambit-system:ambit-controller' });
  api.addToken('agent-api-token', agentUser);
  api.addToken('agent-stream-token', { ...agentUser, audiences: ['ambit-controller'] });
  api.addToken('agent-ca-token', { ...agentUser, audiences: ['ambit-ca'] });
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-agent-k8s-'));
  // the mesh's root as an operator brings it, and the trust bundle as the agent mounts it (no CA key on the node)
  const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
  api.objects('v1', 'secrets').create(meshCaSecret(ca));
  await mkdir(path.join(dir, 'trust-bundle'));
  await writeFile(path.join(dir, 'trust-bundle', 'trust-bundle.pem'), ca.rootPem);
  await writeFile(path.join(dir, 'token'), 'agent-stream-token');
  await writeFile(path.join(dir, 'ca-token'), 'agent-ca-token');
  await api.writeKubeconfig(path.join(dir, 'controller.kubeconfig'), 'controller-token');
  await api.writeKubeconfig(path.join(dir, 'agent.kubeconfig'), 'agent-api-token');
  api.objects('v1', 'namespaces').create({ metadata: { name: 'shop', labels: { 'ambit.dev/mode': 'enabled' } } });
  api.objects('v1', 'nodes').create({ metadata: { name: 'node1' }, status: { addresses: [{ type: 'InternalIP', address: '127.0.0.1' }] } });
  api.objects('v1', 'pods').create(pod('a', '10.1.0.2'));
  api.objects('v1', 'pods').create(pod('elsewhere', '10.1.9.9', 'node2'));

  const { config: controllerConfig } = loadControllerConfig({}, ['--kubeconfig', path.join(dir, 'controller.kubeconfig'), '--listen-host', '127.0.0.1', '--log-level', 'silent']);
  // the agent starts first, with the controller's port reserved: it must serve, unready, while the controller is away
  const controllerPort = 20000 + Math.floor(Math.random() * 20000);
  const offset = 30000 + Math.floor(Math.random() * 200) * 10;
  const logs = new LogCapture();
  const { config } = loadAgentConfig({}, [
    '--node', 'node1', '--mode', 'kubernetes', '--controller', `https://127.0.0.1:${controllerPort}`, '--token-file', path.join(dir, 'token'),
    '--kubeconfig', path.join(dir, 'agent.kubeconfig'), '--trust-bundle-dir', path.join(dir, 'trust-bundle'), '--ca-token-file', path.join(dir, 'ca-token'),
    '--node-ip', '127.0.0.1', '--listen-host', '127.0.0.1',
    '--port-offset', String(offset), '--no-rules', '--upstream-source', 'node',
  ]);
  const agent = await Agent.start(config!, { log: createLogger({ level: 'debug', destination: logs }) });
  const running: { controller?: Controller } = {};
  t.teardown(async () => {
    await agent.close();
    await running.controller?.close();
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });
  t.equal(agent.ready, false, 'not ready before the controller has answered');
  // its own watch: this node's pod and its namespace, not the other node's pod
  await new Promise<void>((resolve) => {
    const check = () => {
      if (agent.store.workloadByIp('10.1.0.2')?.enrolled !== true) return;
      agent.store.off('change', check);
      resolve();
    };
    agent.store.on('change', check);
    check();
  });
  t.pass('the pod of this node is known and enrolled from the agent\'s own watch, with no controller');
  t.equal(agent.store.workloadByIp('10.1.9.9'), undefined, 'a pod of another node is not in its watch');

  running.controller = await Controller.start({ ...controllerConfig!, ports: { stream: controllerPort, metrics: 0, readiness: 0 } });
  await logs.waitFor((r) => r.msg === AGENT_STARTED_LOG.ready, 30_000);
  t.equal(agent.ready, true, 'ready once the controller\'s snapshot is applied');
  t.equal(agent.store.workloadByIp('10.1.9.9')?.node, 'node2', 'and now it knows the other node\'s pod, from the controller');
  const issued = await logs.waitFor((r) => r.msg === 'certificate rotated' && r.spiffeId === 'spiffe://cluster.local/ns/shop/sa/a', 30_000);
  t.ok(issued, "its pod's certificate comes from the controller's CA, which it retried while the controller was away");
  t.notOk(logs.find((r) => r.msg === 'certificate rotated' && r.spiffeId === 'spiffe://cluster.local/ns/shop/sa/elsewhere'), 'and it asks for no identity of another node');

  // `ambit uninstall`'s marker, read from the agents' ServiceAccount by the agent's watch of that one object
  const annotate = (value: string | null) => api.objects('v1', 'serviceaccounts').patch('ambit-agent', { metadata: { annotations: { [UNINSTALL_ANNOTATION]: value } } }, 'ambit-system');
  annotate('yes');
  await logs.waitFor((r) => r.msg === 'the uninstall annotation is not a time (ambit uninstall writes one): ignored, nothing is uninstalled' && r.value === 'yes');
  t.same(agent.status().uninstall, { requested: false, marker: null, done: false }, 'a value that is not a time asks nothing');
  annotate('2026-02-30T10:00:00.000Z');
  await logs.waitFor((r) => r.value === '2026-02-30T10:00:00.000Z');
  t.equal(agent.status().uninstall.requested, false, 'nor does a day that does not exist');
  annotate('2026-12-04T10:00:00.000Z');
  await logs.waitFor((r) => r.msg?.toString().startsWith('uninstall requested') === true && r.marker === '2026-12-04T10:00:00.000Z');
  t.same(agent.status().uninstall, { requested: true, marker: '2026-12-04T10:00:00.000Z', done: false }, 'a time marks the mesh as uninstalling');
  annotate(null);
  await logs.waitFor((r) => r.msg?.toString().startsWith('uninstall cancelled') === true);
  t.same(agent.status().uninstall, { requested: false, marker: null, done: false }, 'and its removal cancels');
});
