/**
 * The agent as a process whose stdout is a pipe that nobody reads (a stalled log collector): connections through it
 * keep working, its memory stays bounded, and the log lines it cannot write are dropped and counted
 * (ambit_log_dropped_lines_total on its metrics port); once stdout is read again, a log line says how many went;
 * and a SIGTERM while stdout stalls still ends it.
 * No root: HBONE (15008) needs no capture, so the test is the source agent, with a certificate from the mesh CA.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import t from 'tap';
import { AGENT_ENV, AGENT_NODE_FLAGS } from '../agent/index.js';
import { LOG_BUFFER_LIMIT_BYTES, LOG_EXIT_FLUSH_MS } from '../core/log/log.js';
import { CertificateAuthority, sniForIdentity } from '../core/identity/index.js';
import { CLI_PATH, metricValue } from '../testbed/index.js';
import { within } from './mesh/hold.js';

const NODE_IP = '127.0.0.21';
const POD_IP = '127.0.4.1';
const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';
const SERVER = 'spiffe://cluster.local/ns/demo/sa/server';
/** Each refused stream's authority: logged in the refusal's detail, so a few thousand streams make tens of MiB of log. */
const LONG_AUTHORITY = 'x'.repeat(4096);

function clusterYaml(podPort: number): string {
  const docs = [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'ambit.dev/mode': 'enabled' } } },
    { apiVersion: 'v1', kind: 'Node', metadata: { name: 'node1' }, status: { addresses: [{ type: 'InternalIP', address: NODE_IP }] } },
    {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'server', namespace: 'demo', labels: { app: 'server' } },
      spec: { nodeName: 'node1', serviceAccountName: 'server', containers: [{ name: 'app', ports: [{ containerPort: podPort }] }] },
      status: { phase: 'Running', podIP: POD_IP },
    },
  ];
  return docs.map((d) => `---\n${JSON.stringify(d)}\n`).join('');
}

/** The agent's resident set now and at its peak (VmHWM), in bytes. */
function residentSet(pid: number): { now: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(/(\d+) kB/.exec(status.split('\n').find((l) => l.startsWith(field)) ?? '')?.[1] ?? NaN) * 1024;
  return { now: kib('VmRSS:'), peak: kib('VmHWM:') };
}

const mib = (bytes: number) => (bytes / 1048576).toFixed(1);

t.test('a stalled stdout: traffic flows, memory stays bounded, dropped lines are counted and reported', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ambit-log-stall-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const echo = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  await new Promise<void>((resolve) => echo.listen(0, POD_IP, resolve));
  t.teardown(() => new Promise((resolve) => echo.close(resolve)));
  const podPort = (echo.address() as net.AddressInfo).port;
  await writeFile(path.join(dir, 'cluster.yaml'), clusterYaml(podPort));
  const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
  await ca.save(path.join(dir, 'ca'));
  const creds = await ca.issueKeyAndCert(CLIENT);

  const offset = 30000 + Math.floor(Math.random() * 200) * 10;
  const ports = { hbone: 15008 + offset, metrics: 15020 + offset, ready: 15021 + offset };
  const agent: ChildProcess = spawn(
    process.execPath,
    [...AGENT_NODE_FLAGS, CLI_PATH, 'agent', '--node', 'node1', '--config', dir, '--ca-dir', path.join(dir, 'ca'), '--listen-host', NODE_IP, '--port-offset', String(offset), '--no-rules', '--upstream-source', 'node'],
    { env: { ...process.env, ...AGENT_ENV }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  // The stall: nobody reads stdout (until the end of the test). Its pipe fills, then every write would wait.
  agent.stdout!.pause();
  let stderr = '';
  agent.stderr!.setEncoding('utf8');
  agent.stderr!.on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise((resolve) => agent.once('exit', resolve));
  t.teardown(async () => {
    if (agent.exitCode === null && agent.signalCode === null) process.kill(agent.pid!, 'SIGKILL');
    await exited;
  });

  const get = async (port: number, urlPath: string) => {
    const response = await fetch(`http://${NODE_IP}:${port}${urlPath}`).catch(() => undefined);
    return response?.ok ? response.text() : undefined;
  };
  await within(20_000, `the agent is ready (stderr: ${stderr})`, async () => (await get(ports.ready, '/healthz/ready')) !== undefined);
  const metric = async (name: string) => metricValue((await get(ports.metrics, '/metrics')) ?? '', name);

  const session = await new Promise<http2.ClientHttp2Session>((resolve, reject) => {
    const s = http2.connect(`https://${NODE_IP}:${ports.hbone}`, {
      createConnection: () =>
        tls.connect({
          host: NODE_IP,
          port: ports.hbone,
          servername: sniForIdentity(SERVER),
          ALPNProtocols: ['h2'],
          key: creds.keyPem,
          cert: creds.certPem,
          ca: ca.rootPem,
          checkServerIdentity: () => undefined,
        }),
    });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
  t.teardown(() => session.destroy());

  /** A connection to the pod through the agent: CONNECT, a few bytes each way, the end. Resolves with the echo. */
  const connection = (payload: string) =>
    new Promise<string>((resolve, reject) => {
      const stream = session.request({ ':method': 'CONNECT', ':authority': `${POD_IP}:${podPort}` }, { endStream: false });
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.once('end', () => resolve(Buffer.concat(chunks).toString()));
      stream.once('error', reject);
      stream.end(payload);
    });
  /** Streams the agent refuses, each with a long line (or two) in its log; 100 at a time, as the agent allows. */
  const refusals = async (count: number) => {
    const one = () =>
      new Promise<void>((resolve) => {
        const stream = session.request({ ':method': 'CONNECT', ':authority': LONG_AUTHORITY }, { endStream: false });
        stream.on('data', () => undefined);
        stream.once('close', resolve);
        stream.once('error', () => undefined);
      });
    let next = 0;
    await Promise.all(
      Array.from({ length: 100 }, async () => {
        while (next++ < count) await one();
      }),
    );
  };

  t.equal(await connection('before'), 'before', 'a connection through the agent works');
  await refusals(500);
  const base = residentSet(agent.pid!);
  const heapBase = await metric('nodejs_heap_size_used_bytes');
  // At least four times the bound of log lines, while connections keep going through the agent.
  const rounds = 6;
  const perRound = Math.ceil((4 * LOG_BUFFER_LIMIT_BYTES) / LONG_AUTHORITY.length / rounds);
  const droppedByRound: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const [echoed] = await Promise.all([connection(`during ${round}`), refusals(perRound)]);
    t.equal(echoed, `during ${round}`, `round ${round}: a connection through the agent still works`);
    droppedByRound.push(await metric('ambit_log_dropped_lines_total'));
  }
  const after = residentSet(agent.pid!);
  t.comment(`resident set: ${mib(base.now)} MiB before, peak ${mib(after.peak)} MiB while the load ran (its garbage included); dropped by round: ${droppedByRound.join(', ')}`);
  // What stays once the agent has collected its garbage (it does, in its first quiet second after a busy spell):
  // the bound and a margin, not the tens of MiB of lines logged. Probed every half second, so the probe stays quiet.
  const limit = LOG_BUFFER_LIMIT_BYTES + 8 * 1048576;
  let retained = Infinity;
  await within(20_000, 'the heap comes back within the bound', async () => (retained = (await metric('nodejs_heap_size_used_bytes')) - heapBase) < limit, 500).catch(() => undefined);
  t.ok(retained < limit, `the heap holds ${mib(retained)} MiB more than before the stall (limit ${mib(limit)}), with ${mib(rounds * perRound * 2 * LONG_AUTHORITY.length)} MiB or more logged`);
  t.ok(droppedByRound[1]! > 0 && droppedByRound[rounds - 1]! > droppedByRound[1]!, `the drop counter rises while stdout stalls (${droppedByRound.join(', ')})`);

  // The collector comes back: what waited is written, and a later line says how many lines were lost.
  const lines: string[] = [];
  let partial = '';
  agent.stdout!.setEncoding('utf8');
  agent.stdout!.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n');
    partial = parts.pop()!;
    lines.push(...parts);
  });
  agent.stdout!.resume();
  const notice = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((r) => typeof r.droppedLines === 'number');
  await within(15_000, 'the agent reports the dropped lines', async () => {
    await connection('after');
    return notice() !== undefined;
  });
  const total = await metric('ambit_log_dropped_lines_total');
  t.match(notice(), { level: 40, droppedLines: total }, `one line reports all ${total} dropped lines, as the counter does`);

  // Stalled again, then stopped as Kubernetes stops a pod: the agent waits LOG_EXIT_FLUSH_MS for stdout, no longer.
  agent.stdout!.pause();
  await refusals(2 * perRound);
  t.ok((await metric('ambit_log_dropped_lines_total')) > total, 'stdout stalls again');
  const stopping = Date.now();
  process.kill(agent.pid!, 'SIGTERM');
  const ended = await Promise.race([exited.then(() => agent.exitCode), new Promise((resolve) => setTimeout(resolve, LOG_EXIT_FLUSH_MS + 5000, 'still running'))]);
  t.equal(ended, 0, `SIGTERM with a stalled stdout: the agent ended (${Date.now() - stopping} ms), with exit code 0`);
});
