import forge from 'node-forge';
import { forgeSigner, generateRsaKey } from './rsa-key.js';
import { parseSpiffeId } from './spiffe.js';

/** GeneralName tag of a uniformResourceIdentifier in subjectAltName (RFC 5280 section 4.2.1.6). */
export const URI_NAME_TYPE = 6;

/**
 * A new private key and a CSR asking for `spiffeId` as its only URI SAN. The key is for this process only:
 * send the CSR to the CA and keep the key.
 */
export async function generateKeyAndCsr(spiffeId: string): Promise<{ keyPem: string; csrPem: string }> {
  parseSpiffeId(spiffeId);
  const key = await generateRsaKey();
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.publicKeyFromPem(key.publicKeyPem);
  // The identity lives only in the URI SAN, as in an X509-SVID; the CA decides the subject.
  csr.setSubject([]);
  csr.setAttributes([
    {
      name: 'extensionRequest',
      extensions: [{ name: 'subjectAltName', critical: true, altNames: [{ type: URI_NAME_TYPE, value: spiffeId }] }],
    },
  ]);
  csr.sign(forgeSigner(key.privateKey), forge.md.sha256.create());
  return { keyPem: key.keyPem, csrPem: toUnixPem(forge.pki.certificationRequestToPem(csr)) };
}

/** forge writes PEM with CRLF line ends; everything else in the mesh (and in Kubernetes Secrets) uses LF. */
export function toUnixPem(pem: string): string {
  return pem.replace(/\r\n/g, '\n');
}
