import type { KubeApi } from '../core/k8s/index.js';
import type { Authenticate, TokenVerdict } from './stream-server.js';

const TOKEN_REVIEW_PATH = '/apis/authentication.k8s.io/v1/tokenreviews';

/**
 * Checks a bearer token with a TokenReview for `audience`: a token the API server vouches for, bound to that
 * audience (a token for the API server itself, or for another service, proves nothing here). The API server
 * failing to answer is a refusal, never an admission.
 */
export function tokenReviewer(api: Pick<KubeApi, 'post'>, audience: string): Authenticate {
  return async (token: string): Promise<TokenVerdict> => {
    const review = {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenReview',
      spec: { token, audiences: [audience] },
    };
    const answer = (await api.post(TOKEN_REVIEW_PATH, review)) as {
      status?: { authenticated?: unknown; user?: { username?: unknown }; audiences?: unknown; error?: unknown };
    };
    const status = answer.status ?? {};
    if (status.authenticated !== true) {
      return { authenticated: false, reason: typeof status.error === 'string' && status.error !== '' ? status.error : 'the API server did not authenticate it' };
    }
    if (!Array.isArray(status.audiences) || !status.audiences.includes(audience)) {
      return { authenticated: false, reason: `it is not bound to the audience ${audience}` };
    }
    const username = status.user?.username;
    if (typeof username !== 'string' || username === '') return { authenticated: false, reason: 'the review names no user' };
    return { authenticated: true, username };
  };
}
