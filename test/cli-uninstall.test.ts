/**
 * `ambit uninstall`'s refusals (issue 15), on the API server double with Ambit installed from the rendered manifests:
 * each refuses before it changes anything. The flow itself runs on the testbed (e2e-uninstall, e2e-readme-install).
 */
import t from 'tap';
import { AGENT_DAEMONSET_NAME, AGENT_SERVICE_ACCOUNT_NAME, DEFAULT_ROOT_NAMESPACE, UNINSTALL_ANNOTATION } from '../core/enrollment/index.js';
import type { ApiServer } from '../testbed/apiserver/index.js';
import { ambit, installAmbit } from './mesh/ambit-install.js';
import { startDouble } from './mesh/apiserver-client.js';
import { needsTools } from './prerequisites.js';

/** `ambit uninstall`'s marker on the agents' ServiceAccount, as the double holds it. */
const marker = (server: ApiServer): string | undefined => (server.objects('v1', 'serviceaccounts').get(AGENT_SERVICE_ACCOUNT_NAME, DEFAULT_ROOT_NAMESPACE)?.metadata as { annotations?: Record<string, string> } | undefined)?.annotations?.[UNINSTALL_ANNOTATION];

const skip = needsTools(['kubectl'], 'renders the manifests the install is made from');

t.test('the agent DaemonSet gone (a bare delete): refused, nothing changed, and it says how to finish', { skip }, async (t) => {
  const double = await startDouble(t);
  await installAmbit(double.server, { nodes: ['node1'] });
  double.server.objects('apps/v1', 'daemonsets').delete(AGENT_DAEMONSET_NAME, DEFAULT_ROOT_NAMESPACE);
  const result = await ambit(['uninstall', '--kubeconfig', double.kubeconfig, '-o', 'json'], { home: double.dir });
  t.equal(result.code, 1);
  const report = JSON.parse(result.stdout) as { ok: boolean; deleted: string[]; message: string };
  t.match(report, { ok: false, deleted: [], message: /DaemonSet ambit-system\/ambit-agent is gone.*Re-apply the install \(kubectl apply -k manifests\/\).*Nothing was changed\./ });
  t.ok(double.server.objects('v1', 'namespaces').get(DEFAULT_ROOT_NAMESPACE), 'ambit-system is still there');
});

t.test('a permission the uninstall needs is missing: refused before the mesh is marked, naming it', { skip }, async (t) => {
  const double = await startDouble(t);
  await installAmbit(double.server, { nodes: ['node1'] });
  double.server.denyAccess('admin', { verb: 'delete', resource: 'namespaces' });
  const result = await ambit(['uninstall', '--kubeconfig', double.kubeconfig, '-o', 'json'], { home: double.dir });
  t.equal(result.code, 1);
  const report = JSON.parse(result.stdout) as { ok: boolean; deleted: string[]; message: string };
  t.match(report, { ok: false, deleted: [], message: /missing delete on namespaces \(core group ""\) for the namespace "ambit-system".*Nothing was changed/ });
  t.equal(marker(double.server), undefined, 'the mesh was not marked');
});

t.test("without get on pods/proxy no agent's status could be read: refused before the mesh is marked", { skip }, async (t) => {
  const double = await startDouble(t);
  await installAmbit(double.server, { nodes: ['node1'] });
  double.server.denyAccess('admin', { verb: 'get', resource: 'pods', subresource: 'proxy', namespace: DEFAULT_ROOT_NAMESPACE });
  const result = await ambit(['uninstall', '--kubeconfig', double.kubeconfig, '-o', 'json'], { home: double.dir });
  t.equal(result.code, 1);
  t.match(JSON.parse(result.stdout), { ok: false, deleted: [], message: /missing get on pods\/proxy \(core group ""\) in the namespace "ambit-system".*Nothing was changed/ });
  t.equal(marker(double.server), undefined, 'the mesh was not marked');
  // and what the review said is what the request meets: the proxy itself is refused
  const status = await ambit(['status', '--kubeconfig', double.kubeconfig, '-o', 'json'], { home: double.dir });
  t.match(JSON.parse(status.stdout), { ok: false, nodes: [{ node: 'node1', ok: false, error: /missing permission: get on pods\/proxy.*kubectl auth can-i get pods\/ambit-agent-node1 --subresource=proxy -n ambit-system/ }] });
});

t.test('bad usage exits 2 and changes nothing', async (t) => {
  const home = t.testdir();
  t.match(await ambit(['uninstall', '--timeout', '0'], { home }), { code: 2, stderr: /--timeout 0: a whole number of seconds from 1 to 3600/ });
  t.match(await ambit(['uninstall', '--check', '--purge'], { home }), { code: 2, stderr: /--purge does not apply to --check/ });
  t.match(await ambit(['uninstall', '--run-dir', '/x'], { home }), { code: 2, stderr: /--run-dir applies to --check only/ });
});
