/** kubectl v1.32 against the API server double: the judge that the double speaks the real protocol. */
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import t from 'tap';
import { needsTools } from './prerequisites.js';
import { pod, startDouble } from './mesh/apiserver-client.js';
import { kubectl, kubectlOk } from './mesh/kubectl.js';
import type { JsonObject } from '../testbed/index.js';

const skip = needsTools(['kubectl'], 'the real client the API server double is judged by');

function names(list: string): unknown[] {
  return ((JSON.parse(list) as JsonObject).items as JsonObject[]).map((o) => (o.metadata as JsonObject).name);
}

t.test('get: pods of a namespace, -o json, by name, -l and --field-selector', { skip }, async (t) => {
  const double = await startDouble(t);
  const pods = double.server.objects('v1', 'pods');
  pods.create(pod('web-1', { labels: { app: 'web' }, nodeName: 'node1' }));
  pods.create(pod('web-2', { labels: { app: 'web' }, nodeName: 'node2' }));
  pods.create(pod('db', { labels: { app: 'db' }, nodeName: 'node1' }));
  const table = await kubectlOk(t, double, ['get', 'pods', '-n', 'default']);
  t.match(table, /^NAME\s+AGE\n/, 'the plain List, printed without a Table');
  t.match(table, /web-1/);
  t.same(names(await kubectlOk(t, double, ['get', 'pods', '-o', 'json'])), ['db', 'web-1', 'web-2']);
  const one = JSON.parse(await kubectlOk(t, double, ['get', 'pod', 'web-2', '-o', 'json'])) as JsonObject;
  t.match(one, { kind: 'Pod', apiVersion: 'v1', metadata: { name: 'web-2' }, spec: { nodeName: 'node2' } });
  t.same(names(await kubectlOk(t, double, ['get', 'po', '-l', 'app=web', '-o', 'json'])), ['web-1', 'web-2'], 'a short name and a label selector');
  t.same(names(await kubectlOk(t, double, ['get', 'pods', '--field-selector', 'spec.nodeName=node1', '-o', 'json'])), ['db', 'web-1']);
  const missing = await kubectl(double, ['get', 'pod', 'nope']);
  t.not(missing.exitCode, 0);
  t.match(missing.stderr, /pods "nope" not found/);
  const unsupported = await kubectl(double, ['get', 'pods', '--field-selector', 'status.podIP=1.2.3.4']);
  t.match(unsupported.stderr, /field label not supported: status\.podIP/);
});

t.test('get -w sees label and delete as they happen; create -f a Pod and a Service; delete', { skip }, async (t) => {
  const double = await startDouble(t);
  const cache = path.join(double.dir, 'cache');
  const watcher = spawn('kubectl', ['--kubeconfig', double.kubeconfig, '--cache-dir', cache, 'get', 'pods', '-w', '--output-watch-events', '-o', 'jsonpath={.type} {.object.metadata.name} {.object.metadata.labels.tier}{"\\n"}'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => watcher.once('exit', (code, signal) => resolve(code ?? (signal === null ? null : -1))));
  t.teardown(async () => {
    if (watcher.exitCode === null && watcher.signalCode === null) watcher.kill('SIGTERM');
    await exited;
  });
  let stderr = '';
  watcher.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const lines = createInterface({ input: watcher.stdout });
  const seen: string[] = [];
  const waiters: (() => void)[] = [];
  lines.on('line', (line) => {
    seen.push(line.trim());
    for (const wake of waiters.splice(0)) wake();
  });
  const line = async (index: number): Promise<string> => {
    while (seen.length <= index) {
      if (watcher.exitCode !== null) throw new Error(`kubectl get -w exited: ${stderr}`);
      await new Promise<void>((resolve) => waiters.push(resolve));
    }
    return seen[index] ?? '';
  };

  const manifest = path.join(double.dir, 'web.yaml');
  await writeFile(
    manifest,
    [
      'apiVersion: v1',
      'kind: Pod',
      'metadata: { name: web, labels: { app: web } }',
      'spec: { nodeName: node1, containers: [{ name: app, image: app, ports: [{ name: http, containerPort: 8080 }] }] }',
      '---',
      'apiVersion: v1',
      'kind: Service',
      'metadata: { name: web }',
      'spec: { selector: { app: web }, ports: [{ name: http, port: 80, targetPort: http }] }',
    ].join('\n'),
  );
  t.match(await kubectlOk(t, double, ['create', '-f', manifest]), /pod\/web created\nservice\/web created/);
  t.equal(await line(0), 'ADDED web', 'the watch sees the created pod');
  t.match(await kubectlOk(t, double, ['label', 'pod', 'web', 'tier=front']), /pod\/web labeled/);
  t.equal(await line(1), 'MODIFIED web front');
  t.match(await kubectlOk(t, double, ['label', 'pod', 'web', 'tier-']), /pod\/web unlabeled/);
  t.equal(await line(2), 'MODIFIED web');
  t.same(((double.server.objects('v1', 'pods').get('web')?.metadata as JsonObject).labels as JsonObject), { app: 'web' }, 'the label removed');
  t.ok(double.server.objects('discovery.k8s.io/v1', 'endpointslices').get('web-slice'), 'the Service got its EndpointSlice');
  t.match(await kubectlOk(t, double, ['delete', 'pod', 'web']), /pod "web" deleted/);
  t.equal(await line(3), 'DELETED web');
  t.match(await kubectlOk(t, double, ['delete', 'service', 'web']), /service "web" deleted/);
  t.equal(double.server.objects('discovery.k8s.io/v1', 'endpointslices').get('web-slice'), undefined, 'and its slice with it');
  watcher.kill('SIGTERM');
  await exited;
  await double.server.waitForNoWatches();
  t.equal(double.server.openWatches, 0, 'the watch ended with kubectl');
});
