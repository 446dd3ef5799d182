/**
 * Least privilege, exercised (issue 15): the double with RBAC on, the install applied by an admin with
 * `kubectl apply -k manifests/`, then kubectl as the agent's and the controller's service accounts, each doing
 * what it needs and refused one step further, with the refusal kube-apiserver words.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { boundServiceAccountUser, type JsonObject } from '../testbed/index.js';
import { startDouble, type Double } from './mesh/apiserver-client.js';
import { kubectl, kubectlOk } from './mesh/kubectl.js';
import { needsTools } from './prerequisites.js';

const MANIFESTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'manifests');
const skip = needsTools(['kubectl'], 'the install and every request are made with the real client');
const AGENT = 'system:serviceaccount:ambit-system:ambit-agent';
const CONTROLLER = 'system:serviceaccount:ambit-system:ambit-controller';

interface Installed {
  double: Double;
  agent: string;
  controller: string;
  agentToken: string;
}

/** A double with RBAC, the install applied as an admin, and kubeconfigs of the two service accounts' bound tokens. */
async function installed(t: Test): Promise<Installed> {
  const double = await startDouble(t, { rbac: true });
  await kubectlOk(t, double, ['apply', '-k', MANIFESTS]);
  const kubeconfigs: string[] = [];
  for (const serviceAccount of ['ambit-agent', 'ambit-controller']) {
    const token = `${serviceAccount}-token`;
    const user = boundServiceAccountUser({ namespace: 'ambit-system', serviceAccount, podName: `${serviceAccount}-0`, podUid: `uid-${serviceAccount}`, nodeName: 'node1' });
    double.server.addToken(token, user);
    const file = path.join(double.dir, `${serviceAccount}.kubeconfig`);
    await double.server.writeKubeconfig(file, token, 'ambit-system');
    kubeconfigs.push(file);
  }
  const secrets = double.server.objects('v1', 'secrets');
  for (const name of ['ambit-ca', 'other']) secrets.create({ metadata: { name, namespace: 'ambit-system' }, data: { 'tls.key': 'c2VjcmV0' } });
  double.server.objects('v1', 'configmaps').create({ metadata: { name: 'ambit-trust-bundle', namespace: 'ambit-system' }, data: { 'roots.pem': 'old' } });
  return { double, agent: kubeconfigs[0] ?? '', controller: kubeconfigs[1] ?? '', agentToken: 'ambit-agent-token' };
}

/** kubectl as `kubeconfig`'s user, refused with exactly `message`. */
async function refused(t: Test, double: Double, kubeconfig: string, args: string[], message: string): Promise<void> {
  const result = await kubectl(double, args, kubeconfig);
  t.not(result.exitCode, 0, `kubectl ${args.join(' ')} is refused`);
  t.match(result.stderr, `Error from server (Forbidden): ${message}`, `kubectl ${args.join(' ')}: ${message}`);
}

t.test("the agent lists and watches pods and namespaces, and reads nothing else", { skip }, async (t) => {
  const { double, agent } = await installed(t);
  double.server.objects('v1', 'pods').create({ metadata: { name: 'web', namespace: 'default' }, spec: { nodeName: 'node1', containers: [{ name: 'app' }] } });
  t.equal((await kubectlOk(t, double, ['get', 'pods', '-A', '-o', 'name'], agent)).trim(), 'pod/web');
  t.match(await kubectlOk(t, double, ['get', 'pods', '-A', '--field-selector', 'spec.nodeName=node1', '-o', 'name'], agent), 'pod/web', "its own node's pods");
  t.same((await kubectlOk(t, double, ['get', 'namespaces', '-o', 'name'], agent)).trim().split('\n'), ['namespace/ambit-system', 'namespace/default', 'namespace/kube-system']);
  for (const resource of ['pods', 'namespaces']) {
    // the server ends the watch after a second; its first events are the objects there are
    const watched = await kubectlOk(t, double, ['get', '--raw', `/api/v1/${resource}?watch=true&timeoutSeconds=1`], agent);
    t.match(watched, /^\{"type":"ADDED"/, `a watch of ${resource}`);
  }

  await refused(t, double, agent, ['get', 'secrets'], `secrets is forbidden: User "${AGENT}" cannot list resource "secrets" in API group "" in the namespace "ambit-system"`);
  await refused(t, double, agent, ['get', 'secret', 'ambit-ca'], `secrets "ambit-ca" is forbidden: User "${AGENT}" cannot get resource "secrets" in API group "" in the namespace "ambit-system"`);
  await refused(t, double, agent, ['get', 'configmaps', '-A'], `configmaps is forbidden: User "${AGENT}" cannot list resource "configmaps" in API group "" at the cluster scope`);
  await refused(t, double, agent, ['get', 'pod', 'web', '-n', 'default'], `pods "web" is forbidden: User "${AGENT}" cannot get resource "pods" in API group "" in the namespace "default"`);
  await refused(t, double, agent, ['get', 'services', '-A'], `services is forbidden: User "${AGENT}" cannot list resource "services" in API group "" at the cluster scope`);
  await refused(t, double, agent, ['delete', 'pod', 'web', '-n', 'default'], `pods "web" is forbidden: User "${AGENT}" cannot delete resource "pods" in API group "" in the namespace "default"`);
  const review = path.join(double.dir, 'review.json');
  await writeFile(review, JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token: 'ambit-controller-token' } }));
  await refused(t, double, agent, ['create', '--raw', '/apis/authentication.k8s.io/v1/tokenreviews', '-f', review], `tokenreviews.authentication.k8s.io is forbidden: User "${AGENT}" cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope`);
});

t.test('the controller reads its CA Secret, reviews tokens, and writes its trust bundle, and nothing more', { skip }, async (t) => {
  const { double, controller, agentToken } = await installed(t);
  const secret = JSON.parse(await kubectlOk(t, double, ['get', 'secret', 'ambit-ca', '-o', 'json'], controller)) as JsonObject;
  t.same(secret.data, { 'tls.key': 'c2VjcmV0' }, 'its Secret, by name');
  t.equal((await kubectlOk(t, double, ['get', 'secrets', '--field-selector', 'metadata.name=ambit-ca', '-o', 'name'], controller)).trim(), 'secret/ambit-ca', 'a list of it alone, by its name');
  await refused(t, double, controller, ['get', 'secret', 'other'], `secrets "other" is forbidden: User "${CONTROLLER}" cannot get resource "secrets" in API group "" in the namespace "ambit-system"`);
  await refused(t, double, controller, ['get', 'secrets'], `secrets is forbidden: User "${CONTROLLER}" cannot list resource "secrets" in API group "" in the namespace "ambit-system"`);

  const review = path.join(double.dir, 'review.json');
  await writeFile(review, JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token: agentToken } }));
  const reviewed = JSON.parse(await kubectlOk(t, double, ['create', '--raw', '/apis/authentication.k8s.io/v1/tokenreviews', '-f', review], controller)) as JsonObject;
  t.match(reviewed.status, { authenticated: true, user: { username: AGENT } }, 'a TokenReview of the agent');

  const bundle = path.join(double.dir, 'bundle.yaml');
  await writeFile(bundle, 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ambit-trust-bundle, namespace: ambit-system}\ndata: {roots.pem: new}\n');
  t.match(await kubectlOk(t, double, ['replace', '-f', bundle], controller), 'configmap/ambit-trust-bundle replaced');
  t.same(double.server.objects('v1', 'configmaps').get('ambit-trust-bundle', 'ambit-system')?.data, { 'roots.pem': 'new' });
  const params = path.join(double.dir, 'params.yaml');
  await writeFile(params, 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ambit-install-params, namespace: ambit-system}\ndata: {nodeCIDR: 0.0.0.0/0}\n');
  await refused(t, double, controller, ['replace', '-f', params], `error when replacing "${params}": configmaps "ambit-install-params" is forbidden: User "${CONTROLLER}" cannot update resource "configmaps" in API group "" in the namespace "ambit-system"`);
  await refused(t, double, controller, ['label', 'configmap', 'ambit-trust-bundle', 'x=y'], `configmaps "ambit-trust-bundle" is forbidden: User "${CONTROLLER}" cannot patch resource "configmaps" in API group "" in the namespace "ambit-system"`);
  await refused(t, double, controller, ['delete', 'configmap', 'ambit-trust-bundle'], `configmaps "ambit-trust-bundle" is forbidden: User "${CONTROLLER}" cannot delete resource "configmaps" in API group "" in the namespace "ambit-system"`);
  await kubectlOk(t, double, ['get', 'authorizationpolicies', '-A'], controller);
});

t.test('a refusal is the Status kube-apiserver sends; discovery is every authenticated user’s; a binding to a missing role says so', async (t) => {
  const double = await startDouble(t, { rbac: true });
  const user = boundServiceAccountUser({ namespace: 'ambit-system', serviceAccount: 'ambit-agent', podName: 'p', podUid: 'u' });
  double.server.addToken('unbound', user);
  const client = double.client.withToken('unbound');
  const reply = await client.get('/api/v1/namespaces');
  t.equal(reply.status, 403);
  t.same(reply.body, {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message: `namespaces is forbidden: User "${AGENT}" cannot list resource "namespaces" in API group "" at the cluster scope`,
    reason: 'Forbidden',
    details: { kind: 'namespaces' },
    code: 403,
  });
  for (const discovery of ['/version', '/api', '/api/v1', '/apis', '/apis/apps/v1', '/openapi/v3', '/openapi/v3/api/v1']) {
    t.equal((await client.get(discovery)).status, 200, `${discovery}: system:discovery`);
  }
  t.match(await client.get('/logs'), { status: 403, body: { message: `forbidden: User "${AGENT}" cannot get path "/logs"`, details: {} } });
  t.equal((await client.get('/api/v1/namespaces/default/pods?watch=true')).status, 403, 'a watch is its own verb');

  const rbac = '/apis/rbac.authorization.k8s.io/v1';
  await double.client.request('POST', `${rbac}/namespaces/default/rolebindings`, {
    metadata: { name: 'reader' },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'pod-reader' },
    subjects: [{ kind: 'ServiceAccount', name: 'ambit-agent', namespace: 'ambit-system' }],
  });
  const missing = await client.get('/api/v1/namespaces/default/pods');
  t.match(missing.body, { message: `pods is forbidden: User "${AGENT}" cannot list resource "pods" in API group "" in the namespace "default": RBAC: role.rbac.authorization.k8s.io "pod-reader" not found` });
  await double.client.request('POST', `${rbac}/namespaces/default/roles`, { metadata: { name: 'pod-reader' }, rules: [{ apiGroups: [''], resources: ['pods'], verbs: ['list'] }] });
  t.equal((await client.get('/api/v1/namespaces/default/pods')).status, 200, 'once the Role exists, its binding allows');
  t.equal((await client.get('/api/v1/namespaces/kube-system/pods')).status, 403, 'in its own namespace only');
  t.equal((await client.get('/api/v1/namespaces/default/pods/x')).status, 403, 'list is not get');
});
