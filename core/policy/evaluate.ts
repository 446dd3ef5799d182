import { AmbitError } from '../errors/index.js';
import { selectorMatches, type Labels } from '../discovery/index.js';
import { parseCidr, parseIp, rangeContains, type IpAddress, type IpRange } from '../ip/index.js';
import type { AuthorizationAction, AuthorizationPolicy, Condition, MtlsMode, Operation, PeerAuthentication, Rule, Source } from './types.js';

/** One L4 connection as the destination agent sees it, before it answers the CONNECT (or dials the upstream). */
export interface ConnectionAttributes {
  readonly source: {
    readonly ip: string;
    /** The peer's SPIFFE ID without `spiffe://` (`cluster.local/ns/x/sa/y`), as Istio writes principals; undefined for plaintext. */
    readonly principal?: string;
    /** Undefined for plaintext; when only the principal is given, its `/ns/<namespace>/` segment. */
    readonly namespace?: string;
  };
  readonly destination: {
    readonly ip: string;
    readonly port: number;
    readonly workload: { readonly namespace: string; readonly name: string; readonly labels: Labels };
    /** The Services that select the workload, for policies with targetRefs. */
    readonly services?: ReadonlyArray<{ readonly namespace: string; readonly name: string }>;
  };
}

/**
 * Stable, machine-matchable: metrics label and access-log field.
 * - `denied_by_policy`: a DENY policy matched (`policy`, `rule` name it);
 * - `allowed_by_policy`: an ALLOW policy matched;
 * - `not_allowed_by_any_policy`: ALLOW policies apply to the workload and none matched (default deny);
 * - `no_policy`: no ALLOW policy applies and no DENY matched (default allow);
 * - `invalid_connection`: the attributes cannot be evaluated (an unparseable address or port); fails closed.
 */
export type PolicyReason = 'denied_by_policy' | 'allowed_by_policy' | 'not_allowed_by_any_policy' | 'no_policy' | 'invalid_connection';

/** A rule the agent decided without its L7 part: an ALLOW one never matches, a DENY or AUDIT one matched on its L4 part. */
export interface L7Fallback {
  readonly policy: string;
  readonly rule: number;
  readonly action: AuthorizationAction;
  readonly fields: readonly string[];
}

export interface PolicyDecision {
  readonly decision: 'ALLOW' | 'DENY';
  /** `namespace/name` of the policy that decided, null for a default. */
  readonly policy: string | null;
  readonly rule: number | null;
  readonly reason: PolicyReason;
  /** Every AUDIT policy that matched, with its first matching rule. */
  readonly audit: ReadonlyArray<{ readonly policy: string; readonly rule: number }>;
  /** Every rule of the policies applying to the workload that uses attributes only a waypoint can see. */
  readonly l7Fallbacks: readonly L7Fallback[];
}

export interface PolicySetOptions {
  /** Policies in this namespace apply mesh-wide (Ambit's default `ambit-system`, Istio's `istio-system`). */
  readonly rootNamespace: string;
}

/** A parsed address: IPv4 (and IPv4-mapped IPv6) as family 4 in `w3`; IPv6 as four 32-bit words. */
interface Context {
  readonly srcIp: IpAddress;
  readonly dstIp: IpAddress;
  readonly port: number;
  readonly principal: string | undefined;
  readonly namespace: string | undefined;
}

type Predicate = (ctx: Context) => boolean;

interface CompiledRule {
  readonly index: number;
  readonly matches: Predicate;
}

interface CompiledPolicy {
  readonly key: string;
  readonly name: string;
  readonly action: AuthorizationAction;
  readonly selector: Labels | undefined;
  /** Names of the Services (in the policy's namespace) the policy targets; undefined without targetRefs. */
  readonly services: ReadonlySet<string> | undefined;
  readonly namespace: string;
  readonly rules: readonly CompiledRule[];
  readonly l7Fallbacks: readonly L7Fallback[];
}

/**
 * The AuthorizationPolicies of the store, compiled and indexed by namespace so that a decision only looks at the
 * root namespace and the destination's namespace, however many policies the mesh has. Immutable: build a new one
 * when the policies change.
 */
export class PolicySet {
  readonly rootNamespace: string;
  /** The policies as given (dry-run and Gateway-only ones included), for dumps and `ambit authz check`. */
  readonly policies: readonly AuthorizationPolicy[];
  readonly #byNamespace: ReadonlyMap<string, readonly CompiledPolicy[]>;

  constructor(policies: readonly AuthorizationPolicy[], options: PolicySetOptions) {
    this.rootNamespace = options.rootNamespace;
    this.policies = Object.freeze([...policies]);
    const byNamespace = new Map<string, CompiledPolicy[]>();
    const seen = new Set<string>();
    for (const policy of policies) {
      const key = `${policy.namespace}/${policy.name}`;
      // Two versions of one object would make the decision depend on which came first.
      if (seen.has(key)) throw new AmbitError('DUPLICATE_POLICY', `AuthorizationPolicy ${key} is given twice; the store keeps one version of each object`);
      seen.add(key);
      const compiled = compilePolicy(policy, key);
      if (compiled === undefined) continue;
      const list = byNamespace.get(policy.namespace);
      if (list === undefined) byNamespace.set(policy.namespace, [compiled]);
      else list.push(compiled);
    }
    // A canonical order makes the decision, and the policy it names, independent of the order of the input.
    for (const list of byNamespace.values()) list.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    this.#byNamespace = byNamespace;
  }

  /**
   * For evaluateConnection: mesh-wide policies first, then the workload's namespace, which is also the order in
   * which a match is reported.
   */
  scopes(namespace: string): ReadonlyArray<readonly CompiledPolicy[]> {
    const mesh = this.#byNamespace.get(this.rootNamespace);
    if (namespace === this.rootNamespace) return mesh === undefined ? [] : [mesh];
    const local = this.#byNamespace.get(namespace);
    if (mesh === undefined) return local === undefined ? [] : [local];
    return local === undefined ? [mesh] : [mesh, local];
  }
}

export function buildPolicySet(policies: readonly AuthorizationPolicy[], options: PolicySetOptions): PolicySet {
  return new PolicySet(policies, options);
}

const NO_AUDIT: PolicyDecision['audit'] = Object.freeze([]);
const NO_FALLBACKS: readonly L7Fallback[] = Object.freeze([]);

/**
 * The authorization decision for one connection, as Istio documents it: a matching DENY policy denies; otherwise,
 * when ALLOW policies apply to the workload, one of them must match; otherwise the connection is allowed. AUDIT
 * policies are reported and never change the decision. Pure: `ambit authz check` and the agent call the same code.
 */
export function evaluateConnection(policies: PolicySet, request: ConnectionAttributes): PolicyDecision {
  const { source, destination } = request;
  const srcIp = parseIp(source.ip);
  const dstIp = parseIp(destination.ip);
  if (srcIp === undefined || dstIp === undefined || !Number.isInteger(destination.port) || destination.port < 1 || destination.port > 65535) {
    return { decision: 'DENY', policy: null, rule: null, reason: 'invalid_connection', audit: NO_AUDIT, l7Fallbacks: NO_FALLBACKS };
  }
  const principal = source.principal === '' ? undefined : source.principal;
  const namespace = source.namespace === undefined || source.namespace === '' ? namespaceOfPrincipal(principal) : source.namespace;
  const ctx: Context = { srcIp, dstIp, port: destination.port, principal, namespace };

  let denied: CompiledPolicy | undefined;
  let deniedRule = -1;
  let allowed: CompiledPolicy | undefined;
  let allowedRule = -1;
  let allowApplies = false;
  let audit: Array<{ policy: string; rule: number }> | undefined;
  let l7Fallbacks: L7Fallback[] | undefined;

  for (const scope of policies.scopes(destination.workload.namespace)) {
    for (const policy of scope) {
      if (!applies(policy, destination)) continue;
      if (policy.l7Fallbacks.length > 0) (l7Fallbacks ??= []).push(...policy.l7Fallbacks);
      if (policy.action === 'ALLOW') {
        allowApplies = true;
        if (allowed !== undefined || denied !== undefined) continue;
        const rule = firstMatch(policy, ctx);
        if (rule >= 0) {
          allowed = policy;
          allowedRule = rule;
        }
      } else if (policy.action === 'DENY') {
        if (denied !== undefined) continue;
        const rule = firstMatch(policy, ctx);
        if (rule >= 0) {
          denied = policy;
          deniedRule = rule;
        }
      } else {
        const rule = firstMatch(policy, ctx);
        if (rule >= 0) (audit ??= []).push({ policy: policy.key, rule });
      }
    }
  }

  const reported = { audit: audit ?? NO_AUDIT, l7Fallbacks: l7Fallbacks ?? NO_FALLBACKS };
  if (denied !== undefined) return { decision: 'DENY', policy: denied.key, rule: deniedRule, reason: 'denied_by_policy', ...reported };
  if (allowed !== undefined) return { decision: 'ALLOW', policy: allowed.key, rule: allowedRule, reason: 'allowed_by_policy', ...reported };
  if (allowApplies) return { decision: 'DENY', policy: null, rule: null, reason: 'not_allowed_by_any_policy', ...reported };
  return { decision: 'ALLOW', policy: null, rule: null, reason: 'no_policy', ...reported };
}

function applies(policy: CompiledPolicy, destination: ConnectionAttributes['destination']): boolean {
  if (policy.services !== undefined) {
    const services = destination.services;
    if (services === undefined) return false;
    for (const service of services) {
      if (service.namespace === policy.namespace && policy.services.has(service.name)) return true;
    }
    return false;
  }
  if (policy.selector !== undefined) {
    return selectorMatches(policy.selector, destination.workload.labels);
  }
  return true;
}

function firstMatch(policy: CompiledPolicy, ctx: Context): number {
  for (const rule of policy.rules) {
    if (rule.matches(ctx)) return rule.index;
  }
  return -1;
}

/** Compiles a policy, or undefined when it never applies at the agent (dry-run, or attached to Gateways only). */
function compilePolicy(policy: AuthorizationPolicy, key: string): CompiledPolicy | undefined {
  if (policy.dryRun) return undefined;
  let services: Set<string> | undefined;
  if (policy.targetRefs !== undefined && policy.targetRefs.length > 0) {
    services = new Set(policy.targetRefs.filter((ref) => ref.kind === 'Service').map((ref) => ref.name));
    if (services.size === 0) return undefined;
  }
  const rules: CompiledRule[] = [];
  const l7Fallbacks: L7Fallback[] = [];
  policy.rules.forEach((rule, index) => {
    if (rule.l7Fields.length > 0) l7Fallbacks.push(Object.freeze({ policy: key, rule: index, action: policy.action, fields: rule.l7Fields }));
    // Fail closed: an ALLOW that needs what the agent cannot see must not allow; a DENY or AUDIT keeps its L4 part.
    if (policy.action === 'ALLOW' && rule.l7Fields.length > 0) return;
    rules.push({ index, matches: compileRule(rule) });
  });
  return {
    key,
    name: policy.name,
    action: policy.action,
    selector: policy.selector !== undefined && Object.keys(policy.selector).length > 0 ? policy.selector : undefined,
    services,
    namespace: policy.namespace,
    rules,
    l7Fallbacks,
  };
}

function compileRule(rule: Rule): Predicate {
  const checks: Predicate[] = [];
  if (rule.from !== undefined) {
    const sources = rule.from.map(compileSource);
    // A source made only of L7 fields has no L4 part: it matches everything at the agent.
    if (!sources.includes(undefined)) checks.push(anyOf(sources as Predicate[]));
  }
  if (rule.to !== undefined) {
    const operations = rule.to.map(compileOperation);
    if (!operations.includes(undefined)) checks.push(anyOf(operations as Predicate[]));
  }
  for (const condition of rule.when) {
    const check = compileCondition(condition);
    if (check !== undefined) checks.push(check);
  }
  return allOf(checks);
}

/** The L4 part of a source, or undefined when it has none. */
function compileSource(source: Source): Predicate | undefined {
  const checks: Predicate[] = [];
  const identity = (values: readonly string[] | undefined, negate: boolean, pick: (ctx: Context) => string | undefined) => {
    if (values === undefined) return;
    const patterns = compilePatterns(values);
    checks.push(negate ? (ctx) => !matchPatterns(patterns, pick(ctx)) : (ctx) => matchPatterns(patterns, pick(ctx)));
  };
  identity(source.principals, false, (ctx) => ctx.principal);
  identity(source.notPrincipals, true, (ctx) => ctx.principal);
  identity(source.namespaces, false, (ctx) => ctx.namespace);
  identity(source.notNamespaces, true, (ctx) => ctx.namespace);
  // At L4 the only client the agent knows is the peer: remoteIpBlocks has no X-Forwarded-For to read.
  for (const [values, negate] of [
    [source.ipBlocks, false],
    [source.notIpBlocks, true],
    [source.remoteIpBlocks, false],
    [source.notRemoteIpBlocks, true],
  ] as const) {
    if (values === undefined) continue;
    const cidrs = values.map(parseCidrStrict);
    checks.push(negate ? (ctx) => !matchCidrs(cidrs, ctx.srcIp) : (ctx) => matchCidrs(cidrs, ctx.srcIp));
  }
  return checks.length === 0 ? undefined : allOf(checks);
}

function compileOperation(operation: Operation): Predicate | undefined {
  const checks: Predicate[] = [];
  if (operation.ports !== undefined) {
    const ports = new Set(operation.ports);
    checks.push((ctx) => ports.has(ctx.port));
  }
  if (operation.notPorts !== undefined) {
    const ports = new Set(operation.notPorts);
    checks.push((ctx) => !ports.has(ctx.port));
  }
  return checks.length === 0 ? undefined : allOf(checks);
}

/** The check of one L4 condition, or undefined for an L7 key (treated as matching: only DENY and AUDIT get here). */
function compileCondition(condition: Condition): Predicate | undefined {
  let matcher: ((values: readonly string[]) => Predicate) | undefined;
  switch (condition.key) {
    case 'source.ip':
    case 'remote.ip':
      matcher = (values) => {
        const cidrs = values.map(parseCidrStrict);
        return (ctx) => matchCidrs(cidrs, ctx.srcIp);
      };
      break;
    case 'destination.ip':
      matcher = (values) => {
        const cidrs = values.map(parseCidrStrict);
        return (ctx) => matchCidrs(cidrs, ctx.dstIp);
      };
      break;
    case 'destination.port':
      matcher = (values) => {
        const ports = new Set(values.map(Number));
        return (ctx) => ports.has(ctx.port);
      };
      break;
    case 'source.principal':
      matcher = (values) => {
        const patterns = compilePatterns(values);
        return (ctx) => matchPatterns(patterns, ctx.principal);
      };
      break;
    case 'source.namespace':
      matcher = (values) => {
        const patterns = compilePatterns(values);
        return (ctx) => matchPatterns(patterns, ctx.namespace);
      };
      break;
    default:
      return undefined;
  }
  const checks: Predicate[] = [];
  if (condition.values !== undefined) checks.push(matcher(condition.values));
  if (condition.notValues !== undefined) {
    const positive = matcher(condition.notValues);
    checks.push((ctx) => !positive(ctx));
  }
  return allOf(checks);
}

function allOf(checks: readonly Predicate[]): Predicate {
  if (checks.length === 0) return () => true;
  if (checks.length === 1) return checks[0] as Predicate;
  return (ctx) => {
    for (const check of checks) if (!check(ctx)) return false;
    return true;
  };
}

function anyOf(checks: readonly Predicate[]): Predicate {
  if (checks.length === 1) return checks[0] as Predicate;
  return (ctx) => {
    for (const check of checks) if (check(ctx)) return true;
    return false;
  };
}

/** Istio's string match: `*` any present value, `*x` suffix, `x*` prefix, otherwise exact. */
interface Patterns {
  readonly any: boolean;
  readonly exact: ReadonlySet<string>;
  readonly prefixes: readonly string[];
  readonly suffixes: readonly string[];
}

function compilePatterns(values: readonly string[]): Patterns {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  const suffixes: string[] = [];
  let any = false;
  for (const value of values) {
    if (value === '*') any = true;
    else if (value.startsWith('*')) suffixes.push(value.slice(1));
    else if (value.endsWith('*')) prefixes.push(value.slice(0, -1));
    else exact.add(value);
  }
  return { any, exact, prefixes, suffixes };
}

/** No value (plaintext: no principal, no namespace) matches no pattern, not even `*`. */
function matchPatterns(patterns: Patterns, value: string | undefined): boolean {
  if (value === undefined) return false;
  if (patterns.any || patterns.exact.has(value)) return true;
  for (const prefix of patterns.prefixes) if (value.startsWith(prefix)) return true;
  for (const suffix of patterns.suffixes) if (value.endsWith(suffix)) return true;
  return false;
}

const PRINCIPAL_NAMESPACE = /\/ns\/([^/]+)\/sa\//;

function namespaceOfPrincipal(principal: string | undefined): string | undefined {
  if (principal === undefined) return undefined;
  return PRINCIPAL_NAMESPACE.exec(principal)?.[1];
}

function matchCidrs(cidrs: readonly IpRange[], ip: IpAddress): boolean {
  for (const range of cidrs) {
    if (rangeContains(range, ip)) return true;
  }
  return false;
}

function parseCidrStrict(text: string): IpRange {
  const cidr = parseCidr(text);
  // Converted policies only hold ranges canonicalCidr accepted; a hand-built one must not be guessed at (a range
  // that silently never matched would widen a notIpBlocks ALLOW).
  if (cidr === undefined) throw new AmbitError('INVALID_POLICY', `${JSON.stringify(text)} is not an address or CIDR range; convert policies with convertPolicyObject`);
  return cidr;
}

export type EffectiveMtlsMode = 'STRICT' | 'PERMISSIVE';

/**
 * - `workload_port`: the port-level setting of the workload policy;
 * - `workload`, `namespace`, `mesh`: the mode of the narrowest policy that sets one (UNSET inherits);
 * - `default`: no policy sets a mode; PERMISSIVE.
 */
export type MtlsReason = 'workload_port' | 'workload' | 'namespace' | 'mesh' | 'default';

export interface MtlsDecision {
  readonly mode: EffectiveMtlsMode;
  /** `namespace/name` of the policy whose setting decided, null for the default. */
  readonly policy: string | null;
  readonly reason: MtlsReason;
}

/**
 * The mTLS mode of one destination port, as Istio composes PeerAuthentications: the workload policy (selector,
 * in the workload's namespace) over the namespace policy over the mesh policy (root namespace, no selector); UNSET
 * inherits from the wider scope; when two policies share a scope the oldest wins (creationTimestamp, then name).
 * A selector policy in the root namespace is ignored, as Istio does. DISABLE is PERMISSIVE here: the agent always
 * accepts HBONE, and refusing plaintext is the only thing STRICT changes.
 */
export function resolveMtlsMode(
  peerAuthentications: readonly PeerAuthentication[],
  workload: { readonly namespace: string; readonly labels: Labels },
  port: number,
  options: PolicySetOptions,
): MtlsDecision {
  let mesh: PeerAuthentication | undefined;
  let namespace: PeerAuthentication | undefined;
  let workloadPolicy: PeerAuthentication | undefined;
  for (const pa of peerAuthentications) {
    if (pa.selector === undefined) {
      if (pa.namespace === options.rootNamespace) mesh = older(mesh, pa);
      else if (pa.namespace === workload.namespace) namespace = older(namespace, pa);
    } else if (pa.namespace === workload.namespace && pa.namespace !== options.rootNamespace && selectorMatches(pa.selector, workload.labels)) {
      workloadPolicy = older(workloadPolicy, pa);
    }
  }
  let decision: MtlsDecision = { mode: 'PERMISSIVE', policy: null, reason: 'default' };
  const apply = (pa: PeerAuthentication | undefined, mode: MtlsMode | undefined, reason: MtlsReason) => {
    if (pa === undefined || mode === undefined || mode === 'UNSET') return;
    decision = { mode: mode === 'STRICT' ? 'STRICT' : 'PERMISSIVE', policy: `${pa.namespace}/${pa.name}`, reason };
  };
  apply(mesh, mesh?.mtlsMode, 'mesh');
  apply(namespace, namespace?.mtlsMode, 'namespace');
  apply(workloadPolicy, workloadPolicy?.mtlsMode, 'workload');
  apply(workloadPolicy, workloadPolicy?.portLevelMtls.get(port), 'workload_port');
  return decision;
}

function older(current: PeerAuthentication | undefined, candidate: PeerAuthentication): PeerAuthentication {
  if (current === undefined) return candidate;
  const a = timeOf(candidate);
  const b = timeOf(current);
  if (a !== b) return a < b ? candidate : current;
  return candidate.name < current.name ? candidate : current;
}

/** Objects without a creationTimestamp (hand-written files) count as newer than any that has one. */
function timeOf(pa: PeerAuthentication): number {
  return pa.creationTimestamp === undefined ? Number.POSITIVE_INFINITY : Date.parse(pa.creationTimestamp);
}
