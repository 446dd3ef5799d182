/**
 * The double's access control (testbed/apiserver/access.ts): a permission a test denies is refused with the real
 * server's 403 Status, for each verb and scope, and a SelfSubjectAccessReview answers from the same denials.
 */
import t from 'tap';
import { pod, startDouble } from './mesh/apiserver-client.js';

t.test('a denied permission: a 403 Status worded as the real server words it; everything else allowed', async (t) => {
  const { server, client } = await startDouble(t);
  server.addToken('dana-token', { username: 'dana' });
  const dana = client.withToken('dana-token');
  server.objects('v1', 'pods').create(pod('web'));
  server.denyAccess('dana', { verb: 'list', resource: 'pods', namespace: 'default' });
  server.denyAccess('dana', { verb: 'get', resource: 'nodes' });
  server.denyAccess('dana', { verb: 'create', resource: 'leases', group: 'coordination.k8s.io' });

  const list = await dana.get('/api/v1/namespaces/default/pods');
  t.match(list, {
    status: 403,
    body: { kind: 'Status', status: 'Failure', reason: 'Forbidden', code: 403, message: 'pods is forbidden: User "dana" cannot list resource "pods" in API group "" in the namespace "default"', details: { kind: 'pods' } },
  });
  t.equal((await dana.get('/api/v1/pods')).status, 200, 'a denial in one namespace leaves the list of all namespaces (another scope)');
  t.equal((await dana.get('/api/v1/namespaces/default/pods/web')).status, 200, 'and get, another verb');
  t.match(await dana.get('/api/v1/nodes/node1'), { status: 403, body: { message: 'nodes "node1" is forbidden: User "dana" cannot get resource "nodes" in API group "" at the cluster scope', details: { name: 'node1' } } }, 'refused before the 404 it would be');
  t.match(await dana.request('POST', '/apis/coordination.k8s.io/v1/namespaces/default/leases', { metadata: { name: 'l' } }), {
    status: 403,
    body: { message: 'leases.coordination.k8s.io is forbidden: User "dana" cannot create resource "leases" in API group "coordination.k8s.io" in the namespace "default"' },
  });
  t.equal(server.objects('coordination.k8s.io/v1', 'leases').list().length, 0, 'nothing was created');
  t.equal((await client.get('/api/v1/namespaces/default/pods')).status, 200, 'another user keeps the permission');

  const review = (token: string, resourceAttributes: Record<string, string>) =>
    client.withToken(token).request('POST', '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews', { apiVersion: 'authorization.k8s.io/v1', kind: 'SelfSubjectAccessReview', spec: { resourceAttributes } });
  t.match(await review('dana-token', { verb: 'list', resource: 'pods', namespace: 'default' }), { status: 201, body: { kind: 'SelfSubjectAccessReview', status: { allowed: false } } });
  t.match(await review('dana-token', { verb: 'create', group: 'coordination.k8s.io', resource: 'leases', namespace: 'kube-system' }), { body: { status: { allowed: false } } }, 'a denial without a namespace holds in every one');
  t.match(await review('dana-token', { verb: 'watch', resource: 'pods', namespace: 'default' }), { body: { status: { allowed: true } } });
  t.match(await review('admin-token-for-tests', { verb: 'list', resource: 'pods', namespace: 'default' }), { body: { status: { allowed: true } } });
  t.match(await dana.request('POST', '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews', { spec: {} }), { status: 400 }, 'a review that asks nothing is refused');
});
