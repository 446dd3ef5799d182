/**
 * The controller's rotation rule (controller/bundle-plan.ts), case by case with real CAs: which key signs, which
 * roots are published and until when, from the bundle as published (the state a restart or the other replica reads).
 */
import { X509Certificate } from 'node:crypto';
import { intermediateCa } from '../testbed/index.js';
import t from 'tap';
import { planBundle, ROOTS_ANNOTATION, type BundlePlan, type PublishedBundle } from '../controller/bundle-plan.js';
import { CertificateAuthority, TRUST_BUNDLE_KEYS } from '../core/identity/index.js';
import { parseBundle } from '../controller/bundle-plan.js';

const TD = 'cluster.local';
const P = 120_000;
const TTL = 86_400_000;
const T0 = Date.UTC(2026, 11, 4);
/** How long a former issuer's root stays after the change: its leaves' lifetime, and the other replica's delay. */
const RETIRE = TTL + P;

const cert = (ca: CertificateAuthority) => new X509Certificate(ca.rootPem);
const fp = (ca: CertificateAuthority) => cert(ca).fingerprint256;

/** The bundle as the controller would have written `plan` (what the next read sees). */
function asPublished(plan: BundlePlan): PublishedBundle {
  return {
    object: {
      metadata: { annotations: { [ROOTS_ANNOTATION]: JSON.stringify(Object.fromEntries(plan.roots.map((r) => [r.cert.fingerprint256, { since: r.since, until: r.until }]))) } },
      data: { [TRUST_BUNDLE_KEYS.roots]: plan.roots.map((r) => r.cert.toString()).join(''), [TRUST_BUNDLE_KEYS.issuerChain]: plan.issuerChainPem },
    },
    roots: plan.roots,
    issuerChainPem: plan.issuerChainPem,
    unreadable: false,
  };
}

const summary = (plan: BundlePlan) => ({
  signer: plan.signer === undefined ? undefined : new X509Certificate(plan.signer.rootPem).fingerprint256,
  roots: plan.roots.map((r) => ({ root: r.cert.fingerprint256, since: r.since, until: r.until })),
  issuer: new X509Certificate(plan.issuerChainPem).fingerprint256,
  pendingAt: plan.pendingAt,
});

t.test('the rotation rule, step by step', async (t) => {
  const [old, next] = await Promise.all([CertificateAuthority.create({ trustDomain: TD }), CertificateAuthority.create({ trustDomain: TD })]);
  const plan = (ca: CertificateAuthority, secretRoots: CertificateAuthority[], bundle: PublishedBundle | undefined, inUse: CertificateAuthority | undefined, now: number, propagationMs = P) =>
    planBundle({ ca, secretRoots: secretRoots.map(cert), bundle, inUse, now, propagationMs, ttlMs: TTL });

  const fresh = plan(old, [old], undefined, undefined, T0);
  t.same(summary(fresh), { signer: fp(old), roots: [{ root: fp(old), since: T0, until: undefined }], issuer: fp(old), pendingAt: undefined }, 'a new mesh: its key signs at once');

  const restarted = plan(old, [old], asPublished(fresh), undefined, T0 + 5_000);
  t.same(summary(restarted), summary(fresh), 'a restart with the published key: signs at once, nothing changes (since is kept)');

  // one write: root and key both replaced
  const held = plan(next, [next], asPublished(fresh), old, T0 + 10_000);
  t.same(
    summary(held),
    { signer: fp(old), roots: [{ root: fp(next), since: T0 + 10_000, until: undefined }, { root: fp(old), since: T0, until: undefined }], issuer: fp(old), pendingAt: T0 + 10_000 + P },
    'the new root is published; the old key keeps signing, and its root stays, until the new root has been out P',
  );
  const early = plan(next, [next], asPublished(held), old, T0 + 10_000 + P - 1);
  t.equal(summary(early).signer, fp(old), 'not a millisecond early');

  const restartedWhileHeld = plan(next, [next], asPublished(held), undefined, T0 + 20_000);
  t.same(
    summary(restartedWhileHeld),
    { ...summary(held), signer: undefined },
    'a restart (or the other replica) while it waits: it does not sign with the new key early, and the old issuer and root stay published',
  );

  const taken = plan(next, [next], asPublished(held), old, T0 + 10_000 + P);
  const swap = T0 + 10_000 + P;
  t.same(
    summary(taken),
    { signer: fp(next), roots: [{ root: fp(next), since: T0 + 10_000, until: undefined }, { root: fp(old), since: T0, until: swap + RETIRE }], issuer: fp(next), pendingAt: undefined },
    'then the new key signs, and the old root stays until the leaves the old key signed have expired',
  );
  const retiring = plan(next, [next], asPublished(taken), undefined, swap + RETIRE - 1);
  t.same(summary(retiring).roots, summary(taken).roots, 'a restart meanwhile keeps the retiring root (its until is published)');
  const retired = plan(next, [next], asPublished(taken), next, swap + RETIRE);
  t.same(summary(retired).roots, [{ root: fp(next), since: T0 + 10_000, until: undefined }], 'and at its until it leaves');

  const immediate = plan(next, [next], asPublished(fresh), old, T0 + 10_000, 0);
  t.same(
    summary(immediate).roots,
    [{ root: fp(next), since: T0 + 10_000, until: undefined }, { root: fp(old), since: T0, until: T0 + 10_000 + TTL }],
    'with no propagation wait the new key signs at once, and still the old root is not dropped under its leaves',
  );

  // three writes: ca.crt [old, new] first, then the key, then ca.crt [new]
  const bothRoots = plan(old, [old, next], asPublished(fresh), old, T0 + 10_000);
  t.equal(summary(bothRoots).signer, fp(old));
  const keyEarly = plan(next, [old, next], asPublished(bothRoots), old, T0 + 11_000);
  t.equal(summary(keyEarly).signer, fp(old), 'the key written 1 s after its root: waits for the rest of P');
  const keyTaken = plan(next, [old, next], asPublished(keyEarly), old, T0 + 10_000 + P);
  t.equal(summary(keyTaken).signer, fp(next), 'and signs once the root has been out P');
  const dropped = plan(next, [next], asPublished(keyTaken), next, T0 + 10_000 + P + 1_000);
  t.same(summary(dropped).roots.map((r) => [r.root, r.until]), [[fp(next), undefined], [fp(old), T0 + 10_000 + P + RETIRE]], 'ca.crt [new]: the old root still stays for the leaves it signed');
});

t.test('the edges: a deleted ConfigMap, a replica that fell behind, an intermediate, an annotation lost', async (t) => {
  const old = await CertificateAuthority.create({ trustDomain: TD });
  const next = await CertificateAuthority.create({ trustDomain: TD });
  const third = await CertificateAuthority.create({ trustDomain: TD });
  const plan = (ca: CertificateAuthority, secretRoots: CertificateAuthority[], bundle: PublishedBundle | undefined, inUse: CertificateAuthority | undefined, now: number) =>
    planBundle({ ca, secretRoots: secretRoots.map(cert), bundle, inUse, now, propagationMs: P, ttlMs: TTL });
  const fresh = plan(old, [old], undefined, undefined, T0);

  const noConfigMap = plan(next, [next], undefined, old, T0 + 10_000);
  t.same(
    summary(noConfigMap),
    { signer: fp(old), roots: [{ root: fp(next), since: T0 + 10_000, until: undefined }, { root: fp(old), since: T0 + 10_000, until: undefined }], issuer: fp(old), pendingAt: T0 + 10_000 + P },
    'the ConfigMap deleted mid-change: the key in use keeps signing and its root is published again; the new one waits',
  );

  const aTook = plan(next, [next], asPublished(plan(next, [next], asPublished(fresh), old, T0 + 1)), old, T0 + 1 + P);
  t.equal(summary(aTook).issuer, fp(next), 'replica a took the new key');
  const bBehind = plan(third, [third], asPublished(aTook), old, T0 + 2 + P);
  t.same(
    { signer: summary(bBehind).signer, issuer: summary(bBehind).issuer },
    { signer: undefined, issuer: fp(next) },
    'replica b, still on the old key, does not publish it back as the issuer: it signs nothing until the third key may',
  );
  t.ok(bBehind.roots.some((r) => r.cert.fingerprint256 === fp(next) && r.until === undefined), 'and the published issuer\'s root stays');

  // an intermediate under the published root, and renewed under it: the root is long out, so each signs at once
  const root = old;
  const secretFor = (intermediate: { certPem: string; keyPem: string }) =>
    CertificateAuthority.fromPem({ certPem: intermediate.certPem + root.rootPem, keyPem: intermediate.keyPem, rootsPem: root.rootPem, trustDomain: TD, source: 'test' });
  const first = secretFor(intermediateCa(root));
  const second = secretFor(intermediateCa(root));
  const withFirst = plan(first, [root], asPublished(fresh), old, T0 + P + 1_000);
  t.equal(summary(withFirst).signer, new X509Certificate(first.rootPem).fingerprint256, 'an intermediate under the published root signs at once');
  t.same(summary(withFirst).roots.map((r) => r.root), [fp(root)], 'its root is the only one published');
  const renewed = plan(second, [root], asPublished(withFirst), first, T0 + P + 2_000);
  t.equal(summary(renewed).signer, new X509Certificate(second.rootPem).fingerprint256, 'and so does its renewal under the same root');
  t.equal(new X509Certificate(renewed.issuerChainPem).fingerprint256, new X509Certificate(second.rootPem).fingerprint256, 'the published issuer is the intermediate');

  const lost = parseBundle({ ...asPublished(fresh).object, metadata: { annotations: { 'ambit.dev/roots': 'null' } } }, T0 + 5_000, TTL, () => undefined);
  t.same(lost.roots.map((r) => [r.cert.fingerprint256, r.since, r.until]), [[fp(old), T0 + 5_000, T0 + 5_000 + TTL]], 'an annotation lost: its roots count as published now, and stay a certificate lifetime');
  const garbage = parseBundle({ data: { ...asPublished(fresh).object.data, 'issuer-chain.pem': '-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n' } }, T0, TTL, () => undefined);
  t.equal(garbage.issuerChainPem, '', 'an issuer chain that does not parse counts as none');
});

