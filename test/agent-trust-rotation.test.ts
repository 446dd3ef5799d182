/**
 * A root rotation in local mode, through two real agents on loopback that share one `--ca-dir`: the trust bundle
 * goes from [old] to [old, new], the signer moves to the new root (the leaves are re-issued by it), then the bundle
 * goes to [new]. No connection is refused at any step, and one opened before the rotation carries bytes after it.
 */
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { rename, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import type net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import t, { type Test } from 'tap';
import { CertificateAuthority, sniForIdentity } from '../core/identity/index.js';
import { metricValue } from '../testbed/index.js';
import { tlsProbe, type TlsProbeResult } from './mesh/tls-probe.js';
import { exchange, NODE_IPS, pod, SERVICE_PORT, SERVICE_VIP, startLoopbackMesh, type LogCapture, type LoopbackMesh } from './mesh/loopback.js';

const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';
const SERVER = 'spiffe://cluster.local/ns/demo/sa/server';

let mesh: LoopbackMesh;
t.before(async () => {
  mesh = await startLoopbackMesh();
});
t.teardown(async () => {
  await mesh?.close();
});

const caDir = () => path.join(mesh.dir, 'ca');
const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256;

/** Replaces the bundle file as an operator's tooling would: a whole new file renamed over the old one. */
async function writeBundle(pems: string[]): Promise<void> {
  const file = path.join(caDir(), 'trust-bundle.pem');
  await writeFile(`${file}.tmp`, pems.join(''));
  await rename(`${file}.tmp`, file);
}

/** Waits for a record of `msg` that comes after the first `from` records (so an earlier step's cannot answer). */
function waitAfter(log: LogCapture, from: number, test: (r: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  return log.waitFor((r) => log.records.indexOf(r) >= from && test(r), 10_000);
}

/** Both agents logged that they took the bundle `roots`. */
async function bothTookBundle(marks: { node1: number; node2: number }, roots: string[]): Promise<void> {
  for (const node of ['node1', 'node2'] as const) {
    await waitAfter(mesh.logs[node], marks[node], (r) => r.msg === 'trust bundle changed' && JSON.stringify(r.roots) === JSON.stringify(roots));
  }
}

function marks(): { node1: number; node2: number } {
  return { node1: mesh.logs.node1.records.length, node2: mesh.logs.node2.records.length };
}

/** New connections from a to c (cross-node HBONE), to l (same node) and to the service: each must be carried. */
async function newConnectionsWork(t: Test, step: string): Promise<void> {
  const targets = [
    { host: pod('c').ip, port: mesh.appPort },
    { host: pod('l').ip, port: mesh.appPort },
    { host: SERVICE_VIP, port: SERVICE_PORT },
  ];
  const replies = await Promise.all(targets.map(async (to, i) => (await exchange(await mesh.connect('a', to), `${step} ${i}`)).toString()));
  t.same(replies, targets.map((_, i) => `${step} ${i}`), `${step}: new connections are carried`);
}

/** A raw TLS connection to an agent's HBONE listener asking for `identity`, with `client`'s certificate. */
function probe(node: 'node1' | 'node2', identity: string, client: { keyPem: string; certPem: string }, trust: string): Promise<TlsProbeResult> {
  return tlsProbe({ host: NODE_IPS[node], port: mesh.ports.hbone, servername: sniForIdentity(identity), key: client.keyPem, cert: client.certPem, ca: trust });
}

/** Whether the leaf `node` presents for `identity` was issued by `root`. */
async function presentedIsFrom(node: 'node1' | 'node2', identity: string, client: { keyPem: string; certPem: string }, root: string): Promise<boolean> {
  // The probe only reads what the server presents: its own verification would hide an unexpected issuer.
  const { peerCertificate } = await tlsProbe({ host: NODE_IPS[node], port: mesh.ports.hbone, servername: sniForIdentity(identity), key: client.keyPem, cert: client.certPem, rejectUnauthorized: false });
  return peerCertificate?.checkIssued(new X509Certificate(root)) ?? false;
}

/** A raw HTTP/2 session to node2's HBONE listener as SERVER's peer, with `client`'s certificate. */
function hboneSession(client: { keyPem: string; certPem: string }, trust: string): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://${NODE_IPS.node2}:${mesh.ports.hbone}`, {
      createConnection: () =>
        tls.connect({ host: NODE_IPS.node2, port: mesh.ports.hbone, servername: sniForIdentity(SERVER), ALPNProtocols: ['h2'], key: client.keyPem, cert: client.certPem, ca: trust, checkServerIdentity: () => undefined }),
    });
    session.once('connect', () => resolve(session));
    session.once('error', reject);
  });
}

/** The status of a CONNECT to pod c on `session`, 0 when the stream could not be opened or was reset. */
function connectStatus(session: http2.ClientHttp2Session): Promise<number> {
  return new Promise((resolve) => {
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request({ ':method': 'CONNECT', ':authority': `${pod('c').ip}:${mesh.appPort}` }, { endStream: false });
    } catch {
      resolve(0);
      return;
    }
    stream.once('response', (headers) => {
      resolve(Number(headers[':status']));
      stream.close();
    });
    stream.once('error', () => resolve(0));
    stream.once('close', () => resolve(0));
  });
}

function refusedTotal(): Promise<number> {
  return Promise.all([mesh.agents.node1.registry.metrics(), mesh.agents.node2.registry.metrics()]).then(([a, b]) =>
    metricValue(a, 'ambit_connections_refused_total') + metricValue(b, 'ambit_connections_refused_total'),
  );
}

t.test('old -> [old, new] -> leaves on new -> [new], and nothing is refused', async (t) => {
  const old = mesh.ca;
  const next = await CertificateAuthority.create({ trustDomain: 'cluster.local', commonName: 'Ambit Root CA 2' });
  const client = await next.issueKeyAndCert(CLIENT);
  const oldLeaf = await old.issueKeyAndCert(CLIENT);
  await newConnectionsWork(t, 'before');
  t.ok(await presentedIsFrom('node2', SERVER, oldLeaf, old.rootPem), 'the leaves start on the old root');

  // A connection opened before the rotation, kept open through it.
  const open: net.Socket = await mesh.connect('a', { host: pod('c').ip, port: mesh.appPort });
  const echo = (text: string) =>
    new Promise<string>((resolve) => {
      open.once('data', (chunk: Buffer) => resolve(chunk.toString()));
      open.write(text);
    });
  t.equal(await echo('opened'), 'opened');

  let m = marks();
  await writeBundle([old.rootPem, next.rootPem]);
  await bothTookBundle(m, [fingerprint(old.rootPem), fingerprint(next.rootPem)]);
  await newConnectionsWork(t, '[old, new]');

  m = marks();
  await next.save(caDir());
  for (const node of ['node1', 'node2'] as const) {
    await waitAfter(mesh.logs[node], m[node], (r) => r.msg === 'workload certificates re-issued by the new signer' && r.root === fingerprint(next.rootPem));
  }
  t.ok(await presentedIsFrom('node2', SERVER, client, next.rootPem), 'node2 serves a leaf of the new root');
  t.ok(await presentedIsFrom('node1', CLIENT, client, next.rootPem), 'node1\'s client identity moved to the new root');
  await newConnectionsWork(t, 'leaves on new');
  t.equal(await echo('after the signer moved'), 'after the signer moved', 'the open connection still carries bytes');

  // A session of a peer that still holds a leaf of the old root, opened while the old root was trusted.
  const stale = await hboneSession(oldLeaf, `${old.rootPem}${next.rootPem}`);
  t.teardown(() => stale.destroy());
  t.equal(await connectStatus(stale), 200, 'the old root\'s leaf is served while the old root is trusted');
  const goaway = once(stale, 'goaway');

  m = marks();
  await writeBundle([next.rootPem]);
  await bothTookBundle(m, [fingerprint(next.rootPem)]);
  await goaway;
  t.pass('node2 sent GOAWAY on the session whose client certificate chains to the removed root');
  t.equal(await connectStatus(stale), 0, 'and it takes no new stream');
  await newConnectionsWork(t, '[new]');
  t.equal(await echo('after the old root left'), 'after the old root left');
  t.equal(await refusedTotal(), 0, 'no connection was refused at any step');

  t.equal((await probe('node2', SERVER, oldLeaf, next.rootPem)).received, 0, 'a leaf of the removed root is refused now');
  t.ok((await probe('node2', SERVER, client, next.rootPem)).received > 0, 'a leaf of the new root is accepted');
  open.destroy();
});

t.test('a trust-bundle.pem that does not parse keeps the bundle in use, and says why', async (t) => {
  const m = marks();
  await writeBundle(['not a certificate\n']);
  for (const node of ['node1', 'node2'] as const) {
    const rec = await waitAfter(mesh.logs[node], m[node], (r) => r.msg === 'cannot reload the CA folder; keeping the signer and trust bundle in use');
    t.match(String((rec.err as { message?: string } | undefined)?.message), /trust-bundle\.pem/, `${node} names the file`);
  }
  await newConnectionsWork(t, 'bad bundle');
});
