export * from './types.js';
export { convertPolicyObject, type ConvertPolicyOptions } from './convert.js';
export {
  buildPolicySet,
  canonicalCidr,
  evaluateConnection,
  isEvaluableIp,
  resolveMtlsMode,
  PolicySet,
  type ConnectionAttributes,
  type EffectiveMtlsMode,
  type L7Fallback,
  type MtlsDecision,
  type MtlsReason,
  type PolicyDecision,
  type PolicyReason,
  type PolicySetOptions,
} from './evaluate.js';
export { DEFAULT_ROOT_NAMESPACE, PolicyStore, principalOf, type ConnectionFacts, type InboundAttributes, type InboundDecision, type PolicyStoreOptions, type StoredPolicy } from './store.js';
