/**
 * The reflector against the API server double (testbed/apiserver), over real HTTPS with the kubeconfig the double
 * writes: paged lists, live events, bookmarks, watches closed, stalled and expired, 500s, selectors, stop(), and the
 * token kept out of the logs. The reflector's timers run on a FakeTime the tests move; nothing sleeps.
 */
import { EventEmitter, once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Registry } from 'prom-client';
import t, { type Test } from 'tap';
import { createLogger } from '../core/log/index.js';
import { loadKubeConfig, Reflector, type KubeObject, type ReflectorConsumer, type ReflectorOptions } from '../core/k8s/index.js';
import { ApiServer, type ApiServerOptions } from '../testbed/index.js';
import { FakeTime } from './mesh/fake-time.js';

const TOKEN = 'reflector-test-token-3f9c1e7a';
/** The deadlines the tests give the reflector: distinct from any backoff delay, so the two are told apart. */
const LIST_TIMEOUT_MS = 3_500_000;
const STALL_TIMEOUT_MS = 3_600_000;
const TEST_TIMEOUT = { timeout: 30_000 };

/** Every log line of every reflector of this file: the last test looks for the token in them. */
const allLogLines: string[] = [];

/** The consumer: the state it was handed, the calls in order, and a wait on a condition of them. */
class Recorder implements ReflectorConsumer {
  readonly state = new Map<string, KubeObject>();
  readonly calls: string[] = [];
  readonly replaces: { names: string[]; resourceVersion: string }[] = [];
  readonly #changes = new EventEmitter();

  replace(items: KubeObject[], resourceVersion: string): void {
    this.state.clear();
    for (const item of items) this.state.set(item.metadata.name, item);
    const names = items.map((item) => item.metadata.name).sort();
    this.replaces.push({ names, resourceVersion });
    this.#record(`replace ${names.join(',')}`);
  }

  added(object: KubeObject): void {
    this.state.set(object.metadata.name, object);
    this.#record(`added ${object.metadata.name}`);
  }

  modified(object: KubeObject): void {
    this.state.set(object.metadata.name, object);
    this.#record(`modified ${object.metadata.name}`);
  }

  deleted(object: KubeObject): void {
    this.state.delete(object.metadata.name);
    this.#record(`deleted ${object.metadata.name}`);
  }

  /** Resolves once `predicate` holds (checked now and after every call). */
  async until(predicate: () => boolean): Promise<void> {
    while (!predicate()) await once(this.#changes, 'change');
  }

  #record(call: string): void {
    this.calls.push(call);
    this.#changes.emit('change');
  }
}

/** FakeTime's timers, with the backoff delays (every delay but the two deadlines) kept apart and waited on. */
class Clock {
  readonly fake = new FakeTime();
  readonly backoffs: number[] = [];
  readonly #set = new EventEmitter();

  readonly setTimer = (callback: () => void, delayMs: number): (() => void) => {
    const cancel = this.fake.setTimer(callback, delayMs);
    if (delayMs !== LIST_TIMEOUT_MS && delayMs !== STALL_TIMEOUT_MS) this.backoffs.push(delayMs);
    this.#set.emit('set');
    return cancel;
  };

  /** Resolves with the `n`th backoff delay (1-based) once the reflector has asked for it. */
  async backoff(n: number): Promise<number> {
    while (this.backoffs.length < n) await once(this.#set, 'set');
    return this.backoffs[n - 1] as number;
  }
}

interface Request {
  method: string;
  path: string;
  query: URLSearchParams;
}

interface Harness {
  server: ApiServer;
  pods: ReturnType<ApiServer['objects']>;
  clock: Clock;
  consumer: Recorder;
  registry: Registry;
  requests: Request[];
  lines: string[];
  reflector: Reflector;
  lists(): Request[];
  watches(): Request[];
  /** Resolves with the next watch the double registers (set up before what makes the reflector open it). */
  nextWatch(): Promise<unknown>;
  metric(name: string, labels: Record<string, string>): Promise<number>;
}

/** A double, a kubeconfig for it, and a reflector of pods on a FakeTime; all torn down when the test ends. */
async function setup(
  t: Test,
  options: { server?: ApiServerOptions; reflector?: Partial<ReflectorOptions>; token?: string; before?: (server: ApiServer) => void } = {},
): Promise<Harness> {
  const server = await ApiServer.start(options.server);
  t.teardown(() => server.close());
  server.addToken(TOKEN, { username: 'ambit-controller' });
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-reflector-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const kubeconfig = path.join(dir, 'kubeconfig');
  await server.writeKubeconfig(kubeconfig, options.token ?? TOKEN);
  server.objects('v1', 'namespaces').create({ metadata: { name: 'demo' } });
  const pods = server.objects('v1', 'pods');
  options.before?.(server);

  const requests: Request[] = [];
  server.on('request', (method, path, query) => requests.push({ method, path, query: new URLSearchParams(query) }));
  const lines: string[] = [];
  const log = createLogger({
    level: 'debug',
    destination: {
      write(line: string) {
        lines.push(line);
        allLogLines.push(line);
        if (process.env.REFLECTOR_DEBUG) process.stderr.write(line);
      },
    },
  });
  const clock = new Clock();
  const consumer = new Recorder();
  const registry = new Registry();
  const reflector = new Reflector({
    kubeConfig: await loadKubeConfig({ kubeconfig }),
    kind: 'Pod',
    path: '/api/v1/pods',
    consumer,
    log,
    registry,
    setTimer: clock.setTimer,
    now: clock.fake.now,
    stallTimeoutMs: STALL_TIMEOUT_MS,
    listTimeoutMs: LIST_TIMEOUT_MS,
    ...options.reflector,
  });
  t.teardown(() => reflector.stop());
  const isWatch = (r: Request): boolean => r.query.get('watch') === 'true';
  return {
    server,
    pods,
    clock,
    consumer,
    registry,
    requests,
    lines,
    reflector,
    lists: () => requests.filter((r) => r.path === '/api/v1/pods' && !isWatch(r)),
    watches: () => requests.filter((r) => r.path === '/api/v1/pods' && isWatch(r)),
    nextWatch: () => once(server, 'watch'),
    async metric(name, labels) {
      const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
      const value = metric?.values.find((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l));
      return value?.value ?? 0;
    },
  };
}

const pod = (name: string, labels: Record<string, string> = {}, nodeName = 'node1') => ({
  metadata: { name, namespace: 'demo', labels },
  spec: { nodeName, containers: [{ name: 'app', image: 'app' }] },
});

/** Starts the reflector and waits for its first watch to be registered by the double. */
async function startAndWatch(h: Harness): Promise<void> {
  const watching = h.nextWatch();
  h.reflector.start();
  await h.reflector.whenSynced();
  await watching;
}

/** A reflector synced on pod a, whose watch has delivered pod b: live at the reflector, not only open at the double. */
async function watchingPastAnEvent(t: Test): Promise<Harness> {
  const h = await setup(t);
  h.pods.create(pod('a'));
  await startAndWatch(h);
  h.pods.create(pod('b'));
  await h.consumer.until(() => h.consumer.state.has('b'));
  return h;
}

t.test('the first list comes in pages (limit, continue, RV=0), then watch events arrive live', TEST_TIMEOUT, async (t) => {
  const h = await setup(t, { server: { watchCache: false }, reflector: { pageSize: 2 } });
  for (const name of ['a', 'b', 'c', 'd', 'e']) h.pods.create(pod(name));
  await startAndWatch(h);

  t.same(h.consumer.replaces.map((r) => r.names), [['a', 'b', 'c', 'd', 'e']], 'one replace with every page, after the last page');
  const lists = h.lists();
  t.same(lists.map((r) => r.query.get('limit')), ['2', '2', '2'], 'three pages of two');
  t.ok(lists.every((r) => r.query.get('resourceVersion') === '0'), 'each page asks resourceVersion=0, as client-go');
  t.same(lists.map((r) => r.query.has('continue')), [false, true, true], 'the second and third pages carry the continue token');
  const [watch] = h.watches();
  t.equal(watch?.query.get('resourceVersion'), h.consumer.replaces[0]?.resourceVersion, "the watch starts at the list's resourceVersion");
  t.equal(watch?.query.get('allowWatchBookmarks'), 'true', 'with bookmarks');
  const timeout = Number(watch?.query.get('timeoutSeconds'));
  t.ok(timeout >= 300 && timeout <= 600, `with a timeoutSeconds in [300, 600] (${timeout})`);
  t.ok(h.reflector.synced, 'synced');

  h.pods.create(pod('f'));
  h.pods.patch('a', { metadata: { labels: { v: '2' } } }, 'demo');
  h.pods.delete('b', 'demo');
  await h.consumer.until(() => h.consumer.calls.length === 4);
  t.same(h.consumer.calls, ['replace a,b,c,d,e', 'added f', 'modified a', 'deleted b'], 'one call per event, in order');
  t.equal(h.consumer.state.get('a')?.metadata.labels?.v, '2', 'the objects are the JSON the server sent');
  t.equal(h.reflector.resourceVersion, h.server.resourceVersion, "each event's resourceVersion moved the position");
  t.equal(await h.metric('ambit_k8s_watch_events_total', { kind: 'Pod', type: 'added' }), 1);
  t.equal(await h.metric('ambit_k8s_watch_events_total', { kind: 'Pod', type: 'deleted' }), 1);
  t.equal(await h.metric('ambit_k8s_relists_total', { kind: 'Pod', reason: 'initial' }), 1);
  h.clock.fake.skip(7000);
  t.equal(await h.metric('ambit_k8s_last_event_age_seconds', { kind: 'Pod' }), 7, 'the age of the last event, computed when scraped');
});

t.test('a 410 on a continue token lists again from the first page; the consumer sees one whole state', TEST_TIMEOUT, async (t) => {
  let compacted = false;
  const h = await setup(t, { server: { watchCache: false }, reflector: { pageSize: 2 } });
  h.server.on('request', (_method, _path, query) => {
    if (query.has('continue') && !compacted) {
      compacted = true;
      h.server.compact();
    }
  });
  for (const name of ['a', 'b', 'c', 'd', 'e']) h.pods.create(pod(name));
  await startAndWatch(h);
  t.same(h.lists().map((r) => r.query.has('continue')), [false, true, false, true, true], 'page 2 expired, then pages 1 to 3 again');
  t.same(h.consumer.replaces.map((r) => r.names), [['a', 'b', 'c', 'd', 'e']], 'no half state was handed on');
  t.same(h.clock.backoffs, [], 'at once, without a backoff');
  t.equal(await h.metric('ambit_k8s_relists_total', { kind: 'Pod', reason: 'expired' }), 1);
});

t.test('a server that expires every continue token is retried with a backoff, not in a loop', TEST_TIMEOUT, async (t) => {
  const h = await setup(t, { server: { watchCache: false }, reflector: { pageSize: 2 } });
  h.server.on('request', (_method, _path, query) => {
    if (query.has('continue')) h.server.compact();
  });
  for (const name of ['a', 'b', 'c']) h.pods.create(pod(name));
  h.reflector.start();
  await h.clock.backoff(1);
  t.same(h.lists().map((r) => r.query.has('continue')), [false, true, false, true], 'the first expiry lists again at once, the second waits');
  t.same(h.consumer.calls, [], 'nothing handed on');
});

t.test('bookmarks move the position; a watch the server closes resumes from it without a list', TEST_TIMEOUT, async (t) => {
  const h = await watchingPastAnEvent(t);
  h.server.objects('v1', 'configmaps').create({ metadata: { name: 'other', namespace: 'demo' } });
  t.not(h.reflector.resourceVersion, h.server.resourceVersion, 'a change to another kind is not seen by a pod watch');
  h.server.sendBookmarks();
  const resumed = h.nextWatch();
  const bookmarkRv = h.server.resourceVersion;
  // The bookmark is the last line before the close: once the next watch is asked for, it has been read.
  h.server.closeWatches();
  await resumed;
  t.equal(h.watches().at(-1)?.query.get('resourceVersion'), bookmarkRv, "the next watch starts at the bookmark's resourceVersion");
  t.equal(h.lists().length, 1, 'no list again');
  t.same(h.clock.backoffs, [], 'no backoff for a normal end');
  t.equal(await h.metric('ambit_k8s_rewatches_total', { kind: 'Pod', reason: 'closed' }), 1);
  t.equal(await h.metric('ambit_k8s_watch_events_total', { kind: 'Pod', type: 'bookmark' }), 1);
  h.pods.create(pod('c'));
  await h.consumer.until(() => h.consumer.state.has('c'));
  t.same(h.consumer.calls, ['replace a', 'added b', 'added c'], 'nothing replayed, nothing lost');
});

t.test('a watch silent past the deadline is opened again from the last position', TEST_TIMEOUT, async (t) => {
  const h = await watchingPastAnEvent(t);
  t.equal(h.server.stallWatches(), 1, 'the double holds the watch open and sends nothing');
  const position = h.reflector.resourceVersion;
  const reopened = h.nextWatch();
  h.clock.fake.advance(STALL_TIMEOUT_MS - 1);
  t.equal(h.watches().length, 1, 'not before the deadline');
  h.clock.fake.advance(1);
  await reopened;
  t.equal(h.watches().at(-1)?.query.get('resourceVersion'), position, 'the new watch starts where the stalled one was');
  t.equal(h.lists().length, 1, 'no list again');
  t.equal(await h.metric('ambit_k8s_rewatches_total', { kind: 'Pod', reason: 'stalled' }), 1);
  t.ok(h.lines.some((line) => line.includes('"reason":"K8S_STALLED"')), 'the stall is logged with its reason');
  h.pods.create(pod('c'));
  await h.consumer.until(() => h.consumer.state.has('c'));
  t.pass('events flow on the new watch');
});

t.test('the stall deadline defaults to a little more than the timeoutSeconds asked', TEST_TIMEOUT, async (t) => {
  const h = await setup(t, { reflector: { stallTimeoutMs: undefined, random: () => 0 } });
  await startAndWatch(h);
  t.equal(h.watches()[0]?.query.get('timeoutSeconds'), '300');
  t.ok(h.clock.backoffs.includes(330_000), 'the watch deadline is 300 s + 30 s');
});

for (const answer of ['event', 'status'] as const) {
  t.test(`a watch refused as expired (${answer === 'event' ? 'ERROR event with 410' : 'HTTP 410'}) lists again at once; replace shows the deletions missed`, TEST_TIMEOUT, async (t) => {
    const h = await setup(t, { server: { expiredWatchAnswer: answer } });
    for (const name of ['a', 'b']) h.pods.create(pod(name));
    await startAndWatch(h);
    h.server.closeWatches({ refuse: true });
    const delay = await h.clock.backoff(1);
    h.pods.delete('b', 'demo');
    h.pods.create(pod('c'));
    h.server.compact();
    h.server.acceptWatches();
    const watching = h.nextWatch();
    h.clock.fake.advance(delay);
    await watching;
    t.same(h.consumer.replaces.map((r) => r.names), [['a', 'b'], ['a', 'c']], 'the second replace lacks b: the consumer sees it gone');
    t.equal(h.clock.backoffs.length, 1, 'the 410 itself waited for no backoff');
    t.equal(await h.metric('ambit_k8s_relists_total', { kind: 'Pod', reason: 'expired' }), 1);
    t.equal(h.lists().length, 2);
  });
}

t.test('a relist asks for a state not older than the position held: a lagging cache never takes the consumer back in time', TEST_TIMEOUT, async (t) => {
  const h = await setup(t);
  h.pods.create(pod('a'));
  await startAndWatch(h);
  // Another API server replica's cache is behind: it still has only pod a when b is created, and the watch sees b.
  h.server.lagWatchCache();
  h.pods.create(pod('b'));
  await h.consumer.until(() => h.consumer.state.has('b'));
  const position = h.reflector.resourceVersion;
  const rewatch = h.nextWatch();
  h.server.expireWatches();
  await rewatch;
  const [first, atPosition, quorum] = h.lists();
  t.equal(first?.query.get('resourceVersion'), '0', 'the first list is served by the cache');
  t.equal(atPosition?.query.get('resourceVersion'), position, 'the relist asks for the position held');
  t.notOk(atPosition?.query.has('limit'), 'without a limit, which would make it an exact read of a compactable version');
  t.notOk(quorum?.query.has('resourceVersion'), 'refused (the cache is behind), it is retried as a quorum read');
  t.equal(quorum?.query.get('limit'), '500', 'which is paged');
  t.same(h.consumer.replaces.map((r) => r.names), [['a'], ['a', 'b']], 'b was never handed on as deleted');
  t.same(h.clock.backoffs, [], 'the fallback waited for no backoff');
  t.ok(h.lines.some((line) => line.includes('listing with a quorum read') && line.includes('"status":504')), 'the fallback is logged with the refusal');
  // Once a list has succeeded, the next relist asks for the position again.
  h.server.catchUpWatchCache();
  h.pods.create(pod('c'));
  await h.consumer.until(() => h.consumer.state.has('c'));
  const again = h.nextWatch();
  h.server.expireWatches();
  await again;
  t.equal(h.lists().at(-1)?.query.get('resourceVersion'), h.reflector.resourceVersion, 'back to the position held');
  t.equal(h.lists().length, 4);
});

t.test('once a bookmark has been heard, a watch silent for 90 s is dead (the server sends one a minute)', TEST_TIMEOUT, async (t) => {
  const h = await setup(t, { reflector: { stallTimeoutMs: undefined, random: () => 0 } });
  h.pods.create(pod('a'));
  await startAndWatch(h);
  t.ok(h.clock.backoffs.includes(330_000), 'before any bookmark, the deadline is the timeout + 30 s');
  h.server.sendBookmarks();
  const second = h.nextWatch();
  h.server.closeWatches();
  await second;
  t.equal(h.clock.backoffs.at(-1), 90_000, 'after one, 90 s');
  h.server.stallWatches();
  const third = h.nextWatch();
  h.clock.fake.advance(89_999);
  t.equal(h.watches().length, 2, 'not before 90 s');
  h.clock.fake.advance(1);
  await third;
  t.equal(await h.metric('ambit_k8s_rewatches_total', { kind: 'Pod', reason: 'stalled' }), 1);
});

t.test('an ERROR 410 in a stream the server keeps open ends that stream at once and lists again', TEST_TIMEOUT, async (t) => {
  const h = await setup(t);
  h.pods.create(pod('a'));
  await startAndWatch(h);
  const rewatch = h.nextWatch();
  h.server.expireWatches({ keepOpen: true });
  await h.consumer.until(() => h.consumer.replaces.length === 2);
  await rewatch;
  t.equal(h.server.openWatches, 1, 'the expired stream was ended by the reflector (the double would have kept it)');
  t.equal(await h.metric('ambit_k8s_watch_events_total', { kind: 'Pod', type: 'error' }), 1);
});

t.test('500s back off with growing delays, each failure logged once, then the reflector recovers', TEST_TIMEOUT, async (t) => {
  const h = await setup(t);
  h.pods.create(pod('a'));
  h.server.failResource('v1', 'pods', 500);
  h.reflector.start();
  const delays: number[] = [];
  t.equal(h.reflector.failingForMs, 0, 'not failing before the first attempt');
  for (let n = 1; n <= 5; n++) {
    delays.push(await h.clock.backoff(n));
    if (n === 5) h.server.healResource('v1', 'pods');
    h.clock.fake.advance(delays[n - 1] as number);
  }
  t.equal(h.reflector.failingForMs, delays.reduce((sum, d) => sum + d, 0), 'failing since the first failure, through the retries');
  await h.reflector.whenSynced();
  t.equal(h.reflector.failingForMs, 0, 'a list that came whole ends it');
  t.ok(
    delays.every((d, i) => i === 0 || d >= (delays[i - 1] as number)),
    `each delay at least the one before: ${delays.join(', ')}`,
  );
  t.ok((delays[0] as number) >= 400 && (delays[0] as number) <= 800, 'the first within [400, 800] ms (half to all of 800)');
  t.ok((delays[4] as number) > (delays[1] as number) * 2 - 1, 'they grow exponentially');
  const failures = h.lines.filter((line) => line.includes('"msg":"list failed"'));
  t.equal(failures.length, 5, 'one line per failure');
  t.ok(failures.every((line) => line.includes('"status":500') && line.includes('is failing (injected by the test)')), 'with the status and the reason');
  t.equal(await h.metric('ambit_k8s_relists_total', { kind: 'Pod', reason: 'error' }), 5);
  t.same(h.consumer.calls, ['replace a']);

  // A failure soon after the recovery goes on from the last delay; one after 2 minutes healthy starts over. Each
  // event waited on proves the watch is live at the reflector, not only registered at the double.
  h.pods.create(pod('b'));
  await h.consumer.until(() => h.consumer.state.has('b'));
  h.server.closeWatches({ refuse: true });
  const soon = await h.clock.backoff(6);
  t.ok(soon >= (delays[4] as number), `a failure within the reset period waits at least the last delay (${soon})`);
  h.server.acceptWatches();
  h.clock.fake.advance(soon);
  h.pods.create(pod('c'));
  await h.consumer.until(() => h.consumer.state.has('c'));
  h.clock.fake.advance(120_000);
  h.server.closeWatches({ refuse: true });
  const later = await h.clock.backoff(7);
  t.ok(later >= 400 && later <= 800, `after 2 minutes healthy the backoff starts over (${later})`);
});

t.test('label and field selectors are sent with the list and the watch, and honoured', TEST_TIMEOUT, async (t) => {
  const h = await setup(t, { reflector: { labelSelector: 'app=web', fieldSelector: 'spec.nodeName=node1' } });
  h.pods.create(pod('web1', { app: 'web' }, 'node1'));
  h.pods.create(pod('web2', { app: 'web' }, 'node2'));
  h.pods.create(pod('db1', { app: 'db' }, 'node1'));
  await startAndWatch(h);
  for (const request of [h.lists()[0], h.watches()[0]]) {
    t.equal(request?.query.get('labelSelector'), 'app=web');
    t.equal(request?.query.get('fieldSelector'), 'spec.nodeName=node1');
  }
  t.same(h.consumer.replaces[0]?.names, ['web1'], 'the list holds only what both select');
  h.pods.create(pod('web3', { app: 'web' }, 'node2'));
  h.pods.create(pod('db2', { app: 'db' }, 'node1'));
  h.pods.create(pod('web4', { app: 'web' }, 'node1'));
  h.pods.patch('web1', { metadata: { labels: { app: 'other' } } }, 'demo');
  await h.consumer.until(() => h.consumer.calls.length === 3);
  t.same(h.consumer.calls, ['replace web1', 'added web4', 'deleted web1'], 'events only for what is selected; leaving the selector is a delete');
});

t.test('a bad selector is refused by the server, logged with its message, and retried with backoff', TEST_TIMEOUT, async (t) => {
  const h = await setup(t, { reflector: { fieldSelector: 'spec.color=blue' } });
  h.reflector.start();
  await h.clock.backoff(1);
  t.ok(h.lines.some((line) => line.includes('"status":400') && line.includes('field label not supported: spec.color')));
  t.notOk(h.reflector.synced);
});

t.test('stop() resolves without an error and leaves no timer or socket, whatever the reflector was doing', TEST_TIMEOUT, async (t) => {
  const handles = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TLSWrap' || r === 'TCPSocketWrap').length;
  const baseline = handles();

  await t.test('while watching', async (t) => {
    const h = await setup(t);
    h.pods.create(pod('a'));
    await startAndWatch(h);
    const before = h.lines.length;
    await h.reflector.stop();
    await h.reflector.stop();
    t.equal(h.clock.fake.pending, 0, 'no timer left');
    const after = h.lines.slice(before);
    t.notOk(after.some((line) => /AbortError|"level":(40|50)/.test(line)), 'no AbortError, no warning: a stop is not a failure');
    t.ok(after.some((line) => line.includes('reflector stopped')));
    t.equal(await h.metric('ambit_k8s_last_event_age_seconds', { kind: 'Pod' }), 0, 'a stopped reflector leaves the age gauge');
  });

  await t.test('while waiting out a backoff, before it synced', async (t) => {
    const h = await setup(t);
    h.server.failResource('v1', 'pods', 500);
    h.reflector.start();
    const synced = h.reflector.whenSynced();
    await h.clock.backoff(1);
    await h.reflector.stop();
    await t.rejects(synced, { code: 'K8S_REFLECTOR_STOPPED' }, 'whenSynced says it never synced');
    t.equal(h.clock.fake.pending, 0, 'the backoff timer is cancelled');
    t.equal(h.lists().length, 1, 'and no request follows');
  });

  await t.test('while a list is in flight', async (t) => {
    const h = await setup(t);
    const stopped = new Promise<Promise<void>>((resolve) => h.server.once('request', () => resolve(h.reflector.stop())));
    h.reflector.start();
    await (await stopped);
    t.equal(h.clock.fake.pending, 0);
    t.notOk(h.lines.some((line) => /AbortError|"level":(40|50)/.test(line)));
  });

  // The double's connections are gone once it is closed; whatever is left would be the reflectors'.
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(handles(), baseline, 'no socket left open');
});

t.test('a refused token is logged as a 401 without the token; no log line of this file holds the token', TEST_TIMEOUT, async (t) => {
  const wrong = 'wrong-token-6d2b8f0c91';
  const h = await setup(t, { token: wrong });
  h.reflector.start();
  await h.clock.backoff(1);
  t.ok(h.lines.some((line) => line.includes('"status":401')), 'the refusal is logged');
  t.notOk(h.lines.some((line) => line.includes(wrong)), 'without the token');
  t.ok(allLogLines.length > 50, `the other tests logged (${allLogLines.length} lines)`);
  t.notOk(allLogLines.some((line) => line.includes(TOKEN) || /bearer/i.test(line)), 'no line holds the token or an authorization header');
});
