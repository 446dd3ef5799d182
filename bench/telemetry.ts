/**
 * The cost of a connection's TCP metrics, in process: the agent's telemetry (AgentTelemetry.opened + closed, which
 * add to per-label-set counts that reach prom-client at scrape time) side by side with the library's own way, the
 * same four Istio counters and the gauge updated through prom-client's cached label children on every connection.
 * Interleaved slices, median of the rounds, reported as a ratio. It is why agent/telemetry.ts batches: a child
 * still hashes and validates its twelve labels on every update.
 * Standalone: `node dist/bench/telemetry.js` prints the result as JSON (AMBIT_BENCH_TELEMETRY_MS sets the slice).
 */
import { pathToFileURL } from 'node:url';
import { Counter, Gauge, Registry } from 'prom-client';
import { AgentTelemetry, type ConnectionRecord } from '../agent/index.js';
import { DEFAULT_TRUST_DOMAIN, spiffeId } from '../core/identity/index.js';
import { silentLogger } from '../core/log/index.js';
import { median } from './policy.js';

export interface TelemetryBenchResult {
  readonly date: string;
  readonly node: string;
  readonly settings: { readonly sliceMs: number; readonly rounds: number; readonly labelSets: number };
  /** Nanoseconds of metrics work per connection (opened, then closed with bytes both ways). */
  readonly nsPerConnection: { readonly agent: number; readonly promClientChildren: number };
  /** promClientChildren / agent: how much more the library's per-connection updates cost. */
  readonly ratio: number;
}

/** Four pairs of workloads, as a node's few busy series are. */
function records(): ConnectionRecord[] {
  return Array.from({ length: 4 }, (_, i) => ({
    reporter: 'source',
    path: 'hbone',
    source: { ip: `10.1.0.${i + 2}`, port: 40000, workload: `client-${i}`, namespace: 'shop', identity: spiffeId(DEFAULT_TRUST_DOMAIN, 'shop', `client-${i}`), app: 'client' },
    destination: { ip: '10.2.0.9', port: 8080, workload: 'cart', namespace: 'shop', identity: spiffeId(DEFAULT_TRUST_DOMAIN, 'shop', 'cart') },
    service: 'cart.shop.svc.cluster.local',
    security: 'mutual_tls',
    startedAt: 0,
  }));
}

/** The reference: what the agent's telemetry would do per connection with prom-client's label children alone. */
function promClientChildren(registry: Registry): (index: number, sent: number, received: number) => void {
  const labelNames = [
    'reporter', 'source_workload', 'source_workload_namespace', 'source_principal', 'source_app', 'destination_workload',
    'destination_workload_namespace', 'destination_principal', 'destination_service', 'request_protocol', 'response_flags',
    'connection_security_policy',
  ];
  const counter = (name: string) => new Counter({ name, help: name, labelNames, registers: [registry] });
  const [opened, closed, sentBytes, receivedBytes] = ['opened', 'closed', 'sent', 'received'].map((name) => counter(`ref_tcp_${name}_total`)) as [Counter, Counter, Counter, Counter];
  const active = new Gauge({ name: 'ref_connections_active', help: 'ref', labelNames: ['direction'], registers: [registry] }).labels({ direction: 'outbound' });
  const children = records().map((r) => {
    const labels = {
      reporter: r.reporter, source_workload: r.source.workload ?? '', source_workload_namespace: r.source.namespace ?? '', source_principal: r.source.identity ?? '',
      source_app: r.source.app ?? '', destination_workload: r.destination.workload ?? '', destination_workload_namespace: r.destination.namespace ?? '',
      destination_principal: r.destination.identity ?? '', destination_service: r.service ?? '', request_protocol: 'tcp', response_flags: '-', connection_security_policy: r.security,
    };
    return { opened: opened.labels(labels), closed: closed.labels(labels), sent: sentBytes.labels(labels), received: receivedBytes.labels(labels) };
  });
  return (index, sent, received) => {
    const child = children[index % children.length] as (typeof children)[number];
    child.opened.inc();
    active.inc();
    child.closed.inc();
    child.sent.inc(sent);
    child.received.inc(received);
    active.dec();
  };
}

function slice(connection: (index: number) => void, ms: number): number {
  const deadline = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
  const start = process.hrtime.bigint();
  let connections = 0;
  let now = start;
  while (now < deadline) {
    for (let i = 0; i < 1000; i++) connection(connections + i);
    connections += 1000;
    now = process.hrtime.bigint();
  }
  return Number(now - start) / connections;
}

export function benchTelemetry(options: { sliceMs?: number; rounds?: number } = {}): TelemetryBenchResult {
  const sliceMs = options.sliceMs ?? Number(process.env.AMBIT_BENCH_TELEMETRY_MS ?? 200);
  const rounds = options.rounds ?? 7;
  const registry = new Registry();
  const telemetry = new AgentTelemetry(registry, silentLogger());
  const connections = records();
  const outcome = { sent: 2048, received: 512 };
  const agent = (index: number) => {
    const record = connections[index % connections.length] as ConnectionRecord;
    telemetry.opened(record);
    telemetry.closed(record, outcome);
  };
  const reference = promClientChildren(registry);
  const library = (index: number) => reference(index, outcome.sent, outcome.received);
  slice(agent, Math.min(100, sliceMs));
  slice(library, Math.min(100, sliceMs));
  const samples = { agent: [] as number[], library: [] as number[] };
  for (let round = 0; round < rounds; round++) {
    // alternate which goes first, so that neither always runs after the other's garbage
    if (round % 2 === 0) {
      samples.agent.push(slice(agent, sliceMs));
      samples.library.push(slice(library, sliceMs));
    } else {
      samples.library.push(slice(library, sliceMs));
      samples.agent.push(slice(agent, sliceMs));
    }
  }
  const agentNs = median(samples.agent);
  const libraryNs = median(samples.library);
  return {
    date: new Date().toISOString(),
    node: process.version,
    settings: { sliceMs, rounds, labelSets: connections.length },
    nsPerConnection: { agent: Math.round(agentNs), promClientChildren: Math.round(libraryNs) },
    ratio: Number((libraryNs / agentNs).toFixed(2)),
  };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.stdout.write(`${JSON.stringify(benchTelemetry(), null, 2)}\n`);
}
