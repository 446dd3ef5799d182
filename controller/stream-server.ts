import http2 from 'node:http2';
import { constants as zlib, gzipSync } from 'node:zlib';
import type { AddressInfo } from 'node:net';
import { AmbitError } from '../core/errors/index.js';
import { CA_MAX_CONCURRENT_REQUESTS } from '../core/identity/index.js';
import { silentLogger, type Logger } from '../core/log/index.js';
import {
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_SILENCE_DEADLINE_MS,
  STREAM_ALPN,
  STREAM_PATH,
  encodeMessage,
  type StreamMessage,
} from '../core/stream/index.js';
import type { ChangeLog, Delta } from './change-log.js';

/**
 * What a token proved: the caller's Kubernetes user and the claims the API server reported of it (`extra`: a bound
 * token's pod and node), or why it proved nothing.
 */
export type TokenVerdict =
  | { readonly authenticated: true; readonly username: string; readonly extra?: Readonly<Record<string, readonly string[]>> }
  | { readonly authenticated: false; readonly reason: string };

/** Serves one request on the controller's port other than the stream's (the CA's). */
export type RouteHandler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => Promise<void>;

/** Checks a bearer token (in Kubernetes: a TokenReview with the stream's audience). */
export type Authenticate = (token: string) => Promise<TokenVerdict>;

/** The users that may read the stream by default: the agents' service account. */
export const DEFAULT_STREAM_USERS = ['system:serviceaccount:ambit-system:ambit-agent'] as const;
/**
 * An agent that reads more slowly than the controller writes is dropped past this much unsent data: it reconnects
 * and resumes (or gets a snapshot), which costs it a round trip, and costs the controller nothing unbounded.
 */
export const DEFAULT_MAX_BUFFERED_BYTES = 16 * 1024 * 1024;
/** Deltas held for an agent while its state is being written; more, and it is dropped (it resumes). */
const MAX_WAITING_DELTAS = 10_000;
/** The longest a request may wait for its token check before the stream is refused. */
const AUTHENTICATE_TIMEOUT_MS = 10_000;
/**
 * A stream ends after about this long (±10 %, so that agents that connected together do not come back together), and
 * the agent resumes from its version: its token is checked again, and the agents spread over the replicas again
 * after a rollout instead of staying on the one that came up first.
 */
export const DEFAULT_MAX_STREAM_AGE_MS = 30 * 60_000;
/**
 * An agent's connection carries one stream; a few more for a reconnect that overlaps the old stream's end. More are
 * refused by HTTP/2 itself (each would be a snapshot's worth of work).
 */
const MAX_CONCURRENT_STREAMS = CA_MAX_CONCURRENT_REQUESTS;
/** How long close() lets a connection finish what it has in flight (a CA answer) after its GOAWAY. */
const SESSION_CLOSE_GRACE_MS = 1_000;

export interface StreamServerOptions {
  readonly changes: ChangeLog;
  /** The controller's serving key and certificate chain (PEM); the certificate names the controller's SPIFFE ID. */
  readonly keyPem: string;
  readonly certChainPem: string;
  readonly authenticate: Authenticate;
  /**
   * Whether the change log holds the whole cluster yet (every kind listed once). Until it does, a stream is refused
   * with 503 `not_synced`: a snapshot of half a cluster would make an agent delete what is merely not read yet.
   */
  readonly synced?: () => boolean;
  readonly allowedUsers?: readonly string[];
  /** Other endpoints on the same port, by path (the CA's `CA_PATH`). */
  readonly routes?: ReadonlyMap<string, RouteHandler>;
  readonly host?: string;
  readonly port?: number;
  /** How often a ping line goes down an idle stream, and an HTTP/2 PING to the agent's connection. */
  readonly pingIntervalMs?: number;
  /** A connection whose HTTP/2 PING is not answered within this long is dead, and closed with its streams. */
  readonly pingTimeoutMs?: number;
  readonly maxStreamAgeMs?: number;
  readonly maxBufferedBytes?: number;
  /** [0, 1), for the spread of the stream age; tests fix it. */
  readonly random?: () => number;
  readonly log?: Logger;
}

/**
 * The controller's end of the discovery stream (core/stream/protocol.ts). TLS 1.3 with the controller's certificate;
 * a caller is served only after its token is checked and names one of `allowedUsers`; a refusal says which check
 * failed, is logged once and answered 401 (no token, or one that proves nothing), 403 (a user that may not read) or
 * 503 (the token could not be checked: the agent tries again). A connection whose agent stops answering HTTP/2
 * PINGs is closed, so a dead node does not hold its streams and buffers until TCP gives up (many minutes).
 */
export class StreamServer {
  readonly #options: StreamServerOptions;
  readonly #server: http2.Http2SecureServer;
  readonly #log: Logger;
  readonly #streams = new Set<http2.ServerHttp2Stream>();
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  readonly #allowed: ReadonlySet<string>;
  #snapshot: { readonly version: number; readonly lines: readonly Buffer[]; gzip?: Buffer } | undefined;
  readonly #deltaLines = new WeakMap<Delta, Buffer>();
  readonly #deltaMembers = new WeakMap<Delta, Buffer>();
  readonly #forgetSnapshot = () => {
    this.#snapshot = undefined;
  };

  constructor(options: StreamServerOptions) {
    this.#options = options;
    options.changes.on('delta', this.#forgetSnapshot);
    this.#log = (options.log ?? silentLogger()).child({ component: 'stream-server' });
    this.#allowed = new Set(options.allowedUsers ?? DEFAULT_STREAM_USERS);
    this.#server = http2.createSecureServer({
      key: options.keyPem,
      cert: options.certChainPem,
      minVersion: 'TLSv1.3',
      ALPNProtocols: [STREAM_ALPN],
      allowHTTP1: false,
      settings: { maxConcurrentStreams: MAX_CONCURRENT_STREAMS },
    });
    this.#server.on('session', (session) => {
      this.#sessions.add(session);
      session.once('close', () => this.#sessions.delete(session));
      this.#keepalive(session);
    });
    this.#server.on('stream', (stream, headers) => {
      this.#serve(stream, headers).catch((err: unknown) => {
        this.#log.warn({ err }, 'discovery stream failed');
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      });
    });
    // a handshake that fails (no TLS 1.3, a scanner) is the client's problem; log it at debug, never crash
    this.#server.on('tlsClientError', (err) => this.#log.debug({ err: err.message }, 'TLS handshake refused'));
  }

  /** Listens; resolves with the bound port. */
  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#options.port ?? 0, this.#options.host ?? '127.0.0.1', () => {
        this.#server.off('error', reject);
        resolve((this.#server.address() as AddressInfo).port);
      });
    });
  }

  /** A new serving certificate (a renewal): new handshakes use it; open streams keep theirs. */
  setCredentials(keyPem: string, certChainPem: string): void {
    this.#server.setSecureContext({ key: keyPem, cert: certChainPem, minVersion: 'TLSv1.3' });
  }

  /** How many agents are streaming now. */
  get streams(): number {
    return this.#streams.size;
  }

  /**
   * Ends every stream, sends every connection a GOAWAY (an agent's idle CA session too, which would otherwise hold the
   * listener open), and stops listening; a connection still open a second later is destroyed.
   */
  async close(): Promise<void> {
    this.#options.changes.off('delta', this.#forgetSnapshot);
    for (const stream of this.#streams) stream.close(http2.constants.NGHTTP2_NO_ERROR);
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const session of this.#sessions) session.close();
    const force = setTimeout(() => {
      for (const session of this.#sessions) session.destroy();
    }, SESSION_CLOSE_GRACE_MS);
    await closed;
    clearTimeout(force);
  }

  async #serve(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
    const url = new URL(headers[':path'] ?? '/', 'https://controller');
    const route = this.#options.routes?.get(url.pathname);
    if (route !== undefined) {
      await route(stream, headers);
      return;
    }
    if (headers[':method'] !== 'GET' || url.pathname !== STREAM_PATH) {
      refuse(stream, 404, 'not_found', `no such endpoint: ${headers[':method'] ?? ''} ${url.pathname}`);
      return;
    }
    const remote = stream.session?.socket.remoteAddress;
    if (this.#options.synced !== undefined && !this.#options.synced()) {
      this.#refused(stream, 503, 'not_synced', 'the controller has not read the whole cluster yet; the agent keeps its last state and retries', remote);
      return;
    }
    const token = bearerToken(headers);
    if (token === '') {
      this.#refused(stream, 401, 'no_token', 'the request carries no bearer token (the agent\'s projected service-account token)', remote);
      return;
    }
    let verdict: TokenVerdict;
    try {
      verdict = await withTimeout(this.#options.authenticate(token), AUTHENTICATE_TIMEOUT_MS);
    } catch (err) {
      // no verdict: neither an admission nor a judgement of the token
      if (!stream.destroyed) {
        // the cause (the API server's address, its error) goes to the log, not to a caller not yet authenticated
        this.#log.warn({ remote, err: err instanceof Error ? err.message : String(err) }, 'token check failed');
        this.#refused(stream, 503, 'token_review_unavailable', 'the token could not be checked now; the agent keeps its last state and retries', remote);
      }
      return;
    }
    if (stream.destroyed) return;
    if (!verdict.authenticated) {
      this.#refused(stream, 401, 'token_rejected', `the token was not accepted: ${verdict.reason}`, remote);
      return;
    }
    if (!this.#allowed.has(verdict.username)) {
      this.#refused(stream, 403, 'user_not_allowed', `${verdict.username} may not read the discovery stream (allowed: ${[...this.#allowed].join(', ')})`, remote);
      return;
    }
    this.#stream(stream, url.searchParams, verdict.username, remote, token, acceptsGzip(headers['accept-encoding']));
  }

  /**
   * Writes the state (resume or snapshot), then follows the log. The subscription and the state are taken in one
   * tick, so no delta falls in between; deltas that come while the state is being written wait in order. The state is
   * written under backpressure (a snapshot of a big cluster is far more than any buffer), and the cap on unsent data
   * applies from then on, to the live deltas only.
   */
  #stream(stream: http2.ServerHttp2Stream, query: URLSearchParams, user: string, remote: string | undefined, token: string, gzip: boolean): void {
    const changes = this.#options.changes;
    const maxBuffered = this.#options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
    stream.respond({ ':status': 200, 'content-type': 'application/x-ndjson', ...(gzip ? { 'content-encoding': 'gzip' } : {}) });
    // with gzip, every write is a whole gzip member (the body is their concatenation), so each arrives whole
    const own = (chunk: Buffer): Buffer => (gzip ? member(chunk) : chunk);
    const deltaChunk = (delta: Delta): Buffer => (gzip ? this.#deltaMember(delta) : this.#deltaLine(delta));
    let live = false;
    const waiting: Delta[] = [];
    const writeLive = (line: Buffer): void => {
      if (stream.destroyed || stream.writableEnded) return;
      stream.write(line);
      if (stream.writableLength > maxBuffered) {
        this.#log.warn({ user, remote, buffered: stream.writableLength }, 'agent reads too slowly; its stream is dropped, and it will resume');
        stream.close(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      }
    };
    const onDelta = (delta: Delta) => {
      if (live) writeLive(deltaChunk(delta));
      else if (waiting.push(delta) > MAX_WAITING_DELTAS) {
        this.#log.warn({ user, remote, waiting: waiting.length }, 'agent takes its state too slowly; its stream is dropped, and it will resume');
        stream.close(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      }
    };
    changes.on('delta', onDelta);
    const epoch = query.get('epoch');
    const version = Number(query.get('version') ?? NaN);
    const deltas = epoch === null ? undefined : changes.since(epoch, version);
    const snapshot = (): readonly Buffer[] => (gzip ? [this.#snapshotMember()] : this.#snapshotLines());
    // a resume's deltas are the members (or lines) every agent shares: nothing is compressed per stream but its first line
    const state = deltas === undefined ? snapshot() : [own(line({ t: 'resume', epoch: changes.epoch, version })), ...deltas.map(deltaChunk)];
    const ping = setInterval(() => live && writeLive(own(line({ t: 'ping', version: changes.version }))), this.#options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS);
    ping.unref();
    // and never past the token's own expiry: a stream is as good as the token it was opened with (a deleted pod's
    // bound token is refused at the next check), so the agent comes back with the token the kubelet rotated in
    const spread = (this.#options.maxStreamAgeMs ?? DEFAULT_MAX_STREAM_AGE_MS) * (0.9 + 0.2 * (this.#options.random ?? Math.random)());
    const expiry = tokenExpiry(token);
    const maxAge = expiry === undefined ? spread : Math.max(0, Math.min(spread, expiry - Date.now()));
    const ageLimit = setTimeout(() => {
      this.#log.debug({ user, remote }, 'stream at its age limit; the agent resumes');
      // an end after the last whole line (END_STREAM), not a reset: what is queued still arrives
      stream.end();
    }, maxAge);
    ageLimit.unref();
    this.#streams.add(stream);
    this.#log.info({ user, remote, resumed: deltas !== undefined, version: changes.version, records: changes.size }, 'agent streaming');
    stream.on('close', () => {
      changes.off('delta', onDelta);
      clearInterval(ping);
      clearTimeout(ageLimit);
      this.#streams.delete(stream);
    });
    stream.on('error', () => undefined);
    void (async () => {
      for (const chunk of state) {
        if (stream.destroyed || stream.writableEnded) return;
        if (!stream.write(chunk)) await drained(stream);
      }
      for (const delta of waiting.splice(0)) writeLive(deltaChunk(delta));
      live = true;
    })();
  }

  /** HTTP/2 PINGs on each agent's connection; one not answered within pingTimeoutMs closes it. */
  #keepalive(session: http2.ServerHttp2Session): void {
    const timeoutMs = this.#options.pingTimeoutMs ?? DEFAULT_SILENCE_DEADLINE_MS;
    let outstanding: NodeJS.Timeout | undefined;
    const interval = setInterval(() => {
      if (outstanding !== undefined || session.destroyed) return;
      outstanding = setTimeout(() => {
        this.#log.warn({ remote: session.socket?.remoteAddress, timeoutMs }, 'agent does not answer HTTP/2 PINGs; its connection is closed');
        session.destroy();
      }, timeoutMs);
      outstanding.unref();
      const sent = session.ping((err) => {
        if (err) return;
        clearTimeout(outstanding);
        outstanding = undefined;
      });
      if (!sent) {
        clearTimeout(outstanding);
        outstanding = undefined;
      }
    }, this.#options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS);
    interval.unref();
    session.once('close', () => {
      clearInterval(interval);
      clearTimeout(outstanding);
    });
    session.on('error', () => undefined);
  }

  /**
   * The snapshot of the current version as lines, encoded once for every agent that asks for it at that version:
   * when all the agents reconnect at once (a controller restart), encoding it for each was most of the controller's
   * work (bench/scale.ts). The first delta makes it stale.
   */
  #snapshotLines(): readonly Buffer[] {
    const changes = this.#options.changes;
    const cached = this.#snapshot;
    if (cached !== undefined && cached.version === changes.version) return cached.lines;
    const lines = [line({ t: 'snapshot', epoch: changes.epoch, version: changes.version })];
    for (const chunk of changes.snapshotChunks()) lines.push(line({ t: 'records', changes: chunk }));
    lines.push(line({ t: 'synced', epoch: changes.epoch, version: changes.version }));
    this.#snapshot = { version: changes.version, lines };
    return lines;
  }

  /**
   * The snapshot as one gzip member, compressed once for every agent that takes it at this version: the records'
   * JSON compresses about 20× (bench/scale.ts), and sending it 201 times was most of the sync at 10k pods.
   */
  #snapshotMember(): Buffer {
    const lines = this.#snapshotLines();
    const cached = this.#snapshot;
    if (cached === undefined) return member(Buffer.concat(lines));
    cached.gzip ??= member(Buffer.concat(lines));
    return cached.gzip;
  }

  /** A delta's line as a gzip member, compressed once for all the agents that stream it so. */
  #deltaMember(delta: Delta): Buffer {
    let encoded = this.#deltaMembers.get(delta);
    if (encoded === undefined) this.#deltaMembers.set(delta, (encoded = member(this.#deltaLine(delta))));
    return encoded;
  }

  /** A delta's line, encoded once for all the agents that stream it. */
  #deltaLine(delta: Delta): Buffer {
    let encoded = this.#deltaLines.get(delta);
    if (encoded === undefined) this.#deltaLines.set(delta, (encoded = line({ t: 'delta', version: delta.version, changes: delta.changes })));
    return encoded;
  }

  #refused(stream: http2.ServerHttp2Stream, status: number, reason: string, message: string, remote: string | undefined): void {
    this.#log.warn({ remote, reason, detail: message }, 'discovery stream refused');
    refuse(stream, status, reason, message);
  }
}

/** The request's bearer token, or '' when it carries none. */
export function bearerToken(headers: http2.IncomingHttpHeaders): string {
  const auth = headers.authorization;
  return typeof auth === 'string' && auth.startsWith('Bearer ') ? auth.slice('Bearer '.length).trim() : '';
}

/** Whether an accept-encoding header takes gzip (and does not refuse it with q=0). */
function acceptsGzip(header: string | undefined): boolean {
  if (header === undefined) return false;
  return header.split(',').some((part) => {
    const [coding = '', ...params] = part.trim().toLowerCase().split(';');
    return coding.trim() === 'gzip' && !params.some((param) => /^\s*q\s*=\s*0(\.0*)?\s*$/.test(param));
  });
}

/** One whole gzip member; the fastest level: the stream's JSON is repetitive, and a member is compressed once. */
function member(data: Buffer): Buffer {
  return gzipSync(data, { level: zlib.Z_BEST_SPEED });
}

function line(message: StreamMessage): Buffer {
  return Buffer.from(encodeMessage(message));
}

/**
 * The `exp` of a JWT (milliseconds), read only after the API server vouched for the token; undefined for a token
 * that is not a JWT or has no expiry (a legacy service-account token).
 */
export function tokenExpiry(token: string): number | undefined {
  const payload = token.split('.')[1];
  if (payload === undefined) return undefined;
  try {
    const exp = (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { exp?: unknown }).exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** Answers `status` with the JSON refusal every endpoint of the port gives: a stable `reason` and a `message` in words. */
export function refuse(stream: http2.ServerHttp2Stream, status: number, reason: string, message: string): void {
  if (stream.destroyed) return;
  stream.respond({ ':status': status, 'content-type': 'application/json' });
  stream.end(`${JSON.stringify({ reason, message })}\n`);
}

export function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new AmbitError('STREAM_AUTH_TIMEOUT', `no answer within ${ms} ms`)), ms);
    timer.unref();
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

/** Resolves when the stream can take more, or is gone. */
function drained(stream: http2.ServerHttp2Stream): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.once('drain', done);
    stream.once('close', done);
  });
}
