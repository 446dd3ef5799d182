/**
 * The mesh CA's endpoint on the controller's port (beside the discovery stream, the same TLS 1.3 HTTP/2 listener):
 *
 *   POST /ambit.ca.v1/sign
 *   authorization: Bearer <projected service-account token, audience ambit-ca>
 *   content-type: application/json
 *   {"csr": "<PEM PKCS#10 CSR whose only SAN is the URI spiffe://<trust-domain>/ns/<ns>/sa/<sa>>"}
 *
 * answered 200 with {"certChainPem": "<leaf, then the intermediates up to (not including) a root>"} or, refused, with
 * a 4xx/5xx and {"reason": "<stable code>", "message": "<which check failed, in words>"}: 400 a malformed request or
 * CSR, 401 a token that proves nothing, 403 an identity this caller may not have, 413 a body over
 * CA_MAX_REQUEST_BYTES, 503 no verdict now (the TokenReview failed, the controller has not listed the cluster yet,
 * or it holds no signing key): the caller keeps what it has and retries with backoff. The identity asked for is the
 * CSR's URI SAN; the key never leaves the caller.
 */
export const CA_PATH = '/ambit.ca.v1/sign';
/** The audience of the token a caller presents to the CA (a token for the API server, or the stream's, must not work). */
export const CA_TOKEN_AUDIENCE = 'ambit-ca';
/** The largest request body the CA reads: a 4096-bit RSA CSR in PEM is under 2 KiB. */
export const CA_MAX_REQUEST_BYTES = 64 * 1024;
/**
 * Requests on one connection at once, at most: the controller's port takes this many streams a connection (its
 * HTTP/2 maxConcurrentStreams); a client sends no more, so none waits in a queue its timeout would count.
 */
export const CA_MAX_CONCURRENT_REQUESTS = 4;
/** The largest answer a client reads: a leaf and a few intermediates. */
export const CA_MAX_RESPONSE_BYTES = 256 * 1024;

/** The Secret that holds the mesh's signing material, in the controller's namespace (cert-manager's layout). */
export const CA_SECRET_NAME = 'ambit-ca';
/** Its keys: the signing certificate (followed by its chain), its private key, and the roots (trust anchors). */
export const CA_SECRET_KEYS = Object.freeze({ issuerCert: 'tls.crt', issuerKey: 'tls.key', roots: 'ca.crt' });
/** The ConfigMap the controller publishes, public: what agents (and waypoints) trust, mounted as a folder. */
export const TRUST_BUNDLE_CONFIGMAP_NAME = 'ambit-trust-bundle';
/** Its keys: the roots (one or, during a rotation, two), and the issuer's chain (the signing certificate first). */
export const TRUST_BUNDLE_KEYS = Object.freeze({ roots: 'trust-bundle.pem', issuerChain: 'issuer-chain.pem' });

export interface CaSignRequest {
  readonly csr: string;
}

export interface CaSignResponse {
  readonly certChainPem: string;
}

export interface CaRefusal {
  readonly reason: string;
  readonly message: string;
}
