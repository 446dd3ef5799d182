import type { ConnectionFacts, InboundDecision } from '../core/policy/index.js';
import type { ProxyInputs } from './inputs.js';

/** The destination's decision for a connection: the same `PolicyStore.decideFacts` that `ambit authz check` runs. */
export function authorize(inputs: ProxyInputs, facts: ConnectionFacts): InboundDecision {
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
    case 'not_allowed_by_any_policy':
      return 'no ALLOW policy of the destination matches (default deny)';
    default:
      return `denied by ${describePolicy(decision)}`;
  }
}
