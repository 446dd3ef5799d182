/** The API server double on the wire (node:https, no Kubernetes library): what a reflector and a controller rely on. */
import t from 'tap';
import { FakeTime } from './mesh/fake-time.js';
import { pod, startDouble } from './mesh/apiserver-client.js';
import { FieldSelector, LabelSelector } from '../testbed/apiserver/selectors.js';
import { boundServiceAccountUser, MESH_CUSTOM_RESOURCES, POD_NAME_EXTRA, SERVICE_NAME_LABEL, sliceName, type JsonObject } from '../testbed/index.js';

const PODS = '/api/v1/namespaces/default/pods';

function meta(object: unknown): JsonObject {
  return ((object as JsonObject).metadata ?? {}) as JsonObject;
}

t.test('no token or an unknown token is 401 with a Status', async (t) => {
  const { client } = await startDouble(t);
  for (const anonymous of [client.withToken(undefined), client.withToken('not-registered')]) {
    const reply = await anonymous.get(PODS);
    t.equal(reply.status, 401);
    t.match(reply.body, { kind: 'Status', reason: 'Unauthorized', code: 401 });
  }
  t.equal((await client.get(PODS)).status, 200, 'the registered token is served');
});

t.test('list: built-in items without kind/apiVersion, custom resources with them, one resourceVersion counter', async (t) => {
  const { server, client } = await startDouble(t);
  server.registerResource(MESH_CUSTOM_RESOURCES[0]!);
  const created = await client.request('POST', PODS, pod('a'));
  t.equal(created.status, 201);
  t.match(created.body, { kind: 'Pod', apiVersion: 'v1', metadata: { name: 'a', namespace: 'default', generation: 1 } });
  t.match(meta(created.body).uid, /^[0-9a-f-]{36}$/);
  const policy = await client.request('POST', '/apis/security.ambit.dev/v1/namespaces/default/authorizationpolicies', {
    apiVersion: 'security.ambit.dev/v1',
    kind: 'AuthorizationPolicy',
    metadata: { name: 'allow' },
    spec: { action: 'ALLOW' },
  });
  t.equal(policy.status, 201);
  t.ok(Number(meta(policy.body).resourceVersion) > Number(meta(created.body).resourceVersion), 'one counter across kinds');
  const pods = await client.get('/api/v1/pods');
  t.match(pods.body, { kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: server.resourceVersion } });
  const [item] = pods.body.items as JsonObject[];
  t.equal(item?.kind, undefined, 'no kind on a built-in item');
  t.equal(item?.apiVersion, undefined);
  const policies = await client.get('/apis/security.ambit.dev/v1/authorizationpolicies');
  t.match(policies.body, { kind: 'AuthorizationPolicyList', items: [{ kind: 'AuthorizationPolicy', apiVersion: 'security.ambit.dev/v1' }] });
  t.equal((await client.request('POST', PODS, pod('a'))).body.reason, 'AlreadyExists');
  const generated = await client.request('POST', PODS, { metadata: { generateName: 'web-' }, spec: {} });
  t.match(meta(generated.body).name, /^web-[a-z0-9]{5}$/);
  const missing = await client.request('POST', '/api/v1/namespaces/nowhere/pods', pod('x'));
  t.match(missing, { status: 404, body: { reason: 'NotFound' } }, 'a namespace that does not exist');
});

t.test('update conflicts on a stale resourceVersion; merge, strategic and JSON patch; delete', async (t) => {
  const { client } = await startDouble(t);
  const created = (await client.request('POST', PODS, pod('a', { labels: { app: 'a', drop: 'me' } }))).body;
  const updated = await client.request('PUT', `${PODS}/a`, { ...created, spec: { nodeName: 'node2' } });
  t.equal(updated.status, 200);
  t.equal(meta(updated.body).generation, 2, 'a spec change bumps generation');
  t.equal(meta(updated.body).uid, meta(created).uid);
  const stale = await client.request('PUT', `${PODS}/a`, created);
  t.match(stale, { status: 409, body: { reason: 'Conflict' } });
  const merged = await client.request('PATCH', `${PODS}/a`, { metadata: { labels: { extra: 'x', drop: null } } }, 'application/merge-patch+json');
  t.same((meta(merged.body).labels as JsonObject), { app: 'a', extra: 'x' });
  t.equal(meta(merged.body).generation, 2, 'a label change keeps generation');
  const strategic = await client.request('PATCH', `${PODS}/a`, { metadata: { labels: { s: 'y' } } }, 'application/strategic-merge-patch+json');
  t.equal((meta(strategic.body).labels as JsonObject).s, 'y');
  const json = await client.request('PATCH', `${PODS}/a`, [{ op: 'replace', path: '/metadata/labels/app', value: 'b' }], 'application/json-patch+json');
  t.equal((meta(json.body).labels as JsonObject).app, 'b');
  const stalePatch = await client.request('PATCH', `${PODS}/a`, { metadata: { resourceVersion: meta(created).resourceVersion, labels: { z: 'z' } } }, 'application/merge-patch+json');
  t.equal(stalePatch.status, 409, 'a patch naming an old resourceVersion conflicts');
  t.equal((await client.request('PATCH', `${PODS}/a`, {}, 'text/plain')).status, 415);
  const deleted = await client.request('DELETE', `${PODS}/a`);
  t.match(deleted, { status: 200, body: { kind: 'Pod', metadata: { name: 'a' } } });
  t.match(await client.request('DELETE', `${PODS}/a`), { status: 404, body: { reason: 'NotFound', code: 404 } });
});

t.test('pagination: the continue token walks a snapshot at the first page resourceVersion; a bogus or compacted one is 410', async (t) => {
  const { server, client } = await startDouble(t);
  for (const name of ['a', 'b', 'c', 'd', 'e']) await client.request('POST', PODS, pod(name));
  const first = (await client.get(`${PODS}?limit=2`)).body;
  const rv = meta(first).resourceVersion;
  t.equal((first.items as JsonObject[]).length, 2);
  await client.request('DELETE', `${PODS}/e`);
  await client.request('POST', PODS, pod('f'));
  const names: unknown[] = (first.items as JsonObject[]).map((o) => meta(o).name);
  let token = meta(first).continue;
  while (typeof token === 'string') {
    const page = (await client.get(`${PODS}?limit=2&continue=${encodeURIComponent(token)}`)).body;
    t.equal(meta(page).resourceVersion, rv, 'every page at the first page resourceVersion');
    names.push(...(page.items as JsonObject[]).map((o) => meta(o).name));
    token = meta(page).continue;
  }
  t.same(names, ['a', 'b', 'c', 'd', 'e'], 'the snapshot: not the later delete and create');
  t.match(await client.get(`${PODS}?limit=2&continue=bogus`), { status: 410, body: { reason: 'Expired', code: 410 } });
  const again = meta((await client.get(`${PODS}?limit=2`)).body).continue as string;
  server.compact();
  t.match(await client.get(`${PODS}?limit=2&continue=${encodeURIComponent(again)}`), { status: 410, body: { reason: 'Expired' } });
  t.equal(((await client.get(`${PODS}?limit=2&resourceVersion=0`)).body.items as JsonObject[]).length, 5, 'resourceVersion=0 ignores limit');
});

t.test('watch from resourceVersion 0: synthetic ADDED, then live events; DELETED carries the delete resourceVersion', async (t) => {
  const { server, client } = await startDouble(t);
  await client.request('POST', PODS, pod('a'));
  await client.request('POST', PODS, pod('b'));
  const watch = await client.watch(`${PODS}?resourceVersion=0`);
  t.teardown(() => watch.close());
  t.same((await watch.take(2)).map((e) => [e.type, meta(e.object).name]), [['ADDED', 'a'], ['ADDED', 'b']]);
  const deleted = await client.request('DELETE', `${PODS}/a`);
  const next = await watch.next();
  t.equal(next.type, 'DELETED');
  t.equal(meta(next.object).resourceVersion, server.resourceVersion, 'the delete own resourceVersion');
  t.equal(meta(deleted.body).resourceVersion, server.resourceVersion);
  t.equal(watch.response.headers['content-type'], 'application/json');
});

t.test('watch from a resourceVersion replays what followed it, from the bounded history', async (t) => {
  const { client } = await startDouble(t, { historySize: 3 });
  const a = (await client.request('POST', PODS, pod('a'))).body;
  await client.request('PATCH', `${PODS}/a`, { metadata: { labels: { x: '1' } } }, 'application/merge-patch+json');
  await client.request('POST', PODS, pod('b'));
  const watch = await client.watch(`${PODS}?resourceVersion=${String(meta(a).resourceVersion)}`);
  t.teardown(() => watch.close());
  t.same((await watch.take(2)).map((e) => [e.type, meta(e.object).name]), [['MODIFIED', 'a'], ['ADDED', 'b']]);
});

t.test('a watch from a resourceVersion older than the history: an ERROR event with a 410 Status, then the end; or HTTP 410', async (t) => {
  const { server, client } = await startDouble(t, { historySize: 2 });
  const a = (await client.request('POST', PODS, pod('a'))).body;
  for (const name of ['b', 'c', 'd']) await client.request('POST', PODS, pod(name));
  const watch = await client.watch(`${PODS}?resourceVersion=${String(meta(a).resourceVersion)}`);
  t.equal(watch.response.statusCode, 200);
  const error = await watch.next();
  t.match(error, { type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired' } });
  await watch.ended;
  t.same(watch.buffered, [], 'nothing after the error');
  server.expiredWatchAnswer = 'status';
  const refused = await client.get(`${PODS}?watch=true&resourceVersion=${String(meta(a).resourceVersion)}`);
  t.match(refused, { status: 410, body: { kind: 'Status', reason: 'Expired', code: 410 } });
});

t.test('bookmarks: periodic on the injected timer and on demand, only for watches that allowed them', async (t) => {
  const time = new FakeTime();
  const { server, client } = await startDouble(t, { timer: time.setTimer, bookmarkIntervalMs: 1000 });
  const withBookmarks = await client.watch(`${PODS}?allowWatchBookmarks=true&resourceVersion=${server.resourceVersion}`);
  const without = await client.watch(`${PODS}?resourceVersion=${server.resourceVersion}`);
  t.teardown(() => [withBookmarks, without].forEach((w) => w.close()));
  await client.request('POST', PODS, pod('a'));
  time.advance(1000);
  t.equal((await withBookmarks.next()).type, 'ADDED');
  const bookmark = await withBookmarks.next();
  t.same(bookmark, { type: 'BOOKMARK', object: { kind: 'Pod', apiVersion: 'v1', metadata: { resourceVersion: server.resourceVersion } } });
  server.sendBookmarks();
  t.equal((await withBookmarks.next()).type, 'BOOKMARK');
  await client.request('POST', PODS, pod('b'));
  t.same((await without.take(2)).map((e) => e.type), ['ADDED', 'ADDED'], 'no bookmark between the two, for a watch that did not ask');
});

t.test('timeoutSeconds: the server ends the stream', async (t) => {
  const time = new FakeTime();
  const { server, client } = await startDouble(t, { timer: time.setTimer });
  const watch = await client.watch(`${PODS}?timeoutSeconds=30`);
  t.equal(server.openWatches, 1);
  time.advance(29_000);
  t.equal(server.openWatches, 1, 'still open before the timeout');
  time.advance(1000);
  await watch.ended;
  t.equal(server.openWatches, 0);
});

t.test('selectors on watch: an object that stops matching is DELETED, one that starts is ADDED', async (t) => {
  const { client } = await startDouble(t);
  const byLabel = await client.watch(`${PODS}?labelSelector=${encodeURIComponent('app in (web,api),tier!=db,!legacy')}`);
  const byNode = await client.watch(`${PODS}?fieldSelector=spec.nodeName%3Dnode2`);
  t.teardown(() => [byLabel, byNode].forEach((w) => w.close()));
  await client.request('POST', PODS, pod('a', { labels: { app: 'web' } }));
  await client.request('POST', PODS, pod('b', { labels: { app: 'other' }, nodeName: 'node2' }));
  await client.request('PATCH', `${PODS}/a`, { metadata: { labels: { tier: 'db' } } }, 'application/merge-patch+json');
  await client.request('PATCH', `${PODS}/b`, { metadata: { labels: { app: 'api' } } }, 'application/merge-patch+json');
  await client.request('PATCH', `${PODS}/b`, { metadata: { labels: { legacy: 'yes' } } }, 'application/merge-patch+json');
  t.same((await byLabel.take(4)).map((e) => [e.type, meta(e.object).name]), [
    ['ADDED', 'a'],
    ['DELETED', 'a'],
    ['ADDED', 'b'],
    ['DELETED', 'b'],
  ]);
  await client.request('DELETE', `${PODS}/b`);
  t.same((await byNode.take(4)).map((e) => e.type), ['ADDED', 'MODIFIED', 'MODIFIED', 'DELETED'], 'b only, on node2');
  const list = await client.get(`${PODS}?labelSelector=app%3D%3Dweb`);
  t.same((list.body.items as JsonObject[]).map((o) => meta(o).name), ['a']);
  const unsupported = await client.get(`${PODS}?fieldSelector=status.phase%3DRunning`);
  t.match(unsupported, { status: 400, body: { reason: 'BadRequest', message: /field label not supported: status\.phase/ } });
  t.match(await client.get(`${PODS}?labelSelector=${encodeURIComponent('a in b')}`), { status: 400 });
});

t.test('failure hooks: closed, refused, stalled and expired watches, and a failing resource', async (t) => {
  const { server, client } = await startDouble(t);
  const first = await client.watch(PODS);
  server.closeWatches({ refuse: true });
  await first.ended;
  t.match(await client.get(`${PODS}?watch=1`), { status: 503 });
  server.acceptWatches();
  const stalled = await client.watch(PODS);
  t.teardown(() => stalled.close());
  t.equal(server.stallWatches(), 1);
  const live = await client.watch(PODS);
  t.teardown(() => live.close());
  await client.request('POST', PODS, pod('a'));
  t.equal((await live.next()).type, 'ADDED', 'a watch opened after the stall is served');
  t.equal(server.openWatches, 2, 'the stalled connection is kept');
  server.expireWatches();
  t.match(await live.next(), { type: 'ERROR', object: { code: 410, reason: 'Expired' } });
  await Promise.all([live.ended, stalled.ended]);
  t.same(stalled.buffered, [], 'the stalled one got nothing, not even the error, until it was closed');
  server.failResource('v1', 'pods');
  t.match(await client.get(PODS), { status: 500, body: { reason: 'InternalError' } });
  server.healResource('v1', 'pods');
  t.equal((await client.get(PODS)).status, 200);
});

t.test('TokenReview: a registered bound token, an unknown one, a wrong audience', async (t) => {
  const { server, client } = await startDouble(t);
  server.addToken('pod-token', boundServiceAccountUser({ namespace: 'demo', serviceAccount: 'web', podName: 'web-1', podUid: 'uid-1', nodeName: 'node1', audiences: ['ambit'] }));
  const review = (token: string, audiences?: string[]): Promise<{ status: number; body: JsonObject }> =>
    client.request('POST', '/apis/authentication.k8s.io/v1/tokenreviews', { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, ...(audiences ? { audiences } : {}) } });
  const good = await review('pod-token', ['ambit']);
  t.equal(good.status, 201);
  t.match(good.body.status, {
    authenticated: true,
    user: { username: 'system:serviceaccount:demo:web', groups: ['system:serviceaccounts', 'system:serviceaccounts:demo', 'system:authenticated'] },
    audiences: ['ambit'],
  });
  t.same(((good.body.status as JsonObject).user as JsonObject).extra, {
    [POD_NAME_EXTRA]: ['web-1'],
    'authentication.kubernetes.io/pod-uid': ['uid-1'],
    'authentication.kubernetes.io/node-name': ['node1'],
  });
  t.match((await review('nobody', ['ambit'])).body.status, { authenticated: false, error: /invalid bearer token/ });
  t.match((await review('pod-token', ['someone-else'])).body.status, { authenticated: false, error: /audiences/ });
});

t.test('the EndpointSlice of a Service follows its pods: IP, readiness, terminating, deletion', async (t) => {
  const { server, client } = await startDouble(t);
  const slices = await client.watch(`/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=${encodeURIComponent(`${SERVICE_NAME_LABEL}=web`)}`);
  t.teardown(() => slices.close());
  const pods = server.objects('v1', 'pods');
  pods.create(pod('web-1', { labels: { app: 'web' }, ip: '10.244.1.5', nodeName: 'node1' }));
  pods.create(pod('web-2', { labels: { app: 'web' }, ready: false }));
  pods.create(pod('other', { labels: { app: 'other' }, ip: '10.244.1.6' }));
  server.objects('v1', 'services').create({ metadata: { name: 'web' }, spec: { selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 'http' }, { name: 'm', port: 9090 }] } });
  const added = await slices.next();
  t.equal(added.type, 'ADDED');
  t.match(added.object, {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: sliceName('web'), labels: { [SERVICE_NAME_LABEL]: 'web' } },
    addressType: 'IPv4',
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'm', port: 9090 }],
  });
  const endpoints = (added.object as JsonObject).endpoints as JsonObject[];
  t.same(endpoints, [{
    addresses: ['10.244.1.5'],
    conditions: { ready: true, serving: true, terminating: false },
    targetRef: { kind: 'Pod', namespace: 'default', name: 'web-1', uid: meta(pods.get('web-1')).uid },
    nodeName: 'node1',
  }], 'only the selected pod with an IP');
  pods.patch('web-2', { status: { podIP: '10.244.1.7' } });
  const withSecond = await slices.next();
  t.same(((withSecond.object as JsonObject).endpoints as JsonObject[]).map((e) => [e.addresses, (e.conditions as JsonObject).ready]), [[['10.244.1.5'], true], [['10.244.1.7'], false]]);
  pods.markTerminating('web-1');
  const terminating = ((await slices.next()).object as JsonObject).endpoints as JsonObject[];
  t.same(terminating[0]?.conditions, { ready: false, serving: true, terminating: true });
  pods.delete('web-1');
  t.same((((await slices.next()).object as JsonObject).endpoints as JsonObject[]).map((e) => e.addresses), [['10.244.1.7']]);
  pods.patch('other', { metadata: { labels: { unrelated: 'x' } } });
  server.objects('v1', 'services').delete('web');
  t.equal((await slices.next()).type, 'DELETED', 'the slice goes with the Service, and the unrelated pod change wrote nothing');
});

t.test('discovery: /version, /api, /api/v1 with short names, /apis and a custom group', async (t) => {
  const { server, client } = await startDouble(t);
  server.registerResource(MESH_CUSTOM_RESOURCES[0]!);
  t.match((await client.get('/version')).body, { major: '1', gitVersion: /^v1\.(3[0-9])\./ });
  t.match((await client.get('/api')).body, { kind: 'APIVersions', versions: ['v1'] });
  const core = (await client.get('/api/v1')).body;
  t.match(core, { kind: 'APIResourceList', groupVersion: 'v1' });
  const pods = (core.resources as JsonObject[]).find((r) => r.name === 'pods');
  t.match(pods, { kind: 'Pod', namespaced: true, singularName: 'pod', shortNames: ['po'], verbs: ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'] });
  t.match((core.resources as JsonObject[]).find((r) => r.name === 'namespaces'), { namespaced: false, shortNames: ['ns'] });
  const groups = ((await client.get('/apis')).body.groups as JsonObject[]).map((g) => g.name);
  t.same(groups.sort(), ['apiextensions.k8s.io', 'apps', 'coordination.k8s.io', 'discovery.k8s.io', 'networking.k8s.io', 'policy', 'rbac.authorization.k8s.io', 'security.ambit.dev']);
  t.match((await client.get('/apis/security.ambit.dev/v1')).body, { groupVersion: 'security.ambit.dev/v1', resources: [{ name: 'authorizationpolicies', kind: 'AuthorizationPolicy' }] });
  t.equal((await client.get('/openapi/v2')).status, 404);
  t.equal((await client.get('/api/v1/namespaces/default/nodes')).status, 404, 'a cluster-scoped kind under a namespace');
});

t.test('label selector forms: =, ==, !=, in, notin, key, !key, and malformed terms', async (t) => {
  const labels = { app: 'web', tier: 'front' };
  const cases: [string, boolean][] = [
    ['', true],
    ['app=web', true],
    ['app==web,tier=front', true],
    ['app=web,app=api', false],
    ['app!=web', false],
    ['missing!=x', true],
    ['app in (api, web)', true],
    ['app notin (web)', false],
    ['missing notin (web)', true],
    ['tier', true],
    ['!tier', false],
    ['!missing', true],
    ['app in (web),tier notin (back),!missing', true],
  ];
  for (const [selector, want] of cases) t.equal(LabelSelector.parse(selector).matches(labels), want, `"${selector}"`);
  for (const bad of ['app in web', 'a b', 'app in (web', '-bad=x', 'app=a b']) t.throws(() => LabelSelector.parse(bad), { code: 'KUBE_BAD_REQUEST', httpStatus: 400 }, `"${bad}" refused`);
  t.throws(() => FieldSelector.parse('spec.nodeName=node1', 'Service'), { code: 'KUBE_BAD_REQUEST', httpStatus: 400, message: /field label not supported: spec\.nodeName/ }, 'spec.nodeName is a pod field');
});
