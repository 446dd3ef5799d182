export * from './types.js';
export { canonicalCidr } from '../ip/index.js';
export { convertPolicyObject, type ConvertPolicyOptions } from './convert.js';
export {
  buildPolicySet,
  evaluateConnection,
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
