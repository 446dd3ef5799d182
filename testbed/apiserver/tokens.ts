import { badRequest } from './status.js';
import { child, str, type JsonObject, type TokenUser } from './types.js';

/** The audience of a token issued for the API server itself, when a test registers one without audiences. */
export const API_SERVER_AUDIENCE = 'https://kubernetes.default.svc.cluster.local';

/**
 * The bound-token claims a TokenReview reports in `status.user.extra`, as the real token authenticator names them
 * (spelled out here, not taken from the product's constants: a typo there must fail against the double).
 */
export const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
export const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';
export const NODE_NAME_EXTRA = 'authentication.kubernetes.io/node-name';

/** The bearer tokens the double accepts, registered by the test; anything else is 401. */
export class TokenRegistry {
  readonly #tokens = new Map<string, TokenUser>();

  add(token: string, user: TokenUser): void {
    if (token === '' || /\s/.test(token)) throw badRequest('a bearer token is a non-empty string without whitespace');
    this.#tokens.set(token, user);
  }

  remove(token: string): void {
    this.#tokens.delete(token);
  }

  /** Who the request's `Authorization: Bearer` header names, undefined when it names nobody. */
  authenticate(header: string | undefined): TokenUser | undefined {
    const m = /^Bearer\s+(\S+)$/i.exec(header ?? '');
    const user = m?.[1] === undefined ? undefined : this.#tokens.get(m[1]);
    return user === undefined || expired(user) ? undefined : user;
  }

  /**
   * The TokenReview answer: the user of a registered token, when its audiences meet the review's (none asked: the
   * token's own). An unknown token or a wrong audience is `authenticated: false` with an error, never a 4xx.
   */
  review(body: JsonObject): JsonObject {
    const spec = child(body, 'spec');
    const token = str(spec.token);
    if (token === undefined || token === '') throw badRequest('TokenReview spec.token is required');
    const wanted = Array.isArray(spec.audiences) ? spec.audiences.filter((a): a is string => typeof a === 'string') : [];
    const user = this.#tokens.get(token);
    const reply = (status: JsonObject): JsonObject => ({
      kind: 'TokenReview',
      apiVersion: 'authentication.k8s.io/v1',
      metadata: { creationTimestamp: null },
      spec: { ...spec },
      status,
    });
    if (user === undefined) return reply({ authenticated: false, user: {}, error: '[invalid bearer token, token lookup failed]' });
    if (expired(user)) return reply({ authenticated: false, user: {}, error: '[invalid bearer token, service account token has expired]' });
    const own = user.audiences ?? [API_SERVER_AUDIENCE];
    const audiences = wanted.length === 0 ? own : own.filter((a) => wanted.includes(a));
    if (audiences.length === 0) {
      return reply({ authenticated: false, user: {}, error: `[invalid bearer token, token audiences ${JSON.stringify(own)} is invalid for the target audiences ${JSON.stringify(wanted)}]` });
    }
    const extra: JsonObject = {};
    for (const [key, values] of Object.entries(user.extra ?? {})) extra[key] = [...values];
    return reply({
      authenticated: true,
      user: { username: user.username, uid: user.uid ?? '', groups: [...(user.groups ?? [])], extra },
      audiences: [...audiences],
    });
  }
}

function expired(user: TokenUser): boolean {
  return user.expiresAt !== undefined && Date.now() >= user.expiresAt;
}

/** A service account token bound to a pod: the username, groups and extra a real one authenticates as. */
export function boundServiceAccountUser(options: {
  namespace: string;
  serviceAccount: string;
  podName: string;
  podUid: string;
  nodeName?: string;
  audiences?: readonly string[];
}): TokenUser {
  const extra: Record<string, string[]> = { [POD_NAME_EXTRA]: [options.podName], [POD_UID_EXTRA]: [options.podUid] };
  if (options.nodeName !== undefined) extra[NODE_NAME_EXTRA] = [options.nodeName];
  return {
    username: `system:serviceaccount:${options.namespace}:${options.serviceAccount}`,
    uid: `sa-${options.namespace}-${options.serviceAccount}`,
    groups: ['system:serviceaccounts', `system:serviceaccounts:${options.namespace}`, 'system:authenticated'],
    extra,
    ...(options.audiences === undefined ? {} : { audiences: options.audiences }),
  };
}
