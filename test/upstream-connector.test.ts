/**
 * The agent's connections to its pods: from whose address (transparentSourceFor, pure), what happens when the
 * process may not make transparent sockets (UpstreamConnector with an injected socket factory; no root needed), and
 * the start-up check that refuses an agent asked for transparent connections it cannot make.
 */
import { once } from 'node:events';
import net from 'node:net';
import t, { type Test } from 'tap';
import { verifiedHboneClient } from '../agent/inbound.js';
import { UpstreamConnector, checkUpstreamSource, transparentSourceFor } from '../agent/proxy.js';
import type { Workload } from '../core/discovery/index.js';
import { AmbitError } from '../core/errors/errors.js';
import type { HboneInboundRequest } from '../core/hbone/index.js';
import { createRegistry } from '../core/metrics/metrics.js';

const NODE_IP = '10.250.0.1';
const POD = { host: '10.244.1.3', port: 8080 };

t.test('transparentSourceFor', async (t) => {
  t.equal(transparentSourceFor(NODE_IP, POD, '10.244.2.7'), '10.244.2.7', 'a pod on another node');
  t.equal(transparentSourceFor(NODE_IP, POD, '::ffff:10.244.1.9'), '10.244.1.9', 'an IPv4-mapped client is IPv4');
  t.equal(transparentSourceFor(NODE_IP, POD, undefined), undefined, 'no client known: the node address');
  t.equal(transparentSourceFor(NODE_IP, POD, NODE_IP), undefined, 'the node itself');
  t.equal(transparentSourceFor(NODE_IP, POD, POD.host), undefined, 'the pod itself, through a Service: its kernel would drop its own address');
  t.equal(transparentSourceFor(NODE_IP, POD, '127.0.0.1'), undefined, 'loopback');
  t.equal(transparentSourceFor(NODE_IP, POD, '0.0.0.0'), undefined, 'unspecified');
  t.equal(transparentSourceFor(NODE_IP, POD, 'fd00::7'), undefined, 'IPv6: replies are routed back for IPv4 only');
  t.equal(transparentSourceFor(NODE_IP, { host: 'fd00::3' }, '10.244.2.7'), undefined, 'an IPv6 target');
  t.equal(transparentSourceFor(NODE_IP, POD, 'not-an-ip'), undefined);
});

t.test('an HBONE client address is believed only from the identity that owns it', async (t) => {
  const client = { identity: 'spiffe://cluster.local/ns/demo/sa/client' } as Workload;
  const request = (peerIdentity: string, forwarded?: string) =>
    ({ peerIdentity, forwardedFor: forwarded === undefined ? undefined : { host: forwarded, port: 40000 } }) as HboneInboundRequest;
  t.equal(verifiedHboneClient(client, request(client.identity, '10.244.1.2')), '10.244.1.2', 'the client itself');
  t.equal(verifiedHboneClient(client, request('spiffe://cluster.local/ns/demo/sa/other', '10.244.1.2')), undefined, 'another workload naming it');
  t.equal(verifiedHboneClient(undefined, request(client.identity, '10.99.0.9')), undefined, 'an address that is no known workload');
  t.equal(verifiedHboneClient(client, request(client.identity)), undefined, 'no forwarded header');
});

/** A loopback listener that answers every connection with the address it saw and ends. */
async function echoAddressServer(t: Test): Promise<number> {
  const server = net.createServer((socket) => socket.end(socket.remoteAddress ?? ''));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

async function readAll(socket: net.Socket): Promise<string> {
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  await once(socket, 'end');
  socket.destroy();
  return Buffer.concat(chunks).toString();
}

/** A connector for NODE_IP whose transparent sockets come from `openTransparent`. */
function connectorWith(openTransparent: (address: string) => net.Socket, source: 'transparent' | 'node' = 'transparent'): UpstreamConnector {
  return new UpstreamConnector({ source, nodeIp: NODE_IP, openTransparent });
}

function mustNotBeCalled(): net.Socket {
  throw new Error('must not be called');
}

t.test('a connector from the node address never makes a transparent socket', async (t) => {
  const port = await echoAddressServer(t);
  const connector = connectorWith(mustNotBeCalled, 'node');
  t.equal(await readAll(await connector.connect({ host: '127.0.0.1', port }, '10.244.2.7')), '127.0.0.1');
});

t.test('a transparent connector connects the socket it was given, bound for the client', async (t) => {
  const port = await echoAddressServer(t);
  const asked: string[] = [];
  const connector = connectorWith((address) => {
    asked.push(address);
    return new net.Socket({ allowHalfOpen: true });
  });
  const upstream = await connector.connect({ host: '127.0.0.1', port }, '::ffff:10.244.2.7');
  // Node reads connect()'s noDelay only in the Socket constructor: the given socket must get it explicitly, or Nagle
  // delays the small writes of request/response traffic.
  const noDelay = Object.getOwnPropertySymbols(upstream).find((s) => s.description === 'kSetNoDelay');
  t.equal(noDelay && (upstream as unknown as Record<symbol, unknown>)[noDelay], true, 'Nagle is off on the given socket too');
  t.equal(await readAll(upstream), '127.0.0.1');
  t.same(asked, ['10.244.2.7'], 'the factory was asked for the client address');
  await readAll(await connector.connect({ host: '127.0.0.1', port }, NODE_IP));
  t.same(asked, ['10.244.2.7'], 'but not for the node address');
});

const noPrivilege = () => {
  const cause = Object.assign(new Error('setsockopt(IP_TRANSPARENT) failed: Operation not permitted (EPERM)'), { code: 'EPERM' });
  return new AmbitError('SOCKOPT_FAILED', 'cannot open a TCP socket bound transparently', { cause });
};

t.test('a transparent connector that loses its privilege fails the connection, never falls back to the node address', async (t) => {
  const port = await echoAddressServer(t);
  const connector = connectorWith(() => {
    throw noPrivilege();
  });
  for (let i = 0; i < 2; i++) await t.rejects(connector.connect({ host: '127.0.0.1', port }, '10.244.2.7'), { code: 'SOCKOPT_FAILED' }, `attempt ${i + 1}`);
});

t.test('sourceFor: the client in transparent mode where it can be, the node always in node mode', async (t) => {
  const transparent = connectorWith(mustNotBeCalled);
  t.equal(transparent.sourceFor(POD, '10.244.2.7'), '10.244.2.7');
  t.equal(transparent.sourceFor({ host: '192.0.2.10' }, '10.244.1.9'), '10.244.1.9', 'a passthrough destination: the pod');
  t.equal(transparent.sourceFor(POD, undefined), undefined, 'no client: the node');
  const node = connectorWith(mustNotBeCalled, 'node');
  t.equal(node.sourceFor(POD, '10.244.2.7'), undefined);
  t.same([transparent.transparent, node.transparent], [true, false]);
});

t.test('the mode is a metric', async (t) => {
  for (const source of ['transparent', 'node'] as const) {
    const registry = createRegistry();
    new UpstreamConnector({ source, nodeIp: NODE_IP, registry });
    t.match(await registry.metrics(), `ambit_upstream_source{mode="${source}"} 1`, source);
  }
});

t.test('an agent asked for transparent connections that cannot make them does not start, and says why', async (t) => {
  const check = (manageRules: boolean, openTransparent: (address: string) => net.Socket) => () =>
    checkUpstreamSource({ upstreamSource: 'transparent', manageRules }, openTransparent);
  const opened = () => new net.Socket();
  t.throws(check(false, opened), { code: 'UPSTREAM_SOURCE_UNAVAILABLE', message: /--no-rules.*replies.*--upstream-source node.*NetworkPolic/s }, 'no managed rules');
  t.throws(check(true, () => { throw noPrivilege(); }), { code: 'UPSTREAM_SOURCE_UNAVAILABLE', message: /CAP_NET_ADMIN.*--upstream-source node/s }, 'no CAP_NET_ADMIN');
  const noAddon = () => {
    throw new AmbitError('ADDON_MISSING', 'the native addon is not built');
  };
  t.throws(check(true, noAddon), { code: 'UPSTREAM_SOURCE_UNAVAILABLE', message: /native addon.*not built/s, cause: { code: 'ADDON_MISSING' } }, 'no addon');
  t.doesNotThrow(check(true, opened), 'all there');
  t.doesNotThrow(() => checkUpstreamSource({ upstreamSource: 'node', manageRules: false }, mustNotBeCalled), 'node: nothing to check');
});
