/**
 * The controller's signing material (controller/mesh-ca.ts) against the API server double: the root created once by
 * the Lease holder of two replicas, a brought intermediate and its chain, a bad Secret that changes nothing and says
 * so, a deleted Secret written back, and the trust bundle ConfigMap that follows.
 */
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { Controller, loadControllerConfig } from '../controller/index.js';
import { MeshCa } from '../controller/mesh-ca.js';
import { CA_SECRET_KEYS, CA_SECRET_NAME, CertificateAuthority, generateKeyAndCsr, parseTrustBundle, TRUST_BUNDLE_CONFIGMAP_NAME, TRUST_BUNDLE_KEYS } from '../core/identity/index.js';
import { KubeApi, loadKubeConfig } from '../core/k8s/index.js';
import { createLogger } from '../core/log/index.js';
import { createRegistry } from '../core/metrics/index.js';
import { ApiServer, intermediateCa, meshCaSecret, metricValue } from '../testbed/index.js';
import { LogCapture } from './mesh/loopback.js';

const TD = 'cluster.local';

async function rig(t: Test) {
  const api = await ApiServer.start();
  api.addToken('controller-token', { username: 'system:serviceaccount:ambit-system:ambit-controller' });
  api.objects('v1', 'namespaces').create({ metadata: { name: 'ambit-system' } });
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-mesh-ca-'));
  await api.writeKubeconfig(path.join(dir, 'kubeconfig'), 'controller-token');
  const kube = new KubeApi(await loadKubeConfig({ kubeconfig: path.join(dir, 'kubeconfig') }));
  const started: MeshCa[] = [];
  const logs = new LogCapture();
  const start = async (holder: string, registry = createRegistry({ defaultMetrics: false }), propagationMs = 0, ttlMs = 86_400_000) => {
    const ca = new MeshCa({ api: kube, namespace: 'ambit-system', trustDomain: TD, holder, rereadIntervalMs: 3_600_000, propagationMs, ttlMs, registry, log: createLogger({ level: 'info', destination: logs }) });
    started.push(ca);
    await ca.start();
    return ca;
  };
  t.teardown(async () => {
    for (const ca of started) await ca.close();
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });
  const bundle = () => (api.objects('v1', 'configmaps').get(TRUST_BUNDLE_CONFIGMAP_NAME, 'ambit-system')?.data ?? {}) as Record<string, string>;
  return { api, start, bundle, logs };
}


const secretData = (values: Record<string, string>) => Object.fromEntries(Object.entries(values).map(([key, value]) => [key, Buffer.from(value).toString('base64')]));

t.test('with no Secret, two replicas starting together make one root: only the Lease holder creates it', async (t) => {
  const { api, start, bundle } = await rig(t);
  let creates = 0;
  api.on('request', (method, requestPath) => {
    if (method === 'POST' && requestPath === '/api/v1/namespaces/ambit-system/secrets') creates++;
  });
  const [a, b] = await Promise.all([start('controller-a'), start('controller-b')]);
  t.equal(creates, 1, 'one Secret created');
  t.ok(a.signer !== undefined && a.signer.rootPem === b.signer?.rootPem, 'both replicas sign with the same root');
  const lease = api.objects('coordination.k8s.io/v1', 'leases').get('ambit-ca-bootstrap', 'ambit-system');
  t.match((lease?.spec as { holderIdentity?: string } | undefined)?.holderIdentity, /^controller-[ab]$/, 'held by one of them');
  t.equal(bundle()[TRUST_BUNDLE_KEYS.roots], new X509Certificate(a.signer?.rootPem ?? '').toString(), 'the ConfigMap holds the root');
  t.same(a.status, { valid: true, message: 'the CA Secret is valid and in use', signer: new X509Certificate(a.signer?.rootPem ?? '').fingerprint256, roots: [new X509Certificate(a.signer?.rootPem ?? '').fingerprint256] });
});

t.test('a brought intermediate signs leaves that carry it and chain to the root; the issuer chain is published', async (t) => {
  const { api, start, bundle } = await rig(t);
  const root = await CertificateAuthority.create({ trustDomain: TD });
  const intermediate = intermediateCa(root);
  api.objects('v1', 'secrets').create({
    metadata: { name: CA_SECRET_NAME, namespace: 'ambit-system' },
    type: 'kubernetes.io/tls',
    data: secretData({ [CA_SECRET_KEYS.issuerCert]: intermediate.certPem + root.rootPem, [CA_SECRET_KEYS.issuerKey]: intermediate.keyPem, [CA_SECRET_KEYS.roots]: root.rootPem }),
  });
  const ca = await start('controller-a');
  const { csrPem } = await generateKeyAndCsr(`spiffe://${TD}/ns/shop/sa/web`);
  const chain = (await ca.signer!.sign(csrPem, { spiffeId: `spiffe://${TD}/ns/shop/sa/web` })).match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  t.equal(chain.length, 2, 'leaf and intermediate, never the root');
  const [leaf, middle] = chain.map((pem) => new X509Certificate(pem));
  t.ok(leaf!.verify(middle!.publicKey) && middle!.verify(new X509Certificate(root.rootPem).publicKey), 'the leaf chains through the intermediate to the root');
  t.equal(bundle()[TRUST_BUNDLE_KEYS.issuerChain], new X509Certificate(intermediate.certPem).toString(), 'the ConfigMap names the intermediate as the issuer');
  t.equal(bundle()[TRUST_BUNDLE_KEYS.roots], new X509Certificate(root.rootPem).toString(), 'and the root as the trust');
});

t.test('a Secret whose key is not its certificate\'s changes nothing, and says so; fixed, it is taken', async (t) => {
  const { api, start, logs } = await rig(t);
  const good = await CertificateAuthority.create({ trustDomain: TD });
  const other = await CertificateAuthority.create({ trustDomain: TD });
  api.objects('v1', 'secrets').create(meshCaSecret(good));
  const registry = createRegistry({ defaultMetrics: false });
  const ca = await start('controller-a', registry);
  t.equal(metricValue(await registry.metrics(), 'ambit_ca_secret_valid'), 1);
  const secrets = api.objects('v1', 'secrets');
  const current = secrets.get(CA_SECRET_NAME, 'ambit-system')!;
  secrets.update({ ...current, data: { ...(current.data as Record<string, string>), ...secretData({ [CA_SECRET_KEYS.issuerKey]: other.keyPem }) } });
  const window = logs.window();
  await ca.refresh();
  t.equal(ca.signer?.rootPem, good.rootPem, 'the last good signer stays in use');
  t.equal(ca.status.valid, false);
  t.match(ca.status.message, /not the private key of the signing certificate .*mismatched.*the last good signer .* stays in use/, `the status says why: ${ca.status.message}`);
  t.equal(metricValue(await registry.metrics(), 'ambit_ca_secret_valid'), 0, 'and the metric');
  t.ok(window.find((r) => r.level === 50 && String(r.msg).startsWith('the CA Secret is refused')), 'and the log, at error');
  const { csrPem } = await generateKeyAndCsr(`spiffe://${TD}/ns/shop/sa/web`);
  const leaf = new X509Certificate(await ca.signer!.sign(csrPem, { spiffeId: `spiffe://${TD}/ns/shop/sa/web` }));
  t.ok(leaf.verify(new X509Certificate(good.rootPem).publicKey), 'leaves are still signed, by the good key');
  secrets.update({ ...secrets.get(CA_SECRET_NAME, 'ambit-system')!, data: meshCaSecret(other).data ?? {} });
  await ca.refresh();
  t.equal(ca.signer?.rootPem, other.rootPem, 'a valid Secret is taken');
  t.equal(ca.status.valid, true);
});

t.test('a Secret deleted while in use is written back with the signer in use', async (t) => {
  const { api, start } = await rig(t);
  const good = await CertificateAuthority.create({ trustDomain: TD });
  api.objects('v1', 'secrets').create(meshCaSecret(good));
  const ca = await start('controller-a');
  api.objects('v1', 'secrets').delete(CA_SECRET_NAME, 'ambit-system');
  await ca.refresh();
  const back = api.objects('v1', 'secrets').get(CA_SECRET_NAME, 'ambit-system');
  t.equal(Buffer.from((back?.data as Record<string, string>)[CA_SECRET_KEYS.issuerCert] ?? '', 'base64').toString(), good.rootPem, 'the same root, not a new one');
  t.equal(ca.signer?.rootPem, good.rootPem);
});

t.test('a root and key replaced in one write: the new root is published first, signs after the delay, the old root leaves when its leaves have expired', async (t) => {
  const { api, start, bundle } = await rig(t);
  const old = await CertificateAuthority.create({ trustDomain: TD });
  const next = await CertificateAuthority.create({ trustDomain: TD });
  api.objects('v1', 'secrets').create(meshCaSecret(old));
  const PROPAGATION_MS = 1500;
  const TTL_MS = 2000;
  const ca = await start('controller-a', undefined, PROPAGATION_MS, TTL_MS);
  const fp = (pem: string) => new X509Certificate(pem).fingerprint256;
  const secrets = api.objects('v1', 'secrets');
  secrets.update({ ...secrets.get(CA_SECRET_NAME, 'ambit-system')!, data: meshCaSecret(next).data ?? {} });
  const changed = Date.now();
  const signerChanged = once(ca, 'signer');
  await ca.refresh();
  t.equal(ca.signer?.rootPem, old.rootPem, 'the old key still signs');
  t.same(ca.status.roots, [fp(next.rootPem), fp(old.rootPem)], 'and both roots are published, the new one first');
  t.equal(bundle()[TRUST_BUNDLE_KEYS.issuerChain], new X509Certificate(old.rootPem).toString(), 'the issuer chain is the old key\'s');
  t.equal(ca.status.pending?.signer, fp(next.rootPem), '/status names the pending signer');
  await signerChanged;
  t.ok(Date.now() - changed >= PROPAGATION_MS, `the new key signs once its root has been out ${PROPAGATION_MS} ms (${Date.now() - changed} ms)`);
  t.equal(ca.signer?.rootPem, next.rootPem);
  t.same(ca.status.roots, [fp(next.rootPem), fp(old.rootPem)], 'the old root stays published a while, for the leaves it signed');
  // until when, on the ConfigMap (a restart reads it): the old key's leaves' lifetime and the other replica's delay
  // after the swap (that it then leaves is controller-bundle-plan's case)
  const times = JSON.parse(String((api.objects('v1', 'configmaps').get(TRUST_BUNDLE_CONFIGMAP_NAME, 'ambit-system')?.metadata as { annotations?: Record<string, string> }).annotations?.['ambit.dev/roots'])) as Record<string, { until?: number }>;
  const until = times[fp(old.rootPem)]?.until ?? 0;
  const expected = Date.now() + TTL_MS + PROPAGATION_MS;
  t.ok(Math.abs(until - expected) < 1_000, `the old root stays until ${new Date(until).toISOString()}, about TTL + delay after the swap`);
  t.equal(times[fp(next.rootPem)]?.until, undefined, 'the new root has no end');
});

t.test('a controller whose Secret never loads says why on its status port, unready, and stops on its signal', async (t) => {
  const { api } = await rig(t);
  const good = await CertificateAuthority.create({ trustDomain: TD });
  const other = await CertificateAuthority.create({ trustDomain: TD });
  const mismatched = meshCaSecret(good);
  mismatched.data = { ...(mismatched.data as Record<string, string>), ...secretData({ [CA_SECRET_KEYS.issuerKey]: other.keyPem }) };
  api.objects('v1', 'secrets').create(mismatched);
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-mesh-ca-controller-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await api.writeKubeconfig(path.join(dir, 'kubeconfig'), 'controller-token');
  const { config } = loadControllerConfig({}, ['--kubeconfig', path.join(dir, 'kubeconfig'), '--listen-host', '127.0.0.1', '--pod-name', 'c0']);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const logs = new LogCapture();
  const stop = new AbortController();
  const starting = Controller.start({ ...config!, ports: { stream: port, metrics: port + 1, readiness: port + 2 } }, { log: createLogger({ level: 'info', destination: logs }), signal: stop.signal });
  const outcome = starting.then(
    () => 'started',
    (err: { code?: string }) => err.code,
  );
  await logs.waitFor((r) => String(r.msg).startsWith('the CA Secret is refused'), 10_000);
  const status = (await (await fetch(`http://127.0.0.1:${port + 2}/status`)).json()) as { ready: boolean; ca: { valid: boolean; message: string } };
  t.equal(status.ready, false);
  t.equal(status.ca.valid, false);
  t.match(status.ca.message, /mismatched.*no signer, so no certificate is signed until it is fixed/, '/status says why, while it waits');
  const ready = await fetch(`http://127.0.0.1:${port + 2}/healthz/ready`);
  t.equal(ready.status, 503);
  t.match(await ready.text(), /no signing key yet/);
  t.equal(metricValue(await (await fetch(`http://127.0.0.1:${port + 1}/metrics`)).text(), 'ambit_ca_secret_valid'), 0, 'and the metric');
  stop.abort();
  t.equal(await outcome, 'CONTROLLER_STOPPED', 'its signal ends the wait');
  await t.rejects(fetch(`http://127.0.0.1:${port + 2}/status`), 'and the status port is closed');
});

t.test('the rotation survives the controller: a fresh replica continues a pending change from the published bundle', async (t) => {
  const { api, start, bundle } = await rig(t);
  const old = await CertificateAuthority.create({ trustDomain: TD });
  const next = await CertificateAuthority.create({ trustDomain: TD });
  api.objects('v1', 'secrets').create(meshCaSecret(old));
  const PROPAGATION_MS = 1500;
  const a = await start('controller-a', undefined, PROPAGATION_MS);
  const secrets = api.objects('v1', 'secrets');
  secrets.update({ ...secrets.get(CA_SECRET_NAME, 'ambit-system')!, data: meshCaSecret(next).data ?? {} });
  const changed = Date.now();
  await a.refresh();
  t.equal(a.signer?.rootPem, old.rootPem, 'replica a: the old key still signs');
  await a.close();
  // a fresh replica (a restart, a rollout) half a delay later: the time that passes is what is tested here
  await new Promise((resolve) => setTimeout(resolve, PROPAGATION_MS / 2));
  const registry = createRegistry({ defaultMetrics: false });
  const bStart = Date.now();
  const bStarted = await start('controller-b', registry, PROPAGATION_MS);
  t.ok(Date.now() - changed >= PROPAGATION_MS, `replica b signed only once the new root had been out ${PROPAGATION_MS} ms (${Date.now() - changed} ms)`);
  t.ok(Date.now() - bStart < PROPAGATION_MS, `and it continued the wait a started, from the bundle, not from its own start (${Date.now() - bStart} ms after it)`);
  t.equal(bStarted.signer?.rootPem, next.rootPem, 'with the new key');
  const publishedRoots = parseTrustBundle(bundle()[TRUST_BUNDLE_KEYS.roots] ?? '', 'the bundle').map((root) => root.fingerprint256);
  t.same(publishedRoots, [new X509Certificate(next.rootPem).fingerprint256, new X509Certificate(old.rootPem).fingerprint256], 'and the old root is still published for the leaves it signed');
});

t.test('a Secret gone while the bundle holds roots is not replaced by a new root on a fresh replica', async (t) => {
  const { api, start, bundle, logs } = await rig(t);
  const old = await CertificateAuthority.create({ trustDomain: TD });
  api.objects('v1', 'secrets').create(meshCaSecret(old));
  const a = await start('controller-a');
  await a.close();
  api.objects('v1', 'secrets').delete(CA_SECRET_NAME, 'ambit-system');
  const published = bundle()[TRUST_BUNDLE_KEYS.roots];
  const b = start('controller-b');
  const refusal = await logs.waitFor((r) => String(r.msg).includes('is gone, but the trust bundle'), 10_000);
  t.match(refusal.msg, /restore the Secret/, 'it says what to do');
  t.notOk(api.objects('v1', 'secrets').get(CA_SECRET_NAME, 'ambit-system'), 'no new root was written');
  t.equal(bundle()[TRUST_BUNDLE_KEYS.roots], published, 'and the trust bundle is untouched');
  api.objects('v1', 'secrets').create(meshCaSecret(old));
  const restored = await b;
  t.equal(restored.signer?.rootPem, old.rootPem, 'the restored Secret is taken');
});
