import t from 'tap';
import {
  convertObject,
  ENROLL_LABEL,
  ISTIO_DATAPLANE_LABEL,
  WorkloadStore,
  type DiscoverySnapshot,
  type NamespaceInfo,
  type NodeInfo,
  type PodInfo,
  type Service,
  type StoreChange,
} from '../core/discovery/index.js';

const TRUST_DOMAIN = 'cluster.local';

interface PodSpec {
  name: string;
  namespace?: string;
  node?: string;
  ips?: string[];
  labels?: Record<string, string>;
  sa?: string;
  hostNetwork?: boolean;
  ready?: boolean;
  phase?: string;
  ports?: Array<{ name?: string; containerPort: number; protocol?: string }>;
}

function pod(spec: PodSpec): PodInfo {
  const converted = convertObject(
    {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: spec.name, namespace: spec.namespace ?? 'team-a', labels: spec.labels ?? {} },
      spec: {
        nodeName: spec.node,
        serviceAccountName: spec.sa,
        hostNetwork: spec.hostNetwork,
        containers: [{ name: 'main', ports: spec.ports ?? [] }],
      },
      status: {
        phase: spec.phase ?? 'Running',
        podIPs: (spec.ips ?? []).map((ip) => ({ ip })),
        conditions: [{ type: 'Ready', status: spec.ready === false ? 'False' : 'True' }],
      },
    },
    TRUST_DOMAIN,
  );
  if (converted.kind !== 'Pod') throw new Error('not a pod');
  return converted.object;
}

function namespace(name: string, labels: Record<string, string> = {}): NamespaceInfo {
  return { name, labels };
}

function service(name: string, spec: object, namespaceName = 'team-a'): Service {
  const converted = convertObject({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: namespaceName }, spec }, TRUST_DOMAIN);
  if (converted.kind !== 'Service') throw new Error('not a service');
  return converted.object;
}

function node(name: string, ...addresses: string[]): NodeInfo {
  return { name, addresses, labels: {} };
}

function snapshot(parts: Partial<DiscoverySnapshot>): DiscoverySnapshot {
  return { namespaces: [], pods: [], services: [], nodes: [], endpointSlices: [], ...parts };
}

const enrolledNamespace = namespace('team-a', { [ENROLL_LABEL]: 'enabled' });

t.test('enrollment matrix: namespace labels x pod opt-out x host network', async (t) => {
  const namespaceCases: Array<[string, NamespaceInfo | undefined, boolean]> = [
    ['no labels', namespace('ns', {}), false],
    ['ambit enabled', namespace('ns', { [ENROLL_LABEL]: 'enabled' }), true],
    ['istio ambient', namespace('ns', { [ISTIO_DATAPLANE_LABEL]: 'ambient' }), true],
    ['ambit with another value', namespace('ns', { [ENROLL_LABEL]: 'disabled' }), false],
    ['istio sidecar-era value', namespace('ns', { [ISTIO_DATAPLANE_LABEL]: 'none' }), false],
    ['no Namespace object', undefined, false],
  ];
  const podCases: Array<[string, Record<string, string>, boolean]> = [
    ['no labels', {}, false],
    ['ambit disabled', { [ENROLL_LABEL]: 'disabled' }, true],
    ['istio none', { [ISTIO_DATAPLANE_LABEL]: 'none' }, true],
    ['ambit enabled on the pod', { [ENROLL_LABEL]: 'enabled' }, false],
    ['istio ambient on the pod', { [ISTIO_DATAPLANE_LABEL]: 'ambient' }, false],
  ];
  for (const [nsName, ns, namespaceEnrolls] of namespaceCases) {
    for (const [podName, labels, podOptsOut] of podCases) {
      for (const hostNetwork of [false, true]) {
        const store = new WorkloadStore({ nodeName: 'node-1' });
        store.replaceAll(
          snapshot({
            namespaces: ns === undefined ? [] : [ns],
            pods: [pod({ name: 'p', namespace: 'ns', node: 'node-1', ips: ['10.0.0.5'], labels, hostNetwork })],
          }),
        );
        const expected = namespaceEnrolls && !podOptsOut && !hostNetwork;
        const [workload] = store.workloads();
        t.equal(workload?.enrolled, expected, `namespace ${nsName}, pod ${podName}, hostNetwork ${hostNetwork}`);
        t.same(store.localEnrolledIps(4), expected ? ['10.0.0.5'] : [], `ipset follows: ${nsName}/${podName}/${hostNetwork}`);
      }
    }
  }
});

t.test('the root namespace is never enrolled, whatever its labels; a store told another root enrolls ambit-system', async (t) => {
  const labelled = (name: string) => [namespace(name, { [ENROLL_LABEL]: 'enabled', [ISTIO_DATAPLANE_LABEL]: 'ambient' })];
  const pods = (ns: string) => [pod({ name: 'ctl', namespace: ns, node: 'node-1', ips: ['10.0.0.7'] })];
  const byDefault = new WorkloadStore({ nodeName: 'node-1' });
  byDefault.replaceAll(snapshot({ namespaces: labelled('ambit-system'), pods: pods('ambit-system') }));
  t.equal(byDefault.workloads()[0]?.enrolled, false, 'ambit-system (the default root) labelled enabled: its pod is not enrolled');
  t.same(byDefault.localEnrolledIps(4), [], 'and not captured');

  const custom = new WorkloadStore({ nodeName: 'node-1', rootNamespace: 'mesh-system' });
  custom.replaceAll(snapshot({ namespaces: [...labelled('mesh-system'), ...labelled('ambit-system')], pods: [...pods('mesh-system'), pod({ name: 'app', namespace: 'ambit-system', node: 'node-1', ips: ['10.0.0.8'] })] }));
  t.equal(custom.workloads().find((w) => w.namespace === 'mesh-system')?.enrolled, false, 'the configured root namespace is not enrolled');
  t.same(custom.localEnrolledIps(4), ['10.0.0.8'], 'ambit-system is an ordinary namespace when it is not the root');
});

t.test('relabelling a namespace recomputes its workloads in one new version', async (t) => {
  const store = new WorkloadStore({ nodeName: 'node-1' });
  const p = pod({ name: 'web', node: 'node-1', ips: ['10.0.0.5'] });
  store.replaceAll(snapshot({ namespaces: [namespace('team-a')], pods: [p] }));
  t.equal(store.workloadByIp('10.0.0.5')?.enrolled, false);
  const events: StoreChange[] = [];
  store.on('change', (change: StoreChange) => events.push(change));
  store.applyBatch([{ op: 'upsert', kind: 'Namespace', object: enrolledNamespace }]);
  t.equal(store.workloadByIp('10.0.0.5')?.enrolled, true);
  t.same(store.localEnrolledIps(4), ['10.0.0.5']);
  t.same(events, [{ version: 2, source: 'default' }], 'one change event for the batch');
  store.applyBatch([{ op: 'delete', kind: 'Namespace', name: 'team-a' }]);
  t.equal(store.workloadByIp('10.0.0.5')?.enrolled, false, 'a pod whose namespace is gone is not enrolled');
  t.equal(store.version, 3);
});

t.test('indexes', async (t) => {
  const store = new WorkloadStore({ nodeName: 'node-1', trustDomain: TRUST_DOMAIN });
  const pods = [
    pod({ name: 'web-1', node: 'node-1', ips: ['10.0.1.1', 'fd00::101'], labels: { app: 'web' }, sa: 'web', ports: [{ name: 'http', containerPort: 8080 }] }),
    pod({ name: 'web-2', node: 'node-2', ips: ['10.0.2.1'], labels: { app: 'web' }, sa: 'web', ports: [{ name: 'http', containerPort: 8081 }] }),
    pod({ name: 'web-3', node: 'node-1', ips: ['10.0.1.3'], labels: { app: 'web' }, sa: 'web', ready: false }),
    pod({ name: 'web-pending', node: 'node-2', labels: { app: 'web' }, sa: 'web', phase: 'Pending' }),
    pod({ name: 'db', node: 'node-1', ips: ['10.0.1.2'], labels: { app: 'db' }, sa: 'db' }),
    pod({ name: 'opted-out', node: 'node-1', ips: ['10.0.1.9'], labels: { [ENROLL_LABEL]: 'disabled' } }),
    pod({ name: 'host', node: 'node-1', ips: ['192.168.0.1'], hostNetwork: true, labels: { app: 'web' } }),
    pod({ name: 'old-job', node: 'node-1', ips: ['10.0.1.50'], phase: 'Succeeded' }),
    pod({ name: 'reused-ip', node: 'node-1', ips: ['10.0.1.50'] }),
    pod({ name: 'web-other-ns', namespace: 'team-b', node: 'node-1', ips: ['10.0.9.1'], labels: { app: 'web' }, sa: 'web' }),
  ];
  const web = service('web', {
    clusterIPs: ['10.96.0.10', 'fd00:96::10'],
    selector: { app: 'web' },
    ports: [
      { name: 'http', port: 80, targetPort: 'http' },
      { name: 'metrics', port: 9090, targetPort: 9091 },
      { name: 'dns', port: 53, targetPort: 5353, protocol: 'UDP' },
      { name: 'dns-tcp', port: 53, targetPort: 5354 },
    ],
  });
  const manual = service('manual', { clusterIP: '10.96.0.11', ports: [{ port: 80 }] });
  store.replaceAll(
    snapshot({
      namespaces: [enrolledNamespace, namespace('team-b', { [ISTIO_DATAPLANE_LABEL]: 'ambient' })],
      pods,
      services: [web, manual],
      nodes: [node('node-1', '192.168.0.1', '203.0.113.1'), node('node-2', '192.168.0.2')],
    }),
  );

  t.test('by IP', async (t) => {
    t.equal(store.workloadByIp('10.0.1.1')?.name, 'web-1');
    t.equal(store.workloadByIp('fd00::101')?.name, 'web-1');
    t.equal(store.workloadByIp('FD00:0::0101')?.name, 'web-1', 'IPv6 in another spelling');
    t.equal(store.workloadByIp('::ffff:10.0.1.1')?.name, 'web-1', 'IPv4-mapped, as a dual-stack socket reports it');
    t.equal(store.workloadByIp('192.168.0.1'), undefined, 'a host-network pod does not own the node IP');
    t.equal(store.workloadByIp('10.0.1.50')?.name, 'reused-ip', 'a finished pod gives its IP up');
    t.equal(store.workloadByIp('10.9.9.9'), undefined);
    t.equal(store.workloadByIp('not an ip'), undefined);
  });

  t.test('locality', async (t) => {
    t.same(
      store.localWorkloads().map((w) => w.name),
      ['web-1', 'web-3', 'db', 'opted-out', 'host', 'reused-ip', 'web-other-ns'],
      'local: on node-1, finished pods left out',
    );
    t.same(store.localEnrolledIps(4), ['10.0.1.1', '10.0.1.2', '10.0.1.3', '10.0.1.50', '10.0.9.1'], 'sorted');
    t.same(store.localEnrolledIps(6), ['fd00::101']);
    t.equal(store.workloads().length, 9, 'every pod but the finished one');
  });

  t.test('services and endpoints', async (t) => {
    t.equal(store.serviceByVip('10.96.0.10'), web);
    t.equal(store.serviceByVip('FD00:96:0::10'), web);
    t.equal(store.serviceByVip('10.96.0.11'), manual);
    t.equal(store.serviceByVip('10.96.0.12'), undefined);
    const described = (port: number) => store.serviceEndpoints(web, port)?.map((e) => `${e.workload?.name} ${e.ip}:${e.port}`);
    t.same(
      described(9090),
      ['web-1 10.0.1.1:9091', 'web-1 fd00::101:9091', 'web-2 10.0.2.1:9091', 'host 192.168.0.1:9091'],
      'every address of the ready pods with an IP in the same namespace; not-ready, pending and other namespaces left out',
    );
    t.same(described(80), ['web-1 10.0.1.1:8080', 'web-1 fd00::101:8080', 'web-2 10.0.2.1:8081'], 'a named target port: the pods with a container port of that name');
    t.same(described(81), [], 'not a port of the service');
    t.equal(store.serviceEndpoints(manual, 80), undefined, 'a service without a selector or EndpointSlice: the mesh does not know its endpoints');
  });

  t.test('target ports', async (t) => {
    const [web1, web2, web3] = [store.workloadByIp('10.0.1.1'), store.workloadByIp('10.0.2.1'), store.workloadByIp('10.0.1.3')];
    if (web1 === undefined || web2 === undefined || web3 === undefined) throw new Error('workloads missing');
    t.equal(store.resolveTargetPort(web, 80, web1), 8080, 'named port on web-1');
    t.equal(store.resolveTargetPort(web, 80, web2), 8081, 'the same name maps per pod');
    t.equal(store.resolveTargetPort(web, 80, web3), undefined, 'the pod has no port of that name');
    t.equal(store.resolveTargetPort(web, 9090, web1), 9091, 'numeric targetPort');
    t.equal(store.resolveTargetPort(web, 53, web1), 5354, 'TCP mapping preferred over UDP on one port number');
    t.equal(store.resolveTargetPort(web, 81, web1), undefined, 'not a port of the service');
  });

  t.test('nodes, namespaces, dump', async (t) => {
    t.equal(store.nodeIp('node-1'), '192.168.0.1');
    t.equal(store.nodeIp('node-3'), undefined);
    t.same(store.node('node-2')?.addresses, ['192.168.0.2']);
    t.same(store.namespace('team-b')?.labels, { [ISTIO_DATAPLANE_LABEL]: 'ambient' });
    const dump = store.snapshot();
    t.same(JSON.parse(JSON.stringify(dump)), dump, 'the dump survives JSON');
    t.equal(dump.version, 1);
    t.equal(dump.nodeName, 'node-1');
    t.same(dump.services.find((s) => s.name === 'web')?.endpoints?.filter((e) => e.servicePort === 80), [
      { servicePort: 80, address: '10.0.1.1:8080', workload: 'team-a/web-1' },
      { servicePort: 80, address: 'fd00::101:8080', workload: 'team-a/web-1' },
      { servicePort: 80, address: '10.0.2.1:8081', workload: 'team-a/web-2' },
    ]);
    t.equal(dump.services.find((s) => s.name === 'manual')?.endpoints, null, 'unknown endpoints are null, not none');
    t.equal(dump.workloads.length, 9);
  });

  t.test('what readers get is frozen', async (t) => {
    t.ok(Object.isFrozen(store.workloads()));
    t.ok(Object.isFrozen(store.workloadByIp('10.0.1.1')));
    t.ok(Object.isFrozen(store.serviceEndpoints(web, 80)));
    t.throws(() => (store.localEnrolledIps(4) as string[]).push('10.0.0.66'));
  });
});

t.test("a service's EndpointSlices replace its selector, and it falls back to the selector when they go", async (t) => {
  const store = new WorkloadStore({ nodeName: 'node-1' });
  const slice = convertObject(
    {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: 'web-x1', namespace: 'team-a', labels: { 'kubernetes.io/service-name': 'web' } },
      addressType: 'IPv4',
      ports: [{ port: 8443 }],
      endpoints: [{ addresses: ['10.0.2.1', '10.0.2.2'], nodeName: 'node-2' }, { addresses: ['192.0.2.7'], conditions: { ready: false } }],
    },
    TRUST_DOMAIN,
  );
  if (slice.kind !== 'EndpointSlice') throw new Error('not a slice');
  const web = service('web', { clusterIP: '10.96.0.10', selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] });
  store.replaceAll(
    snapshot({
      namespaces: [enrolledNamespace],
      pods: [pod({ name: 'web-1', node: 'node-1', ips: ['10.0.1.1'], labels: { app: 'web' } }), pod({ name: 'web-2', node: 'node-2', ips: ['10.0.2.1'] })],
      services: [web],
      endpointSlices: [slice.object],
    }),
  );
  t.match(store.serviceEndpoints(web, 80), [{ ip: '10.0.2.1', port: 8443, node: 'node-2', workload: { name: 'web-2' } }], "the slice's first address of its ready endpoint, and the pod that has it");
  t.equal(store.serviceEndpoints(web, 80)?.length, 1);
  store.applyBatch([{ op: 'delete', kind: 'EndpointSlice', namespace: 'team-a', name: 'web-x1' }]);
  t.match(store.serviceEndpoints(web, 80), [{ ip: '10.0.1.1', port: 8080, workload: { name: 'web-1' } }], 'no slice left: the pods the selector matches');
});

t.test('a store without a node name has no local workloads', async (t) => {
  const store = new WorkloadStore();
  store.replaceAll(snapshot({ namespaces: [enrolledNamespace], pods: [pod({ name: 'web', node: 'node-1', ips: ['10.0.0.1'] })] }));
  t.same(store.localWorkloads(), []);
  t.same(store.localEnrolledIps(4), []);
  t.equal(store.workloadByIp('10.0.0.1')?.identity, 'spiffe://cluster.local/ns/team-a/sa/default');
});

t.test('batches, versions and sources', async (t) => {
  const store = new WorkloadStore();
  const events: StoreChange[] = [];
  store.on('change', (change: StoreChange) => events.push(change));
  t.equal(store.version, 0);

  store.replaceAll(snapshot({ namespaces: [enrolledNamespace], pods: [pod({ name: 'a', ips: ['10.0.0.1'] }), pod({ name: 'b', ips: ['10.0.0.2'] })] }), 'files');
  store.replaceAll(snapshot({ pods: [pod({ name: 'cni-1', ips: ['10.0.0.3'] })] }), 'cni');
  t.same(events, [{ version: 1, source: 'files' }, { version: 2, source: 'cni' }]);
  const a = store.workloadByIp('10.0.0.1');

  store.replaceAll(snapshot({ namespaces: [enrolledNamespace], pods: [pod({ name: 'a', ips: ['10.0.0.1'] }), pod({ name: 'b', ips: ['10.0.0.2'] })] }), 'files');
  t.equal(store.version, 2, 'a batch that changes nothing is not a new version');
  t.equal(events.length, 2, 'and wakes nobody');

  store.replaceAll(snapshot({ namespaces: [enrolledNamespace], pods: [pod({ name: 'a', ips: ['10.0.0.1'] })] }), 'files');
  t.equal(store.version, 3);
  t.equal(store.workloadByIp('10.0.0.2'), undefined, 'b is gone: its source no longer lists it');
  t.equal(store.workloadByIp('10.0.0.3')?.name, 'cni-1', "another source's objects stay");
  t.equal(store.workloadByIp('10.0.0.1'), a, 'an unchanged workload keeps its object across versions');

  store.applyBatch([
    { op: 'upsert', kind: 'Pod', object: pod({ name: 'c', ips: ['10.0.0.4'] }) },
    { op: 'delete', kind: 'Pod', namespace: 'team-a', name: 'cni-1' },
    { op: 'upsert', kind: 'Service', object: service('svc', { clusterIP: '10.96.0.1' }) },
  ]);
  t.equal(store.version, 4, 'one batch, one version');
  t.same(events.at(-1), { version: 4, source: 'default' });
  t.equal(store.workloadByIp('10.0.0.3'), undefined);
  t.equal(store.workloadByIp('10.0.0.4')?.name, 'c');
  t.equal(store.serviceByVip('10.96.0.1')?.name, 'svc');

  store.applyBatch([{ op: 'delete', kind: 'Node', name: 'never-there' }]);
  t.equal(store.version, 4, 'deleting what is absent changes nothing');
});

t.test('two live pods claiming one IP: the ready one wins', async (t) => {
  const store = new WorkloadStore();
  store.replaceAll(
    snapshot({
      namespaces: [enrolledNamespace],
      pods: [pod({ name: 'stale', ips: ['10.0.0.7'], ready: false }), pod({ name: 'fresh', ips: ['10.0.0.7'] })],
    }),
  );
  t.equal(store.workloadByIp('10.0.0.7')?.name, 'fresh');
});

t.test('a CNI-reported pod network gives a pod without status IPs its addresses until the status has them', async (t) => {
  const store = new WorkloadStore({ nodeName: 'node-1' });
  store.replaceAll(snapshot({ namespaces: [enrolledNamespace], pods: [pod({ name: 'web', node: 'node-1' })] }));
  t.same(store.localEnrolledIps(4), [], 'no IP yet: nothing to capture');
  const versions: number[] = [];
  store.on('change', (change: StoreChange) => versions.push(change.version));

  store.applyPodNetworks([{ op: 'upsert', network: { namespace: 'team-a', name: 'web', containerId: 'c1', ips: ['10.0.0.7'] } }]);
  t.same(store.localEnrolledIps(4), ['10.0.0.7'], 'the CNI IP is captured at once');
  t.equal(store.workloadByIp('10.0.0.7')?.name, 'web');
  t.equal(versions.length, 1, 'one change');
  store.applyPodNetworks([{ op: 'upsert', network: { namespace: 'team-a', name: 'web', containerId: 'c1', ips: ['10.0.0.7'] } }]);
  t.equal(versions.length, 1, 'the same report again changes nothing');

  store.applyPodNetworks([{ op: 'delete', namespace: 'team-a', name: 'web', containerId: 'old-sandbox' }]);
  t.same(store.localEnrolledIps(4), ['10.0.0.7'], 'a DEL of another sandbox leaves the entry');
  t.equal(versions.length, 1);

  store.replaceAll(snapshot({ namespaces: [enrolledNamespace], pods: [pod({ name: 'web', node: 'node-1', ips: ['10.0.0.8'] })] }));
  t.same(store.localEnrolledIps(4), ['10.0.0.7'], "the runtime's report of the current sandbox wins over a status that lags");

  store.applyPodNetworks([{ op: 'delete', namespace: 'team-a', name: 'web', containerId: 'c1' }]);
  t.equal(store.podNetwork('team-a', 'web'), undefined, 'its own sandbox removes it');
  t.same(store.localEnrolledIps(4), ['10.0.0.8'], "after DEL the status's IPs count again");
});

t.test('a pod network without a pod object, or for a pod out of the mesh, captures nothing', async (t) => {
  const store = new WorkloadStore({ nodeName: 'node-1' });
  store.replaceAll(snapshot({ namespaces: [enrolledNamespace, namespace('plain')], pods: [pod({ name: 'db', namespace: 'plain', node: 'node-1' })] }));
  store.applyPodNetworks([
    { op: 'upsert', network: { namespace: 'team-a', name: 'unknown', containerId: 'c1', ips: ['10.0.0.9'] } },
    { op: 'upsert', network: { namespace: 'plain', name: 'db', containerId: 'c2', ips: ['10.0.0.10'] } },
  ]);
  t.same(store.localEnrolledIps(4), []);
  t.equal(store.workloadByIp('10.0.0.10')?.enrolled, false, 'known by IP, not enrolled');
  t.equal(store.podNetworks().length, 2);
});
