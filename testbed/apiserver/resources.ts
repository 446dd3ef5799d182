import { badRequest } from './status.js';
import type { ResourceType } from './types.js';

export const RBAC_GROUP = 'rbac.authorization.k8s.io';
export const CRD_GROUP = 'apiextensions.k8s.io';

const SPEC_STATUS = ['spec', 'status'];
const BINDING = ['subjects', 'roleRef'];
/** `kubectl get all`: the kinds of the category a real server puts in it, of those the double serves. */
const ALL = ['all'];

/**
 * The kinds every double serves from the start: what the controller and agents read and write, and every kind that
 * `kubectl apply -k manifests/` installs. Custom resources come from a CustomResourceDefinition (crds.ts), or from
 * `ApiServer.registerResource` for a test that wants a kind without its CRD.
 */
export const DEFAULT_RESOURCES: readonly ResourceType[] = [
  { group: '', version: 'v1', resource: 'namespaces', kind: 'Namespace', namespaced: false, shortNames: ['ns'], builtIn: true, fields: SPEC_STATUS },
  { group: '', version: 'v1', resource: 'nodes', kind: 'Node', namespaced: false, shortNames: ['no'], builtIn: true, fields: SPEC_STATUS },
  { group: '', version: 'v1', resource: 'pods', kind: 'Pod', namespaced: true, shortNames: ['po'], builtIn: true, categories: ALL, fields: SPEC_STATUS },
  { group: '', version: 'v1', resource: 'services', kind: 'Service', namespaced: true, shortNames: ['svc'], builtIn: true, categories: ALL, fields: SPEC_STATUS },
  { group: '', version: 'v1', resource: 'serviceaccounts', kind: 'ServiceAccount', namespaced: true, shortNames: ['sa'], builtIn: true, fields: ['secrets', 'imagePullSecrets', 'automountServiceAccountToken'] },
  { group: '', version: 'v1', resource: 'configmaps', kind: 'ConfigMap', namespaced: true, shortNames: ['cm'], builtIn: true, fields: ['data', 'binaryData', 'immutable'] },
  { group: '', version: 'v1', resource: 'secrets', kind: 'Secret', namespaced: true, builtIn: true, fields: ['data', 'stringData', 'type', 'immutable'] },
  { group: 'discovery.k8s.io', version: 'v1', resource: 'endpointslices', kind: 'EndpointSlice', namespaced: true, builtIn: true, fields: ['addressType', 'endpoints', 'ports'] },
  { group: 'coordination.k8s.io', version: 'v1', resource: 'leases', kind: 'Lease', namespaced: true, builtIn: true, fields: ['spec'] },
  { group: 'apps', version: 'v1', resource: 'daemonsets', kind: 'DaemonSet', namespaced: true, shortNames: ['ds'], builtIn: true, categories: ALL, fields: SPEC_STATUS },
  { group: 'apps', version: 'v1', resource: 'deployments', kind: 'Deployment', namespaced: true, shortNames: ['deploy'], builtIn: true, categories: ALL, fields: SPEC_STATUS },
  { group: 'policy', version: 'v1', resource: 'poddisruptionbudgets', kind: 'PodDisruptionBudget', namespaced: true, shortNames: ['pdb'], builtIn: true, fields: SPEC_STATUS },
  { group: 'networking.k8s.io', version: 'v1', resource: 'networkpolicies', kind: 'NetworkPolicy', namespaced: true, shortNames: ['netpol'], builtIn: true, fields: ['spec'] },
  { group: RBAC_GROUP, version: 'v1', resource: 'clusterroles', kind: 'ClusterRole', namespaced: false, builtIn: true, fields: ['rules', 'aggregationRule'], pathSegmentName: true },
  { group: RBAC_GROUP, version: 'v1', resource: 'clusterrolebindings', kind: 'ClusterRoleBinding', namespaced: false, builtIn: true, fields: BINDING, pathSegmentName: true },
  { group: RBAC_GROUP, version: 'v1', resource: 'roles', kind: 'Role', namespaced: true, builtIn: true, fields: ['rules'], pathSegmentName: true },
  { group: RBAC_GROUP, version: 'v1', resource: 'rolebindings', kind: 'RoleBinding', namespaced: true, builtIn: true, fields: BINDING, pathSegmentName: true },
  { group: CRD_GROUP, version: 'v1', resource: 'customresourcedefinitions', kind: 'CustomResourceDefinition', namespaced: false, shortNames: ['crd', 'crds'], builtIn: true, fields: SPEC_STATUS },
];

/** The mesh's own kinds and Istio's, in both groups, as a test registers them. */
export const MESH_CUSTOM_RESOURCES: readonly ResourceType[] = ['security.ambit.dev', 'security.istio.io'].flatMap((group) => [
  { group, version: 'v1', resource: 'authorizationpolicies', kind: 'AuthorizationPolicy', namespaced: true },
  { group, version: 'v1', resource: 'peerauthentications', kind: 'PeerAuthentication', namespaced: true },
]);

export const VERBS = ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'];

export function apiVersionOf(type: ResourceType): string {
  return type.group === '' ? type.version : `${type.group}/${type.version}`;
}

export function typeKey(group: string, version: string, resource: string): string {
  return `${group}/${version}/${resource}`;
}

export function singularName(type: ResourceType): string {
  return type.singular ?? type.kind.toLowerCase();
}

/** The registered kinds, looked up by group/version/resource (the path) and by apiVersion/kind (a created body). */
export class ResourceRegistry {
  readonly #byKey = new Map<string, ResourceType>();

  register(type: ResourceType): void {
    if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(type.resource)) throw badRequest(`resource name "${type.resource}" is not a lowercase DNS label`);
    this.#byKey.set(typeKey(type.group, type.version, type.resource), type);
  }

  unregister(type: ResourceType): void {
    this.#byKey.delete(typeKey(type.group, type.version, type.resource));
  }

  get(group: string, version: string, resource: string): ResourceType | undefined {
    return this.#byKey.get(typeKey(group, version, resource));
  }

  all(): ResourceType[] {
    return [...this.#byKey.values()];
  }

  /** Group name → its versions, core group first, as `/apis` lists them (the core group is `/api`'s). */
  groups(): Map<string, string[]> {
    const groups = new Map<string, string[]>();
    for (const type of this.#byKey.values()) {
      const versions = groups.get(type.group) ?? [];
      if (!versions.includes(type.version)) versions.push(type.version);
      groups.set(type.group, versions);
    }
    return groups;
  }
}
