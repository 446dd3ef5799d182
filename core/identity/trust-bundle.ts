import { EventEmitter } from 'node:events';
import { X509Certificate } from 'node:crypto';
import { AmbitError } from '../errors/index.js';
import { pemCertificates } from './pem.js';


export type TrustBundleEvents = {
  /** The roots changed: contexts built from the old ones must not be used for new handshakes. */
  change: [pem: string];
};

/**
 * The roots this process trusts for peers' certificates. It is a provider, not a constant: during a root rotation
 * it holds the old and the new root, then the new one alone, and whoever verifies peers (the HBONE server, the
 * client's contexts) follows its `change` event.
 */
export class TrustBundle extends EventEmitter<TrustBundleEvents> {
  #pem: string;
  #roots: readonly X509Certificate[];

  /** `source` names where the PEM came from, for the error when it is not a bundle of CA certificates. */
  constructor(pem: string, source = 'the trust bundle') {
    super();
    this.#roots = parseTrustBundle(pem, source);
    this.#pem = bundlePem(this.#roots);
  }

  /** Every trusted root, in PEM, one after the other. */
  pem(): string {
    return this.#pem;
  }

  roots(): readonly X509Certificate[] {
    return this.#roots;
  }

  /** SHA-256 fingerprints of the roots, in order: what logs and tests compare. */
  fingerprints(): string[] {
    return this.#roots.map((root) => root.fingerprint256);
  }

  /** Whether `certPem`'s first certificate is one of the roots. */
  includes(certPem: string): boolean {
    const fingerprint = new X509Certificate(certPem).fingerprint256;
    return this.#roots.some((root) => root.fingerprint256 === fingerprint);
  }

  /**
   * Takes new roots and emits `change`; returns false, and emits nothing, when they are the ones in use. Throws
   * TRUST_BUNDLE_INVALID, and keeps the roots in use, when `pem` is not a bundle of CA certificates.
   */
  replace(pem: string, source: string): boolean {
    const roots = parseTrustBundle(pem, source);
    const next = bundlePem(roots);
    if (next === this.#pem) return false;
    this.#roots = roots;
    this.#pem = next;
    this.emit('change', next);
    return true;
  }
}

/** The CA certificates in a PEM bundle; text between the blocks (comments) is ignored, as OpenSSL does. */
export function parseTrustBundle(pem: string, source: string): X509Certificate[] {
  const blocks = pemCertificates(pem);
  if (blocks.length === 0) {
    throw new AmbitError('TRUST_BUNDLE_INVALID', `${source} holds no PEM certificate; it must hold the mesh's root certificates, one after the other`);
  }
  return blocks.map((block, index) => {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(block);
    } catch (err) {
      throw new AmbitError('TRUST_BUNDLE_INVALID', `${source}: certificate ${index + 1} does not parse; replace it with the root's PEM`, { cause: err });
    }
    if (!cert.ca) {
      throw new AmbitError('TRUST_BUNDLE_INVALID', `${source}: certificate ${index + 1} (${cert.subject || cert.subjectAltName || 'no subject'}) is not a CA certificate; a trust bundle holds roots only`);
    }
    return cert;
  });
}

function bundlePem(roots: readonly X509Certificate[]): string {
  return roots.map((root) => root.toString()).join('');
}
