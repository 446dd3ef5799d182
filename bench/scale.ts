/**
 * The scale bench (issue 13 step 6), no root: the API server double holds a cluster of realistic pods (bench/
 * scale-objects.ts) at 1k, 10k and 50k pods with 500 AuthorizationPolicies; the controller (a process) watches it;
 * 200 simulated agents (one process, bench/scale-agents.ts) and one real agent process (AGENT_NODE_FLAGS,
 * AGENT_ENV, --no-rules) stream from it. Once all have synced and 10 s have passed, 100 changes a second for the
 * duration: 80 % status-only (a condition's timestamp or a restart count), 10 % readiness flips, 5 % pod creations
 * and deletions, 5 % label changes. Each size in fresh processes. Writes bench/results/scale.json.
 *   npm run bench:scale [-- --sizes 1000,10000 --duration 60 --simulated-agents 200 --cpu-prof --heap-snapshot]
 * With --cpu-prof the controller and the agent write a CPU profile to bench/results/profiles/ when they stop, and the
 * agent's log and each change's timing go there too; with --heap-snapshot both write a heap snapshot there when their
 * RSS is read (which stalls them for seconds, into the churn).
 * How a change is timed into the real agent's store: the bench notes the time of each write to the double (the
 * watch streams are written within that call), and the agent, at debug level, logs each applied delta with the keys
 * it changed and its time (agent/controller-stream.ts, DELTA_APPLIED_LOG); the first line with the pod's key after
 * the write is its arrival.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { AGENT_ENV, AGENT_NODE_FLAGS, AGENT_STARTED_LOG } from '../agent/index.js';
import { CA_TOKEN_AUDIENCE, CertificateAuthority, TRUST_BUNDLE_KEYS } from '../core/identity/index.js';
import { ApiServer, boundServiceAccountUser, CLI_PATH, MESH_CUSTOM_RESOURCES, meshCaSecret, metricValue, registerForExit, releaseFromExit, stopProcess, type JsonObject } from '../testbed/index.js';
import { policyObjects } from './policy-load.js';
import type { SimulatedAgentsMessage, SimulatedDelta } from './scale-agents.js';
import { clusterShape, namespaceObject, namespaceOfService, nodeObject, podObject, serviceObject, type ClusterShape } from './scale-objects.js';
import { runBench } from './main.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const RESULTS_DIR = path.resolve(HERE, '..', '..', 'bench', 'results');
const AGENTS_PATH = path.join(HERE, 'scale-agents.js');
const DEFAULT_SIZES = [1_000, 10_000, 50_000];
const DEFAULT_SIMULATED_AGENTS = 200;
const POLICIES = 500;
const CHANGES_PER_SECOND = 100;
/** RSS is read this long after the sync, as the issue asks. */
const SETTLE_MS = 10_000;
/** How long after the churn a change may still arrive before it counts as lost. */
const DRAIN_MS = 3_000;
/**
 * How long after a change agents use its delta may come and still be put down to it: longer than the slowest arrival
 * seen (the agent's full collections hold a delta up to about a second at 50k pods), short enough that two changes to
 * the same pod within it are rare at 100 changes a second over the cluster.
 */
const EXPLAIN_WINDOW_MS = 10_000;
/** Longest wait for the controller's list and the agents' snapshots. */
const SYNC_TIMEOUT_MS = 300_000;
const MB = 1048576;
/** With --heap-snapshot, the controller and the agent write a heap snapshot when their RSS is read (Chrome DevTools reads it). */
const HEAP_SNAPSHOT_FLAGS = (dir: string) => ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${dir}`];
const REAL_NODE = 0;
const AGENT_USER = { namespace: 'ambit-system', serviceAccount: 'ambit-agent' } as const;

const say = (text: string) => process.stderr.write(`${text}\n`);

type ChangeClass = 'status' | 'readiness' | 'create' | 'delete' | 'label';

interface Write {
  readonly key: string;
  readonly at: number;
  readonly kind: ChangeClass;
}

export interface ScaleResult {
  readonly pods: number;
  readonly services: number;
  readonly nodes: number;
  readonly pod_json_bytes: number;
  readonly controller_rss_mb: number;
  readonly agent_rss_mb: number;
  /** V8 heap in use at the same moment: what of the RSS is live JavaScript data. */
  readonly controller_heap_used_mb: number;
  readonly agent_heap_used_mb: number;
  /** What one simulated agent was sent before the churn: its snapshot, and pings. */
  readonly stream_bytes_per_agent_before_churn: number;
  readonly sync_s: number;
  /** From the controller's start to its readiness (every kind listed). */
  readonly controller_list_s: number;
  /** From the controller's start to the last simulated agent's snapshot. */
  readonly simulated_sync_s: number;
  readonly event_p50_ms: number;
  readonly event_p99_ms: number;
  readonly event_max_ms: number;
  /** Changes agents use whose arrival in the real agent's store was not seen within DRAIN_MS of the churn's end. */
  readonly events_lost: number;
  readonly events_timed: number;
  readonly cpu_ms_per_event: number;
  readonly bytes_per_event_per_agent: number;
  readonly status_only_bytes_per_agent: number;
  /** API events the controller received during the churn, and the changes the bench made. */
  readonly api_events: number;
  readonly changes_made: Readonly<Record<ChangeClass, number>>;
  readonly churn_s: number;
}

/** A child process that is killed (its group) if the bench exits or is interrupted first. */
class Tracked {
  readonly child: ChildProcess;
  readonly exited: Promise<unknown>;
  readonly #teardown = { teardownSync: () => this.#kill() };

  constructor(child: ChildProcess) {
    this.child = child;
    this.exited = once(child, 'exit');
    registerForExit(this.#teardown);
  }

  async stop(): Promise<void> {
    await stopProcess(this.child);
    releaseFromExit(this.#teardown);
  }

  #kill(): void {
    if (this.child.pid !== undefined && this.child.exitCode === null && this.child.signalCode === null) {
      try {
        process.kill(-this.child.pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
  }
}

/** JSON lines of a child's stdout, handed to `onRecord`; the last ones kept for a failure's message. */
function readLines(child: ChildProcess, onRecord: (record: Record<string, unknown>) => void): { last: string[] } {
  const last: string[] = [];
  let partial = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) {
      if (line === '') continue;
      last.push(line);
      if (last.length > 20) last.shift();
      try {
        onRecord(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not a log line
      }
    }
  });
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    last.push(chunk);
    if (last.length > 20) last.shift();
  });
  return { last };
}

/** Resident set (VmRSS) and CPU time (user + system) of a process, from /proc. */
function rssBytes(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:')) ?? '';
  return Number(/(\d+) kB/.exec(line)?.[1] ?? NaN) * 1024;
}

/** CPU ms from /proc/<pid>/stat (utime + stime, in clock ticks of 10 ms: Linux's USER_HZ). */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function until(what: string, timeoutMs: number, check: () => boolean | Promise<boolean>, everyMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

async function httpOk(url: string): Promise<boolean> {
  const response = await fetch(url).catch(() => undefined);
  return response?.ok === true;
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

const round = (value: number, digits = 2) => Number(value.toFixed(digits));

/** Fills the double directly (no HTTP): namespaces, nodes, pods, then Services (one slice each), then the policies. */
function populate(api: ApiServer, shape: ClusterShape): Map<string, { namespace: string; name: string; index: number }> {
  const namespaces = api.objects('v1', 'namespaces');
  namespaces.create(namespaceObject('ambit-system', false));
  for (let n = 0; n < shape.namespaces; n++) namespaces.create(namespaceObject(`ns-${n}`, true));
  for (let n = 0; n < 50; n++) namespaces.create(namespaceObject(`team-${n}`, true));
  const nodes = api.objects('v1', 'nodes');
  for (let n = 0; n < shape.nodes; n++) nodes.create(nodeObject(n, n === REAL_NODE ? '127.0.0.1' : `192.168.${n >> 8}.${n & 255}`));
  const pods = api.objects('v1', 'pods');
  const live = new Map<string, { namespace: string; name: string; index: number }>();
  for (let i = 0; i < shape.pods; i++) {
    const pod = podObject(i, shape);
    const meta = pod.metadata as { name: string; namespace: string };
    pods.create(pod);
    live.set(`${meta.namespace}/${meta.name}`, { namespace: meta.namespace, name: meta.name, index: i });
  }
  const services = api.objects('v1', 'services');
  for (let s = 0; s < shape.services; s++) services.create(serviceObject(s));
  const policies = api.objects('security.ambit.dev/v1', 'authorizationpolicies');
  for (const policy of policyObjects(POLICIES, { namespace: namespaceOfService(0), app: 'app-0', clientPrincipal: `cluster.local/ns/${namespaceOfService(1)}/sa/app-1`, rootNamespace: 'ambit-system' })) {
    policies.create(policy as JsonObject);
  }
  return live;
}

/** The churn's changes, paced at CHANGES_PER_SECOND: each is applied to the double and noted with its time. */
class Churn {
  readonly writes: Write[] = [];
  readonly made: Record<ChangeClass, number> = { status: 0, readiness: 0, create: 0, delete: 0, label: 0 };
  readonly #api: ApiServer;
  readonly #shape: ClusterShape;
  readonly #live: Map<string, { namespace: string; name: string; index: number }>;
  readonly #keys: string[];
  #created = 0;
  #n = 0;

  constructor(api: ApiServer, shape: ClusterShape, live: Map<string, { namespace: string; name: string; index: number }>) {
    this.#api = api;
    this.#shape = shape;
    this.#live = live;
    this.#keys = [...live.keys()];
  }

  async run(durationMs: number): Promise<number> {
    const start = Date.now();
    const total = Math.round((durationMs / 1000) * CHANGES_PER_SECOND);
    while (this.#n < total) {
      const due = start + (this.#n * 1000) / CHANGES_PER_SECOND;
      const wait = due - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      this.#one(this.#n);
      this.#n += 1;
    }
    return (Date.now() - start) / 1000;
  }

  /** 80 % status-only, 10 % readiness flips, 5 % creations and deletions (alternating), 5 % label changes. */
  #one(n: number): void {
    const slot = n % 20;
    const kind: ChangeClass = slot < 16 ? 'status' : slot < 18 ? 'readiness' : slot === 18 ? (this.#created <= this.made.delete ? 'create' : 'delete') : 'label';
    const pods = this.#api.objects('v1', 'pods');
    if (kind === 'create') {
      this.#created += 1;
      const index = Math.floor(Math.random() * this.#shape.pods);
      const pod = podObject(index, this.#shape, this.#created);
      const meta = pod.metadata as { name: string; namespace: string };
      const key = `${meta.namespace}/${meta.name}`;
      this.#note(key, kind);
      pods.create(pod);
      this.#live.set(key, { namespace: meta.namespace, name: meta.name, index });
      this.#keys.push(key);
      this.made.create += 1;
      return;
    }
    const pick = Math.floor(Math.random() * this.#keys.length);
    const key = this.#keys[pick] ?? '';
    const target = this.#live.get(key);
    if (target === undefined) return;
    const current = pods.get(target.name, target.namespace);
    if (current === undefined) return;
    this.#note(key, kind);
    if (kind === 'delete') {
      pods.delete(target.name, target.namespace);
      this.#live.delete(key);
      this.#keys[pick] = this.#keys[this.#keys.length - 1] ?? '';
      this.#keys.pop();
    } else {
      pods.patch(target.name, patchFor(kind, current, n), target.namespace);
    }
    this.made[kind] += 1;
  }

  #note(key: string, kind: ChangeClass): void {
    this.writes.push({ key: `Pod ${key}`, at: Date.now(), kind });
  }
}

/** The merge patch of one change to `pod` (arrays are replaced whole, as merge patches do). */
function patchFor(kind: Exclude<ChangeClass, 'create' | 'delete'>, pod: JsonObject, n: number): JsonObject {
  const status = pod.status as { conditions: JsonObject[]; containerStatuses: JsonObject[] };
  const now = new Date(Date.parse('2026-12-03T10:00:00Z') + n * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
  if (kind === 'label') {
    const labels = (pod.metadata as { labels: Record<string, string> }).labels;
    return { metadata: { labels: { version: labels.version === 'v1' ? 'v2' : 'v1' } } };
  }
  if (kind === 'status') {
    if (n % 2 === 0) return { status: { conditions: status.conditions.map((c) => (c.type === 'PodScheduled' ? { ...c, lastProbeTime: now } : c)) } };
    return { status: { containerStatuses: status.containerStatuses.map((c) => ({ ...c, restartCount: Number(c.restartCount) + 1, lastState: { terminated: { exitCode: 1, finishedAt: now } } })) } };
  }
  const ready = status.conditions.find((c) => c.type === 'Ready')?.status === 'True';
  const flipped = ready ? 'False' : 'True';
  return {
    status: {
      conditions: status.conditions.map((c) => (c.type === 'Ready' || c.type === 'ContainersReady' ? { ...c, status: flipped, lastTransitionTime: now } : c)),
      containerStatuses: status.containerStatuses.map((c) => ({ ...c, ready: !ready })),
    },
  };
}

/** The simulated agents' process: started, waited on for their snapshots, asked for their counts. */
class SimulatedAgents {
  readonly tracked: Tracked;
  #synced = 0;
  #syncedAt = 0;
  #pending: ((report: Extract<SimulatedAgentsMessage, { t: 'report' }>) => void) | undefined;

  constructor(url: string, tokenFile: string, caFile: string, count: number) {
    const child = fork(AGENTS_PATH, [url, tokenFile, caFile, String(count)], { detached: true, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    this.tracked = new Tracked(child);
    child.on('message', (message: SimulatedAgentsMessage) => {
      if (message.t === 'synced') {
        this.#synced = message.agents;
        this.#syncedAt = Date.now();
      } else {
        this.#pending?.(message);
        this.#pending = undefined;
      }
    });
  }

  get synced(): number {
    return this.#synced;
  }

  get lastSyncedAt(): number {
    return this.#syncedAt;
  }

  report(): Promise<Extract<SimulatedAgentsMessage, { t: 'report' }>> {
    return new Promise((resolve) => {
      this.#pending = resolve;
      this.tracked.child.send({ t: 'report' });
    });
  }
}

/**
 * The bytes the status-only changes cost one agent: the changes of the first simulated agent's deltas that no
 * change agents use explains (no such write to that pod, or to a pod of its Service for a slice, in the
 * EXPLAIN_WINDOW_MS before), while status-only writes were all the churn made besides.
 */
function statusOnlyBytes(deltas: readonly SimulatedDelta[], writes: readonly Write[], from: number, to: number): number {
  const used = writes.filter((w) => w.kind !== 'status');
  const lastUse = new Map<string, number[]>();
  for (const w of used) {
    for (const key of [w.key, sliceKeyOf(w.key)]) {
      const times = lastUse.get(key) ?? [];
      times.push(w.at);
      lastUse.set(key, times);
    }
  }
  let bytes = 0;
  for (const delta of deltas) {
    if (delta.at < from || delta.at > to) continue;
    for (const change of delta.changes) {
      const key = change.key.startsWith('EndpointSlice ') ? sliceKeyOf(change.key) : change.key;
      const explained = (lastUse.get(key) ?? []).some((at) => at <= delta.at && delta.at - at <= EXPLAIN_WINDOW_MS);
      if (!explained) bytes += change.bytes;
    }
  }
  return bytes;
}

/** `Pod ns/app-S-hash-id` and `EndpointSlice ns/app-S-slice` both to `Service ns/app-S`. */
function sliceKeyOf(key: string): string {
  const m = /^(?:Pod|EndpointSlice) ([^/]+)\/(app-\d+)-/.exec(key);
  return m === null ? key : `Service ${m[1] ?? ''}/${m[2] ?? ''}`;
}

interface RunOptions {
  readonly durationMs: number;
  readonly simulatedAgents: number;
  readonly cpuProf: boolean;
  /** The processes write a heap snapshot when their RSS is read; it stalls them for seconds, into the churn. */
  readonly heapSnapshot: boolean;
}

async function runSize(pods: number, options: RunOptions): Promise<ScaleResult> {
  const { durationMs, simulatedAgents, cpuProf, heapSnapshot } = options;
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-bench-scale-'));
  // on Ctrl-C the finally below does not run: the processes (Tracked) and the folder go at exit
  const removeDir = { teardownSync: () => rmSync(dir, { recursive: true, force: true }) };
  registerForExit(removeDir);
  const api = await ApiServer.start();
  const processes: Tracked[] = [];
  try {
    for (const type of MESH_CUSTOM_RESOURCES) api.registerResource(type);
    api.addToken('controller-token', { username: 'system:serviceaccount:ambit-system:ambit-controller' });
    const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
    await writeFile(path.join(dir, 'root.pem'), ca.rootPem);
    // the trust bundle as the agent mounts it, and the CA Secret the controller signs with
    await mkdir(path.join(dir, 'trust-bundle'), { recursive: true });
    await writeFile(path.join(dir, 'trust-bundle', TRUST_BUNDLE_KEYS.roots), ca.rootPem);
    // both run as in a pod (the service account's token and CA mounted, the API server's address in the
    // environment), which is what their memory is measured for: a kubeconfig would load client-node (64 MB)
    const serviceAccount = async (name: string, token: string) => {
      const sa = path.join(dir, name);
      await mkdir(sa, { recursive: true });
      await writeFile(path.join(sa, 'token'), token, { mode: 0o600 });
      await writeFile(path.join(sa, 'ca.crt'), api.caPem);
      const url = new URL(api.url);
      return { AMBIT_SERVICE_ACCOUNT_DIR: sa, KUBERNETES_SERVICE_HOST: url.hostname, KUBERNETES_SERVICE_PORT: url.port };
    };

    const shape = clusterShape(pods, simulatedAgents + 1);
    const filling = Date.now();
    const live = populate(api, shape);
    api.objects('v1', 'secrets').create(meshCaSecret(ca));
    // the agent's own pod, which its bound tokens name: the CA signs its node's identities only for a pod it knows
    const agentPod = api.objects('v1', 'pods').create({
      metadata: { name: 'ambit-agent-0', namespace: 'ambit-system' },
      spec: { nodeName: 'node-0', serviceAccountName: 'ambit-agent', hostNetwork: true, containers: [{ name: 'agent' }] },
      status: { phase: 'Running' },
    });
    const agentUser = boundServiceAccountUser({ ...AGENT_USER, podName: 'ambit-agent-0', podUid: String((agentPod.metadata as { uid: string }).uid), nodeName: 'node-0' });
    api.addToken('agent-api-token', agentUser);
    api.addToken('agent-stream-token', { ...agentUser, audiences: ['ambit-controller'] });
    api.addToken('agent-ca-token', { ...agentUser, audiences: [CA_TOKEN_AUDIENCE] });
    api.addToken('simulated-stream-token', { ...boundServiceAccountUser({ ...AGENT_USER, podName: 'ambit-agent-sim', podUid: 'agent-sim', nodeName: 'node-1' }), audiences: ['ambit-controller'] });
    await writeFile(path.join(dir, 'ca-token'), 'agent-ca-token');
    await writeFile(path.join(dir, 'token'), 'agent-stream-token');
    await writeFile(path.join(dir, 'simulated-token'), 'simulated-stream-token');
    const controllerEnv = await serviceAccount('controller-sa', 'controller-token');
    const agentEnv = await serviceAccount('agent-sa', 'agent-api-token');
    const podBytes = JSON.stringify(api.objects('v1', 'pods').get(live.values().next().value?.name ?? '', namespaceOfService(0)) ?? {}).length;
    say(`  ${pods} pods (${podBytes} bytes of JSON each), ${shape.services} Services, ${shape.nodes} nodes, ${POLICIES} policies in the double (${Date.now() - filling} ms)`);

    const port = 20000 + Math.floor(Math.random() * 20000);
    const ports = { stream: port, metrics: port + 1, readiness: port + 2 };
    const offset = 30000 + Math.floor(Math.random() * 200) * 10;
    const agentPorts = { metrics: 15020 + offset, ready: 15021 + offset };
    const profileDir = path.join(RESULTS_DIR, 'profiles');
    if (cpuProf || heapSnapshot) await mkdir(profileDir, { recursive: true });

    const started = Date.now();
    const controller = new Tracked(
      spawn(
        process.execPath,
        [
          ...(cpuProf ? ['--cpu-prof', '--cpu-prof-dir', profileDir, '--cpu-prof-name', `controller-${pods}.cpuprofile`] : []),
          ...(heapSnapshot ? HEAP_SNAPSHOT_FLAGS(profileDir) : []),
          CLI_PATH, 'controller', '--pod-name', 'controller-0', '--listen-host', '127.0.0.1',
          '--port', String(ports.stream), '--metrics-port', String(ports.metrics), '--readiness-port', String(ports.readiness), '--log-level', 'info',
        ],
        { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...controllerEnv } },
      ),
    );
    processes.push(controller);
    const controllerLog = readLines(controller.child, () => undefined);
    const failed = (what: string, log: { last: string[] }) => new Error(`${what}; its last lines:\n${log.last.join('\n')}`);
    await until('the controller to list the cluster', SYNC_TIMEOUT_MS, async () => {
      if (controller.child.exitCode !== null) throw failed('the controller exited', controllerLog);
      return httpOk(`http://127.0.0.1:${ports.readiness}/healthz/ready`);
    });
    const listedAt = Date.now();

    const sims = new SimulatedAgents(`https://127.0.0.1:${ports.stream}`, path.join(dir, 'simulated-token'), path.join(dir, 'root.pem'), simulatedAgents);
    processes.push(sims.tracked);
    const applied: Array<{ at: number; keys: readonly string[] }> = [];
    let agentReadyAt = 0;
    const agent = new Tracked(
      spawn(
        process.execPath,
        [
          ...AGENT_NODE_FLAGS,
          ...(cpuProf ? ['--cpu-prof', '--cpu-prof-dir', profileDir, '--cpu-prof-name', `agent-${pods}.cpuprofile`] : []),
          ...(heapSnapshot ? HEAP_SNAPSHOT_FLAGS(profileDir) : []),
          CLI_PATH, 'agent', '--node', 'node-0', '--mode', 'kubernetes', '--controller', `https://127.0.0.1:${ports.stream}`,
          '--token-file', path.join(dir, 'token'), '--ca-token-file', path.join(dir, 'ca-token'), '--trust-bundle-dir', path.join(dir, 'trust-bundle'),
          '--node-ip', '127.0.0.1', '--listen-host', '127.0.0.1', '--port-offset', String(offset), '--no-rules', '--upstream-source', 'node',
          '--run-dir', path.join(dir, 'run'), '--state-dir', path.join(dir, 'state'), '--log-level', 'debug',
        ],
        { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...AGENT_ENV, ...agentEnv } },
      ),
    );
    processes.push(agent);
    const kept: string[] = [];
    const agentLog = readLines(agent.child, (record) => {
      if (cpuProf && record.msg !== 'discovery delta applied' && record.msg !== 'discovery store updated') kept.push(JSON.stringify(record));
      if (record.msg === 'discovery delta applied' && Array.isArray(record.keys)) applied.push({ at: Number(record.time), keys: record.keys as string[] });
      else if (record.msg === AGENT_STARTED_LOG.ready && agentReadyAt === 0) agentReadyAt = Number(record.time);
    });
    await until('the real agent to be ready', SYNC_TIMEOUT_MS, async () => {
      if (agent.child.exitCode !== null) throw failed('the agent exited', agentLog);
      return agentReadyAt > 0 && (await httpOk(`http://127.0.0.1:${agentPorts.ready}/healthz/ready`));
    });
    await until(`${simulatedAgents} simulated agents to take their snapshot`, SYNC_TIMEOUT_MS, () => sims.synced === simulatedAgents, 100);
    const syncS = (agentReadyAt - started) / 1000;
    say(`  controller listed in ${((listedAt - started) / 1000).toFixed(1)} s; real agent ready ${syncS.toFixed(1)} s after the controller's start; simulated agents ${((sims.lastSyncedAt - started) / 1000).toFixed(1)} s`);

    await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
    const controllerRss = rssBytes(controller.child.pid!);
    const agentRss = rssBytes(agent.child.pid!);
    if (heapSnapshot) for (const tracked of [controller, agent]) tracked.child.kill('SIGUSR2');
    say(`  RSS ${SETTLE_MS / 1000} s after the sync: controller ${(controllerRss / MB).toFixed(0)} MB, agent ${(agentRss / MB).toFixed(0)} MB; churn for ${durationMs / 1000} s`);

    const metric = async (metricsPort: number, name: string) => metricValue(await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text(), name);
    const heapUsed = { controller: await metric(ports.metrics, 'nodejs_heap_size_used_bytes'), agent: await metric(agentPorts.metrics, 'nodejs_heap_size_used_bytes') };
    const metrics = () => metric(ports.metrics, 'ambit_k8s_watch_events_total');
    const before = { events: await metrics(), cpu: cpuMs(controller.child.pid!), bytes: (await sims.report()).bytes };
    const churnStart = Date.now();
    const churn = new Churn(api, shape, live);
    const churnS = await churn.run(durationMs);
    const churnEnd = Date.now();
    await new Promise((resolve) => setTimeout(resolve, DRAIN_MS));
    const after = { events: await metrics(), cpu: cpuMs(controller.child.pid!), report: await sims.report() };
    const events = after.events - before.events;
    const bytesPerAgent = after.report.bytes.map((b, i) => b - (before.bytes[i] ?? 0));
    const meanBytes = bytesPerAgent.reduce((a, b) => a + b, 0) / bytesPerAgent.length;
    if (after.report.failures.length > 0) say(`  simulated agents: ${after.report.failures.length} failures, first: ${after.report.failures[0] ?? ''}`);

    // Each change agents use, timed to the first applied delta that carries its key after it.
    const arrivals = new Map<string, number[]>();
    for (const delta of applied) {
      for (const key of delta.keys) {
        const list = arrivals.get(key) ?? [];
        list.push(delta.at);
        arrivals.set(key, list);
      }
    }
    const latencies: number[] = [];
    const timed: string[] = [];
    let lost = 0;
    for (const write of churn.writes) {
      if (write.kind === 'status') continue;
      const at = arrivals.get(write.key)?.find((t) => t >= write.at);
      if (at === undefined) lost += 1;
      else latencies.push(at - write.at);
      if (cpuProf) timed.push(JSON.stringify({ ...write, arrived: at }));
    }
    if (cpuProf) await writeFile(path.join(profileDir, `changes-${pods}.jsonl`), `${timed.join('\n')}\n`);
    latencies.sort((a, b) => a - b);
    const result: ScaleResult = {
      pods,
      services: shape.services,
      nodes: shape.nodes,
      pod_json_bytes: podBytes,
      controller_rss_mb: round(controllerRss / MB, 1),
      agent_rss_mb: round(agentRss / MB, 1),
      controller_heap_used_mb: round(heapUsed.controller / MB, 1),
      agent_heap_used_mb: round(heapUsed.agent / MB, 1),
      stream_bytes_per_agent_before_churn: Math.round(before.bytes.reduce((a, b) => a + b, 0) / before.bytes.length),
      sync_s: round(syncS),
      controller_list_s: round((listedAt - started) / 1000),
      simulated_sync_s: round((sims.lastSyncedAt - started) / 1000),
      event_p50_ms: percentile(latencies, 50),
      event_p99_ms: percentile(latencies, 99),
      event_max_ms: latencies.at(-1) ?? NaN,
      events_lost: lost,
      events_timed: latencies.length,
      cpu_ms_per_event: round((after.cpu - before.cpu) / events, 3),
      bytes_per_event_per_agent: round(meanBytes / events, 1),
      status_only_bytes_per_agent: Math.round(statusOnlyBytes(after.report.deltas, churn.writes, churnStart, churnEnd + DRAIN_MS)),
      api_events: events,
      changes_made: churn.made,
      churn_s: round(churnS),
    };
    say(`  ${JSON.stringify(result)}`);
    if (cpuProf) await writeFile(path.join(profileDir, `agent-${pods}.log`), `${kept.join('\n')}\n`);
    return result;
  } finally {
    for (const tracked of processes.reverse()) await tracked.stop();
    await api.close();
    await rm(dir, { recursive: true, force: true });
    releaseFromExit(removeDir);
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { sizes: { type: 'string' }, duration: { type: 'string' }, 'simulated-agents': { type: 'string' }, 'cpu-prof': { type: 'boolean' }, 'heap-snapshot': { type: 'boolean' } } });
  const sizes = values.sizes === undefined ? DEFAULT_SIZES : values.sizes.split(',').map(Number);
  const duration = Number(values.duration ?? 60);
  const simulatedAgents = Number(values['simulated-agents'] ?? DEFAULT_SIMULATED_AGENTS);
  if (sizes.some((s) => !Number.isInteger(s) || s < 10) || !(duration > 0) || !Number.isInteger(simulatedAgents) || simulatedAgents < 1) {
    say('usage: node dist/bench/scale.js [--sizes 1000,10000,50000] [--duration 60] [--simulated-agents 200] [--cpu-prof] [--heap-snapshot]');
    return 2;
  }
  const results: Record<string, ScaleResult> = {};
  const write = async () => {
    await mkdir(RESULTS_DIR, { recursive: true });
    const machine = { cpus: (await import('node:os')).cpus().length, node: process.version };
    const settings = { simulated_agents: simulatedAgents, policies: POLICIES, changes_per_second: CHANGES_PER_SECOND, duration_s: duration };
    await writeFile(path.join(RESULTS_DIR, 'scale.json'), `${JSON.stringify({ date: new Date().toISOString(), machine, settings, sizes: results }, null, 2)}\n`);
  };
  for (const size of sizes) {
    say(`scale: ${size} pods`);
    results[String(size)] = await runSize(size, { durationMs: duration * 1000, simulatedAgents, cpuProf: values['cpu-prof'] === true, heapSnapshot: values['heap-snapshot'] === true });
    await write();
  }
  return 0;
}

runBench(main);
