import { randomBytes } from 'node:crypto';
import forge from 'node-forge';

export interface ServingTls {
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * A CA made for this one server and its serving certificate for 127.0.0.1, localhost and `extraIps` (the address a
 * double listens on when it is not loopback): the kubeconfig carries the CA, so kubectl and client-node verify the
 * server as they would a real cluster's, with nothing insecure to turn on.
 */
export function generateServingTls(extraIps: readonly string[] = []): ServingTls {
  const caKeys = forge.pki.rsa.generateKeyPair({ bits: 2048 });
  const ca = certificate(caKeys.publicKey, [{ name: 'commonName', value: 'ambit-apiserver-double-ca' }], 30);
  ca.setIssuer(ca.subject.attributes);
  ca.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
  ]);
  ca.sign(caKeys.privateKey, forge.md.sha256.create());

  const keys = forge.pki.rsa.generateKeyPair({ bits: 2048 });
  const cert = certificate(keys.publicKey, [{ name: 'commonName', value: 'kube-apiserver' }], 30);
  cert.setIssuer(ca.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }, { type: 2, value: 'localhost' }, ...extraIps.map((ip) => ({ type: 7, ip }))] },
  ]);
  cert.sign(caKeys.privateKey, forge.md.sha256.create());
  return { caPem: forge.pki.certificateToPem(ca), certPem: forge.pki.certificateToPem(cert), keyPem: forge.pki.privateKeyToPem(keys.privateKey) };
}

function certificate(publicKey: forge.pki.PublicKey, subject: forge.pki.CertificateField[], days: number): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  // DER wants a positive, minimally encoded integer: the first byte's high bit clear and the byte not zero; Go's
  // x509 (kubectl) refuses anything else as a malformed serial number.
  const serial = randomBytes(16);
  serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x40;
  cert.serialNumber = serial.toString('hex');
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + days * DAY_MS);
  cert.setSubject(subject);
  return cert;
}
