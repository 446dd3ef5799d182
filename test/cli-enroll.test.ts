/**
 * `ambit enroll` and `ambit unenroll` (issue 15, step 3): the built CLI against the API server double, each change
 * read back with kubectl, and each bad input a clear error that leaves the cluster as it was.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import yaml from 'js-yaml';
import t, { type Test } from 'tap';
import { ENROLL_LABEL, ISTIO_DATAPLANE_LABEL } from '../core/enrollment/index.js';
import { ambit, kubectl } from './mesh/ambit-install.js';
import { ADMIN_TOKEN, startDouble, type Double } from './mesh/apiserver-client.js';
import { needsTools } from './prerequisites.js';

const skip = needsTools(['kubectl'], 'reads back what the CLI changed, as a real client');

/** A double with namespace `team-a` (labelled `team=a`), and the requests that change something, as they come. */
async function setup(t: Test) {
  const double = await startDouble(t);
  double.server.objects('v1', 'namespaces').create({ metadata: { name: 'team-a', labels: { team: 'a' } } });
  const writes: string[] = [];
  double.server.on('request', (method, requestPath) => {
    if (method !== 'GET') writes.push(`${method} ${requestPath}`);
  });
  const run = (args: string[], env: Record<string, string> = {}) => ambit(args, { home: double.dir, env });
  return { double, writes, run };
}

async function labelsOf(t: Test, double: Double, namespace: string): Promise<Record<string, string>> {
  const got = await kubectl(double.kubeconfig, path.join(double.dir, 'cache'), ['get', 'namespace', namespace, '-o', 'json']);
  t.equal(got.code, 0, `kubectl get namespace ${namespace}${got.stderr === '' ? '' : `: ${got.stderr}`}`);
  return (JSON.parse(got.stdout) as { metadata: { labels?: Record<string, string> } }).metadata.labels ?? {};
}

t.test('enroll labels the namespace, keeps its other labels, and says so; again, it changes nothing', { skip }, async (t) => {
  const { double, writes, run } = await setup(t);
  const enrolled = await run(['enroll', 'team-a', '--kubeconfig', double.kubeconfig]);
  t.match(enrolled, { code: 0, stdout: /^namespace team-a enrolled \(ambit\.dev\/mode=enabled\)\n$/ });
  t.same(await labelsOf(t, double, 'team-a'), { team: 'a', [ENROLL_LABEL]: 'enabled' }, 'kubectl sees the label, and the other label kept');
  t.same(writes, ['PATCH /api/v1/namespaces/team-a'], 'one patch of the namespace');

  const again = await run(['enroll', 'team-a', '--kubeconfig', double.kubeconfig]);
  t.match(again, { code: 0, stdout: /namespace team-a is already enrolled \(ambit\.dev\/mode=enabled\); nothing to change/ });
  t.equal(writes.length, 1, 'and sends no second patch');
});

t.test('unenroll removes the label; a namespace that stays enrolled through Istio\'s label is said so, exit 1', { skip }, async (t) => {
  const { double, run } = await setup(t);
  double.server.objects('v1', 'namespaces').patch('team-a', { metadata: { labels: { [ENROLL_LABEL]: 'enabled' } } });
  const out = await run(['unenroll', 'team-a', '--kubeconfig', double.kubeconfig]);
  t.match(out, { code: 0, stdout: /^namespace team-a unenrolled \(ambit\.dev\/mode=enabled removed\)\n$/ });
  t.same(await labelsOf(t, double, 'team-a'), { team: 'a' }, 'kubectl sees the label gone');
  t.match(await run(['unenroll', 'team-a', '--kubeconfig', double.kubeconfig]), { code: 0, stdout: /has no ambit\.dev\/mode label; nothing to change/ });

  double.server.objects('v1', 'namespaces').patch('team-a', { metadata: { labels: { [ENROLL_LABEL]: 'enabled', [ISTIO_DATAPLANE_LABEL]: 'ambient' } } });
  const istio = await run(['unenroll', 'team-a', '--kubeconfig', double.kubeconfig]);
  t.equal(istio.code, 1, 'still enrolled: not done');
  t.match(istio.stdout, /unenrolled \(ambit\.dev\/mode=enabled removed\); it stays enrolled through istio\.io\/dataplane-mode=ambient/);
  t.match(istio.stdout, /kubectl label namespace team-a istio\.io\/dataplane-mode-/, 'and says how to finish');
  t.same(await labelsOf(t, double, 'team-a'), { team: 'a', [ISTIO_DATAPLANE_LABEL]: 'ambient' }, "Istio's label is left to its owner");
});

t.test("enroll of a namespace enrolled through Istio's label says so, and adds Ambit's", { skip }, async (t) => {
  const { double, run } = await setup(t);
  double.server.objects('v1', 'namespaces').patch('team-a', { metadata: { labels: { [ISTIO_DATAPLANE_LABEL]: 'ambient' } } });
  const out = await run(['enroll', 'team-a', '--kubeconfig', double.kubeconfig]);
  t.match(out, { code: 0, stdout: /enrolled \(ambit\.dev\/mode=enabled\); it was already enrolled through istio\.io\/dataplane-mode=ambient/ });
  t.same(await labelsOf(t, double, 'team-a'), { team: 'a', [ISTIO_DATAPLANE_LABEL]: 'ambient', [ENROLL_LABEL]: 'enabled' });
});

t.test('--dry-run -o yaml|json prints the Namespace as it would be applied, and changes nothing', { skip }, async (t) => {
  const { double, writes, run } = await setup(t);
  const asYaml = await run(['enroll', 'team-a', '--dry-run', '-o', 'yaml', '--kubeconfig', double.kubeconfig]);
  t.equal(asYaml.code, 0, asYaml.stderr);
  t.same(yaml.load(asYaml.stdout), { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'team-a', labels: { team: 'a', [ENROLL_LABEL]: 'enabled' } } }, 'a manifest for GitOps');
  t.match(asYaml.stderr, /dry run, nothing changed: namespace team-a would be enrolled/, 'the words go to stderr, the manifest alone to stdout');
  t.same(await labelsOf(t, double, 'team-a'), { team: 'a' }, 'the namespace is as it was');

  double.server.objects('v1', 'namespaces').patch('team-a', { metadata: { labels: { [ENROLL_LABEL]: 'enabled' } } });
  const asJson = await run(['unenroll', 'team-a', '--dry-run', '--output', 'json', '--kubeconfig', double.kubeconfig]);
  t.equal(asJson.code, 0, asJson.stderr);
  t.same(JSON.parse(asJson.stdout), { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'team-a', labels: { team: 'a' } } });
  t.same(await labelsOf(t, double, 'team-a'), { team: 'a', [ENROLL_LABEL]: 'enabled' }, 'still enrolled');
  t.match(await run(['enroll', 'team-a', '--dry-run', '--kubeconfig', double.kubeconfig]), { code: 0, stdout: /already enrolled/ }, 'text output of a dry run');
  t.same(writes, [], 'no dry run sent a write');

  const real = await run(['unenroll', 'team-a', '-o', 'json', '--kubeconfig', double.kubeconfig]);
  t.same(JSON.parse(real.stdout), { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'team-a', labels: { team: 'a' } } }, 'without --dry-run, -o prints what the server applied');
});

t.test('a namespace that does not exist: exit 1, a clear message, nothing created', { skip }, async (t) => {
  const { double, writes, run } = await setup(t);
  for (const command of ['enroll', 'unenroll']) {
    const out = await run([command, 'nope', '--kubeconfig', double.kubeconfig]);
    t.equal(out.code, 1, `${command}: exit 1`);
    t.match(out.stderr, /namespace nope does not exist on https:\/\/127\.0\.0\.1:\d+; nothing was changed \(create it first: kubectl create namespace nope\)/);
  }
  t.same(writes, [], 'nothing was written');
  const got = await kubectl(double.kubeconfig, path.join(double.dir, 'cache'), ['get', 'namespace', 'nope']);
  t.match(got, { code: 1, stderr: /namespaces "nope" not found/ }, 'kubectl finds no namespace nope');
});

t.test("the mesh's own namespace and kube-system are refused, before anything is sent", { skip }, async (t) => {
  const { double, run } = await setup(t);
  const requests: string[] = [];
  double.server.on('request', (method, requestPath) => requests.push(`${method} ${requestPath}`));
  const root = await run(['enroll', 'ambit-system', '--kubeconfig', double.kubeconfig]);
  t.match(root, { code: 2, stderr: /namespace ambit-system is the mesh's own namespace: its pods \(the controller, waypoints\) are never enrolled/ });
  const system = await run(['enroll', 'kube-system', '--dry-run', '--kubeconfig', double.kubeconfig]);
  t.match(system, { code: 2, stderr: /namespace kube-system holds the cluster's own components/ });
  t.same(requests, [], 'no request reached the API server');
});

t.test('bad usage exits 2 and says what is wrong', async (t) => {
  const home = path.join(t.testdirName, 'home');
  const run = (args: string[]) => ambit(args, { home });
  t.match(await run(['enroll']), { code: 2, stderr: /give one namespace: ambit enroll NAMESPACE \(see ambit enroll --help\)/ });
  t.match(await run(['unenroll', 'a', 'b']), { code: 2, stderr: /give one namespace: ambit unenroll NAMESPACE \(got a b\)/ });
  t.match(await run(['enroll', 'Team_A']), { code: 2, stderr: /"Team_A" is not a namespace name/ });
  t.match(await run(['enroll', 'team-a', '-o', 'xml']), { code: 2, stderr: /--output xml is not text, yaml or json/ });
  t.match(await run(['enroll', 'team-a', '--force']), { code: 2, stderr: /Unknown option '--force'/ });
  t.match(await run(['enroll', '--help']), { code: 0, stdout: /Usage: ambit enroll NAMESPACE/ });
  t.match(await run(['unenroll', '-h']), { code: 0, stdout: /--dry-run/ });
});

t.test('a kubeconfig that cannot be read: exit 2, the path named, nothing sent', { skip }, async (t) => {
  const { double, writes, run } = await setup(t);
  const requests: string[] = [];
  double.server.on('request', (method, requestPath) => requests.push(`${method} ${requestPath}`));
  const missing = path.join(double.dir, 'no-such-kubeconfig');
  t.match(await run(['enroll', 'team-a', '--kubeconfig', missing]), { code: 2, stderr: new RegExp(`cannot load kubeconfig ${missing}: ENOENT`) });
  t.match(await run(['enroll', 'team-a'], { KUBECONFIG: missing }), { code: 2, stderr: new RegExp(`cannot load kubeconfig ${missing}`) }, 'from KUBECONFIG too');
  const garbage = path.join(double.dir, 'garbage');
  await writeFile(garbage, 'clusters: [unterminated\n');
  t.match(await run(['enroll', 'team-a', '--kubeconfig', garbage]), { code: 2, stderr: new RegExp(`cannot load kubeconfig ${garbage}`) }, 'one that does not parse');
  t.match(await run(['enroll', 'team-a'], { KUBECONFIG: `${double.kubeconfig}:${missing}` }), { code: 2, stderr: /KUBECONFIG lists 2 files .*; ambit reads one: pass --kubeconfig PATH/ });
  t.match(await run(['enroll', 'team-a', '--kubeconfig', double.kubeconfig, '--context', 'prod']), { code: 2, stderr: /has no context prod \(it has: ambit-double\)/ });
  t.match(await run(['enroll', 'team-a']), { code: 2, stderr: /no kubeconfig: --kubeconfig is not given, KUBECONFIG is not set, .*\.kube\/config does not exist, and this is not a pod/ });
  const url = new URL(double.server.url);
  const pod = { KUBERNETES_SERVICE_HOST: url.hostname, KUBERNETES_SERVICE_PORT: url.port, AMBIT_SERVICE_ACCOUNT_DIR: path.join(double.dir, 'serviceaccount') };
  t.match(await run(['enroll', 'team-a'], pod), { code: 2, stderr: /cannot read the cluster CA .*serviceaccount\/ca\.crt/ }, "in a pod, the service account's files");
  t.same(requests, [], 'no request reached the API server');
  t.same(await labelsOf(t, double, 'team-a'), { team: 'a' });

  await mkdir(pod.AMBIT_SERVICE_ACCOUNT_DIR);
  await writeFile(path.join(pod.AMBIT_SERVICE_ACCOUNT_DIR, 'ca.crt'), double.server.caPem);
  await writeFile(path.join(pod.AMBIT_SERVICE_ACCOUNT_DIR, 'token'), `${ADMIN_TOKEN}\n`);
  t.match(await run(['enroll', 'team-a', '--dry-run'], pod), { code: 0, stdout: /dry run, nothing changed: namespace team-a would be enrolled/ }, 'in a pod, with no kubeconfig: its service account');

  await mkdir(path.join(double.dir, '.kube'));
  await double.server.writeKubeconfig(path.join(double.dir, '.kube', 'config'), ADMIN_TOKEN);
  t.match(await run(['enroll', 'team-a', '--context', 'ambit-double']), { code: 0, stdout: /enrolled/ }, 'without flags, ~/.kube/config; --context names one of its contexts');
  t.same(writes, ['PATCH /api/v1/namespaces/team-a']);
});

t.test('a refused permission names it (verb, resource, group, namespace); kubectl gets the same refusal', { skip }, async (t) => {
  const { double, writes, run } = await setup(t);
  double.server.addToken('alice-token', { username: 'alice', groups: ['system:authenticated'] });
  const alice = path.join(double.dir, 'alice.kubeconfig');
  await double.server.writeKubeconfig(alice, 'alice-token');
  double.server.denyAccess('alice', { verb: 'patch', resource: 'namespaces' });

  const out = await run(['enroll', 'team-a', '--kubeconfig', alice]);
  t.equal(out.code, 1);
  t.match(out.stderr, /missing permission: patch on namespaces \(core group ""\) for the namespace "team-a"/, 'the permission, as the CLI asked for it');
  t.match(out.stderr, /namespaces "team-a" is forbidden: User "alice" cannot patch resource "namespaces" in API group "" in the namespace "team-a"/, "and the server's words");
  t.match(out.stderr, /check with: kubectl auth can-i patch namespaces\/team-a/);
  t.same(await labelsOf(t, double, 'team-a'), { team: 'a' }, 'the namespace is as it was');
  t.same(writes, ['PATCH /api/v1/namespaces/team-a'], 'the one refused patch');

  const label = await kubectl(alice, path.join(double.dir, 'alice-cache'), ['label', 'namespace', 'team-a', 'x=y']);
  t.match(label, { code: 1, stderr: /Error from server \(Forbidden\): namespaces "team-a" is forbidden: User "alice" cannot patch resource "namespaces" in API group "" in the namespace "team-a"/ }, 'kubectl reads the refusal as a real one');

  double.server.denyAccess('alice', { verb: 'get', resource: 'namespaces' });
  t.match(await run(['unenroll', 'team-a', '--dry-run', '--kubeconfig', alice]), { code: 1, stderr: /missing permission: get on namespaces \(core group ""\) for the namespace "team-a"/ }, 'a dry run needs only get');
});
