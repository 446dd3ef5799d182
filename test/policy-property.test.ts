/**
 * Property tests over random policy sets and connections, drawn by fast-check from a fixed seed so a failure
 * replays exactly: each failure prints the seed, the shrunk case's policies (as the objects fed to
 * convertPolicyObject), the changed set and the connection. AMBIT_PROPERTY_SEED and AMBIT_PROPERTY_CASES override
 * the defaults.
 */
import fc from 'fast-check';
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

const NAMESPACES = ['a', 'b', 'c'];
const PRINCIPALS = ['cluster.local/ns/a/sa/s1', 'cluster.local/ns/b/sa/s2', 'cluster.local/ns/c/sa/s1', 'cluster.local/ns/a/*', '*/sa/s1', '*'];
const NAMESPACE_PATTERNS = ['a', 'b', 'c', '*', 'a*', '*c'];
const IP_BLOCKS = ['10.0.0.0/8', '10.1.0.0/16', '10.1.2.3', '192.168.0.0/16', 'fd00::/8', 'fd00::1', '0.0.0.0/0', '::ffff:10.1.0.0/112'];
const PORTS = ['80', '443', '9080'];

type PolicyObject = Record<string, unknown>;

/** Present with probability `p`; shrinks toward absent. */
function sometimes<T>(p: number, arbitrary: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> {
  return fc.oneof({ arbitrary: fc.constant(undefined), weight: Math.round((1 - p) * 10) }, { arbitrary, weight: Math.round(p * 10) });
}

/** One or two values of the pool, repeats allowed. */
function some(pool: readonly string[]): fc.Arbitrary<string[]> {
  return fc.array(fc.constantFrom(...pool), { minLength: 1, maxLength: 2 });
}

/** A field of the table with values from its pool, each field as likely as the others. */
function fieldOf(fields: Array<[string, readonly string[]]>): fc.Arbitrary<[string, string[]]> {
  return fc.oneof(...fields.map(([name, pool]) => some(pool).map((values): [string, string[]] => [name, values])));
}

/** An object of one or two fields (the same field twice keeps the later). */
function objectOf(field: fc.Arbitrary<[string, string[]]>): fc.Arbitrary<Record<string, string[]>> {
  return fc.array(field, { minLength: 1, maxLength: 2 }).map((entries) => Object.fromEntries(entries));
}

const sourceField = fieldOf([
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
]);

const operationField = fieldOf([
  ['ports', PORTS],
  ['notPorts', PORTS],
  ['methods', ['GET', 'POST']],
  ['notPaths', ['/admin']],
  ['hosts', ['reviews']],
]);

const CONDITION_KEYS: Array<[string, readonly string[]]> = [
  ['source.ip', IP_BLOCKS],
  ['remote.ip', IP_BLOCKS],
  ['destination.ip', ['10.9.0.0/16', '10.9.0.1', 'fd09::/16']],
  ['destination.port', PORTS],
  ['source.namespace', NAMESPACE_PATTERNS],
  ['source.principal', PRINCIPALS],
  ['request.headers[x-user]', ['admin']],
  ['connection.sni', ['reviews']],
];

/** values, notValues, or both. */
const condition: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  ...CONDITION_KEYS.map(([key, pool]) =>
    fc.oneof(
      fc.record({ key: fc.constant(key), values: some(pool) }),
      fc.record({ key: fc.constant(key), notValues: some(pool) }),
      fc.record({ key: fc.constant(key), values: some(pool), notValues: some(pool) }),
    ),
  ),
);

const rule: fc.Arbitrary<Record<string, unknown>> = fc
  .record({
    from: sometimes(0.6, fc.array(objectOf(sourceField).map((source) => ({ source })), { minLength: 1, maxLength: 2 })),
    to: sometimes(0.4, fc.array(objectOf(operationField).map((operation) => ({ operation })), { minLength: 1, maxLength: 2 })),
    when: sometimes(0.3, fc.array(condition, { minLength: 1, maxLength: 2 })),
  })
  .map((fields) => Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined)));

/** A policy's scope: the namespace (half the time) or a selector or targetRefs (a quarter each). */
const scope: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  { arbitrary: fc.constant({}), weight: 2 },
  {
    arbitrary: fc
      .oneof(
        fc.record({ app: fc.constantFrom('x', 'y') }),
        fc.record({ app: fc.constant('x'), version: fc.constantFrom('v1', 'v2') }),
      )
      .map((matchLabels) => ({ selector: { matchLabels } })),
    weight: 1,
  },
  {
    arbitrary: fc
      .oneof(
        { arbitrary: fc.constantFrom('svc-x', 'svc-y').map((name) => ({ kind: 'Service', group: '', name })), weight: 4 },
        { arbitrary: fc.constant({ kind: 'Gateway', group: 'gateway.networking.k8s.io', name: 'waypoint' }), weight: 1 },
      )
      .map((ref) => ({ targetRefs: [ref] })),
    weight: 1,
  },
);

/** A policy without its name: a DENY has one to three rules, others none to three. */
interface UnnamedPolicy {
  namespace: string;
  spec: Record<string, unknown>;
}

function policyOf(action: string): fc.Arbitrary<UnnamedPolicy> {
  return fc.record({
    namespace: fc.oneof({ arbitrary: fc.constant(ROOT), weight: 1 }, { arbitrary: fc.constantFrom(...NAMESPACES), weight: 6 }),
    scope,
    rules: fc.array(rule, { minLength: action === 'DENY' ? 1 : 0, maxLength: 3 }),
  }).map(({ namespace, scope, rules }) => ({ namespace, spec: { action, ...scope, rules } }));
}

const anyPolicy = fc.oneof(
  { arbitrary: policyOf('ALLOW'), weight: 2 },
  { arbitrary: policyOf('DENY'), weight: 2 },
  { arbitrary: policyOf('AUDIT'), weight: 1 },
);

function named(name: string, { namespace, spec }: UnnamedPolicy): PolicyObject {
  return { apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy', metadata: { name, namespace }, spec };
}

/** Up to six policies named p0, p1, … */
const policySet = fc.array(anyPolicy, { maxLength: 6 }).map((policies) => policies.map((policy, i) => named(`p${i}`, policy)));

const connection: fc.Arbitrary<ConnectionAttributes> = fc
  .record({
    plaintext: fc.oneof({ arbitrary: fc.constant(false), weight: 7 }, { arbitrary: fc.constant(true), weight: 3 }),
    sourceNamespace: fc.constantFrom(...NAMESPACES),
    serviceAccount: fc.constantFrom('s1', 's2'),
    sourceIp: fc.constantFrom('10.1.2.3', '10.2.0.1', '192.168.1.1', 'fd00::1', 'fd00::2', '::ffff:10.1.2.3', '172.16.0.1'),
    destinationIp: fc.constantFrom('10.9.0.1', '10.9.1.1', 'fd09::1'),
    port: fc.constantFrom(...PORTS, '8080').map(Number),
    workloadNamespace: fc.constantFrom(...NAMESPACES, ROOT),
    app: fc.constantFrom('x', 'y'),
    version: fc.constantFrom('v1', 'v2'),
    service: sometimes(0.7, fc.constantFrom('svc-x', 'svc-y')),
  })
  .map((c) => ({
    source: {
      ip: c.sourceIp,
      ...(c.plaintext ? {} : { principal: `cluster.local/ns/${c.sourceNamespace}/sa/${c.serviceAccount}`, namespace: c.sourceNamespace }),
    },
    destination: {
      ip: c.destinationIp,
      port: c.port,
      workload: { namespace: c.workloadNamespace, name: 'w', labels: { app: c.app, version: c.version } },
      services: c.service === undefined ? [] : [{ namespace: c.workloadNamespace, name: c.service }],
    },
  }));

function toPolicy(obj: PolicyObject): AuthorizationPolicy {
  const converted = convertPolicyObject(obj, { istioApi: false });
  if (converted.kind !== 'AuthorizationPolicy') throw new Error(`generator made a ${converted.kind}`);
  return converted.object;
}

function decide(objects: PolicyObject[], request: ConnectionAttributes): PolicyDecision {
  return evaluateConnection(buildPolicySet(objects.map(toPolicy), { rootNamespace: ROOT }), request);
}

/** One case: a policy set, the set the property changes it into, and the connection both decide. */
interface Case {
  policies: PolicyObject[];
  changed: PolicyObject[];
  request: ConnectionAttributes;
}

interface Property {
  cases: fc.Arbitrary<Case>;
  /** Whether the case is one the property speaks about; the others are skipped, and do not count. */
  premise(before: PolicyDecision): boolean;
  holds(before: PolicyDecision, after: PolicyDecision): boolean;
}

/**
 * Runs a property until CASES cases met its premise (at most 20 skipped per case); fast-check shrinks a failing
 * case (fewer and smaller policies, a simpler connection) while it still meets the premise and fails.
 */
function check(property: Property): { qualified: number; failure?: string } {
  const details = fc.check(
    fc.property(property.cases, ({ policies, changed, request }) => {
      const before = decide(policies, request);
      fc.pre(property.premise(before));
      return property.holds(before, decide(changed, request));
    }),
    { seed: SEED, numRuns: CASES, maxSkipsPerRun: 20 },
  );
  if (!details.failed) return { qualified: details.numRuns };
  const found = details.counterexample?.[0];
  if (found === undefined) return { qualified: details.numRuns, failure: `too few cases met the premise: ${details.numRuns} of ${CASES}, ${details.numSkips} skipped` };
  const { policies, changed, request } = found;
  const lines = [
    `AMBIT_PROPERTY_SEED=${details.seed}, case ${details.numRuns + details.numSkips}; shrunk ${details.numShrinks} times to:`,
    ...policies.map((p) => `policy ${JSON.stringify(p)}`),
    `changed to ${JSON.stringify(changed.map((p) => [(p.metadata as { name: string }).name, p.spec]))}`,
    `connection ${JSON.stringify(request)}`,
    `before ${JSON.stringify(decide(policies, request))}`,
    `after ${JSON.stringify(decide(changed, request))}`,
    ...(details.errorInstance === null ? [] : [`error ${String(details.errorInstance)}`]),
  ];
  return { qualified: details.numRuns, failure: lines.join('\n') };
}

t.test('adding an ALLOW policy never lifts a denial by a DENY policy', async (t) => {
  const { qualified, failure } = check({
    // A DENY more in every set: a denial by a DENY policy is the premise.
    cases: fc
      .record({ set: policySet, deny: policyOf('DENY'), added: policyOf('ALLOW'), request: connection })
      .map(({ set, deny, added, request }) => {
        const policies = [...set, named('deny-extra', deny)];
        return { policies, changed: [...policies, named('added-allow', added)], request };
      }),
    premise: (before) => before.reason === 'denied_by_policy',
    holds: (_, after) => after.decision === 'DENY' && after.reason === 'denied_by_policy',
  });
  if (failure !== undefined) t.fail(failure);
  t.equal(qualified, CASES, `${qualified} sets denied by a DENY policy stayed denied with an added ALLOW`);
});

t.test('adding a DENY policy never turns a denial into an allow', async (t) => {
  const { qualified, failure } = check({
    cases: fc
      .record({ policies: policySet, added: policyOf('DENY'), request: connection })
      .map(({ policies, added, request }) => ({ policies, changed: [...policies, named('added-deny', added)], request })),
    premise: (before) => before.decision === 'DENY',
    holds: (_, after) => after.decision === 'DENY',
  });
  if (failure !== undefined) t.fail(failure);
  t.equal(qualified, CASES, `${qualified} denied connections stayed denied with an added DENY`);
});

t.test('the decision does not depend on the order of the policies', async (t) => {
  const outcomes = new Map<string, number>();
  const { qualified, failure } = check({
    // The order is the policies sorted by a drawn key each (ties keep their place).
    cases: fc
      .record({ policies: policySet, keys: fc.array(fc.nat(), { minLength: 6, maxLength: 6 }), request: connection })
      .map(({ policies, keys, request }) => {
        const order = policies.map((_, i) => i).sort((x, y) => (keys[x] as number) - (keys[y] as number) || x - y);
        return { policies, changed: order.map((i) => policies[i] as PolicyObject), request };
      }),
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
