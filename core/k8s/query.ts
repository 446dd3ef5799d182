import { AmbitError } from '../errors/index.js';

/** What narrows a list and its watch: the server filters, so the reflector never holds what it was not asked for. */
export interface Selectors {
  labelSelector?: string | undefined;
  fieldSelector?: string | undefined;
}

/** The watch's server-side timeout is drawn from [min, max] seconds, as client-go does, so watchers do not reconnect in step. */
export const WATCH_TIMEOUT_MIN_SECONDS = 300;
export const WATCH_TIMEOUT_MAX_SECONDS = 600;

/** client-go's pager's page size. */
export const DEFAULT_PAGE_SIZE = 500;

function addSelectors(query: URLSearchParams, selectors: Selectors): void {
  if (selectors.labelSelector) query.set('labelSelector', selectors.labelSelector);
  if (selectors.fieldSelector) query.set('fieldSelector', selectors.fieldSelector);
}

/**
 * A list page's query at `resourceVersion` (client-go's reflector's choices):
 * - `0`, the first list: any state the watch cache holds, no quorum read from etcd. Like client-go's pager it still
 *   sends `limit`: the watch cache ignores it for RV=0 and answers in one page, and a server without one pages.
 * - the last position X, for a relist: a state not older than X, so the consumer never goes back in time (a lagging
 *   cache of another API server replica would answer RV=0 with a state older than what it has seen). Without a
 *   `limit`, since with one the server reads exactly X from etcd, which fails once X is compacted.
 * - unset (`''`), when X was refused (too large for that server's cache): a quorum read, paged.
 * A continue page keeps the same options plus the token, as the pager does.
 */
export function listQuery(selectors: Selectors, limit: number, continueToken?: string, resourceVersion = '0'): URLSearchParams {
  const query = new URLSearchParams();
  if (resourceVersion !== '') query.set('resourceVersion', resourceVersion);
  if (resourceVersion === '0' || resourceVersion === '') query.set('limit', String(limit));
  if (continueToken !== undefined) query.set('continue', continueToken);
  addSelectors(query, selectors);
  return query;
}

/** A watch's query from `resourceVersion`, with bookmarks (cheap position updates that spare a relist). */
export function watchQuery(selectors: Selectors, resourceVersion: string, timeoutSeconds: number): URLSearchParams {
  const query = new URLSearchParams({
    watch: 'true',
    resourceVersion,
    allowWatchBookmarks: 'true',
    timeoutSeconds: String(timeoutSeconds),
  });
  addSelectors(query, selectors);
  return query;
}

/** A timeout in [WATCH_TIMEOUT_MIN_SECONDS, WATCH_TIMEOUT_MAX_SECONDS], from `random` in [0, 1). */
export function watchTimeoutSeconds(random: () => number): number {
  const span = WATCH_TIMEOUT_MAX_SECONDS - WATCH_TIMEOUT_MIN_SECONDS + 1;
  return Math.min(WATCH_TIMEOUT_MAX_SECONDS, WATCH_TIMEOUT_MIN_SECONDS + Math.floor(random() * span));
}

/** Refuses a collection path that is not one: it must start with `/` and carry no query of its own. */
export function checkCollectionPath(path: string): string {
  if (!/^\/(api|apis)\/[A-Za-z0-9./_-]+$/.test(path) || path.includes('..')) {
    throw new AmbitError(
      'K8S_BAD_PATH',
      `${JSON.stringify(path)} is not an API collection path (like /api/v1/pods or /apis/discovery.k8s.io/v1/endpointslices)`,
    );
  }
  return path;
}
