import t from 'tap';
import {
  buildPolicySet,
  convertPolicyObject,
  evaluateConnection,
  resolveMtlsMode,
  type AuthorizationPolicy,
  type ConnectionAttributes,
  type PeerAuthentication,
} from '../core/policy/index.js';

const ROOT = 'ambit-system';
const NS = 'bookinfo';
const principal = (namespace: string, sa: string) => `cluster.local/ns/${namespace}/sa/${sa}`;
const CLIENT = principal('client', 'sleep');

type Spec = Record<string, unknown>;

function ap(namespace: string, name: string, spec: Spec, annotations?: Record<string, string>): unknown {
  return { apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy', metadata: { name, namespace, ...(annotations ? { annotations } : {}) }, spec };
}

function toPolicy(obj: unknown): AuthorizationPolicy {
  const converted = convertPolicyObject(obj, { istioApi: true });
  if (converted.kind !== 'AuthorizationPolicy') throw new Error(`expected an AuthorizationPolicy, got ${converted.kind}`);
  return converted.object;
}

interface Connection {
  /** undefined: CLIENT; null: plaintext. */
  principal?: string | null;
  namespace?: string;
  ip?: string;
  dstIp?: string;
  port?: number;
  workloadNamespace?: string;
  labels?: Record<string, string>;
  services?: Array<{ namespace: string; name: string }>;
}

function connection(c: Connection = {}): ConnectionAttributes {
  const p = c.principal === undefined ? CLIENT : c.principal === null ? undefined : c.principal;
  return {
    source: { ip: c.ip ?? '10.0.1.5', ...(p === undefined ? {} : { principal: p }), ...(c.namespace === undefined ? {} : { namespace: c.namespace }) },
    destination: {
      ip: c.dstIp ?? '10.0.2.7',
      port: c.port ?? 9080,
      workload: { namespace: c.workloadNamespace ?? NS, name: 'reviews-v1-abc', labels: c.labels ?? { app: 'reviews', version: 'v1' } },
      services: c.services ?? [{ namespace: c.workloadNamespace ?? NS, name: 'reviews' }],
    },
  };
}

interface Expect {
  decision: 'ALLOW' | 'DENY';
  reason: string;
  policy?: string;
  rule?: number;
  audit?: Array<[string, number]>;
  l7?: Array<[string, number, string[]]>;
}

interface Case {
  name: string;
  policies: unknown[];
  conn?: Connection;
  expect: Expect;
}

const allowFrom = (principals: string[]) => ({ action: 'ALLOW', rules: [{ from: [{ source: { principals } }] }] });
const fromSource = (action: string, source: Spec) => ({ action, rules: [{ from: [{ source }] }] });
const toOperation = (action: string, operation: Spec) => ({ action, rules: [{ to: [{ operation }] }] });
const when = (action: string, ...conditions: Spec[]) => ({ action, rules: [{ when: conditions }] });
const ALLOWED = (policy: string, rule = 0): Expect => ({ decision: 'ALLOW', reason: 'allowed_by_policy', policy, rule });
const DENIED = (policy: string, rule = 0): Expect => ({ decision: 'DENY', reason: 'denied_by_policy', policy, rule });
const DEFAULT_DENY: Expect = { decision: 'DENY', reason: 'not_allowed_by_any_policy' };
const DEFAULT_ALLOW: Expect = { decision: 'ALLOW', reason: 'no_policy' };

const cases: Case[] = [
  // Scope: root namespace, namespace, selector, targetRefs.
  { name: 'no policy: default allow', policies: [], expect: DEFAULT_ALLOW },
  { name: 'an ALLOW in another namespace does not apply', policies: [ap('other', 'allow', allowFrom(['nobody']))], expect: DEFAULT_ALLOW },
  { name: 'namespace ALLOW of the exact principal', policies: [ap(NS, 'allow-sleep', allowFrom([CLIENT]))], expect: ALLOWED(`${NS}/allow-sleep`) },
  { name: 'namespace ALLOW of another principal: default deny', policies: [ap(NS, 'allow-other', allowFrom([principal('client', 'other')]))], expect: DEFAULT_DENY },
  { name: 'ALLOW without rules allows nothing', policies: [ap(NS, 'allow-nothing', { action: 'ALLOW' })], expect: DEFAULT_DENY },
  { name: 'empty spec is allow-nothing', policies: [ap(NS, 'allow-nothing', {})], expect: DEFAULT_DENY },
  { name: 'ALLOW with one empty rule allows everything', policies: [ap(NS, 'allow-all', { rules: [{}] })], expect: ALLOWED(`${NS}/allow-all`) },
  {
    name: 'selector matching the workload applies',
    policies: [ap(NS, 'allow-nothing', { selector: { matchLabels: { app: 'reviews' } } })],
    expect: DEFAULT_DENY,
  },
  {
    name: 'selector not matching the workload does not apply',
    policies: [ap(NS, 'allow-nothing', { selector: { matchLabels: { app: 'ratings' } } })],
    expect: DEFAULT_ALLOW,
  },
  {
    name: 'selector needs every label',
    policies: [ap(NS, 'allow-nothing', { selector: { matchLabels: { app: 'reviews', version: 'v2' } } })],
    expect: DEFAULT_ALLOW,
  },
  {
    name: 'empty matchLabels is namespace-wide',
    policies: [ap(NS, 'allow-nothing', { selector: { matchLabels: {} } })],
    expect: DEFAULT_DENY,
  },
  {
    name: 'mesh-wide DENY in the root namespace applies to every namespace',
    policies: [ap(ROOT, 'deny-all', { action: 'DENY', rules: [{}] })],
    expect: DENIED(`${ROOT}/deny-all`),
  },
  {
    name: 'mesh-wide ALLOW with a selector applies to matching workloads of every namespace',
    policies: [ap(ROOT, 'reviews-allow-nothing', { selector: { matchLabels: { app: 'reviews' } } })],
    expect: DEFAULT_DENY,
  },
  {
    name: 'mesh-wide selector not matching does not apply',
    policies: [ap(ROOT, 'ratings-allow-nothing', { selector: { matchLabels: { app: 'ratings' } } })],
    expect: DEFAULT_ALLOW,
  },
  {
    name: 'a mesh ALLOW and a namespace ALLOW: either may allow',
    policies: [ap(ROOT, 'mesh-allow', allowFrom(['cluster.local/ns/ops/*'])), ap(NS, 'ns-allow', allowFrom([CLIENT]))],
    expect: ALLOWED(`${NS}/ns-allow`),
  },
  {
    name: 'targetRefs to a Service that selects the workload applies',
    policies: [ap(NS, 'svc', { targetRefs: [{ kind: 'Service', group: '', name: 'reviews' }] })],
    expect: DEFAULT_DENY,
  },
  {
    name: 'targetRefs to a Service that does not select the workload does not apply',
    policies: [ap(NS, 'svc', { targetRefs: [{ kind: 'Service', group: '', name: 'ratings' }] })],
    expect: DEFAULT_ALLOW,
  },
  {
    name: 'targetRefs to a Gateway never applies at the agent',
    policies: [ap(NS, 'gw', { action: 'DENY', targetRefs: [{ kind: 'Gateway', group: 'gateway.networking.k8s.io', name: 'waypoint' }], rules: [{}] })],
    expect: DEFAULT_ALLOW,
  },
  {
    name: 'targetRefs to a Gateway and a Service applies through the Service',
    policies: [
      ap(NS, 'both', {
        action: 'DENY',
        targetRefs: [
          { kind: 'Gateway', group: 'gateway.networking.k8s.io', name: 'waypoint' },
          { kind: 'Service', name: 'reviews' },
        ],
        rules: [{}],
      }),
    ],
    expect: DENIED(`${NS}/both`),
  },
  {
    name: 'targetRefs names a Service of the policy namespace only',
    policies: [ap('other', 'svc', { action: 'DENY', targetRefs: [{ kind: 'Service', name: 'reviews' }], rules: [{}] })],
    conn: { services: [{ namespace: NS, name: 'reviews' }] },
    expect: DEFAULT_ALLOW,
  },
  {
    name: 'a dry-run policy is never enforced',
    policies: [ap(NS, 'dry', { action: 'DENY', rules: [{}] }, { 'istio.io/dry-run': 'true' })],
    expect: DEFAULT_ALLOW,
  },

  // Action order.
  {
    name: 'DENY wins over a matching ALLOW',
    policies: [ap(NS, 'allow-all', { rules: [{}] }), ap(NS, 'deny-sleep', { action: 'DENY', rules: [{ from: [{ source: { principals: [CLIENT] } }] }] })],
    expect: DENIED(`${NS}/deny-sleep`),
  },
  {
    name: 'a DENY that does not match leaves the ALLOW to decide',
    policies: [ap(NS, 'allow-all', { rules: [{}] }), ap(NS, 'deny-ops', fromSource('DENY', { namespaces: ['ops'] }))],
    expect: ALLOWED(`${NS}/allow-all`),
  },
  { name: 'a DENY that does not match and no ALLOW: default allow', policies: [ap(NS, 'deny-ops', fromSource('DENY', { namespaces: ['ops'] }))], expect: DEFAULT_ALLOW },
  {
    name: 'AUDIT never changes the decision and is reported',
    policies: [ap(NS, 'audit-all', { action: 'AUDIT', rules: [{}] })],
    expect: { ...DEFAULT_ALLOW, audit: [[`${NS}/audit-all`, 0]] },
  },
  {
    name: 'AUDIT is reported with a default deny too',
    policies: [ap(NS, 'allow-nothing', {}), ap(NS, 'audit-sleep', { action: 'AUDIT', rules: [{ from: [{ source: { namespaces: ['ops'] } }] }, {}] })],
    expect: { ...DEFAULT_DENY, audit: [[`${NS}/audit-sleep`, 1]] },
  },
  {
    name: 'AUDIT and DENY policies alone keep the default allow',
    policies: [ap(NS, 'audit-ops', fromSource('AUDIT', { namespaces: ['ops'] })), ap(NS, 'deny-ops', fromSource('DENY', { namespaces: ['ops'] }))],
    expect: DEFAULT_ALLOW,
  },
  { name: 'AUDIT that does not match is not reported', policies: [ap(NS, 'audit-ops', fromSource('AUDIT', { namespaces: ['ops'] }))], expect: DEFAULT_ALLOW },
  {
    name: 'two matching DENY policies: the first by name is reported',
    policies: [ap(NS, 'b-deny', { action: 'DENY', rules: [{}] }), ap(NS, 'a-deny', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['ops'] } }] }, {}] })],
    expect: DENIED(`${NS}/a-deny`, 1),
  },
  {
    name: 'a mesh-wide DENY is reported before a namespace DENY',
    policies: [ap(NS, 'a-deny', { action: 'DENY', rules: [{}] }), ap(ROOT, 'z-deny', { action: 'DENY', rules: [{}] })],
    expect: DENIED(`${ROOT}/z-deny`),
  },
  {
    name: 'the first matching rule of an ALLOW is reported',
    policies: [ap(NS, 'allow', { rules: [{ from: [{ source: { namespaces: ['ops'] } }] }, { from: [{ source: { namespaces: ['client'] } }] }] })],
    expect: ALLOWED(`${NS}/allow`, 1),
  },

  // Principals.
  { name: 'principal prefix match', policies: [ap(NS, 'allow', allowFrom(['cluster.local/ns/client/*']))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'principal suffix match', policies: [ap(NS, 'allow', allowFrom(['*/sa/sleep']))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'principal * matches any identity', policies: [ap(NS, 'allow', allowFrom(['*']))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'principal * never matches plaintext', policies: [ap(NS, 'allow', allowFrom(['*']))], conn: { principal: null }, expect: DEFAULT_DENY },
  { name: 'an exact principal never matches plaintext', policies: [ap(NS, 'allow', allowFrom([CLIENT]))], conn: { principal: null }, expect: DEFAULT_DENY },
  {
    name: 'a * inside a principal is literal',
    policies: [ap(NS, 'allow', allowFrom(['cluster.local/ns/*/sa/sleep']))],
    expect: DEFAULT_DENY,
  },
  {
    name: 'DENY notPrincipals * refuses plaintext',
    policies: [ap(NS, 'require-mtls', fromSource('DENY', { notPrincipals: ['*'] }))],
    conn: { principal: null },
    expect: DENIED(`${NS}/require-mtls`),
  },
  { name: 'DENY notPrincipals * lets an identity through', policies: [ap(NS, 'require-mtls', fromSource('DENY', { notPrincipals: ['*'] }))], expect: DEFAULT_ALLOW },
  {
    name: 'ALLOW notPrincipals excludes the listed principal',
    policies: [ap(NS, 'allow-but-sleep', fromSource('ALLOW', { notPrincipals: [CLIENT] }))],
    expect: DEFAULT_DENY,
  },
  {
    name: 'ALLOW notPrincipals admits other principals',
    policies: [ap(NS, 'allow-but-other', fromSource('ALLOW', { notPrincipals: [principal('client', 'other')] }))],
    expect: ALLOWED(`${NS}/allow-but-other`),
  },

  // Namespaces.
  { name: 'namespace exact', policies: [ap(NS, 'allow', fromSource('ALLOW', { namespaces: ['client'] }))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'namespace prefix', policies: [ap(NS, 'allow', fromSource('ALLOW', { namespaces: ['cli*'] }))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'namespace suffix', policies: [ap(NS, 'allow', fromSource('ALLOW', { namespaces: ['*ent'] }))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'namespace * never matches plaintext', policies: [ap(NS, 'allow', fromSource('ALLOW', { namespaces: ['*'] }))], conn: { principal: null }, expect: DEFAULT_DENY },
  {
    name: 'notNamespaces is satisfied by plaintext',
    policies: [ap(NS, 'allow', fromSource('ALLOW', { notNamespaces: ['prod'] }))],
    conn: { principal: null },
    expect: ALLOWED(`${NS}/allow`),
  },
  { name: 'DENY by namespace', policies: [ap(NS, 'deny-client', fromSource('DENY', { namespaces: ['client'] }))], expect: DENIED(`${NS}/deny-client`) },
  {
    name: 'the given source namespace is used over the principal',
    policies: [ap(NS, 'deny-ops', fromSource('DENY', { namespaces: ['ops'] }))],
    conn: { namespace: 'ops' },
    expect: DENIED(`${NS}/deny-ops`),
  },

  // IP blocks.
  { name: 'ipBlocks CIDR', policies: [ap(NS, 'allow', fromSource('ALLOW', { ipBlocks: ['10.0.0.0/16'] }))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'ipBlocks single address', policies: [ap(NS, 'allow', fromSource('ALLOW', { ipBlocks: ['10.0.1.5'] }))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'ipBlocks not containing the source', policies: [ap(NS, 'allow', fromSource('ALLOW', { ipBlocks: ['10.0.2.0/24', '192.168.0.1'] }))], expect: DEFAULT_DENY },
  { name: 'notIpBlocks containing the source', policies: [ap(NS, 'deny', fromSource('DENY', { notIpBlocks: ['10.0.0.0/8'] }))], expect: DEFAULT_ALLOW },
  { name: 'notIpBlocks not containing the source', policies: [ap(NS, 'deny', fromSource('DENY', { notIpBlocks: ['192.168.0.0/16'] }))], expect: DENIED(`${NS}/deny`) },
  {
    name: 'IPv6 CIDR',
    policies: [ap(NS, 'allow', fromSource('ALLOW', { ipBlocks: ['fd00:10::/32'] }))],
    conn: { ip: 'fd00:10:0:1::5' },
    expect: ALLOWED(`${NS}/allow`),
  },
  {
    name: 'an IPv6 range never holds an IPv4 peer',
    policies: [ap(NS, 'deny', fromSource('DENY', { ipBlocks: ['::/0'] }))],
    expect: DEFAULT_ALLOW,
  },
  {
    name: 'an IPv4-mapped peer address matches its IPv4 range',
    policies: [ap(NS, 'deny', fromSource('DENY', { ipBlocks: ['10.0.0.0/16'] }))],
    conn: { ip: '::ffff:10.0.1.5' },
    expect: DENIED(`${NS}/deny`),
  },
  {
    name: 'an IPv4-mapped range holds the IPv4 peers it maps',
    policies: [ap(NS, 'deny', fromSource('DENY', { ipBlocks: ['::ffff:10.0.0.0/104'] }))],
    expect: DENIED(`${NS}/deny`),
  },
  {
    name: 'an IPv6 address block is exact',
    policies: [ap(NS, 'allow', fromSource('ALLOW', { ipBlocks: ['FD00::5'] }))],
    conn: { ip: 'fd00:0:0::6' },
    expect: DEFAULT_DENY,
  },
  { name: 'a /0 IPv4 range holds every IPv4 peer', policies: [ap(NS, 'deny', fromSource('DENY', { ipBlocks: ['0.0.0.0/0'] }))], expect: DENIED(`${NS}/deny`) },
  { name: 'remoteIpBlocks is the peer address at L4', policies: [ap(NS, 'allow', fromSource('ALLOW', { remoteIpBlocks: ['10.0.1.0/24'] }))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'notRemoteIpBlocks is the peer address at L4', policies: [ap(NS, 'deny', fromSource('DENY', { notRemoteIpBlocks: ['10.0.1.0/24'] }))], expect: DEFAULT_ALLOW },
  {
    name: 'an IP-only rule admits plaintext',
    policies: [ap(NS, 'allow', fromSource('ALLOW', { ipBlocks: ['10.0.1.0/24'] }))],
    conn: { principal: null },
    expect: ALLOWED(`${NS}/allow`),
  },

  // Ports.
  { name: 'ports match the destination port', policies: [ap(NS, 'allow', toOperation('ALLOW', { ports: ['9080'] }))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'ports not matching', policies: [ap(NS, 'allow', toOperation('ALLOW', { ports: ['8080', '443'] }))], expect: DEFAULT_DENY },
  { name: 'notPorts', policies: [ap(NS, 'deny', toOperation('DENY', { notPorts: ['9080'] }))], expect: DEFAULT_ALLOW },
  { name: 'DENY by port', policies: [ap(NS, 'deny', toOperation('DENY', { ports: ['9080'] }))], conn: { port: 9080 }, expect: DENIED(`${NS}/deny`) },
  {
    name: 'from and to must both match',
    policies: [ap(NS, 'allow', { rules: [{ from: [{ source: { principals: [CLIENT] } }], to: [{ operation: { ports: ['8080'] } }] }] })],
    expect: DEFAULT_DENY,
  },

  // Any-of and all-of.
  {
    name: 'any source of from',
    policies: [ap(NS, 'allow', { rules: [{ from: [{ source: { namespaces: ['ops'] } }, { source: { ipBlocks: ['10.0.1.0/24'] } }] }] })],
    expect: ALLOWED(`${NS}/allow`),
  },
  {
    name: 'any operation of to',
    policies: [ap(NS, 'allow', { rules: [{ to: [{ operation: { ports: ['80'] } }, { operation: { ports: ['9080'] } }] }] })],
    expect: ALLOWED(`${NS}/allow`),
  },
  {
    name: 'every field of one source',
    policies: [ap(NS, 'allow', fromSource('ALLOW', { principals: [CLIENT], ipBlocks: ['192.168.0.0/16'] }))],
    expect: DEFAULT_DENY,
  },

  // Conditions.
  { name: 'when source.ip', policies: [ap(NS, 'allow', when('ALLOW', { key: 'source.ip', values: ['10.0.1.0/24'] }))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'when source.ip notValues', policies: [ap(NS, 'allow', when('ALLOW', { key: 'source.ip', notValues: ['10.0.1.5'] }))], expect: DEFAULT_DENY },
  { name: 'when remote.ip is the peer', policies: [ap(NS, 'deny', when('DENY', { key: 'remote.ip', values: ['10.0.1.5'] }))], expect: DENIED(`${NS}/deny`) },
  { name: 'when destination.port', policies: [ap(NS, 'allow', when('ALLOW', { key: 'destination.port', values: ['9080'] }))], expect: ALLOWED(`${NS}/allow`) },
  { name: 'when destination.ip', policies: [ap(NS, 'deny', when('DENY', { key: 'destination.ip', values: ['10.0.2.0/24'] }))], expect: DENIED(`${NS}/deny`) },
  { name: 'when source.namespace prefix', policies: [ap(NS, 'allow', when('ALLOW', { key: 'source.namespace', values: ['cl*'] }))], expect: ALLOWED(`${NS}/allow`) },
  {
    name: 'when source.principal notValues is satisfied by plaintext',
    policies: [ap(NS, 'allow', when('ALLOW', { key: 'source.principal', notValues: ['*'] }))],
    conn: { principal: null },
    expect: ALLOWED(`${NS}/allow`),
  },
  {
    name: 'when values and notValues both hold',
    policies: [ap(NS, 'allow', when('ALLOW', { key: 'source.principal', values: ['cluster.local/*'], notValues: ['*/sa/admin'] }))],
    expect: ALLOWED(`${NS}/allow`),
  },
  {
    name: 'when values hold but notValues excludes',
    policies: [ap(NS, 'allow', when('ALLOW', { key: 'source.principal', values: ['cluster.local/*'], notValues: ['*/sa/sleep'] }))],
    expect: DEFAULT_DENY,
  },
  {
    name: 'every condition must hold',
    policies: [ap(NS, 'allow', when('ALLOW', { key: 'source.namespace', values: ['client'] }, { key: 'destination.port', values: ['80'] }))],
    expect: DEFAULT_DENY,
  },

  // L7 attributes: fail closed.
  {
    name: 'an ALLOW rule with methods never matches at the agent',
    policies: [ap(NS, 'allow-get', toOperation('ALLOW', { methods: ['GET'] }))],
    expect: { ...DEFAULT_DENY, l7: [[`${NS}/allow-get`, 0, ['to[0].operation.methods']]] },
  },
  {
    name: 'an L7 ALLOW rule is skipped and a pure L4 rule still allows',
    policies: [ap(NS, 'allow', { rules: [{ to: [{ operation: { paths: ['/api/*'] } }] }, { from: [{ source: { namespaces: ['client'] } }] }] })],
    expect: { ...ALLOWED(`${NS}/allow`, 1), l7: [[`${NS}/allow`, 0, ['to[0].operation.paths']]] },
  },
  {
    name: 'an ALLOW with notMethods never matches at the agent',
    policies: [ap(NS, 'allow', toOperation('ALLOW', { notMethods: ['DELETE'], ports: ['9080'] }))],
    expect: { ...DEFAULT_DENY, l7: [[`${NS}/allow`, 0, ['to[0].operation.notMethods']]] },
  },
  {
    name: 'an ALLOW with an L7 condition never matches at the agent',
    policies: [ap(NS, 'allow', when('ALLOW', { key: 'request.auth.claims[iss]', values: ['https://issuer'] }))],
    expect: { ...DEFAULT_DENY, l7: [[`${NS}/allow`, 0, ['when[0].key=request.auth.claims[iss]']]] },
  },
  {
    name: 'an ALLOW with requestPrincipals never matches at the agent',
    policies: [ap(NS, 'allow', fromSource('ALLOW', { requestPrincipals: ['*'], principals: [CLIENT] }))],
    expect: { ...DEFAULT_DENY, l7: [[`${NS}/allow`, 0, ['from[0].source.requestPrincipals']]] },
  },
  {
    name: 'a DENY with paths denies what its L4 part matches',
    policies: [ap(NS, 'deny-admin', { action: 'DENY', rules: [{ from: [{ source: { principals: [CLIENT] } }], to: [{ operation: { paths: ['/admin'] } }] }] })],
    expect: { ...DENIED(`${NS}/deny-admin`), l7: [[`${NS}/deny-admin`, 0, ['to[0].operation.paths']]] },
  },
  {
    name: 'a DENY with only requestPrincipals denies everything',
    policies: [ap(NS, 'deny-jwt', fromSource('DENY', { notRequestPrincipals: ['*'] }))],
    conn: { principal: null },
    expect: { ...DENIED(`${NS}/deny-jwt`), l7: [[`${NS}/deny-jwt`, 0, ['from[0].source.notRequestPrincipals']]] },
  },
  {
    name: 'a DENY with a header condition denies its L4 part',
    policies: [ap(NS, 'deny', when('DENY', { key: 'request.headers[x-debug]', values: ['1'] }, { key: 'destination.port', values: ['9080'] }))],
    expect: { ...DENIED(`${NS}/deny`), l7: [[`${NS}/deny`, 0, ['when[0].key=request.headers[x-debug]']]] },
  },
  {
    name: 'a DENY with L7 whose L4 part does not match does not deny',
    policies: [ap(NS, 'deny', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['ops'] } }], to: [{ operation: { methods: ['POST'] } }] }] })],
    expect: { ...DEFAULT_ALLOW, l7: [[`${NS}/deny`, 0, ['to[0].operation.methods']]] },
  },
  {
    name: 'an AUDIT with L7 is reported on its L4 part',
    policies: [ap(NS, 'audit', toOperation('AUDIT', { hosts: ['reviews'], ports: ['9080'] }))],
    expect: { ...DEFAULT_ALLOW, audit: [[`${NS}/audit`, 0]], l7: [[`${NS}/audit`, 0, ['to[0].operation.hosts']]] },
  },
  {
    name: 'L7 rules of policies that do not apply are not reported',
    policies: [ap(NS, 'allow-get', { selector: { matchLabels: { app: 'ratings' } }, rules: [{ to: [{ operation: { methods: ['GET'] } }] }] })],
    expect: DEFAULT_ALLOW,
  },

  // Attributes that cannot be evaluated fail closed.
  { name: 'an unparseable source address is denied', policies: [], conn: { ip: 'not-an-ip' }, expect: { decision: 'DENY', reason: 'invalid_connection' } },
  { name: 'a port out of range is denied', policies: [], conn: { port: 0 }, expect: { decision: 'DENY', reason: 'invalid_connection' } },
];

t.test('evaluateConnection: the matrix', async (t) => {
  t.ok(cases.length >= 60, `${cases.length} cases`);
  for (const c of cases) {
    const set = buildPolicySet(c.policies.map(toPolicy), { rootNamespace: ROOT });
    const decision = evaluateConnection(set, connection(c.conn));
    t.same(
      {
        decision: decision.decision,
        policy: decision.policy,
        rule: decision.rule,
        reason: decision.reason,
        audit: decision.audit.map((a) => [a.policy, a.rule]),
        l7: decision.l7Fallbacks.map((f) => [f.policy, f.rule, f.fields]),
      },
      {
        decision: c.expect.decision,
        policy: c.expect.policy ?? null,
        rule: c.expect.rule ?? null,
        reason: c.expect.reason,
        audit: c.expect.audit ?? [],
        l7: c.expect.l7 ?? [],
      },
      c.name,
    );
  }
});

t.test('a policy set rejects two versions of one object', async (t) => {
  const policy = toPolicy(ap(NS, 'twice', {}));
  t.throws(() => buildPolicySet([policy, policy], { rootNamespace: ROOT }), { code: 'DUPLICATE_POLICY' });
});

t.test('a hand-built policy with a range that is not one is refused, not guessed at', async (t) => {
  const policy = toPolicy(ap(NS, 'allow', fromSource('ALLOW', { notIpBlocks: ['10.0.0.0/8'] })));
  const broken = { ...policy, rules: [{ from: [{ notIpBlocks: ['10.0.0.0/80'] }], when: [], l7Fields: [] }] };
  t.throws(() => buildPolicySet([broken], { rootNamespace: ROOT }), { code: 'INVALID_POLICY' });
});

t.test('the workload in the root namespace sees the root policies once', async (t) => {
  const set = buildPolicySet([toPolicy(ap(ROOT, 'audit', { action: 'AUDIT', rules: [{}] }))], { rootNamespace: ROOT });
  const decision = evaluateConnection(set, connection({ workloadNamespace: ROOT }));
  t.same(decision.audit, [{ policy: `${ROOT}/audit`, rule: 0 }]);
});

t.test('a decision stays in the microseconds with 1000 policies', async (t) => {
  const policies: AuthorizationPolicy[] = [];
  for (let i = 0; i < 1000; i++) {
    const namespace = i % 50 === 0 ? NS : `team-${i % 97}`;
    policies.push(toPolicy(ap(namespace, `p-${i}`, { action: i % 3 === 0 ? 'DENY' : 'ALLOW', rules: [{ from: [{ source: { namespaces: [`team-${i}`] } }] }] })));
  }
  const set = buildPolicySet(policies, { rootNamespace: ROOT });
  const request = connection();
  const rounds = 20000;
  let denied = 0;
  const start = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) if (evaluateConnection(set, request).decision === 'DENY') denied++;
  const perDecisionUs = Number(process.hrtime.bigint() - start) / 1000 / rounds;
  t.equal(denied, rounds, 'ALLOW policies in the namespace and none matching: default deny');
  // Generous: a shared CI machine; the bench measures the real figure.
  t.ok(perDecisionUs < 50, `${perDecisionUs.toFixed(2)} µs per decision`);
});

function peer(namespace: string, name: string, spec: Spec, creationTimestamp?: string): PeerAuthentication {
  const converted = convertPolicyObject(
    { apiVersion: 'security.ambit.dev/v1', kind: 'PeerAuthentication', metadata: { name, namespace, ...(creationTimestamp ? { creationTimestamp } : {}) }, spec },
    { istioApi: false },
  );
  if (converted.kind !== 'PeerAuthentication') throw new Error(`expected a PeerAuthentication, got ${converted.kind}`);
  return converted.object;
}

const strict = { mtls: { mode: 'STRICT' } };
const permissive = { mtls: { mode: 'PERMISSIVE' } };
const reviews = { matchLabels: { app: 'reviews' } };

interface MtlsCase {
  name: string;
  policies: PeerAuthentication[];
  workloadNamespace?: string;
  port?: number;
  expect: { mode: 'STRICT' | 'PERMISSIVE'; policy: string | null; reason: string };
}

const mtlsCases: MtlsCase[] = [
  { name: 'no policy: PERMISSIVE', policies: [], expect: { mode: 'PERMISSIVE', policy: null, reason: 'default' } },
  { name: 'mesh STRICT', policies: [peer(ROOT, 'mesh', strict)], expect: { mode: 'STRICT', policy: `${ROOT}/mesh`, reason: 'mesh' } },
  {
    name: 'namespace PERMISSIVE over mesh STRICT',
    policies: [peer(ROOT, 'mesh', strict), peer(NS, 'ns', permissive)],
    expect: { mode: 'PERMISSIVE', policy: `${NS}/ns`, reason: 'namespace' },
  },
  {
    name: 'namespace UNSET inherits mesh',
    policies: [peer(ROOT, 'mesh', strict), peer(NS, 'ns', { mtls: { mode: 'UNSET' } })],
    expect: { mode: 'STRICT', policy: `${ROOT}/mesh`, reason: 'mesh' },
  },
  { name: 'a policy without mtls is UNSET', policies: [peer(ROOT, 'mesh', strict), peer(NS, 'ns', {})], expect: { mode: 'STRICT', policy: `${ROOT}/mesh`, reason: 'mesh' } },
  {
    name: 'DISABLE is PERMISSIVE',
    policies: [peer(ROOT, 'mesh', strict), peer(NS, 'ns', { mtls: { mode: 'DISABLE' } })],
    expect: { mode: 'PERMISSIVE', policy: `${NS}/ns`, reason: 'namespace' },
  },
  {
    name: 'workload STRICT over namespace PERMISSIVE',
    policies: [peer(NS, 'ns', permissive), peer(NS, 'reviews', { selector: reviews, ...strict })],
    expect: { mode: 'STRICT', policy: `${NS}/reviews`, reason: 'workload' },
  },
  {
    name: 'a workload policy that does not select the workload',
    policies: [peer(NS, 'ns', permissive), peer(NS, 'ratings', { selector: { matchLabels: { app: 'ratings' } }, ...strict })],
    expect: { mode: 'PERMISSIVE', policy: `${NS}/ns`, reason: 'namespace' },
  },
  {
    name: 'workload UNSET inherits the namespace',
    policies: [peer(NS, 'ns', strict), peer(NS, 'reviews', { selector: reviews, portLevelMtls: { 8080: { mode: 'PERMISSIVE' } } })],
    expect: { mode: 'STRICT', policy: `${NS}/ns`, reason: 'namespace' },
  },
  {
    name: 'port-level PERMISSIVE on the destination port',
    policies: [peer(NS, 'reviews', { selector: reviews, ...strict, portLevelMtls: { 9080: { mode: 'PERMISSIVE' } } })],
    expect: { mode: 'PERMISSIVE', policy: `${NS}/reviews`, reason: 'workload_port' },
  },
  {
    name: 'port-level on another port',
    policies: [peer(NS, 'reviews', { selector: reviews, ...strict, portLevelMtls: { 8080: { mode: 'PERMISSIVE' } } })],
    expect: { mode: 'STRICT', policy: `${NS}/reviews`, reason: 'workload' },
  },
  {
    name: 'port-level UNSET inherits the workload',
    policies: [peer(NS, 'reviews', { selector: reviews, ...strict, portLevelMtls: { 9080: { mode: 'UNSET' } } })],
    expect: { mode: 'STRICT', policy: `${NS}/reviews`, reason: 'workload' },
  },
  {
    name: 'port-level STRICT under a PERMISSIVE mesh',
    policies: [peer(ROOT, 'mesh', permissive), peer(NS, 'reviews', { selector: reviews, portLevelMtls: { 9080: { mode: 'STRICT' } } })],
    expect: { mode: 'STRICT', policy: `${NS}/reviews`, reason: 'workload_port' },
  },
  {
    name: 'a selector policy in the root namespace is ignored',
    policies: [peer(ROOT, 'reviews', { selector: reviews, ...strict })],
    expect: { mode: 'PERMISSIVE', policy: null, reason: 'default' },
  },
  {
    name: 'a policy of another namespace is ignored',
    policies: [peer('other', 'ns', strict)],
    expect: { mode: 'PERMISSIVE', policy: null, reason: 'default' },
  },
  {
    name: 'two namespace policies: the oldest wins',
    policies: [peer(NS, 'a-new', strict, '2024-05-01T00:00:00Z'), peer(NS, 'b-old', permissive, '2024-01-01T00:00:00Z')],
    expect: { mode: 'PERMISSIVE', policy: `${NS}/b-old`, reason: 'namespace' },
  },
  {
    name: 'two namespace policies without timestamps: by name',
    policies: [peer(NS, 'b', permissive), peer(NS, 'a', strict)],
    expect: { mode: 'STRICT', policy: `${NS}/a`, reason: 'namespace' },
  },
  {
    name: 'a timestamped policy is older than one without',
    policies: [peer(NS, 'a', strict), peer(NS, 'b', permissive, '2024-01-01T00:00:00Z')],
    expect: { mode: 'PERMISSIVE', policy: `${NS}/b`, reason: 'namespace' },
  },
  {
    name: 'two workload policies: the oldest wins',
    policies: [peer(NS, 'a', { selector: reviews, ...strict }, '2024-05-01T00:00:00Z'), peer(NS, 'b', { selector: { matchLabels: { version: 'v1' } }, ...permissive }, '2024-01-01T00:00:00Z')],
    expect: { mode: 'PERMISSIVE', policy: `${NS}/b`, reason: 'workload' },
  },
  {
    name: 'a workload in the root namespace gets the mesh policy',
    policies: [peer(ROOT, 'mesh', strict), peer(ROOT, 'reviews', { selector: reviews, ...permissive })],
    workloadNamespace: ROOT,
    expect: { mode: 'STRICT', policy: `${ROOT}/mesh`, reason: 'mesh' },
  },
];

t.test('resolveMtlsMode', async (t) => {
  for (const c of mtlsCases) {
    const workload = { namespace: c.workloadNamespace ?? NS, labels: { app: 'reviews', version: 'v1' } };
    t.same(resolveMtlsMode(c.policies, workload, c.port ?? 9080, { rootNamespace: ROOT }), c.expect, c.name);
  }
});
