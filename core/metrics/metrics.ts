import http from 'node:http';
import { Registry, collectDefaultMetrics } from 'prom-client';

export { Registry };

/** One registry per process; each module registers its own metrics on it. */
export function createRegistry(options: { defaultMetrics?: boolean } = {}): Registry {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  return registry;
}

/** What `/healthz/ready` answers: 200 `ready`, or 503 with the reason. */
export type Readiness = { readonly ready: true } | { readonly ready: false; readonly reason: string };

/**
 * Serves `/metrics` (Prometheus text format), `/healthz/ready` and `/status` (JSON: what the component says of itself,
 * nothing secret) on one or two plain HTTP listeners. Readiness is
 * a callback so the component decides: an agent is ready only once its listeners are bound and its rules applied.
 */
export function createStatusServer(options: { registry?: Registry; readiness?: () => Readiness; status?: () => unknown }): http.Server {
  return http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/metrics' && options.registry) {
      const registry = options.registry;
      registry
        .metrics()
        .then((text) => {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(text);
        })
        .catch((err: unknown) => {
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end(`metrics collection failed: ${String(err)}\n`);
        });
      return;
    }
    if (path === '/healthz/ready' && options.readiness) {
      const readiness = options.readiness();
      res.writeHead(readiness.ready ? 200 : 503, { 'content-type': 'text/plain' });
      res.end(readiness.ready ? 'ready\n' : `not ready: ${readiness.reason}\n`);
      return;
    }
    if (path === '/status' && options.status) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`${JSON.stringify(options.status())}\n`);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  });
}
