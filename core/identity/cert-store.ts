import { EventEmitter } from 'node:events';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { AmbitError } from '../errors/index.js';
import { silentLogger, type Logger } from '../log/index.js';
import { Backoff, realTimer, type SetTimer } from '../timer/index.js';
import type { CertificateAuthority } from './ca.js';
import { generateKeyAndCsr } from './csr.js';

/** Whoever turns a CSR into a certificate: a CA in this process (LocalCaFolder in local mode, localIssuer in tests). */
export interface CertIssuer {
  /** `certChainPem` is the leaf followed by any intermediates, never the root. */
  sign(csrPem: string, spiffeId: string): Promise<{ certChainPem: string }>;
}

/** A CertIssuer backed by a CertificateAuthority object in the same process (the tests'). */
export function localIssuer(ca: CertificateAuthority, ttlMs?: number): CertIssuer {
  return {
    async sign(csrPem, spiffeId) {
      return { certChainPem: await ca.sign(csrPem, { spiffeId, ttlMs }) };
    },
  };
}

export interface WorkloadCertificate {
  spiffeId: string;
  keyPem: string;
  certChainPem: string;
  notBefore: Date;
  notAfter: Date;
  /** The leaf's serial number, upper-case hex as Node prints it. */
  serial: string;
}

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
}

/** Failed renewals back off from half a second to two and a half minutes (DESIGN.md): the ceiling of each delay. */
export const DEFAULT_RENEWAL_BACKOFF: Readonly<BackoffOptions> = Object.freeze({ initialMs: 500, maxMs: 150_000 });

export interface CertStoreOptions {
  issuer: CertIssuer;
  log?: Logger;
  /** Milliseconds since the epoch; injectable so tests can age certificates without waiting. */
  now?: () => number;
  /** Sets the renewal and retry timers; injectable with `now`, so tests move time instead of waiting it out. */
  setTimer?: SetTimer;
  backoff?: BackoffOptions;
}

export type CertStoreEvents = {
  /** A new certificate is in use for the identity: the first one, and each renewal. */
  rotated: [spiffeId: string, cert: WorkloadCertificate];
  /** A renewal failed; the previous certificate stays in use until it expires, and the next try is in `retryInMs`. */
  'renewal-failed': [spiffeId: string, err: Error, retryInMs: number];
  /** An identity without a certificate did not get one; the next try is in `retryInMs`, or at the next get(). */
  'issue-failed': [spiffeId: string, err: Error, retryInMs: number];
};

// setTimeout fires at once when given more than 2^31-1 ms (about 24.8 days); a long-lived certificate is then
// renewed early, which is harmless, instead of in a tight loop.
const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

interface IdentityEntry {
  cert?: WorkloadCertificate;
  inflight?: Promise<WorkloadCertificate>;
  /** Cancels the pending renewal or retry. */
  cancelTimer?: () => void;
  /**
   * The key and CSR of the last request that brought no certificate, asked with again: a key takes a good part of a
   * second to make, and while the issuer is away every identity of the node retries.
   */
  unanswered?: { keyPem: string; csrPem: string };
  /** Failed requests since the last certificate (or since the first request), and the delay before the next try. */
  failures: number;
  readonly backoff: Backoff;
}

/**
 * The certificates of the identities this process acts for. Each is issued on first use from a key made here,
 * renewed at half its remaining life, and on failure retried with exponential backoff while the old certificate
 * keeps serving until it expires. A first issuance that fails is retried with the same backoff, so that an identity
 * asked for ahead of its first connection (the agent asks when the pod is scheduled) has its certificate by then even
 * if the issuer was away; a get() meanwhile asks at once.
 */
export class CertStore extends EventEmitter<CertStoreEvents> {
  readonly #issuer: CertIssuer;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #setTimer: SetTimer;
  readonly #backoff: BackoffOptions;
  readonly #entries = new Map<string, IdentityEntry>();
  #closed = false;

  constructor(options: CertStoreOptions) {
    super();
    this.#issuer = options.issuer;
    this.#log = (options.log ?? silentLogger()).child({ component: 'cert-store' });
    this.#now = options.now ?? Date.now;
    this.#setTimer = options.setTimer ?? realTimer;
    this.#backoff = options.backoff ?? DEFAULT_RENEWAL_BACKOFF;
    if (!(this.#backoff.initialMs > 0) || !(this.#backoff.maxMs >= this.#backoff.initialMs)) {
      throw new AmbitError(
        'BAD_BACKOFF',
        `cert store backoff needs 0 < initialMs <= maxMs, got initialMs=${this.#backoff.initialMs} maxMs=${this.#backoff.maxMs}`,
      );
    }
  }

  /** The identity's valid certificate, issuing one if there is none; concurrent callers share one request. */
  async get(spiffeId: string): Promise<WorkloadCertificate> {
    if (this.#closed) {
      throw new AmbitError('CERT_STORE_CLOSED', `cannot get a certificate for ${spiffeId}: the cert store is closed`);
    }
    let entry = this.#entries.get(spiffeId);
    if (entry === undefined) {
      entry = { failures: 0, backoff: this.#newBackoff() };
      this.#entries.set(spiffeId, entry);
    }
    const valid = this.#valid(entry);
    if (valid !== undefined) return valid;
    return entry.inflight ?? this.#issue(spiffeId, entry);
  }

  /** Stops renewing the identity and drops its key. */
  forget(spiffeId: string): void {
    const entry = this.#entries.get(spiffeId);
    if (entry === undefined) return;
    entry.cancelTimer?.();
    this.#entries.delete(spiffeId);
    this.#log.info({ spiffeId }, 'identity forgotten');
  }

  /**
   * Re-issues every held certificate now, as a renewal does (the old one serves until its successor is here; a
   * failure retries with backoff): after a change of signer, the leaves move to the new root. An issuance already
   * in flight may be signed by the old signer, so it is followed by another. Resolves when all have settled.
   */
  async renewAll(): Promise<void> {
    const renewals = [...this.#entries].map(async ([spiffeId, entry]) => {
      entry.cancelTimer?.();
      entry.cancelTimer = undefined;
      await entry.inflight?.catch(() => undefined);
      if (this.#closed || this.#entries.get(spiffeId) !== entry) return;
      // #issue records a failure and schedules the retry; the caller only waits for the outcome.
      await (entry.inflight ?? this.#issue(spiffeId, entry)).catch(() => undefined);
    });
    await Promise.all(renewals);
  }

  /** Identities held or being issued. */
  identities(): string[] {
    return [...this.#entries.keys()];
  }

  /** Expiry of each held certificate, for `ambit_cert_expiration_timestamp_seconds`; includes expired ones. */
  expirations(): Array<{ spiffeId: string; notAfter: Date }> {
    const expirations: Array<{ spiffeId: string; notAfter: Date }> = [];
    for (const [spiffeId, entry] of this.#entries) {
      if (entry.cert !== undefined) expirations.push({ spiffeId, notAfter: entry.cert.notAfter });
    }
    return expirations;
  }

  /** Cancels every renewal and drops every key; requests still in flight complete but are not kept. */
  close(): void {
    this.#closed = true;
    for (const entry of this.#entries.values()) entry.cancelTimer?.();
    this.#entries.clear();
  }

  #valid(entry: IdentityEntry): WorkloadCertificate | undefined {
    const cert = entry.cert;
    return cert !== undefined && cert.notAfter.getTime() > this.#now() ? cert : undefined;
  }

  #issue(spiffeId: string, entry: IdentityEntry): Promise<WorkloadCertificate> {
    const inflight = this.#requestCertificate(spiffeId, entry).then(
      (cert) => {
        entry.inflight = undefined;
        if (this.#entries.get(spiffeId) === entry) this.#install(spiffeId, entry, cert);
        return cert;
      },
      (err: unknown) => {
        entry.inflight = undefined;
        const error = err instanceof Error ? err : new Error(String(err));
        if (this.#entries.get(spiffeId) === entry) this.#scheduleRetry(spiffeId, entry, error);
        throw error;
      },
    );
    entry.inflight = inflight;
    return inflight;
  }

  async #requestCertificate(spiffeId: string, entry: IdentityEntry): Promise<WorkloadCertificate> {
    entry.unanswered ??= await generateKeyAndCsr(spiffeId);
    const { keyPem, csrPem } = entry.unanswered;
    const { certChainPem } = await this.#issuer.sign(csrPem, spiffeId);
    return this.#checkIssued(spiffeId, keyPem, certChainPem);
  }

  /** What the issuer returns is checked before use: a wrong certificate would only fail later, in handshakes. */
  #checkIssued(spiffeId: string, keyPem: string, certChainPem: string): WorkloadCertificate {
    let leaf: X509Certificate;
    try {
      leaf = new X509Certificate(certChainPem);
    } catch (err) {
      throw new AmbitError('BAD_ISSUED_CERT', `the issuer returned no parsable certificate for ${spiffeId}`, { cause: err });
    }
    if (!leaf.checkPrivateKey(createPrivateKey(keyPem))) {
      throw new AmbitError('BAD_ISSUED_CERT', `the issuer returned a certificate for ${spiffeId} that does not match the CSR's key`);
    }
    // exactly the identity, as the CA signs it: a leaf with more names would be more than was asked for
    if (leaf.subjectAltName !== `URI:${spiffeId}`) {
      throw new AmbitError('BAD_ISSUED_CERT', `the issuer returned a certificate whose SAN is not exactly the URI ${spiffeId} (it has: ${leaf.subjectAltName ?? 'none'})`);
    }
    const notAfter = new Date(leaf.validTo);
    if (notAfter.getTime() <= this.#now()) {
      throw new AmbitError(
        'BAD_ISSUED_CERT',
        `the issuer returned a certificate for ${spiffeId} that expired at ${notAfter.toISOString()}; check the issuer's clock and TTL`,
      );
    }
    return { spiffeId, keyPem, certChainPem, notBefore: new Date(leaf.validFrom), notAfter, serial: leaf.serialNumber };
  }

  #newBackoff(): Backoff {
    return new Backoff({ ...this.#backoff, resetAfterMs: 0 });
  }

  #install(spiffeId: string, entry: IdentityEntry, cert: WorkloadCertificate): void {
    entry.cert = cert;
    entry.unanswered = undefined;
    entry.failures = 0;
    // forgotten at the next failure: a certificate in hand ends the failing spell
    entry.backoff.healthy(this.#now());
    // Half of the life that remains on arrival rather than of notBefore..notAfter: notBefore is backdated for clock
    // skew, and the issuer's clock may differ from ours.
    const renewInMs = Math.min((cert.notAfter.getTime() - this.#now()) / 2, MAX_TIMER_DELAY_MS);
    this.#schedule(spiffeId, entry, renewInMs);
    this.#log.info({ spiffeId, serial: cert.serial, notAfter: cert.notAfter.toISOString(), renewInMs: Math.round(renewInMs) }, 'certificate rotated');
    this.emit('rotated', spiffeId, cert);
  }

  #scheduleRetry(spiffeId: string, entry: IdentityEntry, err: Error): void {
    entry.failures += 1;
    // equal jitter (core/timer): nodes that failed together spread out, and each delay is at least the previous one
    const retryInMs = entry.backoff.failed(this.#now());
    this.#schedule(spiffeId, entry, retryInMs);
    const facts = { spiffeId, err, failures: entry.failures, retryInMs: Math.round(retryInMs) };
    if (entry.cert === undefined) {
      this.#log.warn(facts, 'issuing a certificate failed; the identity has none, and its connections fail, until a retry succeeds');
      this.emit('issue-failed', spiffeId, err, retryInMs);
      return;
    }
    this.#log.warn({ ...facts, notAfter: entry.cert.notAfter.toISOString() }, 'certificate renewal failed; the current certificate stays in use until it expires');
    this.emit('renewal-failed', spiffeId, err, retryInMs);
  }

  #schedule(spiffeId: string, entry: IdentityEntry, delayMs: number): void {
    entry.cancelTimer?.();
    entry.cancelTimer = this.#setTimer(() => this.#renew(spiffeId, entry), delayMs);
  }

  #renew(spiffeId: string, entry: IdentityEntry): void {
    entry.cancelTimer = undefined;
    // A get() for an expired certificate may already be asking; its outcome schedules what comes next.
    if (entry.inflight !== undefined) return;
    // #issue records the failure and schedules the retry; there is no caller to hand the rejection to.
    this.#issue(spiffeId, entry).catch(() => undefined);
  }
}
