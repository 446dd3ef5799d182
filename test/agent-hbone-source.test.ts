/**
 * Whose address a pod is shown for an HBONE stream (agent/inbound.ts `handleHboneConnect`), through the real
 * HboneServer and HboneClient on loopback (no root): with `--upstream-source transparent` the stream's client, and
 * only when the TLS peer owns the address its `forwarded` header names; a stream that proves no client is refused
 * (`source_unverified`) rather than delivered from the node's address, which would pass the pod's NetworkPolicies as
 * the node. With `--upstream-source node` every stream is delivered from the node's address, as before.
 */
import { once } from 'node:events';
import net from 'node:net';
import t, { type Test } from 'tap';
import { ConnectionRegistry } from '../agent/connections.js';
import { EarlyDataBudget } from '../agent/early-data.js';
import { handleHboneConnect } from '../agent/inbound.js';
import type { ProxyInputs } from '../agent/inputs.js';
import { UpstreamConnector } from '../agent/proxy.js';
import type { Revalidation } from '../agent/types.js';
import { AgentTelemetry } from '../agent/telemetry.js';
import { forwardedFor, HboneError, type HboneServer } from '../core/hbone/index.js';
import { createLogger } from '../core/log/index.js';
import { createRegistry } from '../core/metrics/index.js';
import { PolicyStore } from '../core/policy/index.js';
import { metricValue } from '../testbed/index.js';
import { CLIENT, echo, echoServer, hboneClient, meshPki, OTHER, SERVER } from './mesh/hbone-fixtures.js';
import { LogCapture } from './mesh/loopback.js';
import { storeWith } from './mesh/store.js';

const NODE_IP = '127.0.0.12';
/**
 * The client pod (CLIENT's identity, on node1) and a pod of OTHER's, at addresses nothing dials (transparent sockets
 * are plain ones here; transparentSourceFor never binds a loopback address), and the destination pod (SERVER's, on
 * node2), where the test listens.
 */
const CLIENT_POD = '10.244.1.5';
const OTHER_POD = '10.244.1.6';
const SERVER_POD = '127.0.2.1';

const pki = await meshPki([CLIENT, SERVER, OTHER]);

function pod(name: string, namespace: string, serviceAccount: string, node: string, ip: string) {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, uid: `uid-${name}`, labels: { app: name } },
    spec: { nodeName: node, serviceAccountName: serviceAccount, containers: [{ name: 'app' }] },
    status: { phase: 'Running', podIP: ip },
  };
}

/** The destination pod: an echo server on SERVER_POD that counts the connections it accepted. */
async function serverPod(t: Test): Promise<{ port: number; accepted: () => number }> {
  let accepted = 0;
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    accepted++;
    socket.on('error', () => socket.destroy());
    socket.pipe(socket);
  });
  server.listen(0, SERVER_POD);
  await once(server, 'listening');
  t.teardown(() => new Promise((resolve) => server.close(resolve)));
  return { port: (server.address() as net.AddressInfo).port, accepted: () => accepted };
}

/**
 * node2's agent as far as an HBONE stream goes: its store, policies, telemetry and upstream connector, behind a real
 * HboneServer. Transparent sockets are plain ones here (no privilege needed); `bound` lists the addresses asked for.
 */
async function destinationAgent(t: Test, source: 'transparent' | 'node') {
  const store = storeWith(
    [
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'a', labels: { 'ambit.dev/mode': 'enabled' } } },
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'b', labels: { 'ambit.dev/mode': 'enabled' } } },
      pod('client', 'a', 'client', 'node1', CLIENT_POD),
      pod('other', 'b', 'other', 'node1', OTHER_POD),
      pod('server', 'b', 'server', 'node2', SERVER_POD),
    ],
    'node2',
  );
  const registry = createRegistry();
  const logs = new LogCapture();
  const bound: string[] = [];
  const inputs = {
    config: { nodeName: 'node2' },
    store,
    policies: new PolicyStore(),
    telemetry: new AgentTelemetry(registry, createLogger({ level: 'info', destination: logs })),
    connections: new ConnectionRegistry<Revalidation>({ isDenied: () => false, onRevoked: () => undefined }),
    earlyData: new EarlyDataBudget(registry),
    upstream: new UpstreamConnector({
      source,
      nodeIp: NODE_IP,
      openTransparent: (address) => {
        bound.push(address);
        return new net.Socket({ allowHalfOpen: true });
      },
    }),
  } as unknown as ProxyInputs;
  const server: HboneServer = await echoServer(pki, { onConnect: (stream, request) => handleHboneConnect(inputs, stream, request) });
  const client = hboneClient(pki);
  t.teardown(async () => {
    client.close();
    await server.close();
  });
  const destination = await serverPod(t);
  /** A CONNECT to the destination pod as CLIENT, with this `forwarded` header (none when undefined). */
  const connect = (forwarded: string | undefined) =>
    client.connect({
      sourceIdentity: CLIENT,
      destinationIdentity: SERVER,
      via: { host: '127.0.0.1', port: server.address().port },
      authority: `${SERVER_POD}:${destination.port}`,
      headers: forwarded === undefined ? {} : { forwarded },
    });
  const refusedCount = async () => metricValue(await registry.metrics(), 'ambit_connections_refused_total', { direction: 'hbone', reason: 'source_unverified' });
  return { connect, destination, bound, logs, refusedCount };
}

const UNVERIFIED = [
  { what: "a forwarded address another workload's pod owns", forwarded: forwardedFor(OTHER_POD, 40000), detail: `${CLIENT} does not own ${OTHER_POD}` },
  { what: 'a forwarded address that is no workload', forwarded: forwardedFor('10.99.0.9', 40000), detail: `${CLIENT} does not own 10.99.0.9` },
  { what: 'no forwarded header at all', forwarded: undefined, detail: 'no forwarded header' },
];

t.test('transparent: a stream whose client the TLS peer owns is delivered from that client', async (t) => {
  const agent = await destinationAgent(t, 'transparent');
  t.equal(await echo(await agent.connect(forwardedFor(CLIENT_POD, 40000)), 'hello'), 'hello');
  t.same(agent.bound, [CLIENT_POD], "the connection to the pod was bound to the client's address");
  t.equal(agent.destination.accepted(), 1);
});

t.test('transparent: a valid mesh certificate that proves no client is refused, never delivered from the node', async (t) => {
  const agent = await destinationAgent(t, 'transparent');
  for (const [index, { what, forwarded, detail }] of UNVERIFIED.entries()) {
    const window = agent.logs.window();
    const refused = await agent.connect(forwarded).then(
      (stream) => void stream.close(),
      (err: unknown) => err,
    );
    t.ok(refused instanceof HboneError, `${what}: refused`);
    t.match(refused, { status: 403, reason: 'source_unverified' }, `${what}: 403 with its reason`);
    const line = await window.waitFor((r) => r.msg === 'connection refused');
    t.match(line, { direction: 'hbone', reason: 'source_unverified', dst: { ip: SERVER_POD } }, `${what}: logged`);
    t.match(line.detail, detail, `${what}: the log says why`);
    t.notOk((line.src as { workload?: string }).workload, `${what}: the log names no source workload on the peer's word`);
    t.not((line.src as { ip?: string }).ip, OTHER_POD, `${what}: nor the claimed address as the source`);
    t.equal(window.filter((r) => r.msg === 'connection refused').length, 1, `${what}: one line`);
    t.equal(await agent.refusedCount(), index + 1, `${what}: counted with the other refusals`);
  }
  t.same(agent.bound, [], 'no connection to the pod was even started');
  t.equal(agent.destination.accepted(), 0, 'the pod saw nothing');
});

t.test('node: every stream is delivered from the node, as --upstream-source node says', async (t) => {
  const agent = await destinationAgent(t, 'node');
  for (const { what, forwarded } of UNVERIFIED) {
    const window = agent.logs.window();
    t.equal(await echo(await agent.connect(forwarded), what), what, `${what}: delivered`);
    const access = await window.waitFor((r) => r.msg === 'access');
    t.notOk((access.src as { workload?: string }).workload, `${what}: the access log names no source workload on the peer's word`);
    t.equal((access.src as { identity?: string }).identity, CLIENT, `${what}: the source is the TLS identity`);
  }
  t.equal(agent.destination.accepted(), UNVERIFIED.length);
  t.same(agent.bound, [], 'never from a transparent socket');
  t.equal(await agent.refusedCount(), 0);
});
