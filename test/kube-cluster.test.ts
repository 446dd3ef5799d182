/** The container-to-process mapping of the Kubernetes-mode testbed (testbed/kube-cluster.ts): pure, no root. */
import t from 'tap';
import { AGENT_ENV } from '../agent/index.js';
import { agentContainer, CLI_PATH, containerProcess, controllerContainer, type ContainerSpec } from '../testbed/index.js';

t.test("the agent's container: downward-API fields filled in, each mount's paths under its own folder", async (t) => {
  const container = agentContainer({ controllerUrl: 'https://10.250.0.254:15012' });
  const mounts = Object.fromEntries(container.volumeMounts.map((mount) => [mount.name, `/tmp/tb/agent/${mount.name}`]));
  const proc = containerProcess(container, { fields: { 'spec.nodeName': 'node1', 'status.hostIP': '10.250.0.1' }, mounts });
  t.equal(proc.file, process.execPath, 'node is this Node.js');
  t.ok(proc.args.includes(CLI_PATH), "the image's CLI is this checkout's build");
  t.same(proc.args.slice(proc.args.indexOf('agent')), ['agent', '--mode', 'kubernetes', '--controller', 'https://10.250.0.254:15012', '--log-level', 'info']);
  t.notOk('AMBIT_CA_DIR' in proc.env, 'no CA folder: agents hold no CA key');
  t.match(proc.env, {
    AMBIT_NODE_NAME: 'node1',
    AMBIT_NODE_IP: '10.250.0.1',
    AMBIT_TOKEN_FILE: '/tmp/tb/agent/token/token',
    AMBIT_KUBECONFIG: '/tmp/tb/agent/kubeconfig/kubeconfig',
    AMBIT_CA_TOKEN_FILE: '/tmp/tb/agent/ca-token/token',
    AMBIT_TRUST_BUNDLE_DIR: '/tmp/tb/agent/trust-bundle',
    AMBIT_RUN_DIR: '/tmp/tb/agent/run',
    AMBIT_STATE_DIR: '/tmp/tb/agent/state',
    ...AGENT_ENV,
  });
});

t.test('a field or a mount the context lacks is an error, not a silent default', async (t) => {
  const container = controllerContainer();
  const fields = { 'status.podIP': '10.0.0.1', 'metadata.namespace': 'ambit-system', 'metadata.name': 'ambit-controller-0' };
  t.throws(() => containerProcess(container, { fields: {}, mounts: { kubeconfig: '/k' } }), /AMBIT_LISTEN_HOST: no value for the downward API's status\.podIP/);
  t.throws(() => containerProcess(container, { fields, mounts: {} }), /volume mount kubeconfig/);
  const proc = containerProcess(container, { fields, mounts: { kubeconfig: '/k' } });
  t.match(proc.env, { AMBIT_LISTEN_HOST: '10.0.0.1', AMBIT_NAMESPACE: 'ambit-system', AMBIT_POD_NAME: 'ambit-controller-0', AMBIT_KUBECONFIG: '/k/kubeconfig' });
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
