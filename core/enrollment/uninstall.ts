/**
 * `ambit uninstall` sets this annotation, to the time it asked (an ISO 8601 UTC instant), on the agents' own
 * ServiceAccount (AGENT_SERVICE_ACCOUNT_NAME in the mesh's namespace); every agent watches that one object. Whoever may
 * patch it may already change the agents (it is the agent DaemonSet's namespace: the same grant covers both, and
 * neither the controller nor a tenant has it), unlike a ConfigMap there, which the controller may create, or the
 * Namespace, which whoever may enroll a namespace may often patch. A ServiceAccount has no status: the watch carries
 * next to nothing, where the DaemonSet's would send every status update to every agent. While it is set, the agent
 * tells its CNI installer (over the CNI socket's status) to unchain the plugin and then ask it to remove every rule,
 * ipset and file: the node is back to plain networking before the objects go. Removing it cancels: the agents put
 * their rules back, the installers chain the plugin again. The object's deletion is not a cancel (the namespace, and
 * the agents with it, are going).
 */
export const UNINSTALL_ANNOTATION = 'ambit.dev/uninstall';
/** The agent DaemonSet's name (manifests/agent.yaml). */
export const AGENT_DAEMONSET_NAME = 'ambit-agent';
/** The agents' ServiceAccount (manifests/rbac.yaml), which carries UNINSTALL_ANNOTATION. */
export const AGENT_SERVICE_ACCOUNT_NAME = 'ambit-agent';

/** An ISO 8601 UTC instant (what toISOString writes) that names a real time: 2020-02-30 does not. */
export function isIsoUtcInstant(value: string): boolean {
  if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z$/.test(value)) return false;
  const time = Date.parse(value);
  // the round trip rejects a day or hour that Date.parse would roll over (February 30th is March 1st)
  return !Number.isNaN(time) && new Date(time).toISOString().slice(0, 19) === value.slice(0, 19);
}

/**
 * The uninstall marker in an object's annotations: `marker` when it holds a valid one, `invalid` (the value) when
 * it is set to something else, which asks nothing (an uninstall empties every node's rules: never on a typo).
 */
export function uninstallMarkerOf(annotations: unknown): { marker?: string; invalid?: string } {
  const value = typeof annotations === 'object' && annotations !== null ? (annotations as Record<string, unknown>)[UNINSTALL_ANNOTATION] : undefined;
  if (value === undefined) return {};
  if (typeof value !== 'string') return { invalid: JSON.stringify(value) };
  return isIsoUtcInstant(value) ? { marker: value } : { invalid: value };
}
