/**
 * RBAC authorization as kube-apiserver does it, against the ClusterRoles, ClusterRoleBindings, Roles and
 * RoleBindings in the store, so that a test can prove a least-privilege role enough and no more. Each request is
 * read as the real RequestInfo resolver reads it (verb, API group, resource, subresource, name, namespace, or a
 * non-resource path); a list or watch whose field selector requires `metadata.name=NAME` is authorized as a request
 * for NAME, so `resourceNames` can allow it. Group `system:masters` is allowed everything, before RBAC, as the real
 * server's privileged-group authorizer. Every authenticated user is in `system:authenticated`.
 *
 * Subjects: User, Group, ServiceAccount (its namespace defaulting to a RoleBinding's own). Rules: verbs,
 * apiGroups, resources (`*`, `*\/SUB`), resourceNames and nonResourceURLs (`*` and a trailing `*`). Not done:
 * aggregated ClusterRoles (aggregationRule), escalation and bind checks on writes of roles, impersonation.
 */
import { RBAC_GROUP, type ResourceRegistry } from './resources.js';
import { FieldSelector } from './selectors.js';
import { StatusError } from './status.js';
import type { ObjectStore } from './store.js';
import { child, isJsonObject, str, type Json, type JsonObject, type ResourceType, type TokenUser } from './types.js';

const MASTERS_GROUP = 'system:masters';
const AUTHENTICATED_GROUP = 'system:authenticated';
const ALL = '*';

/** A request as the authorizer sees it. */
export interface RequestAttributes {
  readonly verb: string;
  readonly path: string;
  readonly resourceRequest: boolean;
  readonly apiGroup: string;
  readonly resource: string;
  readonly subresource: string;
  readonly name: string;
  readonly namespace: string;
}

/**
 * What a request asks, by its method, path and query alone (as the real resolver: `/api/v1` and `/apis/G/V` are
 * non-resource paths; `/api/v1/namespaces/NS` is the namespace NS, in namespace NS).
 */
export function requestAttributes(method: string, path: string, query: URLSearchParams): RequestAttributes {
  const parts = path.split('/').filter((p) => p !== '');
  const nonResource: RequestAttributes = { verb: method.toLowerCase(), path, resourceRequest: false, apiGroup: '', resource: '', subresource: '', name: '', namespace: '' };
  if (parts.length < 3 || (parts[0] !== 'api' && parts[0] !== 'apis')) return nonResource;
  const grouped = parts[0] === 'apis';
  if (grouped && parts.length < 4) return nonResource;
  const apiGroup = grouped ? (parts[1] ?? '') : '';
  let rest = parts.slice(grouped ? 3 : 2).map(decodeURIComponent);
  let namespace = '';
  if (rest[0] === 'namespaces' && rest.length > 1) {
    namespace = rest[1] ?? '';
    if (rest.length > 2 && rest[2] !== 'status' && rest[2] !== 'finalize') rest = rest.slice(2);
  }
  const [resource = '', name = '', subresource = ''] = rest;
  const watch = query.get('watch') === 'true' || query.get('watch') === '1';
  let verb: string;
  switch (method) {
    case 'GET':
    case 'HEAD':
      verb = watch ? 'watch' : name === '' ? 'list' : 'get';
      break;
    case 'POST':
      verb = 'create';
      break;
    case 'PUT':
      verb = 'update';
      break;
    case 'PATCH':
      verb = 'patch';
      break;
    case 'DELETE':
      verb = name === '' ? 'deletecollection' : 'delete';
      break;
    default:
      verb = method.toLowerCase();
  }
  const selected = (verb === 'list' || verb === 'watch') && name === '' ? FieldSelector.requiredName(query.get('fieldSelector') ?? undefined) : undefined;
  return { verb, path, resourceRequest: true, apiGroup, resource, subresource, name: selected ?? name, namespace };
}

export class RbacAuthorizer {
  readonly #store: ObjectStore;
  readonly #types: Readonly<Record<'clusterroles' | 'clusterrolebindings' | 'roles' | 'rolebindings', ResourceType>>;

  constructor(store: ObjectStore, registry: ResourceRegistry) {
    this.#store = store;
    const type = (resource: string): ResourceType => {
      const found = registry.get(RBAC_GROUP, 'v1', resource);
      if (found === undefined) throw new Error(`the registry serves no ${resource}`);
      return found;
    };
    this.#types = { clusterroles: type('clusterroles'), clusterrolebindings: type('clusterrolebindings'), roles: type('roles'), rolebindings: type('rolebindings') };
  }

  /** Returns when `user` may do what `request` asks; throws the 403 Forbidden the real server answers otherwise. */
  authorize(user: TokenUser, request: RequestAttributes): void {
    const groups = new Set([...(user.groups ?? []), AUTHENTICATED_GROUP]);
    if (groups.has(MASTERS_GROUP)) return;
    const errors: string[] = [];
    const allows = (roleKind: Json | undefined, roleName: Json | undefined, namespace: string): boolean => {
      const name = str(roleName) ?? '';
      const role = roleKind === 'ClusterRole' ? this.#store.get(this.#types.clusterroles, '', name) : roleKind === 'Role' ? this.#store.get(this.#types.roles, namespace, name) : undefined;
      if (role === undefined) {
        errors.push(roleKind === 'Role' ? `role.${RBAC_GROUP} "${name}" not found` : `clusterrole.${RBAC_GROUP} "${name}" not found`);
        return false;
      }
      return rulesOf(role).some((rule) => ruleAllows(rule, request));
    };
    for (const binding of this.#store.list(this.#types.clusterrolebindings)) {
      const ref = child(binding, 'roleRef');
      if (boundTo(binding, user.username, groups, '') && allows(ref.kind, ref.name, '')) return;
    }
    if (request.namespace !== '') {
      for (const binding of this.#store.list(this.#types.rolebindings, request.namespace)) {
        const ref = child(binding, 'roleRef');
        if (boundTo(binding, user.username, groups, request.namespace) && allows(ref.kind, ref.name, request.namespace)) return;
      }
    }
    const reason = errors.length === 0 ? '' : `: RBAC: ${errors.length === 1 ? errors[0] : `[${errors.join(', ')}]`}`;
    throw forbidden(user.username, request, reason);
  }
}

function rulesOf(role: JsonObject): JsonObject[] {
  return Array.isArray(role.rules) ? role.rules.filter(isJsonObject) : [];
}

function strings(value: Json | undefined): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}

function boundTo(binding: JsonObject, username: string, groups: ReadonlySet<string>, bindingNamespace: string): boolean {
  const subjects = Array.isArray(binding.subjects) ? binding.subjects.filter(isJsonObject) : [];
  return subjects.some((subject) => {
    const name = str(subject.name) ?? '';
    switch (subject.kind) {
      case 'User':
        return name === username;
      case 'Group':
        return groups.has(name);
      case 'ServiceAccount': {
        const namespace = str(subject.namespace) || bindingNamespace;
        return namespace !== '' && username === `system:serviceaccount:${namespace}:${name}`;
      }
      default:
        return false;
    }
  });
}

/** One rule against one request (a non-resource request has no namespace: only ClusterRoleBindings reach it). */
function ruleAllows(rule: JsonObject, request: RequestAttributes): boolean {
  const verbs = strings(rule.verbs);
  if (!verbs.includes(ALL) && !verbs.includes(request.verb)) return false;
  if (!request.resourceRequest) {
    return strings(rule.nonResourceURLs).some((url) => url === ALL || url === request.path || (url.endsWith('*') && request.path.startsWith(url.slice(0, -1))));
  }
  const groups = strings(rule.apiGroups);
  if (!groups.includes(ALL) && !groups.includes(request.apiGroup)) return false;
  const combined = request.subresource === '' ? request.resource : `${request.resource}/${request.subresource}`;
  const resources = strings(rule.resources);
  const resourceMatches = resources.some((r) => r === ALL || r === combined || (request.subresource !== '' && r === `*/${request.subresource}`));
  if (!resourceMatches) return false;
  const names = strings(rule.resourceNames);
  return names.length === 0 || names.includes(request.name);
}

/** kube-apiserver's words for a refusal, to the letter: kubectl prints them, and operators search for them. */
function forbidden(username: string, request: RequestAttributes, reason: string): StatusError {
  if (!request.resourceRequest) {
    return new StatusError(403, 'Forbidden', `forbidden: User "${username}" cannot ${request.verb} path "${request.path}"${reason}`, {});
  }
  const resource = request.subresource === '' ? request.resource : `${request.resource}/${request.subresource}`;
  const scope = request.namespace === '' ? 'at the cluster scope' : `in the namespace "${request.namespace}"`;
  const what = `User "${username}" cannot ${request.verb} resource "${resource}" in API group "${request.apiGroup}" ${scope}${reason}`;
  const qualified = request.apiGroup === '' ? request.resource : `${request.resource}.${request.apiGroup}`;
  const details: JsonObject = { ...(request.name === '' ? {} : { name: request.name }), ...(request.apiGroup === '' ? {} : { group: request.apiGroup }), kind: request.resource };
  return new StatusError(403, 'Forbidden', `${qualified}${request.name === '' ? '' : ` "${request.name}"`} is forbidden: ${what}`, details);
}

/**
 * The default roles a real cluster starts with that matter here: cluster-admin for `system:masters`, discovery and
 * version for every authenticated user (`system:discovery`, `system:public-info-viewer`), and the self-reviews of
 * `system:basic-user`. Written into the store when RBAC is enabled, as the real server's bootstrap does.
 */
export function bootstrapPolicy(): { clusterRoles: JsonObject[]; clusterRoleBindings: JsonObject[] } {
  const meta = (name: string): JsonObject => ({
    name,
    labels: { 'kubernetes.io/bootstrapping': 'rbac-defaults' },
    annotations: { 'rbac.authorization.kubernetes.io/autoupdate': 'true' },
  });
  const role = (name: string, rules: JsonObject[]): JsonObject => ({ metadata: meta(name), rules });
  const binding = (name: string, groups: string[]): JsonObject => ({
    metadata: meta(name),
    roleRef: { apiGroup: RBAC_GROUP, kind: 'ClusterRole', name },
    subjects: groups.map((group) => ({ apiGroup: RBAC_GROUP, kind: 'Group', name: group })),
  });
  const publicInfo = ['/healthz', '/livez', '/readyz', '/version', '/version/'];
  return {
    clusterRoles: [
      role('cluster-admin', [
        { apiGroups: [ALL], resources: [ALL], verbs: [ALL] },
        { nonResourceURLs: [ALL], verbs: [ALL] },
      ]),
      role('system:discovery', [{ nonResourceURLs: ['/api', '/api/*', '/apis', '/apis/*', '/openapi', '/openapi/*', ...publicInfo], verbs: ['get'] }]),
      role('system:public-info-viewer', [{ nonResourceURLs: publicInfo, verbs: ['get'] }]),
      role('system:basic-user', [
        { apiGroups: ['authorization.k8s.io'], resources: ['selfsubjectaccessreviews', 'selfsubjectrulesreviews'], verbs: ['create'] },
        { apiGroups: ['authentication.k8s.io'], resources: ['selfsubjectreviews'], verbs: ['create'] },
      ]),
    ],
    clusterRoleBindings: [
      binding('cluster-admin', [MASTERS_GROUP]),
      binding('system:discovery', [AUTHENTICATED_GROUP]),
      binding('system:public-info-viewer', [AUTHENTICATED_GROUP, 'system:unauthenticated']),
      binding('system:basic-user', [AUTHENTICATED_GROUP]),
    ],
  };
}
