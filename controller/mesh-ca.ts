import { EventEmitter } from 'node:events';
import { X509Certificate } from 'node:crypto';
import { Gauge, type Registry } from 'prom-client';
import { AmbitError } from '../core/errors/index.js';
import {
  CA_SECRET_KEYS,
  CA_SECRET_NAME,
  CertificateAuthority,
  parseTrustBundle,
  TRUST_BUNDLE_CONFIGMAP_NAME,
  TRUST_BUNDLE_KEYS,
} from '../core/identity/index.js';
import { ApiStatusError, type KubeApi } from '../core/k8s/index.js';
import type { Logger } from '../core/log/index.js';
import { acquireLease } from './lease.js';

/** How often the Secret is read again whatever the watch says (a watch can miss an event, or be broken for long). */
export const DEFAULT_CA_REREAD_INTERVAL_MS = 60_000;
/** The Lease whose holder alone creates the root when there is none. */
export const CA_LEASE_NAME = 'ambit-ca-bootstrap';
const LEASE_DURATION_SECONDS = 30;
/** Retry delay while there is no signer at all (the Secret unreadable, invalid, or being created by the other replica). */
const NO_SIGNER_RETRY_MS = 1_000;

export interface MeshCaOptions {
  readonly api: Pick<KubeApi, 'read' | 'post' | 'put'>;
  readonly namespace: string;
  readonly trustDomain: string;
  /** This replica's name (its pod's), as the Lease's holder. */
  readonly holder: string;
  readonly rereadIntervalMs?: number;
  readonly registry: Registry;
  readonly log: Logger;
}

export type MeshCaEvents = {
  /** Another signing key (a rotation, a fixed Secret): leaves signed before are re-issued by it. */
  signer: [ca: CertificateAuthority];
};

/** What the controller says of its CA: in `/status` and `ambit_ca_secret_valid`. */
export interface MeshCaStatus {
  /** The last read of the Secret was accepted. */
  readonly valid: boolean;
  readonly message: string;
  /** SHA-256 fingerprints of the signer in use and of the published roots. */
  readonly signer: string | undefined;
  readonly roots: readonly string[];
}

interface SecretMaterial {
  readonly certPem: string;
  readonly keyPem: string;
  readonly rootsPem: string;
}

/**
 * The mesh's signing key, from the Secret `<namespace>/ambit-ca` (cert-manager's layout: `tls.crt` the signing
 * certificate and its chain, `tls.key` its key, `ca.crt` the roots; bring your own). When there is none, the holder
 * of the Lease `ambit-ca-bootstrap` creates a self-signed root once; the other replica waits for it and reads it.
 * The Secret is read again on every change the watch reports and every `rereadIntervalMs` regardless. A Secret that
 * does not load (a key that is not its certificate's, a chain that leads to none of the roots, an expired signer)
 * changes nothing: the last good signer stays in use, and the status, the log and `ambit_ca_secret_valid` say so.
 * Deleted while in use, it is written back from the last good material (by the Lease holder), so nothing is lost.
 * The roots and the issuer chain (public) are published as the ConfigMap `<namespace>/ambit-trust-bundle`, which the
 * agents mount.
 */
export class MeshCa extends EventEmitter<MeshCaEvents> {
  readonly #options: MeshCaOptions;
  readonly #log: Logger;
  #signer: CertificateAuthority | undefined;
  #material: SecretMaterial | undefined;
  #status: MeshCaStatus = { valid: false, message: 'the CA Secret has not been read yet', signer: undefined, roots: [] };
  #timer: NodeJS.Timeout | undefined;
  #refreshing: Promise<void> | undefined;
  #again = false;
  #closed = false;

  private constructor(options: MeshCaOptions) {
    super();
    this.#options = options;
    this.#log = options.log.child({ component: 'mesh-ca' });
    const valid = (): number => (this.#status.valid ? 1 : 0);
    new Gauge({
      name: 'ambit_ca_secret_valid',
      help: `1 when the last read of the Secret ${CA_SECRET_NAME} was accepted; 0 when it was refused (the controller keeps signing with the last good key, if it has one)`,
      registers: [options.registry],
      collect() {
        this.set(valid());
      },
    });
  }

  /** Reads (or creates) the signer; resolves once there is one, retrying every second and saying why until then. */
  static async start(options: MeshCaOptions): Promise<MeshCa> {
    const ca = new MeshCa(options);
    while (ca.#signer === undefined && !ca.#closed) {
      await ca.refresh();
      if (ca.#signer === undefined) await new Promise((resolve) => setTimeout(resolve, NO_SIGNER_RETRY_MS));
    }
    ca.#schedule();
    return ca;
  }

  /** The signer in use. */
  get signer(): CertificateAuthority | undefined {
    return this.#signer;
  }

  get status(): MeshCaStatus {
    return this.#status;
  }

  /** The roots in use (what agents trust), as published. */
  get rootsPem(): string {
    return this.#material?.rootsPem ?? '';
  }

  /** Reads the Secret now (the watch saw a change); one read at a time, and a change seen during one earns one more. */
  refresh(): Promise<void> {
    if (this.#refreshing !== undefined) {
      this.#again = true;
      return this.#refreshing;
    }
    this.#refreshing = (async () => {
      do {
        this.#again = false;
        await this.#refreshOnce().catch((err: unknown) => this.#log.error({ err }, 'reading the CA Secret failed; keeping the signer in use'));
      } while (this.#again && !this.#closed);
    })().finally(() => {
      this.#refreshing = undefined;
    });
    return this.#refreshing;
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#refreshing;
  }

  #schedule(): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      void this.refresh().finally(() => this.#schedule());
    }, this.#options.rereadIntervalMs ?? DEFAULT_CA_REREAD_INTERVAL_MS);
    this.#timer.unref();
  }

  get #secretPath(): string {
    return `/api/v1/namespaces/${this.#options.namespace}/secrets`;
  }

  async #refreshOnce(): Promise<void> {
    const secret = await this.#readSecret();
    if (secret === undefined) {
      await this.#noSecret();
      return;
    }
    const source = `Secret ${this.#options.namespace}/${CA_SECRET_NAME}`;
    let material: SecretMaterial;
    let ca: CertificateAuthority;
    try {
      material = secretMaterial(secret, source);
      ca = CertificateAuthority.fromPem({ ...material, trustDomain: this.#options.trustDomain, source });
      parseTrustBundle(material.rootsPem, `${source} ${CA_SECRET_KEYS.roots}`);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      const keeping = this.#signer === undefined ? 'there is no signer, so no certificate is signed until it is fixed' : `the last good signer ${fingerprint(this.#signer.rootPem)} stays in use`;
      this.#setStatus(false, `${message}; ${keeping}`);
      this.#log.error({ reason: message, signer: this.#status.signer }, `the CA Secret is refused: ${message}; ${keeping}`);
      return;
    }
    const newSigner = this.#signer === undefined || this.#signer.rootPem !== ca.rootPem || this.#signer.keyPem !== ca.keyPem;
    const signer = newSigner ? ca : this.#signer!;
    // the bundle first: peers must trust the new root before they see leaves it signed, and nothing is taken in here
    // until the bundle is out (a publish that fails is tried again at the next read, with nothing half-applied)
    await this.#publish(signer, material);
    const changed = this.#material?.rootsPem !== material.rootsPem || newSigner;
    this.#material = material;
    this.#signer = signer;
    this.#setStatus(true, 'the CA Secret is valid and in use');
    if (changed) this.#log.info({ signer: this.#status.signer, roots: this.#status.roots, newSigner }, 'CA Secret loaded');
    if (newSigner) this.emit('signer', signer);
  }

  async #readSecret(): Promise<Record<string, unknown> | undefined> {
    try {
      return (await this.#options.api.read(`${this.#secretPath}/${CA_SECRET_NAME}`)) as Record<string, unknown>;
    } catch (err) {
      if (err instanceof ApiStatusError && err.status === 404) return undefined;
      throw err;
    }
  }

  /** No Secret: the Lease holder creates one (a new root, or the last good material written back); the other waits. */
  async #noSecret(): Promise<void> {
    const { namespace, holder } = this.#options;
    const leader = await acquireLease(this.#options.api, { namespace, name: CA_LEASE_NAME, holder, durationSeconds: LEASE_DURATION_SECONDS });
    if (!leader) {
      this.#log.info({ lease: `${namespace}/${CA_LEASE_NAME}` }, 'no CA Secret yet; the other replica holds the lease and creates it');
      return;
    }
    let material = this.#material;
    if (material === undefined) {
      const root = await CertificateAuthority.create({ trustDomain: this.#options.trustDomain });
      material = { certPem: root.rootPem, keyPem: root.keyPem, rootsPem: root.rootPem };
      this.#log.warn({ root: fingerprint(root.rootPem) }, `no Secret ${namespace}/${CA_SECRET_NAME}: created a self-signed root (bring your own for production, e.g. from cert-manager)`);
    } else {
      this.#log.warn(`the Secret ${namespace}/${CA_SECRET_NAME} was deleted; writing back the signer in use`);
    }
    const data = { [CA_SECRET_KEYS.issuerCert]: material.certPem, [CA_SECRET_KEYS.issuerKey]: material.keyPem, [CA_SECRET_KEYS.roots]: material.rootsPem };
    try {
      await this.#options.api.post(this.#secretPath, {
        apiVersion: 'v1',
        kind: 'Secret',
        type: 'kubernetes.io/tls',
        metadata: { name: CA_SECRET_NAME, namespace, labels: { 'app.kubernetes.io/managed-by': 'ambit-controller' } },
        data: Object.fromEntries(Object.entries(data).map(([key, value]) => [key, Buffer.from(value).toString('base64')])),
      });
    } catch (err) {
      // the other replica was faster after all: read what it wrote
      if (!(err instanceof ApiStatusError && err.status === 409)) throw err;
    }
    this.#again = true;
  }

  /** Writes the ConfigMap when it differs from these roots and this signer's chain. */
  async #publish(signer: CertificateAuthority, material: SecretMaterial): Promise<void> {
    const rootCerts = parseTrustBundle(material.rootsPem, 'roots');
    const roots = rootCerts.map((root) => root.fingerprint256);
    const data = {
      [TRUST_BUNDLE_KEYS.roots]: rootCerts.map((root) => root.toString()).join(''),
      [TRUST_BUNDLE_KEYS.issuerChain]: signer.chainPem === '' ? signer.rootPem : signer.chainPem,
    };
    const { namespace } = this.#options;
    const collection = `/api/v1/namespaces/${namespace}/configmaps`;
    let current: { metadata?: Record<string, unknown>; data?: Record<string, string> } | undefined;
    try {
      current = (await this.#options.api.read(`${collection}/${TRUST_BUNDLE_CONFIGMAP_NAME}`)) as typeof current;
    } catch (err) {
      if (!(err instanceof ApiStatusError && err.status === 404)) throw err;
    }
    if (current === undefined) {
      await this.#options.api.post(collection, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: TRUST_BUNDLE_CONFIGMAP_NAME, namespace }, data });
      this.#log.info({ roots }, 'trust bundle published');
      return;
    }
    const same = Object.entries(data).every(([key, value]) => current.data?.[key] === value) && Object.keys(current.data ?? {}).length === Object.keys(data).length;
    if (same) return;
    // at the resourceVersion read: a replica that publishes at the same moment makes this one 409, and the next read retries
    await this.#options.api.put(`${collection}/${TRUST_BUNDLE_CONFIGMAP_NAME}`, { ...current, data });
    this.#log.info({ roots }, 'trust bundle published');
  }

  #setStatus(valid: boolean, message: string): void {
    const roots = this.#material === undefined ? [] : parseTrustBundle(this.#material.rootsPem, 'roots').map((root) => root.fingerprint256);
    this.#status = { valid, message, signer: this.#signer === undefined ? undefined : fingerprint(this.#signer.rootPem), roots };
  }
}

function secretMaterial(secret: Record<string, unknown>, source: string): SecretMaterial {
  const data = (secret.data ?? {}) as Record<string, unknown>;
  const field = (key: string): string => {
    const value = data[key];
    if (typeof value !== 'string' || value === '') throw new AmbitError('CA_INVALID', `${source} has no ${key}`);
    return Buffer.from(value, 'base64').toString('utf8');
  };
  return { certPem: field(CA_SECRET_KEYS.issuerCert), keyPem: field(CA_SECRET_KEYS.issuerKey), rootsPem: field(CA_SECRET_KEYS.roots) };
}

function fingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}
