import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import pLimit from 'p-limit';
import { AmbitError } from '../core/errors/index.js';
import type { KubeApi } from '../core/k8s/index.js';
import { tokenExpiry, type Authenticate, type TokenVerdict } from './stream-server.js';

const TOKEN_REVIEW_PATH = '/apis/authentication.k8s.io/v1/tokenreviews';

/** How long a token the API server vouched for is taken without asking again. */
export const DEFAULT_ACCEPTED_TTL_MS = 10_000;
/** How long a refused token stays refused without asking again (short: a token just minted may not be known yet). */
export const DEFAULT_REFUSED_TTL_MS = 2_000;
/** Verdicts held at most: a flood of distinct tokens evicts the oldest, it does not grow the controller. */
export const DEFAULT_MAX_VERDICTS = 10_000;
/** TokenReviews in flight at most; the rest wait their turn (5,000 agents reconnecting must not be 5,000 requests at once). */
export const DEFAULT_MAX_CONCURRENT_REVIEWS = 32;
/**
 * Checks waiting for their turn at most; past it a caller is refused at once (503, it retries): the stream port is
 * open to every node, and a flood of made-up tokens must not grow the controller or keep the API server busy.
 */
export const DEFAULT_MAX_WAITING_REVIEWS = 1_000;

/**
 * Checks a bearer token with a TokenReview for `audience`: a token the API server vouches for, bound to that
 * audience (a token for the API server itself, or for another service, proves nothing here). A review that cannot be
 * had (the API server unreachable, an error answer) throws TOKEN_REVIEW_UNAVAILABLE: that is no verdict, so the
 * caller is refused as "try again", never admitted and never told its token is bad.
 */
export function tokenReviewer(api: Pick<KubeApi, 'post'>, audience: string): Authenticate {
  return async (token: string): Promise<TokenVerdict> => {
    const review = {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenReview',
      spec: { token, audiences: [audience] },
    };
    let answer: { status?: { authenticated?: unknown; user?: { username?: unknown; extra?: unknown }; audiences?: unknown; error?: unknown } };
    try {
      answer = (await api.post(TOKEN_REVIEW_PATH, review)) as typeof answer;
    } catch (err) {
      throw new AmbitError('TOKEN_REVIEW_UNAVAILABLE', `the TokenReview failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    const status = answer.status ?? {};
    if (status.authenticated !== true) {
      return { authenticated: false, reason: typeof status.error === 'string' && status.error !== '' ? status.error : 'the API server did not authenticate it' };
    }
    if (!Array.isArray(status.audiences) || !status.audiences.includes(audience)) {
      return { authenticated: false, reason: `it is not bound to the audience ${audience}` };
    }
    const username = status.user?.username;
    if (typeof username !== 'string' || username === '') return { authenticated: false, reason: 'the review names no user' };
    return { authenticated: true, username, extra: extraOf(status.user?.extra) };
  };
}

/** The user's `extra` as the review gave it, keeping only string values (a claim of another shape is not a claim). */
function extraOf(value: unknown): Record<string, readonly string[]> {
  const extra: Record<string, readonly string[]> = {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return extra;
  for (const [key, values] of Object.entries(value as Record<string, unknown>)) {
    if (Array.isArray(values)) extra[key] = Object.freeze(values.filter((item): item is string => typeof item === 'string'));
  }
  return extra;
}

export interface VerdictCacheOptions {
  readonly acceptedTtlMs?: number;
  readonly refusedTtlMs?: number;
  readonly maxVerdicts?: number;
  readonly maxConcurrent?: number;
  readonly maxWaiting?: number;
  /** The clock of the verdicts' lifetimes (milliseconds); tests move one by hand. */
  readonly now?: () => number;
}

/**
 * `authenticate` with its verdicts remembered for a few seconds, keyed by the token's SHA-256 (the token itself is
 * never held), the same token checked once however many streams ask at the same moment, and at most
 * `maxConcurrent` checks in flight. A check that fails (no verdict) is not remembered: the next caller asks again.
 */
export function cachedAuthenticator(authenticate: Authenticate, options: VerdictCacheOptions = {}): Authenticate {
  const acceptedTtl = options.acceptedTtlMs ?? DEFAULT_ACCEPTED_TTL_MS;
  const refusedTtl = options.refusedTtlMs ?? DEFAULT_REFUSED_TTL_MS;
  const limit = pLimit(options.maxConcurrent ?? DEFAULT_MAX_CONCURRENT_REVIEWS);
  const maxWaiting = options.maxWaiting ?? DEFAULT_MAX_WAITING_REVIEWS;
  // the token travels to fetchMethod as its context; the key is its hash
  const verdicts = new LRUCache<string, TokenVerdict, string>({
    max: options.maxVerdicts ?? DEFAULT_MAX_VERDICTS,
    ttl: acceptedTtl,
    // a check evicted while in flight (more distinct tokens waiting than the cache holds) still answers its caller
    ignoreFetchAbort: true,
    ...(options.now === undefined ? {} : { perf: { now: options.now }, ttlResolution: 0 }),
    fetchMethod: async (_key, _stale, { context, options: entry }) => {
      if (limit.pendingCount >= maxWaiting) throw new AmbitError('TOKEN_REVIEW_UNAVAILABLE', `${limit.pendingCount} token checks are waiting already`);
      const verdict = await limit(() => authenticate(context));
      // an accepted token is not taken past its own expiry (a JWT's exp), however long the cache would hold it
      const expiry = verdict.authenticated ? tokenExpiry(context) : undefined;
      const untilExpiry = expiry === undefined ? acceptedTtl : Math.max(1, expiry - (options.now ?? Date.now)());
      entry.ttl = verdict.authenticated ? Math.min(acceptedTtl, untilExpiry) : refusedTtl;
      return verdict;
    },
  });
  return async (token: string): Promise<TokenVerdict> => {
    const key = createHash('sha256').update(token).digest('hex');
    const verdict = await verdicts.fetch(key, { context: token });
    if (verdict === undefined) throw new AmbitError('TOKEN_REVIEW_UNAVAILABLE', 'the TokenReview gave no verdict');
    return verdict;
  };
}
