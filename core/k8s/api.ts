import http from 'node:http';
import https from 'node:https';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { AmbitError } from '../errors/index.js';
import type { KubeStatus } from './types.js';
import { statusOf } from './watch-stream.js';

/** How long a POST (a TokenReview) may take before it is abandoned: a caller waits on it. */
const POST_TIMEOUT_MS = 10_000;
/** The largest answer read to a single-object request: a TokenReview, a created or read object. */
const MAX_POST_ANSWER_BYTES = 1024 * 1024;
/** The largest error body read: enough for a Status object, never a whole page someone put behind a proxy. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

/** The patch KubeApi sends: a JSON merge patch (RFC 7386), which every kind takes, custom resources too. */
const MERGE_PATCH = 'application/merge-patch+json';

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** Where a pod's service-account token, CA and namespace are mounted (the agent's and controller's AMBIT_SERVICE_ACCOUNT_DIR move it: the bench). */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Where and how requests go: the server, and the TLS options and headers of each request. */
export interface KubeCredentials {
  readonly server: URL;
  /**
   * The options of one request (CA, client certificate, bearer token, proxy agent), asked again for each: a
   * projected token is rotated by the kubelet, and a kubeconfig's exec or token-file provider re-reads its own.
   */
  requestOptions(): Promise<https.RequestOptions>;
}

/**
 * Loads credentials: a kubeconfig file (read by client-node, which knows every way a kubeconfig authenticates:
 * tokens, client certificates, exec plugins), or the pod's service account (`inCluster`): the two environment
 * variables the kubelet sets and the mounted token and CA, as client-go's InClusterConfig reads them. The pod's
 * case does not load client-node, whose import alone costs a process 64 MB of RSS (it pulls in its whole generated
 * client): on every node of a cluster, more than the agent's data needs (bench/scale.ts).
 */
export async function loadKubeConfig(
  source: { kubeconfig: string; context?: string } | { inCluster: true; serviceAccountDir?: string; env?: NodeJS.ProcessEnv },
): Promise<KubeCredentials> {
  if ('inCluster' in source) return inClusterCredentials(source.serviceAccountDir ?? SERVICE_ACCOUNT_DIR, source.env ?? process.env);
  const { KubeConfig } = await import('@kubernetes/client-node');
  const config = new KubeConfig();
  try {
    config.loadFromFile(source.kubeconfig);
  } catch (err) {
    throw new AmbitError('K8S_KUBECONFIG', `cannot load kubeconfig ${source.kubeconfig}: ${(err as Error).message}`, { cause: err });
  }
  if (source.context !== undefined) {
    if (config.getContextObject(source.context) === null) {
      const known = config.getContexts().map((c) => c.name);
      throw new AmbitError('K8S_KUBECONFIG', `kubeconfig ${source.kubeconfig} has no context ${source.context} (it has: ${known.length === 0 ? 'none' : known.join(', ')})`);
    }
    config.setCurrentContext(source.context);
  }
  const cluster = config.getCurrentCluster();
  if (cluster === null) throw new AmbitError('K8S_KUBECONFIG', 'the kubeconfig has no current context with a cluster (set current-context)');
  let server: URL;
  try {
    server = new URL(cluster.server);
  } catch (err) {
    throw new AmbitError('K8S_KUBECONFIG', `cluster ${cluster.name} has no valid server URL`, { cause: err });
  }
  return {
    server,
    requestOptions: async () => {
      const options: https.RequestOptions = {};
      await config.applyToHTTPSOptions(options);
      return options;
    },
  };
}

async function inClusterCredentials(dir: string, env: NodeJS.ProcessEnv): Promise<KubeCredentials> {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) {
    throw new AmbitError('K8S_NOT_IN_CLUSTER', 'KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set: not running in a pod (pass a kubeconfig instead)');
  }
  const server = new URL(`https://${isIP(host) === 6 ? `[${host}]` : host}:${port}`);
  const tokenFile = path.join(dir, 'token');
  const readToken = async (): Promise<string> => {
    let token: string;
    try {
      token = (await readFile(tokenFile, 'utf8')).trim();
    } catch (err) {
      throw new AmbitError('K8S_NOT_IN_CLUSTER', `cannot read the service-account token ${tokenFile}: ${(err as Error).message}`, { cause: err });
    }
    if (token === '') throw new AmbitError('K8S_NOT_IN_CLUSTER', `the service-account token ${tokenFile} is empty`);
    return token;
  };
  // read once, as client-go does: the cluster CA changes with a control-plane rotation, which restarts the pods
  let ca: string;
  try {
    ca = await readFile(path.join(dir, 'ca.crt'), 'utf8');
  } catch (err) {
    throw new AmbitError('K8S_NOT_IN_CLUSTER', `cannot read the cluster CA ${path.join(dir, 'ca.crt')}: ${(err as Error).message}`, { cause: err });
  }
  await readToken();
  return {
    server,
    // the kubelet rotates the projected token in place: read it for each request, as client-go does every minute
    requestOptions: async () => ({ ca, headers: { authorization: `Bearer ${await readToken()}` } }),
  };
}

/** An API answer other than 200, with the Status the server sent (its code and reason decide retry or relist). */
export class ApiStatusError extends AmbitError {
  readonly status: number;
  readonly apiStatus: KubeStatus;

  constructor(status: number, apiStatus: KubeStatus, what: string) {
    const reason = apiStatus.reason === '' ? http.STATUS_CODES[status] ?? '' : apiStatus.reason;
    super('K8S_API_STATUS', `${what}: HTTP ${status} ${reason}${apiStatus.message === '' ? '' : `: ${apiStatus.message}`}`);
    this.status = status;
    this.apiStatus = apiStatus;
  }
}

/** A response being read, and the release of its socket and of the agent client-node made for it. */
export interface ApiResponse {
  response: http.IncomingMessage;
  release(): void;
}

/**
 * GET requests to the API server with the kubeconfig's credentials. Each request asks client-node for its options
 * again (applyToHTTPSOptions: CA, client certificate, bearer token, proxy agent), because its token-file and exec
 * providers re-read a rotated token there; the agent it creates is destroyed with the response, so a stopped
 * reflector leaves no socket behind.
 */
export class KubeApi {
  readonly #credentials: KubeCredentials;
  readonly #server: URL;

  constructor(credentials: KubeCredentials) {
    this.#credentials = credentials;
    this.#server = credentials.server;
  }

  /** The server's address, for logs. */
  get server(): string {
    return this.#server.origin;
  }

  /** Sends `GET path?query`; resolves once the response's headers are in. */
  get(path: string, query: URLSearchParams, signal: AbortSignal): Promise<ApiResponse> {
    return this.#send('GET', path, query, signal, undefined);
  }

  /**
   * Sends `POST path` with a JSON body (a TokenReview, a create) and returns the parsed answer; an answer other than
   * 200 or 201 is an ApiStatusError with the server's Status. Aborted after `timeoutMs`.
   */
  async post(path: string, body: unknown, timeoutMs = POST_TIMEOUT_MS): Promise<unknown> {
    return this.#json('POST', path, JSON.stringify(body), timeoutMs);
  }

  /**
   * `GET path?query` of one object (or a small list: `maxBytes`, default 1 MiB), parsed; a 404 (or any answer but
   * 200) is an ApiStatusError with the server's Status.
   */
  async read(path: string, timeoutMs = POST_TIMEOUT_MS, options: { query?: URLSearchParams; maxBytes?: number } = {}): Promise<unknown> {
    return this.#json('GET', path, undefined, timeoutMs, options.query, options.maxBytes);
  }

  /** `PATCH path` with a JSON merge patch (RFC 7386: `null` removes a key), the object's new state returned. */
  async mergePatch(path: string, patch: unknown, timeoutMs = POST_TIMEOUT_MS): Promise<unknown> {
    return this.#json('PATCH', path, JSON.stringify(patch), timeoutMs);
  }

  /** `PUT path` with a JSON body (an update; a stale resourceVersion is a 409 ApiStatusError). */
  async put(path: string, body: unknown, timeoutMs = POST_TIMEOUT_MS): Promise<unknown> {
    return this.#json('PUT', path, JSON.stringify(body), timeoutMs);
  }

  /** `DELETE path` (background propagation: the object's dependents go after it); a 404 is an ApiStatusError. */
  async delete(path: string, timeoutMs = POST_TIMEOUT_MS): Promise<unknown> {
    return this.#json('DELETE', path, JSON.stringify({ kind: 'DeleteOptions', apiVersion: 'v1', propagationPolicy: 'Background' }), timeoutMs);
  }

  async #json(method: Method, path: string, body: string | undefined, timeoutMs: number, query = new URLSearchParams(), maxBytes = MAX_POST_ANSWER_BYTES): Promise<unknown> {
    const { response, release } = await this.#send(method, path, query, AbortSignal.timeout(timeoutMs), body);
    try {
      if (response.statusCode !== 200 && response.statusCode !== 201 && response.statusCode !== 202) throw await statusError(response, `${method} ${path}`);
      return JSON.parse(await readBody(response, maxBytes)) as unknown;
    } finally {
      release();
    }
  }

  async #send(method: Method, path: string, query: URLSearchParams, signal: AbortSignal, body: string | undefined): Promise<ApiResponse> {
    const options = await this.#credentials.requestOptions();
    const url = new URL(this.#server.href.replace(/\/$/, '') + path);
    url.search = query.toString();
    const agent = options.agent;
    const release = (): void => {
      if (agent instanceof http.Agent) agent.destroy();
    };
    const send = url.protocol === 'http:' ? http.request : https.request;
    const contentType = method === 'PATCH' ? MERGE_PATCH : 'application/json';
    // a length always: Node sends a DELETE's body neither chunked nor sized otherwise, and the server reads it as the next request
    const headers = { ...options.headers, accept: 'application/json', ...(body === undefined ? {} : { 'content-type': contentType, 'content-length': Buffer.byteLength(body) }) };
    return new Promise<ApiResponse>((resolve, reject) => {
      const request = send(url, { ...options, method, headers, signal });
      request.once('response', (response) =>
        resolve({
          response,
          release: () => {
            response.destroy();
            release();
          },
        }),
      );
      request.once('error', (err) => {
        release();
        reject(err);
      });
      request.end(body);
    });
  }
}

/** Reads a whole response body, refusing one longer than `limit` bytes. */
export async function readBody(response: http.IncomingMessage, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of response as AsyncIterable<Buffer>) {
    length += chunk.length;
    if (length > limit) throw new AmbitError('K8S_RESPONSE_TOO_LARGE', `the response is longer than ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** The error for a non-200 answer: the Status the body holds, when it holds one. */
export async function statusError(response: http.IncomingMessage, what: string): Promise<ApiStatusError> {
  let body = '';
  try {
    body = await readBody(response, MAX_ERROR_BODY_BYTES);
  } catch {
    // the status code alone still says what happened
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  return new ApiStatusError(response.statusCode ?? 0, statusOf(parsed), what);
}
