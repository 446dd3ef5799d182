/**
 * `npm run bench` (root): pod A on node1 → pod C on node2, side by side in one run on the same testbed:
 *   direct    plain TCP between two pods outside the mesh;
 *   ambit-l4  two enrolled pods, captured by the agents and carried over HBONE (mTLS HTTP/2 CONNECT);
 *   stunnel4  the reference mTLS tunnel: a client stunnel on node1, a server stunnel on node2, TLS 1.3;
 *   node-h2-relay  the bare Node.js HTTP/2 CONNECT tunnel (bench/h2-relay.ts), none of the agent's work: the floor
 *             of a Node HBONE data path, to tell the agent's own cost from Node's;
 *   node-tcp-relay  plain TCP piped through a Node.js process on each node (bench/tcp-relay.ts), no TLS and no
 *             HTTP/2: what Node's event loop and streams alone cost on the same two hops.
 * Figures: bulk throughput (iperf3), request/response latency at a fixed rate, new connections per second (16 and
 * 64 loops at a time; the higher counts, as a proxy's capacity), the
 * proxies' CPU-seconds per GB and per 1000 requests, and their RSS with 1000 proxied connections open. Writes
 * bench/results/latest.json and latest.md (ratios to direct and to stunnel4).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { MeshCluster, ECHO_PORT, removeStaleTestbeds, Testbed, testbedUnavailableReason, type TestbedPod } from '../testbed/index.js';
import { benchPolicyEvaluation, type PolicyBenchResult } from './policy.js';
import { benchTelemetry, type TelemetryBenchResult } from './telemetry.js';
import { policyManifests } from './policy-load.js';
import { benchStoreChanges, type StoreBenchResult } from './store.js';
import { runBench } from './main.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const LOADGEN = path.join(HERE, 'loadgen.js');
const RESULTS_DIR = path.resolve(HERE, '..', '..', 'bench', 'results');
const IPERF_PORT = 5201;
const STUNNEL_PORTS = { iperfClient: 20000, iperfServer: 20001, echoClient: 20002, echoServer: 20003 };
const H2_RELAY = path.join(HERE, 'h2-relay.js');
const H2_RELAY_PORTS = { server: 21000, iperfClient: 21001, echoClient: 21002 };
const TCP_RELAY = path.join(HERE, 'tcp-relay.js');
const TCP_RELAY_PORTS = { iperfClient: 22001, echoClient: 22002, iperfServer: 22011, echoServer: 22012 };

const SECONDS = Number(process.env.AMBIT_BENCH_SECONDS ?? 5);
/** How many AuthorizationPolicies the policy part of the bench puts in the store. */
const POLICY_COUNT = 1000;
const REPEATS = Number(process.env.AMBIT_BENCH_REPEATS ?? 3);
const HOLD_CONNECTIONS = 1000;
const LATENCY = { connections: 16, rate: 1000, size: 1024 };
/**
 * The connection rate is a capacity: what a proxy sustains when clients keep it busy. At 16 connections at a time
 * a proxy whose per-connection work is cheap but takes a few hops is still waiting on round trips, so the rate is
 * also taken at 64, and the higher of the two medians counts. Every scenario is measured the same way.
 */
const CONNECT_CONCURRENCY = [16, 64] as const;
/** Before the measured runs of each kind: one unmeasured run, so every proxy is measured warm (JIT, pools, caches). */
const WARMUP_SECONDS = 2;
/**
 * Connection churn takes longer to warm: an agent's rate rose over its first ~6 s of it (runs of 3 s back to back,
 * 64 at a time: 820, 1146, 1207, then 1200-1290/s), as V8 compiles the many functions on a connection's path. The
 * first concurrency's warm-up covers that; the second finds the path warm. No effect on a proxy without a JIT.
 */
const CONNECT_WARMUP_SECONDS = [6, WARMUP_SECONDS] as const;

interface Scenario {
  throughput_gbps: number | null;
  latency_p50_us: number | null;
  latency_p99_us: number | null;
  conn_per_s: number | null;
  /** The median rate at each number of connections at a time; `conn_per_s` is the highest. */
  conn_per_s_by_concurrency: Record<string, number> | null;
  cpu_s_per_gb: number | null;
  cpu_s_per_1000_req: number | null;
  rss_mb: number | null;
  /** Every measured run, in the order of the rounds: a round's runs were made side by side. */
  runs: { throughput_gbps: number[]; latency_p50_us: number[]; conn_per_s_by_concurrency: Record<string, number[]> };
}

const say = (text: string) => process.stderr.write(`${text}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const CLOCK_TICKS = 100;

/** User+system CPU seconds of a set of processes (all threads), from /proc. */
async function cpuSeconds(pids: number[]): Promise<number> {
  let ticks = 0;
  for (const pid of pids) {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return ticks / CLOCK_TICKS;
}

async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  return kb / 1024;
}

interface Target {
  name: string;
  client: TestbedPod;
  iperf: { host: string; port: number };
  echo: { host: string; port: number };
  /** The processes whose CPU and memory are the proxy's cost (none for direct). */
  pids: number[];
}

/** What one scenario's measured runs gave, run by run, in the order of the rounds. */
interface Runs {
  gbps: number[];
  bytes: number;
  cpuBulk: number;
  latency: Array<{ p50: number; p99: number }>;
  requests: number;
  cpuLatency: number;
  conn: Record<string, number[]>;
}

/**
 * Every kind of run goes round the scenarios: one unmeasured warm-up each, then REPEATS rounds in which every
 * scenario runs once in turn. A slow spell of the machine (this VM has them, ±30%) then falls on all scenarios alike,
 * and a round's figures compare runs made side by side; measuring one scenario after another would put a spell on
 * whichever ran during it, and the ratios would carry it.
 */
async function inRounds(targets: Target[], warmUp: (target: Target) => Promise<unknown>, once: (target: Target) => Promise<void>): Promise<void> {
  for (const target of targets) await warmUp(target);
  for (let i = 0; i < REPEATS; i++) for (const target of targets) await once(target);
}

async function measureAll(tb: Testbed, targets: Target[]): Promise<Record<string, Scenario>> {
  const runs = new Map<Target, Runs>(targets.map((t) => [t, { gbps: [], bytes: 0, cpuBulk: 0, latency: [], requests: 0, cpuLatency: 0, conn: {} }]));
  const of = (target: Target) => runs.get(target) as Runs;
  /** The proxy CPU-seconds `run` costs; 0 for direct. */
  const cpuOf = async (target: Target, run: () => Promise<void>) => {
    const before = await cpuSeconds(target.pids);
    await run();
    return (await cpuSeconds(target.pids)) - before;
  };

  // Bulk throughput: iperf3 for SECONDS; CPU per GB over all the measured runs.
  const iperf = (target: Target, seconds: number, json: boolean) =>
    tb.exec(target.client.netns, 'iperf3', ['-c', target.iperf.host, '-p', String(target.iperf.port), '-t', String(seconds), ...(json ? ['-J'] : [])]);
  await inRounds(targets, (t) => iperf(t, WARMUP_SECONDS, false), async (t) => {
    of(t).cpuBulk += await cpuOf(t, async () => {
      const { stdout } = await iperf(t, SECONDS, true);
      const result = JSON.parse(String(stdout)) as { end: { sum_received: { bits_per_second: number; bytes: number } } };
      of(t).gbps.push(result.end.sum_received.bits_per_second / 1e9);
      of(t).bytes += result.end.sum_received.bytes;
    });
  });
  for (const t of targets) say(`  ${t.name}: throughput ${of(t).gbps.map((g) => g.toFixed(2)).join(', ')} Gbit/s`);

  // Latency at a fixed rate, 1 KiB request and response on persistent connections; the median run's percentiles.
  const latencyArgs = (t: Target, seconds: number) => ['--mode', 'latency', '--host', t.echo.host, '--port', String(t.echo.port), '--connections', String(LATENCY.connections), '--rate', String(LATENCY.rate), '--size', String(LATENCY.size), '--seconds', String(seconds)];
  await inRounds(targets, (t) => loadgen(tb, t.client, latencyArgs(t, WARMUP_SECONDS)), async (t) => {
    of(t).cpuLatency += await cpuOf(t, async () => {
      const run = await loadgen(tb, t.client, latencyArgs(t, SECONDS));
      if (Number(run.errors) > 0) throw new Error(`${t.name}: ${String(run.errors)} request errors in the latency run`);
      of(t).requests += Number(run.requests);
      of(t).latency.push({ p50: Number(run.p50_us), p99: Number(run.p99_us) });
    });
  });
  for (const t of targets) say(`  ${t.name}: latency p50 ${of(t).latency.map((r) => r.p50.toFixed(0)).join(', ')} µs, p99 ${of(t).latency.map((r) => r.p99.toFixed(0)).join(', ')} µs`);

  // New connections per second: loops that open, exchange one byte, close; 16 and then 64 loops at a time.
  const connectArgs = (t: Target, concurrency: number, seconds: number) => ['--mode', 'connect', '--host', t.echo.host, '--port', String(t.echo.port), '--connections', String(concurrency), '--seconds', String(seconds)];
  // Closed connections linger in TIME_WAIT; every run gets the same start.
  const settle = () => new Promise((r) => setTimeout(r, 500));
  for (const [i, concurrency] of CONNECT_CONCURRENCY.entries()) {
    await inRounds(targets, (t) => loadgen(tb, t.client, connectArgs(t, concurrency, CONNECT_WARMUP_SECONDS[i] ?? WARMUP_SECONDS)).then(settle), async (t) => {
      const run = await loadgen(tb, t.client, connectArgs(t, concurrency, Math.min(SECONDS, 3)));
      if (Number(run.errors) > 0) throw new Error(`${t.name}: ${String(run.errors)} connection errors at ${concurrency} at a time`);
      (of(t).conn[String(concurrency)] ??= []).push(Number(run.conn_per_s));
      await settle();
    });
    for (const t of targets) say(`  ${t.name}: new connections, ${concurrency} at a time: ${(of(t).conn[String(concurrency)] ?? []).map((r) => r.toFixed(0)).join(', ')} /s`);
  }

  const scenarios: Record<string, Scenario> = {};
  for (const t of targets) {
    const r = of(t);
    const connPerS = Object.fromEntries(Object.entries(r.conn).map(([c, rates]) => [c, median(rates)]));
    scenarios[t.name] = {
      throughput_gbps: median(r.gbps),
      latency_p50_us: median(r.latency.map((x) => x.p50)),
      latency_p99_us: median(r.latency.map((x) => x.p99)),
      conn_per_s: Math.max(...Object.values(connPerS)),
      conn_per_s_by_concurrency: connPerS,
      cpu_s_per_gb: t.pids.length ? r.cpuBulk / (r.bytes / 1e9) : null,
      cpu_s_per_1000_req: t.pids.length ? (r.cpuLatency / r.requests) * 1000 : null,
      rss_mb: t.pids.length ? await rssWithConnections(tb, t) : null,
      runs: { throughput_gbps: r.gbps, latency_p50_us: r.latency.map((x) => x.p50), conn_per_s_by_concurrency: r.conn },
    };
  }
  return scenarios;
}

/** The largest proxy process's RSS with HOLD_CONNECTIONS proxied connections open, in steady state. */
async function rssWithConnections(tb: Testbed, target: Target): Promise<number> {
  const holder = tb.spawn(target.client.netns, process.execPath, [LOADGEN, '--mode', 'hold', '--host', target.echo.host, '--port', String(target.echo.port), '--connections', String(HOLD_CONNECTIONS)], { buffer: false, stdin: 'pipe' }) as unknown as ChildProcess;
  await new Promise<void>((resolve, reject) => {
    holder.stdout?.once('data', () => resolve());
    holder.once('exit', (code) => reject(new Error(`hold exited ${code}`)));
  });
  // Steady state: opening the connections is a busy spell, after which the agent releases memory in the first quiet
  // second, trims again a second later and follows up MEMORY_RELEASE_INTERVAL_MS (5 s) after. Read at 6 s, one run
  // of the same code gave 86 MB where three gave 76; 10 s is past the whole sequence.
  await new Promise((r) => setTimeout(r, 10_000));
  const rss = Math.max(...(await Promise.all(target.pids.map(rssMb))));
  holder.stdin?.end();
  await new Promise((r) => holder.once('exit', r));
  say(`  ${target.name}: RSS with ${HOLD_CONNECTIONS} connections open: ${rss.toFixed(1)} MB (largest proxy process)`);
  return rss;
}

async function loadgen(tb: Testbed, pod: TestbedPod, args: string[]): Promise<Record<string, unknown>> {
  const { stdout } = await tb.exec(pod.netns, process.execPath, [LOADGEN, ...args]);
  return JSON.parse(String(stdout).trim().split('\n').pop() as string) as Record<string, unknown>;
}

function stunnelConfig(role: 'client' | 'server', dir: string, routes: Array<{ name: string; accept: string; connect: string }>): string {
  const lines = [
    'foreground = yes',
    'pid =',
    // Warnings only: stunnel logs every connection at notice level, which would be measured as its cost.
    'debug = 4',
    `cert = ${dir}/${role}.crt`,
    `key = ${dir}/${role}.key`,
    `CAfile = ${dir}/ca.crt`,
    'verifyChain = yes',
    'sslVersionMin = TLSv1.3',
    'ciphersuites = TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256',
    'socket = l:TCP_NODELAY=1',
    'socket = r:TCP_NODELAY=1',
  ];
  for (const route of routes) lines.push(`[${route.name}]`, `client = ${role === 'client' ? 'yes' : 'no'}`, `accept = ${route.accept}`, `connect = ${route.connect}`);
  return `${lines.join('\n')}\n`;
}

/**
 * Starts a tracked process and waits for its ready line. Resolves with its PID: the spawned object is also a
 * promise of the process's end (execa), so an async function must not return it or the caller waits for the exit.
 */
async function startProcess(tb: Testbed, netns: string, file: string, args: string[], readyText: RegExp | undefined, what: string): Promise<number> {
  const child = tb.spawn(netns, file, args, { buffer: false, all: true }) as unknown as ChildProcess & { all?: NodeJS.ReadableStream };
  if (readyText) {
    await new Promise<void>((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => reject(new Error(`${what} did not start: ${text}`)), 10_000);
      child.all?.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (readyText.test(text)) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code) => reject(new Error(`${what} exited ${code}: ${text}`)));
    });
  } else {
    child.all?.resume();
    await new Promise((r) => setTimeout(r, 300));
  }
  return child.pid as number;
}

async function waitForListener(tb: Testbed, netns: string, port: number): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const { stdout } = await tb.exec(netns, 'ss', ['-Htln', `sport = :${port}`]);
    if (String(stdout).trim()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listens on port ${port} in ${netns}`);
}

function telemetryLine(telemetry: TelemetryBenchResult): string {
  const { agent, promClientChildren } = telemetry.nsPerConnection;
  return (
    `TCP metrics per connection (in process): the agent's telemetry ${(agent / 1000).toFixed(2)} µs, prom-client's label ` +
    `children updated per connection ${(promClientChildren / 1000).toFixed(2)} µs (${telemetry.ratio.toFixed(2)}×).`
  );
}

function policyTable(policy: { policies: number; connect_p50_us: { none: number; with_policies: number }; connect_p50_ratio: number; evaluation: PolicyBenchResult }): string {
  const lines = [
    `Policy evaluation (issue #4), ${policy.policies} AuthorizationPolicies in the store:`,
    '',
    '| metric | no policy | with policies | ratio |',
    '|---|---|---|---|',
    `| new connection, connect + first byte p50 (µs) | ${policy.connect_p50_us.none.toFixed(0)} | ${policy.connect_p50_us.with_policies.toFixed(0)} | ${policy.connect_p50_ratio.toFixed(2)}× |`,
  ];
  lines.push('', 'Evaluation alone (in process, realistic mix of policies):', '', '| policies | decisions/s | ratio to no policy |', '|---|---|---|');
  for (const row of policy.evaluation.rows) lines.push(`| ${row.policies} | ${Math.round(row.decisionsPerSecond).toLocaleString('en')} | ${row.ratioToNoPolicy.toFixed(2)}× |`);
  return lines.join('\n');
}

function storeTable(store: StoreBenchResult): string {
  const lines = ['Discovery store, µs per single pod change (issue 13), in process:', '', '| workloads | status flip | label change | create + delete | full replaceAll |', '|---|---|---|---|---|'];
  for (const row of store.rows) {
    const us = row.usPerChange;
    lines.push(`| ${row.workloads.toLocaleString('en')} | ${us['status flip']} | ${us['label change']} | ${us['create + delete']} | ${Math.round(row.usPerReplaceAll).toLocaleString('en')} |`);
  }
  const r = store.ratio50kTo1k;
  lines.push(`| ratio 50k / 1k | ${r['status flip']}× | ${r['label change']}× | ${r['create + delete']}× | |`);
  return lines.join('\n');
}

function ratio(a: number | null, b: number | null): string {
  if (a === null || b === null || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return '—';
  return `${(a / b).toFixed(2)}×`;
}

function table(s: Record<string, Scenario>): string {
  const field = (key: 'throughput_gbps' | 'latency_p50_us' | 'latency_p99_us' | 'conn_per_s' | 'cpu_s_per_gb' | 'cpu_s_per_1000_req' | 'rss_mb') => (x: Scenario) => x[key];
  const rows: Array<[string, (x: Scenario) => number | null, number]> = [
    ['throughput (Gbit/s)', field('throughput_gbps'), 2],
    ['latency p50 (µs)', field('latency_p50_us'), 0],
    ['latency p99 (µs)', field('latency_p99_us'), 0],
    ...CONNECT_CONCURRENCY.map((c): [string, (x: Scenario) => number | null, number] => [`new connections/s, ${c} at a time`, (x) => x.conn_per_s_by_concurrency?.[String(c)] ?? null, 0]),
    ['new connections/s (the higher)', field('conn_per_s'), 0],
    ['proxy CPU-s per GB', field('cpu_s_per_gb'), 2],
    ['proxy CPU-s per 1000 req', field('cpu_s_per_1000_req'), 3],
    ['proxy RSS, 1000 conns (MB)', field('rss_mb'), 1],
  ];
  const fmt = (v: number | null, digits: number) => (v === null ? '—' : v.toFixed(digits));
  const out = ['| metric | direct | ambit-l4 | stunnel4 | node-h2-relay | node-tcp-relay | ambit / direct | ambit / stunnel4 | ambit / node-h2-relay |', '|---|---|---|---|---|---|---|---|---|'];
  for (const [label, get, digits] of rows) {
    const value = (x: Scenario | undefined) => (x === undefined ? null : get(x));
    const d = value(s.direct);
    const a = value(s['ambit-l4']);
    const st = value(s.stunnel4);
    const relay = value(s['node-h2-relay']);
    const tcpRelay = value(s['node-tcp-relay']);
    out.push(`| ${label} | ${fmt(d, digits)} | ${fmt(a, digits)} | ${fmt(st, digits)} | ${fmt(relay, digits)} | ${fmt(tcpRelay, digits)} | ${ratio(a, d)} | ${ratio(a, st)} | ${ratio(a, relay)} |`);
  }
  const p50 = (x?: Scenario) => x?.latency_p50_us ?? NaN;
  const added = { ambit: p50(s['ambit-l4']) - p50(s.direct), stunnel: p50(s.stunnel4) - p50(s.direct) };
  const addedRelay = p50(s['node-h2-relay']) - p50(s.direct);
  const addedTcpRelay = p50(s['node-tcp-relay']) - p50(s.direct);
  out.push(
    '',
    `Added p50 latency over direct: ambit-l4 ${added.ambit.toFixed(0)} µs, stunnel4 ${added.stunnel.toFixed(0)} µs, node-h2-relay ${addedRelay.toFixed(0)} µs, node-tcp-relay ${addedTcpRelay.toFixed(0)} µs.`,
    `node-tcp-relay carries plain TCP through Node.js on both nodes (no TLS, no HTTP/2): any data path in Node adds at least that much; stunnel4 adds ${ratio(added.stunnel, addedTcpRelay)} of it with mutual TLS.`,
    '',
    'Targets (issue #2):',
  );
  const a = s['ambit-l4'];
  const st = s.stunnel4;
  const check = (ok: boolean, text: string) => out.push(`- ${ok ? 'met' : 'MISSED'}: ${text}`);
  /** The ratio of ambit to stunnel4 in each round, and in how many rounds it met the target. */
  const byRound = (get: (x: Scenario) => number[] | undefined, meets: (r: number) => boolean) => {
    const [ours, theirs] = [a && get(a), st && get(st)];
    if (!ours || !theirs) return '';
    const ratios = ours.map((v, i) => v / (theirs[i] as number));
    return `; by round ${ratios.map((r) => `${r.toFixed(2)}×`).join(', ')}, met in ${ratios.filter(meets).length} of ${ratios.length}`;
  };
  const bestRate = (x: Scenario) => {
    const rates = Object.values(x.runs.conn_per_s_by_concurrency);
    return rates[0]?.map((_, i) => Math.max(...rates.map((r) => r[i] as number)));
  };
  check((a?.throughput_gbps ?? 0) >= 0.8 * (st?.throughput_gbps ?? Infinity), `throughput ≥ 0.8 × stunnel4 (${ratio(a?.throughput_gbps ?? null, st?.throughput_gbps ?? null)}${byRound((x) => x.runs.throughput_gbps, (r) => r >= 0.8)})`);
  // A round's added latency is its p50 minus direct's p50 in the same round.
  const addedByRound = () => {
    const [d, ours, theirs] = [s.direct?.runs.latency_p50_us, a?.runs.latency_p50_us, st?.runs.latency_p50_us];
    if (!d || !ours || !theirs) return '';
    const pairs = ours.map((v, i) => [v - (d[i] as number), (theirs[i] as number) - (d[i] as number)] as const);
    return `; by round ${pairs.map(([x, y]) => `${x.toFixed(0)}/${y.toFixed(0)}`).join(', ')} µs, met in ${pairs.filter(([x, y]) => x <= y).length} of ${pairs.length}`;
  };
  check(added.ambit <= added.stunnel, `added p50 latency ≤ stunnel4's (${added.ambit.toFixed(0)} vs ${added.stunnel.toFixed(0)} µs${addedByRound()})`);
  check((a?.conn_per_s ?? 0) >= 2 * (st?.conn_per_s ?? Infinity), `new connections/s ≥ 2 × stunnel4, each at its higher rate of ${CONNECT_CONCURRENCY.join(' and ')} at a time (${ratio(a?.conn_per_s ?? null, st?.conn_per_s ?? null)}${byRound(bestRate, (r) => r >= 2)})`);
  check((a?.rss_mb ?? Infinity) <= 80, `agent RSS ≤ 80 MB with 1000 connections (${(a?.rss_mb ?? NaN).toFixed(1)} MB)`);
  return out.join('\n');
}

async function main(): Promise<number> {
  const unavailable = testbedUnavailableReason();
  if (unavailable) {
    say(`npm run bench cannot run: ${unavailable}`);
    return 1;
  }
  // A demo or bench killed with SIGKILL cannot clean up; its namespaces are removed by the next run.
  await removeStaleTestbeds();
  say(`Building the testbed (2 nodes; ${SECONDS} s per run, ${REPEATS} rounds of each kind of run)`);
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0 });
  try {
    const a = await tb.addPod('node1', 'a');
    const c = await tb.addPod('node2', 'c');
    const p1 = await tb.addPod('node1', 'p1');
    const p2 = await tb.addPod('node2', 'p2');
    const [node1, node2] = [tb.node('node1'), tb.node('node2')];
    // The connection-rate runs open tens of thousands of connections: let closed ones in TIME_WAIT be reused, so a
    // later round is not limited by free ports (the same for every scenario).
    for (const netns of [...tb.pods, ...tb.nodes].map((x) => x.netns)) {
      await tb.exec(netns, 'sysctl', ['-q', '-w', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=1024 65000']);
    }
    const cluster = await MeshCluster.start(tb, {
      namespaces: { bench: { 'ambit.dev/mode': 'enabled' }, plain: {} },
      pods: { a: { namespace: 'bench', serviceAccount: 'client' }, c: { namespace: 'bench', serviceAccount: 'server' }, p1: { namespace: 'plain' }, p2: { namespace: 'plain' } },
      // Access logs per connection are part of the product's cost, so they stay on at the default level.
      logLevel: 'info',
    });
    say('Agents ready; starting iperf3 servers and stunnel4');
    for (const pod of [c, p2]) await startProcess(tb, pod.netns, 'iperf3', ['-s', '-p', String(IPERF_PORT), '--forceflush'], /Server listening/, `iperf3 in ${pod.name}`);

    // stunnel4 between the nodes, with certificates from the same CA.
    const { CertificateAuthority, spiffeId } = await import('../core/identity/index.js');
    const ca = await CertificateAuthority.load(cluster.caDir);
    const dir = path.join(tb.tmpDir, 'stunnel');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'ca.crt'), ca.rootPem);
    for (const role of ['client', 'server'] as const) {
      const creds = await ca.issueKeyAndCert(spiffeId(ca.trustDomain, 'bench', `stunnel-${role}`));
      await writeFile(path.join(dir, `${role}.crt`), creds.certPem);
      await writeFile(path.join(dir, `${role}.key`), creds.keyPem, { mode: 0o600 });
    }
    await writeFile(path.join(dir, 'client.conf'), stunnelConfig('client', dir, [
      { name: 'iperf', accept: `${node1.ip}:${STUNNEL_PORTS.iperfClient}`, connect: `${node2.ip}:${STUNNEL_PORTS.iperfServer}` },
      { name: 'echo', accept: `${node1.ip}:${STUNNEL_PORTS.echoClient}`, connect: `${node2.ip}:${STUNNEL_PORTS.echoServer}` },
    ]));
    await writeFile(path.join(dir, 'server.conf'), stunnelConfig('server', dir, [
      { name: 'iperf', accept: `${node2.ip}:${STUNNEL_PORTS.iperfServer}`, connect: `${p2.ip}:${IPERF_PORT}` },
      { name: 'echo', accept: `${node2.ip}:${STUNNEL_PORTS.echoServer}`, connect: `${p2.ip}:${ECHO_PORT}` },
    ]));
    const stunnelClient = await startProcess(tb, node1.netns, 'stunnel4', [path.join(dir, 'client.conf')], undefined, 'stunnel client');
    const stunnelServer = await startProcess(tb, node2.netns, 'stunnel4', [path.join(dir, 'server.conf')], undefined, 'stunnel server');
    await waitForListener(tb, node1.netns, STUNNEL_PORTS.echoClient);
    await waitForListener(tb, node2.netns, STUNNEL_PORTS.echoServer);
    // The bare Node.js HTTP/2 CONNECT tunnel, with the same certificates: the floor of a Node data path.
    const relayServer = await startProcess(tb, node2.netns, process.execPath, [H2_RELAY, 'server', '--listen', `${node2.ip}:${H2_RELAY_PORTS.server}`, '--dir', dir], /ready/, 'h2-relay server');
    const relayClient = await startProcess(tb, node1.netns, process.execPath, [
      H2_RELAY, 'client', '--connect', `${node2.ip}:${H2_RELAY_PORTS.server}`, '--dir', dir,
      '--listen', `${node1.ip}:${H2_RELAY_PORTS.iperfClient}=${p2.ip}:${IPERF_PORT}`,
      '--listen', `${node1.ip}:${H2_RELAY_PORTS.echoClient}=${p2.ip}:${ECHO_PORT}`,
    ], /ready/, 'h2-relay client');
    const route = (from: string, fromPort: number, to: string, toPort: number) => ['--route', `${from}:${fromPort}=${to}:${toPort}`];
    const tcpRelayServer = await startProcess(tb, node2.netns, process.execPath, [
      TCP_RELAY, ...route(node2.ip, TCP_RELAY_PORTS.iperfServer, p2.ip, IPERF_PORT), ...route(node2.ip, TCP_RELAY_PORTS.echoServer, p2.ip, ECHO_PORT),
    ], /ready/, 'tcp-relay on node2');
    const tcpRelayClient = await startProcess(tb, node1.netns, process.execPath, [
      TCP_RELAY, ...route(node1.ip, TCP_RELAY_PORTS.iperfClient, node2.ip, TCP_RELAY_PORTS.iperfServer), ...route(node1.ip, TCP_RELAY_PORTS.echoClient, node2.ip, TCP_RELAY_PORTS.echoServer),
    ], /ready/, 'tcp-relay on node1');

    const targets: Target[] = [
      { name: 'direct', client: p1, iperf: { host: p2.ip, port: IPERF_PORT }, echo: { host: p2.ip, port: ECHO_PORT }, pids: [] },
      { name: 'ambit-l4', client: a, iperf: { host: c.ip, port: IPERF_PORT }, echo: { host: c.ip, port: ECHO_PORT }, pids: [cluster.agentPid(node1), cluster.agentPid(node2)] },
      { name: 'stunnel4', client: p1, iperf: { host: node1.ip, port: STUNNEL_PORTS.iperfClient }, echo: { host: node1.ip, port: STUNNEL_PORTS.echoClient }, pids: [stunnelClient, stunnelServer] },
      { name: 'node-h2-relay', client: p1, iperf: { host: node1.ip, port: H2_RELAY_PORTS.iperfClient }, echo: { host: node1.ip, port: H2_RELAY_PORTS.echoClient }, pids: [relayClient, relayServer] },
      { name: 'node-tcp-relay', client: p1, iperf: { host: node1.ip, port: TCP_RELAY_PORTS.iperfClient }, echo: { host: node1.ip, port: TCP_RELAY_PORTS.echoClient }, pids: [tcpRelayClient, tcpRelayServer] },
    ];
    say('Scenarios, each kind of run going round them in turn:');
    say('  direct (no mesh): p1 (node1) -> p2 (node2)');
    say('  ambit-l4: a (node1) -> c (node2) through both agents');
    say('  stunnel4: p1 (node1) -> stunnel (node1) -> stunnel (node2) -> p2 (node2)');
    say('  node-h2-relay: p1 (node1) -> bare Node.js HTTP/2 CONNECT tunnel (node1 -> node2) -> p2 (node2)');
    say('  node-tcp-relay: p1 (node1) -> plain TCP through Node.js on node1, then on node2 -> p2 (node2)');
    const scenarios = await measureAll(tb, targets);

    say(`policy: new-connection latency a -> c with no policy, then with ${POLICY_COUNT} AuthorizationPolicies`);
    const connectP50 = async (label: string) => {
      const runs: number[] = [];
      for (let i = 0; i < REPEATS; i++) {
        const run = await loadgen(tb, a, ['--mode', 'connect', '--host', c.ip, '--port', String(ECHO_PORT), '--connections', '4', '--seconds', String(Math.min(SECONDS, 3))]);
        if (Number(run.errors) > 0) throw new Error(`policy bench (${label}): ${String(run.errors)} connection errors`);
        runs.push(Number(run.connect_p50_us));
        await new Promise((r) => setTimeout(r, 500));
      }
      say(`  ${label}: connect + first byte p50 ${runs.map((r) => r.toFixed(0)).join(', ')} µs`);
      return median(runs);
    };
    const withoutPolicies = await connectP50('no policy');
    const since = Date.now();
    await writeFile(path.join(cluster.configDir, 'policies.yaml'), policyManifests(POLICY_COUNT, { namespace: 'bench', app: 'c', clientPrincipal: 'cluster.local/ns/bench/sa/client', rootNamespace: 'ambit-system' }));
    await cluster.waitForLog(node2, (r) => r.msg === 'policies updated' && r.authorizationPolicies === POLICY_COUNT && Number(r.time) >= since, 10_000);
    const withPolicies = await connectP50(`${POLICY_COUNT} policies`);
    const evaluation = benchPolicyEvaluation();
    const store = benchStoreChanges();
    const policy = {
      policies: POLICY_COUNT,
      connect_p50_us: { none: withoutPolicies, with_policies: withPolicies },
      connect_p50_ratio: withPolicies / withoutPolicies,
      evaluation,
    };
    const telemetry = benchTelemetry();

    const result = {
      date: new Date().toISOString(),
      machine: { cpus: (await import('node:os')).cpus().length, node: process.version },
      settings: { seconds: SECONDS, repeats: REPEATS, latency: LATENCY, hold_connections: HOLD_CONNECTIONS },
      scenarios,
      policy,
      telemetry,
      store,
    };
    const markdown = `${table(scenarios)}

${policyTable(policy)}

${storeTable(store)}

${telemetryLine(telemetry)}`;
    await mkdir(RESULTS_DIR, { recursive: true });
    await writeFile(path.join(RESULTS_DIR, 'latest.json'), `${JSON.stringify(result, null, 2)}\n`);
    await writeFile(path.join(RESULTS_DIR, 'latest.md'), `${markdown}\n`);
    process.stdout.write(`${markdown}\n`);
    await cluster.stopAgent(node1);
    await cluster.stopAgent(node2);
  } finally {
    await tb.destroy();
  }
  return 0;
}

runBench(main);
