/**
 * The discovery stream end to end in one process: the controller's StreamServer (real HTTP/2 over TLS 1.3, with a
 * certificate from a mesh CA) and the agent's ControllerStream applying it to a real WorkloadStore and PolicyStore.
 * Timers (reconnect backoff, the silence deadline) are FakeTime's, so a test says when a retry happens.
 */
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createGunzip, gzipSync } from 'node:zlib';
import t, { type Test } from 'tap';
import { ControllerStream, DELTA_APPLIED_LOG, type ControllerStreamEvents } from '../agent/controller-stream.js';
import { ChangeLog, StreamServer, type TokenVerdict } from '../controller/index.js';
import { tokenExpiry } from '../controller/stream-server.js';
import { convertObject, WorkloadStore, type ConvertedObject, type DiscoveryChange } from '../core/discovery/index.js';
import { CertificateAuthority, TrustBundle } from '../core/identity/index.js';
import { createLogger, type Logger } from '../core/log/index.js';
import { PolicyStore } from '../core/policy/index.js';
import { encodeMessage, parseMessage, STREAM_PATH, type StreamChange } from '../core/stream/index.js';
import { FakeTime } from './mesh/fake-time.js';
import { within } from './mesh/hold.js';
import { LogCapture } from './mesh/loopback.js';

const CONTROLLER_ID = 'spiffe://cluster.local/ns/ambit-system/sa/ambit-controller';
const AGENT_USER = 'system:serviceaccount:ambit-system:ambit-agent';
const TOKENS: Record<string, TokenVerdict> = {
  'agent-token': { authenticated: true, username: AGENT_USER },
  'other-token': { authenticated: true, username: 'system:serviceaccount:shop:default' },
};

function record(object: Record<string, unknown>): StreamChange {
  const converted = convertObject(object, 'cluster.local');
  if (converted.kind === 'skip') throw new Error(`fixture did not convert: ${converted.reason}`);
  return { op: 'upsert', ...(converted as ConvertedObject) };
}

const namespace = (name: string, enrolled = true) => record({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels: enrolled ? { 'ambit.dev/mode': 'enabled' } : {} } });
const pod = (name: string, ip: string, extra: Record<string, unknown> = {}) =>
  record({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'shop', uid: `uid-${name}`, labels: { app: name } },
    spec: { nodeName: 'node1', serviceAccountName: name, containers: [{ name: 'c', ports: [{ containerPort: 8080 }] }] },
    status: { phase: 'Running', podIP: ip, podIPs: [{ ip }], ...extra },
  });
const denyAll = { key: 'security.ambit.dev/v1 AuthorizationPolicy shop/deny', object: { apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy', metadata: { name: 'deny', namespace: 'shop' }, spec: {} } };

interface Rig {
  changes: ChangeLog;
  server: StreamServer;
  /** Stops the server, waits for the agent to notice, and serves `changes` on the same port with the same certificate. */
  restart(changes: ChangeLog): Promise<void>;
  port: number;
  time: FakeTime;
  store: WorkloadStore;
  policies: PolicyStore;
  client: ControllerStream;
  tokenFile: string;
  next<E extends keyof ControllerStreamEvents>(event: E): Promise<ControllerStreamEvents[E][0]>;
}

async function pki(identity = CONTROLLER_ID) {
  const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
  const { keyPem, certPem } = await ca.issueKeyAndCert(identity);
  return { ca, keyPem, certPem, bundle: new TrustBundle(ca.rootPem) };
}

async function rig(
  t: Test,
  options: {
    token?: string;
    serverIdentity?: string;
    pingIntervalMs?: number;
    pingTimeoutMs?: number;
    maxStreamAgeMs?: number;
    initial?: StreamChange[];
    maxBufferedBytes?: number;
    maxMessageBytes?: number;
    log?: Logger;
    compression?: boolean;
  } = {},
): Promise<Rig> {
  const { keyPem, certPem, bundle } = await pki(options.serverIdentity);
  const changes = new ChangeLog(options.maxMessageBytes === undefined ? {} : { maxMessageBytes: options.maxMessageBytes });
  changes.apply(options.initial ?? [namespace('shop'), pod('a', '10.1.0.2')]);
  const authenticate = async (token: string) => TOKENS[token] ?? { authenticated: false, reason: 'unknown token' };
  const serve = (log: ChangeLog, port?: number) =>
    new StreamServer({
      changes: log,
      keyPem,
      certChainPem: certPem,
      authenticate,
      ...(port === undefined ? {} : { port }),
      ...(options.pingIntervalMs === undefined ? {} : { pingIntervalMs: options.pingIntervalMs }),
      ...(options.maxBufferedBytes === undefined ? {} : { maxBufferedBytes: options.maxBufferedBytes }),
      ...(options.pingTimeoutMs === undefined ? {} : { pingTimeoutMs: options.pingTimeoutMs }),
      ...(options.maxStreamAgeMs === undefined ? {} : { maxStreamAgeMs: options.maxStreamAgeMs, random: () => 0.5 }),
    });
  let server = serve(changes);
  const port = await server.listen();
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-stream-'));
  const tokenFile = path.join(dir, 'token');
  await writeFile(tokenFile, `${options.token ?? 'agent-token'}\n`);
  const time = new FakeTime();
  const store = new WorkloadStore({ nodeName: 'node1' });
  const policies = new PolicyStore();
  const client = new ControllerStream({
    url: `https://127.0.0.1:${port}`,
    controllerIdentity: CONTROLLER_ID,
    trustBundle: bundle,
    tokenFile,
    store,
    policies: policies.collection(),
    setTimer: time.setTimer,
    random: () => 0.5,
    ...(options.log === undefined ? {} : { log: options.log }),
    ...(options.compression === undefined ? {} : { compression: options.compression }),
  });
  t.teardown(async () => {
    client.close();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  const next = <E extends keyof ControllerStreamEvents>(event: E) =>
    (once(client, event) as Promise<ControllerStreamEvents[E]>).then(([value]) => value);
  const rig: Rig = {
    changes,
    server,
    port,
    time,
    store,
    policies,
    client,
    tokenFile,
    next,
    restart: async (log) => {
      const down = next('disconnected');
      await server.close();
      await down;
      server = serve(log, port);
      rig.server = server;
      await server.listen();
    },
  };
  return rig;
}

t.test('an agent gets the snapshot, then each change once; a change that alters no record is not sent', async (t) => {
  const r = await rig(t);
  const synced = r.next('synced');
  r.client.start();
  t.same(await synced, { epoch: r.changes.epoch, version: 1 });
  t.ok(r.client.synced && r.store.synced, 'the client and the store count as synced');
  t.equal(r.store.workloadByIp('10.1.0.2')?.name, 'a', 'the snapshot\'s pod is a workload');
  t.equal(r.store.workloadByIp('10.1.0.2')?.enrolled, true, 'enrolled by its namespace');

  const applied = r.next('applied');
  r.changes.apply([pod('b', '10.1.0.3'), { op: 'upsert', kind: 'Policy', policy: denyAll }]);
  t.same(await applied, { version: 2, changes: 2 });
  t.equal(r.store.workloadByIp('10.1.0.3')?.name, 'b');
  const toB = () =>
    r.policies.decideFacts(
      { sourceIp: '10.1.0.2', sourceIdentity: 'spiffe://cluster.local/ns/shop/sa/a', plaintext: false, destination: r.store.workloadByIp('10.1.0.3')!, target: { host: '10.1.0.3', port: 8080 } },
      () => [],
    ).decision;
  t.equal(toB(), 'DENY', 'the allow-nothing policy from the stream is enforced');
  const lifted = r.next('applied');
  r.changes.apply([{ op: 'delete', kind: 'Policy', key: denyAll.key }]);
  await lifted;
  t.equal(toB(), 'ALLOW', 'and its delete lifts it');

  // a restart count and a condition's time are not in the record: the same record, no version, nothing sent
  t.same(r.changes.apply([pod('b', '10.1.0.3', { containerStatuses: [{ name: 'c', restartCount: 4 }], conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: '2026-12-02T10:00:00Z' }] })]), []);
  const deleted = r.next('applied');
  r.changes.apply([{ op: 'delete', kind: 'Pod', namespace: 'shop', name: 'a' }]);
  t.same(await deleted, { version: 4, changes: 1 }, 'the next delta is the next version: the status-only update made none');
  t.equal(r.store.workloadByIp('10.1.0.2'), undefined, 'a deleted pod is gone');
});

t.test('at debug level, each applied delta is one line with its version and the keys it changed', async (t) => {
  const logs = new LogCapture();
  const r = await rig(t, { log: createLogger({ level: 'debug', destination: logs }) });
  const synced = r.next('synced');
  r.client.start();
  await synced;
  const applied = r.next('applied');
  r.changes.apply([pod('b', '10.1.0.3'), { op: 'delete', kind: 'Pod', namespace: 'shop', name: 'a' }]);
  await applied;
  const line = await logs.waitFor((record) => record.msg === DELTA_APPLIED_LOG);
  t.match(line, { level: 20, version: 2, keys: ['Pod shop/b', 'Pod shop/a'] });
  t.type(line.time, 'number', 'timed in ms, as every line');
});

/** The lines of a snapshot as a plain HTTP/2 client reads them, up to its `synced`. */
async function snapshotLines(port: number): Promise<string[]> {
  const session = http2.connect(`https://127.0.0.1:${port}`, { rejectUnauthorized: false, minVersion: 'TLSv1.3' });
  try {
    const request = session.request({ ':method': 'GET', ':path': STREAM_PATH, authorization: 'Bearer agent-token' });
    request.setEncoding('utf8');
    let text = '';
    for await (const chunk of request) {
      text += chunk as string;
      if (text.includes('{"t":"synced"')) break;
    }
    return text.split('\n').filter((l) => l !== '').slice(0, 3);
  } finally {
    session.destroy();
  }
}

t.test('agents that connect at the same version get the same snapshot (encoded once); a change makes a new one', async (t) => {
  const r = await rig(t);
  const first = await snapshotLines(r.port);
  t.same(await snapshotLines(r.port), first, 'the same lines at the same version');
  r.changes.apply([pod('b', '10.1.0.3')]);
  const after = (await snapshotLines(r.port)).map((l) => parseMessage(l));
  t.match(after[0], { t: 'snapshot', version: 2 }, 'the version after the change');
  t.ok(after[1]?.t === 'records' && after[1].changes.some((c) => c.op === 'upsert' && c.kind === 'Pod' && (c.object as { name: string }).name === 'b'), 'with the new pod');
  t.match(after[2], { t: 'synced', version: 2 });
});

t.test('with accept-encoding gzip, the stream is whole gzip members: the snapshot in one, each delta in its own, read as they come', async (t) => {
  const r = await rig(t);
  const plain = await snapshotLines(r.port);
  const session = http2.connect(`https://127.0.0.1:${r.port}`, { rejectUnauthorized: false, minVersion: 'TLSv1.3' });
  t.teardown(() => session.destroy());
  const request = session.request({ ':method': 'GET', ':path': STREAM_PATH, authorization: 'Bearer agent-token', 'accept-encoding': 'deflate, gzip;q=0.9' });
  const [headers] = (await once(request, 'response')) as [http2.IncomingHttpHeaders];
  t.equal(headers['content-encoding'], 'gzip');
  const gunzip = createGunzip();
  let wire = 0;
  request.on('data', (chunk: Buffer) => {
    wire += chunk.length;
    gunzip.write(chunk);
  });
  let text = '';
  const upTo = (mark: string) =>
    new Promise<void>((resolve) => {
      const check = () => {
        if (!text.includes(mark)) return;
        gunzip.off('data', onData);
        resolve();
      };
      const onData = (chunk: Buffer) => {
        text += chunk.toString('utf8');
        check();
      };
      gunzip.on('data', onData);
      check();
    });
  await upTo('{"t":"synced"');
  t.same(text.split('\n').filter((l) => l !== ''), plain, 'the same lines as the plain stream');
  t.ok(wire < Buffer.byteLength(text), `compressed: ${wire} bytes on the wire for ${Buffer.byteLength(text)}`);
  r.changes.apply([pod('c', '10.1.0.9')]);
  // the delta is decodable at once, while the stream stays open: its member is whole
  await upTo('"t":"delta"');
  const delta = parseMessage(text.split('\n').filter((l) => l.includes('"t":"delta"'))[0] ?? '');
  t.ok(delta.t === 'delta' && delta.changes.some((c) => c.op === 'upsert' && c.kind === 'Pod' && (c.object as { name: string }).name === 'c'), 'the delta, decoded');
  const refused = session.request({ ':method': 'GET', ':path': STREAM_PATH, authorization: 'Bearer agent-token', 'accept-encoding': 'gzip;q=0' });
  const [refusedHeaders] = (await once(refused, 'response')) as [http2.IncomingHttpHeaders];
  t.equal(refusedHeaders['content-encoding'], undefined, 'gzip;q=0 gets the plain stream');
  refused.close();
});

/** A controller that answers the stream with `members` (gzip, each given write one member) and then ends it. */
async function gzipController(t: Test, writes: string[][]) {
  const { keyPem, certPem, bundle } = await pki();
  const server = http2.createSecureServer({ key: keyPem, cert: certPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] });
  server.on('stream', (stream) => {
    stream.respond({ ':status': 200, 'content-type': 'application/x-ndjson', 'content-encoding': 'gzip' });
    // all members in one write: the inflater has them all at once, as it may from any one read of the socket
    stream.end(Buffer.concat(writes.map((lines) => gzipSync(lines.join('\n') + '\n'))));
  });
  server.on('error', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-gz-'));
  const tokenFile = path.join(dir, 'token');
  await writeFile(tokenFile, 'agent-token');
  const store = new WorkloadStore();
  const policies = new PolicyStore();
  const client = new ControllerStream({
    url: `https://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    controllerIdentity: CONTROLLER_ID,
    trustBundle: bundle,
    tokenFile,
    store,
    policies: policies.collection(),
    random: () => 0.5,
  });
  t.teardown(async () => {
    client.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(dir, { recursive: true, force: true });
  });
  return { client, store };
}

t.test('gzip: what the inflater still holds when the stream ends is read; nothing after a bad line is', async (t) => {
  const snapshot = (name: string, ip: string) => [
    encodeMessage({ t: 'snapshot', epoch: 'e1', version: 1 }).trim(),
    encodeMessage({ t: 'records', changes: [namespace('shop'), pod(name, ip)] as never }).trim(),
    encodeMessage({ t: 'synced', epoch: 'e1', version: 1 }).trim(),
  ];
  const whole = await gzipController(t, [snapshot('a', '10.1.0.2')]);
  const synced = once(whole.client, 'synced');
  whole.client.start();
  await synced;
  t.equal(whole.store.workloadByIp('10.1.0.2')?.name, 'a', 'a snapshot in the last member before the end is applied');

  // a bad line, then (more than one inflated chunk later) the rest of a snapshot: none of it may be applied
  const [begin = '', records = '', end = ''] = snapshot('b', '10.1.0.3');
  const bad = await gzipController(t, [[begin, 'not json', ' '.repeat(64 * 1024) + 'x'], [records, end]]);
  let appliedAfterError = false;
  bad.client.on('synced', () => (appliedAfterError = true));
  const disconnected = once(bad.client, 'disconnected');
  bad.client.start();
  const [{ reason }] = (await disconnected) as [{ reason: string }];
  t.match(reason, /not JSON/, 'the stream ends at the bad line');
  t.notOk(appliedAfterError, 'no snapshot applied after it');
  t.equal(bad.store.workloadByIp('10.1.0.3'), undefined, 'and no record of it');
});

t.test('a controller whose certificate the trust bundle does not vouch for is refused', async (t) => {
  const r = await rig(t);
  const foreign = await pki();
  await r.server.close();
  const impostor = new StreamServer({ changes: r.changes, keyPem: foreign.keyPem, certChainPem: foreign.certPem, authenticate: async (token) => TOKENS[token]!, port: r.port });
  t.teardown(() => impostor.close());
  await impostor.listen();
  const down = r.next('disconnected');
  r.client.start();
  t.match((await down).reason, /certificate|self.signed|unable to verify/i, 'the handshake fails');
  t.notOk(r.client.synced, 'nothing applied');
});

t.test('a reconnect to the same controller resumes from the version held; one to another replica gets a snapshot', async (t) => {
  const r = await rig(t);
  const events: string[] = [];
  r.client.on('synced', ({ version }) => events.push(`synced ${version}`));
  r.client.on('applied', ({ version }) => events.push(`applied ${version}`));
  const synced = r.next('synced');
  r.client.start();
  await synced;

  // the controller goes away, and changes are made meanwhile; the store serves its last state
  const down = r.next('disconnected');
  const restarted = r.restart(r.changes);
  t.match((await down).reason, /closed|ended|GOAWAY|reset/i, 'the client notices the controller leave');
  r.changes.apply([pod('b', '10.1.0.3')]);
  r.changes.apply([{ op: 'delete', kind: 'Pod', namespace: 'shop', name: 'a' }]);
  t.equal(r.store.workloadByIp('10.1.0.2')?.name, 'a', 'the last state is kept while the controller is away');
  await restarted;
  const caughtUp = new Promise<void>((resolve) => r.client.on('applied', ({ version }) => version === 3 && resolve()));
  r.time.advance(60_000);
  await caughtUp;
  t.same(events, ['synced 1', 'applied 2', 'applied 3'], 'resumed: the two changes it missed, and no snapshot');
  t.equal(r.store.workloadByIp('10.1.0.3')?.name, 'b');
  t.equal(r.store.workloadByIp('10.1.0.2'), undefined, 'the delete it missed is applied');

  // the other replica: its own epoch, another numbering, so a snapshot that replaces what the agent holds
  const other = new ChangeLog();
  other.apply([namespace('shop'), pod('d', '10.1.0.5')]);
  await r.restart(other);
  const resynced = r.next('synced');
  r.time.advance(60_000);
  await resynced;
  t.same(events.at(-1), 'synced 1', 'a snapshot of the other replica');
  t.equal(r.store.workloadByIp('10.1.0.5')?.name, 'd');
  t.equal(r.store.workloadByIp('10.1.0.3'), undefined, 'what the other replica does not list is gone');
});

t.test('refusals: no token, a rejected token, a user that may not read; the store is left as it was', async (t) => {
  for (const [token, status, reason] of [
    ['other-token', 403, 'user_not_allowed'],
    ['forged', 401, 'token_rejected'],
  ] as const) {
    const r = await rig(t, { token });
    const down = r.next('disconnected');
    r.client.start();
    const { reason: said } = await down;
    t.match(said, `refused with ${status}: ${reason}`, `${token}: ${said}`);
    t.notOk(r.client.synced, 'nothing applied');
    t.equal(r.store.workloadByIp('10.1.0.2'), undefined);
  }
  const r = await rig(t);
  await writeFile(r.tokenFile, '');
  const down = r.next('disconnected');
  r.client.start();
  t.match((await down).reason, /is empty/, 'an empty token file is not sent');
});

t.test('a controller that has not read the whole cluster yet refuses to stream: no snapshot of half a cluster', async (t) => {
  const { keyPem, certPem, bundle } = await pki();
  let synced = false;
  const changes = new ChangeLog();
  changes.apply([namespace('shop')]);
  const server = new StreamServer({ changes, keyPem, certChainPem: certPem, authenticate: async (token) => TOKENS[token]!, synced: () => synced });
  const port = await server.listen();
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-stream-'));
  await writeFile(path.join(dir, 'token'), 'agent-token');
  const time = new FakeTime();
  const store = new WorkloadStore({ nodeName: 'node1' });
  store.applyBatch([pod('kept', '10.1.0.9') as DiscoveryChange], 'controller');
  const client = new ControllerStream({ url: `https://127.0.0.1:${port}`, controllerIdentity: CONTROLLER_ID, trustBundle: bundle, tokenFile: path.join(dir, 'token'), store, policies: new PolicyStore().collection(), setTimer: time.setTimer, random: () => 0.5 });
  t.teardown(async () => {
    client.close();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  const down = once(client, 'disconnected');
  client.start();
  t.match((await down)[0], { reason: /refused with 503: not_synced/ });
  t.equal(store.workloadByIp('10.1.0.9')?.name, 'kept', 'the agent keeps what it had');
  synced = true;
  const resynced = once(client, 'synced');
  time.advance(60_000);
  await resynced;
  t.equal(store.workloadByIp('10.1.0.9'), undefined, 'once synced, the snapshot replaces it');
});

t.test('a server with another identity is refused, whatever CA signed it', async (t) => {
  const r = await rig(t, { serverIdentity: 'spiffe://cluster.local/ns/shop/sa/impostor' });
  const down = r.next('disconnected');
  r.client.start();
  t.match((await down).reason, /presented spiffe:\/\/cluster\.local\/ns\/shop\/sa\/impostor, not spiffe:\/\/cluster\.local\/ns\/ambit-system\/sa\/ambit-controller/);
  t.notOk(r.client.synced);
});

t.test('a silent stream is dropped at the deadline and the agent connects again', async (t) => {
  const r = await rig(t, { pingIntervalMs: 3_600_000 });
  const synced = r.next('synced');
  r.client.start();
  await synced;
  const down = r.next('disconnected');
  r.time.advance(30_000);
  t.match((await down).reason, 'no data for 30000 ms');
  const again = r.next('streaming');
  r.time.advance(60_000);
  t.same(await again, { resumed: true }, 'connected again, and resumed: the controller still holds its epoch');
});

// plain (an agent that asks for no encoding), and gzip, whose ~1.5 MB compress to about 64 KB: a 4 KiB cap then
for (const [compression, cap] of [[false, 64 * 1024], [true, 4 * 1024]] as const) t.test(`${compression ? 'gzip' : 'plain'}: a snapshot far larger than the cap on unsent data still arrives whole, under backpressure, with the deltas made meanwhile`, async (t) => {
  const pods = Array.from({ length: 3000 }, (_, i) => pod(`p${i}`, `10.2.${Math.floor(i / 250)}.${(i % 250) + 1}`));
  const r = await rig(t, { initial: [namespace('shop'), ...pods], maxBufferedBytes: cap, compression });
  const synced = r.next('synced');
  r.client.start();
  const { version } = await synced;
  t.equal(version, r.changes.version, 'synced at the version of the snapshot (its ~1.5 MB of records are two versions: deltas stay under 1 MiB)');
  t.equal(r.store.workloadByIp('10.2.11.250')?.name, 'p2999', `the last record of ~1.5 MB of records, with a ${cap / 1024} KiB cap`);
  const late = r.next('applied');
  r.changes.apply([pod('late', '10.3.0.1')]);
  t.same(await late, { version: version + 1, changes: 1 }, 'and the stream goes on with the next delta');
  t.equal(r.store.workloadByIp('10.3.0.1')?.name, 'late');
});

t.test('protocol checks: what the agent refuses to apply', async (t) => {
  t.throws(() => parseMessage('{"t":"delta","version":-1,"changes":[]}'), { code: 'STREAM_PROTOCOL_ERROR' }, 'a negative version');
  t.throws(() => parseMessage('not json'), { code: 'STREAM_PROTOCOL_ERROR' });
  t.throws(() => parseMessage('{"t":"evil"}'), { code: 'STREAM_PROTOCOL_ERROR' });
  const good = pod('a', '10.1.0.2');
  t.same(parseMessage(encodeMessage({ t: 'delta', version: 2, changes: [good] })), { t: 'delta', version: 2, changes: [good] }, 'a record survives the wire');
  const badIp = { ...good, object: { ...(good as { object: object }).object, ips: ['10.1.0.999'] } };
  t.throws(() => parseMessage(encodeMessage({ t: 'delta', version: 2, changes: [badIp as StreamChange] })), { message: /ips is not a list of IP addresses/ });
  t.throws(() => parseMessage('{"t":"delta","version":2,"changes":[{"op":"delete","kind":"Pod","name":"a"}]}'), { message: /namespace is not a non-empty string/ }, 'a namespaced delete names its namespace');
  t.throws(() => parseMessage('{"t":"records","changes":[{"op":"upsert","kind":"Secret","object":{}}]}'), { message: /unknown kind "Secret"/ });
  const service = { op: 'upsert', kind: 'Service', object: { name: 'web', namespace: 'shop', hostname: 'web.shop.svc.cluster.local', vips: ['10.96.0.1'], labels: {}, ports: [null] } };
  t.throws(() => parseMessage(JSON.stringify({ t: 'delta', version: 2, changes: [service] })), { message: /ports is not a list of ports/ }, 'a port the store could not read');
});

t.test('a stream ends at its age limit and the agent resumes from its version, with no snapshot', async (t) => {
  const r = await rig(t, { maxStreamAgeMs: 300 });
  const synced = r.next('synced');
  r.client.start();
  await synced;
  const down = await r.next('disconnected');
  t.ok(r.client.synced, `the agent keeps its state when the stream ends (${down.reason})`);
  const resumed = r.next('streaming');
  r.changes.apply([pod('b', '10.1.0.3')]);
  r.time.advance(60_000);
  t.same(await resumed, { resumed: true }, 'it resumes: what it holds is still good');
  await new Promise<void>((resolve) => {
    const check = () => r.store.workloadByIp('10.1.0.3') !== undefined && resolve();
    r.client.on('applied', check);
    check();
  });
  t.pass('and gets the change it missed');
});

t.test('an agent connection that stops answering HTTP/2 PINGs is closed with its stream', async (t) => {
  const { keyPem, certPem, ca } = await pki();
  const changes = new ChangeLog();
  changes.apply([namespace('shop')]);
  const logs = new LogCapture();
  const log = createLogger({ level: 'warn', destination: logs });
  const server = new StreamServer({ changes, keyPem, certChainPem: certPem, authenticate: async (token) => TOKENS[token]!, pingIntervalMs: 100, pingTimeoutMs: 300, log });
  const port = await server.listen();
  // the agent's node, as the controller sees it: a TCP hop the test can freeze (a node that died, a cut link)
  const hops: net.Socket[] = [];
  const relay = net.createServer((agentSide) => {
    const controllerSide = net.connect({ host: '127.0.0.1', port });
    hops.push(agentSide, controllerSide);
    agentSide.pipe(controllerSide);
    controllerSide.pipe(agentSide);
    agentSide.on('error', () => undefined);
    controllerSide.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  const relayPort = (relay.address() as net.AddressInfo).port;
  const session = http2.connect(`https://127.0.0.1:${relayPort}`, { ca: ca.rootPem, checkServerIdentity: () => undefined });
  t.teardown(async () => {
    session.destroy();
    for (const hop of hops) hop.destroy();
    relay.close();
    await server.close();
  });
  session.on('error', () => undefined);
  const stream = session.request({ ':method': 'GET', ':path': STREAM_PATH, authorization: 'Bearer agent-token' });
  stream.on('error', () => undefined);
  const [headers] = (await once(stream, 'response')) as [http2.IncomingHttpHeaders];
  t.equal(headers[':status'], 200);
  t.equal(server.streams, 1, 'streaming');
  // frozen: nothing the controller sends arrives, so no PING is answered
  const controllerSide = hops[1]!;
  controllerSide.unpipe();
  controllerSide.pause();
  await logs.waitFor((r) => r.msg === 'agent does not answer HTTP/2 PINGs; its connection is closed');
  await within(3000, 'the stream is dropped', () => server.streams === 0);
  t.pass('the controller closed the connection and dropped its stream');
});

t.test('no line outgrows what an agent reads: a big relist becomes consecutive deltas, a big snapshot more chunks', async (t) => {
  // pods whose labels make each record about 2 KiB, 40 of them: 80 KiB, over a 16 KiB message bound
  const many = Array.from({ length: 40 }, (_, i) => {
    const change = pod(`p${i}`, `10.2.0.${i + 1}`) as StreamChange & { op: 'upsert'; object: { labels: Record<string, string> } };
    return { ...change, object: { ...change.object, labels: { app: `p${i}`, note: 'x'.repeat(2000) } } } as StreamChange;
  });
  const r = await rig(t, { initial: [namespace('shop')], maxMessageBytes: 16 * 1024 });
  const synced = r.next('synced');
  r.client.start();
  await synced;
  const lines: string[] = [];
  r.changes.on('delta', (delta) => lines.push(encodeMessage({ t: 'delta', version: delta.version, changes: delta.changes })));
  const before = r.changes.version;
  const deltas = r.changes.apply(many);
  t.ok(deltas.length >= 5, `one relist, ${deltas.length} deltas`);
  t.same(deltas.map((d) => d.version), deltas.map((_, i) => before + i + 1), 'consecutive versions');
  t.ok(lines.every((line) => line.length <= 16 * 1024 + 100), `every delta line within the bound (largest ${Math.max(...lines.map((l) => l.length))})`);
  t.equal(deltas.flatMap((d) => d.changes).length, 40, 'every change once');
  await new Promise<void>((resolve) => {
    const check = () => r.client.version === r.changes.version && resolve();
    r.client.on('applied', check);
    check();
  });
  t.equal(r.store.workloads().length, 40, 'the agent applied them all');

  const chunks = r.changes.snapshotChunks();
  t.ok(chunks.length >= 5, `the snapshot in ${chunks.length} chunks`);
  t.ok(chunks.every((chunk) => JSON.stringify(chunk).length <= 16 * 1024 + 100), 'each within the bound');
  t.equal(chunks.flat().length, r.changes.size, 'every record once');
  // a second agent gets that snapshot whole
  const second = await rig(t, { initial: r.changes.snapshot(), maxMessageBytes: 16 * 1024 });
  const again = second.next('synced');
  second.client.start();
  await again;
  t.equal(second.store.workloads().length, r.store.workloads().length, 'a snapshot in many chunks is applied whole');
});

t.test("a stream ends when the token it was opened with expires, and the agent comes back (with the kubelet's new token)", async (t) => {
  // a JWT-shaped token (the review, faked here, vouches for it) that expires in two seconds
  const SHORT_LIVED = ['e30', Buffer.from(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 2 })).toString('base64url'), 'sig'].join('.');
  TOKENS[SHORT_LIVED] = { authenticated: true, username: AGENT_USER };
  t.equal(tokenExpiry(SHORT_LIVED), JSON.parse(Buffer.from(SHORT_LIVED.split('.')[1]!, 'base64url').toString()).exp * 1000);
  t.equal(tokenExpiry('not-a-jwt'), undefined, 'a token that is no JWT has no expiry of its own');
  const r = await rig(t, { token: SHORT_LIVED });
  const synced = r.next('synced');
  r.client.start();
  await synced;
  const down = await r.next('disconnected');
  t.ok(r.client.synced, `the stream ended at the token's expiry (${down.reason}); the agent keeps its state`);
  const resumed = r.next('streaming');
  await writeFile(r.tokenFile, 'agent-token\n');
  r.time.advance(60_000);
  t.same(await resumed, { resumed: true }, 'and resumes with the token it reads now');
});
