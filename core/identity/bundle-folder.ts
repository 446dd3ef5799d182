import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFile, realpath } from 'node:fs/promises';
import path from 'node:path';
import { AmbitError, errnoCode } from '../errors/index.js';
import type { Logger } from '../log/index.js';
import { TRUST_BUNDLE_CONFIGMAP_NAME, TRUST_BUNDLE_KEYS } from './ca-protocol.js';
import { FolderReload } from './folder-reload.js';
import { chainLeadsTo } from './chain.js';
import { pemCertificates } from './pem.js';
import { parseTrustBundle, TrustBundle } from './trust-bundle.js';

/** Kubelet's link to the current version of a mounted ConfigMap; each key is a link through it (`<key> -> ..data/<key>`). */
const KUBELET_DATA_LINK = '..data';
/** Reads of the folder that a kubelet swap overtook are tried again this many times in all, then the last one stands. */
const SNAPSHOT_ATTEMPTS = 3;

export interface TrustBundleFolderOptions {
  /** Where the ConfigMap is mounted. */
  dir: string;
  log: Logger;
}

export type TrustBundleFolderEvents = {
  /** The controller signs with another certificate now: the leaves it signed before must be re-issued by it. */
  issuer: [issuer: X509Certificate];
};

interface FolderState {
  rootsPem: string;
  rootsSource: string;
  /** The signing certificate first, then its parents; empty when the folder has no issuer chain. */
  issuerChain: X509Certificate[];
}

/**
 * Kubernetes mode's trust, watched on disk: the ConfigMap the controller publishes (TRUST_BUNDLE_CONFIGMAP_NAME),
 * mounted as a folder. `trust-bundle.pem` holds the roots peers and the controller must chain to (two during a
 * rotation); the optional `issuer-chain.pem` the certificate the controller signs with, first, then its parents.
 * Nothing in it is secret: the agent holds no CA key. A folder that does not load (a bundle that does not parse)
 * keeps what is in use.
 */
export class TrustBundleFolder extends EventEmitter<TrustBundleFolderEvents> {
  readonly trustBundle: TrustBundle;
  readonly #options: TrustBundleFolderOptions;
  #issuerChain: readonly X509Certificate[];
  #reload: FolderReload | undefined;

  private constructor(options: TrustBundleFolderOptions, state: FolderState) {
    super();
    this.#options = options;
    this.trustBundle = new TrustBundle(state.rootsPem, state.rootsSource);
    this.#issuerChain = state.issuerChain;
  }

  /** Loads the folder (TRUST_BUNDLE_INVALID, naming the file at fault), then watches it. */
  static async open(options: TrustBundleFolderOptions): Promise<TrustBundleFolder> {
    const folder = new TrustBundleFolder(options, await readFolder(options.dir));
    folder.#checkIssuerTrusted();
    // A listener of 'change' or 'issuer' that throws must not stop the watch, nor go unreported.
    folder.#reload = new FolderReload({ dir: options.dir, load: () => folder.#loadOnce(), log: options.log, failure: 'applying the trust bundle folder failed' });
    // A swap that landed between the first read and the watch would otherwise wait for the next one.
    await folder.#reload.reload();
    return folder;
  }

  /** The certificate the controller signs with (the first of `issuer-chain.pem`), or undefined when it is not published. */
  issuer(): X509Certificate | undefined {
    return this.#issuerChain[0];
  }

  /** Stops watching; resolves once a reload in flight has finished. */
  async close(): Promise<void> {
    await this.#reload?.close();
  }

  async #loadOnce(): Promise<void> {
    const log = this.#options.log;
    let state: FolderState;
    try {
      // Everything is checked before anything is taken: a bad issuer chain beside good roots changes neither.
      state = await readFolder(this.#options.dir);
    } catch (err) {
      log.error({ err }, 'cannot reload the trust bundle folder; keeping the roots and issuer in use');
      return;
    }
    // The roots first: when both change, the new issuer's leaves must already be trusted here.
    const rootsChanged = this.trustBundle.replace(state.rootsPem, state.rootsSource);
    if (rootsChanged) log.info({ roots: this.trustBundle.fingerprints(), source: state.rootsSource }, 'trust bundle changed');
    const previous = this.issuer();
    this.#issuerChain = state.issuerChain;
    const next = this.issuer();
    const issuerChanged = next?.fingerprint256 !== previous?.fingerprint256;
    if (rootsChanged || issuerChanged) this.#checkIssuerTrusted();
    if (!issuerChanged) return;
    if (next === undefined) {
      log.warn({ previous: previous?.fingerprint256 }, `${this.#issuerFile()} is gone: the issuer's expiry is no longer known here (the controller publishes it; check its CA Secret)`);
      return;
    }
    log.info({ issuer: next.fingerprint256, subject: next.subject }, 'issuer changed');
    this.emit('issuer', next);
  }

  /** Narrower trust is what the controller published, and never widens access; it breaks every leaf it signs. */
  #checkIssuerTrusted(): void {
    if (this.#issuerChain.length === 0 || chainLeadsTo(this.#issuerChain, this.trustBundle.roots())) return;
    const issuer = this.#issuerChain[0]!;
    this.#options.log.error(
      { issuer: issuer.fingerprint256, subject: issuer.subject, roots: this.trustBundle.fingerprints() },
      `${this.#issuerFile()} leads to none of the roots in ${path.join(this.#options.dir, TRUST_BUNDLE_KEYS.roots)}: peers refuse the certificates the controller signs; check the roots (ca.crt) of the controller's CA Secret`,
    );
  }

  #issuerFile(): string {
    return path.join(this.#options.dir, TRUST_BUNDLE_KEYS.issuerChain);
  }
}

/**
 * Both keys from one version of the folder. Kubelet updates a mounted ConfigMap by pointing `..data` at a new folder;
 * the keys are read from the folder `..data` points at, and again if it moved meanwhile, so that roots and issuer
 * never come from two versions. A folder without `..data` (not a kubelet mount) is read as it is.
 */
async function readFolder(dir: string): Promise<FolderState> {
  for (let attempt = 1; ; attempt += 1) {
    const version = await dataVersion(dir);
    const read = await readKeys(dir, version ?? dir).then(
      (state) => ({ state }),
      (err: unknown) => ({ err }),
    );
    if (attempt === SNAPSHOT_ATTEMPTS || (await dataVersion(dir)) === version) {
      if ('err' in read) throw read.err;
      return read.state;
    }
  }
}

async function dataVersion(dir: string): Promise<string | undefined> {
  return realpath(path.join(dir, KUBELET_DATA_LINK)).catch(() => undefined);
}

/** Reads and checks the keys in `from`; errors name them as the operator knows them, in `dir`. */
async function readKeys(dir: string, from: string): Promise<FolderState> {
  const rootsSource = path.join(dir, TRUST_BUNDLE_KEYS.roots);
  const rootsPem = await readKey(path.join(from, TRUST_BUNDLE_KEYS.roots), rootsSource);
  if (rootsPem === undefined) {
    throw new AmbitError(
      'TRUST_BUNDLE_INVALID',
      `${rootsSource} does not exist: mount the ConfigMap ${TRUST_BUNDLE_CONFIGMAP_NAME}, which the controller publishes in its namespace, at ${dir}`,
    );
  }
  parseTrustBundle(rootsPem, rootsSource);
  const issuerSource = path.join(dir, TRUST_BUNDLE_KEYS.issuerChain);
  const issuerPem = await readKey(path.join(from, TRUST_BUNDLE_KEYS.issuerChain), issuerSource);
  return { rootsPem, rootsSource, issuerChain: issuerPem === undefined ? [] : parseIssuerChain(issuerPem, issuerSource) };
}

/** The file's text, or undefined when it does not exist. */
async function readKey(file: string, source: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw new AmbitError('TRUST_BUNDLE_INVALID', `${source} cannot be read: ${(err as Error).message}`, { cause: err });
  }
}

function parseIssuerChain(pem: string, source: string): X509Certificate[] {
  const blocks = pemCertificates(pem);
  if (blocks.length === 0) {
    throw new AmbitError('TRUST_BUNDLE_INVALID', `${source} holds no PEM certificate; it must hold the controller's signing certificate, then its parents`);
  }
  const chain = blocks.map((block, index) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new AmbitError('TRUST_BUNDLE_INVALID', `${source}: certificate ${index + 1} does not parse`, { cause: err });
    }
  });
  const issuer = chain[0]!;
  if (!issuer.ca) {
    throw new AmbitError('TRUST_BUNDLE_INVALID', `${source}: the first certificate (${issuer.subject || issuer.subjectAltName || 'no subject'}) is not a CA certificate; it must be the controller's signing certificate`);
  }
  return chain;
}
