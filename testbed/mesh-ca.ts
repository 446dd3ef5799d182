import { generateKeyPairSync, randomBytes } from 'node:crypto';
import forge from 'node-forge';
import { CA_SECRET_KEYS, CA_SECRET_NAME, type CertificateAuthority } from '../core/identity/index.js';
import type { JsonObject } from './apiserver/index.js';

/**
 * The Secret `<namespace>/ambit-ca` as an operator brings it (cert-manager's layout): `ca` signs, and `rootsPem`
 * (default: `ca`'s own certificate, a self-signed root) is what the mesh trusts. A test writes it before the
 * controller starts, so that the controller signs with a CA the test knows.
 */
export function meshCaSecret(ca: CertificateAuthority, options: { rootsPem?: string; namespace?: string } = {}): JsonObject {
  const data = {
    [CA_SECRET_KEYS.issuerCert]: ca.chainPem === '' ? ca.rootPem : ca.chainPem,
    [CA_SECRET_KEYS.issuerKey]: ca.keyPem,
    [CA_SECRET_KEYS.roots]: options.rootsPem ?? ca.rootPem,
  };
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    type: 'kubernetes.io/tls',
    metadata: { name: CA_SECRET_NAME, namespace: options.namespace ?? 'ambit-system' },
    data: Object.fromEntries(Object.entries(data).map(([key, value]) => [key, Buffer.from(value).toString('base64')])),
  };
}

/** An intermediate CA signed by `root`, as cert-manager issues one (valid 30 days): its certificate and its key. */
export function intermediateCa(root: CertificateAuthority): { certPem: string; keyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }).toString());
  cert.serialNumber = `01${randomBytes(8).toString('hex')}`;
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 30 * 86_400_000);
  cert.setSubject([{ shortName: 'CN', value: `Ambit Intermediate ${randomBytes(2).toString('hex')}` }]);
  cert.setIssuer(forge.pki.certificateFromPem(root.rootPem).subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(forge.pki.privateKeyFromPem(root.keyPem), forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert).replace(/\r\n/g, '\n'), keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}
