import t from 'tap';
import { InvalidObjectError } from '../core/discovery/index.js';
import { convertPolicyObject, type ConvertedPolicy } from '../core/policy/index.js';

type Spec = Record<string, unknown>;

const ap = (spec: Spec, metadata: Spec = {}, apiVersion = 'security.ambit.dev/v1') => ({
  apiVersion,
  kind: 'AuthorizationPolicy',
  metadata: { name: 'policy', namespace: 'team-a', ...metadata },
  spec,
});
const pa = (spec: Spec, metadata: Spec = {}) => ({
  apiVersion: 'security.ambit.dev/v1',
  kind: 'PeerAuthentication',
  metadata: { name: 'peer', namespace: 'team-a', ...metadata },
  spec,
});
const source = (fields: Spec) => ({ rules: [{ from: [{ source: fields }] }] });
const operation = (fields: Spec) => ({ rules: [{ to: [{ operation: fields }] }] });
const condition = (fields: Spec) => ({ rules: [{ when: [fields] }] });

function convert(obj: unknown, istioApi = false): ConvertedPolicy {
  return convertPolicyObject(obj, { istioApi });
}

t.test('skips what is not a security policy of ours', async (t) => {
  t.same(convert({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' } }), { kind: 'skip', reason: 'v1 Pod is not a security policy' });
  t.same(convert({ apiVersion: 'security.ambit.dev/v1', kind: 'RequestAuthentication', metadata: { name: 'x' } }), {
    kind: 'skip',
    reason: 'security.ambit.dev/v1 RequestAuthentication is not used by Ambit (only AuthorizationPolicy and PeerAuthentication)',
  });
  t.same(convert(ap({}, {}, 'security.istio.io/v1')), {
    kind: 'skip',
    reason: "security.istio.io/v1 AuthorizationPolicy is read only with --istio-api; Ambit's own group is security.ambit.dev/v1",
  });
  t.equal(convert(ap({}, {}, 'security.istio.io/v1'), true).kind, 'AuthorizationPolicy');
  t.equal(convert(ap({}, {}, 'security.istio.io/v1beta1'), true).kind, 'AuthorizationPolicy');
  t.equal(convert({ ...pa({}), apiVersion: 'security.istio.io/v1' }, true).kind, 'PeerAuthentication');
  t.equal(convert(ap({}, {}, 'security.istio.io/v1alpha1'), true).kind, 'skip');
  t.throws(() => convert('text'), { code: 'INVALID_OBJECT', field: '.' });
});

t.test('a full AuthorizationPolicy converts to its frozen form', async (t) => {
  const converted = convert(
    ap(
      {
        action: 'DENY',
        selector: { matchLabels: { app: 'reviews' } },
        rules: [
          {
            from: [{ source: { principals: ['cluster.local/ns/a/sa/b'], notNamespaces: ['prod'], ipBlocks: ['10.0.0.0/8', 'FD00::1'], requestPrincipals: [] } }],
            to: [{ operation: { ports: ['8080'], methods: ['GET'] } }],
            when: [
              { key: 'destination.port', values: ['80'] },
              { key: 'request.headers[x-user]', notValues: ['admin'] },
            ],
          },
          {},
        ],
      },
      { creationTimestamp: new Date('2024-02-03T04:05:06Z'), annotations: { 'istio.io/dry-run': 'false' } },
    ),
  );
  t.equal(converted.kind, 'AuthorizationPolicy');
  if (converted.kind !== 'AuthorizationPolicy') return;
  t.same(converted.object, {
    namespace: 'team-a',
    name: 'policy',
    creationTimestamp: '2024-02-03T04:05:06.000Z',
    action: 'DENY',
    selector: { app: 'reviews' },
    rules: [
      {
        from: [{ principals: ['cluster.local/ns/a/sa/b'], notNamespaces: ['prod'], ipBlocks: ['10.0.0.0/8', 'fd00::1'] }],
        to: [{ ports: [8080], methods: ['GET'] }],
        when: [
          { key: 'destination.port', values: ['80'] },
          { key: 'request.headers[x-user]', notValues: ['admin'] },
        ],
        l7Fields: ['to[0].operation.methods', 'when[1].key=request.headers[x-user]'],
      },
      { when: [], l7Fields: [] },
    ],
    dryRun: false,
  });
  t.ok(Object.isFrozen(converted.object));
  t.ok(Object.isFrozen(converted.object.rules[0]?.from?.[0]?.principals));
  t.ok(Object.isFrozen(converted.object.selector));
});

t.test('defaults and the other accepted forms', async (t) => {
  const converted = convert({ apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy', metadata: { name: 'allow-nothing' } });
  t.same(converted, { kind: 'AuthorizationPolicy', object: { namespace: 'default', name: 'allow-nothing', action: 'ALLOW', rules: [], dryRun: false } });
  const single = convert(ap({ targetRef: { kind: 'Service', group: '', name: 'reviews' } }));
  t.same(single.kind === 'AuthorizationPolicy' && single.object.targetRefs, [{ group: '', kind: 'Service', name: 'reviews' }]);
  const dry = convert(ap({}, { annotations: { 'istio.io/dry-run': 'true' } }));
  t.equal(dry.kind === 'AuthorizationPolicy' && dry.object.dryRun, true);
  const empty = convert(ap({ selector: { matchLabels: {} }, rules: [{ when: [] }] }));
  t.same(empty.kind === 'AuthorizationPolicy' && empty.object, { namespace: 'team-a', name: 'policy', action: 'ALLOW', rules: [{ when: [], l7Fields: [] }], dryRun: false });
  const peer = convert(pa({ selector: { matchLabels: { app: 'x' } }, mtls: { mode: 'STRICT' }, portLevelMtls: { '8080': { mode: 'DISABLE' } } }));
  t.equal(peer.kind, 'PeerAuthentication');
  if (peer.kind !== 'PeerAuthentication') return;
  t.same({ ...peer.object, portLevelMtls: [...peer.object.portLevelMtls] }, {
    namespace: 'team-a',
    name: 'peer',
    selector: { app: 'x' },
    mtlsMode: 'STRICT',
    portLevelMtls: [[8080, 'DISABLE']],
  });
  t.throws(() => (peer.object.portLevelMtls as Map<number, string>).set(1, 'STRICT'), TypeError);
  t.ok(Object.isFrozen(peer.object));
});

interface Rejection {
  name: string;
  obj: unknown;
  field: string;
  reason: string;
  kind?: string;
}

const rejections: Rejection[] = [
  { name: 'CUSTOM', obj: ap({ action: 'CUSTOM', provider: { name: 'ext' }, rules: [{}] }), field: 'spec.action', reason: 'CUSTOM (external authorization) is not supported by Ambit; use ALLOW, DENY or AUDIT' },
  { name: 'unknown action', obj: ap({ action: 'allow' }), field: 'spec.action', reason: 'must be ALLOW, DENY or AUDIT, got "allow"' },
  { name: 'action of the wrong type', obj: ap({ action: 1 }), field: 'spec.action', reason: 'must be a string, got number 1' },
  { name: 'provider without CUSTOM', obj: ap({ provider: { name: 'ext' } }), field: 'spec.provider', reason: 'is only for the CUSTOM action, which Ambit does not support' },
  { name: 'DENY without rules', obj: ap({ action: 'DENY' }), field: 'spec.rules', reason: 'a DENY policy without rules never matches; add an empty rule `{}` to deny every request' },
  { name: 'DENY with an empty rule list', obj: ap({ action: 'DENY', rules: [] }), field: 'spec.rules', reason: 'a DENY policy without rules never matches; add an empty rule `{}` to deny every request' },
  { name: 'rules not a list', obj: ap({ rules: { from: [] } }), field: 'spec.rules', reason: 'must be a list, got an object' },
  { name: 'a rule that is not an object', obj: ap({ rules: ['all'] }), field: 'spec.rules[0]', reason: 'must be an object, got the string "all"' },
  { name: 'an unknown rule field', obj: ap({ rules: [{ form: [] }] }), field: 'spec.rules[0].form', reason: 'is not a field of a rule (known: from, to, when)' },
  { name: 'an unknown spec field', obj: ap({ rule: [] }), field: 'spec.rule', reason: 'is not a field of an AuthorizationPolicy spec (known: selector, targetRef, targetRefs, action, rules, provider)' },
  { name: 'principals as a string', obj: ap(source({ principals: 'x' })), field: 'spec.rules[0].from[0].source.principals', reason: 'must be a list, got the string "x"' },
  { name: 'a principal of the wrong type', obj: ap(source({ principals: ['a', 5] })), field: 'spec.rules[0].from[0].source.principals[1]', reason: 'must be a string, got number 5 (quote it)' },
  { name: 'an empty principal', obj: ap(source({ principals: [''] })), field: 'spec.rules[0].from[0].source.principals[0]', reason: 'must not be empty' },
  { name: 'an empty namespace', obj: ap(source({ notNamespaces: ['a', ''] })), field: 'spec.rules[0].from[0].source.notNamespaces[1]', reason: 'must not be empty' },
  {
    name: 'an invalid address in ipBlocks',
    obj: ap({ rules: [{ from: [{ source: { namespaces: ['a'] } }, { source: { ipBlocks: ['10.0.0.0/8', '10.1.0.0/16', '10.0.0.256'] } }] }] }),
    field: 'spec.rules[0].from[1].source.ipBlocks[2]',
    reason: 'must be an IPv4 or IPv6 address or CIDR range (10.0.0.0/8, fd00::/8), got "10.0.0.256"',
  },
  { name: 'an IPv4 prefix too long', obj: ap(source({ ipBlocks: ['10.0.0.0/33'] })), field: 'spec.rules[0].from[0].source.ipBlocks[0]', reason: 'must be an IPv4 or IPv6 address or CIDR range (10.0.0.0/8, fd00::/8), got "10.0.0.0/33"' },
  { name: 'an IPv6 prefix too long', obj: ap(source({ notIpBlocks: ['fd00::/129'] })), field: 'spec.rules[0].from[0].source.notIpBlocks[0]', reason: 'must be an IPv4 or IPv6 address or CIDR range (10.0.0.0/8, fd00::/8), got "fd00::/129"' },
  { name: 'a zero-padded octet', obj: ap(source({ remoteIpBlocks: ['010.0.0.1'] })), field: 'spec.rules[0].from[0].source.remoteIpBlocks[0]', reason: 'must be an IPv4 or IPv6 address or CIDR range (10.0.0.0/8, fd00::/8), got "010.0.0.1"' },
  { name: 'a host name in ipBlocks', obj: ap(source({ notRemoteIpBlocks: ['example.com'] })), field: 'spec.rules[0].from[0].source.notRemoteIpBlocks[0]', reason: 'must be an IPv4 or IPv6 address or CIDR range (10.0.0.0/8, fd00::/8), got "example.com"' },
  { name: 'a zone id', obj: ap(source({ ipBlocks: ['fe80::1%eth0'] })), field: 'spec.rules[0].from[0].source.ipBlocks[0]', reason: 'must be an IPv4 or IPv6 address or CIDR range (10.0.0.0/8, fd00::/8), got "fe80::1%eth0"' },
  { name: 'a port above 65535', obj: ap(operation({ ports: ['70000'] })), field: 'spec.rules[0].to[0].operation.ports[0]', reason: 'must be a port number from 1 to 65535, got "70000"' },
  { name: 'a port of 0', obj: ap(operation({ ports: ['0'] })), field: 'spec.rules[0].to[0].operation.ports[0]', reason: 'must be a port number from 1 to 65535, got "0"' },
  { name: 'a named port', obj: ap(operation({ notPorts: ['80', 'http'] })), field: 'spec.rules[0].to[0].operation.notPorts[1]', reason: 'must be a port number from 1 to 65535, got "http"' },
  { name: 'a negative port', obj: ap(operation({ notPorts: ['-1'] })), field: 'spec.rules[0].to[0].operation.notPorts[0]', reason: 'must be a port number from 1 to 65535, got "-1"' },
  { name: 'an unquoted port', obj: ap(operation({ ports: [8080] })), field: 'spec.rules[0].to[0].operation.ports[0]', reason: 'must be a string, got number 8080 (quote it)' },
  { name: 'an empty from', obj: ap({ rules: [{ from: [] }] }), field: 'spec.rules[0].from', reason: 'must not be empty; leave it out to match any source' },
  { name: 'an empty to', obj: ap({ rules: [{ to: [] }] }), field: 'spec.rules[0].to', reason: 'must not be empty; leave it out to match any operation' },
  { name: 'a from entry without source', obj: ap({ rules: [{ from: [{}] }] }), field: 'spec.rules[0].from[0].source', reason: 'is required' },
  { name: 'an empty source', obj: ap(source({})), field: 'spec.rules[0].from[0].source', reason: 'must not be empty; leave the from entry out to match any source' },
  { name: 'a source of empty lists', obj: ap(source({ principals: [], ipBlocks: [] })), field: 'spec.rules[0].from[0].source', reason: 'must not be empty; leave the from entry out to match any source' },
  { name: 'an empty operation', obj: ap(operation({})), field: 'spec.rules[0].to[0].operation', reason: 'must not be empty; leave the to entry out to match any operation' },
  { name: 'a misspelt source field', obj: ap(source({ notPrincipal: ['x'] })), field: 'spec.rules[0].from[0].source.notPrincipal', reason: 'is not a field of a source (known: principals, notPrincipals, namespaces, notNamespaces, ipBlocks, notIpBlocks, remoteIpBlocks, notRemoteIpBlocks, requestPrincipals, notRequestPrincipals)' },
  { name: 'a misspelt operation field', obj: ap(operation({ port: ['80'] })), field: 'spec.rules[0].to[0].operation.port', reason: 'is not a field of an operation (known: ports, notPorts, hosts, notHosts, methods, notMethods, paths, notPaths)' },
  { name: 'serviceAccounts', obj: ap(source({ serviceAccounts: ['a/b'] })), field: 'spec.rules[0].from[0].source.serviceAccounts', reason: 'is not supported by Ambit; use principals (<trust domain>/ns/<namespace>/sa/<service account>)' },
  {
    name: 'selector and targetRefs',
    obj: ap({ selector: { matchLabels: { app: 'a' } }, targetRefs: [{ kind: 'Service', name: 'a' }] }),
    field: 'spec.selector',
    reason: 'must not be set together with targetRefs: a policy attaches to workloads or to resources, not both',
  },
  { name: 'targetRef and targetRefs', obj: ap({ targetRef: { kind: 'Service', name: 'a' }, targetRefs: [] }), field: 'spec.targetRef', reason: 'must not be set together with targetRefs (targetRef is the deprecated single form)' },
  {
    name: 'an unsupported target kind',
    obj: ap({ targetRefs: [{ kind: 'ServiceEntry', group: 'networking.istio.io', name: 'a' }] }),
    field: 'spec.targetRefs[0]',
    reason: 'targets networking.istio.io ServiceEntry, which Ambit does not support; target a Service (group "") or a Gateway (group gateway.networking.k8s.io)',
  },
  {
    name: 'a Service in the wrong group',
    obj: ap({ targetRefs: [{ kind: 'Service', group: 'gateway.networking.k8s.io', name: 'a' }] }),
    field: 'spec.targetRefs[0]',
    reason: 'targets gateway.networking.k8s.io Service, which Ambit does not support; target a Service (group "") or a Gateway (group gateway.networking.k8s.io)',
  },
  { name: 'a target in another namespace', obj: ap({ targetRefs: [{ kind: 'Service', name: 'a', namespace: 'other' }] }), field: 'spec.targetRefs[0].namespace', reason: 'must be the policy\'s own namespace "team-a", got "other"' },
  { name: 'a target without name', obj: ap({ targetRefs: [{ kind: 'Service' }] }), field: 'spec.targetRefs[0].name', reason: 'is required' },
  { name: 'a target without kind', obj: ap({ targetRefs: [{ name: 'a' }] }), field: 'spec.targetRefs[0].kind', reason: 'is required' },
  { name: 'a wildcard selector', obj: ap({ selector: { matchLabels: { app: 'rev*' } } }), field: 'spec.selector.matchLabels.app', reason: 'wildcards are not supported in a selector' },
  { name: 'a selector value of the wrong type', obj: ap({ selector: { matchLabels: { version: 2 } } }), field: 'spec.selector.matchLabels.version', reason: 'must be a string, got number 2 (quote it)' },
  { name: 'matchExpressions', obj: ap({ selector: { matchExpressions: [] } }), field: 'spec.selector.matchExpressions', reason: 'is not a field of a workload selector (known: matchLabels)' },
  {
    name: 'an unknown condition key',
    obj: ap(condition({ key: 'source.foo', values: ['x'] })),
    field: 'spec.rules[0].when[0].key',
    reason: 'unknown condition key "source.foo"; the agent evaluates source.ip, remote.ip, destination.ip, destination.port, source.namespace, source.principal',
  },
  { name: 'a condition without key', obj: ap(condition({ values: ['x'] })), field: 'spec.rules[0].when[0].key', reason: 'is required' },
  { name: 'a condition without values', obj: ap(condition({ key: 'source.ip' })), field: 'spec.rules[0].when[0]', reason: 'at least one of values or notValues must be set for key source.ip' },
  { name: 'a condition address', obj: ap(condition({ key: 'source.ip', values: ['1.2.3'] })), field: 'spec.rules[0].when[0].values[0]', reason: 'must be an IPv4 or IPv6 address or CIDR range (10.0.0.0/8, fd00::/8), got "1.2.3"' },
  { name: 'a condition port', obj: ap(condition({ key: 'destination.port', notValues: ['80', 'x'] })), field: 'spec.rules[0].when[0].notValues[1]', reason: 'must be a port number from 1 to 65535, got "x"' },
  { name: 'a header key without a name', obj: ap(condition({ key: 'request.headers', values: ['x'] })), field: 'spec.rules[0].when[0].key', reason: 'request.headers must have the form request.headers[entry]' },
  { name: 'a key Istio replaced', obj: ap(condition({ key: 'destination.namespace', values: ['x'] })), field: 'spec.rules[0].when[0].key', reason: 'destination.namespace is replaced by the policy namespace (metadata.namespace)' },
  { name: 'destination labels', obj: ap(condition({ key: 'destination.labels[app]', values: ['x'] })), field: 'spec.rules[0].when[0].key', reason: 'destination.labels[app] is replaced by the workload selector (spec.selector)' },
  { name: 'an unknown condition field', obj: ap(condition({ key: 'source.ip', value: ['1.2.3.4'] })), field: 'spec.rules[0].when[0].value', reason: 'is not a field of a condition (known: key, values, notValues)' },
  { name: 'no metadata', obj: { apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy' }, field: 'metadata', reason: 'is required' },
  { name: 'no name', obj: ap({}, { name: undefined }), field: 'metadata.name', reason: 'is required' },
  { name: 'a bad namespace', obj: ap({}, { namespace: 'Team_A' }), field: 'metadata.namespace', reason: 'must be a DNS label, got "Team_A"' },
  { name: 'a bad creationTimestamp', obj: ap({}, { creationTimestamp: 'yesterday' }), field: 'metadata.creationTimestamp', reason: 'must be an RFC 3339 time, got the string "yesterday"' },
  { name: 'a bad dry-run annotation', obj: ap({}, { annotations: { 'istio.io/dry-run': 'maybe' } }), field: 'metadata.annotations.istio.io/dry-run', reason: 'must be "true" or "false", got the string "maybe"' },
  { name: 'a lower-case mTLS mode', obj: pa({ mtls: { mode: 'strict' } }), field: 'spec.mtls.mode', reason: 'must be STRICT, PERMISSIVE, DISABLE or UNSET, got "strict"', kind: 'PeerAuthentication' },
  {
    name: 'port-level mTLS on a namespace policy',
    obj: pa({ portLevelMtls: { '8080': { mode: 'STRICT' } } }),
    field: 'spec.portLevelMtls',
    reason: 'is only allowed on a policy with a selector (a workload policy), not on a namespace or mesh-wide one',
    kind: 'PeerAuthentication',
  },
  { name: 'port 0 in port-level mTLS', obj: pa({ selector: { matchLabels: { app: 'a' } }, portLevelMtls: { '0': { mode: 'STRICT' } } }), field: 'spec.portLevelMtls.0', reason: 'the key must be a port number from 1 to 65535, got "0"', kind: 'PeerAuthentication' },
  { name: 'empty port-level mTLS', obj: pa({ selector: { matchLabels: { app: 'a' } }, portLevelMtls: {} }), field: 'spec.portLevelMtls', reason: 'must have at least one port when set', kind: 'PeerAuthentication' },
  { name: 'an unknown mtls field', obj: pa({ mtls: { mode: 'STRICT', strict: true } }), field: 'spec.mtls.strict', reason: 'is not a field of an mtls setting (known: mode)', kind: 'PeerAuthentication' },
  { name: 'PeerAuthentication targetRefs', obj: pa({ targetRefs: [] }), field: 'spec.targetRefs', reason: 'is not a field of a PeerAuthentication spec (known: selector, mtls, portLevelMtls)', kind: 'PeerAuthentication' },
];

t.test('invalid policies are rejected with the object, the field path and the reason', async (t) => {
  for (const r of rejections) {
    let error: unknown;
    try {
      convert(r.obj);
    } catch (err) {
      error = err;
    }
    if (!(error instanceof InvalidObjectError)) {
      t.fail(`${r.name}: expected InvalidObjectError, got ${String(error)}`);
      continue;
    }
    const kind = r.kind ?? 'AuthorizationPolicy';
    const obj = r.obj as { metadata?: { name?: string } };
    const name = obj.metadata?.name;
    const namespace = r.field === 'metadata.namespace' ? 'default' : 'team-a';
    t.same(
      { code: error.code, kind: error.kind, field: error.field, reason: error.reason, objectName: error.objectName },
      { code: 'INVALID_OBJECT', kind, field: r.field, reason: r.reason, objectName: name },
      r.name,
    );
    if (r.field !== 'metadata' && r.field !== 'metadata.namespace') {
      t.equal(error.message, `${kind} ${namespace}/${name ?? '<unnamed>'}: field ${r.field}: ${r.reason}`, `${r.name}: message`);
    }
  }
});
