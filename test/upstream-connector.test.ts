/**
 * The agent's connections to its pods: from whose address (transparentSourceFor, pure) and what happens when the
 * process may not make transparent sockets (UpstreamConnector with an injected socket factory; no root needed).
 */
import { once } from 'node:events';
import net from 'node:net';
import t, { type Test } from 'tap';
import { verifiedHboneClient } from '../agent/inbound.js';
import { UpstreamConnector, transparentSourceFor } from '../agent/proxy.js';
import type { Workload } from '../core/discovery/index.js';
import { AmbitError } from '../core/errors.js';
import type { HboneInboundRequest } from '../core/hbone/index.js';
import { createLogger } from '../core/log.js';
import { LogCapture } from './mesh/loopback.js';

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

function capturedLogger(): { capture: LogCapture; log: ReturnType<typeof createLogger> } {
  const capture = new LogCapture();
  return { capture, log: createLogger({ level: 'debug', destination: capture }) };
}

/** A connector for NODE_IP whose transparent sockets come from `openTransparent`. */
function connectorWith(log: ReturnType<typeof capturedLogger>['log'], openTransparent: (address: string) => net.Socket, transparent = true): UpstreamConnector {
  return new UpstreamConnector({ transparent, nodeIp: NODE_IP, log, openTransparent });
}

t.test('a connector that is not transparent never makes a transparent socket', async (t) => {
  const port = await echoAddressServer(t);
  const { log } = capturedLogger();
  const connector = connectorWith(log, () => {
      throw new Error('must not be called');
    }, false);
  t.equal(await readAll(await connector.connect({ host: '127.0.0.1', port }, '10.244.2.7')), '127.0.0.1');
});

t.test('a transparent connector connects the socket it was given, bound for the client', async (t) => {
  const port = await echoAddressServer(t);
  const { log } = capturedLogger();
  const asked: string[] = [];
  const connector = connectorWith(log, (address) => {
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

t.test('no privilege: one warning, then every connection from the node address', async (t) => {
  const port = await echoAddressServer(t);
  const { capture, log } = capturedLogger();
  let attempts = 0;
  const connector = connectorWith(log, () => {
      attempts++;
      const cause = Object.assign(new Error('setsockopt(IP_TRANSPARENT) failed: Operation not permitted (EPERM)'), { code: 'EPERM' });
      throw new AmbitError('SOCKOPT_FAILED', 'cannot open a TCP socket bound transparently', { cause });
    });
  for (let i = 0; i < 3; i++) t.equal(await readAll(await connector.connect({ host: '127.0.0.1', port }, '10.244.2.7')), '127.0.0.1');
  t.equal(attempts, 1, 'tried once');
  t.equal(connector.transparent, false);
  const warnings = capture.records.filter((record) => record.level === 40);
  t.equal(warnings.length, 1, 'warned once');
  t.match(warnings[0], { msg: /node address.*CAP_NET_ADMIN/, nodeIp: NODE_IP, err: { message: /cannot open/ } });
});

t.test('a missing addon is the same decision', async (t) => {
  const port = await echoAddressServer(t);
  const { log } = capturedLogger();
  const connector = connectorWith(log, () => {
      throw new AmbitError('ADDON_MISSING', 'the native addon is not built');
    });
  t.equal(await readAll(await connector.connect({ host: '127.0.0.1', port }, '10.244.2.7')), '127.0.0.1');
  t.equal(connector.transparent, false);
});

t.test('any other failure fails this connection only', async (t) => {
  const { log } = capturedLogger();
  const connector = connectorWith(log, () => {
      const cause = Object.assign(new Error('socket(AF_INET) failed: Too many open files (EMFILE)'), { code: 'EMFILE' });
      throw new AmbitError('SOCKOPT_FAILED', 'cannot open a TCP socket bound transparently', { cause });
    });
  await t.rejects(connector.connect(POD, '10.244.2.7'), { code: 'SOCKOPT_FAILED' });
  t.equal(connector.transparent, true, 'still transparent for the next one');
});
