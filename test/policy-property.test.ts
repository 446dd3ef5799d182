/**
 * Property tests over random policy sets and connections from a seeded generator, so a failure replays exactly:
 * each failure prints the seed, the case number, the policies (as the objects fed to convertPolicyObject) and the
 * connection. AMBIT_PROPERTY_SEED and AMBIT_PROPERTY_CASES override the defaults.
 */
import t from 'tap';
import {
  buildPolicySet,
  convertPolicyObject,
  evaluateConnection,
  type AuthorizationPolicy,
  type ConnectionAttributes,
  type PolicyDecision,
} from '../core/policy/index.js';

const SEED = Number(process.env.AMBIT_PROPERTY_SEED ?? 20240611);
const CASES = Number(process.env.AMBIT_PROPERTY_CASES ?? 3000);
const ROOT = 'ambit-system';

/** mulberry32: small, fast, and good enough to spread cases; deterministic for a seed. */
class Random {
  #state: number;
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let x = this.#state;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
  some<T>(items: readonly T[], max = 2): T[] {
    const count = 1 + this.int(max);
    return Array.from({ length: count }, () => this.pick(items));
  }
  shuffle<T>(items: readonly T[]): T[] {
    const out = [...items];
    for (let i = out.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [out[i], out[j]] = [out[j] as T, out[i] as T];
    }
    return out;
  }
}

const NAMESPACES = ['a', 'b', 'c'];
const PRINCIPALS = ['cluster.local/ns/a/sa/s1', 'cluster.local/ns/b/sa/s2', 'cluster.local/ns/c/sa/s1', 'cluster.local/ns/a/*', '*/sa/s1', '*'];
const NAMESPACE_PATTERNS = ['a', 'b', 'c', '*', 'a*', '*c'];
const IP_BLOCKS = ['10.0.0.0/8', '10.1.0.0/16', '10.1.2.3', '192.168.0.0/16', 'fd00::/8', 'fd00::1', '0.0.0.0/0', '::ffff:10.1.0.0/112'];
const PORTS = ['80', '443', '9080'];

function sourceField(random: Random): [string, string[]] {
  const fields: Array<[string, readonly string[]]> = [
    ['principals', PRINCIPALS],
    ['notPrincipals', PRINCIPALS],
    ['namespaces', NAMESPACE_PATTERNS],
    ['notNamespaces', NAMESPACE_PATTERNS],
    ['ipBlocks', IP_BLOCKS],
    ['notIpBlocks', IP_BLOCKS],
    ['remoteIpBlocks', IP_BLOCKS],
    ['notRemoteIpBlocks', IP_BLOCKS],
    ['requestPrincipals', ['issuer/subject', '*']],
    ['notRequestPrincipals', ['*']],
  ];
  const [name, pool] = random.pick(fields);
  return [name, random.some(pool)];
}

function operationField(random: Random): [string, string[]] {
  const fields: Array<[string, readonly string[]]> = [
    ['ports', PORTS],
    ['notPorts', PORTS],
    ['methods', ['GET', 'POST']],
    ['notPaths', ['/admin']],
    ['hosts', ['reviews']],
  ];
  const [name, pool] = random.pick(fields);
  return [name, random.some(pool)];
}

function condition(random: Random): Record<string, unknown> {
  const keys: Array<[string, readonly string[]]> = [
    ['source.ip', IP_BLOCKS],
    ['remote.ip', IP_BLOCKS],
    ['destination.ip', ['10.9.0.0/16', '10.9.0.1', 'fd09::/16']],
    ['destination.port', PORTS],
    ['source.namespace', NAMESPACE_PATTERNS],
    ['source.principal', PRINCIPALS],
    ['request.headers[x-user]', ['admin']],
    ['connection.sni', ['reviews']],
  ];
  const [key, pool] = random.pick(keys);
  const out: Record<string, unknown> = { key };
  const which = random.int(3);
  if (which !== 1) out.values = random.some(pool);
  if (which !== 0) out.notValues = random.some(pool);
  return out;
}

function rule(random: Random): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (random.chance(0.6)) {
    out.from = Array.from({ length: 1 + random.int(2) }, () => ({ source: Object.fromEntries(Array.from({ length: 1 + random.int(2) }, () => sourceField(random))) }));
  }
  if (random.chance(0.4)) {
    out.to = Array.from({ length: 1 + random.int(2) }, () => ({ operation: Object.fromEntries(Array.from({ length: 1 + random.int(2) }, () => operationField(random))) }));
  }
  if (random.chance(0.3)) out.when = Array.from({ length: 1 + random.int(2) }, () => condition(random));
  return out;
}

function policyObject(random: Random, name: string, action?: string): Record<string, unknown> {
  const chosen = action ?? random.pick(['ALLOW', 'ALLOW', 'DENY', 'DENY', 'AUDIT']);
  const spec: Record<string, unknown> = { action: chosen };
  const scope = random.int(4);
  if (scope === 1) spec.selector = { matchLabels: random.chance(0.5) ? { app: random.pick(['x', 'y']) } : { app: 'x', version: random.pick(['v1', 'v2']) } };
  if (scope === 2) {
    spec.targetRefs = random.chance(0.8)
      ? [{ kind: 'Service', group: '', name: random.pick(['svc-x', 'svc-y']) }]
      : [{ kind: 'Gateway', group: 'gateway.networking.k8s.io', name: 'waypoint' }];
  }
  const ruleCount = chosen === 'DENY' ? 1 + random.int(3) : random.int(4);
  spec.rules = Array.from({ length: ruleCount }, () => rule(random));
  return {
    apiVersion: 'security.ambit.dev/v1',
    kind: 'AuthorizationPolicy',
    metadata: { name, namespace: random.pick([ROOT, ...NAMESPACES, ...NAMESPACES]) },
    spec,
  };
}

function connectionOf(random: Random): ConnectionAttributes {
  const plaintext = random.chance(0.3);
  const sourceNamespace = random.pick(NAMESPACES);
  const workloadNamespace = random.pick([...NAMESPACES, ROOT]);
  return {
    source: {
      ip: random.pick(['10.1.2.3', '10.2.0.1', '192.168.1.1', 'fd00::1', 'fd00::2', '::ffff:10.1.2.3', '172.16.0.1']),
      ...(plaintext ? {} : { principal: `cluster.local/ns/${sourceNamespace}/sa/${random.pick(['s1', 's2'])}`, namespace: sourceNamespace }),
    },
    destination: {
      ip: random.pick(['10.9.0.1', '10.9.1.1', 'fd09::1']),
      port: Number(random.pick([...PORTS, '8080'])),
      workload: { namespace: workloadNamespace, name: 'w', labels: { app: random.pick(['x', 'y']), version: random.pick(['v1', 'v2']) } },
      services: random.chance(0.7) ? [{ namespace: workloadNamespace, name: random.pick(['svc-x', 'svc-y']) }] : [],
    },
  };
}

function toPolicy(obj: Record<string, unknown>): AuthorizationPolicy {
  const converted = convertPolicyObject(obj, { istioApi: false });
  if (converted.kind !== 'AuthorizationPolicy') throw new Error(`generator made a ${converted.kind}`);
  return converted.object;
}

function decide(objects: Array<Record<string, unknown>>, request: ConnectionAttributes): PolicyDecision {
  return evaluateConnection(buildPolicySet(objects.map(toPolicy), { rootNamespace: ROOT }), request);
}

function randomSet(random: Random): Array<Record<string, unknown>> {
  return Array.from({ length: random.int(7) }, (_, i) => policyObject(random, `p${i}`));
}

type PolicyObject = Record<string, unknown>;

interface Property {
  /** Draws one case: the policy set, the connection, and what the property adds or reorders. */
  draw(random: Random): { policies: PolicyObject[]; request: ConnectionAttributes; change: (policies: PolicyObject[]) => PolicyObject[] };
  /** Whether the case is one the property speaks about. */
  premise(before: PolicyDecision): boolean;
  holds(before: PolicyDecision, after: PolicyDecision): boolean;
}

/**
 * Runs a property until CASES cases met its premise; each case has its own generator, seeded from SEED and its
 * number. A failing case is shrunk (policies, then rules, dropped while it still fails) before it is reported.
 */
function check(property: Property): { qualified: number; failure?: string } {
  let qualified = 0;
  for (let index = 0; qualified < CASES && index < CASES * 20; index++) {
    const { policies, request, change } = property.draw(new Random((SEED + Math.imul(index, 0x9e3779b1)) >>> 0));
    const fails = (set: PolicyObject[]) => {
      const before = decide(set, request);
      return property.premise(before) && !property.holds(before, decide(change(set), request));
    };
    const before = decide(policies, request);
    if (!property.premise(before)) continue;
    qualified++;
    if (!fails(policies)) continue;
    const minimal = shrink(policies, fails);
    const lines = [
      `AMBIT_PROPERTY_SEED=${SEED}, case ${index}; shrunk to:`,
      ...minimal.map((p) => `policy ${JSON.stringify(p)}`),
      `changed to ${JSON.stringify(change(minimal).map((p) => [(p.metadata as { name: string }).name, p.spec]))}`,
      `connection ${JSON.stringify(request)}`,
      `before ${JSON.stringify(decide(minimal, request))}`,
      `after ${JSON.stringify(decide(change(minimal), request))}`,
    ];
    return { qualified, failure: lines.join('\n') };
  }
  return { qualified };
}

function shrink(policies: PolicyObject[], fails: (set: PolicyObject[]) => boolean): PolicyObject[] {
  let current = policies;
  for (let i = current.length - 1; i >= 0; i--) {
    const candidate = current.filter((_, j) => j !== i);
    if (fails(candidate)) current = candidate;
  }
  const specOf = (policy: PolicyObject) => policy.spec as { action: string; rules: unknown[] };
  for (let i = 0; i < current.length; i++) {
    for (let r = specOf(current[i] as PolicyObject).rules.length - 1; r >= 0; r--) {
      const policy = current[i] as PolicyObject;
      const spec = specOf(policy);
      if (spec.action === 'DENY' && spec.rules.length === 1) break;
      const candidate = [...current];
      candidate[i] = { ...policy, spec: { ...spec, rules: spec.rules.filter((_, k) => k !== r) } };
      if (fails(candidate)) current = candidate;
    }
  }
  return current;
}

t.test('adding an ALLOW policy never lifts a denial by a DENY policy', async (t) => {
  const { qualified, failure } = check({
    draw: (random) => {
      // A DENY more in every set: a denial by a DENY policy is the premise.
      const policies = [...randomSet(random), policyObject(random, 'deny-extra', 'DENY')];
      const added = policyObject(random, 'added-allow', 'ALLOW');
      return { policies, request: connectionOf(random), change: (set) => [...set, added] };
    },
    premise: (before) => before.reason === 'denied_by_policy',
    holds: (_, after) => after.decision === 'DENY' && after.reason === 'denied_by_policy',
  });
  if (failure !== undefined) t.fail(failure);
  t.equal(qualified, CASES, `${qualified} sets denied by a DENY policy stayed denied with an added ALLOW`);
});

t.test('adding a DENY policy never turns a denial into an allow', async (t) => {
  const { qualified, failure } = check({
    draw: (random) => {
      const policies = randomSet(random);
      const added = policyObject(random, 'added-deny', 'DENY');
      return { policies, request: connectionOf(random), change: (set) => [...set, added] };
    },
    premise: (before) => before.decision === 'DENY',
    holds: (_, after) => after.decision === 'DENY',
  });
  if (failure !== undefined) t.fail(failure);
  t.equal(qualified, CASES, `${qualified} denied connections stayed denied with an added DENY`);
});

t.test('the decision does not depend on the order of the policies', async (t) => {
  const outcomes = new Map<string, number>();
  const { qualified, failure } = check({
    draw: (random) => {
      const policies = randomSet(random);
      const order = random.shuffle(policies.map((_, i) => i));
      // The same permutation whatever the shrinker leaves: by position, skipping what was dropped.
      return { policies, request: connectionOf(random), change: (set) => order.filter((i) => i < set.length).map((i) => set[i] as PolicyObject) };
    },
    premise: (before) => {
      outcomes.set(before.reason, (outcomes.get(before.reason) ?? 0) + 1);
      return true;
    },
    holds: (before, after) => JSON.stringify(after) === JSON.stringify(before),
  });
  if (failure !== undefined) t.fail(failure);
  t.equal(qualified, CASES, `${qualified} shuffled sets decided alike`);
  // The generator must reach every outcome, or the properties above prove little.
  for (const reason of ['denied_by_policy', 'allowed_by_policy', 'not_allowed_by_any_policy', 'no_policy']) {
    t.ok((outcomes.get(reason) ?? 0) > CASES / 50, `${reason}: ${outcomes.get(reason) ?? 0} cases`);
  }
});
