/**
 * The install as an operator types it (issue 15): `kubectl apply -k manifests/` against the API server double, with
 * kubectl's own validation (it reads the double's OpenAPI v3 documents and sends fieldValidation=Strict), again
 * (unchanged), changed (a three-way strategic merge patch), and `kubectl delete -k manifests/`. Around it, what the
 * install leans on: the CustomResourceDefinitions that define kinds and validate their objects, field validation,
 * strategic merge patch, and namespace deletion.
 */
import { cp, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import yaml from 'js-yaml';
import t from 'tap';
import { strategicMergePatch } from '../testbed/apiserver/strategic-merge.js';
import type { JsonObject } from '../testbed/index.js';
import { startDouble, type Double } from './mesh/apiserver-client.js';
import { kubectl, kubectlOk } from './mesh/kubectl.js';
import { needsTools } from './prerequisites.js';

const MANIFESTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'manifests');
const skip = needsTools(['kubectl'], 'the install is run with the real client');

async function rendered(t: Parameters<typeof kubectlOk>[0], double: Double, dir: string): Promise<JsonObject[]> {
  return yaml.loadAll(await kubectlOk(t, double, ['kustomize', dir])) as JsonObject[];
}

function meta(object: JsonObject | undefined): JsonObject {
  return (object?.metadata ?? {}) as JsonObject;
}

/** How kubectl names an object in its output: `daemonset.apps/ambit-agent`, `namespace/ambit-system`. */
function printed(object: JsonObject): string {
  const apiVersion = String(object.apiVersion);
  const group = apiVersion.includes('/') ? `.${apiVersion.split('/')[0] ?? ''}` : '';
  return `${String(object.kind).toLowerCase()}${group}/${String(meta(object).name)}`;
}

/** An object without what the server owns, to compare with what was applied. */
function applied(object: JsonObject): JsonObject {
  const { status: _status, ...rest } = object;
  const { uid: _u, resourceVersion: _r, generation: _g, creationTimestamp: _c, annotations: _a, ...metadata } = meta(object);
  return { ...rest, metadata };
}

t.test('kubectl apply -k manifests/ creates everything, a second apply changes nothing, kubectl delete -k removes it all', { skip }, async (t) => {
  const double = await startDouble(t);
  const objects = await rendered(t, double, MANIFESTS);
  const requests: string[] = [];
  double.server.on('request', (method, requestPath, query) => requests.push(`${method} ${requestPath}?${query.toString()}`));

  const first = await kubectlOk(t, double, ['apply', '-k', MANIFESTS]);
  t.same(first.trim().split('\n'), objects.map((o) => `${printed(o)} created`), 'every object of the kustomization created, in its order');
  t.ok(requests.includes('GET /openapi/v3?timeout=32s'), 'kubectl read the OpenAPI v3 index to learn that the server validates fields');
  t.notOk(requests.some((r) => r.startsWith('GET /openapi/v2')), 'and needed no OpenAPI v2 (client-side validation)');
  const writes = requests.filter((r) => r.startsWith('POST ') || r.startsWith('PATCH '));
  t.equal(writes.length, objects.length);
  t.ok(writes.every((r) => r.includes('fieldValidation=Strict')), 'every create asked for strict server-side field validation');

  const live = (JSON.parse(await kubectlOk(t, double, ['get', '-k', MANIFESTS, '-o', 'json'])) as JsonObject).items as JsonObject[];
  t.equal(live.length, objects.length);
  for (const [i, object] of objects.entries()) {
    const stored = live[i] ?? {};
    t.same(applied(stored), applied(object), `${printed(object)} stored as applied`);
    const annotation = String(((meta(stored).annotations ?? {}) as JsonObject)['kubectl.kubernetes.io/last-applied-configuration']);
    t.same(applied(JSON.parse(annotation) as JsonObject), applied(object), `${printed(object)} carries its last-applied configuration`);
  }

  t.match(await kubectlOk(t, double, ['wait', '--for', 'condition=Established', 'crd/authorizationpolicies.security.ambit.dev', 'crd/peerauthentications.security.ambit.dev']), /condition met/);
  t.same((await kubectlOk(t, double, ['api-resources', '--api-group', 'security.ambit.dev', '-o', 'name'])).trim().split('\n'), [
    'authorizationpolicies.security.ambit.dev',
    'peerauthentications.security.ambit.dev',
  ], 'the CRDs made their kinds served');
  const none = await kubectl(double, ['get', 'authorizationpolicies', '-A']);
  t.equal(none.exitCode, 0, none.stderr);
  t.match(none.stderr, /No resources found/);

  const second = await kubectlOk(t, double, ['apply', '-k', MANIFESTS]);
  // A PodDisruptionBudget's selector is tagged patchStrategy "replace": kubectl's three-way patch always carries it,
  // so it prints "configured" for a PDB on every apply, against a real cluster too.
  const pdb = (o: JsonObject): boolean => o.kind === 'PodDisruptionBudget';
  t.same(second.trim().split('\n'), objects.map((o) => `${printed(o)} ${pdb(o) ? 'configured' : 'unchanged'}`), 'the second apply changes nothing');

  const deleted = await kubectlOk(t, double, ['delete', '-k', MANIFESTS]);
  const deletedName = (o: JsonObject): string => {
    const name = printed(o);
    const slash = name.indexOf('/');
    return `${name.slice(0, slash)} "${name.slice(slash + 1)}" deleted`;
  };
  t.same(deleted.trim().split('\n'), objects.map(deletedName), 'every object deleted, those in ambit-system after the namespace (still Terminating)');
  t.equal(await kubectlOk(t, double, ['get', '-k', MANIFESTS, '--ignore-not-found', '-o', 'name']), '', 'nothing of the install is left');
  t.equal(double.server.objects('v1', 'namespaces').get('ambit-system'), undefined, 'kubectl waited for the namespace to go');
  t.equal((await double.client.get('/apis/security.ambit.dev/v1')).status, 404, 'the kinds went with their CRDs');
  const gone = await kubectl(double, ['get', 'authorizationpolicies', '-A']);
  t.not(gone.exitCode, 0);
  // kubectl's discovery cache still names the kind, so it asks, and is told the resource is gone
  t.match(gone.stderr, /the server could not find the requested resource \(\/apis\/security\.ambit\.dev\/v1\/authorizationpolicies\)/);
});

t.test('a changed manifest is applied as a three-way strategic merge: lists merge by key, a third party keeps its additions', { skip }, async (t) => {
  const double = await startDouble(t);
  const dir = path.join(double.dir, 'manifests');
  await cp(MANIFESTS, dir, { recursive: true });
  await kubectlOk(t, double, ['apply', '-k', dir]);
  const daemonSets = double.server.objects('apps/v1', 'daemonsets');
  const agentOf = (ds: JsonObject | undefined): JsonObject =>
    ((((ds?.spec as JsonObject).template as JsonObject).spec as JsonObject).containers as JsonObject[]).find((c) => c.name === 'agent') ?? {};
  // another writer (an operator's `kubectl set env`, a controller) adds a variable the manifest does not have
  const current = daemonSets.get('ambit-agent', 'ambit-system');
  const withExtra = structuredClone(current) as JsonObject;
  (agentOf(withExtra).env as JsonObject[]).push({ name: 'EXTRA', value: 'kept' });
  daemonSets.update(withExtra);

  const file = path.join(dir, 'agent.yaml');
  const text = await readFile(file, 'utf8');
  const changed = text
    .replace('--log-level, info]', '--log-level, debug]')
    .replace("            - {name: MALLOC_ARENA_MAX, value: '1'}\n", '')
    .replace('            - {name: readiness, containerPort: 15021}\n', '            - {name: readiness, containerPort: 15021}\n            - {name: admin, containerPort: 15000}\n')
    .replace('    type: RollingUpdate\n    rollingUpdate:\n      maxUnavailable: 1\n', '    type: OnDelete\n');
  t.not(changed, text);
  t.equal(changed.split('\n').length, text.split('\n').length - 2, 'the four edits were made (one line gone, one added, two of updateStrategy gone)');
  await writeFile(file, changed);

  const output = await kubectlOk(t, double, ['apply', '-k', dir]);
  t.match(output, /^daemonset\.apps\/ambit-agent configured$/m);
  t.match(output, /^deployment\.apps\/ambit-controller unchanged$/m);
  const wanted = (await rendered(t, double, dir)).find((o) => o.kind === 'DaemonSet') ?? {};
  (agentOf(wanted).env as JsonObject[]).push({ name: 'EXTRA', value: 'kept' });
  const stored = daemonSets.get('ambit-agent', 'ambit-system');
  t.same(stored?.spec, wanted.spec, "the new manifest's spec, with the other writer's variable kept at the end");
  t.same((stored?.spec as JsonObject).updateStrategy, { type: 'OnDelete' }, '$retainKeys dropped rollingUpdate');
  t.same(
    (agentOf(stored).ports as JsonObject[]).map((p) => p.containerPort),
    [15008, 15020, 15021, 15000],
    'a port added to a list merged on containerPort, in the order of the file',
  );
});

t.test('strategic merge patch: merge keys and every directive kubectl sends', async (t) => {
  const pod: JsonObject = {
    metadata: { name: 'p', finalizers: ['a', 'b'], labels: { x: '1' } },
    spec: {
      containers: [
        { name: 'app', image: 'app:1', args: ['--one', '--two'], env: [{ name: 'A', value: '1' }, { name: 'B', value: '2' }] },
        { name: 'sidecar', image: 'side:1' },
      ],
      volumes: [{ name: 'data', emptyDir: {} }],
    },
  };
  const containers = (p: JsonObject): JsonObject[] => (p.spec as JsonObject).containers as JsonObject[];

  const image = strategicMergePatch(pod, { spec: { containers: [{ name: 'sidecar', image: 'side:2' }] } }, 'Pod');
  t.same(containers(image).map((c) => [c.name, c.image]), [['app', 'app:1'], ['sidecar', 'side:2']], 'a container merged by name; the other stays');
  t.same(containers(image)[0], containers(pod)[0], 'untouched: its fields are the live ones');

  const args = strategicMergePatch(pod, { spec: { containers: [{ name: 'app', args: ['--three'] }] } }, 'Pod');
  t.same(containers(args)[0]?.args, ['--three'], 'args, an untagged list, is replaced whole');

  const env = strategicMergePatch(pod, { spec: { containers: [{ name: 'app', env: [{ name: 'A', $patch: 'delete' }, { name: 'C', value: '3' }], '$setElementOrder/env': [{ name: 'C' }, { name: 'B' }] }] } }, 'Pod');
  t.same(containers(env)[0]?.env, [{ name: 'C', value: '3' }, { name: 'B', value: '2' }], '$patch: delete removes by key, $setElementOrder orders');

  const order = strategicMergePatch(pod, { spec: { '$setElementOrder/containers': [{ name: 'sidecar' }, { name: 'app' }] } }, 'Pod');
  t.same(containers(order).map((c) => c.name), ['sidecar', 'app'], '$setElementOrder alone reorders');

  const volume = strategicMergePatch(pod, { spec: { volumes: [{ name: 'data', $retainKeys: ['configMap', 'name'], configMap: { name: 'cm' } }] } }, 'Pod');
  t.same((volume.spec as JsonObject).volumes, [{ name: 'data', configMap: { name: 'cm' } }], '$retainKeys drops the other source');

  const finalizers = strategicMergePatch(pod, { metadata: { '$deleteFromPrimitiveList/finalizers': ['a'], finalizers: ['c'] } }, 'Pod');
  // the real server's order: an added item comes before the live ones, as nothing in the live list places it
  t.same(meta(finalizers).finalizers, ['c', 'b'], 'a merged list of scalars: one deleted, one added');
  const ordered = strategicMergePatch(pod, { metadata: { finalizers: ['c'], '$setElementOrder/finalizers': ['a', 'c', 'b'] } }, 'Pod');
  t.same(meta(ordered).finalizers, ['a', 'c', 'b'], 'and where $setElementOrder puts it');

  const replaced = strategicMergePatch(pod, { metadata: { labels: { $patch: 'replace', y: '2' } } }, 'Pod');
  t.same(meta(replaced).labels, { y: '2' }, '$patch: replace on a map');
  t.same(meta(strategicMergePatch(pod, { metadata: { labels: { x: null } } }, 'Pod')).labels, {}, 'null removes a key');
  t.same((strategicMergePatch(pod, { spec: { volumes: [{ name: 'other' }] } }, 'ConfigMap').spec as JsonObject).volumes, [{ name: 'other' }], "a kind without the field's tag replaces the list");
  t.throws(() => strategicMergePatch(pod, { spec: { containers: [{ image: 'x' }] } }, 'Pod'), { httpStatus: 422, message: /does not contain declared merge key: name/ });
});

t.test('field validation: Strict refuses unknown fields, Warn drops them with a warning, Ignore drops them', { skip }, async (t) => {
  const double = await startDouble(t);
  const file = path.join(double.dir, 'odd.yaml');
  await writeFile(file, 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: odd, colour: blue}\ndata: {a: b}\nextra: field\n');
  const strict = await kubectl(double, ['apply', '-f', file]);
  t.equal(strict.exitCode, 1);
  t.match(strict.stderr, 'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "extra", unknown field "metadata.colour"');
  t.equal(double.server.objects('v1', 'configmaps').get('odd'), undefined, 'nothing stored');

  const warned = await kubectl(double, ['apply', '-f', file, '--validate=warn']);
  t.equal(warned.exitCode, 0, warned.stderr);
  t.match(warned.stderr, /Warning: unknown field "extra"\nWarning: unknown field "metadata.colour"/);
  const stored = double.server.objects('v1', 'configmaps').get('odd') ?? {};
  t.same([stored.data, stored.extra, meta(stored).colour], [{ a: 'b' }, undefined, undefined], 'stored without them');

  await kubectlOk(t, double, ['delete', 'configmap', 'odd']);
  const ignored = await kubectl(double, ['apply', '-f', file, '--validate=false']);
  t.equal(ignored.exitCode, 0, ignored.stderr);
  t.notMatch(ignored.stderr, /Warning/);
  t.equal(double.server.objects('v1', 'configmaps').get('odd')?.extra, undefined);

  const bad = await double.client.request('POST', '/api/v1/namespaces/default/configmaps?fieldValidation=Sometimes', { metadata: { name: 'x' } });
  t.match(bad, { status: 400, body: { reason: 'BadRequest', message: /fieldValidation must be Ignore, Warn or Strict/ } });
});

t.test("a CRD defines a kind whose objects are checked against the version's schema; deleting it takes them away", { skip }, async (t) => {
  const double = await startDouble(t);
  await kubectlOk(t, double, ['apply', '-f', path.join(MANIFESTS, 'crds.yaml')]);
  const file = path.join(double.dir, 'policies.yaml');
  const policy = (name: string, spec: string, extra = ''): string =>
    `apiVersion: security.ambit.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: ${name}, namespace: default}\nspec: ${spec}\n${extra}---\n`;
  await writeFile(file, policy('good', '{action: ALLOW, rules: [{to: [{operation: {ports: ["8080"], futureField: x}}]}]}'));
  t.match(await kubectlOk(t, double, ['apply', '-f', file]), 'authorizationpolicy.security.ambit.dev/good created');
  const good = double.server.objects('security.ambit.dev/v1', 'authorizationpolicies').get('good');
  t.same((good?.spec as JsonObject).rules, [{ to: [{ operation: { ports: ['8080'], futureField: 'x' } }] }], 'a field under x-kubernetes-preserve-unknown-fields is kept');
  t.match(await kubectlOk(t, double, ['get', 'ap', '-o', 'name']), 'authorizationpolicy.security.ambit.dev/good', 'by its short name');

  await writeFile(file, policy('bad', '{action: MAYBE}'));
  const invalid = await kubectl(double, ['apply', '-f', file]);
  t.equal(invalid.exitCode, 1);
  t.match(invalid.stderr, 'The AuthorizationPolicy "bad" is invalid: spec.action: Unsupported value: "MAYBE": supported values: "ALLOW", "DENY", "AUDIT"');
  const reply = await double.client.request('POST', '/apis/security.ambit.dev/v1/namespaces/default/authorizationpolicies', {
    apiVersion: 'security.ambit.dev/v1',
    kind: 'AuthorizationPolicy',
    metadata: { name: 'bad' },
    spec: { rules: [{ to: [{ operation: { ports: ['http'] } }], when: [{ values: [] }] }] },
  });
  t.same(reply.status, 422);
  t.match(reply.body, {
    reason: 'Invalid',
    message: 'AuthorizationPolicy.security.ambit.dev "bad" is invalid: [',
    details: {
      name: 'bad',
      group: 'security.ambit.dev',
      kind: 'AuthorizationPolicy',
      causes: [
        { reason: 'FieldValueInvalid', field: 'spec.rules[0].to[0].operation.ports[0]', message: `Invalid value: "http": spec.rules[0].to[0].operation.ports[0] in body should match '^[0-9]{1,5}$'` },
        { reason: 'FieldValueRequired', field: 'spec.rules[0].when[0].key', message: 'Required value' },
      ],
    },
  });

  await writeFile(file, policy('root', '{action: DENY}', 'colour: blue\n'));
  const unknown = await kubectl(double, ['apply', '-f', file]);
  t.match(unknown.stderr, 'AuthorizationPolicy in version "v1" cannot be handled as a AuthorizationPolicy: strict decoding error: unknown field "colour"', 'the root keeps no unknown field');

  const watch = await double.client.watch('/apis/security.ambit.dev/v1/authorizationpolicies');
  t.teardown(() => watch.close());
  t.match(await watch.next(), { type: 'ADDED', object: { metadata: { name: 'good' } } });
  t.match(await kubectlOk(t, double, ['delete', 'crd', 'authorizationpolicies.security.ambit.dev']), 'deleted');
  t.match(await watch.next(), { type: 'DELETED', object: { metadata: { name: 'good' } } }, "the CRD's objects went with it");
  await watch.ended;
  t.equal(watch.buffered.length, 0, 'then the watch of the kind ended');
  t.equal((await double.client.get('/apis/security.ambit.dev/v1/authorizationpolicies')).status, 404);
  t.notMatch(await kubectlOk(t, double, ['api-resources', '--api-group', 'security.ambit.dev', '-o', 'name']), 'authorizationpolicies');

  const twoVersions = {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: 'widgets.example.com' },
    spec: {
      group: 'example.com',
      scope: 'Namespaced',
      names: { plural: 'widgets', kind: 'Widget' },
      versions: ['v1', 'v2'].map((name) => ({ name, served: true, storage: name === 'v2', schema: { openAPIV3Schema: { type: 'object' } } })),
    },
  };
  const refused = await double.client.request('POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', twoVersions);
  t.match(refused, { status: 422, body: { message: /exactly one served version \(it has no conversion between versions\), not 2/ } }, 'a CRD the double cannot serve is refused, not half served');
  const misnamed = await double.client.request('POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', { ...twoVersions, metadata: { name: 'gadgets.example.com' } });
  t.match(misnamed.body, { message: /metadata.name: Invalid value: "gadgets.example.com": must be spec.names.plural\+"."\+spec.group/ });
  t.equal((await double.client.request('PATCH', '/apis/security.ambit.dev/v1/namespaces/default/peerauthentications/x', {}, 'application/strategic-merge-patch+json')).status, 404);
});

t.test('a custom resource takes merge and JSON patches, not a strategic merge patch', async (t) => {
  const double = await startDouble(t);
  const crd = yaml.loadAll(await readFile(path.join(MANIFESTS, 'crds.yaml'), 'utf8')) as JsonObject[];
  for (const definition of crd) t.equal((await double.client.request('POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', definition)).status, 201);
  const policies = '/apis/security.ambit.dev/v1/namespaces/default/peerauthentications';
  t.equal((await double.client.request('POST', policies, { apiVersion: 'security.ambit.dev/v1', kind: 'PeerAuthentication', metadata: { name: 'x' }, spec: { mtls: { mode: 'STRICT' } } })).status, 201);
  const smp = await double.client.request('PATCH', `${policies}/x`, { spec: { mtls: { mode: 'PERMISSIVE' } } }, 'application/strategic-merge-patch+json');
  t.match(smp, { status: 415, body: { reason: 'UnsupportedMediaType', message: /accepted media types include: application\/json-patch\+json, application\/merge-patch\+json$/ } });
  const merged = await double.client.request('PATCH', `${policies}/x`, { spec: { mtls: { mode: 'NOPE' } } }, 'application/merge-patch+json');
  t.match(merged, { status: 422, body: { details: { causes: [{ field: 'spec.mtls.mode', reason: 'FieldValueNotSupported' }] } } }, 'a patched object is validated too');
});

t.test('a deleted namespace is Terminating (no new objects) until its objects and itself are removed', async (t) => {
  const double = await startDouble(t, { namespaceCleanupMs: 50 });
  const { server, client } = double;
  server.objects('v1', 'namespaces').create({ metadata: { name: 'shop' } });
  server.objects('v1', 'configmaps').create({ metadata: { name: 'settings', namespace: 'shop' } });
  const gone = new Promise<string[]>((resolve) => {
    const order: string[] = [];
    server.on('change', (event) => {
      if (event.type !== 'DELETED') return;
      order.push(`${String(event.object.kind)}/${String(meta(event.object).name)}`);
      if (event.object.kind === 'Namespace') resolve(order);
    });
  });
  const deleted = await client.request('DELETE', '/api/v1/namespaces/shop', { kind: 'DeleteOptions', apiVersion: 'v1', propagationPolicy: 'Background' });
  t.match(deleted, { status: 200, body: { metadata: { name: 'shop', deletionTimestamp: /Z$/ }, status: { phase: 'Terminating' } } });
  t.ok(server.objects('v1', 'configmaps').get('settings', 'shop'), 'its objects are still there');
  const refused = await client.request('POST', '/api/v1/namespaces/shop/configmaps', { metadata: { name: 'late' } });
  t.match(refused, {
    status: 403,
    body: { reason: 'Forbidden', message: 'configmaps "late" is forbidden: unable to create new content in namespace shop because it is being terminated', details: { causes: [{ reason: 'NamespaceTerminating' }] } },
  });
  t.same(await gone, ['ConfigMap/settings', 'Namespace/shop'], 'the objects first, then the namespace');
  const bad = await client.request('DELETE', '/api/v1/namespaces/default/configmaps/x', { propagationPolicy: 'Sometimes' });
  t.match(bad, { status: 400, body: { message: /propagationPolicy must be Orphan, Background or Foreground/ } });
});
