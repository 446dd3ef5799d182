const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** The PEM certificate blocks of `pem`, in order; text between them (comments) is ignored, as OpenSSL does. */
export function pemCertificates(pem: string): string[] {
  return pem.match(PEM_CERTIFICATE) ?? [];
}
