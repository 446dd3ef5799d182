/**
 * A Kubernetes-mode mesh on a network-namespace testbed: the API server double in the test's process, listening on
 * the testbed's host link; the controller as a process in the host's namespace (a control plane off the nodes); an
 * agent per node in the node's namespace (a hostNetwork DaemonSet pod). Each program starts as its container in the
 * rendered manifests (`kubectl kustomize manifests/`) says: command, args and env, with the downward API's fields
 * filled in and every volume mount a folder of its own. `containerProcess` is that mapping, written once.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AGENT_STARTED_LOG, removeRedirectRules } from '../agent/index.js';
import { buildCniSea } from '../cni/index.js';
import { SERVICE_ACCOUNT_DIR } from '../core/k8s/index.js';
import { ApiServer, boundServiceAccountUser, MESH_CUSTOM_RESOURCES, type JsonObject, type StoreEvent } from './apiserver/index.js';
import { ConfigMapVolume } from './configmap-volume.js';
import { collectLines, nodeObject, parseLogLines, podObject, startWorkload, waitForLine, waitForLogRecord, type PodSpec } from './cluster.js';
import { CHECKOUT_DIR, containerOf, podTemplateOf, type ContainerSpec, renderedPodTemplate, renderManifests, type RenderedObject, type RenderedPodTemplate } from './manifests.js';
import { signalGroup } from './processes.js';

export type { ContainerSpec, EnvVar, VolumeMount } from './manifests.js';
import type { Testbed, TestbedNode, TestbedPod } from './testbed.js';

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
  /** The kubelet's service-account mount: its folder, and the API server's address. */
  serviceAccount?: { dir: string; host: string; port: string };
}

/** Where the image keeps the application: the build of this checkout stands in for it. */
export const IMAGE_APP_DIR = '/app';

const TOKEN_FILE = 'token';
/** The folder the kubelet mounts the pod's service account into (token, ca.crt, namespace); its volume's name. */
const SERVICE_ACCOUNT_VOLUME = 'kube-api-access';
const READY_TIMEOUT_MS = 30_000;

/**
 * The process a container is on the testbed: `node` is this Node.js, the image's application folder is this checkout,
 * a path under one of the container's own mounts is the same path under the mount's folder (nothing else is
 * rewritten: a path the container does not mount is a path it cannot open), and a downward-API variable gets its
 * field's value. With `serviceAccount`, the kubelet's part too: the API server's
 * address in KUBERNETES_SERVICE_HOST/PORT and the service account's folder (its token, ca.crt, namespace) mounted
 * where a pod has it, which a program finds through AMBIT_SERVICE_ACCOUNT_DIR, since its default path is not
 * written in the container.
 */
export function containerProcess(container: ContainerSpec, context: ContainerContext): ContainerProcess {
  const volumeMounts = context.serviceAccount === undefined ? container.volumeMounts : [...container.volumeMounts, { name: SERVICE_ACCOUNT_VOLUME, mountPath: SERVICE_ACCOUNT_DIR }];
  const mounts: Record<string, string> = { ...context.mounts, ...(context.serviceAccount === undefined ? {} : { [SERVICE_ACCOUNT_VOLUME]: context.serviceAccount.dir }) };
  const folders = volumeMounts.map((mount) => {
    const folder = mounts[mount.name];
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
  if (context.serviceAccount !== undefined) {
    env['KUBERNETES_SERVICE_HOST'] = context.serviceAccount.host;
    env['KUBERNETES_SERVICE_PORT'] = context.serviceAccount.port;
    env['AMBIT_SERVICE_ACCOUNT_DIR'] = local(SERVICE_ACCOUNT_DIR);
  }
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
  /** An overlay's `--log-level` for the agents and the controller (default the manifests'). */
  logLevel?: string;
  /** The lifetime of the certificates the controller signs (default its own, 24 h). */
  certTtlSeconds?: number;
  /** How long a new root is published before the controller signs with it (default its own, 120 s). */
  caPropagationSeconds?: number;
  /** By node name: how long after a change that node's mounted trust bundle follows (kubelet's lag; default none). */
  trustBundleLagMs?: Record<string, number>;
  /**
   * How Ambit gets onto the cluster. 'testbed' (default): the testbed starts it from the rendered manifests. 'kubectl':
   * as a user installs it, `kubectl apply -k manifests/` against a double that enforces RBAC, nothing of Ambit there
   * before; the testbed then does what a cluster's controllers and kubelets do with what was applied: it runs the
   * applied Deployment's replicas and the DaemonSet's pod on every node, writes their status, and stops a pod's
   * processes when its object is deleted.
   */
  install?: 'testbed' | 'kubectl';
  /**
   * Whether start() starts the DaemonSet's pod (its CNI installer, then its agent) on every node; default true. With
   * false the test starts them itself (startCniInstaller, startAgent), in the order it tests.
   */
  startDaemonSet?: boolean;
}

interface RunningProcess {
  child: ChildProcess;
  lines: string[];
}

/** Who logged: the controller, or the agent of a node. */
export type KubeProcess = 'controller' | TestbedNode;

const AGENT_WORKLOAD = { kind: 'DaemonSet', name: 'ambit-agent', container: 'agent', cniInstaller: 'install-cni' } as const;
const CONTROLLER_WORKLOAD = { kind: 'Deployment', name: 'ambit-controller', container: 'controller' } as const;
/** The controller's pods (`ambit-controller-0`, ...), whose IPs are the testbed's host-link addresses. */
const CONTROLLER_POD_PREFIX = 'ambit-controller-';
/** What the installer sidecar logs once it has chained the plugin (or, while the mesh is uninstalling, not) and watches (cli/cni.ts). */
const CNI_WATCHING_LOG = 'watching the CNI configuration';

/**
 * The mesh as the rendered manifests (testbed/manifests.ts) run it: the DaemonSet's pod on every node (its CNI
 * installer, a native sidecar, then its agent) and the Deployment's controller, each container started by
 * `containerProcess` with its pod's volumes made as the kubelet makes them: a projected service-account token per
 * audience, the ConfigMap kept in sync (ConfigMapVolume), a hostPath a folder of the node's own filesystem (the CNI
 * folders are the testbed node's), and the service account mounted. A Service's DNS name resolves on the nodes, through
 * `ip netns exec`'s /etc/netns/NAME/hosts, to the controller's pod IP (no kube-proxy: a headless Service).
 */
export class KubeCluster {
  readonly tb: Testbed;
  readonly api: ApiServer;
  /** A cluster admin's kubeconfig, for kubectl. */
  readonly kubeconfig: string;
  readonly #options: KubeClusterOptions;
  #agent: RenderedPodTemplate;
  #controllerTemplate: RenderedPodTemplate;
  #controller: RunningProcess | undefined;
  /** install 'kubectl': the replicas of the applied Deployment (the first is #controller), and what is running. */
  readonly #replicas: RunningProcess[] = [];
  #installing: Promise<void> = Promise.resolve();
  #installFailure: unknown;
  #daemonSetApplied = false;
  readonly #agents = new Map<string, RunningProcess>();
  readonly #installers = new Map<string, ChildProcess>();
  readonly #volumes: ConfigMapVolume[] = [];

  private constructor(tb: Testbed, api: ApiServer, options: KubeClusterOptions, agent: RenderedPodTemplate, controller: RenderedPodTemplate) {
    this.tb = tb;
    this.api = api;
    this.#options = options;
    this.#agent = agent;
    this.#controllerTemplate = controller;
    this.kubeconfig = path.join(tb.tmpDir, 'admin.kubeconfig');
  }

  /**
   * Starts the double on the testbed's host link with the Nodes and Namespaces, the controller, and on every node the
   * CNI installer and the agent (unless `startDaemonSet` is false); resolves once every agent has its first full sync.
   * The testbed must have been created with `hostLink`.
   */
  static async start(tb: Testbed, options: KubeClusterOptions): Promise<KubeCluster> {
    if (tb.hostIp === undefined) throw new Error(`testbed ${tb.prefix} has no host link: create it with hostLink: true`);
    const [agent, controller] = await Promise.all([renderedPodTemplate(AGENT_WORKLOAD.kind, AGENT_WORKLOAD.name), renderedPodTemplate(CONTROLLER_WORKLOAD.kind, CONTROLLER_WORKLOAD.name), buildCniSea()]);
    const byKubectl = options.install === 'kubectl';
    const api = await ApiServer.start({ host: tb.hostIp, rbac: byKubectl });
    const cluster = new KubeCluster(tb, api, options, agent, controller);
    try {
      api.addToken('admin-token', { username: 'kubernetes-admin', groups: ['system:masters'] });
      await api.writeKubeconfig(cluster.kubeconfig, 'admin-token');
      for (const [name, labels] of Object.entries(options.namespaces)) api.objects('v1', 'namespaces').create({ metadata: { name, labels } });
      for (const node of tb.nodes) api.objects('v1', 'nodes').create(nodeObject(node));
      await cluster.#serviceDns();
      if (byKubectl) {
        api.on('change', (event) => cluster.#onInstallChange(event));
        return cluster;
      }
      for (const type of MESH_CUSTOM_RESOURCES) api.registerResource(type);
      api.objects('v1', 'namespaces').create({ metadata: { name: controller.namespace } });
      // the workloads' objects, as applied (what ambit status and uninstall read: the DaemonSet's selector and status)
      for (const object of await renderManifests()) {
        if (object.kind === AGENT_WORKLOAD.kind || object.kind === CONTROLLER_WORKLOAD.kind) {
          api.objects(object.apiVersion, object.kind === 'DaemonSet' ? 'daemonsets' : 'deployments').create(structuredClone(object) as unknown as JsonObject);
        }
      }
      await cluster.#prepareController();
      await Promise.all(tb.nodes.map((node) => cluster.#prepareAgent(node)));
      // the controller creates the mesh's root (no Secret yet) and publishes the bundle the agents mount
      await cluster.startController();
      await Promise.all(cluster.#volumes.map((volume) => volume.settled()));
      if (options.startDaemonSet ?? true) {
        for (const node of tb.nodes) await cluster.startCniInstaller(node);
        await Promise.all(tb.nodes.map((node) => cluster.startAgent(node)));
      }
    } catch (err) {
      await cluster.close();
      throw err;
    }
    return cluster;
  }

  /** The folder of one non-hostPath volume of one process's pod (`controller`, `agent-node1`). */
  mountDir(processName: string, mount: string): string {
    return path.join(this.tb.tmpDir, 'mounts', processName, mount);
  }

  /** A path on `node`'s own filesystem (`/var/lib/ambit`): a folder of its own, which survives what the node survives. */
  nodePath(node: TestbedNode, hostPath: string): string {
    if (hostPath === '/etc/cni/net.d' || hostPath.startsWith('/etc/cni/net.d/')) return node.cniConfDir + hostPath.slice('/etc/cni/net.d'.length);
    if (hostPath === '/opt/cni/bin' || hostPath.startsWith('/opt/cni/bin/')) return node.cniBinDir + hostPath.slice('/opt/cni/bin'.length);
    return path.join(this.tb.tmpDir, 'node-fs', node.name, hostPath);
  }

  /** The agent's CNI socket folder on `node` (its AMBIT_RUN_DIR). */
  runDir(node: TestbedNode): string {
    return this.#agentEnv(node, 'AMBIT_RUN_DIR');
  }

  /** The agent's persistent state folder on `node` (its AMBIT_STATE_DIR: the enrollment file). */
  stateDir(node: TestbedNode): string {
    return this.#agentEnv(node, 'AMBIT_STATE_DIR');
  }

  /** Every folder (or file) the agent's container on `node` has mounted, by mount name (the service account's included). */
  agentMounts(node: TestbedNode): Record<string, string> {
    const container = containerOf(this.#agent, AGENT_WORKLOAD.container);
    return { ...Object.fromEntries(container.volumeMounts.map((mount) => [mount.name, this.#podMounts(node)[mount.name] ?? ''])), [SERVICE_ACCOUNT_VOLUME]: this.mountDir(agentName(node), SERVICE_ACCOUNT_VOLUME) };
  }

  #agentEnv(node: TestbedNode, name: string): string {
    const value = this.agentProcess(node).env[name];
    if (value === undefined) throw new Error(`the agent's container sets no ${name}`);
    return value;
  }

  /** Each volume's folder in the agent's pod on `node`, by volume name. */
  #podMounts(node: TestbedNode): Record<string, string> {
    return Object.fromEntries((this.#agent.spec.volumes ?? []).map((volume) => [volume.name, volume.hostPath === undefined ? this.mountDir(agentName(node), volume.name) : this.nodePath(node, volume.hostPath.path)]));
  }



  /** The cluster's DNS for the rendered Services, on every node: each resolves to the controller's pod IP. */
  async #serviceDns(): Promise<void> {
    const services = (await renderManifests()).filter((object) => object.kind === 'Service');
    const names = services.flatMap((service) => {
      const base = `${service.metadata.name}.${service.metadata.namespace ?? 'default'}.svc`;
      return [base, `${base}.cluster.local`];
    });
    // every replica's address (getaddrinfo gives the first, as kube-proxy would pick one)
    for (const node of this.tb.nodes) await this.tb.setHosts(node, Object.fromEntries(this.tb.hostIps.map((ip) => [ip, names])));
  }

  /** The service-account folder the kubelet mounts: the token, the API server's CA, the namespace. */
  async #serviceAccount(processName: string, namespace: string, token: string): Promise<{ dir: string; host: string; port: string }> {
    const dir = await this.#mount(processName, SERVICE_ACCOUNT_VOLUME);
    await writeFile(path.join(dir, TOKEN_FILE), token, { mode: 0o600 });
    await writeFile(path.join(dir, 'ca.crt'), this.api.caPem);
    await writeFile(path.join(dir, 'namespace'), namespace);
    const url = new URL(this.api.url);
    return { dir, host: url.hostname, port: url.port };
  }

  async #prepareController(replica = 0): Promise<void> {
    const { namespace, spec } = this.#controllerTemplate;
    this.api.addToken(`${controllerName(replica)}-token`, { username: `system:serviceaccount:${namespace}:${spec.serviceAccountName}` });
    await this.#serviceAccount(controllerName(replica), namespace, `${controllerName(replica)}-token`);
  }

  /**
   * The agent's pod on `node` (the DaemonSet's, hostNetwork) and its volumes as the kubelet makes them: its service
   * account's token for the API server, a token bound to the pod for each projected audience, each ConfigMap mounted
   * as kubelet does, each hostPath a folder of the node's.
   */
  async #prepareAgent(node: TestbedNode): Promise<void> {
    const name = agentName(node);
    const { namespace, labels, spec } = this.#agent;
    const podName = `${AGENT_WORKLOAD.name}-${node.name}`;
    const agentPod = this.api.objects('v1', 'pods').create({
      metadata: { name: podName, namespace, labels },
      spec: { nodeName: node.name, serviceAccountName: spec.serviceAccountName, hostNetwork: true, containers: spec.containers.map((container) => ({ name: container.name })) },
      status: { phase: 'Running', hostIP: node.ip },
    });
    const podUid = String((agentPod.metadata as { uid: string }).uid);
    const user = boundServiceAccountUser({ namespace, serviceAccount: spec.serviceAccountName, podName, podUid, nodeName: node.name });
    this.api.addToken(`${name}-api-token`, user);
    await this.#serviceAccount(name, namespace, `${name}-api-token`);
    const folders = this.#podMounts(node);
    await this.#makeHostPaths(node);
    for (const volume of spec.volumes ?? []) {
      const folder = folders[volume.name]!;
      if (volume.hostPath !== undefined) continue;
      if (volume.configMap !== undefined) {
        await mkdir(folder, { recursive: true });
        this.#volumes.push(await ConfigMapVolume.mount(this.api, { namespace, name: volume.configMap.name, dir: folder, lagMs: this.#options.trustBundleLagMs?.[node.name] ?? 0 }));
      } else if (volume.projected !== undefined) {
        await mkdir(folder, { recursive: true });
        for (const source of volume.projected.sources) {
          if (source.serviceAccountToken === undefined) throw new Error(`${this.#agent.owner} volume ${volume.name}: the testbed projects only service-account tokens`);
          const token = `${name}-${volume.name}-${source.serviceAccountToken.path}`;
          const { audience } = source.serviceAccountToken;
          this.api.addToken(token, audience === undefined ? user : { ...user, audiences: [audience] });
          await writeFile(path.join(folder, source.serviceAccountToken.path), token, { mode: 0o600 });
        }
      } else {
        throw new Error(`${this.#agent.owner} volume ${volume.name}: a kind the testbed does not make`);
      }
    }
  }

  /**
   * The agent pod's hostPath volumes on `node`, as the kubelet makes them each time the pod starts (DirectoryOrCreate,
   * FileOrCreate): after a reboot, /var/run and /run are empty until it does.
   */
  async #makeHostPaths(node: TestbedNode): Promise<void> {
    const folders = this.#podMounts(node);
    for (const volume of this.#agent.spec.volumes ?? []) {
      if (volume.hostPath === undefined) continue;
      const folder = folders[volume.name]!;
      // FileOrCreate (the xtables lock) is a file; the programs take the lock at its real path, which is the node's
      await mkdir(volume.hostPath.type === 'FileOrCreate' ? path.dirname(folder) : folder, { recursive: true });
      if (volume.hostPath.type === 'FileOrCreate') await writeFile(folder, '', { flag: 'a' });
    }
  }

  async #mount(processName: string, mount: string): Promise<string> {
    const dir = this.mountDir(processName, mount);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /**
   * The controller's process as its container says (an overlay's flags after the manifests'), in the host's
   * namespace, whose host-link address is its pod IP.
   */
  controllerProcess(replica = 0): ContainerProcess {
    const { logLevel, certTtlSeconds, caPropagationSeconds } = this.#options;
    const podIp = this.tb.hostIps[replica];
    if (podIp === undefined) throw new Error(`the testbed has ${this.tb.hostIps.length} host addresses: no room for controller replica ${replica}`);
    const container = containerOf(this.#controllerTemplate, CONTROLLER_WORKLOAD.container);
    const overlay = [
      ...(logLevel === undefined ? [] : ['--log-level', logLevel]),
      ...(certTtlSeconds === undefined ? [] : ['--cert-ttl', String(certTtlSeconds)]),
      ...(caPropagationSeconds === undefined ? [] : ['--ca-propagation', String(caPropagationSeconds)]),
    ];
    const url = new URL(this.api.url);
    return containerProcess(
      { ...container, args: [...container.args, ...overlay] },
      {
        fields: { 'status.podIP': podIp, 'metadata.namespace': this.#controllerTemplate.namespace, 'metadata.name': `${CONTROLLER_POD_PREFIX}${replica}` },
        mounts: {},
        serviceAccount: { dir: this.mountDir(controllerName(replica), SERVICE_ACCOUNT_VOLUME), host: url.hostname, port: url.port },
      },
    );
  }

  /** A container of the agent's pod on `node` as the DaemonSet says; hostNetwork: its pod's host IP is the node's. */
  #agentPodProcess(node: TestbedNode, containerName: string, overlay: string[] = []): ContainerProcess {
    const container = containerOf(this.#agent, containerName);
    const url = new URL(this.api.url);
    return containerProcess(
      { ...container, args: [...container.args, ...overlay] },
      {
        fields: { 'spec.nodeName': node.name, 'status.hostIP': node.ip, 'status.podIP': node.ip, 'metadata.namespace': this.#agent.namespace },
        mounts: this.#podMounts(node),
        serviceAccount: { dir: this.mountDir(agentName(node), SERVICE_ACCOUNT_VOLUME), host: url.hostname, port: url.port },
      },
    );
  }

  /** The agent's process on `node` as the DaemonSet's container says (an overlay's `--log-level` after it). */
  agentProcess(node: TestbedNode): ContainerProcess {
    const { logLevel } = this.#options;
    return this.#agentPodProcess(node, AGENT_WORKLOAD.container, logLevel === undefined ? [] : ['--log-level', logLevel]);
  }

  /** The CNI installer's process on `node`, the DaemonSet's native sidecar. */
  cniInstallerProcess(node: TestbedNode): ContainerProcess {
    return this.#agentPodProcess(node, AGENT_WORKLOAD.cniInstaller);
  }

  /** Starts the controller (replica 0, unless given) and resolves once it has listed the cluster. */
  async startController(replica = 0): Promise<void> {
    const spec = this.controllerProcess(replica);
    const child = this.tb.spawnOnHost(spec.file, spec.args, { buffer: false, env: spec.env }) as unknown as ChildProcess;
    const { lines, stderr } = collectLines(child);
    if (replica === 0) this.#controller = { child, lines };
    this.#replicas[replica] = { child, lines };
    await waitForLine(child, lines, (l) => l.includes('"msg":"cluster listed; streaming to agents"'), controllerName(replica), READY_TIMEOUT_MS, stderr);
  }

  /**
   * install 'kubectl': what the cluster's controllers and kubelets do with what `kubectl apply` created, one change at a
   * time. A failure is kept for `installed()` to report.
   */
  #onInstallChange(event: StoreEvent): void {
    const { object, type } = event;
    const metadata = (object['metadata'] ?? {}) as { name?: string; namespace?: string; labels?: Record<string, string> };
    const kind = object['kind'];
    if (metadata.namespace !== this.#controllerTemplate.namespace) return;
    const step = async () => {
      if (type === 'ADDED' && kind === CONTROLLER_WORKLOAD.kind && metadata.name === CONTROLLER_WORKLOAD.name) await this.#runDeployment(object);
      else if (type === 'ADDED' && kind === AGENT_WORKLOAD.kind && metadata.name === AGENT_WORKLOAD.name) await this.#runDaemonSet(object);
      else if (type === 'DELETED' && kind === 'Pod') await this.#podDeleted(metadata.name ?? '');
    };
    this.#installing = this.#installing.then(step).catch((err: unknown) => {
      this.#installFailure ??= err;
    });
  }

  /** install 'kubectl': resolves once what has been applied so far runs (rejects with what failed). */
  async installed(): Promise<void> {
    await this.#installing;
    if (this.#installFailure !== undefined) throw this.#installFailure;
  }

  /** The Deployment's replicas, each a pod on a host-link address; then its status, as its controller writes it. */
  async #runDeployment(deployment: JsonObject): Promise<void> {
    this.#controllerTemplate = podTemplateOf(deployment as unknown as RenderedObject);
    const replicas = Number((deployment['spec'] as { replicas?: number }).replicas ?? 1);
    const { namespace, labels, spec } = this.#controllerTemplate;
    for (let replica = 0; replica < replicas; replica++) {
      const podIp = this.tb.hostIps[replica];
      this.api.objects('v1', 'pods').create({
        metadata: { name: `${CONTROLLER_POD_PREFIX}${replica}`, namespace, labels },
        spec: { serviceAccountName: spec.serviceAccountName, containers: spec.containers.map((container) => ({ name: container.name })) },
        status: { phase: 'Running', podIP: podIp ?? '', conditions: [{ type: 'Ready', status: 'True' }] },
      });
      await this.#prepareController(replica);
      await this.startController(replica);
    }
    const generation = (deployment['metadata'] as { generation?: number }).generation ?? 1;
    this.api.objects('apps/v1', 'deployments').patch(CONTROLLER_WORKLOAD.name, { status: { observedGeneration: generation, replicas, updatedReplicas: replicas, readyReplicas: replicas, availableReplicas: replicas } }, namespace);
    // the DaemonSet's pods mount the bundle the controller publishes: they wait for it, as a kubelet waits for a ConfigMap
    if (this.#daemonSetApplied) await this.#startAgents();
  }

  async #runDaemonSet(daemonSet: JsonObject): Promise<void> {
    this.#agent = podTemplateOf(daemonSet as unknown as RenderedObject);
    this.#daemonSetApplied = true;
    if (this.#controller !== undefined) await this.#startAgents();
  }

  /** The DaemonSet's pod on every node (its installer, then its agent); then its status. */
  async #startAgents(): Promise<void> {
    const { namespace } = this.#agent;
    await Promise.all(this.tb.nodes.map((node) => this.#prepareAgent(node)));
    await Promise.all(this.#volumes.map((volume) => volume.settled()));
    for (const node of this.tb.nodes) await this.startCniInstaller(node);
    await Promise.all(this.tb.nodes.map((node) => this.startAgent(node)));
    const count = this.tb.nodes.length;
    const generation = (this.api.objects('apps/v1', 'daemonsets').get(AGENT_WORKLOAD.name, namespace)?.metadata as { generation?: number } | undefined)?.generation ?? 1;
    const status = { observedGeneration: generation, desiredNumberScheduled: count, currentNumberScheduled: count, updatedNumberScheduled: count, numberReady: count, numberAvailable: count, numberMisscheduled: 0 };
    this.api.objects('apps/v1', 'daemonsets').patch(AGENT_WORKLOAD.name, { status }, namespace);
  }

  /** A deleted pod's processes stop, as its kubelet stops them. */
  async #podDeleted(name: string): Promise<void> {
    const node = this.tb.nodes.find((candidate) => `${AGENT_WORKLOAD.name}-${candidate.name}` === name);
    if (node !== undefined) {
      await this.stopAgentPod(node);
      return;
    }
    const replica = name.startsWith(CONTROLLER_POD_PREFIX) ? Number(name.slice(CONTROLLER_POD_PREFIX.length)) : Number.NaN;
    const running = this.#replicas[replica];
    if (running !== undefined) await stopChild(running.child);
  }

  /** Stops the controller (SIGTERM) and resolves with its exit code once it has exited. */
  stopController(): Promise<number | null> {
    return stopChild(this.#controller?.child);
  }

  /**
   * Starts the CNI installer on `node` as the DaemonSet's sidecar runs (it keeps the plugin chained until stopped);
   * resolves once it watches: the plugin chained, or, while the mesh is being uninstalled, left out.
   */
  async startCniInstaller(node: TestbedNode): Promise<void> {
    await this.#makeHostPaths(node);
    const spec = this.cniInstallerProcess(node);
    const child = this.tb.spawn(node.netns, spec.file, spec.args, { buffer: false, env: spec.env }) as unknown as ChildProcess;
    const { lines, stderr } = collectLines(child);
    this.#installers.set(node.name, child);
    await waitForLine(child, lines, (l) => l.includes(`"msg":${JSON.stringify(CNI_WATCHING_LOG)}`), `CNI installer on ${node.name}`, READY_TIMEOUT_MS, stderr);
  }

  /**
   * What the kubelet does when the DaemonSet's pod on `node` is deleted: SIGTERM to its containers, the agent first
   * (a native sidecar stops after the main containers). Resolves with their exit codes once both have exited.
   */
  async stopAgentPod(node: TestbedNode): Promise<{ agent: number | null; installer: number | null }> {
    const agentCode = await this.stopAgent(node);
    return { agent: agentCode, installer: await this.stopCniInstaller(node) };
  }

  /** Starts the agent on `node`; resolves once it is ready (its first full sync from the controller). */
  async startAgent(node: TestbedNode): Promise<void> {
    await this.#makeHostPaths(node);
    const spec = this.agentProcess(node);
    const child = this.tb.spawn(node.netns, spec.file, spec.args, { buffer: false, env: spec.env }) as unknown as ChildProcess;
    const { lines, stderr } = collectLines(child);
    this.#agents.set(node.name, { child, lines });
    await waitForLine(child, lines, (l) => l.includes(`"msg":${JSON.stringify(AGENT_STARTED_LOG.ready)}`), `agent on ${node.name}`, READY_TIMEOUT_MS, stderr);
  }

  /**
   * Stops the agent on `node` with `signal` (SIGKILL: a crash, a power cut) and resolves once it has exited, with its
   * exit code (null when a signal ended it, or when it was not running).
   */
  stopAgent(node: TestbedNode, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    return stopChild(this.#agents.get(node.name)?.child, signal);
  }

  /** Stops the CNI installer sidecar on `node` with `signal`, as stopAgent does; the plugin stays chained. */
  stopCniInstaller(node: TestbedNode, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    return stopChild(this.#installers.get(node.name), signal);
  }

  /**
   * What a power cut and a reboot do to `node`: the DaemonSet's containers die (SIGKILL), the pods' network namespaces
   * are gone, the run folder (/var/run/ambit, on tmpfs) is emptied, and the kernel has none of Ambit's rules and
   * ipsets (removed with the product's own removeRedirectRules). What is on disk survives: the state folder
   * (/var/lib/ambit, the enrollment file), the CNI configuration with ambit-cni chained, the plugin; and so do the pod
   * objects, whose sandboxes the kubelet creates again (networkPod), before or after the agent is back. Resolves with
   * the pods it removed from the testbed.
   */
  async rebootNode(node: TestbedNode): Promise<TestbedPod[]> {
    await Promise.all([this.stopAgent(node, 'SIGKILL'), this.stopCniInstaller(node, 'SIGKILL')]);
    const pods = this.tb.pods.filter((pod) => pod.node === node);
    for (const pod of pods) await this.tb.removePod(pod);
    await rm(this.runDir(node), { recursive: true, force: true });
    await removeRedirectRules({ netns: node.netns });
    return pods;
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
    const pod = await this.networkPod(name, node, spec);
    this.reportPodIp(pod, spec);
    await startWorkload(this.tb, pod);
    return pod;
  }

  /**
   * The first steps of startPod: the pod object exists (scheduled, Pending; one left by an earlier attempt is kept, as
   * the kubelet retries the same pod), and the runtime networks it through the node's conflist. Rejects as that ADD
   * does (TESTBED_CNI_FAILED with the plugin's `cniError`), after the runtime's DEL; call again to retry.
   */
  async networkPod(name: string, node: TestbedNode, spec: PodSpec): Promise<TestbedPod> {
    const pods = this.api.objects('v1', 'pods');
    if (pods.get(name, spec.namespace) === undefined) pods.create(podObject(name, node, spec));
    return this.tb.addPod(node, name, { k8s: { namespace: spec.namespace } });
  }

  /** The kubelet reports a networked pod's IP in its status (Running). */
  reportPodIp(pod: TestbedPod, spec: PodSpec): void {
    this.api.objects('v1', 'pods').patch(pod.name, { status: podObject(pod.name, pod.node, spec, pod.ip)['status'] ?? {} }, spec.namespace);
  }

  /** Stops the double (the testbed stops the processes when it is destroyed). */
  async close(): Promise<void> {
    for (const volume of this.#volumes) volume.close();
    await this.api.close();
  }
}

function controllerName(replica: number): string {
  return replica === 0 ? 'controller' : `controller-${replica}`;
}

function agentName(node: TestbedNode): string {
  return `agent-${node.name}`;
}

/** Signals a process the testbed started (its group: what it forked goes too) and resolves with its exit code. */
async function stopChild(child: ChildProcess | undefined, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  if (child === undefined || child.pid === undefined) return null;
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const exited = once(child, 'exit') as Promise<[number | null]>;
  signalGroup(child.pid, signal);
  return (await exited)[0];
}
