import { createPrivateKey, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdir, open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import forge from 'node-forge';
import { writeFileAtomic } from '../fs/index.js';
import { AmbitError, errnoCode } from '../errors/index.js';
import { generateKeyAndCsr, toUnixPem, URI_NAME_TYPE } from './csr.js';
import { issuedBy } from './chain.js';
import { pemCertificates } from './pem.js';
import { forgeSigner, generateRsaKey } from './rsa-key.js';
import { parseSpiffeId, subjectAltNames, trustDomainId, validateTrustDomain, withoutSpiffeScheme } from './spiffe.js';

/** Workload certificates live a day and are renewed at half life (DESIGN.md, "Identity"). */
export const DEFAULT_CERT_TTL_MS = 24 * 60 * 60 * 1000;
/** Ten years: a self-made root is for demos and tests; production roots come from a Secret. */
export const DEFAULT_CA_VALIDITY_DAYS = 3650;
/** Certificates start a minute in the past so that a peer whose clock is a little behind accepts them at once. */
export const CLOCK_SKEW_ALLOWANCE_MS = 60_000;

export const CA_CERT_FILE = 'ca.crt';
export const CA_KEY_FILE = 'ca.key';

const DAY_MS = 24 * 60 * 60 * 1000;
const DEFAULT_CA_COMMON_NAME = 'Ambit Root CA';

export interface CertificateAuthorityOptions {
  trustDomain: string;
  commonName?: string;
  validityDays?: number;
}

export interface SignOptions {
  /** The identity to certify. The caller has already decided that the requester may have it. */
  spiffeId: string;
  /** Lifetime counted from now (default 24 h); `notAfter` wins when both are given. */
  ttlMs?: number;
  /** Default: now minus CLOCK_SKEW_ALLOWANCE_MS. */
  notBefore?: Date;
  notAfter?: Date;
}

/**
 * The mesh's root of trust: holds the root key and signs workload CSRs. It never sees a workload's private key,
 * only CSRs, and it checks nothing about who asks: authorization (TokenReview, node check) is the caller's job.
 */
export class CertificateAuthority {
  readonly #trustDomain: string;
  readonly #rootPem: string;
  readonly #keyPem: string;
  readonly #root: forge.pki.Certificate;
  readonly #signer: forge.pki.rsa.PrivateKey;
  readonly #rootKeyIdentifier: string;
  /** What follows a leaf in its chain: the signing certificate unless it is a root, and its parents short of a root. */
  readonly #chainPem: string;

  /** The root the signing chain leads to, as its PEM: the signing certificate itself for a root signer. */
  readonly #anchorPem: string;

  private constructor(trustDomain: string, rootPem: string, keyPem: string, key: KeyObject, chainPem = '', anchorPem = rootPem) {
    this.#trustDomain = trustDomain;
    this.#rootPem = rootPem;
    this.#keyPem = keyPem;
    this.#root = forge.pki.certificateFromPem(rootPem);
    this.#signer = forgeSigner(key);
    this.#rootKeyIdentifier = rootKeyIdentifier(this.#root);
    this.#chainPem = chainPem;
    this.#anchorPem = anchorPem;
  }

  /**
   * A CA from PEM text, as a Secret holds it (cert-manager's layout: `tls.crt`, `tls.key`, `ca.crt`): `certPem` is the
   * signing certificate, optionally followed by its chain; `keyPem` its key; `rootsPem` the trust anchors it must chain
   * to (one or, in a rotation, two). Refused with CA_INVALID and a message naming `source` and the fault: no CA
   * certificate, a key that is not RSA or not the certificate's, a chain that does not lead to one of the roots, an
   * expired signing certificate.
   */
  static fromPem(options: { certPem: string; keyPem: string; rootsPem: string; trustDomain: string; source: string; now?: number }): CertificateAuthority {
    const { source } = options;
    validateTrustDomain(options.trustDomain);
    const chain = pemCertificates(options.certPem).map((block, index) => {
      try {
        return new X509Certificate(block);
      } catch (err) {
        throw new AmbitError('CA_INVALID', `${source}: certificate ${index + 1} of the signing chain does not parse`, { cause: err });
      }
    });
    const issuer = chain[0];
    if (issuer === undefined) throw new AmbitError('CA_INVALID', `${source}: the signing certificate holds no PEM certificate`);
    const roots = pemCertificates(options.rootsPem).map((block, index) => {
      try {
        return new X509Certificate(block);
      } catch (err) {
        throw new AmbitError('CA_INVALID', `${source}: root ${index + 1} does not parse`, { cause: err });
      }
    });
    if (roots.length === 0) throw new AmbitError('CA_INVALID', `${source}: the roots hold no PEM certificate`);
    for (const cert of [...chain, ...roots]) {
      if (!cert.ca) throw new AmbitError('CA_INVALID', `${source}: ${subjectOf(cert)} is not a CA certificate (basicConstraints CA is not true)`);
    }
    let key: KeyObject;
    try {
      key = createPrivateKey(options.keyPem);
    } catch (err) {
      throw new AmbitError('CA_INVALID', `${source}: the key is not a PEM private key`, { cause: err });
    }
    if (key.asymmetricKeyType !== 'rsa') {
      throw new AmbitError('CA_INVALID', `${source}: the key is an ${key.asymmetricKeyType ?? 'unknown'} key; Ambit signs with node-forge, which needs an RSA CA key`);
    }
    if (!issuer.checkPrivateKey(key)) throw new AmbitError('CA_INVALID', `${source}: the key is not the private key of the signing certificate (${subjectOf(issuer)}); the pair is mismatched`);
    const now = options.now ?? Date.now();
    if (new Date(issuer.validTo).getTime() <= now) throw new AmbitError('CA_INVALID', `${source}: the signing certificate expired at ${new Date(issuer.validTo).toISOString()}`);
    // each certificate of the chain is signed by the next, and the last by one of the roots (or is one)
    for (let i = 0; i + 1 < chain.length; i++) {
      const [child, parent] = [chain[i]!, chain[i + 1]!];
      if (!issuedBy(child, parent)) {
        throw new AmbitError('CA_INVALID', `${source}: certificate ${i + 1} of the signing chain (${subjectOf(child)}) is not signed by certificate ${i + 2} (${subjectOf(parent)})`);
      }
    }
    const top = chain[chain.length - 1]!;
    const anchor = roots.find((root) => issuedBy(top, root));
    if (anchor === undefined) {
      throw new AmbitError('CA_INVALID', `${source}: the signing chain (${subjectOf(top)}) leads to none of the roots; add its root to the roots, or the mesh refuses every leaf it signs`);
    }
    const rootFingerprints = new Set(roots.map((root) => root.fingerprint256));
    const selfSigned = (cert: X509Certificate) => cert.checkIssued(cert) && cert.verify(cert.publicKey);
    const chainPem = chain
      .filter((cert) => !rootFingerprints.has(cert.fingerprint256) && !selfSigned(cert))
      .map((cert) => cert.toString())
      .join('');
    return new CertificateAuthority(options.trustDomain, toUnixPem(issuer.toString()), toUnixPem(options.keyPem), key, toUnixPem(chainPem), anchor.toString());
  }

  /** A new self-signed root with a fresh RSA key. */
  static async create(options: CertificateAuthorityOptions): Promise<CertificateAuthority> {
    validateTrustDomain(options.trustDomain);
    const validityDays = options.validityDays ?? DEFAULT_CA_VALIDITY_DAYS;
    if (!(validityDays > 0)) {
      throw new AmbitError('BAD_VALIDITY', `CA validityDays must be a positive number of days, got ${validityDays}`);
    }
    const key = await generateRsaKey();
    const root = forge.pki.createCertificate();
    root.publicKey = forge.pki.publicKeyFromPem(key.publicKeyPem);
    root.serialNumber = randomSerialHex();
    const notBefore = Date.now() - CLOCK_SKEW_ALLOWANCE_MS;
    root.validity.notBefore = new Date(notBefore);
    root.validity.notAfter = new Date(notBefore + validityDays * DAY_MS);
    const subject = [
      { shortName: 'O', value: options.trustDomain },
      { shortName: 'CN', value: options.commonName ?? DEFAULT_CA_COMMON_NAME },
    ];
    root.setSubject(subject);
    root.setIssuer(subject);
    root.setExtensions([
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
      { name: 'subjectKeyIdentifier' },
      // The trust domain's own SPIFFE ID, so that load() can recover the trust domain from the certificate.
      { name: 'subjectAltName', altNames: [{ type: URI_NAME_TYPE, value: trustDomainId(options.trustDomain) }] },
    ]);
    root.sign(forgeSigner(key.privateKey), forge.md.sha256.create());
    return new CertificateAuthority(options.trustDomain, toUnixPem(forge.pki.certificateToPem(root)), key.keyPem, key.privateKey);
  }

  /**
   * Reads `ca.crt` and `ca.key` from `dir`. The trust domain comes from `options.trustDomain` or else from the
   * root's `spiffe://<trust-domain>` URI SAN (which create() writes); a root brought from elsewhere without one
   * needs the option.
   */
  static async load(dir: string, options: { trustDomain?: string } = {}): Promise<CertificateAuthority> {
    const certPath = path.join(dir, CA_CERT_FILE);
    const keyPath = path.join(dir, CA_KEY_FILE);
    const rootPem = await readCaFile(certPath);
    const keyPem = await readCaFile(keyPath, { privateToOwner: true });

    let root: X509Certificate;
    try {
      root = new X509Certificate(rootPem);
    } catch (err) {
      throw new AmbitError('CA_INVALID', `${certPath} is not a PEM certificate; replace it with the CA's root certificate`, { cause: err });
    }
    // before its SAN is read as a trust domain: a leaf put there by mistake names a workload, not a trust domain
    if (!root.ca) throw new AmbitError('CA_INVALID', `${certPath} is not a CA certificate (basicConstraints CA is not true); use a root or intermediate CA`);
    const trustDomain = options.trustDomain ?? trustDomainFromRoot(root);
    if (trustDomain === undefined) {
      throw new AmbitError('CA_INVALID', `${certPath} names no trust domain (no spiffe://<trust-domain> URI SAN); pass the trust domain explicitly`);
    }
    // the folder's root is its own signer and its own trust: the same checks as a Secret's material
    return CertificateAuthority.fromPem({ certPem: rootPem, keyPem, rootsPem: rootPem, trustDomain, source: `${certPath} and ${keyPath}` });
  }

  /** Writes `ca.crt` (0644) and `ca.key` (0600) into `dir`, each replaced atomically. */
  async save(dir: string): Promise<void> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(path.join(dir, CA_KEY_FILE), this.#keyPem, { mode: 0o600 });
    await writeFileAtomic(path.join(dir, CA_CERT_FILE), this.#rootPem, { mode: 0o644 });
  }

  /**
   * The signing certificate in PEM. For a self-signed root (create(), local mode's folder) that is the root, the trust
   * bundle peers verify against; for an intermediate, the roots are elsewhere (fromPem's `rootsPem`).
   */
  get rootPem(): string {
    return this.#rootPem;
  }

  /** The signing key in PKCS#8 PEM: only for the controller to store a root it created in its Secret. */
  get keyPem(): string {
    return this.#keyPem;
  }

  /** The root (PEM) its leaves chain to: the one peers must trust before they see them. */
  get anchorPem(): string {
    return this.#anchorPem;
  }

  /** What sign() appends after each leaf: the intermediates up to, not including, a root ('' for a root signer). */
  get chainPem(): string {
    return this.#chainPem;
  }

  get trustDomain(): string {
    return this.#trustDomain;
  }

  /** When the root expires: the agent exports it in `ambit_cert_expiration_timestamp_seconds`. */
  get notAfter(): Date {
    return this.#root.validity.notAfter;
  }

  /**
   * Issues a leaf for `options.spiffeId` from a CSR (PEM, checked here, or a CheckedCsr) that asks for exactly that
   * identity: its only identity is that URI SAN, valid for server and client authentication. Returns the leaf in PEM,
   * then the intermediates (chainPem), never a root.
   */
  async sign(csrPem: string | CheckedCsr, options: SignOptions): Promise<string> {
    const { trustDomain } = parseSpiffeId(options.spiffeId);
    if (trustDomain !== this.#trustDomain) {
      throw new AmbitError(
        'TRUST_DOMAIN_MISMATCH',
        `cannot sign ${options.spiffeId}: its trust domain "${trustDomain}" is not this CA's "${this.#trustDomain}"; check the mesh's trustDomain setting`,
      );
    }
    const checked = typeof csrPem === 'string' ? checkCsr(csrPem) : csrPem;
    if (checked.identity !== options.spiffeId) {
      throw new AmbitError('BAD_CSR', `the CSR asks for ${checked.identity} but the caller may only have ${options.spiffeId}; the requester is misconfigured`);
    }
    const csr = checkedCsrs.get(checked);
    if (csr === undefined) throw new AmbitError('BAD_CSR', `the CSR for ${options.spiffeId} was not checked by checkCsr`);
    const { notBefore, notAfter } = this.#validity(options);

    const leaf = forge.pki.createCertificate();
    leaf.publicKey = csr.publicKey as forge.pki.rsa.PublicKey;
    leaf.serialNumber = randomSerialHex();
    leaf.validity.notBefore = notBefore;
    leaf.validity.notAfter = notAfter;
    // An empty subject, as in Istio's and SPIFFE's certificates: the identity is the URI SAN alone, so the SAN is
    // critical (RFC 5280 section 4.2.1.6; Go and OpenSSL reject an empty subject with a non-critical SAN).
    leaf.setSubject([]);
    leaf.setIssuer(this.#root.subject.attributes);
    leaf.setExtensions([
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
      { name: 'subjectAltName', critical: true, altNames: [{ type: URI_NAME_TYPE, value: options.spiffeId }] },
      { name: 'authorityKeyIdentifier', keyIdentifier: this.#rootKeyIdentifier },
    ]);
    leaf.sign(this.#signer, forge.md.sha256.create());
    return toUnixPem(forge.pki.certificateToPem(leaf)) + this.#chainPem;
  }

  /** A key and a leaf for `spiffeId` in one step, for tests and tools; workloads make their own keys. */
  async issueKeyAndCert(spiffeId: string, options: Omit<SignOptions, 'spiffeId'> = {}): Promise<{ keyPem: string; certPem: string }> {
    const { keyPem, csrPem } = await generateKeyAndCsr(spiffeId);
    const certPem = await this.sign(csrPem, { ...options, spiffeId });
    return { keyPem, certPem };
  }

  #validity(options: SignOptions): { notBefore: Date; notAfter: Date } {
    const now = Date.now();
    const ttlMs = options.ttlMs ?? DEFAULT_CERT_TTL_MS;
    if (!(ttlMs > 0) || !Number.isFinite(ttlMs)) {
      throw new AmbitError('BAD_VALIDITY', `cannot sign ${options.spiffeId}: ttlMs must be a positive number of milliseconds, got ${ttlMs}`);
    }
    const notBefore = options.notBefore ?? new Date(now - CLOCK_SKEW_ALLOWANCE_MS);
    const requestedNotAfter = options.notAfter ?? new Date(now + ttlMs);
    // A leaf cannot outlive its root: peers would reject it from that moment anyway.
    const rootNotAfter = this.#root.validity.notAfter;
    const notAfter = requestedNotAfter > rootNotAfter ? rootNotAfter : requestedNotAfter;
    if (!(notAfter.getTime() > notBefore.getTime())) {
      throw new AmbitError(
        'BAD_VALIDITY',
        `cannot sign ${options.spiffeId}: notAfter ${notAfter.toISOString()} is not after notBefore ${notBefore.toISOString()}`,
      );
    }
    return { notBefore, notAfter };
  }
}

/** A certificate's subject on one line, for messages (Node writes one attribute a line). */
function subjectOf(cert: X509Certificate): string {
  return cert.subject.replaceAll('\n', ', ') || 'a certificate without a subject';
}

/** The RSA keys the CA certifies: 2048 to 4096 bits, exponent 65537 (what every TLS stack makes). */
const MIN_RSA_BITS = 2048;
const MAX_RSA_BITS = 4096;
const RSA_EXPONENT = '65537';

declare const CHECKED: unique symbol;
/** A CSR that checkCsr passed, and the identity it asks for: what sign() takes without checking it again. */
export interface CheckedCsr {
  readonly identity: string;
  /** Only checkCsr makes one (a type brand; nothing at run time). */
  readonly [CHECKED]: true;
}
const checkedCsrs = new WeakMap<CheckedCsr, forge.pki.CertificateSigningRequest>();

/**
 * A CSR checked, and the identity it asks for: its one subjectAltName, a SPIFFE workload ID. BAD_CSR, with the fault
 * in words, for a CSR that does not parse, has an RSA key of other than 2048-4096 bits or exponent 65537, is not
 * signed by its own key, or asks for no SAN, for more than one, or for anything but a URI (a DNS name, an IP address,
 * an email): the CA certifies the identity alone. What else it asks for (a subject, extensions) is ignored.
 */
export function checkCsr(csrPem: string): CheckedCsr {
  const csr = verifiedCsr(csrPem, 'the CSR');
  const names = requestedNames(csr);
  if (names.length === 0) throw new AmbitError('BAD_CSR', 'the CSR asks for no subjectAltName; it must ask for exactly one, the URI spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>');
  if (names.length > 1) {
    throw new AmbitError('BAD_CSR', `the CSR asks for ${names.length} subjectAltNames (${names.map(describeName).join(', ')}); a leaf has exactly one, the workload's SPIFFE ID`);
  }
  const [name] = names as [ForgeAltName];
  if (name.type !== URI_NAME_TYPE) throw new AmbitError('BAD_CSR', `the CSR asks for ${describeName(name)}; the CA certifies only a SPIFFE ID (a URI SAN)`);
  parseSpiffeId(name.value);
  const checked = Object.freeze({ identity: name.value }) as CheckedCsr;
  checkedCsrs.set(checked, csr);
  return checked;
}

function describeName(name: ForgeAltName): string {
  const type = { 1: 'email', 2: 'DNS', 6: 'URI', 7: 'IP' }[name.type] ?? `name type ${name.type}`;
  return `${type}:${name.type === 7 ? (name.ip ?? '?') : name.value}`;
}

function verifiedCsr(csrPem: string, what: string): forge.pki.CertificateSigningRequest {
  let csr: forge.pki.CertificateSigningRequest;
  try {
    csr = forge.pki.certificationRequestFromPem(csrPem);
  } catch (err) {
    throw new AmbitError('BAD_CSR', `${what} cannot be parsed (PEM PKCS#10 with an RSA key expected)`, { cause: err });
  }
  // Before the signature: forge verifies in JavaScript, at a cost that grows with the modulus and the exponent, and a
  // CSR with a huge key would hold the controller's event loop for a minute.
  const key = csr.publicKey as forge.pki.rsa.PublicKey | null;
  const bits = key?.n?.bitLength() ?? 0;
  if (bits < MIN_RSA_BITS || bits > MAX_RSA_BITS) {
    throw new AmbitError('BAD_CSR', `${what} has a ${bits}-bit RSA key; the CA certifies keys of ${MIN_RSA_BITS} to ${MAX_RSA_BITS} bits`);
  }
  if (key?.e?.toString(10) !== RSA_EXPONENT) throw new AmbitError('BAD_CSR', `${what} has an RSA public exponent other than ${RSA_EXPONENT}`);
  // forge throws instead of returning false when the signature does not even decrypt under the CSR's key.
  let signatureValid = false;
  let verifyError: unknown;
  try {
    signatureValid = csr.verify();
  } catch (err) {
    verifyError = err;
  }
  if (!signatureValid) {
    throw new AmbitError('BAD_CSR', `${what} has a bad signature: it was altered or not signed by its own key`, { cause: verifyError });
  }
  return csr;
}

function requestedNames(csr: forge.pki.CertificateSigningRequest): ForgeAltName[] {
  const request = csr.getAttribute({ name: 'extensionRequest' }) as { extensions?: ForgeExtension[] } | null;
  // every subjectAltName extension counts: a second one must not smuggle in names the first does not show
  return (request?.extensions ?? []).filter((extension) => extension.name === 'subjectAltName').flatMap((san) => san.altNames ?? []);
}

interface ForgeAltName {
  type: number;
  value: string;
  ip?: string;
}

interface ForgeExtension {
  name?: string;
  altNames?: ForgeAltName[];
}

function rootKeyIdentifier(root: forge.pki.Certificate): string {
  // A root made elsewhere may compute its key identifier differently from forge: reuse the one it declares.
  const declared = root.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | undefined;
  if (declared?.subjectKeyIdentifier !== undefined) return forge.util.hexToBytes(declared.subjectKeyIdentifier);
  return root.generateSubjectKeyIdentifier().getBytes();
}

function trustDomainFromRoot(root: X509Certificate): string | undefined {
  for (const name of subjectAltNames(root.subjectAltName)) {
    const trustDomain = name.startsWith('URI:') ? withoutSpiffeScheme(name.slice('URI:'.length)) : undefined;
    if (trustDomain !== undefined) return trustDomain.replace(/\/$/, '');
  }
  return undefined;
}

/** 128 random bits as a positive, minimally encoded DER INTEGER, as forge expects it in hex. */
function randomSerialHex(): string {
  const bytes = randomBytes(16);
  // A leading zero byte would be a non-minimal encoding, which Go rejects.
  if (bytes[0] === 0) bytes[0] = 1;
  const hex = bytes.toString('hex');
  // A set top bit would make the INTEGER negative; a zero byte in front keeps it positive.
  return (bytes[0] ?? 0) >= 0x80 ? `00${hex}` : hex;
}

/**
 * Reads a file of the CA folder. The key must be private to its owner: in local mode it sits on every node, and
 * anyone who can read it can mint any identity of the mesh. The mode is checked on the file that was opened, so a
 * rename in between cannot swap in another.
 */
async function readCaFile(file: string, options: { privateToOwner?: boolean } = {}): Promise<string> {
  let handle: FileHandle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') {
      throw new AmbitError('CA_NOT_FOUND', `${file} does not exist; mount the CA Secret (ca.crt, ca.key) in that folder or save a new CA there`, { cause: err });
    }
    throw new AmbitError('CA_INVALID', `${file} cannot be read: ${(err as Error).message}`, { cause: err });
  }
  try {
    const mode = (await handle.stat()).mode & 0o777;
    if (options.privateToOwner && (mode & 0o077) !== 0) {
      throw new AmbitError(
        'CA_KEY_EXPOSED',
        `${file} is open to group or others (mode 0${mode.toString(8)}); the mesh CA key must be readable and writable by its owner alone: chmod 600 ${file} (a mounted Secret: defaultMode 0400)`,
      );
    }
    return await handle.readFile('utf8');
  } catch (err) {
    if (err instanceof AmbitError) throw err;
    throw new AmbitError('CA_INVALID', `${file} cannot be read: ${(err as Error).message}`, { cause: err });
  } finally {
    await handle.close();
  }
}
