import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { Gauge, type Registry } from 'prom-client';
import { AmbitError, isAmbitError, errnoCode } from '../core/errors/index.js';
import { HBONE_EARLY_DATA_STREAM_BYTES } from '../core/hbone/index.js';
import { canonicalIp } from '../core/ip/index.js';
import { transparentSocket } from '../core/sockopt/index.js';
import type { UpstreamSource } from './config.js';
import type { AgentTelemetry, ConnectionRecord } from './telemetry.js';
import type { Address, ConnectionTracker, Reauthorization, Revalidation } from './types.js';

/** Node does not export the Http2Stream class; its streams are the duplexes with an `rstCode`. */
function isHttp2Stream(stream: Duplex): stream is Duplex & Pick<http2.Http2Stream, 'rstCode' | 'close'> {
  return 'rstCode' in stream && typeof (stream as { close?: unknown }).close === 'function';
}

/** Tears a stream down so its peer sees an abort (TCP RST, or RST_STREAM CANCEL), not a clean end. */
export function abortStream(stream: Duplex): void {
  if (stream.destroyed) return;
  if (stream instanceof net.Socket) {
    // While its shutdown is in flight (end() called, everything written, the FIN being sent), libuv refuses to reset
    // a socket (EINVAL), and Node then emits an error and never closes the handle: the connection leaks and the
    // process spins in its exit cleanup. Then the peer has all the data and is getting its end: closing is all there
    // is left. Before (data still queued: a reset loses it, as an abort must) and after (FIN sent) a reset works.
    if (shutdownInFlight(stream)) stream.destroy();
    else stream.resetAndDestroy();
  } else if (isHttp2Stream(stream)) {
    stream.close(http2.constants.NGHTTP2_CANCEL);
  } else {
    stream.destroy();
  }
}

function shutdownInFlight(socket: net.Socket): boolean {
  return socket.writableEnded && socket.writableLength === 0 && !socket.writableFinished;
}

function abortedAbnormally(stream: Duplex): boolean {
  return isHttp2Stream(stream) && stream.rstCode !== undefined && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR;
}

/**
 * Moves bytes both ways until both directions are done. `pipe` gives backpressure (a slow reader pauses the
 * writer, nothing is buffered without bound) and half-close (one side's end becomes the other side's FIN or
 * END_STREAM while the other direction keeps flowing). An error or abort on either side aborts the other, so a reset
 * travels end to end; so does a side that closes before both its directions ended (a bare `destroy()`). Resolves
 * with the first error, if any, once both sides are closed. With `held`, nothing
 * moves from `b` to `a` (no byte, no end) until it resolves, and nothing ever if it rejects: `b` is a stream whose
 * answer is still to come, and a refusal must reach `a` as a reset, not as an end. Meanwhile at most
 * HBONE_EARLY_DATA_STREAM_BYTES go from `a` to `b`: what the destination holds for a stream it has not answered.
 */
export function splice(a: Duplex, b: Duplex, held?: Promise<void>): Promise<Error | undefined> {
  return new Promise((resolve) => {
    let firstError: Error | undefined;
    let open = 2;
    const onClose = (self: Duplex, other: Duplex) => () => {
      if (abortedAbnormally(self) && !firstError) firstError = new Error('stream reset by peer');
      // A bare destroy() (Agent.close(), a registry's grace timeout) closes a side with no error and no end: what
      // it had still to read or write is lost, so the other side must not wait for it, nor take it for an end.
      if (!firstError && !(self.readableEnded && self.writableFinished)) {
        firstError = new AmbitError('STREAM_CLOSED_EARLY', 'one side of the connection closed before its data was read and written to the end');
      }
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
    pump(a, b, held);
    if (held === undefined) pump(b, a);
    else held.then(() => pump(b, a), () => undefined);
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
function pump(src: Duplex, dst: Duplex, answer?: Promise<void>): void {
  const coalesce = dst instanceof net.Socket;
  // Bytes that may still go before `answer` (the destination holds them, and refuses a stream that sends more);
  // undefined once it came. The rest of a chunk past it waits in `src`, which pauses until then.
  let early: number | undefined;
  let awaitingAnswer = false;
  if (answer !== undefined) {
    early = HBONE_EARLY_DATA_STREAM_BYTES;
    answer.then(
      () => {
        early = undefined;
        if (awaitingAnswer) src.resume();
      },
      () => undefined,
    );
  }
  let corked = false;
  const uncork = () => {
    corked = false;
    dst.uncork();
  };
  const resume = () => src.resume();
  src.on('data', (data: Buffer) => {
    let chunk = data;
    if (early !== undefined) {
      if (chunk.length > early) {
        awaitingAnswer = true;
        src.pause();
        src.unshift(chunk.subarray(early));
        chunk = chunk.subarray(0, early);
      }
      early -= chunk.length;
      if (chunk.length === 0) return;
    }
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

/**
 * A TCP connection from the agent, resolved once established; `allowHalfOpen` so a FIN does not end both ways.
 * `socket`, when given, is an unconnected socket to connect (a transparent one); otherwise a new one is made.
 */
export function connectTcp(
  target: { host: string; port: number },
  options: { timeoutMs?: number; socket?: net.Socket } = {},
): Promise<net.Socket> {
  const timeoutMs = options.timeoutMs ?? UPSTREAM_CONNECT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    let socket: net.Socket;
    try {
      // connect()'s noDelay option is read only by the Socket constructor: an adopted socket needs setNoDelay,
      // or Nagle holds back the small writes of request/response traffic.
      socket = options.socket
        ? options.socket.setNoDelay(true).connect({ host: target.host, port: target.port })
        : net.connect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true });
    } catch (err) {
      options.socket?.destroy();
      reject(err);
      return;
    }
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

/**
 * Pure: the address the agent's connection to `target` for `client` should come from, so the destination (and the
 * NetworkPolicies and firewalls on the way) see the real client: the client's own, for a pod the agent delivers to
 * and for a destination it passes through; undefined means the node's own address. Only for an IPv4 client and
 * target (the reply routing is IPv4), never the node's own address, loopback or unspecified, and never the target
 * itself: a pod reaching itself (through a Service) would get a packet from its own address, which its kernel drops
 * as martian.
 */
export function transparentSourceFor(nodeIp: string, target: { host: string }, client: string | undefined): string | undefined {
  if (client === undefined) return undefined;
  const address = canonicalIp(client);
  if (address === undefined || !net.isIPv4(address) || !net.isIPv4(target.host)) return undefined;
  if (address === nodeIp || address === target.host || address === '0.0.0.0' || address.startsWith('127.')) return undefined;
  return address;
}

/** Why a transparent socket could never be had in this process: no privilege, or no addon. Anything else is per connection. */
function transparencyUnavailable(err: unknown): boolean {
  if (isAmbitError(err, 'ADDON_MISSING') || isAmbitError(err, 'ADDON_LOAD_FAILED')) return true;
  const cause = err instanceof Error ? err.cause : undefined;
  return isAmbitError(err, 'SOCKOPT_FAILED') && ['EPERM', 'EACCES'].includes(errnoCode(cause) ?? '');
}

function openTransparentSocket(address: string): net.Socket {
  return transparentSocket(address, { allowHalfOpen: true });
}

/**
 * Start-up check of `--upstream-source transparent`: the agent must be able to make transparent sockets (the native
 * addon, and CAP_NET_ADMIN or CAP_NET_RAW) and must manage the rules that route the replies back to them.
 * Throws UPSTREAM_SOURCE_UNAVAILABLE naming what is missing: an agent that silently connected from the node's address
 * instead would switch NetworkPolicy off for meshed pods: egress policy for everything it passes through, ingress
 * policy on every CNI that exempts traffic from the node.
 */
export function checkUpstreamSource(
  config: { upstreamSource: UpstreamSource; manageRules: boolean },
  openTransparent: (address: string) => net.Socket = openTransparentSocket,
): void {
  if (config.upstreamSource !== 'transparent') return;
  if (!config.manageRules) {
    throw upstreamSourceUnavailable('the agent runs with --no-rules, so the routing that brings replies back to transparent connections is not installed');
  }
  let probe: net.Socket | undefined;
  try {
    probe = openTransparent('127.0.0.1');
  } catch (err) {
    if (!transparencyUnavailable(err)) throw err;
    throw upstreamSourceUnavailable(`this process cannot make transparent sockets: ${(err as Error).message}`, err);
  } finally {
    probe?.destroy();
  }
}

function upstreamSourceUnavailable(why: string, cause?: unknown): AmbitError {
  return new AmbitError(
    'UPSTREAM_SOURCE_UNAVAILABLE',
    `--upstream-source transparent (the default) cannot be had: ${why}. Run the agent with CAP_NET_ADMIN, the native addon ` +
      "and its rules; or accept connecting from the node's address with --upstream-source node " +
      "(AMBIT_UPSTREAM_SOURCE=node): egress NetworkPolicies would no longer apply to what the mesh passes through " +
      '(it would leave from the node, not the pod), and on the many CNIs that exempt traffic from the node, ingress ' +
      'NetworkPolicies would no longer apply to what the mesh delivers',
    { cause },
  );
}

export interface UpstreamConnectorOptions {
  /** Where connections come from (checked at start by checkUpstreamSource). */
  source: UpstreamSource;
  nodeIp: string;
  /** Where the mode is exported (`ambit_upstream_source{mode}`). */
  registry?: Registry;
  /** How a transparent socket is made; tests replace it. */
  openTransparent?: (address: string) => net.Socket;
  timeoutMs?: number;
}

/**
 * The agent's connections to their destinations (its local pods, and what it passes through): from the client's
 * address in `transparent` mode when transparentSourceFor allows it, from the node's otherwise. A transparent socket
 * that cannot be made fails that connection; it never falls back to the node's address. In `node` mode every
 * connection comes from the node's address, which bypasses the pods' egress NetworkPolicy for what is passed through.
 */
export class UpstreamConnector {
  readonly #nodeIp: string;
  readonly #openTransparent: (address: string) => net.Socket;
  readonly #timeoutMs: number | undefined;
  /** Whether connections come from the client's address where they can (`--upstream-source transparent`). */
  readonly transparent: boolean;

  constructor(options: UpstreamConnectorOptions) {
    this.transparent = options.source === 'transparent';
    this.#nodeIp = options.nodeIp;
    this.#openTransparent = options.openTransparent ?? openTransparentSocket;
    this.#timeoutMs = options.timeoutMs;
    if (options.registry) {
      const mode = new Gauge({
        name: 'ambit_upstream_source',
        help: "Where the agent's connections to pods and passthrough destinations come from: transparent (the client's address) or node (the node's)",
        labelNames: ['mode'],
        registers: [options.registry],
      });
      mode.set({ mode: options.source }, 1);
    }
  }

  /** The address a connection to `target` for `client` comes from: the client's, or undefined for the node's. */
  sourceFor(target: { host: string }, client: string | undefined): string | undefined {
    return this.transparent ? transparentSourceFor(this.#nodeIp, target, client) : undefined;
  }

  /** Connects to `target`, from `client`'s address when transparent and allowed. */
  connect(target: { host: string; port: number }, client: string | undefined): Promise<net.Socket> {
    const source = this.sourceFor(target, client);
    if (source === undefined) return connectTcp(target, { timeoutMs: this.#timeoutMs });
    let socket: net.Socket;
    try {
      socket = this.#openTransparent(source);
    } catch (err) {
      return Promise.reject(err);
    }
    return connectTcp(target, { timeoutMs: this.#timeoutMs, socket });
  }
}

/** Why a connect to a pod failed, as the status and reason the HBONE client gets. */
export function upstreamFailure(err: unknown): { status: number; reason: string } {
  const code = errnoCode(err);
  if (code === 'ECONNREFUSED') return { status: 503, reason: 'upstream_refused' };
  if (code === 'ETIMEDOUT') return { status: 504, reason: 'upstream_timeout' };
  return { status: 502, reason: 'upstream_unreachable' };
}

/**
 * What carrying a connection takes of the listeners' ProxyInputs: the telemetry it reports to, the registry that
 * holds it while open, and the connector to its destination.
 */
export interface CarryInputs {
  telemetry: AgentTelemetry;
  connections: ConnectionTracker<Revalidation>;
  upstream: UpstreamConnector;
}

/** One proxied connection for `carry`: its telemetry records and its two ends. */
export interface Carried {
  /** Reported once each: a same-node connection is reported by both sides. */
  records: readonly ConnectionRecord[];
  /** The client's side: the captured socket, or the HBONE stream from the source agent. */
  downstream: Duplex;
  upstream: Duplex;
  /** The TCP socket the agent holds whose byte counts are reported: the client's when `countedIsClient`, else the pod's. */
  counted: net.Socket;
  countedIsClient: boolean;
  /** Asks again (on a policy or workload change); the answer may close the connection. */
  reauthorize?: () => Reauthorization | undefined;
  /** `inputs.connections.epoch` when the connection was decided: a change while it connected is caught up on. */
  decidedAt?: number;
  /**
   * Set when bytes start moving before the destination has answered (an HBONE stream opened without waiting): the
   * connection counts as opened only when this resolves. When it rejects, `refused` reports why; the upstream is
   * already closed by then, and the splice resets the client.
   */
  established?: Promise<void>;
  refused?: (err: unknown) => void;
}

/**
 * Splices the two ends, reports the connection opened (once established), and reports it closed with its bytes.
 * A connection that was refused before it was established is reported only by `refused`.
 */
export function carry(inputs: CarryInputs, carried: Carried): void {
  const { records, downstream, upstream, counted, countedIsClient, reauthorize, decidedAt } = carried;
  let state: 'pending' | 'open' | 'done' = 'pending';
  let untrack = () => {};
  const open = () => {
    if (state !== 'pending') return;
    state = 'open';
    for (const record of records) inputs.telemetry.opened(record);
    untrack = inputs.connections.track(
      records.flatMap((r) => [r.source.ip, r.destination.ip]),
      [downstream, upstream],
      reauthorize === undefined
        ? undefined
        : () => {
            const answer = reauthorize();
            return answer && { ...answer, record: records[records.length - 1]! };
          },
      decidedAt,
    );
  };
  const spliced = splice(downstream, upstream, carried.established);
  if (carried.established === undefined) {
    open();
  } else {
    carried.established.then(open, (err: unknown) => {
      if (state !== 'pending') return;
      state = 'done';
      // The upstream may have closed cleanly before its answer; the client must still see a reset, not an end.
      abortStream(downstream);
      carried.refused?.(err);
    });
  }
  void spliced.then((error) => {
    const wasOpen = state === 'open';
    state = 'done';
    if (!wasOpen) return;
    untrack();
    const outcome = countedIsClient
      ? { received: counted.bytesRead, sent: counted.bytesWritten, error: error?.message }
      : { received: counted.bytesWritten, sent: counted.bytesRead, error: error?.message };
    for (const record of records) inputs.telemetry.closed(record, outcome);
  });
}

/**
 * What a reset passthrough may mean besides a closed port: the node's NAT sent it to an enrolled pod of this node,
 * where no agent would have applied the pod's policy, and the agent's filter rule resets it (AMBIT_LOCAL_DNAT_CHAIN).
 */
const PASSTHROUGH_REFUSED =
  "nothing listens there, or the node's NAT sends it to an enrolled pod of this node, which a passthrough may not reach " +
  "(no agent would apply the pod's PeerAuthentication and AuthorizationPolicy): connect to the pod, or to a Service the mesh knows";

/**
 * Connects to `target` and carries the captured `socket` to it; a failed connect resets the client, with its reason.
 * The connection comes from the captured client's address (unless `--upstream-source node`): a pod this agent
 * delivers to (same-node, plaintext inbound) sees its real client, and a passthrough (outside the mesh, a Service
 * VIP, a slice's endpoint that is no pod) leaves with its own pod's address, so that egress NetworkPolicies and
 * firewalls on its way still apply to the pod. From the node's address, they would not.
 */
export function connectAndCarry(
  inputs: CarryInputs,
  direction: 'outbound' | 'inbound',
  records: readonly ConnectionRecord[],
  socket: net.Socket,
  target: Address,
  reauthorize?: () => Reauthorization | undefined,
): void {
  // Called in the turn its connection was decided.
  const decidedAt = inputs.connections.epoch;
  inputs.upstream.connect(target, socket.remoteAddress).then(
    (upstream) => carry(inputs, { records, downstream: socket, upstream, counted: socket, countedIsClient: true, reauthorize, decidedAt }),
    (err: unknown) => {
      const reason = upstreamFailure(err).reason;
      const message = err instanceof Error ? err.message : String(err);
      const passthrough = records[0]?.path === 'passthrough' && reason === 'upstream_refused';
      inputs.telemetry.refused(direction, reason, records[0] ?? {}, passthrough ? `${message}: ${PASSTHROUGH_REFUSED}` : message);
      abortStream(socket);
    },
  );
}
