/**
 * `ambit uninstall` sets this annotation on the agent DaemonSet (AGENT_DAEMONSET_NAME, in the mesh's own namespace);
 * every agent watches that one object. The signal rides on the object whose write already means control of the mesh
 * (whoever may patch it can change the agents' image), not on a ConfigMap, which other principals (the controller, a
 * namespace's editors, GitOps tools) may create. While it is set, the agent tells its CNI installer (over the CNI
 * socket's status) to unchain the plugin and then ask it to remove every rule, ipset and file: the node is back to
 * plain networking before the objects go. Removing it cancels: the agents put their rules back, the installers
 * chain the plugin again. The DaemonSet's deletion is not a cancel (its pods are about to go).
 */
export const UNINSTALL_ANNOTATION = 'ambit.dev/uninstall';
/** The agent DaemonSet's name (manifests/agent.yaml). */
export const AGENT_DAEMONSET_NAME = 'ambit-agent';
