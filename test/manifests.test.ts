/**
 * The install (issue 15, step 1, in part): `kubectl kustomize manifests/` renders, every rendered object validates
 * against the Kubernetes OpenAPI schemas (kubernetes-models, not hand-written checks), and the agent's container
 * starts the agent as agent/config.ts says it must be started (AGENT_NODE_FLAGS, AGENT_ENV).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { AGENT_ENV, AGENT_NODE_FLAGS, loadAgentConfig } from '../agent/index.js';
import { loadControllerConfig } from '../controller/index.js';
import { CNI_SOCKET_NAME, ENROLLMENT_FILE_NAME } from '../core/cni/index.js';
import { containerOf, containerProcess, MANIFESTS_DIR, renderedPodTemplate, renderManifests, type ContainerSpec } from '../testbed/index.js';
import { needsTools } from './prerequisites.js';

const unavailable = needsTools(['kubectl'], 'renders the manifests with kubectl kustomize');

interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  spec?: Record<string, unknown>;
}

async function render(): Promise<KubeObject[]> {
  return structuredClone(await renderManifests()) as unknown as KubeObject[];
}

t.test('kubectl kustomize manifests/ renders, and every object is valid Kubernetes', { skip: unavailable }, async (t) => {
  const objects = await render();
  const kinds = objects.map((o) => `${o.kind}/${o.metadata.name}`);
  for (const expected of [
    'Namespace/ambit-system',
    'CustomResourceDefinition/authorizationpolicies.security.ambit.dev',
    'CustomResourceDefinition/peerauthentications.security.ambit.dev',
    'ServiceAccount/ambit-agent',
    'ServiceAccount/ambit-controller',
    'DaemonSet/ambit-agent',
    'Deployment/ambit-controller',
    'PodDisruptionBudget/ambit-controller',
    'Service/ambit-controller',
    'NetworkPolicy/ambit-controller',
  ]) {
    t.ok(kinds.includes(expected), `renders ${expected}`);
  }
  for (const object of objects) {
    const [group, version] = object.apiVersion.includes('/') ? object.apiVersion.split('/') : ['', object.apiVersion];
    const module = (await import(`kubernetes-models/${group === '' ? '' : `${group}/`}${version}/${object.kind}`)) as Record<string, new (data: unknown) => { validate(): void }>;
    const Model = module[object.kind];
    if (Model === undefined) throw new Error(`kubernetes-models has no ${object.apiVersion} ${object.kind}`);
    t.doesNotThrow(() => new Model(object).validate(), `${object.kind}/${object.metadata.name} validates against the Kubernetes schema`);
    if (object.kind !== 'Namespace' && object.kind !== 'CustomResourceDefinition' && !object.kind.startsWith('Cluster')) {
      t.equal(object.metadata.namespace, 'ambit-system', `${object.kind}/${object.metadata.name} is in ambit-system`);
    }
  }
  const policy = objects.find((o) => o.kind === 'NetworkPolicy');
  t.match(policy?.spec, { ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.0/8' } }], ports: [{ port: 15012 }] }] }, "the controller's port, from the nodes' CIDR (install-params.yaml), and nothing else");
});

t.test('a schema check can fail: a broken object is refused by the same validation', { skip: unavailable }, async (t) => {
  const objects = await render();
  const daemonSet = structuredClone(objects.find((o) => o.kind === 'DaemonSet')) as unknown as { spec: { template: { spec: { containers: Array<{ ports: Array<{ containerPort: unknown }> }> } } } };
  daemonSet.spec.template.spec.containers[0]!.ports[0]!.containerPort = 'hbone';
  const { DaemonSet } = await import('kubernetes-models/apps/v1/DaemonSet');
  t.throws(() => new DaemonSet(daemonSet as never).validate(), /containerPort must be integer/);
});

t.test("the agent's container starts the agent as agent/config.ts says, with no privilege beyond two capabilities", { skip: unavailable }, async (t) => {
  const objects = await render();
  type Container = { name: string; command: string[]; env: Array<{ name: string; value?: string }>; securityContext: Record<string, unknown> };
  const daemonSet = objects.find((o) => o.kind === 'DaemonSet') as unknown as { spec: { template: { spec: Record<string, unknown> & { containers: Container[]; initContainers: Container[] } } } };
  const pod = daemonSet.spec.template.spec;
  const agent = pod.containers.find((c) => c.name === 'agent')!;
  t.same(agent.command, ['node', ...AGENT_NODE_FLAGS, '/app/dist/cli/main.js', 'agent'], 'the node flags of AGENT_NODE_FLAGS');
  for (const [name, value] of Object.entries(AGENT_ENV)) t.equal(agent.env.find((e) => e.name === name)?.value, value, `${name} as AGENT_ENV has it`);
  t.match(pod, { hostNetwork: true, priorityClassName: 'system-node-critical', serviceAccountName: 'ambit-agent' });
  t.same(agent.securityContext.capabilities, { drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW'] }, 'NET_ADMIN and NET_RAW, nothing more');
  t.equal(agent.securityContext.privileged, false, 'not privileged');
  t.ok(pod.initContainers.some((c) => c.name === 'install-cni' && c.command.includes('cni')), 'an init container chains the CNI plugin first');
});

t.test('the rendered containers start: their args and env (downward API filled in) are configurations the programs take', { skip: unavailable }, async (t) => {
  const objects = await render();
  type Rendered = Partial<ContainerSpec> & { name: string; command: string[] };
  type Spec = { template: { spec: { containers: Rendered[]; initContainers?: Rendered[] } } };
  const podOf = (kind: string) => (objects.find((o) => o.kind === kind)?.spec as unknown as Spec).template.spec;
  const fields = { 'spec.nodeName': 'node1', 'status.hostIP': '10.0.0.1', 'status.podIP': '10.244.0.5', 'metadata.namespace': 'ambit-system', 'metadata.name': 'ambit-controller-x' };
  const start = (container: Rendered) => {
    // each mount at its own path: what the container sees
    const mounts = Object.fromEntries((container.volumeMounts ?? []).map((m) => [m.name, m.mountPath]));
    const proc = containerProcess({ command: container.command, args: container.args ?? [], env: container.env ?? [], volumeMounts: container.volumeMounts ?? [] }, { fields, mounts });
    const cli = proc.args.findIndex((arg) => arg.endsWith('/dist/cli/main.js'));
    return { env: proc.env, argv: proc.args.slice(cli + 2), command: proc.args[cli + 1] };
  };
  const agent = start(podOf('DaemonSet').containers.find((c) => c.name === 'agent')!);
  t.equal(agent.command, 'agent');
  const { config } = loadAgentConfig(agent.env, agent.argv);
  const mountPaths = podOf('DaemonSet').containers.find((c) => c.name === 'agent')!.volumeMounts!.map((m) => m.mountPath);
  t.match(config, { mode: 'kubernetes', nodeName: 'node1', nodeIp: '10.0.0.1', runDir: '/var/run/ambit', stateDir: '/var/lib/ambit' }, 'the agent takes it, in kubernetes mode');
  for (const file of [config?.kubernetes?.tokenFile, config?.kubernetes?.caTokenFile, config?.kubernetes?.trustBundleDir]) {
    t.ok(mountPaths.some((mount) => file === mount || file?.startsWith(`${mount}/`)), `${file} is under a mount`);
  }
  const install = start(podOf('DaemonSet').initContainers!.find((c) => c.name === 'install-cni')!);
  t.same(install.argv.slice(0, 3), ['install', '--watch', '--plugin'], 'the CNI sidecar installs and watches');
  t.ok(install.argv[3]?.endsWith('/dist/ambit-cni'), "the image's built plugin (/app/dist/ambit-cni): nothing is built at install");
  t.equal(install.env.AMBIT_NAMESPACE, 'ambit-system', "it names the DaemonSet's namespace (the downward API's), which the plugin lets start on a node no agent has read the cluster on yet");
  const controller = start(podOf('Deployment').containers[0]!);
  t.equal(controller.command, 'controller');
  const { config: controllerConfig } = loadControllerConfig(controller.env, controller.argv);
  t.match(controllerConfig, { listenHost: '10.244.0.5', namespace: 'ambit-system', podName: 'ambit-controller-x' }, 'the controller takes it');
});

t.test("the CNI installer opens the agent's socket and enrollment file through its own mounts, at their paths on the node", { skip: unavailable }, async (t) => {
  const template = await renderedPodTemplate('DaemonSet', 'ambit-agent');
  const agent = containerOf(template, 'agent');
  const installer = containerOf(template, 'install-cni');
  const hostPathOf = (mountName: string | undefined) => template.spec.volumes?.find((v) => v.name === mountName)?.hostPath?.path;
  /** The agent's folder named by its env variable, as a path on the node (the hostPath of the volume mounted there). */
  const agentFolderOnNode = (variable: string) => {
    const value = agent.env.find((e) => e.name === variable && 'value' in e) as { value: string } | undefined;
    return hostPathOf(agent.volumeMounts.find((m) => m.mountPath === value?.value)?.name);
  };
  const flag = (name: string) => installer.args[installer.args.indexOf(name) + 1] ?? '';
  for (const [name, variable, file] of [['--agent-socket', 'AMBIT_RUN_DIR', CNI_SOCKET_NAME], ['--enrollment-file', 'AMBIT_STATE_DIR', ENROLLMENT_FILE_NAME]] as const) {
    const value = flag(name);
    t.equal(value, path.join(agentFolderOnNode(variable) ?? '?', file), `${name}: the agent's, on the node (what the plugin on the host opens)`);
    const mount = installer.volumeMounts.find((m) => value.startsWith(`${m.mountPath}/`));
    t.ok(mount, `${name} ${value} is under one of the installer's own mounts (it opens it itself)`);
    t.equal(mount?.mountPath, hostPathOf(mount?.name), `${name}: mounted at its path on the node, so the path it writes into the conflist holds on the host`);
  }
});

t.test("the image's Node is the Node 24 that CI tests on (package.json config.node24, `npm run test:node24`)", async (t) => {
  const repo = path.dirname(MANIFESTS_DIR);
  const pinned = (JSON.parse(await readFile(path.join(repo, 'package.json'), 'utf8')) as { config: { node24: string } }).config.node24;
  const stages = [...(await readFile(path.join(repo, 'Dockerfile'), 'utf8')).matchAll(/^FROM node:(\S+?)-\S*/gm)].map((m) => m[1]);
  t.ok(stages.length > 0, 'the Dockerfile builds from node:<version>');
  for (const version of stages) t.equal(version, pinned, `FROM node:${version}`);
});
