import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
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
import { SerialRuns } from '../core/serial/index.js';
import { parseBundle, planBundle, ROOTS_ANNOTATION, type BundlePlan, type ConfigMapObject, type PublishedBundle } from './bundle-plan.js';
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
  /**
   * How long a root must have been in the published bundle before the controller signs with a key that chains to it,
   * and how long a root it stopped signing with stays there: the time a ConfigMap change takes to reach every
   * node's mounted copy (kubelet's sync period and cache, about a minute).
   */
  readonly propagationMs?: number;
  /** The lifetime of the leaves it signs: a root it stopped signing with stays published until they have expired. */
  readonly ttlMs: number;
  readonly registry: Registry;
  readonly log: Logger;
}

/** kubelet refreshes a mounted ConfigMap within its sync period (1 min) plus its cache's TTL: two minutes covers both. */
export const DEFAULT_CA_PROPAGATION_MS = 120_000;

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
  /** A signer read from the Secret and not yet in use: its fingerprint and when it will be (ISO time). */
  readonly pending?: { readonly signer: string; readonly at: string };
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
 *
 * The roots and the issuer chain (public) are published as the ConfigMap `<namespace>/ambit-trust-bundle`, which the
 * agents mount. No connection is refused across a change of key, however the Secret was changed (in three steps or
 * in one write, as a cert-manager renewal does it): the published roots are the Secret's, plus the root of the signer
 * in use, plus a root the controller stopped signing with, for `propagationMs`; and a new key is taken only once its
 * root has been published that long, until when `/status` names it as pending.
 */
export class MeshCa extends EventEmitter<MeshCaEvents> {
  readonly #options: MeshCaOptions;
  readonly #log: Logger;
  readonly #propagationMs: number;
  #signer: CertificateAuthority | undefined;
  #material: SecretMaterial | undefined;
  #status: MeshCaStatus = { valid: false, message: 'the CA Secret has not been read yet', signer: undefined, roots: [] };
  /** The roots published now (PEM, and their fingerprints). */
  #publishedPem = '';
  #publishedRoots: readonly string[] = [];
  #timer: NodeJS.Timeout | undefined;
  #deadline: NodeJS.Timeout | undefined;
  readonly #reads = new SerialRuns(
    () => this.#refreshOnce(),
    (err) => this.#log.error({ err }, 'reading the CA Secret failed; keeping the signer in use'),
  );
  #closed = false;

  constructor(options: MeshCaOptions) {
    super();
    this.#options = options;
    this.#log = options.log.child({ component: 'mesh-ca' });
    this.#propagationMs = options.propagationMs ?? DEFAULT_CA_PROPAGATION_MS;
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

  /**
   * Reads (or creates) the signer; resolves once there is one, retrying every second and saying why (log, status)
   * until then; rejects with CONTROLLER_STOPPED when `signal` aborts first. Then reads again periodically.
   */
  async start(signal?: AbortSignal): Promise<void> {
    while (this.#signer === undefined) {
      if (signal?.aborted === true || this.#closed) throw new AmbitError('CONTROLLER_STOPPED', 'stopped before the CA Secret could be loaded');
      await this.refresh();
      // an abort ends the wait (and the loop, above); the timer never keeps the process alive
      if (this.#signer === undefined) await sleep(NO_SIGNER_RETRY_MS, undefined, { signal, ref: false }).catch(() => undefined);
    }
    this.#schedule();
  }

  /** The signer in use; none once it has expired (a Secret left unrenewed): a 503, never a leaf that cannot be valid. */
  get signer(): CertificateAuthority | undefined {
    const signer = this.#signer;
    return signer !== undefined && signer.notAfter.getTime() > Date.now() ? signer : undefined;
  }

  get status(): MeshCaStatus {
    return this.#status;
  }

  /** The roots published now (what agents trust). */
  get rootsPem(): string {
    return this.#publishedPem;
  }

  /** Reads the Secret now (the watch saw a change); one read at a time, and a change seen during one earns one more. */
  refresh(): Promise<void> {
    return this.#reads.trigger();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#deadline);
    await this.#reads.stop();
  }

  #schedule(): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      void this.refresh().finally(() => this.#schedule());
    }, this.#options.rereadIntervalMs ?? DEFAULT_CA_REREAD_INTERVAL_MS);
    this.#timer.unref();
  }

  /** A read at `at`, when a pending signer or a retiring root is due; the earliest one wins. */
  #readAt(at: number): void {
    if (this.#closed) return;
    clearTimeout(this.#deadline);
    // never further than the next periodic read: setTimeout fires at once past 2^31-1 ms (a TTL over 24.8 days)
    this.#deadline = setTimeout(() => void this.refresh(), Math.min(Math.max(0, at - Date.now()), this.#options.rereadIntervalMs ?? DEFAULT_CA_REREAD_INTERVAL_MS));
    this.#deadline.unref();
  }

  get #secretPath(): string {
    return `/api/v1/namespaces/${this.#options.namespace}/secrets`;
  }

  async #refreshOnce(): Promise<void> {
    const [secret, bundle] = await Promise.all([this.#readSecret(), this.#readBundle()]);
    if (secret === undefined) {
      await this.#noSecret(bundle);
      return;
    }
    const source = `Secret ${this.#options.namespace}/${CA_SECRET_NAME}`;
    let material: SecretMaterial;
    let ca: CertificateAuthority;
    try {
      material = secretMaterial(secret, source);
      ca = CertificateAuthority.fromPem({ ...material, trustDomain: this.#options.trustDomain, source });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      const last = this.#signer;
      const keeping =
        last === undefined
          ? 'there is no signer, so no certificate is signed until it is fixed'
          : this.signer === undefined
            ? `the last good signer ${fingerprint(last.rootPem)} expired at ${last.notAfter.toISOString()}, so no certificate is signed until it is fixed`
            : `the last good signer ${fingerprint(last.rootPem)} stays in use`;
      this.#setStatus(false, `${message}; ${keeping}`);
      this.#log.error({ reason: message, signer: this.#status.signer }, `the CA Secret is refused: ${message}; ${keeping}`);
      return;
    }
    const now = Date.now();
    const plan = planBundle({ ca, secretRoots: parseTrustBundle(material.rootsPem, source), bundle, inUse: this.#signer, now, propagationMs: this.#propagationMs, ttlMs: this.#options.ttlMs });
    // the bundle first: peers must trust a root before they see leaves it signed; nothing is taken in here until the
    // bundle is out (a publish that fails, or loses to the other replica's, is tried again, nothing half-applied)
    if (!(await this.#publish(bundle, plan))) return;
    const previous = this.#signer;
    const changed = this.#material?.rootsPem !== material.rootsPem || plan.signer !== previous;
    this.#material = material;
    this.#signer = plan.signer;
    if (plan.pendingAt === undefined) {
      this.#setStatus(true, 'the CA Secret is valid and in use');
    } else {
      const keeping = plan.signer === undefined ? 'until then nothing is signed (agents keep their certificates)' : 'the signer in use stays until then';
      this.#setStatus(
        true,
        `the CA Secret is valid; its new signer waits until its root has been in the trust bundle for ${this.#propagationMs / 1000} s, so that every node trusts it first; ${keeping}`,
        { signer: fingerprint(ca.rootPem), at: new Date(plan.pendingAt).toISOString() },
      );
    }
    const next = Math.min(plan.pendingAt ?? Infinity, ...plan.roots.map((root) => root.until ?? Infinity));
    if (Number.isFinite(next)) this.#readAt(next);
    if (changed) this.#log.info({ signer: this.#status.signer, roots: this.#status.roots, pending: this.#status.pending }, 'CA Secret loaded');
    if (plan.signer !== undefined && plan.signer !== previous && (previous === undefined || previous.rootPem !== plan.signer.rootPem || previous.keyPem !== plan.signer.keyPem)) {
      this.emit('signer', plan.signer);
    }
  }

  /** The published ConfigMap as this replica (or the other) left it: its roots, since when, until when, and its issuer. */
  async #readBundle(): Promise<PublishedBundle | undefined> {
    let object: ConfigMapObject;
    try {
      object = (await this.#options.api.read(`${this.#configMapPath}/${TRUST_BUNDLE_CONFIGMAP_NAME}`)) as ConfigMapObject;
    } catch (err) {
      if (err instanceof ApiStatusError && err.status === 404) return undefined;
      throw err;
    }
    return parseBundle(object, Date.now(), this.#options.ttlMs, (message) => this.#log.warn(message));
  }

  async #readSecret(): Promise<Record<string, unknown> | undefined> {
    try {
      return (await this.#options.api.read(`${this.#secretPath}/${CA_SECRET_NAME}`)) as Record<string, unknown>;
    } catch (err) {
      if (err instanceof ApiStatusError && err.status === 404) return undefined;
      throw err;
    }
  }

  /**
   * No Secret: the Lease holder creates one (a new root, or the last good material written back); the other waits. A
   * replica that has no material of its own and finds roots published does not replace the mesh's root: every agent
   * would refuse every peer until re-issued. It says so, and waits for the Secret to be restored.
   */
  async #noSecret(bundle: PublishedBundle | undefined): Promise<void> {
    const { namespace, holder } = this.#options;
    if (this.#material === undefined && bundle !== undefined && (bundle.roots.length > 0 || bundle.unreadable)) {
      const message = `the Secret ${namespace}/${CA_SECRET_NAME} is gone, but the trust bundle ${namespace}/${TRUST_BUNDLE_CONFIGMAP_NAME} holds the mesh's roots: restore the Secret (the controller does not replace the mesh's root on its own); to start a new mesh root, delete the ConfigMap too`;
      this.#setStatus(false, message);
      this.#log.error({ roots: bundle.roots.map((root) => root.cert.fingerprint256) }, message);
      return;
    }
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
    // read what was just written (or what the other replica wrote first)
    void this.refresh();
  }

  get #configMapPath(): string {
    return `/api/v1/namespaces/${this.#options.namespace}/configmaps`;
  }

  /**
   * Writes the plan's bundle when it differs from what is published, at the resourceVersion read (the other replica
   * writing at the same moment makes this one 409: false, and a read again). True when the plan is what is published.
   */
  async #publish(bundle: PublishedBundle | undefined, plan: BundlePlan): Promise<boolean> {
    const { namespace } = this.#options;
    const data = { [TRUST_BUNDLE_KEYS.roots]: plan.roots.map((root) => root.cert.toString()).join(''), [TRUST_BUNDLE_KEYS.issuerChain]: plan.issuerChainPem };
    const annotation = JSON.stringify(Object.fromEntries(plan.roots.map((root) => [root.cert.fingerprint256, { since: root.since, ...(root.until === undefined ? {} : { until: root.until }) }])));
    const object = bundle?.object;
    const same =
      object !== undefined &&
      object.metadata?.annotations?.[ROOTS_ANNOTATION] === annotation &&
      Object.keys(object.data ?? {}).length === Object.keys(data).length &&
      Object.entries(data).every(([key, value]) => object.data?.[key] === value);
    try {
      if (object === undefined) {
        await this.#options.api.post(this.#configMapPath, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: TRUST_BUNDLE_CONFIGMAP_NAME, namespace, annotations: { [ROOTS_ANNOTATION]: annotation } }, data });
      } else if (!same) {
        const metadata = { ...object.metadata, annotations: { ...object.metadata?.annotations, [ROOTS_ANNOTATION]: annotation } };
        await this.#options.api.put(`${this.#configMapPath}/${TRUST_BUNDLE_CONFIGMAP_NAME}`, { ...object, metadata, data });
      }
    } catch (err) {
      if (!(err instanceof ApiStatusError && err.status === 409)) throw err;
      this.#log.info('the trust bundle changed meanwhile (the other replica); reading again');
      void this.refresh();
      return false;
    }
    this.#publishedPem = data[TRUST_BUNDLE_KEYS.roots] ?? '';
    this.#publishedRoots = plan.roots.map((root) => root.cert.fingerprint256);
    if (!same) {
      this.#log.info({ roots: this.#publishedRoots, retiring: plan.roots.filter((root) => root.until !== undefined).map((root) => root.cert.fingerprint256) }, 'trust bundle published');
    }
    return true;
  }

  #setStatus(valid: boolean, message: string, pending?: MeshCaStatus['pending']): void {
    this.#status = {
      valid,
      message,
      signer: this.#signer === undefined ? undefined : fingerprint(this.#signer.rootPem),
      roots: this.#publishedRoots,
      ...(pending === undefined ? {} : { pending }),
    };
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
