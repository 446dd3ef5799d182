/**
 * `ambit uninstall` sets this annotation on the mesh's own Namespace (`ambit-system`), to the time it asked, as an
 * ISO 8601 UTC instant; every agent already watches Namespaces, so the signal costs no watch of its own. It rides on
 * an object that only cluster-scoped principals may change (a namespace's own admins cannot patch their Namespace),
 * not on a ConfigMap, which principals of that namespace (the controller, GitOps tools) may create. While it is set,
 * the agent tells its CNI installer (over the CNI socket's status) to unchain the plugin and then ask it to remove
 * every rule, ipset and file: the node is back to plain networking before the objects go. Removing it cancels: the
 * agents put their rules back, the installers chain the plugin again. The Namespace's deletion is not a cancel (its
 * pods are about to go).
 */
export const UNINSTALL_ANNOTATION = 'ambit.dev/uninstall';
/** The agent DaemonSet's name (manifests/agent.yaml). */
export const AGENT_DAEMONSET_NAME = 'ambit-agent';

/** An ISO 8601 UTC instant (what toISOString writes) that names a real time: 2020-02-30 does not. */
export function isIsoUtcInstant(value: string): boolean {
  if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z$/.test(value)) return false;
  const time = Date.parse(value);
  // the round trip rejects a day or hour that Date.parse would roll over (February 30th is March 1st)
  return !Number.isNaN(time) && new Date(time).toISOString().slice(0, 19) === value.slice(0, 19);
}

/**
 * The uninstall marker on a Namespace's annotations: `marker` when it holds a valid one, `invalid` (the value) when
 * it is set to something else, which asks nothing (an uninstall empties every node's rules: never on a typo).
 */
export function uninstallMarkerOf(annotations: unknown): { marker?: string; invalid?: string } {
  const value = typeof annotations === 'object' && annotations !== null ? (annotations as Record<string, unknown>)[UNINSTALL_ANNOTATION] : undefined;
  if (value === undefined) return {};
  if (typeof value !== 'string') return { invalid: JSON.stringify(value) };
  return isIsoUtcInstant(value) ? { marker: value } : { invalid: value };
}
