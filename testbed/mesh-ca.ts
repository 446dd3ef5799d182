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
