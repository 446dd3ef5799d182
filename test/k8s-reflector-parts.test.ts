/**
 * The reflector's pure parts: the backoff, the watch stream's lines and events, a list page, the queries it sends.
 * The protocol itself is tested against the API server double in k8s-reflector.test.ts.
 */
import t from 'tap';
import { Backoff } from '../core/timer/index.js';
import { checkCollectionPath, listQuery, watchQuery, watchTimeoutSeconds } from '../core/k8s/query.js';
import { decodeListPage, decodeWatchLine, ListPageDecoder, watchLineSplitter } from '../core/k8s/watch-stream.js';
import { MAX_LIST_ENVELOPE_BYTES } from '../core/k8s/list-stream.js';

const pod = (name: string, resourceVersion: string) => ({ metadata: { name, namespace: 'demo', resourceVersion } });

t.test('the backoff grows to its cap with jitter in the upper half, and a healthy period resets it', async (t) => {
  const lowest = new Backoff({ initialMs: 100, maxMs: 1000, resetAfterMs: 5000 }, () => 0);
  t.same([1, 2, 3, 4, 5, 6].map(() => lowest.failed(0)), [50, 100, 200, 400, 500, 500], 'without jitter: half of the doubling base');
  const highest = new Backoff({ initialMs: 100, maxMs: 1000, resetAfterMs: 5000 }, () => 0.999999);
  t.same([1, 2, 3, 4, 5].map(() => highest.failed(0)), [100, 200, 400, 800, 1000], 'with the most jitter: the whole base');

  const backoff = new Backoff({ initialMs: 100, maxMs: 1000, resetAfterMs: 5000 }, () => 0);
  backoff.failed(0);
  backoff.failed(0);
  backoff.healthy(1000);
  t.equal(backoff.failed(5999), 200, 'healthy for less than resetAfterMs: the failures are remembered');
  backoff.healthy(10_000);
  backoff.healthy(12_000);
  t.equal(backoff.failed(15_000), 50, 'healthy for resetAfterMs (from the first healthy mark): back to the first delay');
  t.throws(() => new Backoff({ initialMs: 0, maxMs: 10, resetAfterMs: 0 }), RangeError, 'a zero first delay is refused');
});

t.test('the line splitter joins lines cut across chunks, UTF-8 characters included, and refuses an endless line', async (t) => {
  const splitter = watchLineSplitter(64);
  const text = Buffer.from('{"a":"é"}\n\n{"b":1}\n{"c"');
  t.same(splitter.push(text.subarray(0, 7)), [], 'nothing whole yet (the cut falls inside é)');
  t.same(splitter.push(text.subarray(7)), ['{"a":"é"}', '{"b":1}'], 'whole lines, the empty one dropped');
  t.ok(splitter.pending, 'the unfinished line is held');
  t.same(splitter.push(Buffer.from(':2}\n')), ['{"c":2}']);
  t.notOk(splitter.pending);
  t.throws(() => watchLineSplitter(8).push(Buffer.from('0123456789')), { code: 'K8S_WATCH_LINE_TOO_LONG' });
});

t.test('watch lines decode to events; a malformed one is refused with a code', async (t) => {
  t.same(decodeWatchLine(JSON.stringify({ type: 'ADDED', object: pod('a', '7') })), { type: 'ADDED', object: pod('a', '7') });
  t.same(decodeWatchLine('{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"12"}}}'), {
    type: 'BOOKMARK',
    resourceVersion: '12',
  });
  t.same(decodeWatchLine('{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}'), {
    type: 'ERROR',
    status: { code: 410, reason: 'Expired', message: 'too old', causes: [] },
  });
  t.same(
    decodeWatchLine(
      '{"type":"ERROR","object":{"kind":"Status","code":504,"reason":"Timeout","message":"Too large resource version","details":{"causes":[{"reason":"ResourceVersionTooLarge"},{"message":"no reason"}]}}}',
    ),
    { type: 'ERROR', status: { code: 504, reason: 'Timeout', message: 'Too large resource version', causes: ['ResourceVersionTooLarge'] } },
    'the reasons of details.causes are kept, a cause without one is dropped',
  );
  for (const [line, code] of [
    ['not json', 'K8S_BAD_WATCH_EVENT'],
    ['[1]', 'K8S_BAD_WATCH_EVENT'],
    ['{"type":"SURPRISE","object":{}}', 'K8S_BAD_WATCH_EVENT'],
    ['{"type":"BOOKMARK","object":{"metadata":{}}}', 'K8S_BAD_WATCH_EVENT'],
    ['{"type":"MODIFIED","object":{"metadata":{"name":"a"}}}', 'K8S_BAD_OBJECT'],
    ['{"type":"DELETED","object":{"metadata":{"resourceVersion":"3"}}}', 'K8S_BAD_OBJECT'],
    ['{"type":"ADDED","object":{"metadata":{"name":"a","namespace":7,"resourceVersion":"3"}}}', 'K8S_BAD_OBJECT'],
  ] as const) {
    t.throws(() => decodeWatchLine(line), { code }, `${line} → ${code}`);
  }
});

t.test('a list page decodes to items, resourceVersion and continue token; a bad item refuses the page', async (t) => {
  const page = decodeListPage(JSON.stringify({ metadata: { resourceVersion: '9', continue: 'next' }, items: [pod('a', '3')] }));
  t.same(page, { items: [pod('a', '3')], resourceVersion: '9', continueToken: 'next' });
  t.equal(decodeListPage('{"metadata":{"resourceVersion":"9","continue":""},"items":[]}').continueToken, undefined, 'an empty token ends the list');
  for (const body of ['', '{"items":[]}', '{"metadata":{},"items":[]}', '{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{}}]}']) {
    t.throws(() => decodeListPage(body), { code: /^K8S_BAD_(LIST|OBJECT)$/ }, `${JSON.stringify(body)} is refused`);
  }
});

t.test('a list is cut into its items as its bytes come, wherever the chunks end', async (t) => {
  const items = [
    pod('a', '3'),
    { metadata: { name: 'b', resourceVersion: '4', annotations: { tricky: 'a "quoted" {brace} [bracket], \\ backslash \\"', items: '[{"x":1}]', 'ünï': 'çødé 😀' } }, spec: { list: [[1, 2], { deep: [{}] }], empty: '' } },
    { metadata: { name: 'c', resourceVersion: '5' } },
  ];
  // metadata after the items, as JSON allows; and whitespace between the parts
  const body = Buffer.from(`{"kind":"PodList","apiVersion":"v1","items": [ ${items.map((item) => JSON.stringify(item)).join(' ,\n ')} ] ,"metadata":{"resourceVersion":"9","continue":"more"}}\n`);
  for (const size of [1, 2, 3, 7, 64, body.length]) {
    const decoder = new ListPageDecoder((object) => object);
    for (let at = 0; at < body.length; at += size) decoder.push(body.subarray(at, at + size));
    t.same(decoder.end(), { items, resourceVersion: '9', continueToken: 'more' }, `in chunks of ${size} bytes`);
  }
  // an `items` deeper than the top level is part of the envelope or of an item, not the list's items
  const nested = Buffer.from('{"metadata":{"resourceVersion":"3","items":[{"metadata":{"name":"x","resourceVersion":"1"}}]},"items":[{"metadata":{"name":"a","resourceVersion":"1"},"items":[{"b":1}]}]}');
  const nestedDecoder = new ListPageDecoder((object) => object);
  nestedDecoder.push(nested);
  t.same(nestedDecoder.end().items, JSON.parse(nested.toString()).items, 'only the top-level items are the list');
  const growing = new ListPageDecoder((object) => object, { maxItemBytes: 64 });
  const long = Buffer.from(`{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a","resourceVersion":"1"},"x":"${'y'.repeat(200)}"}]}`);
  t.throws(() => {
    for (let at = 0; at < long.length; at += 10) growing.push(long.subarray(at, at + 10));
  }, { code: 'K8S_BAD_LIST', message: /longer than 64 bytes/ }, 'an item that outgrows its limit over many chunks is refused');
  const endless = new ListPageDecoder((object) => object, { maxListBytes: 1000 });
  t.throws(() => {
    endless.push(Buffer.from('{"metadata":{"resourceVersion":"1"},"items":['));
    for (let k = 0; k < 100; k++) endless.push(Buffer.from('{"metadata":{"name":"a","resourceVersion":"1"}},'));
  }, { code: 'K8S_RESPONSE_TOO_LARGE' }, 'a list that never ends is refused at its byte limit');
  const seen: string[] = [];
  const decoder = new ListPageDecoder((object) => {
    seen.push(object.metadata.name);
    return object.metadata.name;
  });
  decoder.push(body.subarray(0, body.indexOf('"c"')));
  t.same(seen, ['a', 'b'], 'each item is handed on as soon as it is whole, before the rest of the list comes');
  const bad: Array<[string, RegExp]> = [
    ['{"metadata":{"resourceVersion":"1"},"items":[1,2]}', /not an object/],
    ['{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a","resourceVersion":"1"}}', /ended before/],
    ['{"metadata":{"resourceVersion":"1"},"items":[]} {}', /goes on after/],
    ['[{"metadata":{}}]', /not a JSON object/],
    ['{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a","resourceVersion":"1"},}]}', /item 0 is not JSON/],
    [`{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a","resourceVersion":"1"},"x":"${'y'.repeat(100)}"}]}`, /longer than 64 bytes/],
    [`{"metadata":{"resourceVersion":"1","x":"${'y'.repeat(MAX_LIST_ENVELOPE_BYTES)}"},"items":[]}`, /outside its items/],
    // JSON.parse keeps the last of two keys: refused, never read differently
    ['{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a","resourceVersion":"1"}}],"items":[]}', /two items arrays/],
    ['{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a","resourceVersion":"1"}}{"metadata":{"name":"b","resourceVersion":"1"}}]}', /without a comma/],
    ['{"metadata":{"resourceVersion":"1"},"items":[,{"metadata":{"name":"a","resourceVersion":"1"}}]}', /comma where a list item should be/],
    ['{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a","resourceVersion":"1"}},]}', /comma after the last/],
    ['{"metadata":{"resourceVersion":"1"},"items":["a"]}', /not an object/],
  ];
  for (const [text, message] of bad) {
    t.throws(
      () => {
        const decoder = new ListPageDecoder((object) => object, { maxItemBytes: 64 });
        decoder.push(Buffer.from(text));
        decoder.end();
      },
      { code: 'K8S_BAD_LIST', message },
      `${text.slice(0, 80)} is refused`,
    );
  }
});

t.test('the queries: lists at RV=0 with a limit (and continue), watches with bookmarks and a timeout', async (t) => {
  const selectors = { labelSelector: 'app=a', fieldSelector: 'spec.nodeName=node1' };
  t.equal(listQuery(selectors, 500).toString(), 'resourceVersion=0&limit=500&labelSelector=app%3Da&fieldSelector=spec.nodeName%3Dnode1');
  t.equal(listQuery({}, 2, 'tok').toString(), 'resourceVersion=0&limit=2&continue=tok');
  t.equal(listQuery({}, 500, undefined, '42').toString(), 'resourceVersion=42', 'at a position: not older than it, no limit (which would make it an exact read)');
  t.equal(listQuery({}, 500, 'tok', '').toString(), 'limit=500&continue=tok', 'a quorum read, paged');
  t.equal(
    watchQuery({ labelSelector: 'app=a' }, '42', 300).toString(),
    'watch=true&resourceVersion=42&allowWatchBookmarks=true&timeoutSeconds=300&labelSelector=app%3Da',
  );
  t.equal(watchTimeoutSeconds(() => 0), 300);
  t.equal(watchTimeoutSeconds(() => 0.999999), 600);
  t.equal(watchTimeoutSeconds(() => 0.5), 450);
  t.equal(checkCollectionPath('/api/v1/namespaces/demo/pods'), '/api/v1/namespaces/demo/pods');
  for (const path of ['api/v1/pods', '/api/v1/pods?watch=true', '/api/../secrets', 'https://evil/api/v1/pods', '/healthz']) {
    t.throws(() => checkCollectionPath(path), { code: 'K8S_BAD_PATH' }, `${path} is refused`);
  }
});

t.test('a line in many chunks is joined once, whatever its length', async (t) => {
  const splitter = watchLineSplitter(4 * 1024 * 1024);
  const line = 'x'.repeat(2 * 1024 * 1024);
  let out: string[] = [];
  for (let i = 0; i < line.length; i += 16 * 1024) out = out.concat(splitter.push(Buffer.from(line.slice(i, i + 16 * 1024))));
  t.same(out, [], 'nothing before its newline');
  t.ok(splitter.pending, 'an unfinished line is held');
  const [whole, next] = splitter.push(Buffer.from('\n{"a":1}\n'));
  t.equal(whole?.length, line.length, 'the whole line, once');
  t.equal(next, '{"a":1}');
  t.notOk(splitter.pending);
});
