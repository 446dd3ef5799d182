import http2 from 'node:http2';
import tls from 'node:tls';
import type { X509Certificate } from 'node:crypto';
import { AmbitError, errnoCode } from '../errors/index.js';
import type { Logger } from '../log/index.js';
import { silentLogger } from '../log/index.js';
import { realTimer, type SetTimer } from '../timer/index.js';
import { chainLeadsTo, spiffeIdFromSan } from '../identity/index.js';
import { HBONE_ALPN, presentedChain } from './tls.js';
import { POLICY_HEADER, REASON_HEADER, type HboneHeaders } from './protocol.js';

/** DESIGN.md, "HBONE on the wire": the pool's limits and the flow-control windows. */
export const HBONE_MAX_STREAMS_PER_CONNECTION = 100;
export const HBONE_IDLE_TIMEOUT_MS = 5 * 60_000;
/** Without both raised windows a single stream tops out far below the link: the defaults are 64 KiB. */
export const HBONE_STREAM_WINDOW = 4 * 1024 * 1024;
export const HBONE_CONNECTION_WINDOW = 16 * 1024 * 1024;
export const HBONE_CONNECT_TIMEOUT_MS = 10_000;
/**
 * A peer node that vanished (powered off, partitioned, a firewall that drops) sends no FIN or RST: without a probe a
 * pooled connection to it looks healthy, and new streams on it wait for TCP's retransmissions to give up (about
 * 15 minutes). A PING once this long has passed with nothing received (between one and two intervals after the last
 * frame, as the check samples the received bytes) finds it; a live peer answers within a round trip.
 */
export const HBONE_KEEPALIVE_INTERVAL_MS = 10_000;
/** How long a PING may go unanswered before the connection is taken for dead: generous for a loaded peer. */
export const HBONE_KEEPALIVE_TIMEOUT_MS = 5_000;
/**
 * The deadline for a CONNECT's answer. Above the destination agent's own deadline to reach its pod
 * (UPSTREAM_CONNECT_TIMEOUT_MS, 5 s), so a slow pod is answered by its agent (504 upstream_timeout) first.
 */
export const HBONE_RESPONSE_TIMEOUT_MS = 10_000;
/**
 * After this age a connection takes no new streams and closes when its last stream ends, so connections move to
 * a peer's new address, certificate or agent instead of living as long as traffic keeps them busy.
 */
export const HBONE_MAX_SESSION_AGE_MS = 60 * 60_000;

/**
 * How long a session whose peer's certificate chains to a root that left the trust bundle keeps its open streams.
 * It takes no new streams from the change on (GOAWAY on the server; retired on the client), so in a rotation its peer has already moved new streams to a
 * leaf of the new root; the grace lets requests in flight finish, and then nothing authenticated under the removed
 * root is carried any more.
 */
export const HBONE_REMOVED_ROOT_GRACE_MS = 30_000;

export interface HboneClientOptions {
  /** The TLS context (client certificate, trust bundle) of a source identity. */
  contextFor: (sourceIdentity: string) => Promise<tls.SecureContext>;
  /** The SNI that names a destination identity to a node listener serving many workloads. */
  sniFor: (destinationIdentity: string) => string;
  log?: Logger;
  maxStreamsPerConnection?: number;
  idleTimeoutMs?: number;
  connectTimeoutMs?: number;
  keepaliveIntervalMs?: number;
  keepaliveTimeoutMs?: number;
  responseTimeoutMs?: number;
  maxSessionAgeMs?: number;
  /** The clock a connection's age is read from (tests). */
  now?: () => number;
  /** HBONE_REMOVED_ROOT_GRACE_MS unless given. */
  removedRootGraceMs?: number;
  /** The timer of the removed-root deadline (tests). */
  setTimer?: SetTimer;
}

export interface HboneConnectRequest {
  sourceIdentity: string;
  destinationIdentity: string;
  /** The HBONE listener: the destination node's (or waypoint's) address and port 15008. */
  via: { host: string; port: number };
  /** `podIP:port` (or `VIP:port` toward a waypoint). */
  authority: string;
  headers?: HboneHeaders;
}

/** A refusal by the peer (`status` and its reason header) or a failure to reach it (`status` 0). */
export class HboneError extends AmbitError {
  readonly status: number;
  readonly reason: string;
  /** The policy the server named when it refused by policy (its `ambit-policy` header). */
  readonly policy: string | undefined;

  constructor(code: string, message: string, status: number, reason: string, cause?: unknown, policy?: string) {
    super(code, message, { cause });
    this.status = status;
    this.reason = reason;
    this.policy = policy;
  }
}

/** Small request/response exchanges must not wait for Nagle's algorithm at either hop. */
function connectTls(options: tls.ConnectionOptions): tls.TLSSocket {
  return tls.connect(options).setNoDelay(true);
}

/** A CONNECT stream that may be written at once, and the peer's answer to it. */
export interface HboneStream {
  stream: http2.ClientHttp2Stream;
  established: Promise<void>;
}

interface PooledSession {
  /** Unset while the source identity's TLS context is being prepared. */
  session: http2.ClientHttp2Session | undefined;
  /** The TLS socket under the session: its received bytes tell whether the peer said anything lately. */
  socket: tls.TLSSocket | undefined;
  key: string;
  /** `host:port` of the HBONE listener, for logs and errors. */
  peer: string;
  port: number;
  openedAt: number;
  streams: number;
  ready: Promise<void>;
  idleTimer: NodeJS.Timeout | undefined;
  keepaliveTimer: NodeJS.Timeout | undefined;
  /** The socket's received bytes at the last keepalive check. */
  bytesRead: number;
  /** A PING is out and unanswered. */
  probing: boolean;
  /**
   * No new streams; it closes with its last one: past its maximum age, or set up with roots or a certificate since
   * replaced.
   */
  retired: boolean;
  /** Cancels the deadline of a session whose server chains to no root left (see retireSessions). */
  rootDeadline: (() => void) | undefined;
  /** The chain the server presented, leaf first, kept from the handshake. */
  serverChain: X509Certificate[];
}

/**
 * HBONE client: HTTP/2 CONNECT over mutual TLS, pooled per (source identity, destination identity, destination
 * address), up to 100 streams a connection, idle connections closed after 5 minutes. A connection whose peer falls
 * silent is found by PING and dropped with its streams; a CONNECT unanswered by its deadline fails.
 */
export class HboneClient {
  readonly #options: HboneClientOptions;
  readonly #log: Logger;
  readonly #pools = new Map<string, PooledSession[]>();
  /** Every session not yet closed, in the pools or not (after a GOAWAY). */
  readonly #live = new Set<PooledSession>();
  readonly #maxStreams: number;
  readonly #idleTimeoutMs: number;
  readonly #connectTimeoutMs: number;
  readonly #keepaliveIntervalMs: number;
  readonly #keepaliveTimeoutMs: number;
  readonly #responseTimeoutMs: number;
  readonly #maxSessionAgeMs: number;
  readonly #now: () => number;
  #closed = false;

  constructor(options: HboneClientOptions) {
    this.#options = options;
    this.#log = options.log ?? silentLogger();
    this.#maxStreams = options.maxStreamsPerConnection ?? HBONE_MAX_STREAMS_PER_CONNECTION;
    this.#idleTimeoutMs = options.idleTimeoutMs ?? HBONE_IDLE_TIMEOUT_MS;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? HBONE_CONNECT_TIMEOUT_MS;
    this.#keepaliveIntervalMs = options.keepaliveIntervalMs ?? HBONE_KEEPALIVE_INTERVAL_MS;
    this.#keepaliveTimeoutMs = options.keepaliveTimeoutMs ?? HBONE_KEEPALIVE_TIMEOUT_MS;
    this.#responseTimeoutMs = options.responseTimeoutMs ?? HBONE_RESPONSE_TIMEOUT_MS;
    this.#maxSessionAgeMs = options.maxSessionAgeMs ?? HBONE_MAX_SESSION_AGE_MS;
    this.#now = options.now ?? Date.now;
  }

  /** Opens a CONNECT stream; resolves once the peer answered 200, so the caller can start moving bytes. */
  async connect(request: HboneConnectRequest): Promise<http2.ClientHttp2Stream> {
    const { stream, established } = await this.open(request);
    await established;
    return stream;
  }

  /**
   * Opens a CONNECT stream and resolves as soon as it exists, before the peer answers: the caller may write to it
   * at once, so a client's first bytes travel with the CONNECT instead of a round trip later. The peer holds them
   * until it has decided and connected, and drops them with the stream when it refuses, so nothing reaches a
   * destination that policy does not allow. `established` resolves on the peer's 200 and rejects with an
   * HboneError on a refusal, a stream error, or a stream closed (by either side) before the answer.
   */
  async open(request: HboneConnectRequest): Promise<HboneStream> {
    if (this.#closed) throw new HboneError('HBONE_CLIENT_CLOSED', 'the HBONE client is closed', 0, 'client_closed');
    // The stream's slot is taken before the connection is ready, so a burst of first requests never puts more than
    // the limit on one connection (the excess would wait inside nghttp2 for a free slot instead of a new connection).
    const pooled = this.#reserve(request);
    try {
      await pooled.ready;
    } catch (err) {
      pooled.streams--;
      throw err;
    }
    const session = pooled.session as http2.ClientHttp2Session;
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request(
        { ':method': 'CONNECT', ':authority': request.authority, ...request.headers },
        { endStream: false },
      );
    } catch (err) {
      this.#release(pooled);
      throw new HboneError('HBONE_CONNECT_FAILED', `opening a stream to ${request.via.host}:${request.via.port} failed: ${String(err)}`, 0, 'stream_failed', err);
    }
    stream.once('close', () => this.#release(pooled));
    const established = new Promise<void>((resolve, reject) => {
      const where = `HBONE stream to ${request.authority} via ${pooled.peer}`;
      const settle = () => {
        clearTimeout(deadline);
        stream.off('error', onError);
        stream.off('close', onClose);
      };
      const onError = (err: Error) => {
        settle();
        // A connection found dead fails its streams with its own error (a stream not yet sent: as the cause).
        const why = err instanceof HboneError ? err : err.cause;
        if (why instanceof HboneError) reject(why);
        else reject(new HboneError('HBONE_STREAM_FAILED', `${where} failed: ${err.message}`, 0, 'stream_failed', err));
      };
      const onClose = () => {
        settle();
        reject(new HboneError('HBONE_STREAM_CLOSED', `${where} closed before the peer answered`, 0, 'stream_closed'));
      };
      const deadline = setTimeout(() => {
        settle();
        reject(new HboneError('HBONE_RESPONSE_TIMEOUT', `${where}: no answer within ${this.#responseTimeoutMs} ms; maybe the peer node is down, or a NetworkPolicy or firewall blocks HBONE port ${request.via.port}`, 0, 'response_timeout'));
        stream.close(http2.constants.NGHTTP2_CANCEL);
        // A silent peer may be a dead one: ask now rather than at the next keepalive check.
        this.#probe(pooled);
      }, this.#responseTimeoutMs);
      stream.once('error', onError);
      stream.once('close', onClose);
      stream.once('response', (headers) => {
        settle();
        const status = Number(headers[':status']);
        if (status === 200) {
          resolve();
          return;
        }
        const reason = String(headers[REASON_HEADER] ?? 'unspecified');
        const policy = headers[POLICY_HEADER] === undefined ? undefined : String(headers[POLICY_HEADER]);
        stream.close(http2.constants.NGHTTP2_CANCEL);
        const by = policy === undefined ? '' : ` (policy ${policy})`;
        reject(new HboneError('HBONE_REFUSED', `${pooled.peer} refused CONNECT ${request.authority}: ${status} ${reason}${by}`, status, reason, undefined, policy));
      });
    });
    return { stream, established };
  }

  /** Number of open HTTP/2 connections, for tests and the config dump. */
  connectionCount(): number {
    let count = 0;
    for (const list of this.#pools.values()) count += list.length;
    return count;
  }

  /**
   * After a change of trust bundle or of certificates: the sessions open now take no new streams and close once
   * their last stream ends, so every new stream runs on a session whose handshake used what is current. Open streams
   * are not cut, and a stream never lands on a closing session, so nothing is refused for it.
   */
  retireSessions(roots?: readonly X509Certificate[]): void {
    // Copies: closing a session takes it out of its list, and the list out of the pools when it empties.
    for (const list of [...this.#pools.values()]) {
      for (const pooled of [...list]) {
        pooled.retired = true;
        if (pooled.streams === 0) this.#closeSession(pooled, 'retired');
      }
    }
    // Every session still open, pooled or not: one the server sent GOAWAY is out of the pools, its streams not done.
    if (roots !== undefined) for (const pooled of [...this.#live]) if (pooled.streams > 0) this.#checkRoot(pooled, roots);
  }

  /**
   * A retired session that still carries streams, to a server whose certificate chains to none of `roots`: its
   * streams get the grace, as the server gives its clients (HBONE_REMOVED_ROOT_GRACE_MS), then the session is
   * destroyed with them; nothing goes on being carried to a peer the mesh no longer trusts. A root that comes back
   * before the deadline lifts it.
   */
  #checkRoot(pooled: PooledSession, roots: readonly X509Certificate[], handshook = false): void {
    const session = pooled.session;
    if (!session || session.destroyed) return;
    if (pooled.serverChain.length === 0 && !handshook) {
      // Still in its handshake: judged on the chain it presents, once it has (none at all chains to no root).
      void pooled.ready.then(() => this.#checkRoot(pooled, roots, true), () => undefined);
      return;
    }
    if (chainLeadsTo(pooled.serverChain, roots)) {
      pooled.rootDeadline?.();
      pooled.rootDeadline = undefined;
      return;
    }
    if (pooled.rootDeadline !== undefined) return;
    const graceMs = this.#options.removedRootGraceMs ?? HBONE_REMOVED_ROOT_GRACE_MS;
    this.#log.info({ peer: pooled.peer, streams: pooled.streams, graceMs }, 'HBONE session retired: its server certificate chains to no root of the new trust bundle; its open streams are closed after the grace');
    pooled.rootDeadline = (this.#options.setTimer ?? realTimer)(() => {
      pooled.rootDeadline = undefined;
      const session = pooled.session;
      if (!session || session.destroyed) return;
      const message = `HBONE server ${pooled.peer}: its certificate chains to no root of the trust bundle, which changed ${graceMs} ms ago; its ${pooled.streams} streams are closed`;
      this.#log.warn({ peer: pooled.peer, streams: pooled.streams, reason: 'trust_root_removed' }, 'HBONE connection closed');
      session.destroy(new AmbitError('HBONE_TRUST_ROOT_REMOVED', message));
    }, graceMs);
  }


  close(): void {
    this.#closed = true;
    for (const list of this.#pools.values()) {
      for (const pooled of list) {
        clearTimeout(pooled.idleTimer);
        clearTimeout(pooled.keepaliveTimer);
        pooled.session?.destroy();
      }
    }
    this.#pools.clear();
  }

  #reserve(request: HboneConnectRequest): PooledSession {
    const key = `${request.sourceIdentity}|${request.destinationIdentity}|${request.via.host}:${request.via.port}`;
    let list = this.#pools.get(key);
    if (!list) {
      list = [];
      this.#pools.set(key, list);
    }
    // A session still handshaking counts as available: concurrent first requests share one handshake.
    let pooled = list.find((p) => p.streams < this.#maxStreams && this.#takesStreams(p));
    if (!pooled) {
      pooled = this.#open(key, request);
      list.push(pooled);
    }
    pooled.streams++;
    if (pooled.idleTimer) {
      clearTimeout(pooled.idleTimer);
      pooled.idleTimer = undefined;
    }
    return pooled;
  }

  #open(key: string, request: HboneConnectRequest): PooledSession {
    const { host, port } = request.via;
    const expected = request.destinationIdentity;
    const contextPromise = this.#options.contextFor(request.sourceIdentity);
    const pooled: PooledSession = {
      session: undefined,
      socket: undefined,
      key,
      peer: `${host}:${port}`,
      port,
      openedAt: this.#now(),
      streams: 0,
      ready: Promise.resolve(),
      idleTimer: undefined,
      keepaliveTimer: undefined,
      bytesRead: 0,
      probing: false,
      retired: false,
      rootDeadline: undefined,
      serverChain: [],
    };
    pooled.ready = contextPromise.then(
      (secureContext) =>
        new Promise<void>((resolve, reject) => {
          const session = http2.connect(`https://${host}:${port}`, {
            settings: { initialWindowSize: HBONE_STREAM_WINDOW, enablePush: false },
            // The windows let one connection buffer up to 16 MiB; nghttp2's default 10 MB cap would refuse new
            // streams (ENHANCE_YOUR_CALM) on a busy connection, so the windows are what bound memory.
            maxSessionMemory: 64,
            createConnection: () =>
              (pooled.socket = connectTls({
                host,
                port,
                secureContext,
                servername: this.#options.sniFor(expected),
                ALPNProtocols: [HBONE_ALPN],
                minVersion: 'TLSv1.3',
                rejectUnauthorized: true,
                // The server proves a workload identity (URI SAN), not a host name.
                checkServerIdentity: (_host, cert) => {
                  pooled.serverChain = presentedChain(cert);
                  const actual = spiffeIdFromSan(cert.subjectaltname);
                  if (actual === expected) return undefined;
                  return new AmbitError('HBONE_PEER_IDENTITY', `${host}:${port} presented identity ${actual ?? '(none)'}, expected ${expected}`);
                },
              })),
          });
          pooled.session = session;
          const timer = setTimeout(() => {
            const err = new AmbitError('HBONE_CONNECT_TIMEOUT', `connecting to ${host}:${port} timed out after ${this.#connectTimeoutMs} ms; maybe a NetworkPolicy or firewall blocks HBONE port ${port}`);
            // While TCP still waits for an answer to its SYN (dropped by a firewall), destroying the session neither
            // ends the socket nor emits an error: end both, and fail the connection here.
            reject(err);
            pooled.socket?.destroy(err);
            session.destroy(err);
          }, this.#connectTimeoutMs);
          session.once('connect', () => {
            clearTimeout(timer);
            session.setLocalWindowSize(HBONE_CONNECTION_WINDOW);
            this.#keepalive(pooled);
            resolve();
          });
          session.once('error', (err) => {
            clearTimeout(timer);
            reject(err);
          });
          session.on('error', (err) => this.#log.debug({ err, peer: `${host}:${port}` }, 'HBONE connection error'));
          this.#live.add(pooled);
          session.once('close', () => {
            this.#live.delete(pooled);
            clearTimeout(timer);
            clearTimeout(pooled.keepaliveTimer);
            clearTimeout(pooled.idleTimer);
            pooled.rootDeadline?.();
            pooled.rootDeadline = undefined;
            this.#remove(pooled);
          });
          session.once('goaway', () => this.#remove(pooled));
        }),
    );
    pooled.ready = pooled.ready.catch((err: unknown) => {
      this.#remove(pooled);
      const code = err instanceof AmbitError ? err.code : (errnoCode(err) ?? 'ERROR');
      const hint =
        code === 'ECONNREFUSED'
          ? `nothing listens on ${host}:${port}; is the Ambit agent running on that node?`
          : code === 'HBONE_PEER_IDENTITY' || code === 'HBONE_CONNECT_TIMEOUT'
            ? ''
            : 'check that both agents trust the same mesh CA';
      throw new HboneError('HBONE_CONNECT_FAILED', `HBONE connection to ${host}:${port} failed (${code}): ${err instanceof Error ? err.message : String(err)}${hint ? `; ${hint}` : ''}`, 0, 'connect_failed', err);
    });
    return pooled;
  }

  #release(pooled: PooledSession): void {
    pooled.streams--;
    if (pooled.streams > 0 || pooled.session?.destroyed) return;
    if (!this.#takesStreams(pooled)) {
      this.#closeSession(pooled, 'max_age');
      return;
    }
    pooled.idleTimer = setTimeout(() => this.#closeSession(pooled, 'idle'), this.#idleTimeoutMs);
    pooled.idleTimer.unref();
  }

  /** Open and younger than the maximum age; a session past it is retired here, when it is next looked at. */
  #takesStreams(pooled: PooledSession): boolean {
    if (pooled.retired || pooled.session?.closed || pooled.session?.destroyed) return false;
    if (this.#now() - pooled.openedAt < this.#maxSessionAgeMs) return true;
    pooled.retired = true;
    return false;
  }

  /** A graceful close (GOAWAY): streams still open finish first. */
  #closeSession(pooled: PooledSession, reason: 'idle' | 'max_age' | 'retired'): void {
    clearTimeout(pooled.idleTimer);
    pooled.idleTimer = undefined;
    this.#remove(pooled);
    this.#log.debug({ peer: pooled.peer, reason }, 'HBONE connection closed');
    pooled.session?.close();
  }

  /** Arms the keepalive check: a PING when a whole interval has passed with nothing received. */
  #keepalive(pooled: PooledSession): void {
    pooled.bytesRead = pooled.socket?.bytesRead ?? 0;
    if (pooled.keepaliveTimer) {
      pooled.keepaliveTimer.refresh();
      return;
    }
    pooled.keepaliveTimer = setTimeout(() => {
      const read = pooled.socket?.bytesRead ?? 0;
      if (read === pooled.bytesRead) this.#probe(pooled);
      else this.#keepalive(pooled);
    }, this.#keepaliveIntervalMs);
    pooled.keepaliveTimer.unref();
  }

  /** Sends a PING; no answer within the keepalive timeout and the connection is dead. */
  #probe(pooled: PooledSession): void {
    const { session } = pooled;
    if (pooled.probing || !session || session.destroyed || session.closed) return;
    pooled.probing = true;
    const deadline = setTimeout(() => {
      const err = new HboneError(
        'HBONE_PEER_UNRESPONSIVE',
        `HBONE connection to ${pooled.peer} is dead: no answer to a PING within ${this.#keepaliveTimeoutMs} ms; maybe the peer node is down, or a NetworkPolicy or firewall blocks HBONE port ${pooled.port}`,
        0,
        'peer_unresponsive',
      );
      this.#remove(pooled);
      this.#log.warn({ peer: pooled.peer, reason: err.reason, streams: pooled.streams, detail: err.message }, 'HBONE connection closed');
      session.destroy(err);
    }, this.#keepaliveTimeoutMs);
    deadline.unref();
    session.ping((err) => {
      clearTimeout(deadline);
      pooled.probing = false;
      if (!err) this.#keepalive(pooled);
    });
  }

  #remove(pooled: PooledSession): void {
    const list = this.#pools.get(pooled.key);
    if (!list) return;
    const index = list.indexOf(pooled);
    if (index >= 0) list.splice(index, 1);
    if (list.length === 0) this.#pools.delete(pooled.key);
  }
}
