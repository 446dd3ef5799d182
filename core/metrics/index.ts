/** Metrics: one prom-client `Registry` a process, and the status server that serves it with readiness. */
export { createRegistry, createStatusServer, Registry, type Readiness } from './metrics.js';
