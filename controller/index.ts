// `ambit controller`: the only component that watches the cluster; it streams compact records to the agents.
export { ChangeLog, changeKey, DEFAULT_HISTORY_VERSIONS, type Delta } from './change-log.js';
export { DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_STREAM_USERS, StreamServer, type Authenticate, type StreamServerOptions, type TokenVerdict } from './stream-server.js';
export { ClusterView, watchedKinds, type WatchedKind } from './cluster-view.js';
