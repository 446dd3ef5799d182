import { ENROLL_LABEL, ISTIO_DATAPLANE_LABEL, type Labels, type NamespaceInfo } from './types.js';

/** A namespace joins the mesh by either label, so a namespace migrating from Istio ambient is enrolled as it is. */
export function isNamespaceEnrolled(namespace: NamespaceInfo | undefined): boolean {
  if (namespace === undefined) return false;
  return namespace.labels[ENROLL_LABEL] === 'enabled' || namespace.labels[ISTIO_DATAPLANE_LABEL] === 'ambient';
}

export function isPodOptedOut(podLabels: Labels): boolean {
  return podLabels[ENROLL_LABEL] === 'disabled' || podLabels[ISTIO_DATAPLANE_LABEL] === 'none';
}

/**
 * A host-network pod shares the node's network namespace (and the agent's), so capturing it would capture the node;
 * a pod whose namespace object is unknown is left alone rather than guessed into the mesh.
 */
export function isWorkloadEnrolled(
  namespace: NamespaceInfo | undefined,
  pod: { readonly labels: Labels; readonly hostNetwork: boolean },
): boolean {
  return isNamespaceEnrolled(namespace) && !isPodOptedOut(pod.labels) && !pod.hostNetwork;
}
