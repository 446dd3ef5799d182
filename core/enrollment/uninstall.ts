/**
 * `ambit uninstall` creates this ConfigMap in the mesh's own namespace; every agent watches for it. While it exists
 * the agent captures no new pod, and tells its CNI installer (over the CNI socket's status) to unchain the plugin and
 * then ask it to remove every rule, ipset and file: the node is back to plain networking before the objects go.
 */
export const UNINSTALL_CONFIGMAP_NAME = 'ambit-uninstall';
