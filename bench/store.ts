/**
 * Discovery store update cost: µs per single pod change (a readiness flip, a label change, a create and a delete)
 * with 1k, 10k and 50k workloads (~5 pods per Service, 50 per node, 100 Services per namespace), and the ratio 50k
 * to 1k, which is flat when a change costs what it touches. Beside it, as the reference, a full `replaceAll` of the
 * same state changed in one pod (what every change cost when the store rebuilt its indexes). In one process.
 * Standalone: `npm run bench:store` prints the result as JSON (AMBIT_BENCH_STORE_CHANGES sets changes per size).
 */
import { pathToFileURL } from 'node:url';
import { ENROLL_LABEL, WorkloadStore, type DiscoverySnapshot, type PodInfo, type Service } from '../core/discovery/index.js';

const SIZES = [1_000, 10_000, 50_000] as const;
const PODS_PER_SERVICE = 5;
const PODS_PER_NODE = 50;
const SERVICES_PER_NAMESPACE = 100;
const CHANGE_KINDS = ['status flip', 'label change', 'create + delete'] as const;

export interface StoreBenchOptions {
  /** Pod changes measured per size and kind; the median of 5 rounds of them is reported. */
  readonly changes?: number;
}

export interface StoreBenchRow {
  readonly workloads: number;
  /** µs per change, by kind. */
  readonly usPerChange: Readonly<Record<(typeof CHANGE_KINDS)[number], number>>;
  /** µs for one replaceAll of the whole state with one pod changed. */
  readonly usPerReplaceAll: number;
}

export interface StoreBenchResult {
  readonly date: string;
  readonly node: string;
  readonly rows: readonly StoreBenchRow[];
  /** µs per change at 50k / at 1k, by kind: ≤ 2 is flat. */
  readonly ratio50kTo1k: Readonly<Record<(typeof CHANGE_KINDS)[number], number>>;
}

function podOf(i: number, overrides: Partial<PodInfo> = {}): PodInfo {
  const service = Math.floor(i / PODS_PER_SERVICE);
  const namespace = `ns-${Math.floor(service / SERVICES_PER_NAMESPACE)}`;
  const name = `app-${service}-${i}`;
  return {
    uid: `${namespace}/${name}`,
    name,
    namespace,
    workloadName: `app-${service}`,
    serviceAccount: 'default',
    identity: `spiffe://cluster.local/ns/${namespace}/sa/default`,
    node: `node-${Math.floor(i / PODS_PER_NODE)}`,
    ips: [`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`],
    labels: { app: `app-${service}`, 'pod-template-hash': 'abc12' },
    hostNetwork: false,
    ready: true,
    containerPorts: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    terminated: false,
    ...overrides,
  };
}

function serviceOf(s: number): Service {
  const namespace = `ns-${Math.floor(s / SERVICES_PER_NAMESPACE)}`;
  const name = `app-${s}`;
  return {
    namespace,
    name,
    hostname: `${name}.${namespace}.svc.cluster.local`,
    vips: [`10.96.${(s >> 8) & 255}.${s & 255}`],
    ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }],
    selector: { app: name },
    labels: {},
  };
}

function stateOf(workloads: number): DiscoverySnapshot {
  const services = Math.ceil(workloads / PODS_PER_SERVICE);
  return {
    namespaces: Array.from({ length: Math.ceil(services / SERVICES_PER_NAMESPACE) }, (_, n) => ({ name: `ns-${n}`, labels: { [ENROLL_LABEL]: 'enabled' } })),
    nodes: Array.from({ length: Math.ceil(workloads / PODS_PER_NODE) }, (_, n) => ({ name: `node-${n}`, addresses: [`192.168.${n >> 8}.${n & 255}`], labels: { 'topology.kubernetes.io/zone': `z${n % 3}` } })),
    services: Array.from({ length: services }, (_, s) => serviceOf(s)),
    pods: Array.from({ length: workloads }, (_, i) => podOf(i)),
    endpointSlices: [],
  };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

/** µs per call of `change(k)`, k = 0..count-1, median of 5 rounds. */
function timePer(count: number, change: (k: number) => void): number {
  const rounds: number[] = [];
  let k = 0;
  for (let round = 0; round < 5; round++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < count; i++) change(k++);
    rounds.push(Number(process.hrtime.bigint() - start) / 1e3 / count);
  }
  return median(rounds);
}

function benchSize(workloads: number, changes: number): StoreBenchRow {
  const state = stateOf(workloads);
  // A node agent: its node holds 50 of the pods.
  const store = new WorkloadStore({ nodeName: 'node-0' });
  store.replaceAll(state);
  // Pods spread over the cluster, so that no change finds its neighbour's work warm.
  const target = (k: number) => (k * 7919) % workloads;
  const flip = timePer(changes, (k) => store.applyBatch([{ op: 'upsert', kind: 'Pod', object: podOf(target(k), { ready: k % 2 === 1 }) }]));
  for (let i = 0; i < workloads; i++) store.applyBatch([{ op: 'upsert', kind: 'Pod', object: podOf(i) }]);
  const relabel = timePer(changes, (k) => {
    const i = target(k);
    store.applyBatch([{ op: 'upsert', kind: 'Pod', object: podOf(i, { labels: { ...podOf(i).labels, version: `v${k}` } }) }]);
  });
  const createDelete = timePer(changes, (k) => {
    const extra = podOf(target(k), { name: `extra-${k}`, uid: `extra-${k}`, ips: [`10.200.${(k >> 8) & 255}.${k & 255}`] });
    store.applyBatch([{ op: 'upsert', kind: 'Pod', object: extra }]);
    store.applyBatch([{ op: 'delete', kind: 'Pod', namespace: extra.namespace, name: extra.name }]);
  }) / 2;
  // The reference: the whole state again, one pod's readiness flipped, as a snapshot.
  const replaceAll = timePer(Math.max(1, Math.round(changes / 400)), (k) => {
    const pods = state.pods.slice();
    pods[target(k)] = podOf(target(k), { ready: k % 2 === 0 });
    store.replaceAll({ ...state, pods });
  });
  return {
    workloads,
    usPerChange: { 'status flip': round(flip), 'label change': round(relabel), 'create + delete': round(createDelete) },
    usPerReplaceAll: round(replaceAll),
  };
}

function round(us: number): number {
  return Number(us.toFixed(2));
}

export function benchStoreChanges(options: StoreBenchOptions = {}): StoreBenchResult {
  const changes = options.changes ?? Number(process.env.AMBIT_BENCH_STORE_CHANGES ?? 2000);
  // Warm the JIT on a small store first, so the 1k row is not the compiler's.
  benchSize(SIZES[0], changes);
  const rows = SIZES.map((size) => benchSize(size, changes));
  const first = rows[0] as StoreBenchRow;
  const last = rows.at(-1) as StoreBenchRow;
  const ratio = Object.fromEntries(CHANGE_KINDS.map((kind) => [kind, Number((last.usPerChange[kind] / first.usPerChange[kind]).toFixed(2))])) as StoreBenchResult['ratio50kTo1k'];
  return { date: new Date().toISOString(), node: process.version, rows, ratio50kTo1k: ratio };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.stdout.write(`${JSON.stringify(benchStoreChanges(), null, 2)}\n`);
}
