import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { mkdtemp, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { createLogger } from '../core/log/log.js';
import { LocalSource, WorkloadStore, type LocalReload } from '../core/discovery/index.js';

/** The agent promises a change on disk reaches the data path within a second. */
const APPLY_DEADLINE_MS = 1000;

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-discovery-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function logCapture(): { log: ReturnType<typeof createLogger>; lines: () => Array<Record<string, unknown>> } {
  const chunks: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk.toString());
      callback();
    },
  });
  const log = createLogger({ level: 'debug', destination });
  return {
    log,
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  };
}

async function startSource(t: Test, dir: string): Promise<{ store: WorkloadStore; source: LocalSource; lines: () => Array<Record<string, unknown>> }> {
  const store = new WorkloadStore({ nodeName: 'node-1' });
  const { log, lines } = logCapture();
  const source = new LocalSource({ dir, store, log, debounceMs: 50 });
  t.teardown(() => source.close());
  await source.start();
  return { store, source, lines };
}

/** Resolves when the store has changed so that `ready()` holds; rejects after `timeoutMs`. */
function storeReaches(store: WorkloadStore, ready: () => boolean, timeoutMs = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      store.off('change', check);
      reject(new Error(`store did not reach the expected state within ${timeoutMs} ms`));
    }, timeoutMs);
    function check() {
      if (!ready()) return;
      clearTimeout(timer);
      store.off('change', check);
      resolve();
    }
    store.on('change', check);
  });
}

function nextReload(source: LocalSource, timeoutMs = 5000): Promise<LocalReload> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no reload within ${timeoutMs} ms`)), timeoutMs);
    source.once('reload', (reload: LocalReload) => {
      clearTimeout(timer);
      resolve(reload);
    });
  });
}

const namespaceYaml = `apiVersion: v1
kind: Namespace
metadata:
  name: team-a
  labels:
    ambit.dev/mode: enabled
`;

function podYaml(name: string, ip: string, extra = ''): string {
  return `apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: team-a
  labels: {app: ${name}}
spec:
  nodeName: node-1
  containers: [{name: main, ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  podIP: ${ip}
${extra}`;
}

t.test('a folder that does not exist is refused with CONFIG_DIR_NOT_FOUND', async (t) => {
  const dir = await tempDir(t);
  const store = new WorkloadStore();
  const log = logCapture().log;
  await t.rejects(new LocalSource({ dir: join(dir, 'missing'), store, log }).start(), { code: 'CONFIG_DIR_NOT_FOUND', message: /missing/ });
  await writeFile(join(dir, 'file.yaml'), namespaceYaml);
  await t.rejects(new LocalSource({ dir: join(dir, 'file.yaml'), store, log }).start(), { code: 'CONFIG_DIR_NOT_FOUND', message: /not a folder/ });
});

t.test('the first load is in the store when start() resolves', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, '00-namespace.yaml'), namespaceYaml);
  await writeFile(
    join(dir, 'workloads.yml'),
    `${podYaml('web', '10.0.0.1')}---\n${podYaml('db', '10.0.0.2')}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ignored}\n`,
  );
  await writeFile(
    join(dir, 'service.json'),
    JSON.stringify({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'team-a' }, spec: { clusterIP: '10.96.0.10', selector: { app: 'web' }, ports: [{ port: 80, targetPort: 'http' }] } }),
  );
  await writeFile(join(dir, 'notes.txt'), podYaml('not-loaded', '10.0.0.3'));
  await writeFile(join(dir, '.hidden.yaml'), podYaml('hidden', '10.0.0.4'));
  const { store, source } = await startSource(t, dir);

  t.equal(store.version, 2, 'one batch for the load, one for the first full sync');
  t.ok(store.synced, 'every file read and parsed: the first full sync');
  t.equal(store.workloadByIp('10.0.0.1')?.enrolled, true);
  t.equal(store.workloadByIp('10.0.0.2')?.name, 'db');
  t.equal(store.workloadByIp('10.0.0.3'), undefined, 'only .yaml, .yml and .json files are read');
  t.equal(store.workloadByIp('10.0.0.4'), undefined, 'dot files are skipped');
  const web = store.serviceByVip('10.96.0.10');
  t.equal(web?.name, 'web', 'the JSON file applied');
  if (web !== undefined) t.same(store.serviceEndpoints(web, 80)?.map((e) => e.workload?.name), ['web']);
  t.same(store.localEnrolledIps(4), ['10.0.0.1', '10.0.0.2']);
  t.same(source.lastErrors(), [], 'nothing rejected');
});

t.test('an EndpointSlice in the folder gives a selector-less service its endpoints', async (t) => {
  const dir = await tempDir(t);
  await writeFile(
    join(dir, 'kubernetes.yaml'),
    `apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: https, port: 443, targetPort: 6443}]
`,
  );
  const { store } = await startSource(t, dir);
  const kubernetes = store.serviceByVip('10.96.0.1');
  if (kubernetes === undefined) throw new Error('the service did not load');
  t.equal(store.serviceEndpoints(kubernetes, 443), undefined, 'without its slice the mesh does not know where it goes');

  const applied = storeReaches(store, () => store.serviceEndpoints(kubernetes, 443) !== undefined);
  await writeFile(
    join(dir, 'kubernetes-slice.yaml'),
    `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes}
addressType: IPv4
ports: [{name: https, port: 6443, protocol: TCP}]
endpoints:
- addresses: [192.168.0.10]
  conditions: {ready: true}
  nodeName: control-plane
`,
  );
  await applied;
  t.match(store.serviceEndpoints(kubernetes, 443), [{ ip: '192.168.0.10', port: 6443, node: 'control-plane', workload: undefined }]);
});

t.test('a file changed on disk is applied within a second', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'namespace.yaml'), namespaceYaml);
  await writeFile(join(dir, 'pods.yaml'), podYaml('web', '10.0.0.1'));
  const { store } = await startSource(t, dir);

  let started = performance.now();
  let applied = storeReaches(store, () => store.workloadByIp('10.0.0.9')?.name === 'web');
  await writeFile(join(dir, 'pods.yaml'), podYaml('web', '10.0.0.9'));
  await applied;
  const inPlace = performance.now() - started;
  t.ok(inPlace < APPLY_DEADLINE_MS, `rewritten in place: applied in ${Math.round(inPlace)} ms`);
  t.equal(store.workloadByIp('10.0.0.1'), undefined, 'the old address is gone');

  // Editors and config tools write a temporary file and rename it over the old one.
  started = performance.now();
  applied = storeReaches(store, () => store.workloadByIp('10.0.0.10')?.name === 'web');
  await writeFile(join(dir, '.pods.yaml.tmp'), podYaml('web', '10.0.0.10'));
  await rename(join(dir, '.pods.yaml.tmp'), join(dir, 'pods.yaml'));
  await applied;
  const renamed = performance.now() - started;
  t.ok(renamed < APPLY_DEADLINE_MS, `replaced by rename: applied in ${Math.round(renamed)} ms`);

  started = performance.now();
  applied = storeReaches(store, () => store.workloadByIp('10.0.0.11')?.name === 'new');
  await writeFile(join(dir, 'new.yaml'), podYaml('new', '10.0.0.11'));
  await applied;
  t.ok(performance.now() - started < APPLY_DEADLINE_MS, 'a new file is applied within a second');
});

t.test('a malformed object is rejected alone', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'namespace.yaml'), namespaceYaml);
  await writeFile(
    join(dir, 'pods.yaml'),
    [podYaml('web', '10.0.0.1'), podYaml('broken', '10.0.0.300'), podYaml('db', '10.0.0.2')].join('---\n'),
  );
  const { store, source, lines } = await startSource(t, dir);

  t.same(store.workloads().map((w) => w.name), ['web', 'db'], 'the objects beside it apply');
  t.same(source.lastErrors(), [
    {
      file: 'pods.yaml',
      code: 'INVALID_OBJECT',
      message: 'Pod team-a/broken: field status.podIP: must be an IPv4 or IPv6 address, got "10.0.0.300"',
      kind: 'Pod',
      namespace: 'team-a',
      name: 'broken',
      field: 'status.podIP',
    },
  ]);
  const warning = lines().find((line) => line.level === 40 && line.name === 'broken');
  t.match(warning, { file: 'pods.yaml', kind: 'Pod', namespace: 'team-a', name: 'broken', field: 'status.podIP', reason: /IPv4 or IPv6/ }, 'one warn line names it');
});

t.test('a half-written file keeps its previous objects', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'namespace.yaml'), namespaceYaml);
  await writeFile(join(dir, 'pods.yaml'), podYaml('web', '10.0.0.1'));
  await writeFile(join(dir, 'other.yaml'), podYaml('other', '10.0.0.5'));
  const { store, source, lines } = await startSource(t, dir);

  let reload = nextReload(source);
  await writeFile(join(dir, 'pods.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: [\n');
  await writeFile(join(dir, 'other.yaml'), podYaml('other', '10.0.0.6'));
  let result = await reload;
  t.equal(store.workloadByIp('10.0.0.1')?.name, 'web', 'the broken file keeps what it held');
  t.equal(store.workloadByIp('10.0.0.6')?.name, 'other', 'other files still apply');
  t.match(result.problems, [{ file: 'pods.yaml', code: 'MANIFEST_PARSE_FAILED', message: /^pods\.yaml:\d+:\d+: not valid YAML/ }]);
  t.ok(
    lines().some((line) => line.level === 50 && line.file === 'pods.yaml' && /previous objects/.test(String(line.msg))),
    'the error line names the file',
  );

  reload = nextReload(source);
  await writeFile(join(dir, 'pods.yaml'), '');
  result = await reload;
  t.equal(store.workloadByIp('10.0.0.1')?.name, 'web', 'an empty (truncated) file keeps what it held too');

  const fixed = storeReaches(store, () => store.workloadByIp('10.0.0.7') !== undefined);
  await writeFile(join(dir, 'pods.yaml'), podYaml('web', '10.0.0.7'));
  await fixed;
  t.equal(store.workloadByIp('10.0.0.1'), undefined, 'once good again, the file counts as written');
  t.same(source.lastErrors(), []);
});

t.test('a file that is garbage from the start contributes nothing and breaks nothing', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'namespace.yaml'), namespaceYaml);
  await writeFile(join(dir, 'garbage.yaml'), '\u0000\u0001: : : [[[');
  await writeFile(join(dir, 'pods.yaml'), podYaml('web', '10.0.0.1'));
  const { store, source } = await startSource(t, dir);
  t.equal(store.workloadByIp('10.0.0.1')?.name, 'web');
  t.match(source.lastErrors(), [{ file: 'garbage.yaml', code: 'MANIFEST_PARSE_FAILED' }]);
});

t.test('a first load with a file whose objects are unknown is not a full sync; the load that reads it is', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'namespace.yaml'), namespaceYaml);
  await writeFile(join(dir, 'team-b.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: team-b, labels: [\n');
  const { store, source, lines } = await startSource(t, dir);
  t.notOk(store.synced, 'team-b.yaml did not parse: the store does not know everything yet');
  t.ok(store.namespace('team-a'), 'what did parse is in the store');
  t.match(lines().find((l) => l.msg === 'config folder loaded'), { synced: false, unknownFiles: ['team-b.yaml'] });
  const synced = storeReaches(store, () => store.synced);
  await writeFile(join(dir, 'team-b.yaml'), namespaceYaml.replace('team-a', 'team-b'));
  await synced;
  t.ok(store.namespace('team-b'), 'the sync came with the namespaces of the file');

  const reload = nextReload(source);
  await writeFile(join(dir, 'team-b.yaml'), 'kind: [\n');
  await reload;
  t.ok(store.synced && store.namespace('team-b'), 'broken later, the file keeps its last good objects: still synced');
});

t.test('a first load with an empty file is not a full sync; the load that reads it is', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'namespace.yaml'), namespaceYaml);
  // A truncate-and-rewrite cut short by a power loss: the file is there, its objects are not.
  await writeFile(join(dir, 'team-b.yaml'), '');
  const { store, lines } = await startSource(t, dir);
  t.notOk(store.synced, 'team-b.yaml is empty: the store does not know its namespace yet');
  t.match(lines().find((l) => l.msg === 'config folder loaded'), { synced: false, unknownFiles: ['team-b.yaml'] });
  t.ok(lines().some((l) => l.file === 'team-b.yaml' && l.reason === 'empty'), 'the warning names the file and why');
  const synced = storeReaches(store, () => store.synced);
  await writeFile(join(dir, 'team-b.yaml'), namespaceYaml.replace('team-a', 'team-b'));
  await synced;
  t.ok(store.namespace('team-b'), 'the sync came with the namespace of the file');
});

t.test('deleting a file removes its objects', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'namespace.yaml'), namespaceYaml);
  await writeFile(join(dir, 'web.yaml'), podYaml('web', '10.0.0.1'));
  await writeFile(join(dir, 'db.yaml'), podYaml('db', '10.0.0.2'));
  const { store } = await startSource(t, dir);
  t.equal(store.workloads().length, 2);

  const removed = storeReaches(store, () => store.workloadByIp('10.0.0.1') === undefined);
  await unlink(join(dir, 'web.yaml'));
  await removed;
  t.same(store.workloads().map((w) => w.name), ['db']);

  const unenrolled = storeReaches(store, () => store.workloadByIp('10.0.0.2')?.enrolled === false);
  await unlink(join(dir, 'namespace.yaml'));
  await unenrolled;
  t.same(store.localEnrolledIps(4), [], 'without its namespace the pod leaves the mesh');
});

t.test('an object in two files: the later file wins, with a warning', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'namespace.yaml'), namespaceYaml);
  await writeFile(join(dir, 'a.yaml'), podYaml('web', '10.0.0.1'));
  await writeFile(join(dir, 'b.yaml'), podYaml('web', '10.0.0.2'));
  const { store, source } = await startSource(t, dir);
  t.equal(store.workloadByIp('10.0.0.2')?.name, 'web');
  t.equal(store.workloadByIp('10.0.0.1'), undefined);
  t.match(source.lastErrors(), [{ file: 'b.yaml', code: 'DUPLICATE_OBJECT', kind: 'Pod', namespace: 'team-a', name: 'web', message: /a\.yaml and b\.yaml; using b\.yaml/ }]);
});

t.test('close() stops watching', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'namespace.yaml'), namespaceYaml);
  const { store, source } = await startSource(t, dir);
  await source.close();
  const version = store.version;
  let reloads = 0;
  source.on('reload', () => (reloads += 1));
  // A witness on the same folder with a longer debounce reloads after the closed source would have: its reload is
  // the moment by which a write would have reached the closed source's store.
  const witnessStore = new WorkloadStore({ nodeName: 'node-1' });
  const witness = new LocalSource({ dir, store: witnessStore, log: logCapture().log, debounceMs: 300 });
  t.teardown(() => witness.close());
  await witness.start();
  const witnessed = storeReaches(witnessStore, () => witnessStore.workloadByIp('10.0.0.1') !== undefined);
  await writeFile(join(dir, 'pods.yaml'), podYaml('web', '10.0.0.1'));
  await witnessed;
  t.equal(store.version, version, 'writes after close() do not reach the store');
  t.equal(reloads, 0, 'nor does the closed source reload');
});

t.test('a process exits once its source is closed, and not before', async (t) => {
  // An empty folder: the children then never load the YAML parser, which under tap's loader hooks takes seconds.
  const dir = await tempDir(t);
  const discovery = fileURLToPath(new URL('../core/discovery/index.js', import.meta.url));
  const script = (close: boolean) => `
    import { LocalSource, WorkloadStore } from ${JSON.stringify(discovery)};
    import { pino } from 'pino';
    const source = new LocalSource({ dir: ${JSON.stringify(dir)}, store: new WorkloadStore(), log: pino({ level: 'silent' }), debounceMs: 10 });
    await source.start();
    source.on('reload', () => console.log('reloaded'));
    console.log('started');
    ${close ? 'await source.close();' : ''}
  `;
  const run = (close: boolean) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script(close)], {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill();
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let output = '';
    const printed = (word: string) => new Promise<void>((resolve) => child.stdout.on('data', (data: Buffer) => (output += data.toString()).includes(word) && resolve()));
    return { child, exited, started: printed('started'), reloaded: printed('reloaded') };
  };
  const within = async <T>(promise: Promise<T>, ms: number): Promise<{ value: T } | 'timeout'> => {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms)));
    try {
      return await Promise.race([promise.then((value) => ({ value })), timeout]);
    } finally {
      clearTimeout(timer);
    }
  };

  const open = run(false);
  await open.started;
  // Alive after start() means still there to see a change: a write to the folder (a file the source does not read,
  // so the child parses nothing) must reach it before it exits.
  const outcome = Promise.race([open.reloaded.then(() => 'reloaded'), open.exited.then((code) => `exited with ${code}`)]);
  await writeFile(join(dir, 'notes.txt'), 'not a manifest');
  t.equal(await outcome, 'reloaded', 'the watcher keeps an open source alive');
  open.child.kill();

  const closed = run(true);
  t.same(await within(closed.exited, 10_000), { value: 0 }, 'after close() nothing holds the process');
});
