export {
  HboneClient,
  HboneError,
  HBONE_CONNECT_TIMEOUT_MS,
  HBONE_CONNECTION_WINDOW,
  HBONE_IDLE_TIMEOUT_MS,
  HBONE_KEEPALIVE_INTERVAL_MS,
  HBONE_KEEPALIVE_TIMEOUT_MS,
  HBONE_MAX_SESSION_AGE_MS,
  HBONE_MAX_STREAMS_PER_CONNECTION,
  HBONE_RESPONSE_TIMEOUT_MS,
  HBONE_STREAM_WINDOW,
  type HboneClientOptions,
  type HboneConnectRequest,
  type HboneStream,
  HBONE_REMOVED_ROOT_GRACE_MS,
} from './client.js';
export {
  HBONE_HANDSHAKE_TIMEOUT_MS,
  HBONE_MAX_CONNECTIONS,
  HBONE_MAX_CONNECTIONS_PER_SOURCE,
  HboneServer,
  refuseStream,
  type HboneInboundRequest,
  type HboneRefusal,
  type HboneSessionClose,
  type HboneSessionCloseDetail,
  type HboneServerOptions,
} from './server.js';
export {
  buildBaggage,
  formatAuthority,
  forwardedFor,
  newTraceparent,
  parseAuthority,
  parseForwardedFor,
  POLICY_HEADER,
  HBONE_EARLY_DATA_STREAM_BYTES,
  REASON_HEADER,
  type Authority,
  type BaggageFields,
  type HboneHeaders,
} from './protocol.js';
export { hboneContextOptions, peerSpiffeId, SecureContextCache, type TrustBundleSource, type WorkloadCredentials } from './tls.js';

/** The HBONE port of agents and waypoints. */
export const HBONE_PORT = 15008;
