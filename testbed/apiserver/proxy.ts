/**
 * The pods proxy subresource, `/api/v1/namespaces/NS/pods/[http:]NAME:PORT/proxy/PATH`, as kube-apiserver serves it
 * (and `kubectl get --raw` and `ambit status` use it): the request goes on to the pod's IP and port over plain HTTP
 * and the answer comes back as the pod sent it. Only GET, only http, and the port must be given.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { StatusError } from './status.js';

const PROXY_PATH = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/proxy(\/.*)?$/;
/** How long the pod has to answer: the API server's own timeout is longer, a test's is not. */
const PROXY_TIMEOUT_MS = 10_000;

export interface PodProxyRequest {
  namespace: string;
  pod: string;
  port: number;
  /** The path on the pod, with the request's query. */
  path: string;
}

/** The proxy request a path names, undefined when it is not one; a malformed pod reference is a 400. */
export function podProxyRequest(pathname: string, search: string): PodProxyRequest | undefined {
  const match = PROXY_PATH.exec(pathname);
  if (match === null) return undefined;
  const reference = decodeURIComponent(match[2]!).split(':');
  const [scheme, pod, port] = reference.length === 3 ? reference : ['http', ...reference];
  if (scheme !== 'http') throw new StatusError(400, 'BadRequest', `the double proxies to pods over http only, not ${String(scheme)}`);
  const number = Number(port);
  if (pod === undefined || pod === '' || !Number.isInteger(number) || number < 1 || number > 65535) {
    throw new StatusError(400, 'BadRequest', `the double needs a pod reference NAME:PORT, not ${match[2]!}`);
  }
  return { namespace: decodeURIComponent(match[1]!), pod, port: number, path: `${match[3] ?? '/'}${search}` };
}

/** Sends the GET to the pod at `ip` and streams its answer back; an unreachable pod is kube-apiserver's 503. */
export function proxyToPod(ip: string, request: PodProxyRequest, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method !== 'GET') throw new StatusError(405, 'MethodNotAllowed', `${String(req.method)} through the pods proxy is not served by the double`);
  const host = isIP(ip) === 6 ? `[${ip}]` : ip;
  return new Promise((resolve, reject) => {
    const upstream = http.get({ host: ip, port: request.port, path: request.path, timeout: PROXY_TIMEOUT_MS, headers: { accept: req.headers.accept ?? '*/*' } }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, { 'content-type': answer.headers['content-type'] ?? 'application/octet-stream' });
      answer.pipe(res);
      answer.on('end', () => resolve());
      answer.on('error', () => resolve());
    });
    upstream.on('timeout', () => upstream.destroy(new Error('timeout')));
    upstream.on('error', (err) => {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ECONNREFUSED' ? 'connect: connection refused' : err.message;
      reject(new StatusError(503, 'ServiceUnavailable', `error trying to reach service: dial tcp ${host}:${request.port}: ${why}`));
    });
  });
}
