/**
 * A Kubernetes-mode mesh on a network-namespace testbed: the API server double in the test's process, listening on
 * the testbed's host link; the controller as a process in the host's namespace (a control plane off the nodes); an
 * agent per node in the node's namespace (a hostNetwork DaemonSet pod). Each program starts as its container says:
 * command, args and env, with the downward API's fields filled in and every volume mount a folder of its own.
 * `containerProcess` is that mapping, written once; `agentContainer` and `controllerContainer` say what the
 * rendered manifests say, so that a rendered DaemonSet or Deployment can take their place.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AGENT_ENV, AGENT_NODE_FLAGS, AGENT_STARTED_LOG } from '../agent/index.js';
import { CA_TOKEN_AUDIENCE, TRUST_BUNDLE_CONFIGMAP_NAME } from '../core/identity/index.js';
import { ApiServer, boundServiceAccountUser, MESH_CUSTOM_RESOURCES } from './apiserver/index.js';
import { ConfigMapVolume } from './configmap-volume.js';
import { CLI_PATH, collectLines, nodeObject, parseLogLines, podObject, startWorkload, waitForLine, waitForLogRecord, type PodSpec } from './cluster.js';
import type { Testbed, TestbedNode, TestbedPod } from './testbed.js';

export type EnvVar = { name: string; value: string } | { name: string; valueFrom: { fieldRef: { fieldPath: string } } };

export interface VolumeMount {
  name: string;
  mountPath: string;
}

/** The part of a pod's container that says how its process starts. */
export interface ContainerSpec {
  command: string[];
  args: string[];
  env: EnvVar[];
  volumeMounts: VolumeMount[];
}

/** What the testbed runs for a container. */
export interface ContainerProcess {
  file: string;
  args: string[];
  env: Record<string, string>;
}

export interface ContainerContext {
  /** The downward API's values by field path: `spec.nodeName`, `status.hostIP`, `status.podIP`, ... */
  fields: Record<string, string>;
  /** Each volume mount's folder on this machine, by the mount's name. */
  mounts: Record<string, string>;
}

/** Where the image keeps the application: the build of this checkout stands in for it. */
export const IMAGE_APP_DIR = '/app';
const CHECKOUT_DIR = path.resolve(path.dirname(CLI_PATH), '..', '..');
const IMAGE_CLI = `${IMAGE_APP_DIR}/${path.relative(CHECKOUT_DIR, CLI_PATH)}`;

const AGENT_MOUNTS = Object.freeze({
  token: '/var/run/secrets/ambit/controller',
  'ca-token': '/var/run/secrets/ambit/ca-token',
  'trust-bundle': '/var/run/secrets/ambit/trust-bundle',
  kubeconfig: '/etc/ambit/kube',
  run: '/var/run/ambit',
  state: '/var/lib/ambit',
});
const CONTROLLER_MOUNTS = Object.freeze({ kubeconfig: '/etc/ambit/kube' });
const TOKEN_FILE = 'token';
const KUBECONFIG_FILE = 'kubeconfig';
const CONTROLLER_NAMESPACE = 'ambit-system';
/** The audience of the agents' projected token for the controller's stream. */
const CONTROLLER_AUDIENCE = 'ambit-controller';
const READY_TIMEOUT_MS = 30_000;

const mounts = (paths: Readonly<Record<string, string>>): VolumeMount[] => Object.entries(paths).map(([name, mountPath]) => ({ name, mountPath }));
const field = (name: string, fieldPath: string): EnvVar => ({ name, valueFrom: { fieldRef: { fieldPath } } });

/** The agent's container, as the DaemonSet has it: kubernetes mode, its node from the downward API. */
export function agentContainer(options: { controllerUrl: string; logLevel?: string }): ContainerSpec {
  return {
    command: ['node', ...AGENT_NODE_FLAGS, IMAGE_CLI, 'agent'],
    args: ['--mode', 'kubernetes', '--controller', options.controllerUrl, '--log-level', options.logLevel ?? 'info'],
    env: [
      field('AMBIT_NODE_NAME', 'spec.nodeName'),
      field('AMBIT_NODE_IP', 'status.hostIP'),
      { name: 'AMBIT_TOKEN_FILE', value: `${AGENT_MOUNTS.token}/${TOKEN_FILE}` },
      { name: 'AMBIT_CA_TOKEN_FILE', value: `${AGENT_MOUNTS['ca-token']}/${TOKEN_FILE}` },
      { name: 'AMBIT_TRUST_BUNDLE_DIR', value: AGENT_MOUNTS['trust-bundle'] },
      { name: 'AMBIT_KUBECONFIG', value: `${AGENT_MOUNTS.kubeconfig}/${KUBECONFIG_FILE}` },
      { name: 'AMBIT_RUN_DIR', value: AGENT_MOUNTS.run },
      { name: 'AMBIT_STATE_DIR', value: AGENT_MOUNTS.state },
      ...Object.entries(AGENT_ENV).map(([name, value]) => ({ name, value })),
    ],
    volumeMounts: mounts(AGENT_MOUNTS),
  };
}

/**
 * The controller's container, as its Deployment has it: it serves the agents on its pod IP, and its namespace and
 * pod name (the Lease's holder) come from the downward API. `certTtlSeconds`: shorter leaves, for a test that waits
 * past a renewal.
 */
export function controllerContainer(options: { logLevel?: string; certTtlSeconds?: number; caPropagationSeconds?: number } = {}): ContainerSpec {
  return {
    command: ['node', IMAGE_CLI, 'controller'],
    args: [
      '--log-level',
      options.logLevel ?? 'info',
      ...(options.certTtlSeconds === undefined ? [] : ['--cert-ttl', String(options.certTtlSeconds)]),
      ...(options.caPropagationSeconds === undefined ? [] : ['--ca-propagation', String(options.caPropagationSeconds)]),
    ],
    env: [
      field('AMBIT_LISTEN_HOST', 'status.podIP'),
      field('AMBIT_NAMESPACE', 'metadata.namespace'),
      field('AMBIT_POD_NAME', 'metadata.name'),
      { name: 'AMBIT_KUBECONFIG', value: `${CONTROLLER_MOUNTS.kubeconfig}/${KUBECONFIG_FILE}` },
    ],
    volumeMounts: mounts(CONTROLLER_MOUNTS),
  };
}

/**
 * The process a container is on the testbed: `node` is this Node.js, the image's application folder is this checkout,
 * a path under a mount is the same path under the mount's folder, a downward-API variable gets its field's value.
 */
export function containerProcess(container: ContainerSpec, context: ContainerContext): ContainerProcess {
  const folders = container.volumeMounts.map((mount) => {
    const folder = context.mounts[mount.name];
    if (folder === undefined) throw new Error(`volume mount ${mount.name} (${mount.mountPath}) has no folder`);
    return { mountPath: mount.mountPath, folder };
  });
  const local = (value: string): string => {
    const under = (root: string) => value === root || value.startsWith(`${root}/`);
    const mount = folders.find((candidate) => under(candidate.mountPath));
    if (mount !== undefined) return mount.folder + value.slice(mount.mountPath.length);
    return under(IMAGE_APP_DIR) ? CHECKOUT_DIR + value.slice(IMAGE_APP_DIR.length) : value;
  };
  const [command, ...commandArgs] = container.command;
  if (command === undefined) throw new Error('the container has no command');
  const env: Record<string, string> = {};
  for (const variable of container.env) {
    if ('value' in variable) {
      env[variable.name] = local(variable.value);
      continue;
    }
    const { fieldPath } = variable.valueFrom.fieldRef;
    const value = context.fields[fieldPath];
    if (value === undefined) throw new Error(`env ${variable.name}: no value for the downward API's ${fieldPath}`);
    env[variable.name] = value;
  }
  return { file: command === 'node' ? process.execPath : local(command), args: [...commandArgs, ...container.args].map(local), env };
}

export interface KubeClusterOptions {
  /** Namespaces and their labels at the start; `ambit.dev/mode: enabled` enrolls one. */
  namespaces: Record<string, Record<string, string>>;
  logLevel?: string;
  /** The lifetime of the certificates the controller signs (default its own, 24 h). */
  certTtlSeconds?: number;
  /** How long a new root is published before the controller signs with it (default its own, 120 s). */
  caPropagationSeconds?: number;
  /** By node name: how long after a change that node's mounted trust bundle follows (kubelet's lag; default none). */
  trustBundleLagMs?: Record<string, number>;
}

interface RunningProcess {
  child: ChildProcess;
  lines: string[];
}

/** Who logged: the controller, or the agent of a node. */
export type KubeProcess = 'controller' | TestbedNode;

export class KubeCluster {
  readonly tb: Testbed;
  readonly api: ApiServer;
  /** A cluster admin's kubeconfig, for kubectl. */
  readonly kubeconfig: string;
  readonly #options: KubeClusterOptions;
  readonly #hostIp: string;
  #controller: RunningProcess | undefined;
  readonly #agents = new Map<string, RunningProcess>();
  readonly #volumes: ConfigMapVolume[] = [];
  /** The controller's stream URL, fixed at its first start so a restarted controller is where the agents look. */
  readonly #controllerUrl: string;

  private constructor(tb: Testbed, api: ApiServer, hostIp: string, options: KubeClusterOptions) {
    this.tb = tb;
    this.api = api;
    this.#hostIp = hostIp;
    this.#options = options;
    this.kubeconfig = path.join(tb.tmpDir, 'admin.kubeconfig');
    this.#controllerUrl = `https://${hostIp}:15012`;
  }

  /**
   * Starts the double on the testbed's host link with the Nodes and Namespaces, the controller, and an agent on every
   * node; resolves once every agent has its first full sync. The testbed must have been created with `hostLink`.
   */
  static async start(tb: Testbed, options: KubeClusterOptions): Promise<KubeCluster> {
    if (tb.hostIp === undefined) throw new Error(`testbed ${tb.prefix} has no host link: create it with hostLink: true`);
    const api = await ApiServer.start({ host: tb.hostIp });
    const cluster = new KubeCluster(tb, api, tb.hostIp, options);
    try {
      for (const type of MESH_CUSTOM_RESOURCES) api.registerResource(type);
      api.addToken('admin-token', { username: 'kubernetes-admin', groups: ['system:masters'] });
      await api.writeKubeconfig(cluster.kubeconfig, 'admin-token');
      for (const [name, labels] of Object.entries(options.namespaces)) api.objects('v1', 'namespaces').create({ metadata: { name, labels } });
      api.objects('v1', 'namespaces').create({ metadata: { name: CONTROLLER_NAMESPACE } });
      for (const node of tb.nodes) api.objects('v1', 'nodes').create(nodeObject(node));
      await cluster.#prepareController();
      await Promise.all(tb.nodes.map((node) => cluster.#prepareAgent(node)));
      // the controller creates the mesh's root (no Secret yet) and publishes the bundle the agents mount
      await cluster.startController();
      await Promise.all(cluster.#volumes.map((volume) => volume.settled()));
      await Promise.all(tb.nodes.map((node) => cluster.startAgent(node)));
    } catch (err) {
      await cluster.close();
      throw err;
    }
    return cluster;
  }

  /** The folder of one volume mount of one process (`controller`, `agent-node1`). */
  mountDir(processName: string, mount: string): string {
    return path.join(this.tb.tmpDir, 'mounts', processName, mount);
  }

  /** The agent's CNI socket folder on `node` (its run mount). */
  runDir(node: TestbedNode): string {
    return this.mountDir(agentName(node), 'run');
  }

  /** The agent's persistent state folder on `node` (its state mount: the enrollment file). */
  stateDir(node: TestbedNode): string {
    return this.mountDir(agentName(node), 'state');
  }

  async #prepareController(): Promise<void> {
    const kube = await this.#mount('controller', 'kubeconfig');
    this.api.addToken('controller-token', { username: `system:serviceaccount:${CONTROLLER_NAMESPACE}:ambit-controller` });
    await this.api.writeKubeconfig(path.join(kube, KUBECONFIG_FILE), 'controller-token');
  }

  /**
   * The agent's pod on `node` (the DaemonSet's, hostNetwork) and its tokens, bound to that pod: one for the API
   * server, one for the controller's stream, one for its CA; the trust bundle ConfigMap mounted as kubelet does.
   */
  async #prepareAgent(node: TestbedNode): Promise<void> {
    const name = agentName(node);
    const agentPod = this.api.objects('v1', 'pods').create({
      metadata: { name: `ambit-${name}`, namespace: CONTROLLER_NAMESPACE, labels: { app: 'ambit-agent' } },
      spec: { nodeName: node.name, serviceAccountName: 'ambit-agent', hostNetwork: true, containers: [{ name: 'agent' }] },
      status: { phase: 'Running', hostIP: node.ip },
    });
    const podUid = String((agentPod.metadata as { uid: string }).uid);
    const user = boundServiceAccountUser({ namespace: CONTROLLER_NAMESPACE, serviceAccount: 'ambit-agent', podName: `ambit-${name}`, podUid, nodeName: node.name });
    this.api.addToken(`${name}-api-token`, user);
    this.api.addToken(`${name}-stream-token`, { ...user, audiences: [CONTROLLER_AUDIENCE] });
    this.api.addToken(`${name}-ca-token`, { ...user, audiences: [CA_TOKEN_AUDIENCE] });
    await this.api.writeKubeconfig(path.join(await this.#mount(name, 'kubeconfig'), KUBECONFIG_FILE), `${name}-api-token`);
    await writeFile(path.join(await this.#mount(name, 'token'), TOKEN_FILE), `${name}-stream-token`);
    await writeFile(path.join(await this.#mount(name, 'ca-token'), TOKEN_FILE), `${name}-ca-token`);
    this.#volumes.push(await ConfigMapVolume.mount(this.api, { namespace: CONTROLLER_NAMESPACE, name: TRUST_BUNDLE_CONFIGMAP_NAME, dir: this.mountDir(name, 'trust-bundle'), lagMs: this.#options.trustBundleLagMs?.[node.name] ?? 0 }));
    await this.#mount(name, 'run');
    await this.#mount(name, 'state');
  }

  async #mount(processName: string, mount: string): Promise<string> {
    const dir = this.mountDir(processName, mount);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /** The controller's process as its container says, in the host's namespace, whose host-link address is its pod IP. */
  controllerProcess(): ContainerProcess {
    const { logLevel, certTtlSeconds, caPropagationSeconds } = this.#options;
    const container = controllerContainer({ logLevel, certTtlSeconds, caPropagationSeconds });
    return containerProcess(container, {
      fields: { 'status.podIP': this.#hostIp, 'metadata.namespace': CONTROLLER_NAMESPACE, 'metadata.name': 'ambit-controller-0' },
      mounts: Object.fromEntries(container.volumeMounts.map((mount) => [mount.name, this.mountDir('controller', mount.name)])),
    });
  }

  /** The agent's process on `node` as the DaemonSet's container says; hostNetwork: its pod's host IP is the node's. */
  agentProcess(node: TestbedNode): ContainerProcess {
    const container = agentContainer({ controllerUrl: this.#controllerUrl, logLevel: this.#options.logLevel });
    return containerProcess(container, {
      fields: { 'spec.nodeName': node.name, 'status.hostIP': node.ip, 'status.podIP': node.ip },
      mounts: Object.fromEntries(container.volumeMounts.map((mount) => [mount.name, this.mountDir(agentName(node), mount.name)])),
    });
  }

  /** Starts the controller and resolves once it has listed the cluster. */
  async startController(): Promise<void> {
    const spec = this.controllerProcess();
    const child = this.tb.spawnOnHost(spec.file, spec.args, { buffer: false, env: spec.env }) as unknown as ChildProcess;
    const { lines, stderr } = collectLines(child);
    this.#controller = { child, lines };
    await waitForLine(child, lines, (l) => l.includes('"msg":"cluster listed; streaming to agents"'), 'controller', READY_TIMEOUT_MS, stderr);
  }

  /** Stops the controller (SIGTERM) and resolves with its exit code once it has exited. */
  async stopController(): Promise<number | null> {
    const running = this.#controller;
    if (running === undefined) return null;
    return stopChild(running.child);
  }

  /** Starts the agent on `node`; resolves once it is ready (its first full sync from the controller). */
  async startAgent(node: TestbedNode): Promise<void> {
    const spec = this.agentProcess(node);
    const child = this.tb.spawn(node.netns, spec.file, spec.args, { buffer: false, env: spec.env }) as unknown as ChildProcess;
    const { lines, stderr } = collectLines(child);
    this.#agents.set(node.name, { child, lines });
    await waitForLine(child, lines, (l) => l.includes(`"msg":${JSON.stringify(AGENT_STARTED_LOG.ready)}`), `agent on ${node.name}`, READY_TIMEOUT_MS, stderr);
  }

  /** The JSON log records of the controller, or of a node's agent, since it last started. */
  logs(who: KubeProcess): Array<Record<string, unknown>> {
    const running = who === 'controller' ? this.#controller : this.#agents.get(who.name);
    return parseLogLines(running?.lines ?? []);
  }

  waitForLog(who: KubeProcess, test: (record: Record<string, unknown>) => boolean, timeoutMs = 5000, after = 0): Promise<Record<string, unknown>> {
    return waitForLogRecord(() => this.logs(who), test, who === 'controller' ? 'the controller' : who.name, timeoutMs, after);
  }

  /**
   * What the kubelet does for a new pod: the object exists (scheduled, Pending), the runtime networks it through the
   * node's conflist with containerd's CNI_ARGS, the status gets its IP, the application starts.
   */
  async startPod(name: string, node: TestbedNode, spec: PodSpec): Promise<TestbedPod> {
    this.api.objects('v1', 'pods').create(podObject(name, node, spec));
    const pod = await this.tb.addPod(node, name, { k8s: { namespace: spec.namespace } });
    this.api.objects('v1', 'pods').patch(name, { status: podObject(name, node, spec, pod.ip)['status'] ?? {} }, spec.namespace);
    await startWorkload(this.tb, pod);
    return pod;
  }

  /** Stops the double (the testbed stops the processes when it is destroyed). */
  async close(): Promise<void> {
    for (const volume of this.#volumes) volume.close();
    await this.api.close();
  }
}

function agentName(node: TestbedNode): string {
  return `agent-${node.name}`;
}

async function stopChild(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  child.kill('SIGTERM');
  return exited;
}
