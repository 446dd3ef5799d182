/** The outbound decision as a pure function: no sockets, a store built from objects. */
import t from 'tap';
import { buildOutboundRequest } from '../agent/outbound.js';
import type { OutboundContext } from '../agent/types.js';
import { buildInboundRequest } from '../agent/inbound.js';
import { storeWith } from './mesh/store.js';

const ns = (name: string, labels: Record<string, string> = {}) => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } });
const node = (name: string, ip?: string) => ({ apiVersion: 'v1', kind: 'Node', metadata: { name }, status: { addresses: ip ? [{ type: 'InternalIP', address: ip }] : [] } });
const podObj = (name: string, namespace: string, nodeName: string, ip: string, extra: { sa?: string; labels?: Record<string, string>; ready?: boolean } = {}) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace, labels: extra.labels ?? { app: name } },
  spec: { nodeName, serviceAccountName: extra.sa ?? 'default', containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080 }] }] },
  status: { phase: 'Running', podIP: ip, conditions: [{ type: 'Ready', status: extra.ready === false ? 'False' : 'True' }] },
});
const svc = (name: string, namespace: string, ip: string, selector: Record<string, string>, targetPort: number | string = 'http') => ({
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name, namespace },
  spec: { clusterIP: ip, selector, ports: [{ port: 80, targetPort, protocol: 'TCP' }] },
});

const store = storeWith([
  ns('demo', { 'ambit.dev/mode': 'enabled' }),
  ns('plain'),
  node('node1', '10.0.0.1'),
  node('node2', '10.0.0.2'),
  node('node3'),
  podObj('a', 'demo', 'node1', '10.1.1.1', { sa: 'client' }),
  podObj('l', 'demo', 'node1', '10.1.1.2', { labels: { app: 'web' } }),
  podObj('c', 'demo', 'node2', '10.1.2.1', { labels: { app: 'web' } }),
  podObj('nr', 'demo', 'node2', '10.1.2.9', { labels: { app: 'down' }, ready: false }),
  podObj('lost', 'demo', 'node3', '10.1.3.1', { labels: { app: 'lost' } }),
  podObj('x', 'plain', 'node2', '10.1.2.2'),
  podObj('optout', 'demo', 'node1', '10.1.1.3', { labels: { 'ambit.dev/mode': 'disabled' } }),
  svc('web', 'demo', '10.96.0.1', { app: 'web' }),
  svc('remote', 'demo', '10.96.0.2', { app: 'c' }),
  svc('down', 'demo', '10.96.0.3', { app: 'down' }),
  svc('legacy', 'plain', '10.96.0.4', { app: 'x' }, 8080),
]);
const ctx: OutboundContext = { store, nodeName: 'node1', nodeIp: '10.0.0.1', agentPorts: [15001, 15006, 15008, 15020, 15021], hbonePort: 15008, pick: (c) => c[0] as never };
const build = (src: string, host: string, port: number) => buildOutboundRequest(ctx, src, { host, port });

t.test('a pod on another node goes over HBONE to that node, expecting its identity', async (t) => {
  const r = build('10.1.1.1', '10.1.2.1', 8080);
  t.match(r, { kind: 'hbone', via: { host: '10.0.0.2', port: 15008 }, authority: '10.1.2.1:8080', target: { host: '10.1.2.1', port: 8080 } });
  if (r.kind === 'hbone') {
    t.equal(r.destination.identity, 'spiffe://cluster.local/ns/demo/sa/default');
    t.equal(r.source.identity, 'spiffe://cluster.local/ns/demo/sa/client');
  }
});

t.test('a pod on this node is delivered locally', async (t) => {
  t.match(build('10.1.1.1', '10.1.1.2', 8080), { kind: 'local', target: { host: '10.1.1.2', port: 8080 } });
});

t.test('a service VIP resolves to an endpoint, local first, with the target port', async (t) => {
  const r = build('10.1.1.1', '10.96.0.1', 80);
  t.match(r, { kind: 'local', target: { host: '10.1.1.2', port: 8080 } });
  t.equal(r.kind !== 'refuse' ? r.service?.name : undefined, 'web');
  t.match(build('10.1.1.1', '10.96.0.2', 80), { kind: 'refuse', reason: 'no_healthy_endpoint' }, 'a selector that matches nothing');
  t.match(build('10.1.1.1', '10.96.0.3', 80), { kind: 'refuse', reason: 'no_healthy_endpoint' }, 'not-ready endpoints are not used');
  t.match(build('10.1.1.1', '10.96.0.1', 81), { kind: 'refuse', reason: 'no_service_port' });
});

t.test('a service VIP in front of pods outside the mesh is passed through to the endpoint', async (t) => {
  t.match(build('10.1.1.1', '10.96.0.4', 80), { kind: 'passthrough', target: { host: '10.1.2.2', port: 8080 } });
});

t.test('destinations outside the mesh pass through', async (t) => {
  t.match(build('10.1.1.1', '10.1.2.2', 80), { kind: 'passthrough', target: { host: '10.1.2.2', port: 80 } }, 'a pod of a namespace not enrolled');
  t.match(build('10.1.1.1', '10.1.1.3', 80), { kind: 'passthrough' }, 'a pod that opted out');
  t.match(build('10.1.1.1', '192.0.2.10', 443), { kind: 'passthrough', destination: undefined }, 'an address the store does not know');
});

t.test('refusals', async (t) => {
  t.match(build('10.1.2.2', '10.1.2.1', 80), { kind: 'refuse', reason: 'unknown_source' }, 'a source that is not a local enrolled pod');
  t.match(build('10.1.1.3', '10.1.2.1', 80), { kind: 'refuse', reason: 'unknown_source' }, 'a pod that opted out');
  t.match(build('10.9.9.9', '10.1.2.1', 80), { kind: 'refuse', reason: 'unknown_source' }, 'an unknown source');
  t.match(build('10.1.1.1', '10.0.0.1', 15001), { kind: 'refuse', reason: 'loop' }, 'the agent itself');
  t.match(build('10.1.1.1', '10.0.0.1', 10250), { kind: 'passthrough' }, 'other node ports (the kubelet) pass through');
  t.match(build('10.1.1.1', '10.1.3.1', 80), { kind: 'refuse', reason: 'unknown_destination_node' }, 'a pod on a node without an address');
});

t.test('inbound: only enrolled local pods of the session identity', async (t) => {
  const id = 'spiffe://cluster.local/ns/demo/sa/default';
  t.match(buildInboundRequest(store, 'node2', { host: '10.1.2.1', port: 8080 }, id), { kind: 'deliver' });
  t.match(buildInboundRequest(store, 'node2', { host: '10.1.2.1', port: 8080 }, 'spiffe://cluster.local/ns/demo/sa/client'), { kind: 'refuse', status: 403, reason: 'identity_mismatch' });
  t.match(buildInboundRequest(store, 'node2', { host: '10.1.1.1', port: 8080 }, id), { kind: 'refuse', status: 404, reason: 'not_local' });
  t.match(buildInboundRequest(store, 'node2', { host: '10.1.2.2', port: 8080 }), { kind: 'refuse', status: 403, reason: 'not_enrolled' });
  t.match(buildInboundRequest(store, 'node2', { host: '10.7.7.7', port: 8080 }), { kind: 'refuse', status: 404, reason: 'unknown_destination' });
  t.match(buildInboundRequest(store, 'node2', { host: '10.1.2.1', port: 8080 }), { kind: 'deliver' }, 'plaintext has no session identity to match');
});

/** An EndpointSlice as the EndpointSlice controller (or an operator, for a selector-less service) writes it. */
const slice = (
  name: string,
  namespace: string,
  serviceName: string | undefined,
  endpoints: object[],
  ports: object[] = [{ name: 'https', port: 6443, protocol: 'TCP' }],
  addressType = 'IPv4',
) => ({
  apiVersion: 'discovery.k8s.io/v1',
  kind: 'EndpointSlice',
  metadata: { name, namespace, labels: serviceName === undefined ? {} : { 'kubernetes.io/service-name': serviceName } },
  addressType,
  endpoints,
  ports,
});
const zoned = (name: string, ip: string, zone: string) => ({ ...node(name, ip), metadata: { name, labels: { 'topology.kubernetes.io/zone': zone } } });
const selectorless = (name: string, namespace: string, ip: string, ports: object[] = [{ name: 'https', port: 443, targetPort: 6443 }]) => ({
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name, namespace },
  spec: { clusterIP: ip, ports },
});

/** A node with an external address besides its internal one (the agent's listeners bind both). */
const twoAddresses = (name: string, internal: string, external: string, zone: string) => ({
  ...zoned(name, internal, zone),
  status: { addresses: [{ type: 'InternalIP', address: internal }, { type: 'ExternalIP', address: external }] },
});

const sliced = storeWith([
  ns('demo', { 'ambit.dev/mode': 'enabled' }),
  twoAddresses('node1', '10.0.0.1', '203.0.113.1', 'z1'),
  zoned('node2', '10.0.0.2', 'z1'),
  zoned('node4', '10.0.0.4', 'z2'),
  podObj('a', 'demo', 'node1', '10.1.1.1', { sa: 'client' }),
  podObj('l', 'demo', 'node1', '10.1.1.2', { labels: { app: 'web' } }),
  podObj('c', 'demo', 'node2', '10.1.2.1', { labels: { app: 'web' } }),
  podObj('far', 'demo', 'node4', '10.1.4.1', { labels: { app: 'web' } }),
  selectorless('kubernetes', 'default', '10.96.0.1'),
  selectorless('api', 'default', '10.96.0.2'),
  slice('api-abc12', 'default', 'api', [{ addresses: ['192.168.0.10'], conditions: { ready: true }, nodeName: 'control-plane' }]),
  selectorless('meshed', 'demo', '10.96.1.1', [{ name: 'http', port: 80, targetPort: 8080 }]),
  slice('meshed-1', 'demo', 'meshed', [{ addresses: ['10.1.2.1'], nodeName: 'node2' }], [{ name: 'http', port: 8080 }]),
  // A selector the slices overrule: the slices are Kubernetes' own answer, with its readiness.
  svc('web', 'demo', '10.96.1.2', { app: 'web' }),
  slice('web-1', 'demo', 'web', [{ addresses: ['10.1.2.1'], nodeName: 'node2', zone: 'z1' }], [{ port: 8081 }]),
  selectorless('cond', 'demo', '10.96.1.3', [{ port: 80, targetPort: 8080 }]),
  slice('cond-1', 'demo', 'cond', [
    { addresses: ['10.1.9.1'], conditions: { ready: false } },
    { addresses: ['10.1.9.2'], conditions: { ready: false, serving: true, terminating: true } },
    { addresses: ['10.1.9.3'], conditions: { ready: true } },
  ], [{ port: 8080 }]),
  selectorless('draining', 'demo', '10.96.1.4', [{ port: 80, targetPort: 8080 }]),
  slice('draining-1', 'demo', 'draining', [
    { addresses: ['10.1.9.4'], conditions: { ready: false, serving: false, terminating: true } },
    { addresses: ['10.1.9.5'], conditions: { ready: false, serving: true, terminating: true } },
  ], [{ port: 8080 }]),
  selectorless('down', 'demo', '10.96.1.5', [{ port: 80, targetPort: 8080 }]),
  slice('down-1', 'demo', 'down', [
    { addresses: ['10.1.9.6'], conditions: { ready: false } },
    { addresses: ['10.1.9.7'], conditions: { ready: false, terminating: true } },
  ], [{ port: 8080 }]),
  selectorless('ports', 'demo', '10.96.1.6', [{ name: 'http', port: 80, targetPort: 8080 }, { name: 'admin', port: 81, targetPort: 9090 }]),
  slice('ports-1', 'demo', 'ports', [{ addresses: ['10.1.9.8'] }], [{ name: 'http', port: 8080 }, { name: 'admin', port: 9090, protocol: 'UDP' }]),
  selectorless('local', 'demo', '10.96.1.7', [{ port: 80, targetPort: 8080 }]),
  slice('local-1', 'demo', 'local', [
    { addresses: ['10.1.4.1'], nodeName: 'node4', zone: 'z2' },
    { addresses: ['10.1.2.1'], nodeName: 'node2', zone: 'z1' },
    { addresses: ['10.1.1.2'], nodeName: 'node1', zone: 'z1' },
  ], [{ port: 8080 }]),
  selectorless('zone', 'demo', '10.96.1.8', [{ port: 80, targetPort: 8080 }]),
  slice('zone-1', 'demo', 'zone', [
    { addresses: ['10.1.4.1'], nodeName: 'node4', zone: 'z2' },
    { addresses: ['10.1.2.1'], nodeName: 'node2' },
  ], [{ port: 8080 }]),
  selectorless('stray', 'demo', '10.96.1.9', [{ port: 80, targetPort: 8080 }]),
  slice('stray-1', 'demo', undefined, [{ addresses: ['10.1.9.9'] }], [{ port: 8080 }]),
  slice('stray-2', 'demo', 'another', [{ addresses: ['10.1.9.9'] }], [{ port: 8080 }]),
  slice('stray-3', 'default', 'stray', [{ addresses: ['10.1.9.9'] }], [{ port: 8080 }]),
  selectorless('six', 'demo', '10.96.1.10', [{ port: 80, targetPort: 8080 }]),
  slice('six-1', 'demo', 'six', [{ addresses: ['fd00::9'] }], [{ port: 8080 }], 'IPv6'),
  // Endpoints on the nodes' own addresses (hostNetwork pods), on the agent's HBONE and metrics ports.
  selectorless('self', 'demo', '10.96.2.1', [{ port: 80, targetPort: 15008 }]),
  slice('self-1', 'demo', 'self', [{ addresses: ['10.0.0.1'], nodeName: 'node1', zone: 'z1' }], [{ port: 15008 }]),
  selectorless('self-external', 'demo', '10.96.2.2', [{ port: 80, targetPort: 15020 }]),
  slice('self-external-1', 'demo', 'self-external', [{ addresses: ['203.0.113.1'], nodeName: 'node1', zone: 'z1' }], [{ port: 15020 }]),
  selectorless('agents', 'demo', '10.96.2.3', [{ port: 80, targetPort: 15020 }]),
  slice('agents-1', 'demo', 'agents', [
    { addresses: ['10.0.0.1'], nodeName: 'node1', zone: 'z1' },
    { addresses: ['10.0.0.2'], nodeName: 'node2', zone: 'z1' },
  ], [{ port: 15020 }]),
  selectorless('node-port', 'demo', '10.96.2.4', [{ port: 80, targetPort: 10250 }]),
  slice('node-port-1', 'demo', 'node-port', [{ addresses: ['10.0.0.1'], nodeName: 'node1', zone: 'z1' }], [{ port: 10250 }]),
]);
const slicedCtx: OutboundContext = { ...ctx, store: sliced };
const viaSlices = (host: string, port: number) => buildOutboundRequest(slicedCtx, '10.1.1.1', { host, port });

t.test('a service whose endpoints the mesh does not know (no selector, no EndpointSlice) passes through to its VIP', async (t) => {
  const r = viaSlices('10.96.0.1', 443);
  t.match(r, { kind: 'passthrough', destination: undefined, service: { namespace: 'default', name: 'kubernetes' }, target: { host: '10.96.0.1', port: 443 } });
  t.match(viaSlices('10.96.0.1', 80), { kind: 'refuse', reason: 'no_service_port' }, 'a port the service does not have is still refused');
});

t.test("a selector-less service with an EndpointSlice goes to the slice's endpoints, on the slice's port of the same name", async (t) => {
  t.match(viaSlices('10.96.0.2', 443), { kind: 'passthrough', destination: undefined, service: { name: 'api' }, target: { host: '192.168.0.10', port: 6443 } }, 'an address outside the mesh');
  const meshed = viaSlices('10.96.1.1', 80);
  t.match(meshed, { kind: 'hbone', target: { host: '10.1.2.1', port: 8080 }, via: { host: '10.0.0.2', port: 15008 }, service: { name: 'meshed' } }, 'an enrolled pod: over HBONE');
  if (meshed.kind === 'hbone') t.equal(meshed.destination.name, 'c');
});

t.test('EndpointSlices overrule the selector', async (t) => {
  t.match(viaSlices('10.96.1.2', 80), { kind: 'hbone', target: { host: '10.1.2.1', port: 8081 } }, 'not the local pod the selector matches, and the port from the slice');
});

t.test('endpoint conditions as Kubernetes defines them', async (t) => {
  t.match(viaSlices('10.96.1.3', 80), { kind: 'passthrough', target: { host: '10.1.9.3', port: 8080 } }, 'ready endpoints only, while there are any');
  t.match(viaSlices('10.96.1.4', 80), { kind: 'passthrough', target: { host: '10.1.9.5', port: 8080 } }, 'none ready: the serving terminating ones');
  t.match(viaSlices('10.96.1.5', 80), { kind: 'refuse', reason: 'no_healthy_endpoint' }, 'none ready or serving: refused');
});

t.test('ports are matched by name and protocol', async (t) => {
  t.match(viaSlices('10.96.1.6', 80), { kind: 'passthrough', target: { host: '10.1.9.8', port: 8080 } });
  t.match(viaSlices('10.96.1.6', 81), { kind: 'refuse', reason: 'no_healthy_endpoint' }, 'the slice serves that name over UDP only');
});

t.test('locality: this node, then this zone, then any', async (t) => {
  t.match(viaSlices('10.96.1.7', 80), { kind: 'local', target: { host: '10.1.1.2', port: 8080 } }, 'the endpoint on this node');
  t.match(viaSlices('10.96.1.8', 80), { kind: 'hbone', target: { host: '10.1.2.1', port: 8080 } }, "this zone (the endpoint's zone from its node when the slice has none)");
});

t.test('only slices labelled for the service, in its namespace and address family, count', async (t) => {
  t.match(viaSlices('10.96.1.9', 80), { kind: 'passthrough', target: { host: '10.96.1.9', port: 80 } }, 'no slice of its own: its VIP');
  t.match(viaSlices('10.96.1.10', 80), { kind: 'refuse', reason: 'no_healthy_endpoint' }, 'an IPv6 slice has no endpoint for an IPv4 VIP');
});

t.test('the loop rule applies to the endpoint chosen for a service as to the address dialled', async (t) => {
  t.match(viaSlices('10.96.2.1', 80), { kind: 'refuse', reason: 'endpoint_loop', target: { host: '10.96.2.1', port: 80 }, message: /service demo\/self .* is this node's agent itself \(10\.0\.0\.1:15008\)/ }, "the service's only endpoint is this node's HBONE port");
  t.match(viaSlices('10.96.2.2', 80), { kind: 'refuse', reason: 'endpoint_loop', message: /203\.0\.113\.1:15020/ }, "or an agent port on another of this node's addresses");
  t.match(viaSlices('10.96.2.3', 80), { kind: 'passthrough', target: { host: '10.0.0.2', port: 15020 } }, 'another ready endpoint is chosen instead, though this node comes first by locality');
  t.match(viaSlices('10.96.2.4', 80), { kind: 'passthrough', target: { host: '10.0.0.1', port: 10250 } }, "this node's other ports are not the agent");
  t.match(viaSlices('203.0.113.1', 15001), { kind: 'refuse', reason: 'loop' }, "dialled directly: an agent port on another of this node's addresses is a loop too");
});
