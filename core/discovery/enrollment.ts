// Imports only types.ts, which imports nothing: the CNI plugin's single executable bundles this file too.
import { ENROLL_LABEL, ISTIO_DATAPLANE_LABEL, type Labels, type NamespaceInfo } from './types.js';

/**
 * Where a namespace stands with the mesh: the mesh's own (`--root-namespace`: its pods, the controller and
 * waypoints, are never enrolled, whatever its labels, so the mesh can always start itself and never captures its
 * own traffic), unknown (no namespace object), enrolled by either label (so a namespace migrating from Istio ambient
 * is enrolled as it is), or not labelled.
 */
export type NamespaceEnrollment = 'root' | 'unknown' | 'enrolled' | 'not-labelled';

export function namespaceEnrollment(name: string, namespace: NamespaceInfo | undefined, rootNamespace: string): NamespaceEnrollment {
  if (name === rootNamespace) return 'root';
  if (namespace === undefined) return 'unknown';
  return namespace.labels[ENROLL_LABEL] === 'enabled' || namespace.labels[ISTIO_DATAPLANE_LABEL] === 'ambient' ? 'enrolled' : 'not-labelled';
}

export function isNamespaceEnrolled(namespace: NamespaceInfo | undefined, rootNamespace: string): boolean {
  return namespace !== undefined && namespaceEnrollment(namespace.name, namespace, rootNamespace) === 'enrolled';
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
  rootNamespace: string,
): boolean {
  return isNamespaceEnrolled(namespace, rootNamespace) && !isPodOptedOut(pod.labels) && !pod.hostNetwork;
}
