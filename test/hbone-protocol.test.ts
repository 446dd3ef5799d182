import t from 'tap';
import { buildBaggage, forwardedFor, formatAuthority, newTraceparent, parseAuthority, parseForwardedFor } from '../core/hbone/index.js';
import { spiffeIdFromSan } from '../core/identity/index.js';

t.test('authority parsing accepts ip:port only', async (t) => {
  t.same(parseAuthority('10.0.0.1:80'), { host: '10.0.0.1', port: 80 });
  t.same(parseAuthority('[fd00::1]:8080'), { host: 'fd00::1', port: 8080 });
  for (const bad of [undefined, '', '10.0.0.1', '10.0.0.1:', '10.0.0.1:0', '10.0.0.1:65536', '10.0.0.1:80x', 'web.demo:80', '[fd00::1]', 'fd00::1:80', '10.0.0.256:80', ' 10.0.0.1:80']) {
    t.equal(parseAuthority(bad), undefined, String(bad));
  }
  t.equal(formatAuthority('fd00::1', 80), '[fd00::1]:80');
});

t.test('forwarded, baggage, traceparent', async (t) => {
  t.equal(forwardedFor('10.0.0.1', 1234), 'for="10.0.0.1:1234"');
  t.same(parseForwardedFor('for="10.0.0.1:1234"'), { host: '10.0.0.1', port: 1234 });
  t.same(parseForwardedFor('for="[fd00::2]:99";proto=https'), { host: 'fd00::2', port: 99 });
  t.equal(parseForwardedFor('for=unknown'), undefined);
  t.equal(buildBaggage({ cluster: 'c1', namespace: 'demo', workloadName: 'web', service: 'web', version: 'v1' }), 'k8s.cluster.name=c1,k8s.namespace.name=demo,k8s.pod.name=web,service.name=web,service.version=v1');
  const seen = new Set<string>();
  for (let i = 0; i < 600; i++) {
    const tp = newTraceparent();
    t.match(tp, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    seen.add(tp);
  }
  t.equal(seen.size, 600, 'trace contexts do not repeat across entropy blocks');
});

t.test('the SPIFFE ID of a certificate SAN', async (t) => {
  t.equal(spiffeIdFromSan('DNS:x, URI:spiffe://cluster.local/ns/a/sa/b'), 'spiffe://cluster.local/ns/a/sa/b');
  t.equal(spiffeIdFromSan('URI:https://example.com'), undefined);
  t.equal(spiffeIdFromSan(undefined), undefined);
});
