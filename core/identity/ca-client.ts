import { readFile } from 'node:fs/promises';
import http2 from 'node:http2';
import type { PeerCertificate } from 'node:tls';
import pLimit from 'p-limit';
import { AmbitError } from '../errors/index.js';
import { silentLogger, type Logger } from '../log/index.js';
import { CA_MAX_CONCURRENT_REQUESTS, CA_MAX_RESPONSE_BYTES, CA_PATH, type CaRefusal, type CaSignRequest, type CaSignResponse } from './ca-protocol.js';
import type { CertIssuer } from './cert-store.js';
import { spiffeIdFromSan } from './spiffe.js';

/** A request unanswered this long fails as CA_UNAVAILABLE; the cert store retries it with backoff. */
export const DEFAULT_CA_TIMEOUT_MS = 10_000;
/**
 * A session idle this long is closed: requests come in bursts (start-up, a signer change) and then every twelve hours
 * per identity, and the controller need not hold a connection from every node in between.
 */
const CA_SESSION_IDLE_MS = 60_000;
/** The controller's port speaks HTTP/2 only (the discovery stream's ALPN). */
const CA_ALPN = 'h2';
/** How much of an answer that is not the protocol's JSON is quoted in the error. */
const QUOTED_BODY_CHARS = 200;

/** The roots the controller's certificate is verified against, and news of their change (a TrustBundle is one). */
export interface CaTrustSource {
  pem(): string;
  on(event: 'change', listener: () => void): unknown;
  off(event: 'change', listener: () => void): unknown;
}

export interface RemoteCaIssuerOptions {
  /** `https://host:port` of the controller. */
  readonly url: string;
  /** The SPIFFE ID the controller's serving certificate must carry. */
  readonly controllerIdentity: string;
  readonly trustBundle: CaTrustSource;
  /** The projected service-account token of audience CA_TOKEN_AUDIENCE, read again at every request: kubelet rotates it. */
  readonly tokenFile: string;
  readonly log?: Logger;
  /** How long a request may take, connecting included (default DEFAULT_CA_TIMEOUT_MS). */
  readonly timeoutMs?: number;
}

/**
 * The controller refused to sign (CA_REFUSED): `status` is the HTTP status and `reason` the controller's stable code
 * (core/identity/ca-protocol.ts). A 503 means no verdict now; every refusal is retried with backoff by the cert store.
 */
export class CaRefusedError extends AmbitError {
  readonly status: number;
  readonly reason: string;

  constructor(spiffeId: string, status: number, reason: string, detail: string) {
    super('CA_REFUSED', `the controller refused ${spiffeId}: ${status} ${reason}: ${detail}`);
    this.status = status;
    this.reason = reason;
  }
}

interface Answer {
  status: number;
  body: string;
}

/**
 * Kubernetes mode's issuer: the agent holds no CA key and sends each CSR to the controller's CA endpoint
 * (ca-protocol.ts), over one HTTP/2 session to the controller, verified as the discovery stream verifies it: the
 * mesh's roots, and the controller's SPIFFE ID rather than the Service's DNS name. A failure is an AmbitError:
 * CA_REFUSED (a CaRefusedError, the controller said no), CA_UNAVAILABLE (no answer: connect, TLS, reset, timeout),
 * CA_WRONG_PEER (the server is not the controller), CA_BAD_ANSWER (an answer outside the protocol), CA_NO_TOKEN.
 */
export class RemoteCaIssuer implements CertIssuer {
  readonly #options: RemoteCaIssuerOptions;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #slots = pLimit(CA_MAX_CONCURRENT_REQUESTS);
  #session: http2.ClientHttp2Session | undefined;
  #closed = false;
  /** Sessions verified against the old roots must not carry the next request. */
  readonly #onTrustChange = () => this.#dropSession('the trust bundle changed');

  constructor(options: RemoteCaIssuerOptions) {
    this.#options = options;
    this.#log = (options.log ?? silentLogger()).child({ component: 'ca-client' });
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_CA_TIMEOUT_MS;
    if (!(this.#timeoutMs > 0)) throw new AmbitError('BAD_TIMEOUT', `the CA client's timeoutMs must be a positive number of milliseconds, got ${this.#timeoutMs}`);
    options.trustBundle.on('change', this.#onTrustChange);
  }

  async sign(csrPem: string, spiffeId: string): Promise<{ certChainPem: string }> {
    if (this.#closed) throw new AmbitError('CA_CLIENT_CLOSED', `cannot ask the controller to sign ${spiffeId}: the CA client is closed`);
    const token = await this.#token();
    const request: CaSignRequest = { csr: csrPem };
    // no more in flight than the controller takes on one connection: the timeout then times the answer, not a queue
    const answer = await this.#slots(() => this.#post(JSON.stringify(request), token, spiffeId));
    if (answer.status !== 200) {
      const refusal = parseRefusal(answer.body);
      throw new CaRefusedError(spiffeId, answer.status, refusal.reason, refusal.message);
    }
    let certChainPem: unknown;
    try {
      certChainPem = (JSON.parse(answer.body) as Partial<CaSignResponse> | null)?.certChainPem;
    } catch {
      certChainPem = undefined;
    }
    if (typeof certChainPem !== 'string' || certChainPem === '') {
      throw new AmbitError('CA_BAD_ANSWER', `the controller at ${this.#options.url} answered 200 for ${spiffeId} without a certChainPem: ${quote(answer.body)}; is it an older controller without the CA?`);
    }
    return { certChainPem };
  }

  /** Closes the session; requests in flight fail as CA_UNAVAILABLE. */
  close(): void {
    this.#closed = true;
    this.#options.trustBundle.off('change', this.#onTrustChange);
    this.#session?.destroy();
    this.#session = undefined;
  }

  async #token(): Promise<string> {
    const { tokenFile } = this.#options;
    let token: string;
    try {
      token = (await readFile(tokenFile, 'utf8')).trim();
    } catch (err) {
      throw new AmbitError('CA_NO_TOKEN', `cannot read the CA token ${tokenFile}: ${(err as Error).message}; mount the projected service-account token of audience ambit-ca there`, { cause: err });
    }
    if (token === '') throw new AmbitError('CA_NO_TOKEN', `the CA token ${tokenFile} is empty; it must hold the projected service-account token of audience ambit-ca`);
    return token;
  }

  /** The session in use, or a new one verified against the roots of now. */
  #connect(): http2.ClientHttp2Session {
    const current = this.#session;
    if (current !== undefined && !current.closed && !current.destroyed) return current;
    const { url, controllerIdentity } = this.#options;
    const session = http2.connect(url, {
      ca: this.#options.trustBundle.pem(),
      minVersion: 'TLSv1.3',
      ALPNProtocols: [CA_ALPN],
      // the controller is known by its SPIFFE ID, not by the Service's DNS name
      checkServerIdentity: (_host: string, cert: PeerCertificate) =>
        spiffeIdFromSan(cert.subjectaltname) === controllerIdentity
          ? undefined
          : new AmbitError('CA_WRONG_PEER', `the server at ${url} is not the controller: its certificate carries ${cert.subjectaltname || 'no subject alternative name'}, not the URI ${controllerIdentity}; check --controller and --controller-identity`),
    });
    this.#session = session;
    const forget = () => {
      if (this.#session === session) this.#session = undefined;
    };
    // each request reports its own failure; the session's is only its end
    session.on('error', (err) => {
      this.#log.debug({ err, url }, 'CA session failed');
      forget();
    });
    session.on('goaway', forget);
    session.on('close', forget);
    session.setTimeout(CA_SESSION_IDLE_MS, () => session.close());
    this.#log.debug({ url }, 'connecting to the CA');
    return session;
  }

  #dropSession(why: string): void {
    const session = this.#session;
    if (session === undefined) return;
    this.#session = undefined;
    // requests in flight finish on it; the next one connects anew
    session.close();
    this.#log.debug({ url: this.#options.url, why }, 'CA session closed');
  }

  #post(body: string, token: string, spiffeId: string): Promise<Answer> {
    const { url } = this.#options;
    const unavailable = (err: Error): AmbitError => {
      // a stream cancelled by the end of its session carries the session's error as its cause: a TLS or identity failure
      const cause = err.cause instanceof Error ? err.cause : err;
      if (cause instanceof AmbitError) return cause;
      return new AmbitError('CA_UNAVAILABLE', `cannot ask the controller at ${url} to sign ${spiffeId}: ${cause.message}`, { cause });
    };
    let stream: http2.ClientHttp2Stream;
    try {
      stream = this.#connect().request({
        ':method': 'POST',
        ':path': CA_PATH,
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
      });
    } catch (err) {
      // a session that is going away, between its GOAWAY and its close
      return Promise.reject(unavailable(err as Error));
    }
    return new Promise<Answer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let status = 0;
      let settled = false;
      const settle = (outcome: { answer: Answer } | { err: Error }): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if ('answer' in outcome) {
          resolve(outcome.answer);
          return;
        }
        if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(outcome.err);
      };
      const session = stream.session;
      const timer = setTimeout(() => {
        settle({ err: new AmbitError('CA_UNAVAILABLE', `the controller at ${url} did not answer the CSR for ${spiffeId} within ${this.#timeoutMs / 1000} s`) });
        // a connection that answers nothing is dead (a controller node gone): the next request must not reuse it
        if (session !== undefined && this.#session === session) this.#session = undefined;
        session?.destroy();
      }, this.#timeoutMs);
      stream.on('response', (headers) => {
        status = Number(headers[':status']);
      });
      stream.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > CA_MAX_RESPONSE_BYTES) {
          settle({ err: new AmbitError('CA_BAD_ANSWER', `the controller at ${url} answered the CSR for ${spiffeId} with more than ${CA_MAX_RESPONSE_BYTES} bytes; a leaf and its intermediates are far less`) });
          return;
        }
        chunks.push(chunk);
      });
      stream.on('end', () => {
        if (status === 0) settle({ err: new AmbitError('CA_UNAVAILABLE', `the controller at ${url} ended the request for ${spiffeId} without an answer`) });
        else settle({ answer: { status, body: Buffer.concat(chunks).toString('utf8') } });
      });
      stream.on('error', (err) => settle({ err: unavailable(err) }));
      stream.on('close', () => settle({ err: new AmbitError('CA_UNAVAILABLE', `the controller at ${url} closed the request for ${spiffeId} before it answered`) }));
      stream.end(body);
    });
  }
}

/** The protocol's refusal, or what can be said of an answer that is not one (a proxy's page, say). */
function parseRefusal(body: string): CaRefusal {
  try {
    const parsed = JSON.parse(body) as Partial<CaRefusal> | null;
    if (typeof parsed?.reason === 'string' && typeof parsed.message === 'string') return { reason: parsed.reason, message: parsed.message };
  } catch {
    // not JSON: quoted below
  }
  return { reason: 'unknown', message: `the answer is not the CA's refusal: ${quote(body)}` };
}

function quote(body: string): string {
  return body === '' ? 'an empty body' : JSON.stringify(body.length > QUOTED_BODY_CHARS ? `${body.slice(0, QUOTED_BODY_CHARS)}…` : body);
}
