import t, { type Test } from 'tap';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { isAmbitError } from '../core/errors/errors.js';
import { CertificateAuthority, CertStore, localIssuer, type CertIssuer, type WorkloadCertificate } from '../core/identity/index.js';
import { createLogger } from '../core/log/index.js';
import { FakeTime } from './mesh/fake-time.js';

const ID = 'spiffe://cluster.local/ns/team-a/sa/api';
const OTHER_ID = 'spiffe://cluster.local/ns/team-a/sa/web';

const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });

/** Wraps an issuer to count its calls. */
function counting(issuer: CertIssuer): CertIssuer & { calls: number } {
  const counted = {
    calls: 0,
    sign(csrPem: string, spiffeId: string) {
      counted.calls += 1;
      return issuer.sign(csrPem, spiffeId);
    },
  };
  return counted;
}

/** Issues certificates valid for `ttlMs` from the store's clock, which tests move. */
function clockIssuer(now: () => number, ttlMs: number): CertIssuer {
  return {
    async sign(csrPem, spiffeId) {
      return { certChainPem: await ca.sign(csrPem, { spiffeId, notBefore: new Date(now() - 60_000), notAfter: new Date(now() + ttlMs) }) };
    },
  };
}

/** The checks a certificate handed out for `spiffeId` must pass: its key, its identity, its issuer, its lifetime. */
function assertIssuedFor(t: Test, cert: WorkloadCertificate, spiffeId: string, now: number): void {
  const leaf = new X509Certificate(cert.certChainPem);
  t.equal(cert.spiffeId, spiffeId);
  t.equal(leaf.subjectAltName, `URI:${spiffeId}`, 'the leaf certifies the identity');
  t.ok(leaf.checkPrivateKey(createPrivateKey(cert.keyPem)), 'the key is the leaf\'s');
  t.ok(leaf.checkIssued(new X509Certificate(ca.rootPem)), 'issued by the mesh CA');
  t.equal(cert.serial, leaf.serialNumber);
  t.equal(cert.notAfter.getTime(), new Date(leaf.validTo).getTime());
  t.ok(cert.notBefore.getTime() <= now && cert.notAfter.getTime() > now, 'valid now');
}

function refedTimers(): number {
  return process.getActiveResourcesInfo().filter((resource) => resource === 'Timeout').length;
}

t.test('concurrent get() calls share one issuance', async (t) => {
  const issuer = counting(localIssuer(ca));
  const store = new CertStore({ issuer });
  t.teardown(() => store.close());
  const rotated: string[] = [];
  store.on('rotated', (spiffeId) => rotated.push(spiffeId));
  t.same(store.identities(), [], 'nothing before first use');

  const [a, b, c] = await Promise.all([store.get(ID), store.get(ID), store.get(ID)]);
  t.equal(issuer.calls, 1, 'one CSR for three callers');
  t.equal(a, b);
  t.equal(b, c);
  t.same(rotated, [ID], 'rotated is emitted for the first certificate');
  t.equal(a.spiffeId, ID);
  t.match(a.keyPem, /BEGIN PRIVATE KEY/);
  t.match(a.certChainPem, /BEGIN CERTIFICATE/);
  t.match(a.serial, /^[0-9A-F]+$/);
  t.ok(Math.abs(a.notAfter.getTime() - (Date.now() + 24 * 3600_000)) < 5000, 'a 24 h certificate by default');
  t.ok(a.notBefore < new Date());

  t.equal(await store.get(ID), a, 'a later get() reuses the certificate');
  t.equal(issuer.calls, 1);

  const other = await store.get(OTHER_ID);
  t.not(other.serial, a.serial);
  t.equal(issuer.calls, 2, 'each identity has its own certificate');
  t.same(store.identities().sort(), [ID, OTHER_ID]);
  t.same(
    store.expirations().sort((x, y) => x.spiffeId.localeCompare(y.spiffeId)),
    [{ spiffeId: ID, notAfter: a.notAfter }, { spiffeId: OTHER_ID, notAfter: other.notAfter }],
  );

  store.forget(OTHER_ID);
  t.same(store.identities(), [ID]);
  t.same(store.expirations(), [{ spiffeId: ID, notAfter: a.notAfter }], 'nor its certificate');
});

/** An issuer that fails while `failing` is set, then signs with the store's clock; it keeps each CSR it was sent. */
function flakyIssuer(now: () => number): CertIssuer & { failing: boolean; csrs: string[] } {
  const issuer = {
    failing: true,
    csrs: [] as string[],
    async sign(csrPem: string, spiffeId: string) {
      issuer.csrs.push(csrPem);
      if (issuer.failing) throw new Error(`controller unreachable (call ${issuer.csrs.length})`);
      return clockIssuer(now, 3600_000).sign(csrPem, spiffeId);
    },
  };
  return issuer;
}

t.test('a failed first issuance keeps the identity and is retried with backoff, without a caller', async (t) => {
  const time = new FakeTime();
  const issuer = flakyIssuer(time.now);
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger({ level: 'warn', destination: { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) } });
  const store = new CertStore({ issuer, log, backoff: { initialMs: 40, maxMs: 160 }, now: time.now, setTimer: time.setTimer });
  t.teardown(() => store.close());
  const failures: Array<[string, Error, number]> = [];
  store.on('issue-failed', (spiffeId, err, retryInMs) => failures.push([spiffeId, err, retryInMs]));
  store.on('renewal-failed', () => t.fail('no renewal: there is no certificate to renew'));

  await t.rejects(store.get(ID), /controller unreachable \(call 1\)/, 'the caller hears of the failure');
  t.same(store.identities(), [ID], 'the identity is kept');
  t.same(store.expirations(), [], 'without a certificate');
  t.equal(failures.length, 1, 'issue-failed is emitted');
  const [spiffeId, err, firstRetry] = failures[0]!;
  t.equal(spiffeId, ID);
  t.match(err.message, /call 1/);
  t.equal(time.pending, 1, 'a retry is set');
  t.equal(time.delays.at(-1), firstRetry, 'for the delay it announced');
  t.ok(firstRetry >= 20 && firstRetry <= 40, `the first delay is within [initialMs / 2, initialMs]: ${firstRetry}`);
  t.match(lines, [{ level: 40, spiffeId: ID, retryInMs: firstRetry, msg: /issuing a certificate failed/ }], 'logged at warn with the identity');

  time.advance(firstRetry - 1);
  t.equal(issuer.csrs.length, 1, 'not before its delay');
  time.advance(1);
  t.equal(issuer.csrs.length, 2, 'the retry asks without a caller');
  t.equal(await once(store, 'issue-failed').then(() => failures.length), 2, 'and fails again');
  const secondRetry = failures[1]![2];
  t.ok(secondRetry >= firstRetry, `the delay does not shrink: ${firstRetry}, ${secondRetry}`);
  t.equal(time.pending, 1, 'one retry is set at a time');
  t.equal(issuer.csrs[1], issuer.csrs[0], 'the retry asks with the same key and CSR: none is made per attempt');

  issuer.failing = false;
  const rotated = once(store, 'rotated');
  time.advance(secondRetry);
  const [, cert] = (await rotated) as [string, WorkloadCertificate];
  assertIssuedFor(t, cert, ID, time.now());
  t.equal(await store.get(ID), cert, 'get() hands out what the retry brought');
  t.equal(issuer.csrs.length, 3);
  t.same(time.delays.at(-1), (cert.notAfter.getTime() - time.now()) / 2, 'then a renewal is set, at half life');
  t.equal(time.pending, 1);
  time.advance(time.delays.at(-1)!);
  await once(store, 'rotated');
  t.not(issuer.csrs[3], issuer.csrs[2], 'a renewal after a certificate is from a new key');
});

t.test('get() on an identity whose first issuance failed asks at once, callers sharing one request', async (t) => {
  const time = new FakeTime();
  const issuer = flakyIssuer(time.now);
  const store = new CertStore({ issuer, backoff: { initialMs: 10_000, maxMs: 20_000 }, now: time.now, setTimer: time.setTimer });
  t.teardown(() => store.close());
  await t.rejects(store.get(ID), /call 1/);
  t.equal(time.pending, 1, 'a retry is set, far off');

  issuer.failing = false;
  const [a, b] = await Promise.all([store.get(ID), store.get(ID)]);
  t.equal(issuer.csrs.length, 2, 'asked at once, not at the retry, and once for both callers');
  t.equal(a, b);
  assertIssuedFor(t, a, ID, time.now());
  t.equal(time.pending, 1, 'the retry gave way to the renewal');
  t.equal(time.delays.at(-1), (a.notAfter.getTime() - time.now()) / 2);
});

t.test('forget() and close() cancel the retry of a failed first issuance', async (t) => {
  const time = new FakeTime();
  const issuer = flakyIssuer(time.now);
  const store = new CertStore({ issuer, backoff: { initialMs: 10, maxMs: 20 }, now: time.now, setTimer: time.setTimer });
  t.teardown(() => store.close());
  await t.rejects(store.get(ID));
  t.equal(time.pending, 1);
  store.forget(ID);
  t.equal(time.pending, 0, 'forget() cancels it');
  t.same(store.identities(), []);

  await t.rejects(store.get(OTHER_ID));
  t.equal(time.pending, 1);
  store.close();
  t.equal(time.pending, 0, 'close() cancels it');
  time.advance(1000);
  t.equal(issuer.csrs.length, 2, 'nothing is asked after either');
});

t.test('a certificate that does not match the request is refused', async (t) => {
  const store = new CertStore({
    issuer: {
      async sign() {
        return { certChainPem: (await ca.issueKeyAndCert(ID)).certPem };
      },
    },
  });
  t.teardown(() => store.close());
  await t.rejects(store.get(ID), { code: 'BAD_ISSUED_CERT', message: /does not match the CSR's key/ });

  const wrongIdentity = new CertStore({
    issuer: {
      async sign(csrPem) {
        const other = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
        return { certChainPem: await other.sign(csrPem, { spiffeId: ID }) };
      },
    },
  });
  t.teardown(() => wrongIdentity.close());
  await t.rejects(wrongIdentity.get(OTHER_ID), { code: 'BAD_CSR' }, 'the CA refuses to certify another identity than the CSR asks for');
});

t.test('renews at half of the remaining lifetime', async (t) => {
  const time = new FakeTime();
  const ttlMs = 24 * 3600_000;
  const issuer = counting(clockIssuer(time.now, ttlMs));
  const store = new CertStore({ issuer, now: time.now, setTimer: time.setTimer });
  t.teardown(() => store.close());
  const first = await store.get(ID);
  assertIssuedFor(t, first, ID, time.now());
  const halfLife = (first.notAfter.getTime() - time.now()) / 2;
  t.same(time.delays, [halfLife], 'one timer, at half of the remaining life');

  time.advance(halfLife - 1);
  t.equal(time.pending, 1, 'not renewed a millisecond before half life');
  const rotated = once(store, 'rotated');
  time.advance(1);
  t.equal(time.pending, 0, 'the renewal starts at half life');
  const [spiffeId, second] = (await rotated) as [string, WorkloadCertificate];
  t.equal(spiffeId, ID);
  t.equal(issuer.calls, 2);
  assertIssuedFor(t, second, ID, time.now());
  t.not(second.serial, first.serial, 'a new certificate');
  t.not(second.keyPem, first.keyPem, 'from a new key');
  t.equal(await store.get(ID), second, 'the new certificate is the one handed out');
  t.equal(issuer.calls, 2, 'without another issuance');
  t.same(store.expirations(), [{ spiffeId: ID, notAfter: second.notAfter }]);
  t.equal(time.delays[1], (second.notAfter.getTime() - time.now()) / 2, 'the next renewal is at its half life');
});

t.test('failed renewals back off and keep the old certificate', async (t) => {
  const time = new FakeTime();
  const failures = 3;
  let calls = 0;
  const issuer: CertIssuer = {
    async sign(csrPem, spiffeId) {
      calls += 1;
      if (calls > 1 && calls <= 1 + failures) throw new Error(`issuer down (call ${calls})`);
      return clockIssuer(time.now, 3600_000).sign(csrPem, spiffeId);
    },
  };
  const store = new CertStore({ issuer, backoff: { initialMs: 40, maxMs: 160 }, now: time.now, setTimer: time.setTimer });
  t.teardown(() => store.close());
  const first = await store.get(ID);

  const retryDelays: number[] = [];
  let next = time.delays[0] ?? NaN;
  for (let i = 0; i < failures; i += 1) {
    const failed = once(store, 'renewal-failed');
    time.advance(next);
    const [spiffeId, err, retryInMs] = (await failed) as [string, Error, number];
    t.equal(spiffeId, ID);
    t.match(err.message, /issuer down/);
    t.equal(await store.get(ID), first, `the old certificate serves after failure ${i + 1}`);
    t.equal(calls, 2 + i, 'without another issuance');
    t.equal(time.delays.at(-1), retryInMs, 'the retry is set for the delay it announced');
    retryDelays.push(retryInMs);
    time.advance(retryInMs - 1);
    t.equal(time.pending, 1, 'no retry before its delay');
    next = 1;
  }
  const rotated = once(store, 'rotated');
  time.advance(next);
  const [, renewed] = (await rotated) as [string, WorkloadCertificate];

  t.equal(calls, 1 + failures + 1, 'retried until the issuer answered');
  for (let i = 1; i < retryDelays.length; i += 1) {
    t.ok((retryDelays[i] ?? 0) >= (retryDelays[i - 1] ?? Infinity), `delay ${i} does not shrink: ${retryDelays.join(', ')}`);
  }
  t.ok((retryDelays[2] ?? 0) > (retryDelays[0] ?? Infinity), 'delays grow');
  t.ok(retryDelays.every((delay) => delay >= 20 && delay <= 160), 'within [initialMs / 2, maxMs]');
  assertIssuedFor(t, renewed, ID, time.now());
  t.not(renewed.serial, first.serial);
  t.equal(await store.get(ID), renewed);
});

t.test('expiry follows the injected clock', async (t) => {
  const time = new FakeTime();
  const issuer = counting(clockIssuer(time.now, 3600_000));
  const store = new CertStore({ issuer, now: time.now, setTimer: time.setTimer });
  t.teardown(() => store.close());
  const first = await store.get(ID);
  t.equal(await store.get(ID), first);

  time.skip(2 * 3600_000);
  t.same(store.expirations(), [{ spiffeId: ID, notAfter: first.notAfter }], 'an expired certificate\'s expiry is still reported');
  const second = await store.get(ID);
  t.equal(issuer.calls, 2, 'get() replaces an expired certificate');
  assertIssuedFor(t, second, ID, time.now());
  t.not(second.serial, first.serial, 'an expired certificate is never handed out');
  t.equal(await store.get(ID), second);
  t.equal(issuer.calls, 2);
});

t.test('close() stops renewals; the real timers never hold the process open', async (t) => {
  const time = new FakeTime();
  const issuer = counting(clockIssuer(time.now, 3600_000));
  const store = new CertStore({ issuer, now: time.now, setTimer: time.setTimer });
  await store.get(ID);
  t.equal(time.pending, 1, 'a renewal is set');
  store.close();
  t.equal(time.pending, 0, 'close() cancels it');
  t.same(store.identities(), []);
  t.same(store.expirations(), []);
  await t.rejects(store.get(ID), { code: 'CERT_STORE_CLOSED' });
  time.advance(2 * 3600_000);
  t.equal(issuer.calls, 1, 'no renewal after close()');
  t.ok(isAmbitError(await store.get(ID).catch((err: unknown) => err), 'CERT_STORE_CLOSED'));

  const before = refedTimers();
  const real = new CertStore({ issuer: localIssuer(ca) });
  t.teardown(() => real.close());
  await real.get(ID);
  t.equal(refedTimers(), before, 'the default renewal timer is unref()ed');
});

t.test('forget() stops renewing an identity', async (t) => {
  const time = new FakeTime();
  const issuer = counting(clockIssuer(time.now, 3600_000));
  const store = new CertStore({ issuer, now: time.now, setTimer: time.setTimer });
  t.teardown(() => store.close());
  const inflight = store.get(ID);
  store.forget(ID);
  const cert = await inflight;
  assertIssuedFor(t, cert, ID, time.now());
  t.same(store.identities(), [], 'but the store does not keep it');
  t.equal(time.pending, 0, 'no renewal is set for it');
  time.advance(2 * 3600_000);
  t.equal(issuer.calls, 1, 'and it is never renewed');

  const held = await store.get(OTHER_ID);
  t.equal(time.pending, 1);
  store.forget(OTHER_ID);
  t.equal(time.pending, 0, 'forgetting a held identity cancels its renewal');
  t.same(store.identities(), []);
  t.not(held.serial, cert.serial);
});

t.test('options are validated', async (t) => {
  t.throws(() => new CertStore({ issuer: localIssuer(ca), backoff: { initialMs: 0, maxMs: 10 } }), { code: 'BAD_BACKOFF' });
  t.throws(() => new CertStore({ issuer: localIssuer(ca), backoff: { initialMs: 100, maxMs: 10 } }), { code: 'BAD_BACKOFF' });
});
