import { badRequest } from './status.js';
import type { ResourceType } from './types.js';

/** The kinds every double serves from the start; custom resources are added with `ApiServer.registerResource`. */
export const DEFAULT_RESOURCES: readonly ResourceType[] = [
  { group: '', version: 'v1', resource: 'namespaces', kind: 'Namespace', namespaced: false, shortNames: ['ns'], builtIn: true },
  { group: '', version: 'v1', resource: 'nodes', kind: 'Node', namespaced: false, shortNames: ['no'], builtIn: true },
  { group: '', version: 'v1', resource: 'pods', kind: 'Pod', namespaced: true, shortNames: ['po'], builtIn: true },
  { group: '', version: 'v1', resource: 'services', kind: 'Service', namespaced: true, shortNames: ['svc'], builtIn: true },
  { group: '', version: 'v1', resource: 'serviceaccounts', kind: 'ServiceAccount', namespaced: true, shortNames: ['sa'], builtIn: true },
  { group: '', version: 'v1', resource: 'configmaps', kind: 'ConfigMap', namespaced: true, shortNames: ['cm'], builtIn: true },
  { group: '', version: 'v1', resource: 'secrets', kind: 'Secret', namespaced: true, builtIn: true },
  { group: 'discovery.k8s.io', version: 'v1', resource: 'endpointslices', kind: 'EndpointSlice', namespaced: true, builtIn: true },
  { group: 'coordination.k8s.io', version: 'v1', resource: 'leases', kind: 'Lease', namespaced: true, builtIn: true },
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
  return type.kind.toLowerCase();
}

/** The registered kinds, looked up by group/version/resource (the path) and by apiVersion/kind (a created body). */
export class ResourceRegistry {
  readonly #byKey = new Map<string, ResourceType>();

  register(type: ResourceType): void {
    if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(type.resource)) throw badRequest(`resource name "${type.resource}" is not a lowercase DNS label`);
    this.#byKey.set(typeKey(type.group, type.version, type.resource), type);
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
