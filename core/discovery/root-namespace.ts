/**
 * The mesh's own namespace (`--root-namespace`): its policies apply mesh-wide, and its pods (the controller,
 * waypoints) are never enrolled and never wait for an agent, so the mesh can always start itself.
 * This file imports nothing: the CNI plugin's single executable is bundled from files like it.
 */
export const DEFAULT_ROOT_NAMESPACE = 'ambit-system';
