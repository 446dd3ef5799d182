import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { AmbitError, errnoCode } from '../errors/index.js';
import type { Logger } from '../log/index.js';
import { CA_CERT_FILE, CertificateAuthority } from './ca.js';
import type { CertIssuer } from './cert-store.js';
import { FolderReload } from './folder-reload.js';
import { parseTrustBundle, TrustBundle } from './trust-bundle.js';

/** In `--ca-dir`, beside the signer: every root peers may chain to. Optional; without it the bundle is `ca.crt`. */
export const TRUST_BUNDLE_FILE = 'trust-bundle.pem';

export interface LocalCaFolderOptions {
  dir: string;
  trustDomain?: string;
  /** Lifetime of the leaves it signs (default DEFAULT_CERT_TTL_MS). */
  ttlMs?: number;
  log: Logger;
}

export type LocalCaFolderEvents = {
  /** `ca.crt` and `ca.key` now hold another root: the leaves it signed before must be re-issued by it. */
  signer: [ca: CertificateAuthority];
};

interface FolderState {
  ca: CertificateAuthority;
  bundlePem: string;
  bundleSource: string;
}

/**
 * Local mode's CA folder, watched on disk: the signer (`ca.crt`, `ca.key`) that issues this node's leaves, and the
 * trust bundle (`trust-bundle.pem` when present, else `ca.crt`). A root rotation without refused connections is
 * three writes, each once every node took the one before: the bundle to [old, new], the signer to new, the bundle
 * to [new]. A folder that does not load (a pair half replaced, a bundle that does not parse) keeps what is in use.
 */
export class LocalCaFolder extends EventEmitter<LocalCaFolderEvents> implements CertIssuer {
  readonly trustBundle: TrustBundle;
  readonly #options: LocalCaFolderOptions;
  #ca: CertificateAuthority;
  #reload: FolderReload | undefined;

  private constructor(options: LocalCaFolderOptions, state: FolderState) {
    super();
    this.#options = options;
    this.#ca = state.ca;
    this.trustBundle = new TrustBundle(state.bundlePem, state.bundleSource);
  }

  /** Loads the folder (CA_NOT_FOUND, CA_INVALID, CA_KEY_EXPOSED, TRUST_BUNDLE_INVALID, CA_NOT_TRUSTED), then watches it. */
  static async open(options: LocalCaFolderOptions): Promise<LocalCaFolder> {
    const state = await readFolder(options);
    const folder = new LocalCaFolder(options, state);
    if (!folder.trustBundle.includes(state.ca.rootPem)) {
      throw new AmbitError('CA_NOT_TRUSTED', `${path.join(options.dir, CA_CERT_FILE)} is not in ${state.bundleSource}; add the signer's root to the bundle, or peers refuse this node's certificates`);
    }
    // A listener of 'change' or 'signer' that throws must not stop the watch, nor go unreported.
    folder.#reload = new FolderReload({ dir: options.dir, load: () => folder.#loadOnce(), log: options.log, failure: 'applying the CA folder failed' });
    // A write that landed between the first read and the watch would otherwise wait for the next one.
    await folder.#reload.reload();
    return folder;
  }

  /** The signer in use. */
  get ca(): CertificateAuthority {
    return this.#ca;
  }

  /** Signs with the signer in use at the time of the call. */
  async sign(csrPem: string, spiffeId: string): Promise<{ certChainPem: string }> {
    return { certChainPem: await this.#ca.sign(csrPem, { spiffeId, ttlMs: this.#options.ttlMs }) };
  }

  /** Stops watching; resolves once a reload in flight has finished. */
  async close(): Promise<void> {
    await this.#reload?.close();
  }

  async #loadOnce(): Promise<void> {
    const log = this.#options.log;
    let state: FolderState;
    try {
      state = await readFolder(this.#options);
      // Checked before anything is taken, so that a bad bundle beside a good signer changes neither.
      parseTrustBundle(state.bundlePem, state.bundleSource);
    } catch (err) {
      log.error({ err }, 'cannot reload the CA folder; keeping the signer and trust bundle in use');
      return;
    }
    // The bundle first: when both change, peers' new leaves must already be trusted here.
    if (this.trustBundle.replace(state.bundlePem, state.bundleSource)) {
      log.info({ roots: this.trustBundle.fingerprints(), source: state.bundleSource }, 'trust bundle changed');
    }
    if (!this.trustBundle.includes(state.ca.rootPem)) {
      // Narrower trust is what the operator wrote, and never widens access; it breaks this node's own leaves.
      log.error({ signer: fingerprint(state.ca) }, `the signer ${CA_CERT_FILE} is not in ${state.bundleSource}: peers that use this bundle refuse this node's certificates; add it`);
    }
    if (state.ca.rootPem !== this.#ca.rootPem) {
      this.#ca = state.ca;
      log.info({ root: fingerprint(state.ca) }, 'signer changed');
      this.emit('signer', state.ca);
    }
  }
}

function fingerprint(ca: CertificateAuthority): string {
  return new X509Certificate(ca.rootPem).fingerprint256;
}

async function readFolder(options: LocalCaFolderOptions): Promise<FolderState> {
  const ca = await CertificateAuthority.load(options.dir, { trustDomain: options.trustDomain });
  const bundleFile = path.join(options.dir, TRUST_BUNDLE_FILE);
  try {
    return { ca, bundlePem: await readFile(bundleFile, 'utf8'), bundleSource: bundleFile };
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') {
      throw new AmbitError('TRUST_BUNDLE_INVALID', `${bundleFile} cannot be read: ${(err as Error).message}`, { cause: err });
    }
  }
  return { ca, bundlePem: ca.rootPem, bundleSource: path.join(options.dir, CA_CERT_FILE) };
}
