/**
 * The operator commands' way to the cluster: which kubeconfig (kubectl's order), and a client whose every request is
 * described by what it asks for (verb, group, resource, namespace, name), so that a refusal names the permission
 * that is missing, not only what the server said.
 */
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { AmbitError, errnoCode, isAmbitError } from '../core/errors/index.js';
import { ApiStatusError, KubeApi, loadKubeConfig, type KubeCredentials } from '../core/k8s/index.js';
import { usageError } from './args.js';

/** The flags of a command that talks to the cluster, for parseFlags. */
export const KUBE_FLAGS = {
  kubeconfig: { type: 'string' },
  context: { type: 'string' },
} as const;

export const KUBE_FLAGS_USAGE = `  --kubeconfig PATH      the kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else the service
                         account of the pod this runs in)
  --context NAME         a context of the kubeconfig other than its current-context`;

/** One page of a list: small enough for a single read (a pod is a few KiB). */
const LIST_PAGE_SIZE = 100;

/** What a request asks for: the attributes an authorizer decides on, and where the object lives. */
export interface ResourceRef {
  /** '' for the core group. */
  readonly group: string;
  readonly version: string;
  /** The plural, as in the path: 'namespaces', 'deployments'. */
  readonly resource: string;
  readonly namespace?: string;
  readonly name?: string;
}

/** An API verb the CLI uses: each request maps to one, as the API server's authorizer sees it. */
export type Verb = 'get' | 'list' | 'create' | 'patch' | 'delete';

export type ApiObject = Record<string, unknown> & { metadata?: { name?: string; namespace?: string; labels?: Record<string, string>; [field: string]: unknown } };

/** A request refused with 403: `permission` names what the caller lacks, in an authorizer's terms. */
export class KubeForbiddenError extends AmbitError {
  readonly permission: string;
  /** The `kubectl auth can-i` line that asks the same question. */
  readonly canI: string;
  readonly serverMessage: string;

  constructor(verb: Verb, ref: ResourceRef, serverMessage: string) {
    const permission = describeAccess(verb, ref);
    const canI = canIHint(verb, ref);
    super('K8S_FORBIDDEN', `missing permission: ${permission} (the API server says: ${serverMessage}); ask for it in a Role or ClusterRole, and check with: ${canI}`);
    this.permission = permission;
    this.canI = canI;
    this.serverMessage = serverMessage;
  }
}

/** `get on deployments (group "apps") in the namespace "ambit-system", object "ambit-controller"`: the permission, as an authorizer sees it. */
export function describeAccess(verb: Verb, ref: ResourceRef): string {
  const what = `${verb} on ${ref.resource} (${ref.group === '' ? 'core group ""' : `group "${ref.group}"`})`;
  if (ref.group === '' && ref.resource === 'namespaces' && ref.name !== undefined) return `${what} for the namespace "${ref.name}"`;
  const scope = ref.namespace === undefined ? 'at the cluster scope' : `in the namespace "${ref.namespace}"`;
  return `${what} ${scope}${ref.name === undefined ? '' : `, object "${ref.name}"`}`;
}

/** The `kubectl auth can-i` line that asks the same question. */
export function canIHint(verb: Verb, ref: ResourceRef): string {
  // kubectl reads `pods/proxy` as a pod named proxy: a subresource is its own flag
  const [plural, subresource] = ref.resource.split('/');
  const resource = ref.group === '' ? plural : `${plural}.${ref.group}`;
  const named = ref.name === undefined ? resource : `${resource}/${ref.name}`;
  const scope = ref.namespace === undefined ? '' : ` -n ${ref.namespace}`;
  return `kubectl auth can-i ${verb} ${named}${subresource === undefined ? '' : ` --subresource=${subresource}`}${scope}`;
}

export function resourcePath(ref: ResourceRef): string {
  const base = ref.group === '' ? `/api/${ref.version}` : `/apis/${ref.group}/${ref.version}`;
  const namespace = ref.namespace === undefined ? '' : `/namespaces/${encodeURIComponent(ref.namespace)}`;
  const name = ref.name === undefined ? '' : `/${encodeURIComponent(ref.name)}`;
  return `${base}${namespace}/${ref.resource}${name}`;
}

/** A kind of the core group or of `group`, as a ResourceRef builder: `NAMESPACES.named('team-a')`. */
export function kind(group: string, version: string, resource: string) {
  return {
    all: (namespace?: string): ResourceRef => ({ group, version, resource, ...(namespace === undefined ? {} : { namespace }) }),
    named: (name: string, namespace?: string): ResourceRef => ({ group, version, resource, name, ...(namespace === undefined ? {} : { namespace }) }),
  };
}

export const NAMESPACES = kind('', 'v1', 'namespaces');

/**
 * The client the operator commands use. Every failure is one of: KubeForbiddenError (403, naming the permission),
 * K8S_UNAUTHORIZED (401), K8S_UNREACHABLE (no answer: address, TLS, timeout), or an ApiStatusError with the
 * server's Status. A 404 of a read is `undefined`, not an error.
 */
export class ClusterClient {
  readonly #api: KubeApi;
  /** Where the credentials came from, for messages: `kubeconfig /home/me/.kube/config`. */
  readonly source: string;

  constructor(credentials: KubeCredentials, source: string) {
    this.#api = new KubeApi(credentials);
    this.source = source;
  }

  get server(): string {
    return this.#api.server;
  }

  /** The object, or undefined when it does not exist. */
  async get(ref: ResourceRef): Promise<ApiObject | undefined> {
    try {
      return (await this.#call('get', ref, () => this.#api.read(resourcePath(ref)))) as ApiObject;
    } catch (err) {
      if (err instanceof ApiStatusError && err.status === 404) return undefined;
      throw err;
    }
  }

  /** Every object of a list, page by page; `labelSelector` as the API takes it (`a=b,c`). */
  async list(ref: ResourceRef, labelSelector?: string): Promise<ApiObject[]> {
    const items: ApiObject[] = [];
    let continueToken: string | undefined;
    do {
      const query = new URLSearchParams({ limit: String(LIST_PAGE_SIZE) });
      if (labelSelector !== undefined) query.set('labelSelector', labelSelector);
      if (continueToken !== undefined) query.set('continue', continueToken);
      const page = (await this.#call('list', ref, () => this.#api.read(resourcePath(ref), undefined, { query }))) as { items?: ApiObject[]; metadata?: { continue?: string } };
      items.push(...(page.items ?? []));
      continueToken = page.metadata?.continue === '' ? undefined : page.metadata?.continue;
    } while (continueToken !== undefined);
    return items;
  }

  async mergePatch(ref: ResourceRef, patch: unknown): Promise<ApiObject> {
    return (await this.#call('patch', ref, () => this.#api.mergePatch(resourcePath(ref), patch))) as ApiObject;
  }

  async create(ref: ResourceRef, body: unknown): Promise<ApiObject> {
    return (await this.#call('create', ref, () => this.#api.post(resourcePath(ref), body))) as ApiObject;
  }

  /** Deletes the object (background propagation); false when it was not there. */
  async delete(ref: ResourceRef): Promise<boolean> {
    try {
      await this.#call('delete', ref, () => this.#api.delete(resourcePath(ref)));
      return true;
    } catch (err) {
      if (err instanceof ApiStatusError && err.status === 404) return false;
      throw err;
    }
  }

  /**
   * `GET path` on a pod's `port` through the API server's pods proxy (the permission: get on pods/proxy), parsed as
   * JSON; at most `maxBytes` of it.
   */
  async proxyGet(pod: { namespace: string; name: string }, port: number, podPath: string, maxBytes: number): Promise<unknown> {
    const ref: ResourceRef = { group: '', version: 'v1', resource: 'pods/proxy', namespace: pod.namespace, name: pod.name };
    const apiPath = `${resourcePath({ ...ref, resource: 'pods' })}:${port}/proxy${podPath}`;
    return this.#call('get', ref, () => this.#api.read(apiPath, undefined, { maxBytes }));
  }

  /**
   * A path outside the resources (`/version`, discovery), which every authenticated user may read; undefined on 404
   * (a group the server does not serve).
   */
  async readPath(apiPath: string): Promise<ApiObject | undefined> {
    try {
      return (await this.#call('get', undefined, () => this.#api.read(apiPath))) as ApiObject;
    } catch (err) {
      if (err instanceof ApiStatusError && err.status === 404) return undefined;
      throw err;
    }
  }

  /** Whether the caller may `verb` `ref`, by a SelfSubjectAccessReview (which anyone may create). */
  async canI(verb: Verb, ref: ResourceRef): Promise<boolean> {
    const review = await this.create(kind('authorization.k8s.io', 'v1', 'selfsubjectaccessreviews').all(), {
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SelfSubjectAccessReview',
      spec: {
        resourceAttributes: {
          verb,
          group: ref.group,
          // a subresource (`pods/proxy`) is its own attribute, as the authorizer sees the request
          resource: ref.resource.split('/')[0],
          ...(ref.resource.includes('/') ? { subresource: ref.resource.split('/')[1] } : {}),
          ...(ref.namespace === undefined ? {} : { namespace: ref.namespace }),
          ...(ref.name === undefined ? {} : { name: ref.name }),
        },
      },
    });
    return (review.status as { allowed?: unknown } | undefined)?.allowed === true;
  }

  async #call(verb: Verb, ref: ResourceRef | undefined, send: () => Promise<unknown>): Promise<unknown> {
    try {
      return await send();
    } catch (err) {
      if (err instanceof ApiStatusError) {
        if (err.status === 401) {
          throw new AmbitError('K8S_UNAUTHORIZED', `the API server ${this.server} refused the credentials of ${this.source} (401 Unauthorized): renew them (a token or certificate may have expired)`, { cause: err });
        }
        if (err.status === 403 && ref !== undefined) throw new KubeForbiddenError(verb, ref, err.apiStatus.message || err.message);
        throw err;
      }
      if (isAmbitError(err)) throw err;
      if (errnoCode(err) !== undefined || (err instanceof Error && err.name === 'AbortError')) {
        throw new AmbitError('K8S_UNREACHABLE', `cannot reach the API server ${this.server} (from ${this.source}): ${(err as Error).message}`, { cause: err });
      }
      throw err;
    }
  }
}

/**
 * The cluster the flags name, as kubectl finds it: --kubeconfig, else $KUBECONFIG (one file), else ~/.kube/config,
 * else the pod's service account. A kubeconfig that cannot be read, or names no such context, is a usage error
 * (exit 2): nothing was sent, and the same flags would fail the same way.
 */
export async function connectCluster(command: string, flags: { kubeconfig?: string | undefined; context?: string | undefined }, env: NodeJS.ProcessEnv = process.env): Promise<ClusterClient> {
  let file = flags.kubeconfig;
  if (file === '') throw usageError(command, '--kubeconfig needs a path');
  if (file === undefined && env.KUBECONFIG !== undefined && env.KUBECONFIG !== '') {
    const files = env.KUBECONFIG.split(path.delimiter).filter((f) => f !== '');
    if (files.length > 1) throw usageError(command, `KUBECONFIG lists ${files.length} files (${files.join(', ')}); ambit reads one: pass --kubeconfig PATH`);
    file = files[0];
  }
  if (file === undefined) {
    const home = path.join(homedir(), '.kube', 'config');
    if (existsSync(home)) file = home;
  }
  try {
    if (file !== undefined) return new ClusterClient(await loadKubeConfig({ kubeconfig: file, ...(flags.context === undefined ? {} : { context: flags.context }) }), `kubeconfig ${file}`);
    if (env.KUBERNETES_SERVICE_HOST === undefined) {
      throw usageError(command, `no kubeconfig: --kubeconfig is not given, KUBECONFIG is not set, ${path.join(homedir(), '.kube', 'config')} does not exist, and this is not a pod`);
    }
    if (flags.context !== undefined) throw usageError(command, `--context ${flags.context} needs a kubeconfig; in a pod, the service account is used`);
    // AMBIT_SERVICE_ACCOUNT_DIR moves the mounted service account, as for the agent and the controller
    const serviceAccountDir = env.AMBIT_SERVICE_ACCOUNT_DIR || undefined;
    return new ClusterClient(await loadKubeConfig({ inCluster: true, env, ...(serviceAccountDir === undefined ? {} : { serviceAccountDir }) }), "the pod's service account");
  } catch (err) {
    if (isAmbitError(err, 'K8S_KUBECONFIG') || isAmbitError(err, 'K8S_NOT_IN_CLUSTER')) throw usageError(command, err.message);
    throw err;
  }
}
