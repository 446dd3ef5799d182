/** The JSON the double stores and serves: Kubernetes objects are plain JSON documents. */
export type Json = null | boolean | number | string | Json[] | JsonObject;
export interface JsonObject {
  [key: string]: Json;
}

/** A kind the double serves, as discovery describes it (`kubectl api-resources`). */
export interface ResourceType {
  /** '' for the core group (`/api/v1`). */
  readonly group: string;
  readonly version: string;
  /** The plural, as in the path: 'pods'. */
  readonly resource: string;
  readonly kind: string;
  readonly namespaced: boolean;
  readonly shortNames?: readonly string[];
  /** Discovery's categories: `kubectl get all` lists the kinds in `all`. */
  readonly categories?: readonly string[];
  /** Discovery's singularName; default the kind in lower case. */
  readonly singular?: string;
  /**
   * Built-in kinds are listed without kind and apiVersion on their items, as the real server does (its typed
   * encoders leave them out); custom resources keep them.
   */
  readonly builtIn?: boolean;
  /**
   * A built-in kind's top-level fields besides apiVersion, kind and metadata: what field validation knows of it
   * (field-validation.ts). Undefined: any field is kept.
   */
  readonly fields?: readonly string[];
  /** Names are any path segment (RBAC's `system:discovery`), not only lowercase DNS subdomains. */
  readonly pathSegmentName?: boolean;
}

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';

/** One change in the store, at the resourceVersion it produced. */
export interface StoreEvent {
  readonly type: 'ADDED' | 'MODIFIED' | 'DELETED';
  readonly key: string;
  readonly rv: number;
  readonly object: JsonObject;
  /** The object before a MODIFIED: a watcher whose selector matched only one side sees ADDED or DELETED. */
  readonly previous?: JsonObject;
}

/** Who a bearer token authenticates as, and what a TokenReview says of it. */
export interface TokenUser {
  readonly username: string;
  readonly uid?: string;
  readonly groups?: readonly string[];
  readonly extra?: Readonly<Record<string, readonly string[]>>;
  /** The audiences a bound token was issued for; default: the API server's own. */
  readonly audiences?: readonly string[];
  /** When the token expires (milliseconds since the epoch); from then on it authenticates nothing. */
  readonly expiresAt?: number;
}

export function isJsonObject(value: Json | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** `object[key]` when it is an object, else an empty object (not stored). */
export function child(object: JsonObject | undefined, key: string): JsonObject {
  const value = object?.[key];
  return isJsonObject(value) ? value : {};
}

export function str(value: Json | undefined): string | undefined {
  return typeof value === 'string' ? value : undefined;
}
