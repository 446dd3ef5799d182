import type { ConnectionFacts, InboundDecision } from '../core/policy/index.js';
import type { ProxyInputs } from './inputs.js';

/** Policies whose L7 rules the agent has said it cannot see; reset with every policy change, so it says it once. */
const l7Logged = new WeakMap<ProxyInputs, { version: number; policies: Set<string> }>();

/**
 * The destination's decision for a connection (the same `PolicyStore.decideFacts` that `ambit authz check` runs),
 * with the one log line per policy that explains an L7 rule decided at L4.
 */
export function authorize(inputs: ProxyInputs, facts: ConnectionFacts): InboundDecision {
  const decision = inputs.policies.decideFacts(facts, () => inputs.store.services());
  if (decision.l7Fallbacks.length > 0) {
    let logged = l7Logged.get(inputs);
    if (logged === undefined || logged.version !== inputs.policies.version) l7Logged.set(inputs, (logged = { version: inputs.policies.version, policies: new Set() }));
    for (const fallback of decision.l7Fallbacks) {
      if (logged.policies.has(fallback.policy)) continue;
      logged.policies.add(fallback.policy);
      inputs.log.warn(
        { policy: fallback.policy, rule: fallback.rule, action: fallback.action, fields: fallback.fields },
        fallback.action === 'ALLOW'
          ? 'an ALLOW rule uses attributes only a waypoint sees; at the agent it never matches (fail closed)'
          : `a ${fallback.action} rule uses attributes only a waypoint sees; at the agent its L4 part alone decides (fail closed)`,
      );
    }
  }
  return decision;
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
