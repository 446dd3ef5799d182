import { EventEmitter, once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Ajv } from 'ajv';
import yaml from 'js-yaml';
import type { Logger } from '../../core/log/index.js';
import { realTimer, type SetTimer } from '../../core/timer/index.js';
import { AccessControl, SELF_SUBJECT_ACCESS_REVIEW_PATH, type AccessDenial } from './access.js';
import { CustomResourceDefinitions } from './crds.js';
import { discoveryDocument, SERVER_VERSION } from './discovery.js';
import { EndpointSliceController } from './endpointslices.js';
import { admit, fieldValidationOf } from './field-validation.js';
import { DEFAULT_NAMESPACE_CLEANUP_MS, NamespaceController } from './namespaces.js';
import { openApiDocument } from './openapi.js';
import { JSON_PATCH, jsonPatch, MERGE_PATCH, mergePatch, STRATEGIC_MERGE_PATCH } from './patch.js';
import { bootstrapPolicy, RbacAuthorizer, requestAttributes } from './rbac.js';
import { DEFAULT_RESOURCES, RBAC_GROUP, ResourceRegistry } from './resources.js';
import { FieldSelector, LabelSelector, labelsOf } from './selectors.js';
import { podProxyRequest, proxyToPod, type PodProxyRequest } from './proxy.js';
import { badRequest, expired, notFound, statusObject, StatusError } from './status.js';
import { DEFAULT_HISTORY_SIZE, keyOf, ObjectStore } from './store.js';
import { strategicMergePatch } from './strategic-merge.js';
import { generateServingTls, type ServingTls } from './tls.js';
import { TokenRegistry } from './tokens.js';
import { child, isJsonObject, str, type Json, type JsonObject, type ResourceType, type StoreEvent, type TokenUser } from './types.js';
import { EventLines, WatchStream } from './watch.js';

/** The real server's default: a watch with bookmarks allowed gets one about every minute. */
export const DEFAULT_BOOKMARK_INTERVAL_MS = 60_000;
/** The real server's request body limit. */
const LOOPBACK = '127.0.0.1';
const MAX_BODY_BYTES = 3 * 1024 * 1024;
const TOKEN_REVIEW_PATH = '/apis/authentication.k8s.io/v1/tokenreviews';

/**
 * How a watch from a resourceVersion older than the history is refused: `event` is a 200 stream holding one ERROR
 * event with a 410 Status (what the watch cache does once the watch is set up), `status` an HTTP 410 answer (what
 * the real server answers when it refuses at once). A reflector must take both.
 */
export type ExpiredWatchAnswer = 'event' | 'status';

export interface ApiServerOptions {
  /** Changes a watch can resume from (default 1000). */
  historySize?: number;
  bookmarkIntervalMs?: number;
  /** Bookmarks and `timeoutSeconds` run on it; tests pass one they move by hand. */
  timer?: SetTimer;
  expiredWatchAnswer?: ExpiredWatchAnswer;
  /**
   * false: serve as a server with its watch cache disabled, whose `resourceVersion=0` lists honour `limit` and come
   * in pages (the case client-go's pager is for); default true, whose RV=0 lists ignore `limit`, as the watch cache.
   */
  watchCache?: boolean;
  /** One debug line per request. */
  log?: Logger;
  /**
   * The address to listen on (default 127.0.0.1): a testbed's host link address, so that processes in the node
   * namespaces reach the double. The serving certificate names it beside 127.0.0.1 and localhost.
   */
  host?: string;
  /**
   * Authorize every request with RBAC against the stored roles and bindings (rbac.ts), the default roles of a real
   * cluster written in at start; default false: every authenticated user may do anything.
   */
  rbac?: boolean;
  /** How long a deleted namespace stays Terminating before its objects and itself go (default 2 s, on `timer`). */
  namespaceCleanupMs?: number;
}

export interface ApiServerEvents {
  /** A watch stream opened; tests wait on it instead of sleeping. */
  watch: [resource: string];
  /** A watch stream ended, by either side. */
  watchClosed: [resource: string];
  /**
   * An authenticated request, before it is served: tests read what a client sent (its selectors, its continue
   * token) and may change the double's state in between, as a compaction between two pages of a list.
   */
  request: [method: string, path: string, query: URLSearchParams];
  /** A change in the store, as its watchers get it: what a test plays kubelet with (a mounted ConfigMap). */
  change: [event: StoreEvent];
}

/**
 * What a test does to a kind directly, without a client: set up objects, change a pod's status, delete. No RBAC and
 * no field or schema validation: the test writes what it means to. Deleting a namespace is as through the API.
 */
export interface ObjectHandle {
  create(body: JsonObject, namespace?: string): JsonObject;
  get(name: string, namespace?: string): JsonObject | undefined;
  list(namespace?: string): JsonObject[];
  update(body: JsonObject): JsonObject;
  /** A merge patch (RFC 7386) on the current object. */
  patch(name: string, patch: JsonObject, namespace?: string): JsonObject;
  delete(name: string, namespace?: string): JsonObject;
  /** Sets deletionTimestamp, as a graceful pod delete does before the kubelet removes the pod. */
  markTerminating(name: string, namespace?: string): JsonObject;
}

interface Route {
  readonly type: ResourceType;
  readonly namespace: string | undefined;
  readonly name: string | undefined;
}

/**
 * A Kubernetes API server double that real clients drive: HTTPS with its own CA, bearer tokens, discovery and the
 * OpenAPI v3 documents kubectl reads, list with pagination, watch with bookmarks and 410 Expired, selectors,
 * create/update/patch (JSON, merge and strategic merge)/delete for any registered kind, field validation,
 * CustomResourceDefinitions that define kinds and validate their objects, RBAC (an option), TokenReview, namespace
 * deletion, a minimal EndpointSlice controller, plus the failures a reflector must survive (closed, stalled and
 * expired watches, compaction, 500s). No etcd, no admission webhooks, no defaulting, no garbage collector, no
 * subresources, no server-side apply, no dryRun. A test may also deny one permission with denyAccess (a 403 before
 * RBAC is asked); SelfSubjectAccessReviews answer from those denials and, with RBAC on, from RBAC.
 */
export class ApiServer extends EventEmitter<ApiServerEvents> {
  readonly #registry = new ResourceRegistry();
  readonly #store: ObjectStore;
  readonly #tokens = new TokenRegistry();
  readonly #access = new AccessControl();
  readonly #tls: ServingTls;
  readonly #host: string;
  readonly #server: Server;
  readonly #watches = new Set<WatchStream>();
  readonly #failing = new Map<string, number>();
  readonly #timer: SetTimer;
  readonly #bookmarkIntervalMs: number;
  readonly #log: Logger | undefined;
  readonly #controller: EndpointSliceController;
  readonly #crds: CustomResourceDefinitions;
  readonly #namespaces: NamespaceController;
  readonly #rbac: RbacAuthorizer | undefined;
  #expiredWatchAnswer: ExpiredWatchAnswer;
  readonly #watchCache: boolean;
  /** A watch cache that lags behind the store (lagWatchCache): what its lists answer, per kind, and at which RV. */
  #laggingCache: { rv: number; lists: Map<string, JsonObject[]> } | undefined;
  #refuseWatches = false;
  #failTokenReviews: number | undefined;
  readonly #heldUsers = new Set<string>();
  readonly #watchUsers = new WeakMap<WatchStream, string>();
  #url = '';

  private constructor(options: ApiServerOptions, ajv: Ajv) {
    super();
    for (const type of DEFAULT_RESOURCES) this.#registry.register(type);
    this.#store = new ObjectStore(options.historySize ?? DEFAULT_HISTORY_SIZE);
    this.#timer = options.timer ?? realTimer;
    this.#bookmarkIntervalMs = options.bookmarkIntervalMs ?? DEFAULT_BOOKMARK_INTERVAL_MS;
    this.#expiredWatchAnswer = options.expiredWatchAnswer ?? 'event';
    this.#watchCache = options.watchCache ?? true;
    this.#log = options.log?.child({ component: 'apiserver-double' });
    this.#host = options.host ?? LOOPBACK;
    this.#tls = generateServingTls(this.#host === LOOPBACK ? [] : [this.#host]);
    this.#server = createServer({ key: this.#tls.keyPem, cert: this.#tls.certPem }, (req, res) => this.#handle(req, res));
    this.#store.subscribe((event) => {
      this.emit('change', event);
      if (this.#watches.size === 0) return;
      const lines = new EventLines(event);
      for (const watch of this.#watches) watch.deliver(lines);
    });
    this.#controller = new EndpointSliceController(this.#store, this.#registry);
    this.#crds = new CustomResourceDefinitions(this.#store, this.#registry, ajv, (type) => {
      // after the store has delivered the DELETED events it queued while the CRD's removal was being delivered
      queueMicrotask(() => {
        for (const watch of [...this.#watches]) if (keyOf(watch.resourceType) === keyOf(type)) watch.close();
      });
    });
    this.#namespaces = new NamespaceController(this.#store, this.#registry, this.#timer, options.namespaceCleanupMs ?? DEFAULT_NAMESPACE_CLEANUP_MS);
    const namespaces = this.#type('', 'v1', 'namespaces');
    for (const name of ['default', 'kube-system']) this.#store.create(namespaces, '', { metadata: { name } });
    if (options.rbac === true) {
      this.#rbac = new RbacAuthorizer(this.#store, this.#registry);
      const { clusterRoles, clusterRoleBindings } = bootstrapPolicy();
      for (const role of clusterRoles) this.#store.create(this.#type(RBAC_GROUP, 'v1', 'clusterroles'), '', role);
      for (const binding of clusterRoleBindings) this.#store.create(this.#type(RBAC_GROUP, 'v1', 'clusterrolebindings'), '', binding);
    }
  }

  /** Starts a double on 127.0.0.1 (or `host`), an ephemeral port, with namespaces `default` and `kube-system`. */
  static async start(options: ApiServerOptions = {}): Promise<ApiServer> {
    // imported here, not at the top: ajv is a devDependency, and `ambit demo` loads the testbed's modules where only
    // the dependencies are installed (the image)
    const { Ajv } = await import('ajv');
    // strict off: a CRD schema holds OpenAPI's and Kubernetes' own keywords (nullable, x-kubernetes-*), formats unchecked
    const server = new ApiServer(options, new Ajv({ strict: false, allErrors: true, validateFormats: false }));
    server.#server.listen(0, server.#host);
    await once(server.#server, 'listening');
    server.#url = `https://${server.#host}:${(server.#server.address() as AddressInfo).port}`;
    return server;
  }

  /** `https://127.0.0.1:PORT`, or the `host` it was given */
  get url(): string {
    return this.#url;
  }

  /** The CA that signed the serving certificate: what a client trusts. */
  get caPem(): string {
    return this.#tls.caPem;
  }

  get resourceVersion(): string {
    return String(this.#store.resourceVersion);
  }

  get openWatches(): number {
    return this.#watches.size;
  }

  addToken(token: string, user: TokenUser): void {
    this.#tokens.add(token, user);
  }

  /**
   * Takes a permission from `username`: its requests for it get the real server's 403 Forbidden, and its
   * SelfSubjectAccessReviews of it `allowed: false`. Everything not denied is allowed.
   */
  denyAccess(username: string, denial: AccessDenial): void {
    this.#access.deny(username, denial);
  }

  /** A kind beyond the defaults, as a CRD: `{ group: 'security.ambit.dev', version: 'v1', resource: 'authorizationpolicies', ... }`. */
  registerResource(type: ResourceType): void {
    this.#registry.register(type);
  }

  /** Writes a kubeconfig (mode 0600) for kubectl and client-node's `KubeConfig.loadFromFile`, authenticating with `token`. */
  async writeKubeconfig(path: string, token: string, namespace?: string): Promise<void> {
    const config = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'ambit-double', cluster: { server: this.#url, 'certificate-authority-data': Buffer.from(this.#tls.caPem).toString('base64') } }],
      users: [{ name: 'ambit-double-user', user: { token } }],
      contexts: [{ name: 'ambit-double', context: { cluster: 'ambit-double', user: 'ambit-double-user', ...(namespace === undefined ? {} : { namespace }) } }],
      'current-context': 'ambit-double',
    };
    await writeFile(path, yaml.dump(config), { mode: 0o600 });
  }

  /** Direct access to a kind's objects for a test's setup; every change is a real change with events. */
  objects(apiVersion: string, resource: string): ObjectHandle {
    const [group, version] = apiVersion.includes('/') ? (apiVersion.split('/') as [string, string]) : ['', apiVersion];
    const type = this.#type(group, version, resource);
    const store = this.#store;
    const ns = (namespace: string | undefined): string => (type.namespaced ? (namespace ?? 'default') : '');
    return {
      create: (body, namespace) => store.create(type, ns(namespace ?? str(child(body, 'metadata').namespace)), body),
      get: (name, namespace) => store.get(type, ns(namespace), name),
      list: (namespace) => store.list(type, namespace),
      update: (body) => store.update(type, ns(str(child(body, 'metadata').namespace)), str(child(body, 'metadata').name) ?? '', body),
      patch: (name, patch, namespace) => {
        const current = store.get(type, ns(namespace), name);
        if (current === undefined) throw notFound(type.resource, name, type.group);
        return store.update(type, ns(namespace), name, asObject(mergePatch(current, patch)));
      },
      delete: (name, namespace) => this.#delete(type, ns(namespace), name),
      markTerminating: (name, namespace) => store.markTerminating(type, ns(namespace), name),
    };
  }

  // Failure injection, for the reflector's tests.

  /** Ends every open watch stream; with `refuse`, new watches get 503 until `acceptWatches()`. */
  closeWatches(options: { refuse?: boolean } = {}): void {
    if (options.refuse === true) this.#refuseWatches = true;
    for (const watch of [...this.#watches]) watch.close();
  }

  acceptWatches(): void {
    this.#refuseWatches = false;
  }

  /**
   * Ends the open watches of one user and refuses (503) its lists and watches until `releaseWatchesOf`: that client's view
   * falls behind while every other client's keeps up, as when one component cannot reach the API server.
   */
  holdWatchesOf(username: string): void {
    this.#heldUsers.add(username);
    for (const watch of [...this.#watches]) if (this.#watchUsers.get(watch) === username) watch.close();
  }

  releaseWatchesOf(username: string): void {
    this.#heldUsers.delete(username);
  }

  /** Open watches stop sending anything and keep their connections: a hung watch. Returns how many. */
  stallWatches(): number {
    for (const watch of this.#watches) watch.stall();
    return this.#watches.size;
  }

  /**
   * Sends every open watch an ERROR event with a 410 Expired Status, then closes it; with `keepOpen`, leaves the
   * stream open after the event, so a test sees that the client ends it rather than wait for the server.
   */
  expireWatches(options: { keepOpen?: boolean } = {}): void {
    const status = expired('too old resource version: the watch cache was reset');
    for (const watch of [...this.#watches]) {
      if (options.keepOpen === true) watch.sendError(status);
      else watch.fail(status);
    }
  }

  /** A BOOKMARK now to every watch that allowed them. */
  sendBookmarks(): void {
    for (const watch of this.#watches) if (watch.bookmarks) watch.sendBookmark();
  }

  /**
   * From now until `catchUpWatchCache`, the watch cache lags: it stays at the state of now, as the cache of another
   * API server replica can be behind. Lists at `resourceVersion=0` ("any") answer from it; a list at a newer
   * resourceVersion X ("not older than X") waits for it, as the real cache does for up to 3 s, and then fails with
   * 504 and the cause ResourceVersionTooLarge; an unset resourceVersion reads the store ("etcd").
   */
  lagWatchCache(): void {
    const lists = new Map<string, JsonObject[]>();
    for (const type of this.#registry.all()) lists.set(keyOf(type), this.#store.list(type));
    this.#laggingCache = { rv: this.#store.resourceVersion, lists };
  }

  catchUpWatchCache(): void {
    this.#laggingCache = undefined;
  }

  /** Forgets the event history and the list snapshots: older resourceVersions and continue tokens expire. */
  compact(): void {
    this.#store.compact();
  }

  set expiredWatchAnswer(answer: ExpiredWatchAnswer) {
    this.#expiredWatchAnswer = answer;
  }

  /** Every request for the kind gets `code` (default 500) until `healResource`. */
  failResource(apiVersion: string, resource: string, code = 500): void {
    const [group, version] = apiVersion.includes('/') ? (apiVersion.split('/') as [string, string]) : ['', apiVersion];
    this.#failing.set(keyOf(this.#type(group, version, resource)), code);
  }

  /** Every TokenReview gets `code` (default 500) until `healTokenReviews`: the authenticator itself failing. */
  failTokenReviews(code = 500): void {
    this.#failTokenReviews = code;
  }

  healTokenReviews(): void {
    this.#failTokenReviews = undefined;
  }

  healResource(apiVersion: string, resource: string): void {
    const [group, version] = apiVersion.includes('/') ? (apiVersion.split('/') as [string, string]) : ['', apiVersion];
    this.#failing.delete(keyOf(this.#type(group, version, resource)));
  }

  /** Resolves once at least `count` watches are open. */
  async waitForWatches(count: number): Promise<void> {
    while (this.#watches.size < count) await once(this, 'watch');
  }

  /** Resolves once every watch has ended (a client that went away is seen when its connection closes). */
  async waitForNoWatches(): Promise<void> {
    while (this.#watches.size > 0) await once(this, 'watchClosed');
  }

  /**
   * Goes down as an API server restart looks to its clients: every watch and connection ends and the port refuses,
   * while the store (objects, resourceVersion, history) is kept for `resume()`.
   */
  async stop(): Promise<void> {
    for (const watch of [...this.#watches]) watch.close();
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
  }

  /** Listens again on the same address and port after `stop()`, with the same store, CA and tokens. */
  async resume(): Promise<void> {
    const { hostname, port } = new URL(this.#url);
    this.#server.listen(Number(port), hostname);
    await once(this.#server, 'listening');
  }

  async close(): Promise<void> {
    this.#controller.stop();
    this.#crds.stop();
    this.#namespaces.stop();
    for (const watch of [...this.#watches]) watch.close();
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
  }

  #type(group: string, version: string, resource: string): ResourceType {
    const type = this.#registry.get(group, version, resource);
    if (type === undefined) throw notFound(resource, '', group);
    return type;
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    this.#serve(req, res).catch((err: unknown) => {
      const status = err instanceof StatusError ? err : new StatusError(500, 'InternalError', `the double failed: ${err instanceof Error ? err.message : String(err)}`);
      if (status.httpStatus >= 500) this.#log?.warn({ err }, 'request failed');
      if (res.headersSent) res.end();
      else sendJson(res, status.httpStatus, status.toStatus());
    });
  }

  async #serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'https://double');
    const method = req.method ?? 'GET';
    this.#log?.debug({ method, path: url.pathname, query: url.search }, 'request');
    const user = this.#tokens.authenticate(req.headers.authorization);
    if (user === undefined) {
      sendJson(res, 401, statusObject(401, 'Unauthorized', 'Unauthorized'));
      return;
    }
    const path = url.pathname.replace(/\/+$/, '') || '/';
    this.emit('request', method, path, url.searchParams);
    this.#rbac?.authorize(user, requestAttributes(method, path, url.searchParams));
    if (url.searchParams.has('dryRun')) throw badRequest('dryRun is not served by the double: it would write what it was asked to try');
    if (method === 'POST' && path === TOKEN_REVIEW_PATH) {
      if (this.#failTokenReviews !== undefined) throw new StatusError(this.#failTokenReviews, 'InternalError', 'TokenReviews are failing (injected by the test)');
      sendJson(res, 201, this.#tokens.review(asObject(await readJson(req))));
      return;
    }
    if (method === 'POST' && path === SELF_SUBJECT_ACCESS_REVIEW_PATH) {
      const rbac = this.#rbac;
      const rbacAllows =
        rbac === undefined
          ? undefined
          : (a: { verb: string; group: string; resource: string; subresource: string; namespace: string; name: string }) => {
              try {
                rbac.authorize(user, { verb: a.verb, path: '', resourceRequest: true, apiGroup: a.group, resource: a.resource, subresource: a.subresource, namespace: a.namespace, name: a.name });
                return true;
              } catch {
                return false;
              }
            };
      sendJson(res, 201, this.#access.review(user, asObject(await readJson(req)), rbacAllows));
      return;
    }
    if (method === 'GET' && path === '/version') {
      sendJson(res, 200, SERVER_VERSION);
      return;
    }
    const proxied = podProxyRequest(url.pathname, url.search);
    if (proxied !== undefined) {
      this.#access.authorizeProxy(user, proxied.namespace, proxied.pod);
      await this.#proxyToPod(proxied, req, res);
      return;
    }
    const document = method === 'GET' ? discoveryDocument(this.#registry, path, new URL(this.#url).host) : undefined;
    if (document !== undefined) {
      sendJson(res, 200, document);
      return;
    }
    const openApi = method === 'GET' ? openApiDocument(this.#registry, path, url.searchParams) : undefined;
    if (openApi !== undefined) {
      res.setHeader('Cache-Control', openApi.immutable ? 'public, immutable' : 'no-cache, private');
      sendJson(res, 200, openApi.body);
      return;
    }
    const route = this.#route(path);
    const failure = this.#failing.get(keyOf(route.type));
    if (failure !== undefined) throw new StatusError(failure, 'InternalError', `${route.type.resource} is failing (injected by the test)`);
    const query = url.searchParams;
    this.#access.authorize(user, method, route.type, route, query.get('watch') === '1' || query.get('watch') === 'true');
    if (route.name === undefined) {
      if (method === 'GET') {
        if (this.#heldUsers.has(user.username)) throw new StatusError(503, 'ServiceUnavailable', `lists and watches of ${user.username} are refused (injected by the test)`);
        const watch = query.get('watch');
        if (watch === '1' || watch === 'true') this.#watch(route, query, res, user.username);
        else sendJson(res, 200, this.#list(route, query));
      } else if (method === 'POST') {
        sendJson(res, 201, this.#create(route, asObject(await readJson(req)), query, res));
      } else {
        throw new StatusError(405, 'MethodNotAllowed', `${method} is not served on a collection by the double`);
      }
      return;
    }
    const namespace = route.namespace ?? '';
    switch (method) {
      case 'GET': {
        const object = this.#store.get(route.type, namespace, route.name);
        if (object === undefined) throw notFound(route.type.resource, route.name, route.type.group);
        sendJson(res, 200, object);
        return;
      }
      case 'PUT': {
        const body = asObject(await readJson(req));
        checkBody(route, body);
        sendJson(res, 200, this.#store.update(route.type, namespace, route.name, this.#admit(route.type, body, query, res)));
        return;
      }
      case 'PATCH': {
        const patch = await readJson(req);
        const current = this.#store.get(route.type, namespace, route.name);
        if (current === undefined) throw notFound(route.type.resource, route.name, route.type.group);
        const contentType = (req.headers['content-type'] ?? '').split(';')[0]?.trim();
        let patched: JsonObject;
        if (contentType === MERGE_PATCH) patched = asObject(mergePatch(current, patch));
        else if (contentType === STRATEGIC_MERGE_PATCH && route.type.builtIn === true) patched = strategicMergePatch(current, patch, route.type.kind);
        else if (contentType === JSON_PATCH) patched = jsonPatch(current, patch);
        else {
          // as the real server: a custom resource has no Go type to take a strategic merge patch's merge keys from
          const accepted = [JSON_PATCH, MERGE_PATCH, ...(route.type.builtIn === true ? [STRATEGIC_MERGE_PATCH] : [])];
          throw new StatusError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: ${accepted.join(', ')}`);
        }
        sendJson(res, 200, this.#store.update(route.type, namespace, route.name, this.#admit(route.type, patched, query, res)));
        return;
      }
      case 'DELETE':
        await readDeleteOptions(req);
        sendJson(res, 200, this.#delete(route.type, namespace, route.name));
        return;
      default:
        throw new StatusError(405, 'MethodNotAllowed', `${method} is not served by the double`);
    }
  }

  /** `/api/v1[/namespaces/NS]/RESOURCE[/NAME]` or `/apis/GROUP/VERSION/...`; subresources are not served. */
  /** The pods proxy: to the pod's IP (its host's, for a hostNetwork pod), which must be known. */
  #proxyToPod(request: PodProxyRequest, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const type = this.#type('', 'v1', 'pods');
    const pod = this.#store.get(type, request.namespace, request.pod);
    if (pod === undefined) throw notFound('pods', request.pod, '');
    const status = (pod['status'] ?? {}) as { podIP?: string; hostIP?: string };
    const hostNetwork = ((pod['spec'] ?? {}) as { hostNetwork?: boolean }).hostNetwork === true;
    const ip = status.podIP ?? (hostNetwork ? status.hostIP : undefined);
    if (ip === undefined) throw new StatusError(503, 'ServiceUnavailable', `pod ${request.namespace}/${request.pod} has no IP yet`);
    return proxyToPod(ip, request, req, res);
  }

  #route(path: string): Route {
    const m = /^\/(?:api\/(v1)|apis\/([^/]+)\/([^/]+))\/(.+)$/.exec(path);
    if (m === null) throw new StatusError(404, 'NotFound', `the server could not find the requested resource (${path})`);
    const group = m[2] ?? '';
    const version = m[1] ?? m[3] ?? '';
    const parts = (m[4] ?? '').split('/').map(decodeURIComponent);
    let namespace: string | undefined;
    if (parts[0] === 'namespaces' && parts.length >= 3) {
      namespace = parts[1];
      parts.splice(0, 2);
    }
    const [resource = '', name, ...rest] = parts;
    const type = this.#registry.get(group, version, resource);
    if (type === undefined || rest.length > 0 || (namespace !== undefined && !type.namespaced)) {
      throw new StatusError(404, 'NotFound', `the server could not find the requested resource (${path})`);
    }
    return { type, namespace, name };
  }

  #selectors(route: Route, query: URLSearchParams): { labels: LabelSelector; fields: FieldSelector } {
    return {
      labels: LabelSelector.parse(query.get('labelSelector') ?? undefined),
      fields: FieldSelector.parse(query.get('fieldSelector') ?? undefined, route.type.kind),
    };
  }

  #list(route: Route, query: URLSearchParams): JsonObject {
    const { labels, fields } = this.#selectors(route, query);
    const limit = parseCount(query.get('limit'), 'limit');
    const cont = query.get('continue');
    const rvParam = query.get('resourceVersion');
    let rv: number;
    let items: readonly JsonObject[];
    let offset = 0;
    let snapshotId: string | undefined;
    if (cont !== null && cont !== '') {
      const token = decodeContinue(cont);
      const snapshot = this.#store.snapshot(token.id);
      ({ rv, items } = snapshot);
      offset = token.offset;
      snapshotId = token.id;
    } else {
      // The real server's semantics of a list's resourceVersion: unset is a quorum read; "0" is any state the watch
      // cache has; X with a limit (and no match, or match=Exact) is exactly X, read from etcd; X without a limit is
      // any state not older than X, from the watch cache.
      const atVersion = rvParam !== null && rvParam !== '' && rvParam !== '0';
      const exact = atVersion && (query.get('resourceVersionMatch') === 'Exact' || (query.get('resourceVersionMatch') === null && limit !== undefined && limit > 0));
      if (exact && rvParam !== String(this.#store.resourceVersion)) {
        throw expired(`too old resource version: ${rvParam} (the double serves Exact only at its current resourceVersion)`);
      }
      const cache = this.#laggingCache;
      const fromCache = cache !== undefined && !exact && (rvParam === '0' || atVersion);
      if (fromCache && atVersion && Number(rvParam) > cache.rv) {
        throw new StatusError(504, 'Timeout', `Too large resource version: ${rvParam}, current: ${cache.rv}`, {
          causes: [{ reason: 'ResourceVersionTooLarge', message: 'Too large resource version' }],
          retryAfterSeconds: 1,
        });
      }
      rv = fromCache ? cache.rv : this.#store.resourceVersion;
      const listed = fromCache
        ? (cache.lists.get(keyOf(route.type)) ?? []).filter((o) => route.namespace === undefined || (o.metadata as { namespace?: string } | undefined)?.namespace === route.namespace)
        : this.#store.list(route.type, route.namespace);
      items = listed.filter((o) => labels.matches(labelsOf(o)) && fields.matches(o));
    }
    // resourceVersion=0 is served from the watch cache, which ignores limit, as the real server's.
    const pageSize = (rvParam === '0' && this.#watchCache) || limit === undefined || limit === 0 ? items.length : limit;
    const page = items.slice(offset, offset + pageSize);
    const metadata: JsonObject = { resourceVersion: String(rv) };
    if (offset + pageSize < items.length) {
      snapshotId ??= this.#store.saveSnapshot(rv, items);
      metadata.continue = Buffer.from(JSON.stringify({ id: snapshotId, offset: offset + pageSize })).toString('base64url');
      metadata.remainingItemCount = items.length - offset - pageSize;
    }
    return {
      kind: `${route.type.kind}List`,
      apiVersion: route.type.group === '' ? route.type.version : `${route.type.group}/${route.type.version}`,
      metadata,
      items: page.map((o) => (route.type.builtIn === true ? withoutTypeMeta(o) : o)),
    };
  }

  #watch(route: Route, query: URLSearchParams, res: ServerResponse, username: string): void {
    if (this.#refuseWatches) throw new StatusError(503, 'ServiceUnavailable', 'watches are refused (injected by the test)');
    const { labels, fields } = this.#selectors(route, query);
    const rvParam = query.get('resourceVersion');
    const timeoutSeconds = parseCount(query.get('timeoutSeconds'), 'timeoutSeconds');
    let replay: ReturnType<ObjectStore['eventsSince']> | undefined;
    let tooOld: StatusError | undefined;
    if (rvParam !== null && rvParam !== '' && rvParam !== '0') {
      if (!/^\d+$/.test(rvParam)) throw badRequest(`invalid resource version "${rvParam}"`);
      try {
        replay = this.#store.eventsSince(Number(rvParam), keyOf(route.type));
      } catch (err) {
        if (!(err instanceof StatusError) || this.#expiredWatchAnswer === 'status') throw err;
        tooOld = err;
      }
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    const stream = new WatchStream(res, {
      filter: { type: route.type, namespace: route.namespace, labels, fields },
      bookmarks: query.get('allowWatchBookmarks') === 'true' || query.get('allowWatchBookmarks') === '1',
      bookmarkIntervalMs: this.#bookmarkIntervalMs,
      timeoutMs: timeoutSeconds === undefined || timeoutSeconds === 0 ? undefined : timeoutSeconds * 1000,
      timer: this.#timer,
      currentRv: () => this.#store.resourceVersion,
      onClose: () => {
        if (this.#watches.delete(stream)) this.emit('watchClosed', route.type.resource);
      },
    });
    if (tooOld !== undefined) {
      stream.fail(tooOld);
      return;
    }
    if (replay === undefined) stream.sendInitial(this.#store.list(route.type, route.namespace));
    else for (const event of replay) stream.deliver(new EventLines(event));
    if (stream.closed) return;
    this.#watches.add(stream);
    this.#watchUsers.set(stream, username);
    this.emit('watch', route.type.resource);
  }

  #create(route: Route, body: JsonObject, query: URLSearchParams, res: ServerResponse): JsonObject {
    checkBody(route, body);
    const bodyNamespace = str(child(body, 'metadata').namespace);
    if (route.type.namespaced && route.namespace === undefined) throw badRequest(`a ${route.type.kind} is created in a namespace: POST to .../namespaces/NS/${route.type.resource}`);
    if (bodyNamespace !== undefined && route.namespace !== undefined && bodyNamespace !== route.namespace) {
      throw badRequest('the namespace of the provided object does not match the namespace sent on the request');
    }
    return this.#store.create(route.type, route.namespace ?? '', this.#admit(route.type, body, query, res));
  }

  /** Field validation (field-validation.ts) and a CRD's own checks, before a body is stored; warnings go in `Warning` headers. */
  #admit(type: ResourceType, body: JsonObject, query: URLSearchParams, res: ServerResponse): JsonObject {
    const { object, warnings } = admit(type, body, fieldValidationOf(query), this.#crds.schemaOf(type));
    this.#crds.check(type, object);
    if (warnings.length > 0) res.setHeader('Warning', warnings.map((warning) => `299 - ${JSON.stringify(warning)}`));
    return object;
  }

  /** Deletes an object; a namespace goes Terminating, and later takes its objects with it (namespaces.ts). */
  #delete(type: ResourceType, namespace: string, name: string): JsonObject {
    if (type.resource === 'namespaces' && type.group === '') return this.#namespaces.terminate(name);
    return this.#store.delete(type, namespace, name);
  }
}

function checkBody(route: Route, body: JsonObject): void {
  const apiVersion = route.type.group === '' ? route.type.version : `${route.type.group}/${route.type.version}`;
  if (body.kind !== undefined && body.kind !== route.type.kind) throw badRequest(`the body is a ${String(body.kind)}, the path is for ${route.type.kind}`);
  if (body.apiVersion !== undefined && body.apiVersion !== apiVersion) throw badRequest(`the body is ${String(body.apiVersion)}, the path is for ${apiVersion}`);
}

function withoutTypeMeta(object: JsonObject): JsonObject {
  const { kind: _kind, apiVersion: _apiVersion, ...rest } = object;
  return rest;
}

function decodeContinue(token: string): { id: string; offset: number } {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
    if (typeof parsed === 'object' && parsed !== null && 'id' in parsed && 'offset' in parsed) {
      const { id, offset } = parsed;
      if (typeof id === 'string' && typeof offset === 'number' && Number.isInteger(offset) && offset >= 0) return { id, offset };
    }
  } catch {
    // Falls through to the same answer as an expired token: a client can only start a new list.
  }
  throw expired('The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.');
}

function parseCount(value: string | null, name: string): number | undefined {
  if (value === null || value === '') return undefined;
  if (!/^\d+$/.test(value)) throw badRequest(`${name} must be a non-negative integer, not "${value}"`);
  return Number(value);
}

function asObject(value: Json): JsonObject {
  if (!isJsonObject(value)) throw badRequest('the body must be a JSON object');
  return value;
}

/** The body types a JSON-only server reads; merge and JSON patches are JSON too. */
const JSON_BODY = /^application\/(?:[\w.+-]*\+)?json$/;

async function readJson(req: IncomingMessage): Promise<Json> {
  const contentType = (req.headers['content-type'] ?? 'application/json').split(';')[0]?.trim() ?? '';
  // kubectl sends some bodies as protobuf (`kubectl create namespace`): refused with a 415 that says why (kubectl
  // does not fall back to JSON); `create -f`, `label` and patches send JSON
  if (!JSON_BODY.test(contentType)) throw new StatusError(415, 'UnsupportedMediaType', `the body's content type ${contentType} is not supported; send JSON`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > MAX_BODY_BYTES) throw new StatusError(413, 'RequestEntityTooLarge', `the request body is larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as Json;
  } catch (err) {
    throw badRequest(`the body is not JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/**
 * A DELETE's body, when it has one: DeleteOptions, as kubectl sends (`propagationPolicy`). Read and checked, and
 * otherwise changes nothing: the double has no garbage collector to orphan or collect dependents, and no grace period.
 */
async function readDeleteOptions(req: IncomingMessage): Promise<void> {
  if (req.headers['content-length'] === '0' || (req.headers['content-length'] === undefined && req.headers['transfer-encoding'] === undefined)) return;
  const options = asObject(await readJson(req));
  const policy = options.propagationPolicy;
  if (policy !== undefined && policy !== null && policy !== 'Orphan' && policy !== 'Background' && policy !== 'Foreground') {
    throw badRequest(`propagationPolicy must be Orphan, Background or Foreground, not ${JSON.stringify(policy)}`);
  }
}

function sendJson(res: ServerResponse, code: number, body: JsonObject): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}
