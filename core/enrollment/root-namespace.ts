/**
 * The mesh's own namespace (the agent's `--root-namespace`, its only setting: the CNI plugin reads it from the
 * enrollment file the agent writes): its policies apply mesh-wide, and its pods (the controller, waypoints) are
 * never enrolled and never wait for an agent, so the mesh can always start itself.
 */
export const DEFAULT_ROOT_NAMESPACE = 'ambit-system';
