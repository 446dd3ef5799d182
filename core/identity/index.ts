export {
  DEFAULT_TRUST_DOMAIN,
  spiffeId,
  parseSpiffeId,
  validateTrustDomain,
  sniForIdentity,
  subjectAltNames,
  trustDomainFlag,
  trustDomainId,
  withoutSpiffeScheme,
  type SpiffeIdParts,
} from './spiffe.js';
export {
  CertificateAuthority,
  CA_CERT_FILE,
  CA_KEY_FILE,
  CLOCK_SKEW_ALLOWANCE_MS,
  DEFAULT_CA_VALIDITY_DAYS,
  DEFAULT_CERT_TTL_MS,
  type CertificateAuthorityOptions,
  type SignOptions,
} from './ca.js';
export { generateKeyAndCsr } from './csr.js';
export {
  CertStore,
  DEFAULT_RENEWAL_BACKOFF,
  localIssuer,
  type BackoffOptions,
  type CertIssuer,
  type CertStoreEvents,
  type CertStoreOptions,
  type WorkloadCertificate,
} from './cert-store.js';
export type { SetTimer } from '../timer/index.js';
export { LocalCaFolder, TRUST_BUNDLE_FILE, type LocalCaFolderEvents, type LocalCaFolderOptions } from './local-ca.js';
export { parseTrustBundle, TrustBundle, type TrustBundleEvents } from './trust-bundle.js';
