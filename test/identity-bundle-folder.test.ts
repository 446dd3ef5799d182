/** Kubernetes mode's trust: the trust bundle ConfigMap as kubelet mounts it, read and followed on disk. */
import { once } from 'node:events';
import { X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, readlink, rename, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { CertificateAuthority, TRUST_BUNDLE_KEYS, TrustBundleFolder } from '../core/identity/index.js';
import { createLogger, silentLogger } from '../core/log/index.js';
import { LogCapture } from './mesh/loopback.js';

const { roots: ROOTS, issuerChain: ISSUER } = TRUST_BUNDLE_KEYS;
const oldCa = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
const newCa = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256;

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-trust-bundle-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

let versions = 0;

/**
 * Writes `files` into `dir` as kubelet updates a mounted ConfigMap: the keys in a new timestamped folder, a
 * `..data_tmp` link to it renamed over `..data`, each key a link to `..data/<key>`, then the old version removed
 * (and the links of keys that are gone).
 */
async function kubeletWrite(dir: string, files: Record<string, string>): Promise<void> {
  versions += 1;
  const version = `..2025_01_01_00_00_00.${process.pid}_${versions}`;
  await mkdir(path.join(dir, version));
  for (const [key, text] of Object.entries(files)) await writeFile(path.join(dir, version, key), text);
  const previous = await readlink(path.join(dir, '..data')).catch(() => undefined);
  await symlink(version, path.join(dir, '..data_tmp'));
  await rename(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
  for (const key of [ROOTS, ISSUER]) {
    const link = path.join(dir, key);
    const linked = await readlink(link).catch(() => undefined);
    if (key in files && linked === undefined) await symlink(path.join('..data', key), link);
    if (!(key in files) && linked !== undefined) await unlink(link);
  }
  if (previous !== undefined) await rm(path.join(dir, previous), { recursive: true });
}

function capture(): { log: ReturnType<typeof createLogger>; logs: LogCapture } {
  const logs = new LogCapture();
  return { log: createLogger({ level: 'debug', destination: logs }), logs };
}

t.test('opens a kubelet-mounted folder: the roots and the issuer', async (t) => {
  const dir = await tempDir(t);
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem + newCa.rootPem, [ISSUER]: `# the signer\n${newCa.rootPem}` });
  const folder = await TrustBundleFolder.open({ dir, log: silentLogger() });
  t.teardown(() => folder.close());
  t.same(folder.trustBundle.fingerprints(), [fingerprint(oldCa.rootPem), fingerprint(newCa.rootPem)], 'both roots, in order');
  t.equal(folder.issuer()?.fingerprint256, fingerprint(newCa.rootPem), 'the issuer is the first certificate of issuer-chain.pem');

  const plain = await tempDir(t);
  await writeFile(path.join(plain, ROOTS), oldCa.rootPem);
  const withoutIssuer = await TrustBundleFolder.open({ dir: plain, log: silentLogger() });
  t.teardown(() => withoutIssuer.close());
  t.same(withoutIssuer.trustBundle.fingerprints(), [fingerprint(oldCa.rootPem)], 'a plain folder (no ..data) is read as it is');
  t.equal(withoutIssuer.issuer(), undefined, 'issuer-chain.pem is optional');
});

t.test('a folder that does not load is refused, the file at fault named', async (t) => {
  const dir = await tempDir(t);
  const missing = path.join(dir, 'absent');
  await t.rejects(TrustBundleFolder.open({ dir: missing, log: silentLogger() }), {
    code: 'TRUST_BUNDLE_INVALID',
    message: `${missing}/${ROOTS} does not exist: mount the ConfigMap ambit-trust-bundle, which the controller publishes in its namespace, at ${missing}`,
  });
  await kubeletWrite(dir, { [ROOTS]: 'not a certificate' });
  await t.rejects(TrustBundleFolder.open({ dir, log: silentLogger() }), { code: 'TRUST_BUNDLE_INVALID', message: new RegExp(`^${dir}/${ROOTS} holds no PEM certificate`) });
  const leaf = (await oldCa.issueKeyAndCert('spiffe://cluster.local/ns/a/sa/b')).certPem;
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem, [ISSUER]: leaf });
  await t.rejects(TrustBundleFolder.open({ dir, log: silentLogger() }), { code: 'TRUST_BUNDLE_INVALID', message: new RegExp(`^${dir}/${ISSUER}: the first certificate .* is not a CA certificate`) });
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem, [ISSUER]: 'garbage' });
  await t.rejects(TrustBundleFolder.open({ dir, log: silentLogger() }), { code: 'TRUST_BUNDLE_INVALID', message: new RegExp(`^${dir}/${ISSUER} holds no PEM certificate`) });
});

t.test('follows kubelet swaps of ..data: new roots, then a new issuer', async (t) => {
  const dir = await tempDir(t);
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem, [ISSUER]: oldCa.rootPem });
  const { log, logs } = capture();
  const folder = await TrustBundleFolder.open({ dir, log });
  t.teardown(() => folder.close());
  const issuers: string[] = [];
  folder.on('issuer', (cert) => issuers.push(cert.fingerprint256));

  const changed = once(folder.trustBundle, 'change');
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem + newCa.rootPem, [ISSUER]: oldCa.rootPem });
  await changed;
  t.same(folder.trustBundle.fingerprints(), [fingerprint(oldCa.rootPem), fingerprint(newCa.rootPem)], 'the new version is read through the swapped link');
  t.equal(folder.issuer()?.fingerprint256, fingerprint(oldCa.rootPem));

  const issuer = once(folder, 'issuer');
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem + newCa.rootPem, [ISSUER]: newCa.rootPem });
  const [cert] = (await issuer) as [X509Certificate];
  t.equal(cert.fingerprint256, fingerprint(newCa.rootPem), 'the event carries the new issuer');
  t.equal(folder.issuer()?.fingerprint256, fingerprint(newCa.rootPem));
  t.same(issuers, [fingerprint(newCa.rootPem)], 'issuer fired once, for the issuer change only: not for the roots');
  t.equal(logs.find((r) => (r.level as number) >= 50), undefined, 'an update of every key through ..data logs no error');

  const rootsOnly = once(folder.trustBundle, 'change');
  await kubeletWrite(dir, { [ROOTS]: newCa.rootPem, [ISSUER]: `# same signer, other text\n${newCa.rootPem}` });
  await rootsOnly;
  // the roots-only update has been applied whole (issuer included) when its change is heard: the next issuer is this one
  const next = once(folder, 'issuer');
  await kubeletWrite(dir, { [ROOTS]: newCa.rootPem + oldCa.rootPem, [ISSUER]: oldCa.rootPem });
  await next;
  t.same(issuers, [fingerprint(newCa.rootPem), fingerprint(oldCa.rootPem)], 'the same issuer in other text was no change');
});

t.test('a bad update keeps the roots and issuer in use, logs, and the next good one applies', async (t) => {
  const dir = await tempDir(t);
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem, [ISSUER]: oldCa.rootPem });
  const { log, logs } = capture();
  const folder = await TrustBundleFolder.open({ dir, log });
  t.teardown(() => folder.close());
  folder.on('issuer', () => t.fail('a bad update emits no issuer'));
  folder.trustBundle.on('change', () => t.fail('nor a change of roots'));

  const window = logs.window();
  await kubeletWrite(dir, { [ROOTS]: newCa.rootPem, [ISSUER]: 'half written' });
  const record = await window.waitFor((r) => r.msg === 'cannot reload the trust bundle folder; keeping the roots and issuer in use');
  t.equal(record.level, 50, 'logged as an error');
  t.match(record.err, { code: 'TRUST_BUNDLE_INVALID', message: new RegExp(`${dir}/${ISSUER} holds no PEM certificate`) });
  t.same(folder.trustBundle.fingerprints(), [fingerprint(oldCa.rootPem)], 'good roots beside a bad issuer chain are not taken either');
  t.equal(folder.issuer()?.fingerprint256, fingerprint(oldCa.rootPem));

  folder.removeAllListeners();
  folder.trustBundle.removeAllListeners();
  const issuer = once(folder, 'issuer');
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem + newCa.rootPem, [ISSUER]: newCa.rootPem });
  await issuer;
  t.same(folder.trustBundle.fingerprints(), [fingerprint(oldCa.rootPem), fingerprint(newCa.rootPem)]);
});

t.test('an issuer outside the roots is taken, and said to break every leaf it signs', async (t) => {
  const dir = await tempDir(t);
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem });
  const { log, logs } = capture();
  const folder = await TrustBundleFolder.open({ dir, log });
  t.teardown(() => folder.close());
  t.equal(folder.issuer(), undefined);

  const window = logs.window();
  const issuer = once(folder, 'issuer');
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem, [ISSUER]: newCa.rootPem });
  await issuer;
  t.equal(folder.issuer()?.fingerprint256, fingerprint(newCa.rootPem), 'narrower trust never widens access: it is what the controller published');
  const record = window.find((r) => r.level === 50);
  t.match(record, { issuer: fingerprint(newCa.rootPem), msg: new RegExp(`${dir}/${ISSUER} leads to none of the roots in ${dir}/${ROOTS}`) });
});

t.test('close() stops following the folder', async (t) => {
  const dir = await tempDir(t);
  await kubeletWrite(dir, { [ROOTS]: oldCa.rootPem });
  const { log, logs } = capture();
  const folder = await TrustBundleFolder.open({ dir, log });
  await folder.close();
  folder.trustBundle.on('change', () => t.fail('no change after close()'));
  // A second folder on the same path sees the write: once it has, the closed one would have too.
  const witness = await TrustBundleFolder.open({ dir, log: silentLogger() });
  t.teardown(() => witness.close());
  const seen = once(witness.trustBundle, 'change');
  await kubeletWrite(dir, { [ROOTS]: newCa.rootPem });
  await seen;
  t.same(folder.trustBundle.fingerprints(), [fingerprint(oldCa.rootPem)]);
  t.equal(logs.find((r) => r.msg === 'trust bundle changed'), undefined);
});
