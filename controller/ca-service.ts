import type http2 from 'node:http2';
import { Counter, type Registry } from 'prom-client';
import { AmbitError } from '../core/errors/index.js';
import { CA_MAX_REQUEST_BYTES, checkCsr, type CaSignResponse, type CertificateAuthority, type CheckedCsr } from '../core/identity/index.js';
import type { Logger } from '../core/log/index.js';
import { authorizeIdentity, type CaAuthorizationContext } from './ca-authorize.js';
import { bearerToken, refuse, withTimeout, type Authenticate, type TokenVerdict } from './stream-server.js';

/** The longest a request may wait for its token check before it is refused as unavailable. */
const AUTHENTICATE_TIMEOUT_MS = 10_000;
/** The longest a caller may take to send its (small) body. */
const BODY_TIMEOUT_MS = 10_000;

export interface CaServiceOptions extends CaAuthorizationContext {
  /** Checks a token with a TokenReview of the CA's audience (cached). */
  readonly authenticate: Authenticate;
  /** Whether the controller has listed the cluster: before, "no pod on that node" may only mean "not read yet". */
  readonly synced: () => boolean;
  /** The signer in use, undefined while there is none (the Secret not read yet, or never valid). */
  readonly signer: () => CertificateAuthority | undefined;
  /** Lifetime of the leaves it signs. */
  readonly ttlMs: number;
  readonly registry: Registry;
  readonly log: Logger;
}

/**
 * The mesh CA's endpoint (core/identity/ca-protocol.ts): a CSR is signed only after the caller's token is checked
 * (TokenReview, audience ambit-ca) and the identity its CSR asks for is authorized (ca-authorize.ts). Every refusal
 * says which check failed, to the caller and in the log, and is counted by reason
 * (`ambit_ca_requests_total{outcome}`); what cannot be decided now (no verdict, no signer, not synced) is 503, never
 * a signature.
 */
export class CaService {
  readonly #options: CaServiceOptions;
  readonly #requests: Counter<'outcome'>;

  constructor(options: CaServiceOptions) {
    this.#options = options;
    this.#requests = new Counter({
      name: 'ambit_ca_requests_total',
      help: 'Certificate requests to the mesh CA, by outcome: signed, or the reason of the refusal',
      labelNames: ['outcome'],
      registers: [options.registry],
    });
  }

  /** Serves one request on CA_PATH. */
  readonly handle = async (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> => {
    const remote = stream.session?.socket.remoteAddress;
    const context: RefusalContext = { stream, remote, user: undefined, identity: undefined };
    if (headers[':method'] !== 'POST') return this.#refuse(context, 405, 'method_not_allowed', 'the CA takes POST with a JSON body {"csr": "<PEM>"}');
    if (!this.#options.synced()) return this.#refuse(context, 503, 'not_synced', 'the controller has not read the whole cluster yet; retry');
    if (this.#options.signer() === undefined) return this.#refuse(context, 503, 'no_signer', 'the controller holds no valid signing key yet (see its log and ambit_ca_secret_valid); retry');
    const token = bearerToken(headers);
    if (token === '') return this.#refuse(context, 401, 'no_token', "the request carries no bearer token (the caller's projected service-account token, audience ambit-ca)");
    let body: string;
    try {
      body = await withTimeout(readLimited(stream, CA_MAX_REQUEST_BYTES), BODY_TIMEOUT_MS);
    } catch (err) {
      if (err instanceof AmbitError && err.code === 'CA_REQUEST_TOO_LARGE') return this.#refuse(context, 413, 'request_too_large', err.message);
      return this.#refuse(context, 400, 'bad_request', `the request body could not be read: ${err instanceof Error ? err.message : String(err)}`);
    }
    let verdict: TokenVerdict;
    try {
      verdict = await withTimeout(this.#options.authenticate(token), AUTHENTICATE_TIMEOUT_MS);
    } catch (err) {
      // no verdict is neither an admission nor a judgement of the token; the cause stays in the log
      this.#options.log.warn({ remote, err: err instanceof Error ? err.message : String(err) }, 'CA token check failed');
      return this.#refuse(context, 503, 'token_review_unavailable', 'the token could not be checked now; retry');
    }
    if (!verdict.authenticated) return this.#refuse(context, 401, 'token_rejected', `the token was not accepted: ${verdict.reason}`);
    context.user = verdict.username;
    let csr: string;
    try {
      const parsed = JSON.parse(body) as { csr?: unknown };
      if (typeof parsed !== 'object' || parsed === null || typeof parsed.csr !== 'string') throw new Error('no "csr" string');
      csr = parsed.csr;
    } catch (err) {
      return this.#refuse(context, 400, 'bad_request', `the body must be JSON {"csr": "<PEM PKCS#10>"}: ${err instanceof Error ? err.message : String(err)}`);
    }
    let checked: CheckedCsr;
    try {
      checked = checkCsr(csr);
    } catch (err) {
      return this.#refuse(context, 400, 'bad_csr', err instanceof Error ? err.message : String(err));
    }
    const { identity } = checked;
    context.identity = identity;
    const decision = authorizeIdentity(verdict, identity, this.#options);
    if (!decision.allowed) return this.#refuse(context, 403, decision.reason, decision.message);
    // the signer of this moment, not of the request's start: a leaf asked for across a rotation comes from the new one
    const signer = this.#options.signer();
    if (signer === undefined) return this.#refuse(context, 503, 'no_signer', 'the controller holds no valid signing key now; retry');
    let certChainPem: string;
    try {
      certChainPem = await signer.sign(checked, { spiffeId: identity, ttlMs: this.#options.ttlMs });
    } catch (err) {
      // the CSR was checked above: what fails here is the signer (expired meanwhile), not the caller's request
      this.#options.log.error({ err, identity }, 'signing failed');
      return this.#refuse(context, 503, 'sign_failed', 'the controller could not sign now; retry');
    }
    this.#requests.inc({ outcome: 'signed' });
    this.#options.log.info({ remote, user: verdict.username, identity }, 'certificate signed');
    if (stream.destroyed) return;
    const answer: CaSignResponse = { certChainPem };
    stream.respond({ ':status': 200, 'content-type': 'application/json' });
    stream.end(JSON.stringify(answer));
  };

  #refuse(context: RefusalContext, status: number, reason: string, message: string): void {
    this.#requests.inc({ outcome: reason });
    this.#options.log.warn({ remote: context.remote, user: context.user, identity: context.identity, reason, detail: message }, 'certificate request refused');
    refuse(context.stream, status, reason, message);
  }
}

interface RefusalContext {
  readonly stream: http2.ServerHttp2Stream;
  readonly remote: string | undefined;
  user: string | undefined;
  identity: string | undefined;
}

/** The request body as text, refused (CA_REQUEST_TOO_LARGE) past `limit` bytes without reading the rest. */
function readLimited(stream: http2.ServerHttp2Stream, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const fail = (err: Error) => {
      stream.off('data', onData);
      reject(err);
    };
    const onData = (chunk: Buffer) => {
      length += chunk.length;
      if (length > limit) {
        fail(new AmbitError('CA_REQUEST_TOO_LARGE', `the request is larger than ${limit} bytes; a CSR is a few KiB`));
        return;
      }
      chunks.push(chunk);
    };
    stream.on('data', onData);
    stream.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    stream.once('error', fail);
    stream.once('close', () => fail(new AmbitError('CA_REQUEST_ABORTED', 'the caller closed the request before its end')));
  });
}
