import { badRequest, StatusError } from './status.js';
import { child, str, type JsonObject, type ResourceType, type TokenUser } from './types.js';

export const SELF_SUBJECT_ACCESS_REVIEW_PATH = '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews';

/** A permission a test takes away from one user: a verb on a resource of a group, in one namespace or in all. */
export interface AccessDenial {
  readonly verb: string;
  readonly resource: string;
  /** '' (the default) for the core group. */
  readonly group?: string;
  /** 'proxy' for pods/proxy; absent: the resource itself (a denial of pods leaves pods/proxy alone, as in RBAC). */
  readonly subresource?: string;
  /** Absent: in every namespace and at the cluster scope. */
  readonly namespace?: string;
}

/** What one request asks for, as the real authorizer's attributes name it. */
export interface AccessAttributes {
  readonly verb: string;
  readonly group: string;
  readonly resource: string;
  /** '' for the resource itself. */
  readonly subresource?: string;
  readonly namespace: string;
  readonly name: string;
}

/**
 * Who may do what: everyone everything, but what a test denied. A denied request is refused with the 403 Status the
 * real server sends (its message, reason and details), and a SelfSubjectAccessReview answers from the same denials,
 * so a client's review and its real request agree.
 */
export class AccessControl {
  readonly #denials = new Map<string, AccessDenial[]>();

  deny(username: string, denial: AccessDenial): void {
    const list = this.#denials.get(username) ?? [];
    list.push(denial);
    this.#denials.set(username, list);
  }

  allowed(username: string, attributes: AccessAttributes): boolean {
    return !(this.#denials.get(username) ?? []).some(
      (d) =>
        d.verb === attributes.verb &&
        d.resource === attributes.resource &&
        (d.subresource ?? '') === (attributes.subresource ?? '') &&
        (d.group ?? '') === attributes.group &&
        (d.namespace === undefined || d.namespace === attributes.namespace),
    );
  }

  /** The pods proxy (get on pods/proxy): the real server's 403 when a test denied it. */
  authorizeProxy(user: TokenUser, namespace: string, pod: string): void {
    if (this.allowed(user.username, { verb: 'get', group: '', resource: 'pods', subresource: 'proxy', namespace, name: pod })) return;
    throw new StatusError(403, 'Forbidden', `pods "${pod}" is forbidden: User "${user.username}" cannot get resource "pods/proxy" in API group "" in the namespace "${namespace}"`, { name: pod, kind: 'pods' });
  }

  /** Throws the real server's 403 when `user` may not do what the request asks. */
  authorize(user: TokenUser, method: string, type: ResourceType, route: { namespace: string | undefined; name: string | undefined }, watch: boolean): void {
    const name = route.name ?? '';
    // The real server's request info: a namespace's own path names it as the namespace of the request.
    const namespace = route.namespace ?? (type.group === '' && type.resource === 'namespaces' ? name : '');
    const attributes: AccessAttributes = { verb: verbOf(method, route.name !== undefined, watch), group: type.group, resource: type.resource, namespace, name };
    if (this.allowed(user.username, attributes)) return;
    const qualified = type.group === '' ? type.resource : `${type.resource}.${type.group}`;
    const scope = namespace === '' ? 'at the cluster scope' : `in the namespace "${namespace}"`;
    const reason = `User "${user.username}" cannot ${attributes.verb} resource "${type.resource}" in API group "${type.group}" ${scope}`;
    throw new StatusError(403, 'Forbidden', `${qualified}${name === '' ? '' : ` "${name}"`} is forbidden: ${reason}`, { name, group: type.group, kind: type.resource });
  }

  /** The answer to a SelfSubjectAccessReview of `user`'s `spec.resourceAttributes`. */
  /**
   * A SelfSubjectAccessReview: allowed unless a test denied it, and, with RBAC on, only if RBAC allows it too
   * (`rbacAllows`), so a review and the real request agree.
   */
  review(user: TokenUser, body: JsonObject, rbacAllows?: (attributes: { verb: string; group: string; resource: string; subresource: string; namespace: string; name: string }) => boolean): JsonObject {
    const spec = child(body, 'spec');
    const resource = child(spec, 'resourceAttributes');
    const nonResource = child(spec, 'nonResourceAttributes');
    if (Object.keys(resource).length === 0 && Object.keys(nonResource).length === 0) {
      throw badRequest('a SelfSubjectAccessReview needs spec.resourceAttributes or spec.nonResourceAttributes');
    }
    const verb = str(resource.verb) ?? str(nonResource.verb);
    if (verb === undefined || verb === '') throw badRequest('SelfSubjectAccessReview spec needs a verb');
    const attributes = { verb, group: str(resource.group) ?? '', resource: str(resource.resource) ?? '', subresource: str(resource.subresource) ?? '', namespace: str(resource.namespace) ?? '', name: str(resource.name) ?? '' };
    const allowed =
      Object.keys(resource).length === 0 ||
      (this.allowed(user.username, attributes) && (rbacAllows === undefined || rbacAllows(attributes)));
    return {
      kind: 'SelfSubjectAccessReview',
      apiVersion: 'authorization.k8s.io/v1',
      metadata: { creationTimestamp: null },
      spec: { ...spec },
      status: { allowed },
    };
  }
}

function verbOf(method: string, named: boolean, watch: boolean): string {
  switch (method) {
    case 'GET':
      return named ? 'get' : watch ? 'watch' : 'list';
    case 'POST':
      return 'create';
    case 'PUT':
      return 'update';
    case 'PATCH':
      return 'patch';
    case 'DELETE':
      return named ? 'delete' : 'deletecollection';
    default:
      return method.toLowerCase();
  }
}
