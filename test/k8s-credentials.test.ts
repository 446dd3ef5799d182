/**
 * Credentials for the API server: a pod's service account (the kubelet's environment and mounted token and CA, read
 * without client-node) and a kubeconfig file (client-node), each used against the API server double. Bad input is a
 * clear error at load, before any request.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { KubeApi, loadKubeConfig } from '../core/k8s/index.js';
import { ApiServer } from '../testbed/index.js';

async function setup(t: Test) {
  const api = await ApiServer.start();
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-credentials-'));
  t.teardown(async () => {
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });
  api.addToken('first-token', { username: 'system:serviceaccount:ambit-system:ambit-agent' });
  api.addToken('rotated-token', { username: 'system:serviceaccount:ambit-system:ambit-agent' });
  await writeFile(path.join(dir, 'token'), 'first-token\n');
  await writeFile(path.join(dir, 'ca.crt'), api.caPem);
  const url = new URL(api.url);
  const env = { KUBERNETES_SERVICE_HOST: url.hostname, KUBERNETES_SERVICE_PORT: url.port };
  return { api, dir, env };
}

/** GETs the namespace list with `api`; resolves with the status code. */
async function status(api: KubeApi): Promise<number | undefined> {
  const { response, release } = await api.get('/api/v1/namespaces', new URLSearchParams(), AbortSignal.timeout(5000));
  release();
  return response.statusCode;
}

t.test("a pod's service account: the server from the environment, the mounted CA and token, the token re-read for each request", async (t) => {
  const { api, dir, env } = await setup(t);
  const credentials = await loadKubeConfig({ inCluster: true, serviceAccountDir: dir, env });
  t.equal(credentials.server.origin, api.url);
  const kube = new KubeApi(credentials);
  t.equal(await status(kube), 200, 'the double verifies the token, and the client the double by the mounted CA');
  await writeFile(path.join(dir, 'token'), 'rotated-token\n');
  t.equal(await status(kube), 200, 'the rotated token is the one sent');
  await writeFile(path.join(dir, 'token'), 'nobody-knows-this\n');
  t.equal(await status(kube), 401, 'a token the server does not know is refused (so the token file is read each time)');
});

t.test('an IPv6 service address is bracketed in the URL', async (t) => {
  const { dir } = await setup(t);
  const credentials = await loadKubeConfig({ inCluster: true, serviceAccountDir: dir, env: { KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '443' } });
  t.equal(credentials.server.href, 'https://[fd00::1]/');
});

t.test('bad input: each a clear error at load', async (t) => {
  const { dir, env } = await setup(t);
  await t.rejects(loadKubeConfig({ inCluster: true, serviceAccountDir: dir, env: {} }), { code: 'K8S_NOT_IN_CLUSTER', message: /KUBERNETES_SERVICE_HOST/ });
  await t.rejects(loadKubeConfig({ inCluster: true, serviceAccountDir: path.join(dir, 'nothing'), env }), { code: 'K8S_NOT_IN_CLUSTER', message: /cluster CA/ });
  await writeFile(path.join(dir, 'token'), '\n');
  await t.rejects(loadKubeConfig({ inCluster: true, serviceAccountDir: dir, env }), { code: 'K8S_NOT_IN_CLUSTER', message: /token .* is empty/ });
  await t.rejects(loadKubeConfig({ kubeconfig: path.join(dir, 'missing') }), { code: 'K8S_KUBECONFIG', message: /cannot load kubeconfig/ });
  await writeFile(path.join(dir, 'no-context'), 'apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n');
  await t.rejects(loadKubeConfig({ kubeconfig: path.join(dir, 'no-context') }), { code: 'K8S_KUBECONFIG', message: /no current context/ });
});

t.test('a kubeconfig file, through client-node', async (t) => {
  const { api, dir } = await setup(t);
  await api.writeKubeconfig(path.join(dir, 'kubeconfig'), 'first-token');
  const kube = new KubeApi(await loadKubeConfig({ kubeconfig: path.join(dir, 'kubeconfig') }));
  t.equal(await status(kube), 200);
});
