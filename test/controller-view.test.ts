/** The controller's view of the cluster: API objects in, the stream's changes out, through the real ChangeLog. */
import t from 'tap';
import { ChangeLog, type Delta } from '../controller/index.js';
import { ClusterView, watchedKinds, type WatchedKind } from '../core/stream/index.js';
import { createLogger } from '../core/log/index.js';

const kinds = watchedKinds({ istioApi: true });
const kind = (name: string, group = 'security.ambit.dev/v1'): WatchedKind => kinds.find((k) => k.kind === name && (k.record !== 'Policy' || k.apiVersion === group))!;

/** A Pod as a list or watch returns it: no kind or apiVersion, managedFields and status. */
function pod(name: string, ip: string, status: Record<string, unknown> = {}) {
  return {
    metadata: { name, namespace: 'shop', uid: `uid-${name}`, resourceVersion: '7', labels: { app: name }, managedFields: [{ manager: 'kubelet', fieldsV1: { big: 'x'.repeat(4000) } }] },
    spec: { nodeName: 'node1', serviceAccountName: name, containers: [{ name: 'c', ports: [{ containerPort: 8080 }] }] },
    status: { phase: 'Running', podIP: ip, podIPs: [{ ip }], conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: '2026-12-02T10:00:00Z' }], containerStatuses: [{ name: 'c', restartCount: 0 }], ...status },
  };
}

function rig() {
  const changes = new ChangeLog();
  const deltas: Delta[] = [];
  changes.on('delta', (delta) => deltas.push(delta));
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger({ level: 'warn', destination: { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) } });
  return { changes, deltas, lines, view: asReflector(new ClusterView(changes, { trustDomain: 'cluster.local', log })) };
}

/** The view as a reflector drives it: each object through `prepare` (the reflector's transform), then the call. */
function asReflector(view: ClusterView) {
  return {
    replace: (k: WatchedKind, items: unknown[]) => view.replace(k, items.map((item) => view.prepare(k, item))),
    upsert: (k: WatchedKind, item: unknown) => view.upsert(k, view.prepare(k, item)),
    delete: (k: WatchedKind, item: unknown) => view.delete(k, view.prepare(k, item)),
  };
}

t.test('a list becomes records; an update that changes nothing an agent uses goes no further', async (t) => {
  const { changes, deltas, view } = rig();
  view.replace(kind('Namespace'), [{ metadata: { name: 'shop', labels: { 'ambit.dev/mode': 'enabled' } } }]);
  view.replace(kind('Pod'), [pod('a', '10.1.0.2'), pod('b', '10.1.0.3')]);
  t.equal(changes.version, 2, 'one version a list');
  const [record] = changes.snapshot().filter((c) => c.kind === 'Pod');
  t.match(record, { op: 'upsert', kind: 'Pod', object: { name: 'a', namespace: 'shop', ips: ['10.1.0.2'], ready: true, identity: 'spiffe://cluster.local/ns/shop/sa/a' } });
  t.notMatch(JSON.stringify(record), /managedFields|restartCount|lastTransitionTime/, 'the record holds nothing of the status the data path does not use');

  view.upsert(kind('Pod'), pod('a', '10.1.0.2', { containerStatuses: [{ name: 'c', restartCount: 5 }], conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: '2026-12-02T11:00:00Z' }] }));
  t.equal(changes.version, 2, 'a restart count and a condition timestamp: no change');
  view.upsert(kind('Pod'), pod('a', '10.1.0.2', { conditions: [{ type: 'Ready', status: 'False' }] }));
  t.equal(changes.version, 3, 'a readiness flip is a change');
  t.match(deltas.at(-1)?.changes, [{ op: 'upsert', kind: 'Pod', object: { name: 'a', ready: false } }], 'carrying the one record');

  view.delete(kind('Pod'), pod('b', '10.1.0.3'));
  t.match(deltas.at(-1)?.changes, [{ op: 'delete', kind: 'Pod', namespace: 'shop', name: 'b' }]);
  view.delete(kind('Pod'), pod('b', '10.1.0.3'));
  t.equal(changes.version, 4, 'deleting what is gone changes nothing');

  view.replace(kind('Pod'), [pod('c', '10.1.0.4')]);
  t.same(
    deltas.at(-1)?.changes.map((c) => `${c.op} ${c.op === 'upsert' && c.kind !== 'Policy' ? (c.object as { name: string }).name : c.kind !== 'Policy' && c.op === 'delete' ? c.name : ''}`),
    ['upsert c', 'delete a'],
    'a relist deletes what it no longer lists',
  );
});

t.test('a malformed object rejects itself alone, with a log line naming it; an update of one held keeps its last good record', async (t) => {
  const changes = new ChangeLog();
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger({ level: 'warn', destination: { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) } });
  const rejected: string[] = [];
  const view = asReflector(new ClusterView(changes, { trustDomain: 'cluster.local', log, onRejected: (kind) => rejected.push(kind) }));
  const pods = () => changes.snapshot().flatMap((c) => (c.kind === 'Pod' ? [`${(c.object as { name: string }).name} ${(c.object as { ips: readonly string[] }).ips.join()}`] : [])).sort();
  view.replace(kind('Pod'), [pod('a', '10.1.0.2'), pod('b', '10.1.0.3'), pod('x', 'bad')]);
  t.same(pods(), ['a 10.1.0.2', 'b 10.1.0.3'], 'a malformed object in a list: no record, the others stand');
  t.match(lines.at(-1), { level: 40, kind: 'Pod', namespace: 'shop', name: 'x', msg: /Pod shop\/x: field status\.podIP.*object rejected$/ });

  const version = changes.version;
  view.upsert(kind('Pod'), pod('a', '10.1.0.999'));
  t.same(pods(), ['a 10.1.0.2', 'b 10.1.0.3'], 'a bad update of a held pod: its last good record stays');
  t.equal(changes.version, version, 'and nothing is sent');
  t.match(lines.at(-1), { name: 'a', msg: /object rejected, its last good record stays/ });
  view.replace(kind('Pod'), [pod('a', 'bad'), pod('b', '10.1.0.3'), pod('c', '10.1.0.4')]);
  t.same(pods(), ['a 10.1.0.2', 'b 10.1.0.3', 'c 10.1.0.4'], 'in a relist too');

  const other = pod('a', 'bad');
  other.metadata.uid = 'uid-a-recreated';
  view.upsert(kind('Pod'), other);
  t.same(pods(), ['b 10.1.0.3', 'c 10.1.0.4'], 'another pod under the same name, malformed: the old record is removed, not kept');
  t.match(lines.at(-1), { name: 'a', msg: /another object than the one held/ });
  view.upsert(kind('Pod'), pod('a', '10.1.0.5'));
  t.same(pods(), ['a 10.1.0.5', 'b 10.1.0.3', 'c 10.1.0.4'], 'a good update after a bad one is taken');
  view.delete(kind('Pod'), pod('c', 'bad'));
  t.same(pods(), ['a 10.1.0.5', 'b 10.1.0.3'], 'a malformed object in a delete event still deletes');

  view.upsert(kind('Pod'), { metadata: {} });
  t.match(lines.at(-1), { msg: 'object without a name ignored' });
  t.same(rejected, ['Pod', 'Pod', 'Pod', 'Pod', 'Pod'], 'every rejection is counted');
});

t.test('policies travel as their objects, without status, managedFields or annotations', async (t) => {
  const { changes, deltas, view } = rig();
  const policy = {
    metadata: { name: 'deny', namespace: 'shop', uid: 'u1', annotations: { 'kubectl.kubernetes.io/last-applied-configuration': '{…}' }, managedFields: [{}] },
    spec: { action: 'DENY', rules: [{}] },
    status: { conditions: [] },
  };
  view.upsert(kind('AuthorizationPolicy'), policy);
  t.same(deltas.at(-1)?.changes, [
    {
      op: 'upsert',
      kind: 'Policy',
      policy: {
        key: 'security.ambit.dev/v1 AuthorizationPolicy shop/deny',
        object: { apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy', metadata: { name: 'deny', namespace: 'shop', uid: 'u1' }, spec: { action: 'DENY', rules: [{}] } },
      },
    },
  ]);
  view.upsert(kind('AuthorizationPolicy', 'security.istio.io/v1'), policy);
  t.equal(changes.size, 2, "Istio's kind of the same name is another object");
  view.upsert(kind('AuthorizationPolicy'), { ...policy, status: { conditions: [{ type: 'Accepted' }] } });
  t.equal(changes.version, 2, 'a status change is no change');
  view.delete(kind('AuthorizationPolicy'), policy);
  t.same(deltas.at(-1)?.changes, [{ op: 'delete', kind: 'Policy', key: 'security.ambit.dev/v1 AuthorizationPolicy shop/deny' }]);
});

t.test('EndpointSlices become records with their conditions', async (t) => {
  const { changes, view } = rig();
  view.upsert(kind('EndpointSlice'), {
    metadata: { name: 'web-abc', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } },
    addressType: 'IPv4',
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    endpoints: [
      { addresses: ['10.1.0.2'], conditions: { ready: true, serving: true, terminating: false }, nodeName: 'node1' },
      { addresses: ['10.1.0.3'], conditions: { ready: false, serving: true, terminating: true }, nodeName: 'node2' },
    ],
  });
  t.match(changes.snapshot()[0], {
    kind: 'EndpointSlice',
    object: { serviceName: 'web', endpoints: [{ ip: '10.1.0.2', ready: true, serving: true, terminating: false }, { ip: '10.1.0.3', ready: false, serving: true, terminating: true }] },
  });
});
