import { constants, X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import type { DetailedPeerCertificate, PeerCertificate, TLSSocket } from 'node:tls';
import { chainLeadsTo, spiffeIdFromSan } from '../identity/index.js';

/** HBONE is TLS 1.3 only, with the AES-GCM suites (as Istio's HBONE), so the two meshes can interoperate. */
export const HBONE_CIPHERSUITES = 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256';
export const HBONE_ALPN = 'h2';
/**
 * No resumption (DESIGN.md, "HBONE on the wire"): a resumed session skips the certificates, so a ticket would keep
 * an expired or rotated-out certificate, or a client with none at all, working for the ticket's lifetime (Node's
 * default is 300 s; `sessionTimeout: 0` means "unset" to Node, not "off"). With no stateless tickets, OpenSSL falls
 * back to session IDs, which Node keeps only for a server that listens for `resumeSession`: HBONE's never does.
 */
export const HBONE_SECURE_OPTIONS = constants.SSL_OP_NO_TICKET;

/** What a TLS context for one workload identity is built from. */
export interface WorkloadCredentials {
  keyPem: string;
  certChainPem: string;
}

/** Options shared by both ends of an HBONE connection: TLS 1.3 only, the mesh's trust bundle, no resumption. */
export function hboneContextOptions(credentials: WorkloadCredentials, trustBundlePem: string): tls.SecureContextOptions {
  return {
    key: credentials.keyPem,
    cert: credentials.certChainPem,
    ca: trustBundlePem,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ciphers: HBONE_CIPHERSUITES,
    secureOptions: HBONE_SECURE_OPTIONS,
  };
}

/** The roots peers are verified against, and news of their change (core/identity's TrustBundle is one). */
export interface TrustBundleSource {
  pem(): string;
  roots(): readonly X509Certificate[];
  on(event: 'change', listener: () => void): unknown;
  off(event: 'change', listener: () => void): unknown;
}

/**
 * One SecureContext per certificate, reused for every connection: building one costs about a millisecond of CPU,
 * which the per-connection path cannot afford. A rotated certificate is a new object, so it gets a new context; a
 * changed trust bundle empties the cache, so every handshake from then on verifies against the new roots.
 */
export class SecureContextCache {
  #contexts = new WeakMap<WorkloadCredentials, tls.SecureContext>();
  readonly #trustBundle: TrustBundleSource;

  constructor(trustBundle: TrustBundleSource) {
    this.#trustBundle = trustBundle;
    trustBundle.on('change', () => {
      this.#contexts = new WeakMap();
    });
  }

  get(credentials: WorkloadCredentials): tls.SecureContext {
    let context = this.#contexts.get(credentials);
    if (!context) {
      context = tls.createSecureContext(hboneContextOptions(credentials, this.#trustBundle.pem()));
      this.#contexts.set(credentials, context);
    }
    return context;
  }
}


/** The SPIFFE ID the peer of a verified TLS socket proved, or undefined. */
export function peerSpiffeId(socket: TLSSocket): string | undefined {
  const cert = socket.getPeerCertificate();
  if (!cert || !('subjectaltname' in cert)) return undefined;
  return spiffeIdFromSan(cert.subjectaltname);
}

/** How many certificates up from a peer's leaf a chain is followed: more than any mesh's intermediates. */
const MAX_CHAIN_DEPTH = 8;

/** Whether the certificate chain the peer of `socket` presented leads to one of `roots`. */
export function peerChainsTo(socket: TLSSocket, roots: readonly X509Certificate[]): boolean {
  const chain: X509Certificate[] = [];
  for (let cert = socket.getPeerX509Certificate(); cert !== undefined && chain.length < MAX_CHAIN_DEPTH; cert = cert.issuerCertificate) chain.push(cert);
  return chainLeadsTo(chain, roots);
}


/**
 * The chain a server presented, as X509Certificates, from the detailed certificate that checkServerIdentity gets:
 * a client socket under an HTTP/2 session keeps no peer certificate to ask for later.
 */
export function presentedChain(cert: PeerCertificate): X509Certificate[] {
  const chain: X509Certificate[] = [];
  let current: DetailedPeerCertificate | PeerCertificate | undefined = cert;
  while (current?.raw !== undefined && chain.length < MAX_CHAIN_DEPTH) {
    chain.push(new X509Certificate(current.raw));
    const next: DetailedPeerCertificate | undefined = (current as DetailedPeerCertificate).issuerCertificate;
    if (next === undefined || next === current || next.fingerprint256 === current.fingerprint256) break;
    current = next;
  }
  return chain;
}
