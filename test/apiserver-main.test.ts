/**
 * `npm run apiserver`: the double as a program (the README's Kubernetes walkthrough). It writes the components'
 * credentials with owner-only modes, serves kubectl with them, and stops cleanly on SIGTERM; bad usage exits 2.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'testbed', 'apiserver', 'main.js');
const run = promisify(execFile);

t.test('it writes the credentials, serves kubectl with them, and stops on SIGTERM', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-apiserver-main-'));
  const child = spawn(process.execPath, [MAIN, '--dir', path.join(dir, 'cluster')], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });
  const serving = new Promise<Record<string, unknown>>((resolve, reject) => {
    let text = '';
    child.stdout.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      const line = text.split('\n').find((l) => l.includes('API server double serving'));
      if (line) resolve(JSON.parse(line) as Record<string, unknown>);
    });
    child.once('exit', (code) => reject(new Error(`exited ${code} before serving`)));
  });
  const { url } = await serving;
  t.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);
  const cluster = path.join(dir, 'cluster');
  for (const file of ['kubeconfig', 'controller/kubeconfig', 'agent/kubeconfig', 'agent/token', 'agent/ca-token']) {
    t.equal((await stat(path.join(cluster, file))).mode & 0o077, 0, `${file}: readable by its owner only`);
  }
  const kubectl = (kubeconfig: string, ...args: string[]) => run('kubectl', ['--kubeconfig', kubeconfig, '--cache-dir', path.join(dir, `cache-${Math.random()}`), ...args]);
  const { stdout } = await kubectl(path.join(cluster, 'kubeconfig'), 'get', 'nodes', '-o', 'name');
  t.equal(stdout.trim(), 'node/node1', 'kubectl, with the admin kubeconfig');
  const agent = await kubectl(path.join(cluster, 'agent', 'kubeconfig'), 'get', 'namespaces', '-o', 'name');
  t.match(agent.stdout, /namespace\/ambit-system/, 'and with the agent\'s');
  const protobuf = await kubectl(path.join(cluster, 'kubeconfig'), 'create', 'namespace', 'shop').catch((err: { stderr: string }) => err);
  t.match(protobuf, { stderr: /UnsupportedMediaType.*send JSON/ }, 'a protobuf body (kubectl create namespace) is refused with 415, as the README says');
  child.kill('SIGTERM');
  const [code] = (await once(child, 'exit')) as [number | null];
  t.equal(code, 0, 'SIGTERM stops it cleanly');
});

t.test('bad usage exits 2 with the usage', async (t) => {
  const failed = await run(process.execPath, [MAIN]).catch((err: { code: number; stderr: string }) => err);
  t.match(failed, { code: 2, stderr: /--dir is required[\s\S]*usage: npm run apiserver/ });
});
