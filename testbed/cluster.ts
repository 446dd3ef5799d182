/**
 * A meshed cluster on a network-namespace testbed: the Kubernetes objects as YAML in a local-mode folder, a mesh
 * CA, one agent process per node (started in the node's namespace, as a DaemonSet pod with hostNetwork would run),
 * and the test application in every pod. Used by the end-to-end tests, `npm run demo` and `npm run bench`.
 */
import { once } from 'node:events';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { AGENT_ENV, AGENT_NODE_FLAGS, AGENT_STARTED_LOG } from '../agent/index.js';
import { CertificateAuthority } from '../core/identity/index.js';
import type { JsonObject } from './apiserver/index.js';
import type { Testbed, TestbedNode, TestbedPod } from './testbed.js';

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CLI_PATH = path.join(DIST, 'cli', 'main.js');
export const WORKLOAD_SERVER_PATH = path.join(DIST, 'testbed', 'workload-server.js');

export const HTTP_PORT = 8080;
export const ECHO_PORT = 9000;

export interface PodSpec {
  namespace: string;
  serviceAccount?: string;
  app?: string;
  labels?: Record<string, string>;
}

export interface ServiceSpec {
  namespace: string;
  name: string;
  clusterIP: string;
  /** None: a service whose endpoints are its EndpointSlices, or that the mesh knows no endpoints of. */
  selector?: Record<string, string>;
  ports: Array<{ name?: string; port: number; targetPort: number | string }>;
}

export interface MeshClusterOptions {
  /** Testbed pod name → what Kubernetes would know about it. Pods not named here get namespace `plain`. */
  pods: Record<string, PodSpec>;
  /** Namespaces and their labels; `ambit.dev/mode: enabled` enrolls one. */
  namespaces: Record<string, Record<string, string>>;
  services?: ServiceSpec[];
  /** `discovery.k8s.io/v1` EndpointSlice objects, written as given. */
  endpointSlices?: object[];
  trustDomain?: string;
  /** Start the test application in every pod (default true). */
  workloads?: boolean;
  logLevel?: string;
  /** Extra `ambit agent` flags for every agent. */
  agentArgs?: string[];
  /** Extra `node` flags for the agent processes (e.g. `--cpu-prof` when profiling). */
  agentNodeArgs?: string[];
}

interface AgentProcess {
  node: TestbedNode;
  child: ChildProcess;
  lines: string[];
}

const READY_TIMEOUT_MS = 30_000;

/** Waits until `lines` (a process's stdout so far) has a line matching `test`, or the process exits, or time runs out. */
export function waitForLine(child: ChildProcess, lines: string[], test: (line: string) => boolean, what: string, timeoutMs: number, stderr: () => string): Promise<string> {
  return new Promise((resolve, reject) => {
    const found = lines.find(test);
    if (found) return resolve(found);
    const timer = setTimeout(() => finish(new Error(`${what}: not ready after ${timeoutMs} ms; output:\n${lines.slice(-20).join('\n')}\n${stderr()}`)), timeoutMs);
    const onLine = (line: string) => {
      if (test(line)) finish(undefined, line);
    };
    const onExit = (code: number | null) => finish(new Error(`${what} exited (code ${code}) before it was ready; output:\n${lines.slice(-20).join('\n')}\n${stderr()}`));
    const finish = (err?: Error, line?: string) => {
      clearTimeout(timer);
      child.off('line', onLine);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve(line as string);
    };
    child.on('line', onLine);
    child.once('exit', onExit);
  });
}

/** Collects a child's stdout as lines (and re-emits each as a 'line' event on the child). */
export function collectLines(child: ChildProcess): { lines: string[]; stderr: () => string } {
  const lines: string[] = [];
  let partial = '';
  let errText = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    partial += chunk;
    let index: number;
    while ((index = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, index);
      partial = partial.slice(index + 1);
      lines.push(line);
      child.emit('line', line);
    }
  });
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    errText = (errText + chunk).slice(-8000);
  });
  return { lines, stderr: () => errText };
}

/** The Node object of a testbed node, with the addresses the agents and the controller read. */
export function nodeObject(node: TestbedNode): JsonObject {
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name: node.name },
    status: { addresses: [{ type: 'InternalIP', address: node.ip }, { type: 'Hostname', address: node.name }] },
  };
}

/** A pod object scheduled to `node`, running the test application; without `ip`, Pending as before the runtime ran it. */
export function podObject(name: string, node: TestbedNode, spec: PodSpec, ip?: string, ip6?: string): JsonObject {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: spec.namespace, uid: `uid-${name}`, labels: { app: spec.app ?? name, ...spec.labels } },
    spec: {
      nodeName: node.name,
      serviceAccountName: spec.serviceAccount ?? 'default',
      containers: [{ name: 'app', ports: [{ name: 'http', containerPort: HTTP_PORT }, { name: 'echo', containerPort: ECHO_PORT }] }],
    },
    // A pod the runtime has not networked yet is Pending without IPs, as the API shows it.
    status:
      ip === undefined
        ? { phase: 'Pending' }
        : { phase: 'Running', podIP: ip, podIPs: [{ ip }, ...(ip6 === undefined ? [] : [{ ip: ip6 }])], conditions: [{ type: 'Ready', status: 'True' }] },
  };
}

/** A process's JSON log lines (its stdout collected by `collectLines`), parsed; other lines are skipped. */
export function parseLogLines(lines: readonly string[]): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const line of lines) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // A line cut by a crash is not a log record.
    }
  }
  return out;
}

/** Polls `logs()` until a record after the first `after` passes `test`; rejects naming `what` after `timeoutMs`. */
export async function waitForLogRecord(logs: () => Array<Record<string, unknown>>, test: (record: Record<string, unknown>) => boolean, what: string, timeoutMs: number, after = 0): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = logs().slice(after).find(test);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no matching log record on ${what} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts the test application in a pod, or in a node's own namespace (`{ name, netns: node.netns }`: a hostNetwork
 * workload); resolves once it listens, with a function that stops it (else the testbed does, when destroyed).
 */
export async function startWorkload(tb: Testbed, pod: Pick<TestbedPod, 'name' | 'netns'>): Promise<() => Promise<void>> {
  const child = tb.spawn(pod.netns, process.execPath, [WORKLOAD_SERVER_PATH, '--name', pod.name, '--http', String(HTTP_PORT), '--echo', String(ECHO_PORT)], {
    buffer: false,
  }) as unknown as ChildProcess;
  const { lines, stderr } = collectLines(child);
  await waitForLine(child, lines, (l) => l === 'listening', `workload in ${pod.name}`, 10_000, stderr);
  // A function, not the process: execa's process is a promise, which an async function would wait for.
  return async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    await exited;
  };
}

/** Whether `ip` is in `node`'s set of enrolled IPv4 pods (`ambit-pods-v4`): the kernel's word, not the agent's. */
export async function inEnrolledSet(tb: Testbed, node: TestbedNode, ip: string): Promise<boolean> {
  const result = await tb.exec(node.netns, 'ipset', ['test', 'ambit-pods-v4', ip], { reject: false });
  return result.exitCode === 0;
}

/** curl from a pod; resolves with stdout, or rejects with curl's error. */
export async function curlFrom(tb: Testbed, from: TestbedPod, url: string, extra: string[] = []): Promise<string> {
  const result = await tb.exec(from.netns, 'curl', ['-sS', '--max-time', '5', ...extra, url]);
  return String(result.stdout);
}

export class MeshCluster {
  readonly tb: Testbed;
  readonly configDir: string;
  readonly caDir: string;
  readonly options: MeshClusterOptions;
  readonly cliPath = CLI_PATH;
  readonly #agents = new Map<string, AgentProcess>();
  /** Pods the cluster knows before (or without) a testbed pod: a CNI test declares them, then the runtime adds them. */
  readonly #declared = new Map<string, { node: TestbedNode; spec: PodSpec; ip?: string }>();

  private constructor(tb: Testbed, options: MeshClusterOptions) {
    this.tb = tb;
    this.options = options;
    this.configDir = path.join(tb.tmpDir, 'cluster');
    this.caDir = path.join(tb.tmpDir, 'ca');
  }

  /** Writes the cluster's objects and the CA, starts the test application in every pod and an agent on every node. */
  static async start(tb: Testbed, options: MeshClusterOptions): Promise<MeshCluster> {
    const cluster = new MeshCluster(tb, options);
    await mkdir(cluster.configDir, { recursive: true });
    await cluster.writeObjects();
    const ca = await CertificateAuthority.create({ trustDomain: options.trustDomain ?? 'cluster.local' });
    await ca.save(cluster.caDir);
    if (options.workloads ?? true) await Promise.all(tb.pods.map((pod) => cluster.startWorkload(pod)));
    await Promise.all(tb.nodes.map((node) => cluster.startAgent(node)));
    return cluster;
  }

  spec(pod: TestbedPod): PodSpec {
    return this.options.pods[pod.name] ?? { namespace: 'plain' };
  }

  /** The objects a cluster would hold: Namespaces, Nodes (with their addresses), Pods (with IPs), Services. */
  async writeObjects(): Promise<void> {
    const docs: string[] = [];
    for (const [name, labels] of Object.entries(this.options.namespaces)) {
      docs.push(JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } }));
    }
    for (const node of this.tb.nodes) docs.push(JSON.stringify(nodeObject(node)));
    const pods = [
      ...this.tb.pods
        .filter((pod) => !this.#declared.has(pod.name))
        .map((pod) => ({ name: pod.name, node: pod.node, spec: this.spec(pod), ip: pod.ip as string | undefined, ip6: pod.ip6 })),
      ...[...this.#declared].map(([name, declared]) => ({ name, ...declared })),
    ];
    for (const pod of pods) docs.push(JSON.stringify(podObject(pod.name, pod.node, pod.spec, pod.ip, (pod as { ip6?: string }).ip6)));
    for (const svc of this.options.services ?? []) {
      docs.push(
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Service',
          metadata: { name: svc.name, namespace: svc.namespace },
          spec: { clusterIP: svc.clusterIP, selector: svc.selector, ports: svc.ports.map((p) => ({ ...p, protocol: 'TCP' })) },
        }),
      );
    }
    for (const slice of this.options.endpointSlices ?? []) docs.push(JSON.stringify(slice));
    // JSON is YAML: one document per line keeps the file readable and needs no serializer.
    const file = path.join(this.configDir, 'cluster.yaml');
    const tmp = `${file}.tmp`;
    await writeFile(tmp, docs.map((d) => `---\n${d}\n`).join(''));
    await rename(tmp, file);
  }

  /**
   * Adds a pod object the way the API server has it before the kubelet runs it: scheduled to `node`, no IP yet.
   * Its testbed pod, added later under the same name, keeps this spec; `setPodIp` plays the kubelet's status update.
   */
  async declarePod(name: string, node: TestbedNode, spec: PodSpec): Promise<void> {
    this.#declared.set(name, { node, spec });
    this.options.pods[name] = spec;
    await this.writeObjects();
  }

  /** The pod object is deleted from the API (after its testbed pod is gone). */
  async forgetPod(name: string): Promise<void> {
    this.#declared.delete(name);
    delete this.options.pods[name];
    await this.writeObjects();
  }

  async setPodIp(name: string, ip: string | undefined): Promise<void> {
    const declared = this.#declared.get(name);
    if (!declared) throw new Error(`pod ${name} was not declared`);
    if (ip === undefined) delete declared.ip;
    else declared.ip = ip;
    await this.writeObjects();
  }

  /** Changes labels as `kubectl label` would: the pod's (declared pods and testbed pods) or a namespace's. */
  async setPodLabels(name: string, labels: Record<string, string>): Promise<void> {
    const spec = this.options.pods[name] ?? { namespace: 'plain' };
    this.options.pods[name] = { ...spec, labels };
    const declared = this.#declared.get(name);
    if (declared) declared.spec = this.options.pods[name];
    await this.writeObjects();
  }

  async setNamespaceLabels(name: string, labels: Record<string, string>): Promise<void> {
    this.options.namespaces[name] = labels;
    await this.writeObjects();
  }

  /** The agent's CNI socket folder on `node` (its --run-dir). */
  runDir(node: TestbedNode): string {
    return path.join(this.tb.tmpDir, 'run', node.name);
  }

  /** The agent's persistent state folder on `node` (its --state-dir: the enrollment file). */
  stateDir(node: TestbedNode): string {
    return path.join(this.tb.tmpDir, 'state', node.name);
  }

  /** See `startWorkload`. */
  startWorkload(pod: Pick<TestbedPod, 'name' | 'netns'>): Promise<() => Promise<void>> {
    return startWorkload(this.tb, pod);
  }

  async startAgent(node: TestbedNode, extraArgs: string[] = []): Promise<void> {
    const child = this.tb.spawn(node.netns, process.execPath, [
      ...AGENT_NODE_FLAGS,
      ...(this.options.agentNodeArgs ?? []),
      CLI_PATH,
      'agent',
      '--node',
      node.name,
      '--config',
      this.configDir,
      '--ca-dir',
      this.caDir,
      '--log-level',
      this.options.logLevel ?? 'info',
      '--run-dir',
      this.runDir(node),
      '--state-dir',
      this.stateDir(node),
      ...(this.options.agentArgs ?? []),
      ...extraArgs,
    ], { buffer: false, env: { ...AGENT_ENV } }) as unknown as ChildProcess;
    const { lines, stderr } = collectLines(child);
    const agent = { node, child, lines };
    this.#agents.set(node.name, agent);
    // Up is enough: an agent started while the config folder does not fully parse serves, and is ready only later.
    const started = Object.values(AGENT_STARTED_LOG).map((msg) => `"msg":${JSON.stringify(msg)}`);
    await waitForLine(child, lines, (l) => started.some((s) => l.includes(s)), `agent on ${node.name}`, READY_TIMEOUT_MS, stderr);
  }

  agentPid(node: TestbedNode): number {
    const pid = this.#agents.get(node.name)?.child.pid;
    if (pid === undefined) throw new Error(`no agent on ${node.name}`);
    return pid;
  }

  /**
   * Stops a node's agent (SIGTERM: a clean shutdown, which keeps its rules unless --remove-rules-on-exit; SIGKILL:
   * a crash) and waits for it to exit; resolves with its exit code (null when killed by the SIGKILL asked for, and
   * `killed by SIG…` when another signal ended it).
   */
  async stopAgent(node: TestbedNode, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<number | string | null> {
    const agent = this.#agents.get(node.name);
    if (!agent) return null;
    this.#agents.delete(node.name);
    if (agent.child.exitCode !== null) return agent.child.exitCode;
    // the exit code; null for the SIGKILL asked for; otherwise the signal that ended it (a SIGTERM it did not handle,
    // a crash), so that a test's failure says which
    const exited = new Promise<number | string | null>((resolve) =>
      agent.child.once('exit', (code, died) => resolve(code ?? (died === 'SIGKILL' && signal === 'SIGKILL' ? null : `killed by ${died ?? 'nothing'}`))),
    );
    agent.child.kill(signal);
    return exited;
  }

  /** The agent's JSON log lines so far, parsed. */
  logs(node: TestbedNode): Array<Record<string, unknown>> {
    return parseLogLines(this.#agents.get(node.name)?.lines ?? []);
  }

  /** Waits until the agent's log has a record matching `test`. */
  /** The first record of the node's agent that passes `test`, among those after the first `after` (see `logs`). */
  waitForLog(node: TestbedNode, test: (record: Record<string, unknown>) => boolean, timeoutMs = 5000, after = 0): Promise<Record<string, unknown>> {
    return waitForLogRecord(() => this.logs(node), test, node.name, timeoutMs, after);
  }

  /** The agent's Prometheus text, fetched from inside the node's namespace. */
  async metrics(node: TestbedNode): Promise<string> {
    const result = await this.tb.exec(node.netns, 'curl', ['-sS', '--max-time', '5', `http://127.0.0.1:15020/metrics`]);
    return String(result.stdout);
  }

  /** curl from a pod; resolves with stdout, or rejects with curl's error. */
  curl(from: TestbedPod, url: string, extra: string[] = []): Promise<string> {
    return curlFrom(this.tb, from, url, extra);
  }
}

/** Sums the samples of a Prometheus metric whose labels include every given label. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}
