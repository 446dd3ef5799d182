/** A Kubernetes API server double that kubectl and client-node drive (issue 13): the controller's tests and the bench. */
export { ApiServer, DEFAULT_BOOKMARK_INTERVAL_MS, type ApiServerOptions, type ExpiredWatchAnswer, type ObjectHandle } from './server.js';
export type { AccessDenial } from './access.js';
export { MESH_CUSTOM_RESOURCES } from './resources.js';
export { SERVICE_NAME_LABEL, sliceName } from './endpointslices.js';
export { API_SERVER_AUDIENCE, boundServiceAccountUser, NODE_NAME_EXTRA, POD_NAME_EXTRA, POD_UID_EXTRA } from './tokens.js';
export { StatusError } from './status.js';
export type { Json, JsonObject, ResourceType, StoreEvent, TokenUser } from './types.js';
