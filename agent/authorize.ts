import type { ConnectionFacts, InboundDecision } from '../core/policy/index.js';
import type { ProxyInputs } from './inputs.js';

/**
 * Before the agent's first full sync a policy it has not read yet (a file that does not parse at start-up) could
 * deny a connection, or a PeerAuthentication require mTLS: deciding on what happened to load would widen access.
 */
const NOT_SYNCED: InboundDecision = Object.freeze({ decision: 'DENY', policy: 'default', rule: null, reason: 'not_synced', mtls: undefined, audit: [], l7Fallbacks: [] });

/**
 * The destination's decision for a connection: the same `PolicyStore.decideFacts` that `ambit authz check` runs, once
 * the agent has read its whole configuration; until then, a refusal.
 */
export function authorize(inputs: ProxyInputs, facts: ConnectionFacts): InboundDecision {
  if (!inputs.store.synced) return NOT_SYNCED;
  return inputs.policies.decideFacts(facts, (workload) => inputs.store.servicesOf(workload));
}

/** The `ambit-policy` header and log field: `ns/name`, `ns/name rule N`, or `default`. */
export function describePolicy(decision: InboundDecision): string {
  return decision.rule === null ? decision.policy : `${decision.policy} rule ${decision.rule}`;
}

export function refusalMessage(decision: InboundDecision): string {
  switch (decision.reason) {
    case 'mtls_strict':
      return `plaintext refused: PeerAuthentication ${decision.policy} requires mTLS (STRICT)`;
    case 'invalid_policy':
      return `refused by ${decision.policy}, which is invalid and stands as deny-all until fixed`;
    case 'not_synced':
      return 'refused until the agent has read its whole configuration (its first full sync): a policy it has not read could deny this';
    case 'not_allowed_by_any_policy':
      return 'no ALLOW policy of the destination matches (default deny)';
    default:
      return `denied by ${describePolicy(decision)}`;
  }
}
