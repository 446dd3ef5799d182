/**
 * The mesh CA's costs (issue 14), in one process on the API server double: `npm run bench:ca` prints JSON.
 * - keygen: 100 keys for 100 service accounts as the agent makes them (RSA 2048, at most two at a time), beside RSA
 *   3072 and EC P-256 from the same OpenSSL as the references; the ratio says what another key type would cost.
 * - pod to ready certificate: 100 pods of 100 service accounts scheduled at once on a node whose agent (kubernetes
 *   mode, no rules) runs against a real controller; the time from each pod's creation to the agent's log of its
 *   certificate (own watch, reconcile, key, CSR, TokenReview, node check, signature), and one pod alone afterwards.
 */
import { generateKeyPair } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pLimit from 'p-limit';
import { Agent, AGENT_STARTED_LOG, loadAgentConfig } from '../agent/index.js';
import { Controller, loadControllerConfig } from '../controller/index.js';
import { CertificateAuthority, generateKeyAndCsr } from '../core/identity/index.js';
import { createLogger } from '../core/log/index.js';
import { ApiServer, boundServiceAccountUser, MESH_CUSTOM_RESOURCES, meshCaSecret } from '../testbed/index.js';
import { runBench } from './main.js';

const ACCOUNTS = 100;
const generate = promisify(generateKeyPair);

async function timeKeys(make: () => Promise<unknown>, count: number, concurrency: number): Promise<number> {
  const limit = pLimit(concurrency);
  const started = performance.now();
  await Promise.all(Array.from({ length: count }, () => limit(make)));
  return performance.now() - started;
}

const percentile = (values: number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN);
};

async function podToCertificate(): Promise<Record<string, number>> {
  const api = await ApiServer.start();
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-bench-ca-'));
  const records: Array<Record<string, unknown>> = [];
  const waiters = new Set<() => void>();
  const destination = {
    write(line: string) {
      for (const text of line.split('\n')) if (text) records.push(JSON.parse(text) as Record<string, unknown>);
      for (const wake of waiters) wake();
      return true;
    },
  };
  const waitFor = (test: (r: Record<string, unknown>) => boolean) =>
    new Promise<Record<string, unknown>>((resolve) => {
      const check = () => {
        const found = records.find(test);
        if (found === undefined) return;
        waiters.delete(check);
        resolve(found);
      };
      waiters.add(check);
      check();
    });
  try {
    for (const type of MESH_CUSTOM_RESOURCES) api.registerResource(type);
    for (const name of ['ambit-system', 'shop']) api.objects('v1', 'namespaces').create({ metadata: { name, ...(name === 'shop' ? { labels: { 'ambit.dev/mode': 'enabled' } } : {}) } });
    api.objects('v1', 'nodes').create({ metadata: { name: 'node1' }, status: { addresses: [{ type: 'InternalIP', address: '127.0.0.1' }] } });
    const agentPod = api.objects('v1', 'pods').create({ metadata: { name: 'ambit-agent-1', namespace: 'ambit-system' }, spec: { nodeName: 'node1', serviceAccountName: 'ambit-agent', hostNetwork: true, containers: [{ name: 'a' }] }, status: { phase: 'Running' } });
    const user = boundServiceAccountUser({ namespace: 'ambit-system', serviceAccount: 'ambit-agent', podName: 'ambit-agent-1', podUid: String((agentPod.metadata as { uid: string }).uid), nodeName: 'node1' });
    api.addToken('controller', { username: 'system:serviceaccount:ambit-system:ambit-controller' });
    api.addToken('agent-api', user);
    api.addToken('agent-stream', { ...user, audiences: ['ambit-controller'] });
    api.addToken('agent-ca', { ...user, audiences: ['ambit-ca'] });
    const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
    api.objects('v1', 'secrets').create(meshCaSecret(ca));
    await mkdir(path.join(dir, 'bundle'));
    await writeFile(path.join(dir, 'bundle', 'trust-bundle.pem'), ca.rootPem);
    await writeFile(path.join(dir, 'token'), 'agent-stream');
    await writeFile(path.join(dir, 'ca-token'), 'agent-ca');
    await api.writeKubeconfig(path.join(dir, 'controller.kubeconfig'), 'controller');
    await api.writeKubeconfig(path.join(dir, 'agent.kubeconfig'), 'agent-api');
    const port = 20000 + Math.floor(Math.random() * 20000);
    const { config: controllerConfig } = loadControllerConfig({}, ['--kubeconfig', path.join(dir, 'controller.kubeconfig'), '--listen-host', '127.0.0.1', '--pod-name', 'c0']);
    const controller = await Controller.start({ ...controllerConfig!, ports: { stream: port, metrics: 0, readiness: 0 } });
    const { config } = loadAgentConfig({}, [
      '--node', 'node1', '--mode', 'kubernetes', '--controller', `https://127.0.0.1:${port}`, '--token-file', path.join(dir, 'token'), '--ca-token-file', path.join(dir, 'ca-token'),
      '--trust-bundle-dir', path.join(dir, 'bundle'), '--kubeconfig', path.join(dir, 'agent.kubeconfig'), '--node-ip', '127.0.0.1', '--listen-host', '127.0.0.1',
      '--port-offset', String(30000 + Math.floor(Math.random() * 200) * 10), '--no-rules', '--upstream-source', 'node',
    ]);
    const agent = await Agent.start(config!, { log: createLogger({ level: 'info', destination }) });
    try {
      await waitFor((r) => r.msg === AGENT_STARTED_LOG.ready);
      const created = new Map<string, number>();
      for (let i = 0; i < ACCOUNTS; i++) {
        created.set(`spiffe://cluster.local/ns/shop/sa/sa-${i}`, Date.now());
        api.objects('v1', 'pods').create({ metadata: { name: `pod-${i}`, namespace: 'shop' }, spec: { nodeName: 'node1', serviceAccountName: `sa-${i}`, containers: [{ name: 'c' }] }, status: { phase: 'Pending' } });
      }
      const took = await Promise.all(
        [...created].map(async ([identity, at]) => Number((await waitFor((r) => r.msg === 'certificate rotated' && r.spiffeId === identity)).time) - at),
      );
      const alone = Date.now();
      api.objects('v1', 'pods').create({ metadata: { name: 'pod-alone', namespace: 'shop' }, spec: { nodeName: 'node1', serviceAccountName: 'sa-alone', containers: [{ name: 'c' }] }, status: { phase: 'Pending' } });
      const single = Number((await waitFor((r) => r.msg === 'certificate rotated' && r.spiffeId === 'spiffe://cluster.local/ns/shop/sa/sa-alone')).time) - alone;
      return { pods: ACCOUNTS, p50Ms: percentile(took, 50), p99Ms: percentile(took, 99), lastMs: Math.max(...took), onePodMs: single };
    } finally {
      await agent.close();
      await controller.close();
    }
  } finally {
    await api.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<number> {
  const rsa2048 = await timeKeys(() => generateKeyAndCsr(`spiffe://cluster.local/ns/shop/sa/x`), ACCOUNTS, 2);
  const rsa3072 = await timeKeys(() => generate('rsa', { modulusLength: 3072 }), ACCOUNTS, 2);
  const p256 = await timeKeys(() => generate('ec', { namedCurve: 'P-256' }), ACCOUNTS, 2);
  const keygen = {
    keys: ACCOUNTS,
    rsa2048KeyAndCsrMs: Math.round(rsa2048),
    rsa3072KeyMs: Math.round(rsa3072),
    p256KeyMs: Math.round(p256),
    rsa2048ToP256: Number((rsa2048 / p256).toFixed(1)),
    rsa3072ToRsa2048: Number((rsa3072 / rsa2048).toFixed(1)),
  };
  const ready = await podToCertificate();
  process.stdout.write(`${JSON.stringify({ date: new Date().toISOString(), node: process.version, cores: (await import('node:os')).cpus().length, keygen, podToReadyCertificate: ready }, null, 2)}\n`);
  return 0;
}

runBench(main);
