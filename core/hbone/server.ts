import http2 from 'node:http2';
import type net from 'node:net';
import type tls from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { AmbitError } from '../errors.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { HBONE_CONNECTION_WINDOW, HBONE_MAX_STREAMS_PER_CONNECTION, HBONE_STREAM_WINDOW } from './client.js';
import { parseAuthority, parseForwardedFor, POLICY_HEADER, REASON_HEADER, type Authority } from './protocol.js';
import { HBONE_ALPN, HBONE_CIPHERSUITES, peerSpiffeId } from './tls.js';

/** Why the server refused a connection or a stream: stable values for logs, metrics and the reason header. */
export type HboneRefusal =
  | 'tls_handshake_failed'
  | 'not_h2'
  | 'no_peer_identity'
  | 'method_not_allowed'
  | 'bad_authority';

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
  trustBundle: () => string;
  /** Maps the SNI a client sent to a local identity and its TLS context; undefined refuses the handshake. */
  resolveSni: (servername: string) => Promise<{ identity: string; context: tls.SecureContext } | undefined>;
  /** Called for every well-formed CONNECT; the callee answers (200 and splice, or a refusal). */
  onConnect: (stream: http2.ServerHttp2Stream, request: HboneInboundRequest) => void;
  /** Called for every refusal the server makes itself, for metrics. */
  onRefused?: (reason: HboneRefusal, detail: { remoteAddress: string | undefined; message: string }) => void;
  log?: Logger;
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
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  /** Every accepted connection, also those still in (or stuck in) the TLS handshake: close() ends them all. */
  readonly #connections = new Set<net.Socket>();
  readonly #peerIdentities = new WeakMap<http2.ServerHttp2Session, string | undefined>();

  constructor(options: HboneServerOptions) {
    this.#options = options;
    this.#log = options.log ?? silentLogger();
    this.#server = http2.createSecureServer({
      ALPNProtocols: [HBONE_ALPN],
      allowHTTP1: false,
      requestCert: true,
      rejectUnauthorized: true,
      ca: options.trustBundle(),
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      ciphers: HBONE_CIPHERSUITES,
      sessionTimeout: 0,
      allowHalfOpen: true,
      noDelay: true,
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
      this.#refused('tls_handshake_failed', socket.remoteAddress, why);
    });
    this.#server.on('unknownProtocol', (socket: TLSSocket) => {
      this.#refused('not_h2', socket.remoteAddress, `ALPN ${String(socket.alpnProtocol)} is not h2`);
      socket.destroy();
    });
    this.#server.on('connection', (socket: net.Socket) => {
      this.#connections.add(socket);
      socket.once('close', () => this.#connections.delete(socket));
    });
    this.#server.on('session', (session) => this.#onSession(session));
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
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const session of this.#sessions) session.destroy();
    for (const socket of this.#connections) socket.destroy();
    await closed;
  }

  #onSession(session: http2.ServerHttp2Session): void {
    this.#sessions.add(session);
    const servername = (session.socket as TLSSocket | undefined)?.servername;
    this.#localIdentities.set(session, servername ? this.#identityBySni.get(servername) : undefined);
    session.once('close', () => this.#sessions.delete(session));
    session.on('error', (err) => this.#log.debug({ err }, 'HBONE session error'));
    session.setLocalWindowSize(HBONE_CONNECTION_WINDOW);
  }

  #onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    const socket = stream.session?.socket as TLSSocket | undefined;
    const remoteAddress = socket?.remoteAddress ?? '';
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

  #refused(reason: HboneRefusal, remoteAddress: string | undefined, message: string): void {
    this.#log.warn({ reason, remote: remoteAddress, detail: message }, 'HBONE connection refused');
    this.#options.onRefused?.(reason, { remoteAddress, message });
  }
}
