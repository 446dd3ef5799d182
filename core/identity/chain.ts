import type { X509Certificate } from 'node:crypto';

/** Whether `cert` is `root`, or was issued and signed by it. */
export function issuedBy(cert: X509Certificate, root: X509Certificate): boolean {
  return root.fingerprint256 === cert.fingerprint256 || (cert.checkIssued(root) && cert.verify(root.publicKey));
}

/**
 * Whether a chain (leaf or signer first) leads to one of `roots`: one of its certificates is a root, or was issued and
 * signed by one. The one rule of "trusted by this bundle" for peers' chains, the published issuer and the CA's own.
 */
export function chainLeadsTo(chain: readonly X509Certificate[], roots: readonly X509Certificate[]): boolean {
  return chain.some((cert) => roots.some((root) => issuedBy(cert, root)));
}
