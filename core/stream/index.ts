export {
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_SILENCE_DEADLINE_MS,
  MAX_LINE_BYTES,
  SNAPSHOT_CHUNK,
  MAX_MESSAGE_BYTES,
  STREAM_ALPN,
  STREAM_PATH,
  STREAM_TOKEN_AUDIENCE,
  changeKey,
  encodeMessage,
  parseMessage,
  streamLineSplitter,
  type PolicyRecord,
  type StreamChange,
  type StreamMessage,
} from './protocol.js';
export { ClusterView, watchedKinds, type ChangeSink, type Prepared, type WatchedKind } from './view.js';
