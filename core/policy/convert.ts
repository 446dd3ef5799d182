import { describe, InvalidObjectError, ObjectReader, type Labels } from '../discovery/index.js';
import { isDnsLabel, isDnsSubdomain } from '../names/index.js';
import { canonicalCidr } from '../ip/index.js';
import {
  AMBIT_SECURITY_API,
  DRY_RUN_ANNOTATION,
  ISTIO_SECURITY_APIS,
  type AuthorizationAction,
  type AuthorizationPolicy,
  type Condition,
  type ConvertedPolicy,
  type MtlsMode,
  type Operation,
  type PeerAuthentication,
  type PolicyTargetRef,
  type Rule,
  type Source,
} from './types.js';

export interface ConvertPolicyOptions {
  /** Read `security.istio.io/v1` and `v1beta1` objects as well (`--istio-api`). */
  readonly istioApi: boolean;
}

type Fields = Record<string, unknown>;

const PORT_TEXT = /^[0-9]{1,5}$/;
/** Go's strconv.ParseBool, which Istio uses for its dry-run annotation. */
const BOOL_TRUE = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);
const BOOL_FALSE = new Set(['0', 'f', 'F', 'FALSE', 'false', 'False']);

const ACTIONS: readonly string[] = ['ALLOW', 'DENY', 'AUDIT'];
const MTLS_MODES: readonly string[] = ['UNSET', 'DISABLE', 'PERMISSIVE', 'STRICT'];

const AUTHORIZATION_SPEC_FIELDS = ['selector', 'targetRef', 'targetRefs', 'action', 'rules', 'provider'];
const PEER_AUTHENTICATION_SPEC_FIELDS = ['selector', 'mtls', 'portLevelMtls'];
const SELECTOR_FIELDS = ['matchLabels'];
const TARGET_REF_FIELDS = ['group', 'kind', 'name', 'namespace'];
const RULE_FIELDS = ['from', 'to', 'when'];
const FROM_FIELDS = ['source'];
const TO_FIELDS = ['operation'];
const CONDITION_FIELDS = ['key', 'values', 'notValues'];
const MTLS_FIELDS = ['mode'];

/** The source fields, and whether the agent sees them (L4) or only a waypoint does (L7). */
const SOURCE_FIELDS: Readonly<Record<string, 'identity' | 'ip' | 'l7'>> = {
  principals: 'identity',
  notPrincipals: 'identity',
  namespaces: 'identity',
  notNamespaces: 'identity',
  ipBlocks: 'ip',
  notIpBlocks: 'ip',
  remoteIpBlocks: 'ip',
  notRemoteIpBlocks: 'ip',
  requestPrincipals: 'l7',
  notRequestPrincipals: 'l7',
};
const OPERATION_FIELDS: Readonly<Record<string, 'port' | 'l7'>> = {
  ports: 'port',
  notPorts: 'port',
  hosts: 'l7',
  notHosts: 'l7',
  methods: 'l7',
  notMethods: 'l7',
  paths: 'l7',
  notPaths: 'l7',
};
/** Fields newer Istio releases have that Ambit does not implement: named, so the message can say what to use. */
const UNSUPPORTED_SOURCE_FIELDS: Readonly<Record<string, string>> = {
  serviceAccounts: 'use principals (<trust domain>/ns/<namespace>/sa/<service account>)',
  notServiceAccounts: 'use notPrincipals (<trust domain>/ns/<namespace>/sa/<service account>)',
};

/** How a `when` key's values are read. */
type ConditionKind = 'ip' | 'port' | 'pattern' | 'l7';
/** The `when` keys the agent evaluates. `remote.ip` is the peer's address at L4, as remoteIpBlocks is. */
const L4_CONDITION_KEYS: Readonly<Record<string, ConditionKind>> = {
  'source.ip': 'ip',
  'remote.ip': 'ip',
  'destination.ip': 'ip',
  'destination.port': 'port',
  'source.namespace': 'pattern',
  'source.principal': 'pattern',
};
/** Keys Istio's schema knows that only an L7 proxy can evaluate. */
const L7_CONDITION_KEYS = new Set(['request.auth.principal', 'request.auth.audiences', 'request.auth.presenter', 'connection.sni']);
/** Keys of the form `prefix[name]`. */
const L7_CONDITION_MAP_KEYS = ['request.headers', 'request.experimental.inline.headers', 'request.auth.claims'];
const L7_CONDITION_PREFIX = 'experimental.envoy.filters.';
/** Keys Istio's schema names but rejects, with its hint. */
const REJECTED_CONDITION_KEYS: Readonly<Record<string, string>> = {
  'destination.namespace': 'is replaced by the policy namespace (metadata.namespace)',
  'destination.name': 'was only supported in v1alpha1; use selector or targetRefs',
  'destination.user': 'was only supported in v1alpha1; use selector or targetRefs',
  'source.serviceAccount': 'is not supported by Ambit; use source.principal (<trust domain>/ns/<namespace>/sa/<service account>)',
};

/** Names the object in every failure. */
class PolicyReader extends ObjectReader {
  /** Policies are namespaced: never undefined here. */
  declare readonly namespace: string;

  constructor(kind: string, namespace: string, name: string | undefined) {
    super(kind, namespace, name);
  }

  /**
   * Unknown fields are errors, not ignored: a misspelt `notPrincipal` that vanished would make a rule match more
   * than its author wrote, which widens an ALLOW.
   */
  onlyKnown(fields: Fields, field: string, known: readonly string[], what: string): void {
    for (const key of Object.keys(fields)) {
      if (!known.includes(key)) this.fail(`${field}.${key}`, `is not a field of ${what} (known: ${known.join(', ')})`);
    }
  }

  list(value: unknown, field: string): unknown[] | undefined {
    if (value === undefined || value === null) return undefined;
    if (!Array.isArray(value)) this.fail(field, `must be a list, got ${describe(value)}`);
    return value;
  }

  /** A list of non-empty strings; undefined when absent or empty (Istio reads an empty list as not set). */
  strings(value: unknown, field: string): string[] | undefined {
    const list = this.list(value, field);
    if (list === undefined || list.length === 0) return undefined;
    return list.map((entry, i) => {
      if (typeof entry !== 'string') this.fail(`${field}[${i}]`, `must be a string, got ${describe(entry)}${typeof entry === 'number' ? ' (quote it)' : ''}`);
      if (entry === '') this.fail(`${field}[${i}]`, 'must not be empty');
      return entry;
    });
  }

  ipBlocks(value: unknown, field: string): string[] | undefined {
    return this.strings(value, field)?.map((text, i) => {
      const canonical = canonicalCidr(text);
      if (canonical === undefined) {
        this.fail(`${field}[${i}]`, `must be an IPv4 or IPv6 address or CIDR range (10.0.0.0/8, fd00::/8), got ${JSON.stringify(text)}`);
      }
      return canonical;
    });
  }

  ports(value: unknown, field: string): number[] | undefined {
    return this.strings(value, field)?.map((text, i) => {
      const port = PORT_TEXT.test(text) ? Number(text) : NaN;
      if (!(port >= 1 && port <= 65535)) this.fail(`${field}[${i}]`, `must be a port number from 1 to 65535, got ${JSON.stringify(text)}`);
      return port;
    });
  }

  selector(value: unknown, field: string): Labels | undefined {
    const selector = this.record(value, field);
    if (selector === undefined) return undefined;
    this.onlyKnown(selector, field, SELECTOR_FIELDS, 'a workload selector');
    const map = this.record(selector.matchLabels, `${field}.matchLabels`);
    if (map === undefined) return undefined;
    const labels: Record<string, string> = {};
    for (const [key, labelValue] of Object.entries(map)) {
      const labelField = `${field}.matchLabels.${key}`;
      if (typeof labelValue !== 'string') this.fail(labelField, `must be a string, got ${describe(labelValue)} (quote it)`);
      if (key === '') this.fail(labelField, 'a label key must not be empty');
      if (key.includes('*') || labelValue.includes('*')) this.fail(labelField, 'wildcards are not supported in a selector');
      labels[key] = labelValue;
    }
    return Object.keys(labels).length === 0 ? undefined : Object.freeze(labels);
  }
}

/**
 * Converts one object into an AuthorizationPolicy or PeerAuthentication, or says why it is not one of ours. A
 * malformed policy throws InvalidObjectError (code INVALID_OBJECT) naming the object, the field path and the reason.
 *
 * A rejected policy is simply absent from what this returns: the caller decides what its absence means. Absence is
 * not always safe (a rejected DENY denies nothing; a rejected ALLOW can turn a workload's default deny into default
 * allow), so the store must not treat "rejected" like "deleted" without thinking about which it was.
 */
export function convertPolicyObject(obj: unknown, options: ConvertPolicyOptions): ConvertedPolicy {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
    throw new InvalidObjectError({ kind: 'Object', namespace: undefined, objectName: undefined, field: '.', reason: `must be a Kubernetes object, got ${describe(obj)}` });
  }
  const fields = obj as Fields;
  const kind = typeof fields.kind === 'string' ? fields.kind : '';
  const apiVersion = typeof fields.apiVersion === 'string' ? fields.apiVersion : '';
  if (kind === '' || apiVersion === '') {
    return { kind: 'skip', reason: `${apiVersion || '<no apiVersion>'} ${kind || '<no kind>'} is not a security policy` };
  }
  const isIstio = ISTIO_SECURITY_APIS.includes(apiVersion);
  if (apiVersion !== AMBIT_SECURITY_API && !isIstio) return { kind: 'skip', reason: `${apiVersion} ${kind} is not a security policy` };
  if (kind !== 'AuthorizationPolicy' && kind !== 'PeerAuthentication') {
    return { kind: 'skip', reason: `${apiVersion} ${kind} is not used by Ambit (only AuthorizationPolicy and PeerAuthentication)` };
  }
  if (isIstio && !options.istioApi) {
    return { kind: 'skip', reason: `${apiVersion} ${kind} is read only with --istio-api; Ambit's own group is ${AMBIT_SECURITY_API}` };
  }
  return kind === 'AuthorizationPolicy'
    ? { kind, object: convertAuthorizationPolicy(fields) }
    : { kind, object: convertPeerAuthentication(fields) };
}

function readMetadata(kind: string, fields: Fields): { reader: PolicyReader; metadata: Fields; name: string; creationTimestamp: string | undefined } {
  const unnamed: PolicyReader = new PolicyReader(kind, 'default', undefined);
  const metadata = unnamed.record(fields.metadata, 'metadata') ?? unnamed.fail('metadata', 'is required');
  const rawName = typeof metadata.name === 'string' && metadata.name !== '' ? metadata.name : undefined;
  const named: PolicyReader = new PolicyReader(kind, 'default', rawName);
  const namespace = named.string(metadata.namespace, 'metadata.namespace') || 'default';
  if (!isDnsLabel(namespace)) named.fail('metadata.namespace', `must be a DNS label, got ${JSON.stringify(namespace)}`);
  const reader: PolicyReader = new PolicyReader(kind, namespace, rawName);
  const name = reader.string(metadata.name, 'metadata.name');
  if (name === undefined || name === '') reader.fail('metadata.name', 'is required');
  if (!isDnsSubdomain(name)) reader.fail('metadata.name', `must be a DNS subdomain, got ${JSON.stringify(name)}`);
  return { reader, metadata, name, creationTimestamp: readTimestamp(reader, metadata.creationTimestamp) };
}

/** A model instance from @kubernetes/client-node carries a Date; raw JSON and YAML carry RFC 3339 text. */
function readTimestamp(reader: PolicyReader, value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  const date = value instanceof Date ? value : typeof value === 'string' ? new Date(value) : undefined;
  if (date === undefined || Number.isNaN(date.getTime())) {
    reader.fail('metadata.creationTimestamp', `must be an RFC 3339 time, got ${describe(value)}`);
  }
  return date.toISOString();
}

function readDryRun(reader: PolicyReader, metadata: Fields): boolean {
  const annotations = reader.record(metadata.annotations, 'metadata.annotations');
  const value = annotations?.[DRY_RUN_ANNOTATION];
  if (value === undefined || value === null) return false;
  const field = `metadata.annotations.${DRY_RUN_ANNOTATION}`;
  if (typeof value === 'string' && BOOL_TRUE.has(value)) return true;
  if (typeof value === 'string' && BOOL_FALSE.has(value)) return false;
  return reader.fail(field, `must be "true" or "false", got ${describe(value)}`);
}

function convertAuthorizationPolicy(fields: Fields): AuthorizationPolicy {
  const { reader, metadata, name, creationTimestamp } = readMetadata('AuthorizationPolicy', fields);
  const spec = reader.record(fields.spec, 'spec') ?? {};
  reader.onlyKnown(spec, 'spec', AUTHORIZATION_SPEC_FIELDS, 'an AuthorizationPolicy spec');

  const actionText = reader.string(spec.action, 'spec.action') ?? 'ALLOW';
  if (actionText === 'CUSTOM') {
    reader.fail('spec.action', 'CUSTOM (external authorization) is not supported by Ambit; use ALLOW, DENY or AUDIT');
  }
  if (!ACTIONS.includes(actionText)) reader.fail('spec.action', `must be ALLOW, DENY or AUDIT, got ${JSON.stringify(actionText)}`);
  const action = actionText as AuthorizationAction;
  if (spec.provider !== undefined && spec.provider !== null) reader.fail('spec.provider', 'is only for the CUSTOM action, which Ambit does not support');

  const selector = reader.selector(spec.selector, 'spec.selector');
  const targetRefs = readTargetRefs(reader, spec);
  if (spec.selector !== undefined && spec.selector !== null && targetRefs !== undefined) {
    reader.fail('spec.selector', 'must not be set together with targetRefs: a policy attaches to workloads or to resources, not both');
  }

  const rawRules = reader.list(spec.rules, 'spec.rules');
  if (action === 'DENY' && (rawRules === undefined || rawRules.length === 0)) {
    reader.fail('spec.rules', 'a DENY policy without rules never matches; add an empty rule `{}` to deny every request');
  }
  const rules = (rawRules ?? []).map((entry, i) => readRule(reader, entry, `spec.rules[${i}]`));

  return Object.freeze({
    namespace: reader.namespace,
    name,
    ...(creationTimestamp === undefined ? {} : { creationTimestamp }),
    action,
    ...(selector === undefined ? {} : { selector }),
    ...(targetRefs === undefined ? {} : { targetRefs }),
    rules: Object.freeze(rules),
    dryRun: readDryRun(reader, metadata),
  });
}

function readTargetRefs(reader: PolicyReader, spec: Fields): readonly PolicyTargetRef[] | undefined {
  const single = spec.targetRef;
  const list = reader.list(spec.targetRefs, 'spec.targetRefs');
  if (single !== undefined && single !== null && list !== undefined) {
    reader.fail('spec.targetRef', 'must not be set together with targetRefs (targetRef is the deprecated single form)');
  }
  const entries: Array<{ value: unknown; field: string }> =
    single !== undefined && single !== null ? [{ value: single, field: 'spec.targetRef' }] : (list ?? []).map((value, i) => ({ value, field: `spec.targetRefs[${i}]` }));
  if (entries.length === 0) return undefined;
  return Object.freeze(
    entries.map(({ value, field }): PolicyTargetRef => {
      const ref = reader.record(value, field) ?? reader.fail(field, 'must be an object with kind and name');
      reader.onlyKnown(ref, field, TARGET_REF_FIELDS, 'a target reference');
      const group = reader.string(ref.group, `${field}.group`) ?? '';
      const kind = reader.string(ref.kind, `${field}.kind`) ?? reader.fail(`${field}.kind`, 'is required');
      const refName = reader.string(ref.name, `${field}.name`);
      if (refName === undefined || refName === '') reader.fail(`${field}.name`, 'is required');
      const refNamespace = reader.string(ref.namespace, `${field}.namespace`);
      if (refNamespace !== undefined && refNamespace !== '' && refNamespace !== reader.namespace) {
        reader.fail(`${field}.namespace`, `must be the policy's own namespace ${JSON.stringify(reader.namespace)}, got ${JSON.stringify(refNamespace)}`);
      }
      if (kind === 'Service' && group === '') return Object.freeze({ group, kind, name: refName });
      if (kind === 'Gateway' && group === 'gateway.networking.k8s.io') return Object.freeze({ group, kind, name: refName });
      return reader.fail(
        field,
        `targets ${group === '' ? 'core' : group} ${kind}, which Ambit does not support; target a Service (group "") or a Gateway (group gateway.networking.k8s.io)`,
      );
    }),
  );
}

function readRule(reader: PolicyReader, value: unknown, field: string): Rule {
  const rule = reader.record(value, field) ?? reader.fail(field, 'must be an object (an empty rule `{}` matches every request)');
  reader.onlyKnown(rule, field, RULE_FIELDS, 'a rule');
  const l7Fields: string[] = [];

  const fromList = reader.list(rule.from, `${field}.from`);
  if (fromList !== undefined && fromList.length === 0) reader.fail(`${field}.from`, 'must not be empty; leave it out to match any source');
  const from = fromList?.map((entry, i) => readSource(reader, entry, `${field}.from[${i}]`, `from[${i}]`, l7Fields));

  const toList = reader.list(rule.to, `${field}.to`);
  if (toList !== undefined && toList.length === 0) reader.fail(`${field}.to`, 'must not be empty; leave it out to match any operation');
  const to = toList?.map((entry, i) => readOperation(reader, entry, `${field}.to[${i}]`, `to[${i}]`, l7Fields));

  const when = (reader.list(rule.when, `${field}.when`) ?? []).map((entry, i) => readCondition(reader, entry, `${field}.when[${i}]`, `when[${i}]`, l7Fields));

  return Object.freeze({
    ...(from === undefined ? {} : { from: Object.freeze(from) }),
    ...(to === undefined ? {} : { to: Object.freeze(to) }),
    when: Object.freeze(when),
    l7Fields: Object.freeze(l7Fields),
  });
}

function readSource(reader: PolicyReader, value: unknown, field: string, relative: string, l7Fields: string[]): Source {
  const entry = reader.record(value, field) ?? reader.fail(field, 'must be an object with a source');
  reader.onlyKnown(entry, field, FROM_FIELDS, 'a from entry');
  const sourceField = `${field}.source`;
  const raw = reader.record(entry.source, sourceField) ?? reader.fail(sourceField, 'is required');
  for (const key of Object.keys(raw)) {
    const hint = UNSUPPORTED_SOURCE_FIELDS[key];
    if (hint !== undefined) reader.fail(`${sourceField}.${key}`, `is not supported by Ambit; ${hint}`);
  }
  reader.onlyKnown(raw, sourceField, Object.keys(SOURCE_FIELDS), 'a source');
  const source: Record<string, readonly string[]> = {};
  for (const [key, kind] of Object.entries(SOURCE_FIELDS)) {
    const values = kind === 'ip' ? reader.ipBlocks(raw[key], `${sourceField}.${key}`) : reader.strings(raw[key], `${sourceField}.${key}`);
    if (values === undefined) continue;
    source[key] = Object.freeze(values);
    if (kind === 'l7') l7Fields.push(`${relative}.source.${key}`);
  }
  if (Object.keys(source).length === 0) reader.fail(sourceField, 'must not be empty; leave the from entry out to match any source');
  return Object.freeze(source) as Source;
}

function readOperation(reader: PolicyReader, value: unknown, field: string, relative: string, l7Fields: string[]): Operation {
  const entry = reader.record(value, field) ?? reader.fail(field, 'must be an object with an operation');
  reader.onlyKnown(entry, field, TO_FIELDS, 'a to entry');
  const operationField = `${field}.operation`;
  const raw = reader.record(entry.operation, operationField) ?? reader.fail(operationField, 'is required');
  reader.onlyKnown(raw, operationField, Object.keys(OPERATION_FIELDS), 'an operation');
  const operation: Record<string, readonly (string | number)[]> = {};
  for (const [key, kind] of Object.entries(OPERATION_FIELDS)) {
    const values = kind === 'port' ? reader.ports(raw[key], `${operationField}.${key}`) : reader.strings(raw[key], `${operationField}.${key}`);
    if (values === undefined) continue;
    operation[key] = Object.freeze(values);
    if (kind === 'l7') l7Fields.push(`${relative}.operation.${key}`);
  }
  if (Object.keys(operation).length === 0) reader.fail(operationField, 'must not be empty; leave the to entry out to match any operation');
  return Object.freeze(operation) as Operation;
}

function readCondition(reader: PolicyReader, value: unknown, field: string, relative: string, l7Fields: string[]): Condition {
  const raw = reader.record(value, field) ?? reader.fail(field, 'must be an object with key and values');
  reader.onlyKnown(raw, field, CONDITION_FIELDS, 'a condition');
  const key = reader.string(raw.key, `${field}.key`);
  if (key === undefined || key === '') reader.fail(`${field}.key`, 'is required');
  const kind = conditionKind(reader, key, `${field}.key`);
  const read = (list: unknown, listField: string): string[] | undefined => {
    const values = reader.strings(list, listField);
    if (values === undefined) return undefined;
    if (kind === 'ip') return reader.ipBlocks(values, listField);
    if (kind === 'port') return reader.ports(values, listField)?.map(String);
    return values;
  };
  const values = read(raw.values, `${field}.values`);
  const notValues = read(raw.notValues, `${field}.notValues`);
  if (values === undefined && notValues === undefined) reader.fail(field, `at least one of values or notValues must be set for key ${key}`);
  if (kind === 'l7') l7Fields.push(`${relative}.key=${key}`);
  return Object.freeze({
    key,
    ...(values === undefined ? {} : { values: Object.freeze(values) }),
    ...(notValues === undefined ? {} : { notValues: Object.freeze(notValues) }),
  });
}

function conditionKind(reader: PolicyReader, key: string, field: string): ConditionKind {
  const l4 = L4_CONDITION_KEYS[key];
  if (l4 !== undefined) return l4;
  const rejected = REJECTED_CONDITION_KEYS[key];
  if (rejected !== undefined) reader.fail(field, `${key} ${rejected}`);
  if (key.startsWith('destination.labels')) reader.fail(field, `${key} is replaced by the workload selector (spec.selector)`);
  if (L7_CONDITION_KEYS.has(key)) return 'l7';
  const mapKey = L7_CONDITION_MAP_KEYS.find((prefix) => key.startsWith(prefix));
  if (mapKey !== undefined || key.startsWith(L7_CONDITION_PREFIX)) {
    const open = key.indexOf('[');
    if (!key.endsWith(']') || open <= 0 || open >= key.length - 2) reader.fail(field, `${key} must have the form ${mapKey ?? 'name'}[entry]`);
    if (mapKey !== undefined && open !== mapKey.length) reader.fail(field, `unknown condition key ${JSON.stringify(key)}`);
    return 'l7';
  }
  return reader.fail(field, `unknown condition key ${JSON.stringify(key)}; the agent evaluates ${Object.keys(L4_CONDITION_KEYS).join(', ')}`);
}

function convertPeerAuthentication(fields: Fields): PeerAuthentication {
  const { reader, name, creationTimestamp } = readMetadata('PeerAuthentication', fields);
  const spec = reader.record(fields.spec, 'spec') ?? {};
  reader.onlyKnown(spec, 'spec', PEER_AUTHENTICATION_SPEC_FIELDS, 'a PeerAuthentication spec');
  const selector = reader.selector(spec.selector, 'spec.selector');
  const mtls = reader.record(spec.mtls, 'spec.mtls');
  let mtlsMode: MtlsMode = 'UNSET';
  if (mtls !== undefined) {
    reader.onlyKnown(mtls, 'spec.mtls', MTLS_FIELDS, 'an mtls setting');
    mtlsMode = readMode(reader, mtls.mode, 'spec.mtls.mode');
  }

  const portLevelMtls = new Map<number, MtlsMode>();
  const ports = reader.record(spec.portLevelMtls, 'spec.portLevelMtls');
  if (ports !== undefined) {
    if (selector === undefined) {
      reader.fail('spec.portLevelMtls', 'is only allowed on a policy with a selector (a workload policy), not on a namespace or mesh-wide one');
    }
    if (Object.keys(ports).length === 0) reader.fail('spec.portLevelMtls', 'must have at least one port when set');
    for (const [portText, entry] of Object.entries(ports)) {
      const field = `spec.portLevelMtls.${portText}`;
      const port = PORT_TEXT.test(portText) ? Number(portText) : NaN;
      if (!(port >= 1 && port <= 65535)) reader.fail(field, `the key must be a port number from 1 to 65535, got ${JSON.stringify(portText)}`);
      const setting = reader.record(entry, field) ?? reader.fail(field, 'must be an object with a mode');
      reader.onlyKnown(setting, field, MTLS_FIELDS, 'an mtls setting');
      portLevelMtls.set(port, readMode(reader, setting.mode, `${field}.mode`));
    }
  }

  return Object.freeze({
    namespace: reader.namespace,
    name,
    ...(creationTimestamp === undefined ? {} : { creationTimestamp }),
    ...(selector === undefined ? {} : { selector }),
    mtlsMode,
    portLevelMtls: new ReadonlyPortMap(portLevelMtls),
  });
}

function readMode(reader: PolicyReader, value: unknown, field: string): MtlsMode {
  const mode = reader.string(value, field) ?? 'UNSET';
  if (!MTLS_MODES.includes(mode)) reader.fail(field, `must be STRICT, PERMISSIVE, DISABLE or UNSET, got ${JSON.stringify(mode)}`);
  return mode as MtlsMode;
}

/** A Map that cannot be changed after conversion: Object.freeze does not reach a Map's entries. */
class ReadonlyPortMap extends Map<number, MtlsMode> {
  constructor(entries: ReadonlyMap<number, MtlsMode>) {
    super();
    for (const [port, mode] of entries) Map.prototype.set.call(this, port, mode);
    Object.freeze(this);
  }
  override set(): this {
    throw new TypeError('portLevelMtls is read-only');
  }
  override delete(): boolean {
    throw new TypeError('portLevelMtls is read-only');
  }
  override clear(): void {
    throw new TypeError('portLevelMtls is read-only');
  }
}

