/** The outbound decision as a pure function: no sockets, a store built from objects. */
import t from 'tap';
import { buildOutboundRequest, type OutboundContext } from '../agent/outbound.js';
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
