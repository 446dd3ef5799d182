/**
 * The HBONE listener's per-source cap in the agent (two real agents on loopback): past it, a source's new
 * connection is refused at accept with its own reason, one log line and the refusal metric, while another source
 * still gets in. Loopback is all of 127.0.0.0/8, so each client binds its own source address.
 */
import { once } from 'node:events';
import type http2 from 'node:http2';
import t from 'tap';
import { metricValue } from '../testbed/index.js';
import { hboneSession, pod, startLoopbackMesh, type LoopbackMesh } from './mesh/loopback.js';

const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';
const SERVER = 'spiffe://cluster.local/ns/demo/sa/server';
const PER_SOURCE = 2;
const REASON = 'too_many_connections_from_source';

let mesh: LoopbackMesh;
t.before(async () => {
  mesh = await startLoopbackMesh({ agentArgs: ['--hbone-max-connections-per-source', String(PER_SOURCE)] });
});
t.teardown(async () => {
  await mesh?.close();
});

const refusedTotal = (reason: string) =>
  mesh.agents.node2.registry.metrics().then((m) => metricValue(m, 'ambit_connections_refused_total', { direction: 'hbone', reason }));

/** The status of a CONNECT to pod c on `s`. */
async function connectStatus(s: http2.ClientHttp2Session): Promise<number> {
  const stream = s.request({ ':method': 'CONNECT', ':authority': `${pod('c').ip}:${mesh.appPort}` }, { endStream: false });
  const [headers] = (await once(stream, 'response')) as [http2.IncomingHttpHeaders];
  stream.close();
  return Number(headers[':status']);
}

t.test('a source past its cap is refused once, logged once and counted; another source still gets in', async (t) => {
  const creds = await mesh.ca.issueKeyAndCert(CLIENT);
  const before = await refusedTotal(REASON);
  const logs = mesh.logs.node2.window();
  const open: http2.ClientHttp2Session[] = [];
  t.teardown(() => open.forEach((s) => s.destroy()));
  for (let i = 0; i < PER_SOURCE; i++) {
    const s = hboneSession(mesh, creds, SERVER, '127.0.0.1');
    open.push(s);
    t.equal(await connectStatus(s), 200, `connection ${i + 1} of 127.0.0.1 is served`);
  }
  const over = hboneSession(mesh, creds, SERVER, '127.0.0.1');
  open.push(over);
  over.on('error', () => undefined);
  let connected = false;
  over.once('connect', () => (connected = true));
  await new Promise((resolve) => over.once('close', resolve));
  t.notOk(connected, 'the one past the cap is closed before its handshake');
  const record = await logs.waitFor((r) => r.msg === 'connection refused' && r.reason === REASON);
  t.match(record, { direction: 'hbone', hbone: '127.0.0.1', detail: /127\.0\.0\.1 holds the listener's per-source maximum of 2 connections/ });

  const other = hboneSession(mesh, creds, SERVER, '127.0.0.2');
  open.push(other);
  t.equal(await connectStatus(other), 200, 'another source is served while 127.0.0.1 is at its cap');
  t.equal((await refusedTotal(REASON)) - before, 1, 'counted once in ambit_connections_refused_total');
  t.equal(logs.filter((r) => r.msg === 'connection refused').length, 1, 'one log line, and no tls_handshake_failed for the socket it closed');
});
