import t, { type Test } from 'tap';
import { createHash, X509Certificate } from 'node:crypto';
import { chmod, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import forge from 'node-forge';
import { isAmbitError } from '../core/errors/errors.js';
import {
  CertificateAuthority,
  CLOCK_SKEW_ALLOWANCE_MS,
  DEFAULT_TRUST_DOMAIN,
  generateKeyAndCsr,
  parseSpiffeId,
  sniForIdentity,
  spiffeId,
  withoutSpiffeScheme,
} from '../core/identity/index.js';

const HOUR_MS = 60 * 60 * 1000;
const SERVER_ID = 'spiffe://cluster.local/ns/team-a/sa/server';
const CLIENT_ID = 'spiffe://cluster.local/ns/team-b/sa/client';

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-identity-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function ambitCode(err: unknown): string | undefined {
  return isAmbitError(err) ? err.code : undefined;
}

t.test('spiffe IDs', async (t) => {
  t.equal(DEFAULT_TRUST_DOMAIN, 'cluster.local');
  t.equal(spiffeId('cluster.local', 'default', 'bookinfo-productpage'), 'spiffe://cluster.local/ns/default/sa/bookinfo-productpage');

  const good: Array<[string, { trustDomain: string; namespace: string; serviceAccount: string }]> = [
    ['spiffe://cluster.local/ns/default/sa/default', { trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'default' }],
    ['spiffe://example.org/ns/kube-system/sa/coredns', { trustDomain: 'example.org', namespace: 'kube-system', serviceAccount: 'coredns' }],
    ['spiffe://td/ns/a.b/sa/c_d', { trustDomain: 'td', namespace: 'a.b', serviceAccount: 'c_d' }],
  ];
  for (const [uri, parts] of good) {
    t.same(parseSpiffeId(uri), parts, `parses ${uri}`);
    t.equal(spiffeId(parts.trustDomain, parts.namespace, parts.serviceAccount), uri, `formats ${uri}`);
  }

  const bad = [
    '',
    'cluster.local/ns/a/sa/b',
    'http://cluster.local/ns/a/sa/b',
    'SPIFFE://cluster.local/ns/a/sa/b',
    'spiffe://',
    'spiffe://cluster.local',
    'spiffe://cluster.local/',
    'spiffe:///ns/a/sa/b',
    'spiffe://Cluster.Local/ns/a/sa/b',
    'spiffe://cluster.local:8080/ns/a/sa/b',
    'spiffe://user@cluster.local/ns/a/sa/b',
    'spiffe://-cluster.local/ns/a/sa/b',
    'spiffe://cluster..local/ns/a/sa/b',
    'spiffe://cluster.local/ns//sa/b',
    'spiffe://cluster.local/ns/a/sa/',
    'spiffe://cluster.local/ns/a/sa',
    'spiffe://cluster.local/ns/a/sa/b/',
    'spiffe://cluster.local/ns/a/sa/b/extra',
    'spiffe://cluster.local/sa/b/ns/a',
    'spiffe://cluster.local/ns/a/sa/b?x=1',
    'spiffe://cluster.local/ns/a/sa/b#frag',
    'spiffe://cluster.local/ns/../sa/b',
    'spiffe://cluster.local/ns/a%2Fb/sa/c',
    `spiffe://${'a'.repeat(64)}.local/ns/a/sa/b`,
  ];
  for (const uri of bad) {
    t.throws(() => parseSpiffeId(uri), { code: 'BAD_SPIFFE_ID' }, `rejects ${JSON.stringify(uri)}`);
  }
  t.throws(() => spiffeId('cluster.local', 'a/b', 'c'), { code: 'BAD_SPIFFE_ID' }, 'a namespace with a slash cannot be formatted');
  t.throws(() => spiffeId('cluster.local', 'a', ''), { code: 'BAD_SPIFFE_ID' }, 'an empty service account cannot be formatted');
  t.throws(() => spiffeId('Bad_Domain:1', 'a', 'b'), { code: 'BAD_SPIFFE_ID' });
  t.match(
    (() => { try { parseSpiffeId('spiffe://cluster.local/ns/a'); } catch (err) { return (err as Error).message; } return ''; })(),
    /spiffe:\/\/cluster\.local\/ns\/a.*\/ns\/<namespace>\/sa\/<serviceaccount>/,
    'the message names the ID and the expected shape',
  );
});

t.test('withoutSpiffeScheme: what follows spiffe://, or undefined', async (t) => {
  t.equal(withoutSpiffeScheme(SERVER_ID), 'cluster.local/ns/team-a/sa/server');
  t.equal(withoutSpiffeScheme('spiffe://cluster.local'), 'cluster.local', 'a trust domain ID');
  t.equal(withoutSpiffeScheme('cluster.local/ns/team-a/sa/server'), undefined, 'already without the scheme');
  t.equal(withoutSpiffeScheme('https://cluster.local/ns/a/sa/b'), undefined);
  t.equal(withoutSpiffeScheme('SPIFFE://cluster.local/ns/a/sa/b'), undefined, 'the scheme is matched as written, as before');
});

t.test('sniForIdentity is a stable hostname per identity', async (t) => {
  const sni = sniForIdentity(SERVER_ID);
  t.match(sni, /^[0-9a-f]{32}\.id\.ambit$/);
  t.equal(sni, `${createHash('sha256').update(SERVER_ID).digest('hex').slice(0, 32)}.id.ambit`);
  t.equal(sniForIdentity(SERVER_ID), sni, 'deterministic');
  t.not(sniForIdentity(CLIENT_ID), sni, 'distinct identities get distinct names');
  t.ok(tls.checkServerIdentity(sni, { subject: { CN: sni }, subjectaltname: `DNS:${sni}` } as unknown as tls.PeerCertificate) === undefined, 'a valid TLS host name');
});

t.test('CertificateAuthority.create makes a self-signed root', async (t) => {
  const ca = await CertificateAuthority.create({ trustDomain: 'example.org', commonName: 'Test Root', validityDays: 30 });
  t.equal(ca.trustDomain, 'example.org');
  const root = new X509Certificate(ca.rootPem);
  t.equal(root.ca, true);
  t.ok(root.verify(root.publicKey), 'self-signed');
  t.equal(root.subject, root.issuer);
  t.match(root.subject, /O=example\.org/);
  t.match(root.subject, /CN=Test Root/);
  t.equal(root.subjectAltName, 'URI:spiffe://example.org');
  const days = (new Date(root.validTo).getTime() - Date.now()) / (24 * HOUR_MS);
  t.ok(days > 29.9 && days <= 30, `valid for 30 days (got ${days})`);
  t.equal(ca.notAfter.getTime(), new Date(root.validTo).getTime());

  const forgeRoot = forge.pki.certificateFromPem(ca.rootPem);
  t.match(forgeRoot.getExtension('basicConstraints'), { cA: true, critical: true });
  t.match(forgeRoot.getExtension('keyUsage'), { keyCertSign: true, cRLSign: true, digitalSignature: false, critical: true });
  t.ok(forgeRoot.getExtension('subjectKeyIdentifier'), 'has a subject key identifier');

  await t.rejects(CertificateAuthority.create({ trustDomain: 'Not A Domain' }), { code: 'BAD_TRUST_DOMAIN' });
  await t.rejects(CertificateAuthority.create({ trustDomain: 'example.org', validityDays: 0 }), { code: 'BAD_VALIDITY' });
});

t.test('CA save and load', async (t) => {
  const dir = await tempDir(t);
  const caDir = path.join(dir, 'ca');
  const ca = await CertificateAuthority.create({ trustDomain: 'mesh.example' });
  await ca.save(caDir);

  t.same((await readdir(caDir)).sort(), ['ca.crt', 'ca.key'], 'no temporary files are left behind');
  t.equal((await stat(path.join(caDir, 'ca.crt'))).mode & 0o777, 0o644);
  t.equal((await stat(path.join(caDir, 'ca.key'))).mode & 0o777, 0o600);

  const loaded = await CertificateAuthority.load(caDir);
  t.equal(loaded.rootPem, ca.rootPem);
  t.equal(loaded.trustDomain, 'mesh.example', 'trust domain recovered from the root');
  const { certPem } = await loaded.issueKeyAndCert('spiffe://mesh.example/ns/a/sa/b');
  t.ok(new X509Certificate(certPem).verify(new X509Certificate(ca.rootPem).publicKey), 'the loaded CA signs with the saved key');

  await ca.save(caDir);
  t.same((await readdir(caDir)).sort(), ['ca.crt', 'ca.key'], 'saving again replaces the files');

  const overridden = await CertificateAuthority.load(caDir, { trustDomain: 'other.example' });
  t.equal(overridden.trustDomain, 'other.example');

  const missing = path.join(dir, 'nowhere');
  await t.rejects(CertificateAuthority.load(missing), { code: 'CA_NOT_FOUND', message: new RegExp(`${missing}/ca\\.crt`) });

  const corrupt = path.join(dir, 'corrupt');
  await ca.save(corrupt);
  await writeFile(path.join(corrupt, 'ca.crt'), 'not a certificate');
  await t.rejects(CertificateAuthority.load(corrupt), { code: 'CA_INVALID', message: new RegExp(`${corrupt}/ca\\.crt`) });

  const mismatched = path.join(dir, 'mismatched');
  await ca.save(mismatched);
  const other = await CertificateAuthority.create({ trustDomain: 'mesh.example' });
  await writeFile(path.join(mismatched, 'ca.crt'), other.rootPem);
  await t.rejects(CertificateAuthority.load(mismatched), { code: 'CA_INVALID', message: /not the private key/ });

  const keyFile = path.join(caDir, 'ca.key');
  for (const mode of [0o640, 0o604, 0o644, 0o620]) {
    await chmod(keyFile, mode);
    await t.rejects(
      CertificateAuthority.load(caDir),
      { code: 'CA_KEY_EXPOSED', message: new RegExp(`${keyFile} is open to group or others \\(mode 0${mode.toString(8)}\\).*chmod 600 ${keyFile}`) },
      `a key of mode 0${mode.toString(8)} is refused`,
    );
  }
  await chmod(keyFile, 0o400);
  t.equal((await CertificateAuthority.load(caDir)).rootPem, ca.rootPem, 'a key readable by its owner alone is taken');
  await chmod(keyFile, 0o600);

  const notCa = path.join(dir, 'not-ca');
  await ca.save(notCa);
  const leaf = await ca.issueKeyAndCert('spiffe://mesh.example/ns/a/sa/b');
  await writeFile(path.join(notCa, 'ca.crt'), leaf.certPem);
  await writeFile(path.join(notCa, 'ca.key'), leaf.keyPem);
  await t.rejects(CertificateAuthority.load(notCa), { code: 'CA_INVALID', message: /not a CA certificate/ });
});

t.test('a signed leaf is an X509-SVID that Node verifies', async (t) => {
  const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
  const root = new X509Certificate(ca.rootPem);
  const { keyPem, csrPem } = await generateKeyAndCsr(SERVER_ID);
  t.match(keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
  t.notMatch(csrPem, /\r/, 'PEM uses LF line ends');
  const before = Date.now();
  const certPem = await ca.sign(csrPem, { spiffeId: SERVER_ID });
  const leaf = new X509Certificate(certPem);

  t.ok(leaf.verify(root.publicKey), 'signed by the root');
  t.ok(leaf.checkIssued(root), 'issued by the root');
  t.ok(leaf.checkPrivateKey((await import('node:crypto')).createPrivateKey(keyPem)), 'certifies the CSR key');
  t.equal(leaf.ca, false);
  t.equal(leaf.subjectAltName, `URI:${SERVER_ID}`);
  t.notOk(leaf.subject, 'no subject: the identity is the URI SAN');
  t.same([...(leaf.keyUsage ?? [])].sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'], 'serverAuth and clientAuth');

  const notBefore = new Date(leaf.validFrom).getTime();
  const notAfter = new Date(leaf.validTo).getTime();
  t.ok(Math.abs(notBefore - (before - CLOCK_SKEW_ALLOWANCE_MS)) < 3000, 'notBefore is a minute in the past');
  t.ok(Math.abs(notAfter - (before + 24 * HOUR_MS)) < 3000, 'valid for 24 hours from now');

  const forgeLeaf = forge.pki.certificateFromPem(certPem);
  t.equal(forgeLeaf.subject.attributes.length, 0, 'empty subject');
  t.match(forgeLeaf.getExtension('subjectAltName'), { critical: true }, 'SAN is critical because the subject is empty');
  t.match(forgeLeaf.getExtension('basicConstraints'), { cA: false });
  t.match(forgeLeaf.getExtension('keyUsage'), { digitalSignature: true, keyEncipherment: true, keyCertSign: false, critical: true });
  const rootSki = (forge.pki.certificateFromPem(ca.rootPem).getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier: string }).subjectKeyIdentifier;
  const aki = forge.asn1.fromDer((forgeLeaf.getExtension('authorityKeyIdentifier') as { value: string }).value);
  const keyIdentifier = (aki.value as forge.asn1.Asn1[])[0];
  t.equal(keyIdentifier?.type, 0, 'AKI carries a keyIdentifier');
  t.equal(forge.util.bytesToHex(keyIdentifier?.value as string), rootSki, 'AKI is the root SKI');

  const serial = BigInt(`0x${leaf.serialNumber}`);
  t.ok(serial > 0n && serial < 2n ** 128n, 'positive serial of at most 128 bits');
  const serials = new Set<string>([leaf.serialNumber]);
  for (let i = 0; i < 5; i += 1) serials.add(new X509Certificate(await ca.sign(csrPem, { spiffeId: SERVER_ID })).serialNumber);
  t.equal(serials.size, 6, 'serials are random');

  const oneHour = new X509Certificate(await ca.sign(csrPem, { spiffeId: SERVER_ID, ttlMs: HOUR_MS }));
  t.ok(Math.abs(new Date(oneHour.validTo).getTime() - (Date.now() + HOUR_MS)) < 3000, 'ttlMs sets the lifetime');
  const capped = new X509Certificate(await ca.sign(csrPem, { spiffeId: SERVER_ID, ttlMs: 20 * 365 * 24 * HOUR_MS }));
  t.equal(new Date(capped.validTo).getTime(), ca.notAfter.getTime(), 'a leaf never outlives its root');
});

t.test('the CA refuses bad requests', async (t) => {
  const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
  const { csrPem } = await generateKeyAndCsr(SERVER_ID);

  await t.rejects(ca.sign(csrPem, { spiffeId: 'spiffe://other.domain/ns/team-a/sa/server' }), { code: 'TRUST_DOMAIN_MISMATCH', message: /other\.domain.*cluster\.local/ });
  await t.rejects(ca.sign(csrPem, { spiffeId: 'spiffe://cluster.local/ns/team-a' }), { code: 'BAD_SPIFFE_ID' });
  await t.rejects(ca.sign('garbage', { spiffeId: SERVER_ID }), { code: 'BAD_CSR' });
  await t.rejects(ca.sign(csrPem, { spiffeId: CLIENT_ID }), { code: 'BAD_CSR', message: /asks for .*server.* may only have .*client/ });
  await t.rejects(ca.sign(csrPem, { spiffeId: SERVER_ID, ttlMs: 0 }), { code: 'BAD_VALIDITY' });
  await t.rejects(ca.sign(csrPem, { spiffeId: SERVER_ID, notBefore: new Date(), notAfter: new Date(Date.now() - HOUR_MS) }), { code: 'BAD_VALIDITY' });

  // A CSR whose signature is not made by the key it carries: someone else's public key in our request.
  const a = await ca.issueKeyAndCert(SERVER_ID);
  const b = await generateKeyAndCsr(SERVER_ID);
  const forged = forge.pki.createCertificationRequest();
  forged.publicKey = forge.pki.certificateFromPem(a.certPem).publicKey;
  forged.setSubject([]);
  forged.sign(forge.pki.privateKeyFromPem(b.keyPem), forge.md.sha256.create());
  const err = await ca.sign(forge.pki.certificationRequestToPem(forged), { spiffeId: SERVER_ID }).catch((e: unknown) => e);
  t.equal(ambitCode(err), 'BAD_CSR');
  t.match((err as Error).message, /bad signature/);

  // The same CSR with one byte of its signature flipped.
  const der = Buffer.from(csrPem.replace(/-----[^-]+-----/g, '').replace(/\s/g, ''), 'base64');
  der[der.length - 1] = (der[der.length - 1] ?? 0) ^ 0x01;
  const flipped = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE REQUEST-----\n`;
  await t.rejects(ca.sign(flipped, { spiffeId: SERVER_ID }), { code: 'BAD_CSR' });

  await t.rejects(generateKeyAndCsr('spiffe://cluster.local/oops'), { code: 'BAD_SPIFFE_ID' });
});
