import t from 'tap';
import { loadAllYaml } from '@kubernetes/client-node';
import { isAmbitError } from '../core/errors/errors.js';
import {
  convertObject,
  canonicalIp,
  InvalidObjectError,
  parseManifests,
  type Converted,
  type EndpointSlice,
  type NamespaceInfo,
  type NodeInfo,
  type PodInfo,
  type Service,
} from '../core/discovery/index.js';

const TRUST_DOMAIN = 'mesh.example';

function podOf(converted: Converted): PodInfo {
  if (converted.kind !== 'Pod') throw new Error(`expected a Pod, got ${converted.kind}`);
  return converted.object;
}
function serviceOf(converted: Converted): Service {
  if (converted.kind !== 'Service') throw new Error(`expected a Service, got ${converted.kind}`);
  return converted.object;
}
function nodeOf(converted: Converted): NodeInfo {
  if (converted.kind !== 'Node') throw new Error(`expected a Node, got ${converted.kind}`);
  return converted.object;
}
function namespaceOf(converted: Converted): NamespaceInfo {
  if (converted.kind !== 'Namespace') throw new Error(`expected a Namespace, got ${converted.kind}`);
  return converted.object;
}

const fullPod = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: {
    name: 'reviews-v1-7d9f8c6b5d-x2x7z',
    namespace: 'bookinfo',
    uid: '1f0c1d1e-0000-4000-8000-000000000001',
    labels: { 'pod-template-hash': '7d9f8c6b5d', version: 'v1' },
    ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'reviews-v1-7d9f8c6b5d', controller: true, uid: 'rs' }],
  },
  spec: {
    serviceAccountName: 'bookinfo-reviews',
    nodeName: 'node-1',
    containers: [{ name: 'reviews', ports: [{ name: 'http', containerPort: 9080 }, { containerPort: 9443, protocol: 'TCP' }] }],
    initContainers: [
      { name: 'migrate', ports: [{ name: 'ignored', containerPort: 1111 }] },
      { name: 'log-shipper', restartPolicy: 'Always', ports: [{ name: 'metrics', containerPort: 9100, protocol: 'UDP' }] },
    ],
  },
  status: {
    phase: 'Running',
    podIP: '10.0.1.5',
    podIPs: [{ ip: '10.0.1.5' }, { ip: 'FD00:0:0:0::0105' }],
    conditions: [{ type: 'Ready', status: 'True' }],
  },
};

t.test('a full pod converts to every workload field', async (t) => {
  const pod = podOf(convertObject(fullPod, TRUST_DOMAIN));
  t.same(pod, {
    uid: '1f0c1d1e-0000-4000-8000-000000000001',
    name: 'reviews-v1-7d9f8c6b5d-x2x7z',
    namespace: 'bookinfo',
    workloadName: 'reviews-v1',
    serviceAccount: 'bookinfo-reviews',
    identity: 'spiffe://mesh.example/ns/bookinfo/sa/bookinfo-reviews',
    node: 'node-1',
    ips: ['10.0.1.5', 'fd00::105'],
    labels: { 'pod-template-hash': '7d9f8c6b5d', version: 'v1' },
    hostNetwork: false,
    ready: true,
    containerPorts: [
      { name: 'http', port: 9080, protocol: 'TCP' },
      { port: 9443, protocol: 'TCP' },
      { name: 'metrics', port: 9100, protocol: 'UDP' },
    ],
    terminated: false,
  });
  t.ok(Object.isFrozen(pod) && Object.isFrozen(pod.ips) && Object.isFrozen(pod.labels), 'converted objects are frozen');
});

t.test('a minimal pod gets the defaults', async (t) => {
  const pod = podOf(convertObject({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'solo' } }, TRUST_DOMAIN));
  t.equal(pod.uid, 'default/solo');
  t.equal(pod.namespace, 'default');
  t.equal(pod.serviceAccount, 'default');
  t.equal(pod.identity, 'spiffe://mesh.example/ns/default/sa/default');
  t.equal(pod.node, undefined);
  t.same(pod.ips, []);
  t.equal(pod.ready, true, 'no phase means nothing says it is not ready');
  t.equal(pod.workloadName, 'solo');
  t.equal(pod.terminated, false);
});

t.test('readiness and termination', async (t) => {
  const cases: Array<[string, Record<string, unknown>, Record<string, unknown>, boolean, boolean]> = [
    ['Running, Ready=True', {}, { phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }] }, true, false],
    ['Running, Ready=False', {}, { phase: 'Running', conditions: [{ type: 'Ready', status: 'False' }] }, false, false],
    ['Running, no conditions', {}, { phase: 'Running' }, true, false],
    ['Pending', {}, { phase: 'Pending' }, false, false],
    ['Succeeded', {}, { phase: 'Succeeded' }, false, true],
    ['Failed', {}, { phase: 'Failed' }, false, true],
    ['being deleted', { deletionTimestamp: '2025-01-01T00:00:00Z' }, { phase: 'Running' }, false, false],
  ];
  for (const [name, metadata, status, ready, terminated] of cases) {
    const pod = podOf(convertObject({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', ...metadata }, status }, TRUST_DOMAIN));
    t.equal(pod.ready, ready, `${name}: ready`);
    t.equal(pod.terminated, terminated, `${name}: terminated`);
  }
});

t.test('workload names', async (t) => {
  const nameOf = (metadata: Record<string, unknown>) =>
    podOf(convertObject({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'web-5d8f7c9b4-x2x7z', ...metadata } }, TRUST_DOMAIN)).workloadName;
  const rs = [{ kind: 'ReplicaSet', name: 'web-5d8f7c9b4', controller: true }];
  t.equal(nameOf({ labels: { 'service.istio.io/canonical-name': 'canon', 'app.kubernetes.io/name': 'k8s', app: 'app' } }), 'canon');
  t.equal(nameOf({ labels: { 'app.kubernetes.io/name': 'k8s', app: 'app' } }), 'k8s');
  t.equal(nameOf({ labels: { app: 'app' } }), 'app');
  t.equal(nameOf({ labels: { 'pod-template-hash': '5d8f7c9b4' }, ownerReferences: rs }), 'web', 'ReplicaSet hash from the label');
  t.equal(nameOf({ ownerReferences: rs }), 'web', 'ReplicaSet hash recognised without the label');
  t.equal(nameOf({ ownerReferences: [{ kind: 'StatefulSet', name: 'db', controller: true }] }), 'db');
  t.equal(nameOf({ ownerReferences: [{ kind: 'Job', name: 'backup-28473920', controller: true }] }), 'backup', 'CronJob run suffix');
  t.equal(nameOf({ ownerReferences: [{ kind: 'Job', name: 'migrate', controller: true }] }), 'migrate');
  t.equal(nameOf({}), 'web-5d8f7c9b4-x2x7z', 'no owner: the pod name');
});

t.test('services', async (t) => {
  const service = serviceOf(
    convertObject(
      {
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: 'reviews', namespace: 'bookinfo', labels: { app: 'reviews' } },
        spec: {
          clusterIP: '10.96.0.10',
          clusterIPs: ['10.96.0.10', 'FD00:96::000A'],
          selector: { app: 'reviews' },
          ports: [{ name: 'http', port: 9080, targetPort: 'http' }, { port: 443, targetPort: 8443, protocol: 'TCP' }, { port: 53, protocol: 'UDP' }],
        },
      },
      TRUST_DOMAIN,
    ),
  );
  t.same(service, {
    namespace: 'bookinfo',
    name: 'reviews',
    hostname: 'reviews.bookinfo.svc.cluster.local',
    vips: ['10.96.0.10', 'fd00:96::a'],
    ports: [
      { name: 'http', port: 9080, targetPort: 'http', protocol: 'TCP' },
      { port: 443, targetPort: 8443, protocol: 'TCP' },
      { port: 53, targetPort: 53, protocol: 'UDP' },
    ],
    selector: { app: 'reviews' },
    labels: { app: 'reviews' },
  });
  const headless = serviceOf(
    convertObject({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'db' }, spec: { clusterIP: 'None', selector: {} } }, TRUST_DOMAIN),
  );
  t.same(headless.vips, [], 'a headless service has no VIP');
  t.equal(headless.selector, undefined, 'an empty selector selects nothing');
  const external = serviceOf(
    convertObject({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'ext' }, spec: { type: 'ExternalName', clusterIP: '10.96.0.99' } }, TRUST_DOMAIN),
  );
  t.same(external.vips, [], 'an ExternalName service is never routed by IP');
});

t.test('nodes list InternalIP first and only IP addresses', async (t) => {
  const node = nodeOf(
    convertObject(
      {
        apiVersion: 'v1',
        kind: 'Node',
        metadata: { name: 'node-1', labels: { 'topology.kubernetes.io/zone': 'z1' } },
        status: {
          addresses: [
            { type: 'ExternalIP', address: '203.0.113.7' },
            { type: 'Hostname', address: 'node-1' },
            { type: 'InternalIP', address: '192.168.0.11' },
          ],
        },
      },
      TRUST_DOMAIN,
    ),
  );
  t.same(node, { name: 'node-1', addresses: ['192.168.0.11', '203.0.113.7'], labels: { 'topology.kubernetes.io/zone': 'z1' } });
  t.same(namespaceOf(convertObject({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'team-a' } }, TRUST_DOMAIN)), {
    name: 'team-a',
    labels: {},
  });
});

t.test('EndpointSlices: the first address of each endpoint, conditions as the API defines their absence', async (t) => {
  const converted = convertObject(
    {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: 'kubernetes', namespace: 'default', labels: { 'kubernetes.io/service-name': 'kubernetes' } },
      addressType: 'IPv6',
      ports: [{ name: 'https', port: 6443, protocol: 'TCP' }, { port: 53, protocol: 'UDP' }, { name: 'any' }],
      endpoints: [
        { addresses: ['FD00::0A', 'fd00::b'], nodeName: 'cp-1', zone: 'z1' },
        { addresses: ['fd00::c'], conditions: { ready: false } },
        { addresses: ['fd00::d'], conditions: { ready: false, serving: true, terminating: true } },
      ],
    },
    TRUST_DOMAIN,
  );
  if (converted.kind !== 'EndpointSlice') throw new Error(`expected an EndpointSlice, got ${converted.kind}`);
  const expected: EndpointSlice = {
    namespace: 'default',
    name: 'kubernetes',
    serviceName: 'kubernetes',
    addressType: 'IPv6',
    ports: [
      { name: 'https', port: 6443, protocol: 'TCP' },
      { name: '', port: 53, protocol: 'UDP' },
    ],
    endpoints: [
      { ip: 'fd00::a', ready: true, serving: true, terminating: false, node: 'cp-1', zone: 'z1' },
      { ip: 'fd00::c', ready: false, serving: false, terminating: false, node: undefined, zone: undefined },
      { ip: 'fd00::d', ready: false, serving: true, terminating: true, node: undefined, zone: undefined },
    ],
  };
  t.same(converted.object, expected, 'a port without a number has nothing to dial and is left out');
  t.ok(Object.isFrozen(converted.object) && Object.isFrozen(converted.object.endpoints[0]));
  const unlinked = convertObject({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'x' }, addressType: 'IPv4' }, TRUST_DOMAIN);
  t.match(unlinked, { kind: 'EndpointSlice', object: { namespace: 'default', serviceName: undefined, ports: [], endpoints: [] } }, 'without the label it belongs to no service');
  const fqdn = convertObject({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'x' }, addressType: 'FQDN', endpoints: [{ addresses: ['db.example'] }] }, TRUST_DOMAIN);
  t.match(fqdn, { kind: 'skip', reason: /FQDN/ }, 'an FQDN slice is skipped, not rejected');
});

t.test('kinds discovery does not use are skipped, not rejected', async (t) => {
  const skipped = [
    { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c' } },
    { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'd' } },
    { apiVersion: 'serving.knative.dev/v1', kind: 'Service', metadata: { name: 'knative' }, spec: { ports: 'not even a list' } },
    { apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy', metadata: { name: 'p' } },
    { apiVersion: 'discovery.k8s.io/v1beta1', kind: 'EndpointSlice', metadata: { name: 'removed-in-1-25' } },
  ];
  for (const obj of skipped) {
    const converted = convertObject(obj, TRUST_DOMAIN);
    t.equal(converted.kind, 'skip', `${obj.apiVersion} ${obj.kind}`);
    if (converted.kind === 'skip') t.match(converted.reason, obj.kind);
  }
});

t.test('every malformed field is rejected with the object, the field and the reason', async (t) => {
  const pod = (patch: { metadata?: object; spec?: object; status?: object }) => ({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'web', namespace: 'team-a', ...patch.metadata },
    spec: patch.spec,
    status: patch.status,
  });
  const service = (spec: object, metadata: object = {}) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'team-a', ...metadata }, spec });
  const container = (port: object) => ({ containers: [{ name: 'c', ports: [port] }] });
  const slice = (fields: object) => ({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'web-1', namespace: 'team-a' }, addressType: 'IPv4', ...fields });
  const cases: Array<[string, unknown, string, string]> = [
    ['not an object', 'just text', 'Object <unnamed>', '.'],
    ['no kind', { apiVersion: 'v1', metadata: { name: 'x' } }, 'Object x', 'kind'],
    ['no apiVersion', { kind: 'Pod', metadata: { name: 'x' } }, 'Pod x', 'apiVersion'],
    ['no metadata', { apiVersion: 'v1', kind: 'Pod' }, 'Pod default/<unnamed>', 'metadata'],
    ['metadata not an object', { apiVersion: 'v1', kind: 'Pod', metadata: 'web' }, 'Pod default/<unnamed>', 'metadata'],
    ['no name', pod({ metadata: { name: undefined } }), 'Pod team-a/<unnamed>', 'metadata.name'],
    ['empty name', pod({ metadata: { name: '' } }), 'Pod team-a/<unnamed>', 'metadata.name'],
    ['name not a DNS name', pod({ metadata: { name: 'Web_1' } }), 'Pod team-a/Web_1', 'metadata.name'],
    ['namespace not a string', pod({ metadata: { namespace: 7 } }), 'Pod default/web', 'metadata.namespace'],
    ['namespace not a DNS label', pod({ metadata: { namespace: 'a.b' } }), 'Pod default/web', 'metadata.namespace'],
    ['labels not a map', pod({ metadata: { labels: 'app=web' } }), 'Pod team-a/web', 'metadata.labels'],
    ['label value a number', pod({ metadata: { labels: { version: 2 } } }), 'Pod team-a/web', 'metadata.labels.version'],
    ['ownerReferences not a list', pod({ metadata: { ownerReferences: {} } }), 'Pod team-a/web', 'metadata.ownerReferences'],
    ['spec not an object', pod({ spec: [] as unknown as object }), 'Pod team-a/web', 'spec'],
    ['service account with a slash', pod({ spec: { serviceAccountName: 'a/../b' } }), 'Pod team-a/web', 'spec.serviceAccountName'],
    ['nodeName a number', pod({ spec: { nodeName: 1 } }), 'Pod team-a/web', 'spec.nodeName'],
    ['hostNetwork a string', pod({ spec: { hostNetwork: 'yes' } }), 'Pod team-a/web', 'spec.hostNetwork'],
    ['containers not a list', pod({ spec: { containers: 5 } }), 'Pod team-a/web', 'spec.containers'],
    ['containerPort missing', pod({ spec: container({ name: 'http' }) }), 'Pod team-a/web', 'spec.containers[0].ports[0].containerPort'],
    ['containerPort 0', pod({ spec: container({ containerPort: 0 }) }), 'Pod team-a/web', 'spec.containers[0].ports[0].containerPort'],
    ['containerPort 70000', pod({ spec: container({ containerPort: 70000 }) }), 'Pod team-a/web', 'spec.containers[0].ports[0].containerPort'],
    ['containerPort a string', pod({ spec: container({ containerPort: '80' }) }), 'Pod team-a/web', 'spec.containers[0].ports[0].containerPort'],
    ['containerPort 80.5', pod({ spec: container({ containerPort: 80.5 }) }), 'Pod team-a/web', 'spec.containers[0].ports[0].containerPort'],
    ['port name too long', pod({ spec: container({ containerPort: 80, name: 'a-very-long-port-name' }) }), 'Pod team-a/web', 'spec.containers[0].ports[0].name'],
    ['protocol HTTP', pod({ spec: container({ containerPort: 80, protocol: 'HTTP' }) }), 'Pod team-a/web', 'spec.containers[0].ports[0].protocol'],
    ['podIP not an IP', pod({ status: { podIP: 'not-an-ip' } }), 'Pod team-a/web', 'status.podIP'],
    ['podIPs entry out of range', pod({ status: { podIPs: [{ ip: '10.0.0.1' }, { ip: '10.0.0.300' }] } }), 'Pod team-a/web', 'status.podIPs[1].ip'],
    ['podIPs entry without ip', pod({ status: { podIPs: [{}] } }), 'Pod team-a/web', 'status.podIPs[0].ip'],
    ['phase a number', pod({ status: { phase: 3 } }), 'Pod team-a/web', 'status.phase'],
    ['conditions not a list', pod({ status: { conditions: 'Ready' } }), 'Pod team-a/web', 'status.conditions'],
    ['service name starting with a digit', service({}, { name: '1web' }), 'Service team-a/1web', 'metadata.name'],
    ['clusterIP not an IP', service({ clusterIP: '10.96.0' }), 'Service team-a/web', 'spec.clusterIP'],
    ['clusterIPs entry not an IP', service({ clusterIPs: ['10.96.0.1', 'fd00::zz'] }), 'Service team-a/web', 'spec.clusterIPs[1]'],
    ['ports not a list', service({ ports: { port: 80 } }), 'Service team-a/web', 'spec.ports'],
    ['port missing', service({ ports: [{ targetPort: 80 }] }), 'Service team-a/web', 'spec.ports[0].port'],
    ['port 65536', service({ ports: [{ port: 65536 }] }), 'Service team-a/web', 'spec.ports[0].port'],
    ['targetPort 0', service({ ports: [{ port: 80, targetPort: 0 }] }), 'Service team-a/web', 'spec.ports[0].targetPort'],
    ['targetPort a numeric string', service({ ports: [{ port: 80, targetPort: '8080' }] }), 'Service team-a/web', 'spec.ports[0].targetPort'],
    ['targetPort an invalid name', service({ ports: [{ port: 80, targetPort: 'Web_Port' }] }), 'Service team-a/web', 'spec.ports[0].targetPort'],
    ['service port name invalid', service({ ports: [{ port: 80, name: 'HTTP' }] }), 'Service team-a/web', 'spec.ports[0].name'],
    ['selector value a boolean', service({ selector: { canary: true } }), 'Service team-a/web', 'spec.selector.canary'],
    [
      'node address not an IP',
      { apiVersion: 'v1', kind: 'Node', metadata: { name: 'n1' }, status: { addresses: [{ type: 'InternalIP', address: 'node-1.local' }] } },
      'Node n1',
      'status.addresses[0].address',
    ],
    ['namespace name with a dot', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'a.b' } }, 'Namespace a.b', 'metadata.name'],
    ['slice without addressType', slice({ addressType: undefined }), 'EndpointSlice team-a/web-1', 'addressType'],
    ['slice addressType unknown', slice({ addressType: 'IPv5' }), 'EndpointSlice team-a/web-1', 'addressType'],
    ['slice endpoint without addresses', slice({ endpoints: [{ addresses: [] }] }), 'EndpointSlice team-a/web-1', 'endpoints[0].addresses'],
    ['slice address not an IP', slice({ endpoints: [{ addresses: ['10.0.0.1'] }, { addresses: ['web'] }] }), 'EndpointSlice team-a/web-1', 'endpoints[1].addresses[0]'],
    ['slice address of the other family', slice({ endpoints: [{ addresses: ['fd00::1'] }] }), 'EndpointSlice team-a/web-1', 'endpoints[0].addresses[0]'],
    ['slice condition not a boolean', slice({ endpoints: [{ addresses: ['10.0.0.1'], conditions: { ready: 'yes' } }] }), 'EndpointSlice team-a/web-1', 'endpoints[0].conditions.ready'],
    ['slice nodeName a number', slice({ endpoints: [{ addresses: ['10.0.0.1'], nodeName: 3 }] }), 'EndpointSlice team-a/web-1', 'endpoints[0].nodeName'],
    ['slice port 0', slice({ ports: [{ port: 0 }] }), 'EndpointSlice team-a/web-1', 'ports[0].port'],
    ['slice port name not a DNS label', slice({ ports: [{ name: 'HTTPS', port: 443 }] }), 'EndpointSlice team-a/web-1', 'ports[0].name'],
    ['slice port protocol unknown', slice({ ports: [{ port: 443, protocol: 'QUIC' }] }), 'EndpointSlice team-a/web-1', 'ports[0].protocol'],
  ];
  for (const [name, obj, ref, field] of cases) {
    try {
      convertObject(obj, TRUST_DOMAIN);
      t.fail(`${name}: accepted`);
    } catch (err) {
      t.ok(isAmbitError(err, 'INVALID_OBJECT'), `${name}: INVALID_OBJECT`);
      t.ok(err instanceof InvalidObjectError, `${name}: InvalidObjectError`);
      if (!(err instanceof InvalidObjectError)) continue;
      t.equal(err.field, field, `${name}: field`);
      t.ok(err.message.startsWith(`${ref}: field ${field}: `), `${name}: message names the object and field: ${err.message}`);
    }
  }
});

t.test('an error message reads as a sentence an operator can act on', async (t) => {
  t.throws(() => convertObject({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'web', namespace: 'team-a' }, status: { podIP: 'not-an-ip' } }, TRUST_DOMAIN), {
    code: 'INVALID_OBJECT',
    message: 'Pod team-a/web: field status.podIP: must be an IPv4 or IPv6 address, got "not-an-ip"',
    kind: 'Pod',
    namespace: 'team-a',
    objectName: 'web',
    field: 'status.podIP',
  });
});

t.test('client-node model objects (what a watch delivers) convert like raw JSON', async (t) => {
  const [typed] = loadAllYaml(JSON.stringify(fullPod)) as unknown[];
  t.not(Object.getPrototypeOf(typed), Object.prototype, 'the library returned a model instance');
  t.same(convertObject(typed, TRUST_DOMAIN), convertObject(fullPod, TRUST_DOMAIN));
});

t.test('canonical IP text', async (t) => {
  t.equal(canonicalIp('10.0.0.1'), '10.0.0.1');
  t.equal(canonicalIp('FD00:0000::0001'), 'fd00::1');
  t.equal(canonicalIp('::ffff:10.0.0.1'), '10.0.0.1');
  t.equal(canonicalIp('010.0.0.1'), undefined);
  t.equal(canonicalIp('fe80::1%eth0'), undefined);
  t.equal(canonicalIp('example.com'), undefined);
});

t.test('manifest files', async (t) => {
  const text = [
    '# a comment before the first document',
    'apiVersion: v1',
    'kind: Namespace',
    'metadata: {name: a}',
    '---',
    '---',
    '# an empty document',
    '---',
    'apiVersion: v1',
    'kind: List',
    'items:',
    '- {apiVersion: v1, kind: Namespace, metadata: {name: b}}',
    '---',
    'apiVersion: v1',
    'kind: PodList',
    'items:',
    '- metadata: {name: c, labels: web}',
    '---',
    'apiVersion: v1',
    'kind: Pod',
    'metadata: {name: d}',
    'spec: {containers: 5}',
    '---',
    '',
  ].join('\n');
  const objects = parseManifests(text, 'mixed.yaml');
  t.same(
    objects.map((o) => (o as { metadata: { name: string } }).metadata.name),
    ['a', 'b', 'c', 'd'],
    'lists are unwrapped, empty documents dropped',
  );
  t.same(objects[2], { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'c', labels: 'web' } }, 'typed-list items get the kind; values come as written');
  t.throws(() => convertObject(objects[2], TRUST_DOMAIN), { code: 'INVALID_OBJECT', field: 'metadata.labels' }, 'a string where labels belong is rejected, not bent into a map');
  t.throws(() => convertObject(objects[3], TRUST_DOMAIN), { code: 'INVALID_OBJECT', field: 'spec.containers' });

  t.same(parseManifests('[{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "j"}}]', 'list.json'), [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'j' } },
  ]);
  t.throws(() => parseManifests('apiVersion: v1\nkind: Pod\nmetadata: {name: [\n', 'broken.yaml'), {
    code: 'MANIFEST_PARSE_FAILED',
    message: /^broken\.yaml:\d+:\d+: not valid YAML: /,
  });
  t.throws(() => parseManifests('a: 1\na: 2\n', 'dup-key.yaml'), { code: 'MANIFEST_PARSE_FAILED' });
});
