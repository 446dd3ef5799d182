import http2 from 'node:http2';
import type net from 'node:net';
import type tls from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { AmbitError } from '../errors/index.js';
import type { Logger } from '../log/index.js';
import { silentLogger } from '../log/index.js';
import { realTimer, type SetTimer } from '../timer/index.js';
import {
  HBONE_CONNECTION_WINDOW,
  HBONE_IDLE_TIMEOUT_MS,
  HBONE_KEEPALIVE_TIMEOUT_MS,
  HBONE_MAX_STREAMS_PER_CONNECTION,
  HBONE_REMOVED_ROOT_GRACE_MS,
  HBONE_STREAM_WINDOW,
} from './client.js';
import { parseAuthority, parseForwardedFor, POLICY_HEADER, REASON_HEADER, type Authority } from './protocol.js';
import { HBONE_ALPN, HBONE_CIPHERSUITES, HBONE_SECURE_OPTIONS, peerChainsTo, peerSpiffeId, type TrustBundleSource } from './tls.js';

/**
 * A peer that opens TCP connections and never finishes their handshake holds the listener's memory and file
 * descriptors; Node's default is 120 s. Ten seconds is plenty for a TLS 1.3 handshake between two nodes.
 */
export const HBONE_HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * The most connections the listener holds at once; past it new ones are closed at accept. Peer agents pool their
 * connections (one per source identity, destination identity and node), so a node sees hundreds, not thousands; the
 * cap bounds what a misbehaving or hostile peer can take (each connection reserves HTTP/2 windows of up to 16 MiB).
 */
export const HBONE_MAX_CONNECTIONS = 10_000;
/**
 * The most connections one source address holds at once, so that one misbehaving or hostile peer (a node, or
 * whatever shares its address) cannot take the whole listener's cap from the others: a tenth of it, still ten times
 * what a busy peer node opens (one pooled connection per pair of identities, a new one per 100 streams).
 */
export const HBONE_MAX_CONNECTIONS_PER_SOURCE = 1_000;
/** Why the server refused a connection or a stream: stable values for logs, metrics and the reason header. */
export type HboneRefusal =
  | 'tls_handshake_failed'
  | 'tls_handshake_timeout'
  | 'too_many_connections'
  | 'too_many_connections_from_source'
  | 'not_h2'
  | 'no_peer_identity'
  | 'method_not_allowed'
  | 'bad_authority';

/** Why the server closed a session that carried streams: stable values for logs and metrics. */
export type HboneSessionClose = 'peer_unresponsive' | 'trust_root_removed';

export interface HboneSessionCloseDetail {
  remoteAddress: string | undefined;
  peerIdentity: string | undefined;
  /** The streams the session still carried, which close with it. */
  streams: number;
  message: string;
}

export interface HboneInboundRequest {
  /** Where the client wants to go: `podIP:port`. */
  target: Authority;
  /** The local identity the client asked for in SNI (the TLS session's server identity). */
  localIdentity: string;
  /** The identity the client proved with its certificate. */
  peerIdentity: string;
  /** The original client's address from the `forwarded` header, when present. */
  forwardedFor: Authority | undefined;
  headers: http2.IncomingHttpHeaders;
  /** The TCP peer of the HBONE connection (the source node). */
  remoteAddress: string;
}

export interface HboneServerOptions {
  host?: string;
  port: number;
  /** The roots client certificates must chain to; the listener follows its changes. */
  trustBundle: TrustBundleSource;
  /** Maps the SNI a client sent to a local identity and its TLS context; undefined refuses the handshake. */
  resolveSni: (servername: string) => Promise<{ identity: string; context: tls.SecureContext } | undefined>;
  /** Called for every well-formed CONNECT; the callee answers (200 and splice, or a refusal). */
  onConnect: (stream: http2.ServerHttp2Stream, request: HboneInboundRequest) => void;
  /**
   * Called for every refusal the server makes itself, to count and log it (once: given this, the server writes no
   * line of its own; without it, the server logs the refusal).
   */
  onRefused?: (reason: HboneRefusal, detail: { remoteAddress: string | undefined; message: string }) => void;
  /** Called for every session the server ends with its streams (once, as `onRefused`: given this, the server logs none). */
  onSessionClosed?: (reason: HboneSessionClose, detail: HboneSessionCloseDetail) => void;
  log?: Logger;
  handshakeTimeoutMs?: number;
  maxConnections?: number;
  /** The most connections one source address may hold: HBONE_MAX_CONNECTIONS_PER_SOURCE unless given. */
  maxConnectionsPerSource?: number;
  /** HBONE_REMOVED_ROOT_GRACE_MS unless given. */
  removedRootGraceMs?: number;
  /** Sets the removed-root deadlines; injectable so tests move time instead of waiting it out. */
  setTimer?: SetTimer;
  /**
   * A connection with nothing received or sent this long is closed when it carries no stream; with streams open,
   * the client is asked by PING whether it lives, and dropped without an answer within `keepaliveTimeoutMs`.
   */
  idleTimeoutMs?: number;
  keepaliveTimeoutMs?: number;
}

/** Answers a CONNECT with a refusal: status plus the reason header (and the deciding policy), and no body. */
export function refuseStream(stream: http2.ServerHttp2Stream, status: number, reason: string, policy?: string): void {
  if (stream.destroyed || stream.closed) return;
  if (!stream.headersSent) {
    stream.respond({ ':status': status, [REASON_HEADER]: reason, ...(policy === undefined ? {} : { [POLICY_HEADER]: policy }) }, { endStream: true });
  } else {
    stream.close(http2.constants.NGHTTP2_CANCEL);
  }
}

/** What setSecureContext() replaces as a whole: everything of the listener's TLS context. */
function listenerContextOptions(trustBundlePem: string): tls.SecureContextOptions {
  return { ca: trustBundlePem, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ciphers: HBONE_CIPHERSUITES, secureOptions: HBONE_SECURE_OPTIONS };
}

/**
 * The HBONE listener (port 15008): TLS 1.3 with a client certificate required and verified against the trust
 * bundle, ALPN h2, the server certificate chosen by SNI among the node's local workloads. It validates the method and
 * authority itself and hands the rest of the decision to `onConnect`.
 */
export class HboneServer {
  readonly #options: HboneServerOptions;
  readonly #log: Logger;
  readonly #server: http2.Http2SecureServer;
  /**
   * The identity each SNI name resolved to, between the handshake and its session, which keeps its own (below): the
   * owner prunes it (`retainIdentities`) as workloads leave, or it would grow with every identity the node ever had.
   */
  readonly #identityBySni = new Map<string, string>();
  readonly #localIdentities = new WeakMap<http2.ServerHttp2Session, string | undefined>();
  /** Each open session and the number of streams it carries. */
  readonly #sessions = new Map<http2.ServerHttp2Session, { streams: number }>();
  /** Every accepted connection, also those still in (or stuck in) the TLS handshake: close() ends them all. */
  readonly #connections = new Set<net.Socket>();
  /** The peer of each accepted TCP connection, read at accept: a socket destroyed later cannot tell it. */
  readonly #remotes = new WeakMap<net.Socket, string | undefined>();
  readonly #peerIdentities = new WeakMap<http2.ServerHttp2Session, string | undefined>();
  /** Open connections by source address, for the per-source cap. */
  readonly #connectionsBySource = new Map<string, number>();
  /** TCP connections refused at accept, whose TLS socket's ensuing "socket hang up" is no second refusal. */
  readonly #refusedAtAccept = new WeakSet<net.Socket>();
  /** The sessions on their removed-root deadline, each with what cancels it. */
  readonly #removedRootDeadlines = new Map<http2.ServerHttp2Session, () => void>();
  readonly #idleTimeoutMs: number;
  readonly #keepaliveTimeoutMs: number;
  /** Undefined when not below the listener's cap, where it would refuse nothing that the listener's does not. */
  readonly #maxConnectionsPerSource: number | undefined;
  readonly #removedRootGraceMs: number;
  readonly #setTimer: SetTimer;

  constructor(options: HboneServerOptions) {
    this.#options = options;
    this.#log = options.log ?? silentLogger();
    this.#idleTimeoutMs = options.idleTimeoutMs ?? HBONE_IDLE_TIMEOUT_MS;
    this.#keepaliveTimeoutMs = options.keepaliveTimeoutMs ?? HBONE_KEEPALIVE_TIMEOUT_MS;
    const maxConnections = options.maxConnections ?? HBONE_MAX_CONNECTIONS;
    const maxConnectionsPerSource = options.maxConnectionsPerSource ?? HBONE_MAX_CONNECTIONS_PER_SOURCE;
    this.#maxConnectionsPerSource = maxConnectionsPerSource < maxConnections ? maxConnectionsPerSource : undefined;
    this.#removedRootGraceMs = options.removedRootGraceMs ?? HBONE_REMOVED_ROOT_GRACE_MS;
    this.#setTimer = options.setTimer ?? realTimer;
    this.#server = http2.createSecureServer({
      ALPNProtocols: [HBONE_ALPN],
      allowHTTP1: false,
      requestCert: true,
      rejectUnauthorized: true,
      ...listenerContextOptions(options.trustBundle.pem()),
      // HTTP/2 has no use for a half-closed connection: a client that sent FIN can send no WINDOW_UPDATE, no frame at all,
      // so its FIN ends the session and its streams at once instead of leaving the socket in CLOSE-WAIT until the idle check.
      allowHalfOpen: false,
      noDelay: true,
      handshakeTimeout: options.handshakeTimeoutMs ?? HBONE_HANDSHAKE_TIMEOUT_MS,
      maxSessionMemory: 64,
      settings: { initialWindowSize: HBONE_STREAM_WINDOW, maxConcurrentStreams: HBONE_MAX_STREAMS_PER_CONNECTION, enablePush: false },
      SNICallback: (servername, callback) => {
        options.resolveSni(servername).then(
          (resolved) => {
            if (!resolved) {
              callback(new AmbitError('HBONE_UNKNOWN_SNI', `no local workload identity for SNI ${servername}`), undefined);
              return;
            }
            this.#identityBySni.set(servername, resolved.identity);
            callback(null, resolved.context);
          },
          (err: unknown) => callback(err instanceof Error ? err : new Error(String(err)), undefined),
        );
      },
    });
    this.#server.on('tlsClientError', (err: Error, socket: TLSSocket) => {
      // A refused client certificate surfaces as a bare "socket hang up"; the verification error says why.
      const why = socket.authorizationError ? `client certificate refused: ${String(socket.authorizationError)}` : err.message;
      const tcp = (socket as TLSSocket & { _parent?: net.Socket })._parent;
      if (tcp && this.#refusedAtAccept.has(tcp)) return;
      if ((err as NodeJS.ErrnoException).code === 'ERR_TLS_HANDSHAKE_TIMEOUT') {
        // The timeout has destroyed the socket, which no longer knows its peer: the TCP socket under it does.
        this.#refused('tls_handshake_timeout', tcp ? this.#remotes.get(tcp) : undefined, why);
        return;
      }
      this.#refused('tls_handshake_failed', socket.remoteAddress, why);
    });
    this.#server.maxConnections = maxConnections;
    this.#server.on('drop', (peer) => {
      this.#refused('too_many_connections', peer?.remoteAddress, `the listener holds its maximum of ${maxConnections} connections`);
    });
    this.#server.on('unknownProtocol', (socket: TLSSocket) => {
      this.#refused('not_h2', socket.remoteAddress, `ALPN ${String(socket.alpnProtocol)} is not h2`);
      socket.destroy();
    });
    this.#server.on('connection', (socket: net.Socket) => {
      this.#connections.add(socket);
      this.#remotes.set(socket, socket.remoteAddress);
      socket.once('close', () => this.#connections.delete(socket));
      this.#admitSource(socket);
    });
    this.#server.on('session', (session) => this.#onSession(session));
    options.trustBundle.on('change', this.#onTrustBundleChange);
    this.#server.on('stream', (stream, headers) => this.#onStream(stream, headers));
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#options.port, this.#options.host, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
  }

  /** Forgets the SNI names of identities not in `identities` (workloads gone from the node); open sessions keep theirs. */
  retainIdentities(identities: ReadonlySet<string>): void {
    for (const [servername, identity] of this.#identityBySni) if (!identities.has(identity)) this.#identityBySni.delete(servername);
  }

  /** How many SNI names the server remembers. */
  get sniNames(): number {
    return this.#identityBySni.size;
  }

  address(): net.AddressInfo {
    return this.#server.address() as net.AddressInfo;
  }

  async close(): Promise<void> {
    this.#options.trustBundle.off('change', this.#onTrustBundleChange);
    for (const cancel of this.#removedRootDeadlines.values()) cancel();
    this.#removedRootDeadlines.clear();
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const session of this.#sessions.keys()) session.destroy();
    for (const socket of this.#connections) socket.destroy();
    await closed;
  }

  /**
   * The per-source cap, at accept (before any TLS work): past it the connection is closed, as past the listener's.
   */
  #admitSource(socket: net.Socket): void {
    const source = socket.remoteAddress;
    const max = this.#maxConnectionsPerSource;
    if (source === undefined || max === undefined) return;
    const open = this.#connectionsBySource.get(source) ?? 0;
    if (open >= max) {
      this.#refusedAtAccept.add(socket);
      this.#refused('too_many_connections_from_source', source, `${source} holds the listener's per-source maximum of ${max} connections`);
      socket.destroy();
      return;
    }
    this.#connectionsBySource.set(source, open + 1);
    socket.once('close', () => {
      const left = (this.#connectionsBySource.get(source) ?? 1) - 1;
      if (left > 0) this.#connectionsBySource.set(source, left);
      else this.#connectionsBySource.delete(source);
    });
  }

  /**
   * Client certificates are verified by the context chosen by SNI, from the caller's SecureContextCache, which
   * follows the bundle itself. The listener's own context only meets clients without SNI, which it refuses; it
   * follows too, so that no context of the listener still trusts a removed root. A session whose client chains to
   * no root left takes no new streams (GOAWAY), and its open streams get HBONE_REMOVED_ROOT_GRACE_MS to finish, as
   * a rotation needs (the peer moved its new streams to a new leaf before the old root left); then the session is
   * destroyed with them. A root that comes back before the deadline lifts it (the session still takes no new stream).
   */
  readonly #onTrustBundleChange = (): void => {
    const bundle = this.#options.trustBundle;
    this.#server.setSecureContext(listenerContextOptions(bundle.pem()));
    const roots = bundle.roots();
    for (const session of this.#sessions.keys()) {
      const socket = session.socket as TLSSocket | undefined;
      if (!socket || session.destroyed) continue;
      const deadline = this.#removedRootDeadlines.get(session);
      if (peerChainsTo(socket, roots)) {
        deadline?.();
        this.#removedRootDeadlines.delete(session);
        continue;
      }
      if (deadline !== undefined) continue;
      const streams = this.#sessions.get(session)?.streams ?? 0;
      this.#log.info(
        { remote: socket.remoteAddress, peer: this.#peerIdentity(session, socket), streams, graceMs: this.#removedRootGraceMs },
        'HBONE session takes no new streams: its client certificate chains to no root of the new trust bundle; its open streams are closed after the grace',
      );
      this.#removedRootDeadlines.set(session, this.#setTimer(() => this.#onRemovedRootDeadline(session), this.#removedRootGraceMs));
      if (!session.closed) session.close();
    }
  };

  #onRemovedRootDeadline(session: http2.ServerHttp2Session): void {
    this.#removedRootDeadlines.delete(session);
    if (session.destroyed) return;
    const streams = this.#sessions.get(session)?.streams ?? 0;
    const message = `its client certificate chains to no root of the trust bundle, which changed ${this.#removedRootGraceMs} ms ago; its ${streams} streams are closed`;
    this.#sessionClosed('trust_root_removed', session, message);
    session.destroy(new AmbitError('HBONE_TRUST_ROOT_REMOVED', `HBONE client ${session.socket?.remoteAddress ?? '(unknown)'}: ${message}`));
  }

  #onSession(session: http2.ServerHttp2Session): void {
    const state = { streams: 0 };
    this.#sessions.set(session, state);
    const servername = (session.socket as TLSSocket | undefined)?.servername;
    this.#localIdentities.set(session, servername ? this.#identityBySni.get(servername) : undefined);
    session.once('close', () => {
      this.#sessions.delete(session);
      this.#removedRootDeadlines.get(session)?.();
      this.#removedRootDeadlines.delete(session);
    });
    session.on('error', (err) => this.#log.debug({ err }, 'HBONE session error'));
    session.setLocalWindowSize(HBONE_CONNECTION_WINDOW);
    session.setTimeout(this.#idleTimeoutMs);
    session.on('timeout', () => this.#onIdle(session, state));
  }

  /** Nothing received or sent for the idle timeout: close a connection without streams, ask the client of one with. */
  #onIdle(session: http2.ServerHttp2Session, state: { streams: number }): void {
    if (session.closed || session.destroyed) return;
    const remote = session.socket?.remoteAddress;
    if (state.streams === 0) {
      this.#log.debug({ remote, reason: 'idle' }, 'HBONE connection closed');
      session.close();
      return;
    }
    const deadline = setTimeout(() => {
      const message = `no answer to a PING within ${this.#keepaliveTimeoutMs} ms after ${this.#idleTimeoutMs} ms of silence; its ${state.streams} streams are closed`;
      this.#sessionClosed('peer_unresponsive', session, message);
      session.destroy(new AmbitError('HBONE_PEER_UNRESPONSIVE', `HBONE client ${remote ?? '(unknown)'}: ${message}`));
    }, this.#keepaliveTimeoutMs);
    deadline.unref();
    session.ping((err) => {
      clearTimeout(deadline);
      // Alive: its streams are quiet, not dead. Ask again after the next idle spell.
      if (!err) session.setTimeout(this.#idleTimeoutMs);
    });
  }

  #onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    const socket = stream.session?.socket as TLSSocket | undefined;
    const remoteAddress = socket?.remoteAddress ?? '';
    const state = stream.session ? this.#sessions.get(stream.session as http2.ServerHttp2Session) : undefined;
    if (state) {
      state.streams++;
      stream.once('close', () => state.streams--);
    }
    stream.on('error', (err) => this.#log.debug({ err }, 'HBONE stream error'));
    if (headers[':method'] !== 'CONNECT') {
      this.#refused('method_not_allowed', remoteAddress, `method ${String(headers[':method'])} is not CONNECT`);
      refuseStream(stream, 405, 'method_not_allowed');
      return;
    }
    const target = parseAuthority(headers[':authority']);
    if (!target) {
      this.#refused('bad_authority', remoteAddress, `authority ${String(headers[':authority'])} is not ip:port`);
      refuseStream(stream, 400, 'bad_authority');
      return;
    }
    const peerIdentity = socket ? this.#peerIdentity(stream.session as http2.ServerHttp2Session, socket) : undefined;
    const localIdentity = this.#localIdentities.get(stream.session as http2.ServerHttp2Session);
    if (!peerIdentity || !localIdentity) {
      this.#refused('no_peer_identity', remoteAddress, 'the client certificate carries no SPIFFE ID');
      refuseStream(stream, 401, 'no_peer_identity');
      return;
    }
    const forwarded = headers.forwarded;
    this.#options.onConnect(stream, {
      target,
      localIdentity,
      peerIdentity,
      forwardedFor: parseForwardedFor(Array.isArray(forwarded) ? forwarded[0] : forwarded),
      headers,
      remoteAddress,
    });
  }

  /** The peer's SPIFFE ID, parsed once per connection: reading the certificate per stream is a measurable cost. */
  #peerIdentity(session: http2.ServerHttp2Session, socket: TLSSocket): string | undefined {
    if (this.#peerIdentities.has(session)) return this.#peerIdentities.get(session);
    const identity = peerSpiffeId(socket);
    this.#peerIdentities.set(session, identity);
    return identity;
  }

  /** One log line per session closed with its streams: the callee's, when there is one. */
  #sessionClosed(reason: HboneSessionClose, session: http2.ServerHttp2Session, message: string): void {
    const socket = session.socket as TLSSocket | undefined;
    const detail = {
      remoteAddress: socket?.remoteAddress,
      peerIdentity: socket ? this.#peerIdentity(session, socket) : undefined,
      streams: this.#sessions.get(session)?.streams ?? 0,
      message,
    };
    if (this.#options.onSessionClosed) this.#options.onSessionClosed(reason, detail);
    else this.#log.warn({ remote: detail.remoteAddress, peer: detail.peerIdentity, reason, streams: detail.streams, detail: message }, 'HBONE connection closed');
  }

  /** One log line per refusal: the callee's, when there is one. */
  #refused(reason: HboneRefusal, remoteAddress: string | undefined, message: string): void {
    if (this.#options.onRefused) this.#options.onRefused(reason, { remoteAddress, message });
    else this.#log.warn({ reason, remote: remoteAddress, detail: message }, 'HBONE connection refused');
  }
}
