/**
 * Two agents in this process on loopback addresses, no root needed: node1 at 127.0.0.11, node2 at 127.0.0.12, pods
 * as listeners on other 127.x addresses. The original destination of a captured connection is injected (the test
 * registers it by the client's source address and port before it connects), which is what iptables' DNAT and
 * SO_ORIGINAL_DST do on a real node.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import tls from 'node:tls';
import { Agent, loadAgentConfig } from '../../agent/index.js';
import { writeFileAtomic } from '../../core/fs/index.js';
import { CertificateAuthority, sniForIdentity } from '../../core/identity/index.js';
import { createLogger } from '../../core/log/log.js';

export interface LoopbackPod {
  name: string;
  namespace: string;
  serviceAccount: string;
  node: 'node1' | 'node2';
  ip: string;
}

export const NODE_IPS = { node1: '127.0.0.11', node2: '127.0.0.12' } as const;
export const SERVICE_VIP = '127.0.9.10';
export const SERVICE_PORT = 80;

/** a: client (node1); l: same-node server (node1); c, d: servers on node2 with different identities; x: not enrolled. */
export const PODS: readonly LoopbackPod[] = [
  { name: 'a', namespace: 'demo', serviceAccount: 'client', node: 'node1', ip: '127.0.1.1' },
  { name: 'l', namespace: 'demo', serviceAccount: 'server', node: 'node1', ip: '127.0.1.2' },
  { name: 'c', namespace: 'demo', serviceAccount: 'server', node: 'node2', ip: '127.0.2.1' },
  { name: 'd', namespace: 'demo', serviceAccount: 'other', node: 'node2', ip: '127.0.2.2' },
  { name: 'x', namespace: 'plain', serviceAccount: 'default', node: 'node2', ip: '127.0.3.1' },
];

export function pod(name: string): LoopbackPod {
  const found = PODS.find((p) => p.name === name);
  if (!found) throw new Error(`no loopback pod ${name}`);
  return found;
}

/** What a test changes in the cluster folder: a pod's labels (instead of `app: <name>`), and more objects. */
export interface ClusterChanges {
  labels?: Record<string, Record<string, string>>;
  extra?: unknown[];
}

function clusterYaml(appPort: number, changes: ClusterChanges = {}): string {
  const docs: unknown[] = [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'ambit.dev/mode': 'enabled' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'plain' } },
    ...Object.entries(NODE_IPS).map(([name, address]) => ({
      apiVersion: 'v1',
      kind: 'Node',
      metadata: { name },
      status: { addresses: [{ type: 'InternalIP', address }] },
    })),
    ...PODS.map((p) => ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: p.name, namespace: p.namespace, labels: changes.labels?.[p.name] ?? { app: p.name } },
      spec: { nodeName: p.node, serviceAccountName: p.serviceAccount, containers: [{ name: 'app', ports: [{ name: 'app', containerPort: appPort }] }] },
      status: { phase: 'Running', podIP: p.ip },
    })),
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'svc-c', namespace: 'demo' },
      spec: { clusterIP: SERVICE_VIP, selector: { app: 'c' }, ports: [{ port: SERVICE_PORT, targetPort: 'app', protocol: 'TCP' }] },
    },
    ...(changes.extra ?? []),
  ];
  return docs.map((d) => `---\n${JSON.stringify(d)}\n`).join('');
}

/** A pino destination that keeps every record, parsed, for assertions on access logs and refusal reasons. */
export class LogCapture extends Writable {
  readonly records: Array<Record<string, unknown>> = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (!line) continue;
      const record = JSON.parse(line) as Record<string, unknown>;
      this.records.push(record);
      this.emit('record', record);
    }
    done();
  }
  /** The records written from now on: what a test is about to cause, without those that earlier tests left. */
  window(): LogWindow {
    return new LogWindow(this, this.records.length);
  }
  find(test: (r: Record<string, unknown>) => boolean): Record<string, unknown> | undefined {
    return new LogWindow(this, 0).find(test);
  }
  waitFor(test: (r: Record<string, unknown>) => boolean, timeoutMs = 3000): Promise<Record<string, unknown>> {
    return new LogWindow(this, 0).waitFor(test, timeoutMs);
  }
}

/** The records of a LogCapture from one point on. */
export class LogWindow {
  readonly #capture: LogCapture;
  readonly #start: number;
  constructor(capture: LogCapture, start: number) {
    this.#capture = capture;
    this.#start = start;
  }
  filter(test: (r: Record<string, unknown>) => boolean): Array<Record<string, unknown>> {
    return this.#capture.records.slice(this.#start).filter(test);
  }
  find(test: (r: Record<string, unknown>) => boolean): Record<string, unknown> | undefined {
    return this.#capture.records.slice(this.#start).find(test);
  }
  /** Resolves with the first matching record, as soon as it is written; rejects when none is within `timeoutMs`. */
  waitFor(test: (r: Record<string, unknown>) => boolean, timeoutMs = 3000): Promise<Record<string, unknown>> {
    const found = this.find(test);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const onRecord = (record: Record<string, unknown>) => {
        if (!test(record)) return;
        clearTimeout(timer);
        this.#capture.off('record', onRecord);
        resolve(record);
      };
      const timer = setTimeout(() => {
        this.#capture.off('record', onRecord);
        reject(new Error(`expected log record did not appear within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#capture.on('record', onRecord);
    });
  }
}

export interface LoopbackMesh {
  agents: { node1: Agent; node2: Agent };
  logs: { node1: LogCapture; node2: LogCapture };
  ca: CertificateAuthority;
  dir: string;
  /** The port every pod's echo application listens on. */
  appPort: number;
  /** The port nothing listens on, on every pod address. */
  closedPort: number;
  ports: Agent['config']['ports'];
  /** Opens a connection from pod `from` as if it had been captured on its way to `to`. */
  connect(from: string, to: { host: string; port: number }): Promise<net.Socket>;
  /** A connection to node2's plaintext inbound listener from `fromIp`, captured on its way to `to`. */
  connectPlaintext(fromIp: string, to: { host: string; port: number }): Promise<net.Socket>;
  /** Rewrites cluster.yaml in one write (both agents reload it): the pods with `changes` applied. */
  rewriteCluster(changes: ClusterChanges): Promise<void>;
  close(): Promise<void>;
}

/**
 * A raw mTLS HTTP/2 session to node2's HBONE listener, as a peer agent (or one that misbehaves) opens it: with
 * `creds`, asking by SNI for `identity`, from `localAddress` when given (each 127.x address is another source).
 */
export function hboneSession(mesh: LoopbackMesh, creds: { keyPem: string; certPem: string }, identity: string, localAddress?: string): http2.ClientHttp2Session {
  const port = mesh.ports.hbone;
  return http2.connect(`https://${NODE_IPS.node2}:${port}`, {
    createConnection: () =>
      tls.connect({
        socket: net.connect({ host: NODE_IPS.node2, port, localAddress }),
        servername: sniForIdentity(identity),
        ALPNProtocols: ['h2'],
        key: creds.keyPem,
        cert: creds.certPem,
        ca: mesh.ca.rootPem,
        checkServerIdentity: () => undefined,
      }),
  });
}

/** Sends `payload`, half-closes, and resolves with everything the peer sent back until it ended. */
export function exchange(socket: net.Socket, payload: Buffer | string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
    socket.end(payload);
  });
}

async function listenEcho(host: string, port: number): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

let nextClientPort = 20000 + Math.floor(Math.random() * 20000);

/** `agentArgs`: more flags for both agents. */
export async function startLoopbackMesh(options: { agentArgs?: string[] } = {}): Promise<LoopbackMesh> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ambit-loopback-'));
  const probe = await listenEcho('127.0.0.1', 0);
  const appPort = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  const closedPort = appPort === 65000 ? 65001 : 65000;
  const servers = await Promise.all(PODS.map((p) => listenEcho(p.ip, appPort)));
  await writeFile(path.join(dir, 'cluster.yaml'), clusterYaml(appPort));
  const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
  await ca.save(path.join(dir, 'ca'));

  const destinations = new Map<string, { host: string; port: number }>();
  const originalDestination = (socket: net.Socket) => {
    const key = `${socket.remoteAddress}:${socket.remotePort}`;
    const found = destinations.get(key);
    if (!found) throw new Error(`no injected original destination for ${key}`);
    return found;
  };
  // Ports 15001.. moved by a random offset, so a leftover listener elsewhere on the machine cannot interfere.
  const offset = 20000 + Math.floor(Math.random() * 200) * 10;
  const logs = { node1: new LogCapture(), node2: new LogCapture() };
  const start = (node: 'node1' | 'node2') => {
    const { config } = loadAgentConfig({}, [
      '--node', node, '--config', dir, '--ca-dir', path.join(dir, 'ca'), '--listen-host', NODE_IPS[node], '--port-offset', String(offset), '--no-rules',
      '--upstream-source', 'node', ...(options.agentArgs ?? []),
    ]);
    return Agent.start(config!, { log: createLogger({ level: 'debug', destination: logs[node] }), originalDestination });
  };
  const node1 = await start('node1');
  const node2 = await start('node2');

  const connectFrom = (localAddress: string, agentHost: string, agentPort: number, to: { host: string; port: number }) =>
    new Promise<net.Socket>((resolve, reject) => {
      const localPort = nextClientPort++;
      if (nextClientPort > 60000) nextClientPort = 20000;
      destinations.set(`${localAddress}:${localPort}`, to);
      const socket = net.connect({ host: agentHost, port: agentPort, localAddress, localPort, allowHalfOpen: true });
      socket.once('connect', () => resolve(socket));
      socket.once('error', reject);
    });

  return {
    agents: { node1, node2 },
    logs,
    ca,
    dir,
    appPort,
    closedPort,
    ports: node1.config.ports,
    connect: (from, to) => {
      const p = pod(from);
      return connectFrom(p.ip, NODE_IPS[p.node], node1.config.ports.outbound, to);
    },
    connectPlaintext: (fromIp, to) => connectFrom(fromIp, NODE_IPS.node2, node2.config.ports.inboundPlaintext, to),
    // atomically: a reload in the middle of a plain write would read half a file
    rewriteCluster: (changes) => writeFileAtomic(path.join(dir, 'cluster.yaml'), clusterYaml(appPort, changes), { mode: 0o644 }),
    async close() {
      await Promise.all([node1.close(), node2.close()]);
      await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Opens a connection and exchanges `payload`; resolves with the error code if the agent reset it (on a fast
 * loopback the reset can arrive before the client has even seen its connect complete), or 'OK'.
 */
export async function exchangeOrErrorCode(open: () => Promise<net.Socket>, payload: string): Promise<string> {
  try {
    await exchange(await open(), payload);
    return 'OK';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  }
}
