import { X509Certificate } from 'node:crypto';
import { chainLeadsTo, parseTrustBundle, pemCertificates, TRUST_BUNDLE_KEYS, type CertificateAuthority } from '../core/identity/index.js';

/**
 * On the trust-bundle ConfigMap, since when each published root has been there and until when a retiring one stays
 * (JSON: fingerprint → {since, until?}, milliseconds). The rotation's state lives here, not in a replica's memory, so
 * that a restart or the other replica continues it instead of starting over.
 */
export const ROOTS_ANNOTATION = 'ambit.dev/roots';

export interface ConfigMapObject {
  metadata?: { annotations?: Record<string, string>; [field: string]: unknown };
  data?: Record<string, string>;
  [field: string]: unknown;
}

export interface PublishedRoot {
  readonly cert: X509Certificate;
  /** When it was first published (milliseconds). */
  readonly since: number;
  /** Set on a root no key signs with any more: published until the leaves signed under it have expired. */
  readonly until?: number;
}

/** The trust bundle ConfigMap as read. */
export interface PublishedBundle {
  readonly object: ConfigMapObject;
  readonly roots: readonly PublishedRoot[];
  /** The published issuer chain (signing certificate first), '' when it names none. */
  readonly issuerChainPem: string;
  /** The ConfigMap holds roots that do not parse: something is published, even if not what it should be. */
  readonly unreadable: boolean;
}

export interface BundlePlan {
  /** The key that signs from now on: undefined while a new one waits and none was in use (after a restart). */
  readonly signer: CertificateAuthority | undefined;
  readonly roots: readonly PublishedRoot[];
  readonly issuerChainPem: string;
  /** When the Secret's key will sign, if it waits for its root to reach the nodes. */
  readonly pendingAt: number | undefined;
}

/** What the signer's leaves carry after the leaf, or the signer itself for a root: the published issuer chain. */
export function issuerChainOf(ca: CertificateAuthority): string {
  return ca.chainPem === '' ? ca.rootPem : ca.chainPem;
}

/**
 * Reads a ConfigMap the controller (this replica, another, an earlier version) wrote. What does not parse errs on the
 * side of trust: a root with no usable entry in the annotation counts as published now, and stays at least `ttlMs`
 * (it may be a retiring root whose entry was lost); an issuer chain that does not parse counts as none.
 */
export function parseBundle(object: ConfigMapObject, now: number, ttlMs: number, warn: (message: string) => void): PublishedBundle {
  const rootsText = object.data?.[TRUST_BUNDLE_KEYS.roots] ?? '';
  let certs: X509Certificate[] = [];
  try {
    certs = parseTrustBundle(rootsText, 'the published trust bundle');
  } catch (err) {
    warn(`the published trust bundle does not parse (${err instanceof Error ? err.message : String(err)}); it is written anew`);
  }
  let times: Record<string, { since?: unknown; until?: unknown } | undefined> = {};
  try {
    const parsed: unknown = JSON.parse(object.metadata?.annotations?.[ROOTS_ANNOTATION] ?? '{}');
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
    times = parsed as typeof times;
  } catch {
    warn(`the annotation ${ROOTS_ANNOTATION} of the trust bundle does not parse; its roots count as published now, and stay a certificate lifetime`);
  }
  const roots = certs.map((cert): PublishedRoot => {
    const entry = times[cert.fingerprint256];
    const since = typeof entry?.since === 'number' ? entry.since : now;
    if (typeof entry?.until === 'number') return { cert, since, until: entry.until };
    return typeof entry === 'object' && entry !== null && typeof entry.since === 'number' ? { cert, since } : { cert, since, until: now + ttlMs };
  });
  let issuerChainPem = object.data?.[TRUST_BUNDLE_KEYS.issuerChain] ?? '';
  try {
    for (const pem of pemCertificates(issuerChainPem)) new X509Certificate(pem);
  } catch {
    warn('the published issuer chain does not parse; it is written anew');
    issuerChainPem = '';
  }
  return { object, roots, issuerChainPem, unreadable: rootsText !== '' && certs.length === 0 };
}

/**
 * The bundle to publish and the key to sign with, so that no leaf is ever signed under a root some node may not
 * trust yet, nor a root dropped while leaves still chain to it, however the Secret changed (one write or three), and
 * across restarts and replicas (the state is the published bundle's; their clocks are taken to agree, as the
 * certificates' own validity does):
 * - the Secret's key signs at once when nothing was published and nothing signed yet (a new mesh), when it is the
 *   published issuer already (a restart), or once its root has been published `propagationMs`; until then the key in
 *   use keeps signing, if this process has one and it is the published issuer (a replica that fell behind does not
 *   publish an issuer back), and the published issuer chain stays;
 * - the published roots are the Secret's, the root of the key that signs (or of the published issuer), and every
 *   root within its `until`: when the issuer changes, the root of the one before it gets `until` = now + `ttlMs` +
 *   `propagationMs` (every leaf it signed has expired by then, the other replica's too, which switches within the delay), which
 *   holds even if that root is still in the Secret now and leaves it later.
 */
export function planBundle(input: {
  ca: CertificateAuthority;
  secretRoots: readonly X509Certificate[];
  bundle: PublishedBundle | undefined;
  inUse: CertificateAuthority | undefined;
  now: number;
  propagationMs: number;
  ttlMs: number;
}): BundlePlan {
  const { ca, bundle, now } = input;
  const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256;
  const published = new Map((bundle?.roots ?? []).map((root) => [root.cert.fingerprint256, root]));
  const publishedChain = pemCertificates(bundle?.issuerChainPem ?? '').map((pem) => new X509Certificate(pem));
  const publishedIssuer = publishedChain[0]?.fingerprint256;
  const inUse = input.inUse !== undefined && (bundle === undefined || publishedIssuer === fingerprint(input.inUse.rootPem)) ? input.inUse : undefined;
  const anchorSince = published.get(fingerprint(ca.anchorPem))?.since;
  const take =
    (bundle === undefined && inUse === undefined) ||
    input.propagationMs === 0 ||
    publishedIssuer === fingerprint(ca.rootPem) ||
    (anchorSince !== undefined && now - anchorSince >= input.propagationMs);
  const signer = take ? ca : inUse;
  const issuerChainPem = signer !== undefined ? issuerChainOf(signer) : bundle?.issuerChainPem || issuerChainOf(ca);

  // each root: needed now (the Secret's, the issuer's), and/or until when it must stay (the leaves of a former issuer)
  const marks = new Map<string, { cert: X509Certificate; needed: boolean; until: number }>();
  const mark = (cert: X509Certificate, how: { needed?: boolean; until?: number }) => {
    const held = marks.get(cert.fingerprint256) ?? { cert, needed: false, until: 0 };
    marks.set(cert.fingerprint256, { cert, needed: held.needed || how.needed === true, until: Math.max(held.until, how.until ?? 0) });
  };
  for (const root of input.secretRoots) mark(root, { needed: true });
  // the root a published chain leads to, among those the controller knows
  const known = [...input.secretRoots, ...[...published.values()].map((root) => root.cert)];
  const anchorOf = (chain: readonly X509Certificate[]) => known.find((root) => chainLeadsTo(chain, [root]));
  const issuerAnchor = signer !== undefined ? new X509Certificate(signer.anchorPem) : anchorOf(publishedChain);
  if (issuerAnchor !== undefined) mark(issuerAnchor, { needed: true });
  if (publishedIssuer !== undefined && signer !== undefined && publishedIssuer !== fingerprint(signer.rootPem)) {
    // the issuer changes now: the leaves the old one signed live up to ttlMs more, and its root with them
    const previous = anchorOf(publishedChain);
    if (previous !== undefined) mark(previous, { until: now + input.ttlMs + input.propagationMs });
  }
  for (const root of published.values()) if (root.until !== undefined && root.until > now) mark(root.cert, { until: root.until });
  const roots = [...marks.values()]
    .filter((m) => m.needed || m.until > now)
    .map((m): PublishedRoot => {
      const since = published.get(m.cert.fingerprint256)?.since ?? now;
      return m.until > now ? { cert: m.cert, since, until: m.until } : { cert: m.cert, since };
    });
  const pendingAt = take ? undefined : (anchorSince ?? now) + input.propagationMs;
  return { signer, roots, issuerChainPem, pendingAt };
}
