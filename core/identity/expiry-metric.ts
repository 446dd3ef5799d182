import type { X509Certificate } from 'node:crypto';
import { Gauge, type Registry } from 'prom-client';
import { spiffeIdFromSan } from './spiffe.js';

/** What a process holds or trusts, read at each scrape. */
export interface CertificatesInUse {
  /** The roots it trusts (or publishes). */
  readonly roots: readonly X509Certificate[];
  /** The certificate that signs the mesh's leaves, when this process knows it. */
  readonly issuer: X509Certificate | undefined;
  /** Its own leaves, by identity. */
  readonly workloads: ReadonlyArray<{ readonly spiffeId: string; readonly notAfter: Date }>;
}

/**
 * `ambit_cert_expiration_timestamp_seconds{identity,kind,fingerprint}`, as every Ambit process exports it (DESIGN.md,
 * "Identity"): kind `workload` for each leaf it holds (identity: its SPIFFE ID), `root` for each root, `issuer` for
 * the signer (identity: the trust domain's SPIFFE ID if the certificate names one, else its subject; fingerprint:
 * SHA-256, since the two roots of a rotation may share a name). `ambit check` reads it.
 */
export function registerCertExpiryGauge(registry: Registry, inUse: () => CertificatesInUse): void {
  new Gauge({
    name: 'ambit_cert_expiration_timestamp_seconds',
    help: 'When each certificate this process holds or trusts expires (Unix seconds): kind workload, root or issuer',
    labelNames: ['identity', 'kind', 'fingerprint'],
    registers: [registry],
    collect() {
      this.reset();
      const { roots, issuer, workloads } = inUse();
      const set = (cert: X509Certificate, kind: 'root' | 'issuer') =>
        this.set({ identity: certificateName(cert), kind, fingerprint: cert.fingerprint256 }, Date.parse(cert.validTo) / 1000);
      for (const root of roots) set(root, 'root');
      if (issuer !== undefined) set(issuer, 'issuer');
      for (const { spiffeId, notAfter } of workloads) this.set({ identity: spiffeId, kind: 'workload' }, notAfter.getTime() / 1000);
    },
  });
}

function certificateName(cert: X509Certificate): string {
  return spiffeIdFromSan(cert.subjectAltName) ?? cert.subject.split('\n').join(', ');
}
