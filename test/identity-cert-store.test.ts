import t from 'tap';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { isAmbitError } from '../core/errors.js';
import { CertificateAuthority, CertStore, localIssuer, type CertIssuer, type WorkloadCertificate } from '../core/identity/index.js';

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

/**
 * Waits for `promise`, failing after `limitMs`. The store's timers are unref()ed, so a test waiting only on them
 * needs this ref()ed timer to keep Node running.
 */
async function within<T>(promise: Promise<T>, limitMs = 15_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`nothing happened within ${limitMs} ms`)), limitMs);
  });
  try {
    return await Promise.race([promise, limit]);
  } finally {
    clearTimeout(timer);
  }
}

/** Long enough for a renewal due at half life to have generated its key and called the issuer. */
async function sleepPastRenewal(cert: WorkloadCertificate): Promise<void> {
  await sleep((cert.notAfter.getTime() - Date.now()) / 2 + 1500);
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
  t.equal(store.current(ID), undefined, 'nothing before first use');

  const [a, b, c] = await Promise.all([store.get(ID), store.get(ID), store.get(ID)]);
  t.equal(issuer.calls, 1, 'one CSR for three callers');
  t.equal(a, b);
  t.equal(b, c);
  t.equal(store.current(ID), a, 'current() returns the held certificate');
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
  t.equal(store.current(OTHER_ID), undefined);
});

t.test('a failed first issuance rejects and keeps nothing', async (t) => {
  const issuer = counting({
    async sign() {
      throw new Error('controller unreachable');
    },
  });
  const store = new CertStore({ issuer, backoff: { initialMs: 10, maxMs: 20 } });
  t.teardown(() => store.close());
  await t.rejects(store.get(ID), /controller unreachable/);
  t.same(store.identities(), []);
  await sleep(100);
  t.equal(issuer.calls, 1, 'no background retry without a certificate to renew: the next get() asks again');
  await t.rejects(store.get(ID), /controller unreachable/);
  t.equal(issuer.calls, 2);
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
  const ttlMs = 4000;
  const store = new CertStore({ issuer: localIssuer(ca, ttlMs) });
  t.teardown(() => store.close());
  const first = await store.get(ID);
  const receivedAt = Date.now();
  const expectedRenewalMs = (first.notAfter.getTime() - receivedAt) / 2;

  const [spiffeId, second] = (await within(once(store, 'rotated'))) as [string, WorkloadCertificate];
  const elapsed = Date.now() - receivedAt;
  t.equal(spiffeId, ID);
  t.ok(elapsed >= expectedRenewalMs - 50, `renewed no earlier than half life (${elapsed} ms >= ${Math.round(expectedRenewalMs)} ms)`);
  t.ok(elapsed < first.notAfter.getTime() - receivedAt, `renewed before expiry (${elapsed} ms)`);
  t.not(second.serial, first.serial, 'a new certificate');
  t.not(second.keyPem, first.keyPem, 'from a new key');
  t.equal(store.current(ID), second, 'the new certificate is current');
  t.same(store.expirations(), [{ spiffeId: ID, notAfter: second.notAfter }]);
});

t.test('failed renewals back off and keep the old certificate', async (t) => {
  const failures = 3;
  let calls = 0;
  const issuer: CertIssuer = {
    async sign(csrPem, spiffeId) {
      calls += 1;
      if (calls > 1 && calls <= 1 + failures) throw new Error(`issuer down (call ${calls})`);
      return { certChainPem: await ca.sign(csrPem, { spiffeId, notAfter: new Date(Date.now() + 4000) }) };
    },
  };
  const store = new CertStore({ issuer, backoff: { initialMs: 40, maxMs: 160 } });
  t.teardown(() => store.close());
  const first = await store.get(ID);

  const retryDelays: number[] = [];
  const currentDuringFailures: Array<string | undefined> = [];
  store.on('renewal-failed', (spiffeId, err, retryInMs) => {
    t.equal(spiffeId, ID);
    t.match(err.message, /issuer down/);
    retryDelays.push(retryInMs);
    currentDuringFailures.push(store.current(ID)?.serial);
  });
  const [, renewed] = (await within(once(store, 'rotated'))) as [string, WorkloadCertificate];

  t.equal(calls, 1 + failures + 1, 'retried until the issuer answered');
  t.equal(retryDelays.length, failures);
  t.same(currentDuringFailures, Array(failures).fill(first.serial), 'the old certificate served while renewal failed');
  for (let i = 1; i < retryDelays.length; i += 1) {
    t.ok((retryDelays[i] ?? 0) >= (retryDelays[i - 1] ?? Infinity), `delay ${i} does not shrink: ${retryDelays.join(', ')}`);
  }
  t.ok((retryDelays[2] ?? 0) > (retryDelays[0] ?? Infinity), 'delays grow');
  t.ok(retryDelays.every((delay) => delay >= 20 && delay <= 160), 'within [initialMs / 2, maxMs]');
  t.not(renewed.serial, first.serial);
  t.equal(store.current(ID), renewed);
});

t.test('expiry follows the injected clock', async (t) => {
  let offsetMs = 0;
  const now = () => Date.now() + offsetMs;
  const issuer = counting(clockIssuer(now, 3600_000));
  const store = new CertStore({ issuer, now });
  t.teardown(() => store.close());
  const first = await store.get(ID);
  t.equal(store.current(ID), first);

  offsetMs = 2 * 3600_000;
  t.equal(store.current(ID), undefined, 'an expired certificate is never handed out');
  t.same(store.expirations(), [{ spiffeId: ID, notAfter: first.notAfter }], 'but its expiry is still reported');
  const second = await store.get(ID);
  t.equal(issuer.calls, 2, 'get() replaces an expired certificate');
  t.not(second.serial, first.serial);
  t.equal(store.current(ID), second);
});

t.test('close() stops renewals; timers never hold the process open', async (t) => {
  const before = refedTimers();
  const issuer = counting(localIssuer(ca, 3000));
  const store = new CertStore({ issuer });
  const cert = await store.get(ID);
  t.equal(refedTimers(), before, 'the renewal timer is unref()ed');

  store.close();
  t.same(store.identities(), []);
  t.equal(store.current(ID), undefined);
  await t.rejects(store.get(ID), { code: 'CERT_STORE_CLOSED' });
  await sleepPastRenewal(cert);
  t.equal(issuer.calls, 1, 'no renewal after close()');
  t.ok(isAmbitError(await store.get(ID).catch((err: unknown) => err), 'CERT_STORE_CLOSED'));
});

t.test('forget() stops renewing an identity', async (t) => {
  const issuer = counting(localIssuer(ca, 3000));
  const store = new CertStore({ issuer });
  t.teardown(() => store.close());
  const inflight = store.get(ID);
  store.forget(ID);
  const cert = await inflight;
  t.ok(cert, 'a caller already waiting still gets its certificate');
  t.same(store.identities(), [], 'but the store does not keep it');
  await sleepPastRenewal(cert);
  t.equal(issuer.calls, 1, 'and never renews it');
});

t.test('options are validated', async (t) => {
  t.throws(() => new CertStore({ issuer: localIssuer(ca), backoff: { initialMs: 0, maxMs: 10 } }), { code: 'BAD_BACKOFF' });
  t.throws(() => new CertStore({ issuer: localIssuer(ca), backoff: { initialMs: 100, maxMs: 10 } }), { code: 'BAD_BACKOFF' });
});
