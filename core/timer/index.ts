/** The injectable timer that components take, so tests move time, and the backoff of clients that reconnect. */
export { realTimer, type SetTimer } from './timer.js';
export { Backoff, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
