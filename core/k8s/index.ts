/**
 * The Kubernetes API: a reflector (list, then watch, of one kind) that the controller and the agent share, and the
 * kubeconfig loading it takes its credentials from.
 */
export { ApiStatusError, KubeApi, loadKubeConfig, SERVICE_ACCOUNT_DIR, type KubeCredentials } from './api.js';
export { type EventType, type RelistReason, type RewatchReason } from './metrics.js';
export { LIST_TIMEOUT_MS, Reflector, WATCH_STALL_GRACE_MS, type ReflectorConsumer, type ReflectorOptions } from './reflector.js';
export { WATCH_TIMEOUT_MAX_SECONDS, WATCH_TIMEOUT_MIN_SECONDS, type Selectors } from './query.js';
export { BOUND_TOKEN_EXTRA, type KubeObject, type KubeStatus } from './types.js';
