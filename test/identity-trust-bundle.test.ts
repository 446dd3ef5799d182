/** The trust bundle as a provider, and local mode's CA folder that feeds it from disk. */
import { once } from 'node:events';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { CertificateAuthority, CertStore, generateKeyAndCsr, LocalCaFolder, TrustBundle } from '../core/identity/index.js';
import { silentLogger } from '../core/log/log.js';

const ID = 'spiffe://cluster.local/ns/a/sa/b';
const oldCa = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
const newCa = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256;

async function caDir(t: Test, ca = oldCa): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-ca-folder-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await ca.save(dir);
  return dir;
}

async function writeBundle(dir: string, text: string): Promise<void> {
  await writeFile(path.join(dir, 'bundle.tmp'), text);
  await rename(path.join(dir, 'bundle.tmp'), path.join(dir, 'trust-bundle.pem'));
}

t.test('TrustBundle: roots in order, change only when they change, bad input refused with the source named', async (t) => {
  const bundle = new TrustBundle(`# comment\n${oldCa.rootPem}`, 'test bundle');
  t.same(bundle.fingerprints(), [fingerprint(oldCa.rootPem)]);
  t.ok(bundle.includes(oldCa.rootPem));
  t.notOk(bundle.includes(newCa.rootPem));
  const changes: string[] = [];
  bundle.on('change', (pem) => changes.push(pem));
  t.equal(bundle.replace(oldCa.rootPem, 'same'), false, 'the same roots are no change');
  t.equal(bundle.replace(oldCa.rootPem + newCa.rootPem, 'two'), true);
  t.same(bundle.fingerprints(), [fingerprint(oldCa.rootPem), fingerprint(newCa.rootPem)]);
  t.same(changes, [bundle.pem()], 'one change event, with the new PEM');

  t.throws(() => bundle.replace('garbage', '/x/trust-bundle.pem'), { code: 'TRUST_BUNDLE_INVALID', message: /\/x\/trust-bundle\.pem holds no PEM certificate/ });
  const leaf = (await oldCa.issueKeyAndCert(ID)).certPem;
  t.throws(() => bundle.replace(oldCa.rootPem + leaf, '/x/b.pem'), { code: 'TRUST_BUNDLE_INVALID', message: /\/x\/b\.pem: certificate 2 .* is not a CA certificate/ });
  t.equal(changes.length, 1, 'a refused bundle changes nothing');
  t.equal(bundle.roots().length, 2);
});

t.test('LocalCaFolder: without trust-bundle.pem the bundle is ca.crt', async (t) => {
  const dir = await caDir(t);
  const folder = await LocalCaFolder.open({ dir, log: silentLogger() });
  t.teardown(() => folder.close());
  t.same(folder.trustBundle.fingerprints(), [fingerprint(oldCa.rootPem)]);
  t.equal(folder.ca.rootPem, oldCa.rootPem);
  const { certChainPem } = await folder.sign((await generateKeyAndCsr(ID)).csrPem, ID);
  t.ok(new X509Certificate(certChainPem).checkIssued(new X509Certificate(oldCa.rootPem)), 'it signs with ca.key');
});

t.test('LocalCaFolder refuses to start on a bad bundle or one without its signer', async (t) => {
  const dir = await caDir(t);
  await writeBundle(dir, 'not pem');
  await t.rejects(LocalCaFolder.open({ dir, log: silentLogger() }), { code: 'TRUST_BUNDLE_INVALID', message: new RegExp(`${dir}/trust-bundle\\.pem`) });
  await writeBundle(dir, newCa.rootPem);
  await t.rejects(LocalCaFolder.open({ dir, log: silentLogger() }), { code: 'CA_NOT_TRUSTED', message: new RegExp(`${dir}/ca\\.crt is not in ${dir}/trust-bundle\\.pem`) });
});

t.test('LocalCaFolder follows the folder: bundle changes, then a new signer, whose leaves CertStore.renewAll() issues', async (t) => {
  const dir = await caDir(t);
  const folder = await LocalCaFolder.open({ dir, log: silentLogger() });
  t.teardown(() => folder.close());
  const store = new CertStore({ issuer: folder });
  t.teardown(() => store.close());
  const before = await store.get(ID);

  let changed = once(folder.trustBundle, 'change');
  await writeBundle(dir, oldCa.rootPem + newCa.rootPem);
  await changed;
  t.same(folder.trustBundle.fingerprints(), [fingerprint(oldCa.rootPem), fingerprint(newCa.rootPem)]);

  const signer = once(folder, 'signer');
  await newCa.save(dir);
  const [ca] = (await signer) as [CertificateAuthority];
  t.equal(ca.rootPem, newCa.rootPem);
  t.equal(folder.ca.rootPem, newCa.rootPem);
  await store.renewAll();
  const after = await store.get(ID);
  t.not(after.serial, before.serial, 'a new leaf');
  t.ok(new X509Certificate(after.certChainPem).checkIssued(new X509Certificate(newCa.rootPem)), 'issued by the new root');

  changed = once(folder.trustBundle, 'change');
  await writeBundle(dir, newCa.rootPem);
  await changed;
  t.same(folder.trustBundle.fingerprints(), [fingerprint(newCa.rootPem)]);
});
