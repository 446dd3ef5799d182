/**
 * The container-to-process mapping of the Kubernetes-mode testbed (testbed/kube-cluster.ts), on the containers of the
 * rendered manifests: no root, kubectl for `kubectl kustomize`.
 */
import t from 'tap';
import { AGENT_ENV } from '../agent/index.js';
import { CLI_PATH, containerOf, containerProcess, renderedPodTemplate, type ContainerSpec } from '../testbed/index.js';
import { needsTools } from './prerequisites.js';

const unavailable = needsTools(['kubectl'], 'renders the manifests with kubectl kustomize');
const SERVICE_ACCOUNT = { dir: '/tmp/tb/agent/sa', host: '10.250.0.254', port: '6443' };

t.test("the agent's container: downward-API fields filled in, each mount's paths under its own folder, the kubelet's service account", { skip: unavailable }, async (t) => {
  const template = await renderedPodTemplate('DaemonSet', 'ambit-agent');
  const container = containerOf(template, 'agent');
  const mounts = Object.fromEntries(container.volumeMounts.map((mount) => [mount.name, `/tmp/tb/agent/${mount.name}`]));
  const proc = containerProcess(container, { fields: { 'spec.nodeName': 'node1', 'status.hostIP': '10.250.0.1' }, mounts, serviceAccount: SERVICE_ACCOUNT });
  t.equal(proc.file, process.execPath, 'node is this Node.js');
  t.ok(proc.args.includes(CLI_PATH), "the image's CLI is this checkout's build");
  t.same(proc.args.slice(proc.args.indexOf('agent'), proc.args.indexOf('agent') + 3), ['agent', '--mode', 'kubernetes']);
  t.notOk('AMBIT_CA_DIR' in proc.env, 'no CA folder: agents hold no CA key');
  t.notOk('AMBIT_KUBECONFIG' in proc.env, 'no kubeconfig: the pod\'s service account');
  t.match(proc.env, {
    AMBIT_NODE_NAME: 'node1',
    AMBIT_NODE_IP: '10.250.0.1',
    AMBIT_TOKEN_FILE: '/tmp/tb/agent/controller-token/token',
    AMBIT_CA_TOKEN_FILE: '/tmp/tb/agent/ca-token/token',
    AMBIT_TRUST_BUNDLE_DIR: '/tmp/tb/agent/trust-bundle',
    AMBIT_RUN_DIR: '/tmp/tb/agent/run',
    AMBIT_STATE_DIR: '/tmp/tb/agent/state',
    KUBERNETES_SERVICE_HOST: '10.250.0.254',
    KUBERNETES_SERVICE_PORT: '6443',
    AMBIT_SERVICE_ACCOUNT_DIR: '/tmp/tb/agent/sa',
    ...AGENT_ENV,
  });
});

t.test("the CNI installer's paths are under its own mounts: the agent's run and state folders", { skip: unavailable }, async (t) => {
  const template = await renderedPodTemplate('DaemonSet', 'ambit-agent');
  const container = containerOf(template, 'install-cni');
  const mounts = Object.fromEntries(container.volumeMounts.map((mount) => [mount.name, `/tmp/tb/node1/${mount.name}`]));
  const fields = { 'metadata.namespace': 'ambit-system' };
  const proc = containerProcess(container, { fields, mounts });
  const flag = (name: string) => proc.args[proc.args.indexOf(name) + 1];
  t.equal(flag('--agent-socket'), '/tmp/tb/node1/run/cni.sock');
  t.equal(flag('--enrollment-file'), '/tmp/tb/node1/state/enrollment.json');
  t.equal(flag('--cni-conf-dir'), '/tmp/tb/node1/cni-conf');
  const unmounted = containerProcess({ ...container, volumeMounts: container.volumeMounts.filter((m) => m.name !== 'run') }, { fields, mounts });
  t.equal(unmounted.args[unmounted.args.indexOf('--agent-socket') + 1], '/var/run/ambit/cni.sock', 'a path the container does not mount is not rewritten: the program would not find it');
});

t.test('a field or a mount the context lacks is an error, not a silent default', { skip: unavailable }, async (t) => {
  const container = containerOf(await renderedPodTemplate('Deployment', 'ambit-controller'), 'controller');
  const fields = { 'status.podIP': '10.0.0.1', 'metadata.namespace': 'ambit-system', 'metadata.name': 'ambit-controller-0' };
  t.throws(() => containerProcess(container, { fields: {}, mounts: {} }), /AMBIT_LISTEN_HOST: no value for the downward API's status\.podIP/);
  const agent = containerOf(await renderedPodTemplate('DaemonSet', 'ambit-agent'), 'agent');
  t.throws(() => containerProcess(agent, { fields: { 'spec.nodeName': 'n', 'status.hostIP': '10.0.0.2' }, mounts: {} }), /volume mount controller-token/);
  t.throws(() => containerProcess(container, { fields, mounts: {}, serviceAccount: { ...SERVICE_ACCOUNT, dir: undefined as unknown as string } }), /volume mount kube-api-access/);
  const proc = containerProcess(container, { fields, mounts: {}, serviceAccount: SERVICE_ACCOUNT });
  t.match(proc.env, { AMBIT_LISTEN_HOST: '10.0.0.1', AMBIT_NAMESPACE: 'ambit-system', AMBIT_POD_NAME: 'ambit-controller-0', AMBIT_SERVICE_ACCOUNT_DIR: '/tmp/tb/agent/sa' });
});

t.test('a path is mapped only under a whole mount path, and a command other than node keeps its own', async (t) => {
  const container: ContainerSpec = {
    command: ['/bin/echo'],
    args: ['/data', '/data/x', '/database', 'data'],
    env: [],
    volumeMounts: [{ name: 'd', mountPath: '/data' }],
  };
  const proc = containerProcess(container, { fields: {}, mounts: { d: '/tmp/d' } });
  t.same(proc, { file: '/bin/echo', args: ['/tmp/d', '/tmp/d/x', '/database', 'data'], env: {} });
});
