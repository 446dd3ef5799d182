/**
 * Policy evaluation cost: decisions per second with 0, 10, 100 and 1000 AuthorizationPolicies in the store, measured
 * side by side (interleaved slices, median of the rounds) in one process and reported as ratios to no policy.
 * The mix is a mesh's: most policies belong to other namespaces, some to the destination's, a few are mesh-wide.
 * Standalone: `node dist/bench/policy.js` prints the result as JSON (AMBIT_BENCH_POLICY_MS sets the slice length).
 */
import { pathToFileURL } from 'node:url';
import {
  buildPolicySet,
  convertPolicyObject,
  evaluateConnection,
  type AuthorizationPolicy,
  type ConnectionAttributes,
  type PolicySet,
} from '../core/policy/index.js';

const ROOT_NAMESPACE = 'ambit-system';
const DESTINATION_NAMESPACE = 'shop';
const POLICY_COUNTS = [0, 10, 100, 1000] as const;
const APPS = 10;
const OTHER_NAMESPACES = 200;

export interface PolicyBenchOptions {
  /** Length of one measured slice per policy count. */
  readonly sliceMs?: number;
  /** Slices per policy count; the median is reported. */
  readonly rounds?: number;
}

export interface PolicyBenchRow {
  readonly policies: number;
  readonly decisionsPerSecond: number;
  readonly nsPerDecision: number;
  /** decisionsPerSecond / decisionsPerSecond with no policy. */
  readonly ratioToNoPolicy: number;
  /** Share of the benchmark's connections denied: shows the policies are really evaluated. */
  readonly deniedShare: number;
}

export interface PolicyBenchResult {
  readonly date: string;
  readonly node: string;
  readonly settings: { readonly sliceMs: number; readonly rounds: number; readonly connections: number };
  readonly rows: readonly PolicyBenchRow[];
}

function policy(namespace: string, name: string, spec: Record<string, unknown>): AuthorizationPolicy {
  const converted = convertPolicyObject({ apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy', metadata: { namespace, name }, spec }, { istioApi: false });
  if (converted.kind !== 'AuthorizationPolicy') throw new Error(`bench policy ${namespace}/${name} did not convert`);
  return converted.object;
}

const sa = (namespace: string, account: string) => `cluster.local/ns/${namespace}/sa/${account}`;

/** A few mesh-wide guards: an address blocklist, plaintext refused on admin ports, an audit, a legacy lockdown. */
function meshPolicy(i: number): AuthorizationPolicy {
  switch (i % 5) {
    case 0:
      return policy(ROOT_NAMESPACE, `blocklist-${i}`, { action: 'DENY', rules: [{ from: [{ source: { ipBlocks: ['192.0.2.0/24', '198.51.100.0/24', '2001:db8::/32'] } }] }] });
    case 1:
      return policy(ROOT_NAMESPACE, `admin-ports-need-mtls-${i}`, { action: 'DENY', rules: [{ from: [{ source: { notPrincipals: ['*'] } }], to: [{ operation: { ports: ['22', '2379'] } }] }] });
    case 2:
      return policy(ROOT_NAMESPACE, `audit-untrusted-${i}`, { action: 'AUDIT', rules: [{ from: [{ source: { namespaces: ['untrusted-*'] } }] }] });
    case 3:
      return policy(ROOT_NAMESPACE, `legacy-lockdown-${i}`, { action: 'DENY', selector: { matchLabels: { tier: 'legacy' } }, rules: [{ from: [{ source: { notNamespaces: ['legacy-*'] } }] }] });
    default:
      return policy(ROOT_NAMESPACE, `block-range-${i}`, { action: 'DENY', rules: [{ when: [{ key: 'source.ip', values: ['203.0.113.0/24'] }] }] });
  }
}

/** Per-app ALLOW lists in the destination namespace, and now and then a namespace DENY. */
function localPolicy(i: number): AuthorizationPolicy {
  const app = `svc-${i % APPS}`;
  if (i % 7 === 6) {
    return policy(DESTINATION_NAMESPACE, `deny-sandbox-${i}`, { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['sandbox', 'ci-*'] } }] }] });
  }
  return policy(DESTINATION_NAMESPACE, `allow-${app}-${i}`, {
    action: 'ALLOW',
    selector: { matchLabels: { app } },
    rules: [
      { from: [{ source: { principals: [sa('frontend', 'web'), sa('shop', `svc-${(i + 1) % APPS}`)] } }], to: [{ operation: { ports: ['8080', '9090'] } }] },
      { from: [{ source: { namespaces: ['monitoring'] } }], to: [{ operation: { ports: ['9100'] } }] },
    ],
  });
}

function otherPolicy(i: number): AuthorizationPolicy {
  const namespace = `team-${i % OTHER_NAMESPACES}`;
  return policy(namespace, `policy-${i}`, {
    action: i % 4 === 0 ? 'DENY' : 'ALLOW',
    ...(i % 2 === 0 ? { selector: { matchLabels: { app: `app-${i % 13}` } } } : {}),
    rules: [{ from: [{ source: { principals: [sa(namespace, `caller-${i % 5}`)], ipBlocks: ['10.0.0.0/8'] } }], to: [{ operation: { ports: [String(8000 + (i % 100))] } }] }],
  });
}

/** The policy set of a mesh with `count` policies. */
export function benchPolicies(count: number): AuthorizationPolicy[] {
  if (count === 0) return [];
  const mesh = Math.min(5, Math.max(1, Math.round(count * 0.01)));
  const local = Math.min(20, Math.max(1, Math.round(count * 0.1)));
  const policies: AuthorizationPolicy[] = [];
  for (let i = 0; i < mesh; i++) policies.push(meshPolicy(i));
  for (let i = 0; i < local; i++) policies.push(localPolicy(i));
  for (let i = 0; policies.length < count; i++) policies.push(otherPolicy(i));
  return policies;
}

/** Connections to the destination namespace's apps: mostly mesh callers, some plaintext, some monitoring. */
export function benchConnections(): ConnectionAttributes[] {
  const sources: Array<ConnectionAttributes['source']> = [
    { ip: '10.1.0.5', principal: sa('frontend', 'web'), namespace: 'frontend' },
    { ip: '10.1.0.6', principal: sa('shop', 'svc-3'), namespace: 'shop' },
    { ip: '10.1.0.7', principal: sa('monitoring', 'prometheus'), namespace: 'monitoring' },
    { ip: '10.1.0.8', principal: sa('sandbox', 'tester'), namespace: 'sandbox' },
    { ip: '10.1.0.9' },
    { ip: 'fd00::1:9', principal: sa('frontend', 'web'), namespace: 'frontend' },
    { ip: '::ffff:10.1.0.10', principal: sa('batch', 'job'), namespace: 'batch' },
    { ip: '192.0.2.7' },
  ];
  const connections: ConnectionAttributes[] = [];
  for (let app = 0; app < APPS; app++) {
    for (const [i, source] of sources.entries()) {
      connections.push({
        source,
        destination: {
          ip: `10.2.0.${app + 1}`,
          port: [8080, 9090, 9100, 22][(app + i) % 4] as number,
          workload: { namespace: DESTINATION_NAMESPACE, name: `svc-${app}-7d9f8-x2x7z`, labels: { app: `svc-${app}`, ...(app === 9 ? { tier: 'legacy' } : {}) } },
          services: [{ namespace: DESTINATION_NAMESPACE, name: `svc-${app}` }],
        },
      });
    }
  }
  return connections;
}

/** Runs the connections through `set` for about `ms`; decisions per second and the share denied. */
function slice(set: PolicySet, connections: readonly ConnectionAttributes[], ms: number): { perSecond: number; denied: number } {
  const deadline = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
  const start = process.hrtime.bigint();
  let decisions = 0;
  let denied = 0;
  let now = start;
  while (now < deadline) {
    for (let i = 0; i < 1000; i++) {
      if (evaluateConnection(set, connections[i % connections.length] as ConnectionAttributes).decision === 'DENY') denied++;
    }
    decisions += 1000;
    now = process.hrtime.bigint();
  }
  return { perSecond: decisions / (Number(now - start) / 1e9), denied: denied / decisions };
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

export function benchPolicyEvaluation(options: PolicyBenchOptions = {}): PolicyBenchResult {
  const sliceMs = options.sliceMs ?? Number(process.env.AMBIT_BENCH_POLICY_MS ?? 200);
  const rounds = options.rounds ?? 7;
  const connections = benchConnections();
  const sets = POLICY_COUNTS.map((count) => ({ count, set: buildPolicySet(benchPolicies(count), { rootNamespace: ROOT_NAMESPACE }) }));
  // Warm every path so that the first measured slice is not the JIT's.
  for (const { set } of sets) slice(set, connections, Math.min(100, sliceMs));
  const samples = new Map<number, { rates: number[]; denied: number }>(POLICY_COUNTS.map((count) => [count, { rates: [], denied: 0 }]));
  for (let round = 0; round < rounds; round++) {
    // Rotate the order each round so that no count always runs right after a GC-heavy neighbour.
    for (let k = 0; k < sets.length; k++) {
      const { count, set } = sets[(k + round) % sets.length] as (typeof sets)[number];
      const { perSecond, denied } = slice(set, connections, sliceMs);
      const sample = samples.get(count) as { rates: number[]; denied: number };
      sample.rates.push(perSecond);
      sample.denied = denied;
    }
  }
  const base = median(samples.get(0)?.rates ?? [1]);
  const rows = POLICY_COUNTS.map((count): PolicyBenchRow => {
    const sample = samples.get(count) as { rates: number[]; denied: number };
    const rate = median(sample.rates);
    return {
      policies: count,
      decisionsPerSecond: Math.round(rate),
      nsPerDecision: Math.round(1e9 / rate),
      ratioToNoPolicy: Number((rate / base).toFixed(3)),
      deniedShare: Number(sample.denied.toFixed(3)),
    };
  });
  return { date: new Date().toISOString(), node: process.version, settings: { sliceMs, rounds, connections: connections.length }, rows };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.stdout.write(`${JSON.stringify(benchPolicyEvaluation(), null, 2)}\n`);
}
