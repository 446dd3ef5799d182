/**
 * The mesh CA's endpoint on the controller's port, against the API server double (issue 14): a real TLS HTTP/2 client
 * sends CSRs with tokens the double's TokenReview judges, and every authorization case is answered as the issue
 * says, refusals naming the failed check, in the answer, in the log and in `ambit_ca_requests_total`.
 */
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import http2 from 'node:http2';
import { tmpdir } from 'node:os';
import path from 'node:path';
import forge from 'node-forge';
import t from 'tap';
import { Controller, loadControllerConfig } from '../controller/index.js';
import { CA_PATH, CA_SECRET_NAME, generateKeyAndCsr, TRUST_BUNDLE_CONFIGMAP_NAME, TRUST_BUNDLE_KEYS } from '../core/identity/index.js';
import { createLogger } from '../core/log/index.js';
import { createRegistry } from '../core/metrics/index.js';
import { ApiServer, boundServiceAccountUser, MESH_CUSTOM_RESOURCES, metricValue, type JsonObject, type TokenUser } from '../testbed/index.js';
import { LogCapture } from './mesh/loopback.js';

const TD = 'cluster.local';
const CONTROLLER_ID = `spiffe://${TD}/ns/ambit-system/sa/ambit-controller`;
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
const URI = 6;
const DNS = 2;

function pod(namespace: string, name: string, serviceAccount: string, node: string, phase = 'Running'): JsonObject {
  return {
    metadata: { name, namespace },
    spec: { nodeName: node, serviceAccountName: serviceAccount, containers: [{ name: 'c' }] },
    status: { phase },
  };
}

/** A CSR with exactly these subjectAltNames, signed by `keyPem` (forge, so that a test can ask for anything). */
function csrWith(altNames: Array<{ type: number; value: string }>, keyPem = KEY_PEM, more: { subject?: forge.pki.CertificateField[]; extensions?: object[] } = {}): string {
  const key = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.rsa.setPublicKey(key.n, key.e);
  csr.setSubject(more.subject ?? []);
  const extensions = [...(altNames.length > 0 ? [{ name: 'subjectAltName', altNames }] : []), ...(more.extensions ?? [])];
  if (extensions.length > 0) csr.setAttributes([{ name: 'extensionRequest', extensions }]);
  csr.sign(key, forge.md.sha256.create());
  return forge.pki.certificationRequestToPem(csr);
}
const KEY_PEM = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
const SMALL_EXPONENT_KEY_PEM = generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 3 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
const SMALL_KEY_PEM = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();

t.test('the CA endpoint: node authorization, token checks and bad input', async (t) => {
  const api = await ApiServer.start();
  for (const type of MESH_CUSTOM_RESOURCES) api.registerResource(type);
  api.addToken('controller-token', { username: 'system:serviceaccount:ambit-system:ambit-controller' });
  for (const name of ['ambit-system', 'shop']) api.objects('v1', 'namespaces').create({ metadata: { name } });
  const pods = api.objects('v1', 'pods');
  const agentPod = (node: string) => pods.create(pod('ambit-system', `ambit-agent-${node}`, 'ambit-agent', node));
  const uidOf = (object: JsonObject) => String((object.metadata as { uid: string }).uid);
  const agent1Uid = uidOf(agentPod('node1'));
  agentPod('node2');
  // web-1 is scheduled and has no IP yet: its node's agent may hold its certificate before it starts
  const web = pods.create({ ...pod('shop', 'web-1', 'web', 'node1'), status: { phase: 'Pending' } });
  pods.create(pod('shop', 'api-1', 'api', 'node2'));
  // named and labelled like api, but of service account web: it gives node1 no right to shop/api
  pods.create({ ...pod('shop', 'api-2', 'web', 'node1'), metadata: { name: 'api-2', namespace: 'shop', labels: { app: 'api' } } });
  // a controller replica on node1: its identity is the controller's, which the endpoint never signs
  const controllerPod = pods.create(pod('ambit-system', 'ambit-controller-0', 'ambit-controller', 'node1'));
  pods.create(pod('shop', 'batch-1', 'batch', 'node1', 'Succeeded'));
  const waypoint = pods.create(pod('shop', 'waypoint-1', 'waypoint', 'node2'));

  const bound = (sa: { ns: string; name: string }, podName: string, podUid: string, nodeName: string, extra: Partial<TokenUser> = {}): TokenUser => ({
    ...boundServiceAccountUser({ namespace: sa.ns, serviceAccount: sa.name, podName, podUid, nodeName, audiences: ['ambit-ca'] }),
    ...extra,
  });
  const AGENT = { ns: 'ambit-system', name: 'ambit-agent' };
  api.addToken('agent1', bound(AGENT, 'ambit-agent-node1', agent1Uid, 'node1'));
  api.addToken('agent1-review-fails', bound(AGENT, 'ambit-agent-node1', agent1Uid, 'node1'));
  api.addToken('agent1-stream-audience', bound(AGENT, 'ambit-agent-node1', agent1Uid, 'node1', { audiences: ['ambit-controller'] }));
  api.addToken('agent1-expired', bound(AGENT, 'ambit-agent-node1', agent1Uid, 'node1', { expiresAt: Date.now() - 1000 }));
  api.addToken('agent-legacy', { username: 'system:serviceaccount:ambit-system:ambit-agent', audiences: ['ambit-ca'] });
  api.addToken('agent-stale-uid', bound(AGENT, 'ambit-agent-node1', 'uid-of-a-deleted-pod', 'node1'));
  api.addToken('agent-claims-node2', bound(AGENT, 'ambit-agent-node1', agent1Uid, 'node2'));
  api.addToken('agent-claims-controller-pod', bound(AGENT, 'ambit-controller-0', uidOf(controllerPod), 'node1'));
  api.addToken('web', bound({ ns: 'shop', name: 'web' }, 'web-1', uidOf(web), 'node1'));
  api.addToken('waypoint', bound({ ns: 'shop', name: 'waypoint' }, 'waypoint-1', uidOf(waypoint), 'node2'));
  api.addToken('admin', { username: 'kubernetes-admin', groups: ['system:masters'], audiences: ['ambit-ca'] });

  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-controller-ca-'));
  await api.writeKubeconfig(path.join(dir, 'kubeconfig'), 'controller-token');
  const logs = new LogCapture();
  const registry = createRegistry({ defaultMetrics: false });
  const { config } = loadControllerConfig({}, ['--kubeconfig', path.join(dir, 'kubeconfig'), '--listen-host', '127.0.0.1', '--pod-name', 'controller-0']);
  const controller = await Controller.start({ ...config!, ports: { stream: 0, metrics: 0, readiness: 0 } }, { log: createLogger({ level: 'info', destination: logs }), registry });
  const sessions: http2.ClientHttp2Session[] = [];
  t.teardown(async () => {
    for (const session of sessions) session.destroy();
    await controller.close();
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });
  await logs.waitFor((r) => r.msg === 'cluster listed; streaming to agents', 10_000);

  t.ok(api.objects('v1', 'secrets').get(CA_SECRET_NAME, 'ambit-system'), 'with no Secret, the controller created the root in ambit-system/ambit-ca');
  const bundle = api.objects('v1', 'configmaps').get(TRUST_BUNDLE_CONFIGMAP_NAME, 'ambit-system')?.data as Record<string, string> | undefined;
  const rootsPem = bundle?.[TRUST_BUNDLE_KEYS.roots] ?? '';
  t.match(rootsPem, /BEGIN CERTIFICATE/, 'and published its root in the ConfigMap ambit-system/ambit-trust-bundle');
  t.equal(bundle?.[TRUST_BUNDLE_KEYS.issuerChain], rootsPem, 'the issuer chain of a self-signed root is the root');
  const root = new X509Certificate(rootsPem);

  const session = http2.connect(`https://127.0.0.1:${controller.streamPort}`, {
    ca: rootsPem,
    checkServerIdentity: (_host, cert) => (cert.subjectaltname === `URI:${CONTROLLER_ID}` ? undefined : new Error(`the controller presented ${cert.subjectaltname}`)),
  });
  sessions.push(session);
  const ask = (token: string | undefined, body: string | Buffer): Promise<{ status: number; answer: Record<string, string> }> =>
    new Promise((resolve, reject) => {
      const request = session.request({ ':method': 'POST', ':path': CA_PATH, 'content-type': 'application/json', ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) });
      let status = 0;
      let text = '';
      request.on('response', (headers) => (status = Number(headers[':status'])));
      request.setEncoding('utf8');
      request.on('data', (chunk: string) => (text += chunk));
      request.on('end', () => resolve({ status, answer: JSON.parse(text) as Record<string, string> }));
      request.on('error', reject);
      request.end(body);
    });
  const csrFor = (identity: string) => JSON.stringify({ csr: csrWith([{ type: URI, value: identity }]) });

  await t.test('an agent gets the identity of a pod scheduled on its node, and the leaf carries exactly that identity', async (t) => {
    const { keyPem, csrPem } = await generateKeyAndCsr(id('shop', 'web'));
    const { status, answer } = await ask('agent1', JSON.stringify({ csr: csrPem }));
    t.equal(status, 200, 'signed');
    const leaf = new X509Certificate(answer.certChainPem ?? '');
    t.equal(leaf.subjectAltName, `URI:${id('shop', 'web')}`, 'its only SAN is the identity asked for');
    t.ok(leaf.checkPrivateKey(createPrivateKey(keyPem)), 'for the key the agent kept');
    t.ok(leaf.verify(root.publicKey), 'signed by the published root');
    t.notOk(leaf.ca, 'not a CA');
    const lifetimeH = (Date.parse(leaf.validTo) - Date.now()) / 3_600_000;
    t.ok(lifetimeH > 23.9 && lifetimeH <= 24, `valid 24 h by default (${lifetimeH.toFixed(2)} h left)`);
  });

  await t.test('what a CSR asks for beyond its identity is not copied: no CA bit, no subject, no second SAN extension', async (t) => {
    const greedy = csrWith([{ type: URI, value: id('shop', 'web') }], KEY_PEM, {
      subject: [{ shortName: 'CN', value: 'evil' }],
      extensions: [{ name: 'basicConstraints', cA: true, critical: true }, { name: 'keyUsage', keyCertSign: true, cRLSign: true }],
    });
    const { status, answer } = await ask('agent1', JSON.stringify({ csr: greedy }));
    t.equal(status, 200, 'signed, for its identity');
    const leaf = new X509Certificate(answer.certChainPem ?? '');
    t.notOk(leaf.ca, 'not a CA though the CSR asked');
    t.notMatch(leaf.subject ?? '', /evil/, 'the subject is the CA\'s (empty), not the CSR\'s');
    t.equal(leaf.subjectAltName, `URI:${id('shop', 'web')}`);
    const twoExtensions = csrWith([{ type: URI, value: id('shop', 'web') }], KEY_PEM, { extensions: [{ name: 'subjectAltName', altNames: [{ type: DNS, value: 'evil.example' }] }] });
    const smuggled = await ask('agent1', JSON.stringify({ csr: twoExtensions }));
    t.equal(smuggled.answer.reason, 'bad_csr', 'a second subjectAltName extension counts: refused');
  });

  await t.test('a waypoint (any other caller) gets its own identity', async (t) => {
    const { status } = await ask('waypoint', csrFor(id('shop', 'waypoint')));
    t.equal(status, 200);
  });

  const cases: Array<{ name: string; token: string | undefined; body: string | Buffer; status: number; reason: string; says: RegExp }> = [
    { name: 'no token', token: undefined, body: csrFor(id('shop', 'web')), status: 401, reason: 'no_token', says: /no bearer token/ },
    { name: 'a bad token', token: 'made-up', body: csrFor(id('shop', 'web')), status: 401, reason: 'token_rejected', says: /invalid bearer token/ },
    { name: 'an expired token', token: 'agent1-expired', body: csrFor(id('shop', 'web')), status: 401, reason: 'token_rejected', says: /expired/ },
    { name: 'a token of another audience (the stream\'s)', token: 'agent1-stream-audience', body: csrFor(id('shop', 'web')), status: 401, reason: 'token_rejected', says: /audiences.*ambit-ca/ },
    { name: 'a caller that is not the agent asks for another identity', token: 'web', body: csrFor(id('shop', 'api')), status: 403, reason: 'not_own_identity', says: /may have only its own identity .*shop\/sa\/web/ },
    { name: 'a waypoint asks for another identity', token: 'waypoint', body: csrFor(id('shop', 'web')), status: 403, reason: 'not_own_identity', says: /only its own identity/ },
    { name: 'a user that is no service account', token: 'admin', body: csrFor(id('shop', 'web')), status: 403, reason: 'not_a_service_account', says: /kubernetes-admin is not a service account/ },
    { name: 'no pod of that service account on the caller\'s node', token: 'agent1', body: csrFor(id('shop', 'nobody')), status: 403, reason: 'identity_not_on_node', says: /shop\/nobody is scheduled on node node1 \(it runs on no node\)/ },
    { name: 'a pod of that service account only on another node', token: 'agent1', body: csrFor(id('shop', 'api')), status: 403, reason: 'identity_not_on_node', says: /shop\/api is scheduled on node node1 \(it runs on node2\)/ },
    { name: "a service-account mismatch: a pod named for api is on the node, but it runs as web", token: 'agent1', body: csrFor(id('shop', 'api')), status: 403, reason: 'identity_not_on_node', says: /shop\/api is scheduled on node node1 \(it runs on node2\)/ },
    { name: 'the account\'s name in another namespace', token: 'agent1', body: csrFor(id('other', 'web')), status: 403, reason: 'identity_not_on_node', says: /other\/web/ },
    { name: 'a pod that has ended', token: 'agent1', body: csrFor(id('shop', 'batch')), status: 403, reason: 'identity_not_on_node', says: /shop\/batch/ },
    { name: 'a token without the node claim (a legacy token)', token: 'agent-legacy', body: csrFor(id('shop', 'web')), status: 403, reason: 'no_node_claim', says: /node-name/ },
    { name: 'a token bound to a pod that is gone (another uid)', token: 'agent-stale-uid', body: csrFor(id('shop', 'web')), status: 403, reason: 'caller_pod_mismatch', says: /uid-of-a-deleted-pod/ },
    { name: 'a token whose node claim is not its pod\'s node', token: 'agent-claims-node2', body: csrFor(id('shop', 'api')), status: 403, reason: 'caller_pod_mismatch', says: /node node2/ },
    { name: "a token whose pod is of another service account than the token's", token: 'agent-claims-controller-pod', body: csrFor(id('shop', 'web')), status: 403, reason: 'caller_pod_mismatch', says: /service account ambit-agent\) is not the one the controller knows .*service account ambit-controller\)/ },
    { name: 'a foreign trust domain', token: 'agent1', body: csrFor(`spiffe://evil.example/ns/shop/sa/web`), status: 403, reason: 'foreign_trust_domain', says: /trust domain cluster.local/ },
    { name: 'an extra SAN beside the identity', token: 'agent1', body: JSON.stringify({ csr: csrWith([{ type: URI, value: id('shop', 'web') }, { type: DNS, value: 'web.shop.svc' }]) }), status: 400, reason: 'bad_csr', says: /2 subjectAltNames/ },
    { name: 'two identities', token: 'agent1', body: JSON.stringify({ csr: csrWith([{ type: URI, value: id('shop', 'web') }, { type: URI, value: id('shop', 'api') }]) }), status: 400, reason: 'bad_csr', says: /2 subjectAltNames/ },
    { name: 'a foreign SAN alone (a DNS name)', token: 'agent1', body: JSON.stringify({ csr: csrWith([{ type: DNS, value: 'web.shop.svc' }]) }), status: 400, reason: 'bad_csr', says: /DNS:web.shop.svc/ },
    { name: 'no SAN', token: 'agent1', body: JSON.stringify({ csr: csrWith([]) }), status: 400, reason: 'bad_csr', says: /no subjectAltName/ },
    { name: 'a URI that is no SPIFFE workload ID', token: 'agent1', body: csrFor('spiffe://cluster.local/ns/shop'), status: 400, reason: 'bad_csr', says: /malformed/ },
    { name: "the controller's own identity, though a pod of it runs on the caller's node", token: 'agent1', body: csrFor(id('ambit-system', 'ambit-controller')), status: 403, reason: 'reserved_identity', says: /never signs it/ },
    { name: 'an RSA exponent other than 65537 (forge would verify a huge one for a minute)', token: 'agent1', body: JSON.stringify({ csr: csrWith([{ type: URI, value: id('shop', 'web') }], SMALL_EXPONENT_KEY_PEM) }), status: 400, reason: 'bad_csr', says: /exponent other than 65537/ },
    { name: 'a key under 2048 bits', token: 'agent1', body: JSON.stringify({ csr: csrWith([{ type: URI, value: id('shop', 'web') }], SMALL_KEY_PEM) }), status: 400, reason: 'bad_csr', says: /1024-bit/ },
    { name: 'a malformed CSR', token: 'agent1', body: JSON.stringify({ csr: '-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n' }), status: 400, reason: 'bad_csr', says: /cannot be parsed/ },
    { name: 'a body that is not JSON', token: 'agent1', body: 'csr=please', status: 400, reason: 'bad_request', says: /JSON/ },
    { name: 'an oversized request', token: 'agent1', body: Buffer.alloc(100 * 1024, 0x20), status: 413, reason: 'request_too_large', says: /larger than 65536 bytes/ },
  ];
  for (const c of cases) {
    await t.test(`refused: ${c.name}`, async (t) => {
      const window = logs.window();
      const { status, answer } = await ask(c.token, c.body);
      t.equal(status, c.status, `answered ${c.status}`);
      t.equal(answer.reason, c.reason, `reason ${c.reason}`);
      t.match(answer.message, c.says, `the message says which check failed: ${answer.message}`);
      t.notOk(answer.certChainPem, 'no certificate');
      const logged = await window.waitFor((r) => r.msg === 'certificate request refused');
      t.equal(logged.reason, c.reason, 'logged with its reason');
    });
  }

  await t.test('the TokenReview failing is a refusal (503, retry), never an admission', async (t) => {
    api.failTokenReviews(500);
    const failing = await ask('agent1-review-fails', csrFor(id('shop', 'web')));
    t.equal(failing.status, 503);
    t.equal(failing.answer.reason, 'token_review_unavailable');
    t.notOk(failing.answer.certChainPem, 'no certificate');
    api.healTokenReviews();
    const healed = await ask('agent1-review-fails', csrFor(id('shop', 'web')));
    t.equal(healed.status, 200, 'the same token is signed once the review answers: the failure was not remembered as a verdict');
  });

  await t.test('every outcome is counted by reason', async (t) => {
    const text = await registry.metrics();
    t.equal(metricValue(text, 'ambit_ca_requests_total', { outcome: 'signed' }), 4, 'four signed');
    for (const reason of new Set(cases.map((c) => c.reason))) {
      // one bad_csr more: the smuggled second SAN extension, asked before the table
      const extra = reason === 'bad_csr' ? 1 : 0;
      t.equal(metricValue(text, 'ambit_ca_requests_total', { outcome: reason }), cases.filter((c) => c.reason === reason).length + extra, `${reason} counted`);
    }
    t.equal(metricValue(text, 'ambit_ca_requests_total', { outcome: 'token_review_unavailable' }), 1);
    const expiry = (labels: Record<string, string>) => metricValue(text, 'ambit_cert_expiration_timestamp_seconds', labels);
    t.equal(expiry({ kind: 'root', fingerprint: root.fingerprint256 }), Date.parse(root.validTo) / 1000, 'the published root\'s expiry is exported');
    t.equal(expiry({ kind: 'issuer', fingerprint: root.fingerprint256 }), Date.parse(root.validTo) / 1000, 'and the issuer\'s (the same self-signed root)');
    t.ok(expiry({ kind: 'workload', identity: CONTROLLER_ID }) * 1000 > Date.now(), "and the controller's own serving certificate's");
  });

  await t.test('a pod scheduled after the first refusal is signed: the index follows the watch', async (t) => {
    t.equal((await ask('agent1', csrFor(id('shop', 'late')))).status, 403, 'no pod of shop/late on node1 yet');
    // the placements are applied in the same call that gives the change log its delta
    const seen = once(controller.changes, 'delta');
    pods.create({ ...pod('shop', 'late-1', 'late', 'node1'), status: { phase: 'Pending' } });
    await seen;
    const { status } = await ask('agent1', csrFor(id('shop', 'late')));
    t.equal(status, 200, 'signed once the controller has seen the pod');
    const gone = once(controller.changes, 'delta');
    pods.delete('late-1', 'shop');
    await gone;
    t.equal((await ask('agent1', csrFor(id('shop', 'late')))).status, 403, 'and refused again once it is deleted');
  });
});
