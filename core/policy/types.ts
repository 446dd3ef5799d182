import type { Labels } from '../discovery/index.js';

/** The group of Ambit's own security kinds; `security.istio.io` objects are read only when the operator allows it. */
export const AMBIT_SECURITY_API = 'security.ambit.dev/v1';
/** Istio's versions of the same kinds, same schema, read with `--istio-api` to ease moving between the two meshes. */
export const ISTIO_SECURITY_APIS: readonly string[] = ['security.istio.io/v1', 'security.istio.io/v1beta1'];
/** Istio's dry-run annotation: the policy is evaluated by Istio for its logs only, never enforced. */
export const DRY_RUN_ANNOTATION = 'istio.io/dry-run';

/** CUSTOM (external authorization) is not supported: `convertPolicyObject` rejects it. */
export type AuthorizationAction = 'ALLOW' | 'DENY' | 'AUDIT';

/**
 * What a policy attaches to instead of a selector. A `Service` (core group) policy applies, at the agent, to the
 * pods that Service selects; a `Gateway` (gateway.networking.k8s.io) policy is for the waypoint and never applies
 * at the agent.
 */
export interface PolicyTargetRef {
  readonly group: '' | 'gateway.networking.k8s.io';
  readonly kind: 'Service' | 'Gateway';
  readonly name: string;
}

/**
 * `rules[].from[].source`. Every list is absent when the object leaves it out or empty: Istio treats an empty list
 * as not set. Principals and namespaces are match patterns: exact, `prefix*`, `*suffix`, or `*` (any identity).
 */
export interface Source {
  readonly principals?: readonly string[];
  readonly notPrincipals?: readonly string[];
  readonly namespaces?: readonly string[];
  readonly notNamespaces?: readonly string[];
  /** Canonical text (IPv6 compressed, lower case): an address or `address/bits`. */
  readonly ipBlocks?: readonly string[];
  readonly notIpBlocks?: readonly string[];
  /** The client behind a proxy (X-Forwarded-For, PROXY protocol); at L4 the agent only sees the peer, so equal to ipBlocks there. */
  readonly remoteIpBlocks?: readonly string[];
  readonly notRemoteIpBlocks?: readonly string[];
  /** JWT principals (`iss/sub`): L7, enforced by the waypoint. */
  readonly requestPrincipals?: readonly string[];
  readonly notRequestPrincipals?: readonly string[];
}

/** `rules[].to[].operation`. Ports are L4; hosts, methods and paths are L7 (the waypoint's). */
export interface Operation {
  readonly ports?: readonly number[];
  readonly notPorts?: readonly number[];
  readonly hosts?: readonly string[];
  readonly notHosts?: readonly string[];
  readonly methods?: readonly string[];
  readonly notMethods?: readonly string[];
  readonly paths?: readonly string[];
  readonly notPaths?: readonly string[];
}

/** `rules[].when[]`: at least one of values / notValues is set. */
export interface Condition {
  readonly key: string;
  readonly values?: readonly string[];
  readonly notValues?: readonly string[];
}

export interface Rule {
  /** Undefined: any source. Otherwise a request must match one entry. */
  readonly from?: readonly Source[];
  /** Undefined: any operation. Otherwise a request must match one entry. */
  readonly to?: readonly Operation[];
  /** Every condition must hold. */
  readonly when: readonly Condition[];
  /**
   * The attributes of this rule that the agent cannot see (L7), as paths relative to the rule, e.g.
   * `to[0].operation.methods` or `when[1].key=request.headers[x-user]`. Empty when the rule is pure L4. The agent
   * fails closed on them: such an ALLOW rule never matches there, such a DENY rule is decided by its L4 part alone.
   */
  readonly l7Fields: readonly string[];
}

/** A validated, frozen AuthorizationPolicy. */
export interface AuthorizationPolicy {
  readonly namespace: string;
  readonly name: string;
  /** metadata.creationTimestamp when the object has one (RFC 3339). */
  readonly creationTimestamp?: string;
  readonly action: AuthorizationAction;
  /** Undefined or empty: every workload of the namespace (all namespaces for the root namespace). */
  readonly selector?: Labels;
  readonly targetRefs?: readonly PolicyTargetRef[];
  /** No rules: an ALLOW policy matches nothing (it denies all it applies to), an AUDIT policy audits nothing. */
  readonly rules: readonly Rule[];
  /** `istio.io/dry-run: "true"`: Istio evaluates it for logs only. Never enforced here either. */
  readonly dryRun: boolean;
}

/** DISABLE is kept as written so it can be reported; the agent treats it as PERMISSIVE (it always accepts HBONE). */
export type MtlsMode = 'STRICT' | 'PERMISSIVE' | 'DISABLE' | 'UNSET';

/** A validated, frozen PeerAuthentication. */
export interface PeerAuthentication {
  readonly namespace: string;
  readonly name: string;
  readonly creationTimestamp?: string;
  /** Undefined when the policy has no selector or an empty one: namespace-wide (mesh-wide in the root namespace). */
  readonly selector?: Labels;
  readonly mtlsMode: MtlsMode;
  /** Per destination (pod) port; only on a policy with a selector. */
  readonly portLevelMtls: ReadonlyMap<number, MtlsMode>;
}

/** What `convertPolicyObject` makes of an object: a policy, or a reason it is not one of ours. */
export type ConvertedPolicy =
  | { readonly kind: 'AuthorizationPolicy'; readonly object: AuthorizationPolicy }
  | { readonly kind: 'PeerAuthentication'; readonly object: PeerAuthentication }
  | { readonly kind: 'skip'; readonly reason: string };
