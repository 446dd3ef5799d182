// The node's traffic capture: the iptables chains, ipsets, policy routing and nft bridge table that bring enrolled
// pods' TCP to the agent. redirect-rules.ts applies and removes them; each other file builds one kind of rule.
export { describeRemovalPlan, planRulesRemoval, RedirectRules, removeRedirectRules, type RedirectRulesOptions, type RemoveRedirectRulesOptions, type RulesRemovalPlan } from './redirect-rules.js';
export { detectIptablesBackend, type IptablesBackend, type IptablesBackendChoice } from './backend.js';
export { addressFamily } from './family.js';
export type { PodInterfaces } from './source-binding.js';
