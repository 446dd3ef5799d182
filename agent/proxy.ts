import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';

/** Node does not export the Http2Stream class; its streams are the duplexes with an `rstCode`. */
function isHttp2Stream(stream: Duplex): stream is Duplex & Pick<http2.Http2Stream, 'rstCode' | 'close'> {
  return 'rstCode' in stream && typeof (stream as { close?: unknown }).close === 'function';
}

/** Tears a stream down so its peer sees an abort (TCP RST, or RST_STREAM CANCEL), not a clean end. */
export function abortStream(stream: Duplex): void {
  if (stream.destroyed) return;
  if (stream instanceof net.Socket) {
    stream.resetAndDestroy();
  } else if (isHttp2Stream(stream)) {
    stream.close(http2.constants.NGHTTP2_CANCEL);
  } else {
    stream.destroy();
  }
}

function abortedAbnormally(stream: Duplex): boolean {
  return isHttp2Stream(stream) && stream.rstCode !== undefined && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR;
}

/**
 * Moves bytes both ways until both directions are done. `pipe` gives backpressure (a slow reader pauses the
 * writer, nothing is buffered without bound) and half-close (one side's end becomes the other side's FIN or
 * END_STREAM while the other direction keeps flowing). An error or abort on either side aborts the other, so a reset
 * travels end to end. Resolves with the first error, if any, once both sides are closed.
 */
export function splice(a: Duplex, b: Duplex): Promise<Error | undefined> {
  return new Promise((resolve) => {
    let firstError: Error | undefined;
    let open = 2;
    const onClose = (self: Duplex, other: Duplex) => () => {
      if (abortedAbnormally(self) && !firstError) firstError = new Error('stream reset by peer');
      if (firstError) abortStream(other);
      if (--open === 0) resolve(firstError);
    };
    const onError = (other: Duplex) => (err: Error) => {
      firstError ??= err;
      abortStream(other);
    };
    a.on('error', onError(b));
    b.on('error', onError(a));
    a.once('close', onClose(a, b));
    b.once('close', onClose(b, a));
    pump(a, b);
    pump(b, a);
  });
}

/**
 * How many bytes may wait in a destination's write buffer before the source is paused. Node's default (16 KiB)
 * pauses and resumes the source for nearly every chunk; a larger bound keeps both sides busy at a bounded cost.
 */
export const PUMP_BUFFER_LIMIT = 256 * 1024;

/**
 * A chunk this large is bulk data: more are probably on their way in the same read. HTTP/2 DATA frames (16 KiB)
 * straddle TLS records (16 KiB of plaintext each), so over HBONE a frame usually arrives as two chunks of uneven
 * size; the bound sits well below a frame so that either piece starts the coalescing.
 */
const COALESCE_MIN_CHUNK = 4 * 1024;

/**
 * One direction of a splice, like `pipe` but with a larger buffer bound, and with the full frames that arrive in one
 * turn of the event loop (up to its check phase) written to a socket together: HTTP/2 hands over at most 16 KiB a
 * DATA frame, and one syscall per frame would cost more than the copy it carries. A small chunk (a request, a
 * response) is written at once, so coalescing never adds latency to request/response traffic.
 */
function pump(src: Duplex, dst: Duplex): void {
  const coalesce = dst instanceof net.Socket;
  let corked = false;
  const uncork = () => {
    corked = false;
    dst.uncork();
  };
  const resume = () => src.resume();
  src.on('data', (chunk: Buffer) => {
    if (coalesce && !corked && chunk.length >= COALESCE_MIN_CHUNK) {
      corked = true;
      dst.cork();
      setImmediate(uncork);
    }
    if (!dst.write(chunk) && dst.writableLength >= PUMP_BUFFER_LIMIT) {
      src.pause();
      dst.once('drain', resume);
    }
  });
  src.once('end', () => {
    if (!dst.destroyed) dst.end();
  });
}

/** How long a connect to a pod may take before the client is told it failed (a pod that vanished drops SYNs). */
export const UPSTREAM_CONNECT_TIMEOUT_MS = 5_000;

/** A TCP connection from the agent, resolved once established; `allowHalfOpen` so a FIN does not end both ways. */
export function connectTcp(target: { host: string; port: number }, timeoutMs = UPSTREAM_CONNECT_TIMEOUT_MS): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => {
      const err = Object.assign(new Error(`connect to ${target.host}:${target.port} timed out after ${timeoutMs} ms`), { code: 'ETIMEDOUT' });
      socket.destroy(err);
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}
