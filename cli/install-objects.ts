/**
 * What `kubectl apply -k manifests/` makes, as the operator commands need to know it without the manifests at hand:
 * the kinds it applies (for the permission check), the CRDs, and the names of the controller and the agent.
 * test/cli-check.test.ts renders the manifests and compares them with this file, so the two cannot drift apart.
 */
import { AGENT_DAEMONSET_NAME, DEFAULT_ROOT_NAMESPACE } from '../core/enrollment/index.js';
import type { ResourceRef, Verb } from './kube.js';

/** The install command every hint points to. */
export const INSTALL_COMMAND = 'kubectl apply -k manifests/';

/** The label kustomize puts on every object of the install (manifests/kustomization.yaml). */
export const PART_OF_LABEL = Object.freeze({ key: 'app.kubernetes.io/part-of', value: 'ambit' });

export const CONTROLLER_DEPLOYMENT = 'ambit-controller';
/** The agent DaemonSet's name (core/enrollment): `ambit status` reads its pods, `ambit uninstall` its scheduled count. */
export const AGENT_DAEMONSET = AGENT_DAEMONSET_NAME;

/** A kind the install applies. */
export interface InstallKind {
  readonly kind: string;
  readonly group: string;
  readonly version: string;
  readonly resource: string;
  /** Namespaced kinds are applied in the mesh's namespace. */
  readonly namespaced: boolean;
}

export const INSTALL_KINDS: readonly InstallKind[] = [
  { kind: 'Namespace', group: '', version: 'v1', resource: 'namespaces', namespaced: false },
  { kind: 'CustomResourceDefinition', group: 'apiextensions.k8s.io', version: 'v1', resource: 'customresourcedefinitions', namespaced: false },
  { kind: 'ClusterRole', group: 'rbac.authorization.k8s.io', version: 'v1', resource: 'clusterroles', namespaced: false },
  { kind: 'ClusterRoleBinding', group: 'rbac.authorization.k8s.io', version: 'v1', resource: 'clusterrolebindings', namespaced: false },
  { kind: 'ServiceAccount', group: '', version: 'v1', resource: 'serviceaccounts', namespaced: true },
  { kind: 'Role', group: 'rbac.authorization.k8s.io', version: 'v1', resource: 'roles', namespaced: true },
  { kind: 'RoleBinding', group: 'rbac.authorization.k8s.io', version: 'v1', resource: 'rolebindings', namespaced: true },
  { kind: 'ConfigMap', group: '', version: 'v1', resource: 'configmaps', namespaced: true },
  { kind: 'Service', group: '', version: 'v1', resource: 'services', namespaced: true },
  { kind: 'Deployment', group: 'apps', version: 'v1', resource: 'deployments', namespaced: true },
  { kind: 'DaemonSet', group: 'apps', version: 'v1', resource: 'daemonsets', namespaced: true },
  { kind: 'PodDisruptionBudget', group: 'policy', version: 'v1', resource: 'poddisruptionbudgets', namespaced: true },
  { kind: 'NetworkPolicy', group: 'networking.k8s.io', version: 'v1', resource: 'networkpolicies', namespaced: true },
];

/** Client-side apply reads each object, creates what is missing and patches what differs. */
export const INSTALL_VERBS: readonly Verb[] = ['get', 'create', 'patch'];

/** Where the install applies `kind`, for an access review. */
export function installScope(kind: InstallKind): ResourceRef {
  return { group: kind.group, version: kind.version, resource: kind.resource, ...(kind.namespaced ? { namespace: DEFAULT_ROOT_NAMESPACE } : {}) };
}

/** A policy CRD of the mesh: `authorizationpolicies.security.ambit.dev`. */
export interface MeshCrd {
  readonly group: string;
  readonly version: string;
  readonly resource: string;
  readonly kind: string;
}

export const MESH_POLICY_GROUP = 'security.ambit.dev';
/** Istio's policy group: the same kinds, honoured with the controller's --istio-api (off in manifests/). */
export const ISTIO_POLICY_GROUP = 'security.istio.io';

export const MESH_CRDS: readonly MeshCrd[] = [
  { group: MESH_POLICY_GROUP, version: 'v1', resource: 'authorizationpolicies', kind: 'AuthorizationPolicy' },
  { group: MESH_POLICY_GROUP, version: 'v1', resource: 'peerauthentications', kind: 'PeerAuthentication' },
];

export function crdName(crd: { group: string; resource: string }): string {
  return `${crd.resource}.${crd.group}`;
}
