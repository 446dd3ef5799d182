export {
  DEFAULT_TRUST_DOMAIN,
  spiffeId,
  parseSpiffeId,
  validateTrustDomain,
  sniForIdentity,
  spiffeIdFromSan,
  subjectAltNames,
  trustDomainFlag,
  trustDomainId,
  withoutSpiffeScheme,
  type SpiffeIdParts,
} from './spiffe.js';
export {
  CertificateAuthority,
  checkCsr,
  CA_CERT_FILE,
  CA_KEY_FILE,
  CLOCK_SKEW_ALLOWANCE_MS,
  DEFAULT_CA_VALIDITY_DAYS,
  DEFAULT_CERT_TTL_MS,
  type CertificateAuthorityOptions,
  type CheckedCsr,
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
export {
  CA_MAX_CONCURRENT_REQUESTS,
  CA_MAX_REQUEST_BYTES,
  CA_MAX_RESPONSE_BYTES,
  CA_PATH,
  CA_SECRET_KEYS,
  CA_SECRET_NAME,
  CA_TOKEN_AUDIENCE,
  TRUST_BUNDLE_CONFIGMAP_NAME,
  TRUST_BUNDLE_KEYS,
  type CaRefusal,
  type CaSignRequest,
  type CaSignResponse,
} from './ca-protocol.js';
export { CaRefusedError, DEFAULT_CA_TIMEOUT_MS, RemoteCaIssuer, type CaTrustSource, type RemoteCaIssuerOptions } from './ca-client.js';
export { TrustBundleFolder, type TrustBundleFolderEvents, type TrustBundleFolderOptions } from './bundle-folder.js';
export { chainLeadsTo, issuedBy } from './chain.js';
export { registerCertExpiryGauge, type CertificatesInUse } from './expiry-metric.js';
export { pemCertificates } from './pem.js';
