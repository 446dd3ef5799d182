/**
 * The controller's token check: the TokenReview itself against the API server double, and the verdict cache in
 * front of it (what 5,000 agents reconnecting at once cost the API server).
 */
import t from 'tap';
import { cachedAuthenticator, tokenReviewer } from '../controller/token-review.js';
import type { TokenVerdict } from '../controller/stream-server.js';
import { KubeApi, loadKubeConfig } from '../core/k8s/index.js';
import { ApiServer, boundServiceAccountUser, NODE_NAME_EXTRA, POD_NAME_EXTRA, POD_UID_EXTRA } from '../testbed/index.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

const AGENT = 'system:serviceaccount:ambit-system:ambit-agent';

t.test('a TokenReview: the audience must be ours; an API server that cannot answer gives no verdict, it throws', async (t) => {
  const api = await ApiServer.start();
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-review-'));
  t.teardown(async () => {
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });
  const user = { namespace: 'ambit-system', serviceAccount: 'ambit-agent', podName: 'p', podUid: 'u', nodeName: 'node1' };
  api.addToken('controller-token', { username: 'system:serviceaccount:ambit-system:ambit-controller' });
  api.addToken('stream-token', boundServiceAccountUser({ ...user, audiences: ['ambit-controller'] }));
  api.addToken('api-token', boundServiceAccountUser(user));
  await api.writeKubeconfig(path.join(dir, 'kubeconfig'), 'controller-token');
  const review = tokenReviewer(new KubeApi(await loadKubeConfig({ kubeconfig: path.join(dir, 'kubeconfig') })), 'ambit-controller');
  t.same(
    await review('stream-token'),
    { authenticated: true, username: AGENT, extra: { [POD_NAME_EXTRA]: ['p'], [POD_UID_EXTRA]: ['u'], [NODE_NAME_EXTRA]: ['node1'] } },
    "the user, with the bound token's claims: the CA's node authorization reads the node from them",
  );
  t.match(await review('api-token'), { authenticated: false, reason: /audience/ }, 'a token for the API server proves nothing here');
  t.match(await review('forged'), { authenticated: false });
  await api.stop();
  await t.rejects(review('stream-token'), { code: 'TOKEN_REVIEW_UNAVAILABLE' }, 'no answer is no verdict');
  await api.resume();
});

/** An authenticate whose answers the test releases, counting the calls and the most in flight at once. */
function heldReviews(verdictOf: (token: string) => TokenVerdict | Error) {
  const calls: string[] = [];
  const waiting: Array<() => void> = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const authenticate = (token: string) =>
    new Promise<TokenVerdict>((resolve, reject) => {
      calls.push(token);
      inFlight += 1;
      maxInFlight = Math.max(maxInFlight, inFlight);
      waiting.push(() => {
        inFlight -= 1;
        const verdict = verdictOf(token);
        if (verdict instanceof Error) reject(verdict);
        else resolve(verdict);
      });
    });
  return {
    authenticate,
    calls,
    get maxInFlight() {
      return maxInFlight;
    },
    /** Answers every check asked so far (and those asked while answering), until none waits. */
    async releaseAll() {
      // the checks reach authenticate a few microtasks after they are asked (the cache, the concurrency bound)
      await new Promise((resolve) => setImmediate(resolve));
      while (waiting.length > 0) {
        for (const answer of waiting.splice(0)) answer();
        await new Promise((resolve) => setImmediate(resolve));
      }
    },
  };
}

const accepted: TokenVerdict = { authenticated: true, username: AGENT };
const refused: TokenVerdict = { authenticated: false, reason: 'unknown token' };

t.test('the same token asked by many streams at once is checked once; verdicts live 10 s (accepted) and 2 s (refused)', async (t) => {
  let now = 1_000_000;
  const reviews = heldReviews((token) => (token.startsWith('good') ? accepted : refused));
  const check = cachedAuthenticator(reviews.authenticate, { now: () => now });
  const together = Array.from({ length: 20 }, () => check('good-1'));
  await reviews.releaseAll();
  t.same(await Promise.all(together), Array(20).fill(accepted));
  t.same(reviews.calls, ['good-1'], 'one TokenReview for twenty streams');

  const bad = check('bad-1');
  await reviews.releaseAll();
  t.same(await bad, refused);
  now += 1_900;
  t.same(await check('bad-1'), refused, 'a refusal is remembered for a moment');
  t.same(await check('good-1'), accepted, 'and an admission');
  t.equal(reviews.calls.length, 2, 'neither asked again');
  now += 200;
  const again = check('bad-1');
  await reviews.releaseAll();
  await again;
  t.same(reviews.calls.slice(2), ['bad-1'], 'past 2 s a refused token is asked again (it may have been minted just now)');
  now += 8_000;
  const renewed = check('good-1');
  await reviews.releaseAll();
  await renewed;
  t.same(reviews.calls.slice(3), ['good-1'], 'past 10 s an accepted token is asked again (its pod may be gone)');
});

t.test('a check that fails is not remembered; at most 32 run at once; the cache is bounded', async (t) => {
  let fail = true;
  const reviews = heldReviews(() => (fail ? new Error('connect ECONNREFUSED') : accepted));
  const check = cachedAuthenticator(reviews.authenticate, { maxVerdicts: 50, maxWaiting: 100 });
  const failing = t.rejects(check('good'), /ECONNREFUSED/, 'no verdict is passed on as an error');
  await reviews.releaseAll();
  await failing;
  fail = false;
  const retried = check('good');
  await reviews.releaseAll();
  t.same(await retried, accepted, 'and the next caller asks again');

  const many = Array.from({ length: 100 }, (_, i) => check(`token-${i}`));
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(reviews.maxInFlight, 32, 'a hundred distinct tokens: 32 checks in flight, the rest wait');
  await t.rejects(
    Promise.all(Array.from({ length: 40 }, (_, i) => check(`flood-${i}`))),
    { code: 'TOKEN_REVIEW_UNAVAILABLE', message: /waiting already/ },
    'past 100 waiting (68 wait now), a new check is refused at once',
  );
  await reviews.releaseAll();
  t.equal((await Promise.all(many)).length, 100, 'every one answered');
  const before = reviews.calls.length;
  const evicted = check('token-0');
  await reviews.releaseAll();
  await evicted;
  t.equal(reviews.calls.length, before + 1, 'the oldest verdict went when the cache was full: asked again');
  t.equal(await check('token-99'), accepted);
  t.equal(reviews.calls.length, before + 1, 'a recent one is still held');
});

t.test('an accepted token is not taken past its own expiry (a JWT exp), however long the cache would hold it', async (t) => {
  let now = Date.now();
  const jwt = (exp: number) => `e30.${Buffer.from(JSON.stringify({ exp: Math.floor(exp / 1000) })).toString('base64url')}.sig`;
  const shortLived = jwt(now + 5_000);
  const reviews = heldReviews(() => accepted);
  const check = cachedAuthenticator(reviews.authenticate, { now: () => now, acceptedTtlMs: 60_000 });
  const first = check(shortLived);
  await reviews.releaseAll();
  t.same(await first, accepted);
  now += 4_000;
  t.same(await check(shortLived), accepted);
  t.equal(reviews.calls.length, 1, 'held while the token is valid');
  now += 2_000;
  const past = check(shortLived);
  await reviews.releaseAll();
  await past;
  t.equal(reviews.calls.length, 2, 'past its exp it is reviewed again, though the cache holds verdicts 60 s');
});
