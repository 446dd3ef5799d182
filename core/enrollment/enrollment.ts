// Imports only labels.ts, which imports nothing: the CNI plugin's single executable bundles this folder.
import { ENROLL_LABEL, ISTIO_DATAPLANE_LABEL, type Labels } from './labels.js';

/** What the rule reads of a Namespace (core/discovery's EnrollmentNamespace is one). */
export interface EnrollmentNamespace {
  readonly name: string;
  readonly labels: Labels;
}

/**
 * Where a namespace stands with the mesh: the mesh's own (`--root-namespace`: its pods, the controller and
 * waypoints, are never enrolled, whatever its labels, so the mesh can always start itself and never captures its
 * own traffic), unknown (no namespace object), enrolled by either label (so a namespace migrating from Istio ambient
 * is enrolled as it is), or not labelled.
 */
export type NamespaceEnrollment = 'root' | 'unknown' | 'enrolled' | 'not-labelled';

export function namespaceEnrollment(name: string, namespace: EnrollmentNamespace | undefined, rootNamespace: string): NamespaceEnrollment {
  if (name === rootNamespace) return 'root';
  if (namespace === undefined) return 'unknown';
  return enrollmentLabel(namespace.labels) === undefined ? 'not-labelled' : 'enrolled';
}

/** The label that enrolls a namespace, as `key=value` (the words an operator reads), or undefined when none does. */
export function enrollmentLabel(namespaceLabels: Labels): string | undefined {
  if (namespaceLabels[ENROLL_LABEL] === 'enabled') return `${ENROLL_LABEL}=enabled`;
  if (namespaceLabels[ISTIO_DATAPLANE_LABEL] === 'ambient') return `${ISTIO_DATAPLANE_LABEL}=ambient`;
  return undefined;
}

export function isNamespaceEnrolled(namespace: EnrollmentNamespace | undefined, rootNamespace: string): boolean {
  return namespace !== undefined && namespaceEnrollment(namespace.name, namespace, rootNamespace) === 'enrolled';
}

/** The label by which a pod opts out of its enrolled namespace, as `key=value`, or undefined when it does not. */
export function optOutLabel(podLabels: Labels): string | undefined {
  if (podLabels[ENROLL_LABEL] === 'disabled') return `${ENROLL_LABEL}=disabled`;
  if (podLabels[ISTIO_DATAPLANE_LABEL] === 'none') return `${ISTIO_DATAPLANE_LABEL}=none`;
  return undefined;
}

export function isPodOptedOut(podLabels: Labels): boolean {
  return optOutLabel(podLabels) !== undefined;
}

/**
 * Why a pod of an enrolled namespace stays out of the mesh, or undefined when it does not. A host-network pod shares
 * the node's network namespace (and the agent's), so capturing it would capture the node; a pod may opt out by label.
 */
export type PodExclusion = { readonly kind: 'host-network' } | { readonly kind: 'opted-out'; readonly label: string };

export function podExclusion(pod: { readonly labels: Labels; readonly hostNetwork: boolean }): PodExclusion | undefined {
  if (pod.hostNetwork) return { kind: 'host-network' };
  const label = optOutLabel(pod.labels);
  return label === undefined ? undefined : { kind: 'opted-out', label };
}

/** A pod whose namespace object is unknown is left alone rather than guessed into the mesh. */
export function isWorkloadEnrolled(
  namespace: EnrollmentNamespace | undefined,
  pod: { readonly labels: Labels; readonly hostNetwork: boolean },
  rootNamespace: string,
): boolean {
  return isNamespaceEnrolled(namespace, rootNamespace) && podExclusion(pod) === undefined;
}
