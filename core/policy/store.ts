import { EventEmitter } from 'node:events';
import type { InvalidObjectError, LocalCollection, Labels, ServiceRef, Workload } from '../discovery/index.js';
import { withoutSpiffeScheme } from '../identity/index.js';
import { silentLogger, type Logger } from '../log/index.js';
import { DEFAULT_ROOT_NAMESPACE } from '../discovery/index.js';
import { convertPolicyObject } from './convert.js';
import { buildPolicySet, evaluateConnection, resolveMtlsMode, type ConnectionAttributes, type L7Fallback, type MtlsDecision, type PolicySet } from './evaluate.js';
import type { AuthorizationPolicy, PeerAuthentication } from './types.js';

/** Policies in the root namespace apply to the whole mesh (Istio's is `istio-system`). */
export { DEFAULT_ROOT_NAMESPACE };

export interface PolicyStoreOptions {
  rootNamespace?: string;
  /** Read `security.istio.io` objects too (`--istio-api`). */
  istioApi?: boolean;
  log?: Logger;
}

/** A policy as the store keeps it; `invalid` holds the rejection when the object was replaced by its fail-closed form. */
export type StoredPolicy =
  | { readonly kind: 'AuthorizationPolicy'; readonly object: AuthorizationPolicy; readonly invalid?: string }
  | { readonly kind: 'PeerAuthentication'; readonly object: PeerAuthentication; readonly invalid?: string };

/**
 * What the destination knows about a connection, in the terms of the mesh: who the peer proved to be (SPIFFE ID,
 * or nothing for plaintext), from which address, to which workload and port. The agent fills it from the socket and
 * TLS session; `ambit authz check` from its flags; both decide through `decideFacts`.
 */
export interface ConnectionFacts {
  readonly sourceIp: string;
  /** The peer's SPIFFE ID (`spiffe://…` or Istio's principal form); undefined for plaintext or when unknown. */
  readonly sourceIdentity?: string;
  /** Only when there is an identity whose principal is not known, just its namespace (`authz check --from-namespace`). */
  readonly sourceNamespace?: string;
  readonly plaintext: boolean;
  readonly destination: Pick<Workload, 'namespace' | 'name' | 'labels'>;
  readonly target: { readonly host: string; readonly port: number };
}

/** One connection at its destination: the policy attributes, and whether it came without mTLS. */
export interface InboundAttributes extends ConnectionAttributes {
  readonly plaintext: boolean;
}

/**
 * The destination's answer for one connection, PeerAuthentication and AuthorizationPolicy together: what the agent
 * enforces and what `ambit authz check` prints, from the same function.
 * - reason `mtls_strict`: plaintext refused by a STRICT PeerAuthentication (`policy` names it);
 * - reason `invalid_policy`: decided by a policy whose object is invalid, which stands as deny-all (fail closed);
 * - otherwise the AuthorizationPolicy reasons of `evaluateConnection`.
 * `policy` is `namespace/name`, or `default` when no policy decided.
 */
export interface InboundDecision {
  readonly decision: 'ALLOW' | 'DENY';
  readonly policy: string;
  readonly rule: number | null;
  readonly reason: string;
  readonly mtls: MtlsDecision | undefined;
  readonly audit: ReadonlyArray<{ readonly policy: string; readonly rule: number }>;
  readonly l7Fallbacks: readonly L7Fallback[];
}

/**
 * The AuthorizationPolicies and PeerAuthentications of the cluster, fed by a source (the local folder through
 * `collection()`), indexed for evaluation, and answering `decide`. Emits `'change'` when the policies changed.
 *
 * An invalid object is rejected with a message naming object, field and reason, and never widens access: an
 * invalid AuthorizationPolicy stands as a DENY of everything in its scope (its namespace, narrowed by its selector
 * when that much could be read), an invalid PeerAuthentication as STRICT, until it is fixed.
 */
export class PolicyStore extends EventEmitter {
  readonly rootNamespace: string;
  readonly istioApi: boolean;
  readonly #log: Logger;
  #set: PolicySet;
  #peerAuthentications: readonly PeerAuthentication[] = [];
  #invalid = new Map<string, string>();
  #fingerprint = '';
  #version = 0;
  #hasTargetRefs = false;
  /** Policies whose L7 rules have been explained since the last change: said once per policy, not per connection. */
  #explained = new Set<string>();

  constructor(options: PolicyStoreOptions = {}) {
    super();
    this.rootNamespace = options.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
    this.istioApi = options.istioApi ?? false;
    this.#log = options.log ?? silentLogger();
    this.#set = buildPolicySet([], { rootNamespace: this.rootNamespace });
  }

  get version(): number {
    return this.#version;
  }

  get authorizationPolicies(): readonly AuthorizationPolicy[] {
    return this.#set.policies;
  }

  get peerAuthentications(): readonly PeerAuthentication[] {
    return this.#peerAuthentications;
  }

  /** Whether any AuthorizationPolicy attaches by targetRefs (then a decision needs the workload's Services). */
  get hasTargetRefs(): boolean {
    return this.#hasTargetRefs;
  }

  /** The invalid policies standing in their fail-closed form: `kind ns/name` → why. */
  get invalid(): ReadonlyMap<string, string> {
    return this.#invalid;
  }

  /** How the local source hands policy objects to this store. */
  collection(): LocalCollection<StoredPolicy> {
    return {
      convert: (object) => {
        const converted = convertPolicyObject(object, { istioApi: this.istioApi });
        if (converted.kind === 'skip') return undefined;
        return { key: `${converted.kind} ${converted.object.namespace}/${converted.object.name}`, object: converted };
      },
      rejected: (error, object) => this.#failClosed(error, object),
      replaceAll: (objects) => this.replaceAll(objects),
    };
  }

  replaceAll(policies: readonly StoredPolicy[]): void {
    const fingerprint = JSON.stringify(policies, (_key, value: unknown) => (value instanceof Map ? [...value] : value));
    if (fingerprint === this.#fingerprint) return;
    this.#fingerprint = fingerprint;
    const authz: AuthorizationPolicy[] = [];
    const peer: PeerAuthentication[] = [];
    const invalid = new Map<string, string>();
    for (const stored of policies) {
      if (stored.kind === 'AuthorizationPolicy') authz.push(stored.object);
      else peer.push(stored.object);
      if (stored.invalid !== undefined) invalid.set(`${stored.object.namespace}/${stored.object.name}`, stored.invalid);
    }
    this.#set = buildPolicySet(authz, { rootNamespace: this.rootNamespace });
    this.#hasTargetRefs = authz.some((p) => p.targetRefs !== undefined && p.targetRefs.length > 0);
    this.#peerAuthentications = Object.freeze(peer);
    this.#invalid = invalid;
    this.#explained = new Set();
    this.#version += 1;
    this.#log.info({ authorizationPolicies: authz.length, peerAuthentications: peer.length, invalid: invalid.size, version: this.#version }, 'policies updated');
    this.emit('change', this.#version);
  }

  /**
   * `decide` for the facts of a connection. `servicesOf` names the Services the destination is an endpoint of (the
   * discovery store's `servicesOf`: from EndpointSlices, else selectors); it is asked only when a policy uses
   * targetRefs.
   */
  decideFacts(facts: ConnectionFacts, servicesOf: (workload: ConnectionFacts['destination']) => readonly ServiceRef[]): InboundDecision {
    const principal = principalOf(facts.sourceIdentity);
    const source = facts.plaintext
      ? { ip: facts.sourceIp }
      : { ip: facts.sourceIp, ...(principal === undefined ? {} : { principal }), ...(facts.sourceNamespace === undefined ? {} : { namespace: facts.sourceNamespace }) };
    const { destination, target } = facts;
    return this.decide({
      plaintext: facts.plaintext,
      source,
      destination: {
        ip: target.host,
        port: target.port,
        workload: { namespace: destination.namespace, name: destination.name, labels: destination.labels },
        ...(this.#hasTargetRefs ? { services: servicesOf(destination) } : {}),
      },
    });
  }

  /** PeerAuthentication first (plaintext only), then AuthorizationPolicy. */
  decide(attributes: InboundAttributes): InboundDecision {
    const { workload, port } = attributes.destination;
    let mtls: MtlsDecision | undefined;
    if (attributes.plaintext) {
      mtls = resolveMtlsMode(this.#peerAuthentications, workload, port, { rootNamespace: this.rootNamespace });
      if (mtls.mode === 'STRICT') {
        const policy = mtls.policy ?? 'default';
        return { decision: 'DENY', policy, rule: null, reason: this.#invalid.has(policy) ? 'invalid_policy' : 'mtls_strict', mtls, audit: [], l7Fallbacks: [] };
      }
    }
    const decision = evaluateConnection(this.#set, attributes);
    for (const fallback of decision.l7Fallbacks) this.#explain(fallback);
    const policy = decision.policy ?? 'default';
    const reason = decision.decision === 'DENY' && this.#invalid.has(policy) ? 'invalid_policy' : decision.reason;
    return { decision: decision.decision, policy, rule: decision.rule, reason, mtls, audit: decision.audit, l7Fallbacks: decision.l7Fallbacks };
  }

  #explain(fallback: L7Fallback): void {
    if (this.#explained.has(fallback.policy)) return;
    this.#explained.add(fallback.policy);
    this.#log.warn(
      { policy: fallback.policy, rule: fallback.rule, action: fallback.action, fields: fallback.fields },
      fallback.action === 'ALLOW'
        ? 'an ALLOW rule uses attributes only a waypoint sees; at the agent it never matches (fail closed)'
        : `a ${fallback.action} rule uses attributes only a waypoint sees; at the agent its L4 part alone decides (fail closed)`,
    );
  }

  /** An invalid policy object still says something: it stands, failing closed, in the scope it can be read for. */
  #failClosed(error: InvalidObjectError, object: unknown): { key: string; object: StoredPolicy } | undefined {
    if (error.kind !== 'AuthorizationPolicy' && error.kind !== 'PeerAuthentication') return undefined;
    const fields = typeof object === 'object' && object !== null ? (object as Record<string, unknown>) : {};
    const apiVersion = typeof fields.apiVersion === 'string' ? fields.apiVersion : '';
    // An object of an API this store does not read (Istio's without --istio-api) is not ours to enforce.
    if (!apiVersion.startsWith('security.ambit.dev/') && !(this.istioApi && apiVersion.startsWith('security.istio.io/'))) return undefined;
    const namespace = error.namespace ?? 'default';
    const name = error.objectName ?? '<unnamed>';
    const selector = readableSelector(fields.spec);
    const why = `invalid (${error.field}: ${error.reason}); standing as ${error.kind === 'AuthorizationPolicy' ? 'deny-all' : 'STRICT'} in its scope until fixed`;
    this.#log.error({ kind: error.kind, policy: `${namespace}/${name}`, field: error.field, reason: error.reason }, `${error.kind} ${namespace}/${name} is ${why}`);
    const key = `${error.kind} ${namespace}/${name}`;
    if (error.kind === 'AuthorizationPolicy') {
      const policy: AuthorizationPolicy = { namespace, name, action: 'DENY', selector, rules: [{ when: [], l7Fields: [] }], dryRun: false };
      return { key, object: { kind: 'AuthorizationPolicy', object: policy, invalid: why } };
    }
    const pa: PeerAuthentication = { namespace, name, selector, mtlsMode: 'STRICT', portLevelMtls: new Map() };
    return { key, object: { kind: 'PeerAuthentication', object: pa, invalid: why } };
  }
}

/** `spec.selector.matchLabels` when it is a plain map of strings; otherwise undefined (the whole namespace). */
function readableSelector(spec: unknown): Labels | undefined {
  const selector = (spec as { selector?: { matchLabels?: unknown } } | undefined)?.selector;
  const labels = selector?.matchLabels;
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) return undefined;
  const entries = Object.entries(labels as Record<string, unknown>);
  if (entries.length === 0 || !entries.every(([, v]) => typeof v === 'string')) return undefined;
  return Object.freeze(Object.fromEntries(entries)) as Labels;
}

/** A SPIFFE ID as Istio writes principals: without the `spiffe://` scheme. */
export function principalOf(spiffeId: string | undefined): string | undefined {
  if (spiffeId === undefined) return undefined;
  return withoutSpiffeScheme(spiffeId) ?? spiffeId;
}
