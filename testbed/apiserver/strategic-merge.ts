/**
 * Strategic merge patch (`application/strategic-merge-patch+json`), applied as the real server applies it to a
 * built-in kind: maps merge key by key and `null` removes a key, as in a merge patch, but a list whose Go field is
 * tagged `patchStrategy:"merge"` merges item by item on its merge key (containers by name, ports by containerPort)
 * instead of being replaced. The directives kubectl's three-way patch sends are honoured: `$patch: delete|replace`,
 * `$retainKeys`, `$setElementOrder/FIELD` and `$deleteFromPrimitiveList/FIELD`.
 *
 * The double has no Go structs to read the tags from, so the merged lists of the kinds it serves are written down
 * below (PATCH_FIELDS). A list not named there is replaced whole, which is what the real server does with an
 * untagged list.
 */
import { StatusError } from './status.js';
import { isJsonObject, type Json, type JsonObject } from './types.js';

/** What the `patchStrategy`/`patchMergeKey` tags of one field say, and the fields of its items or value. */
interface PatchField {
  /** A list merged item by item: on `key` for a list of objects, by value for a list of scalars (no key). */
  readonly merge?: { readonly key?: string };
  readonly fields?: PatchFields;
}
type PatchFields = Readonly<Record<string, PatchField>>;

const OBJECT_META: PatchFields = { finalizers: { merge: {} }, ownerReferences: { merge: { key: 'uid' } } };
const CONDITIONS: PatchFields = { conditions: { merge: { key: 'type' } } };
const CONTAINER: PatchFields = {
  ports: { merge: { key: 'containerPort' } },
  env: { merge: { key: 'name' } },
  volumeMounts: { merge: { key: 'mountPath' } },
  volumeDevices: { merge: { key: 'devicePath' } },
};
const POD_SPEC: PatchFields = {
  volumes: { merge: { key: 'name' } },
  initContainers: { merge: { key: 'name' }, fields: CONTAINER },
  containers: { merge: { key: 'name' }, fields: CONTAINER },
  ephemeralContainers: { merge: { key: 'name' }, fields: CONTAINER },
  imagePullSecrets: { merge: { key: 'name' } },
  hostAliases: { merge: { key: 'ip' } },
  topologySpreadConstraints: { merge: { key: 'topologyKey' } },
  resourceClaims: { merge: { key: 'name' } },
  schedulingGates: { merge: { key: 'name' } },
};
const WORKLOAD: PatchFields = {
  spec: { fields: { template: { fields: { metadata: { fields: OBJECT_META }, spec: { fields: POD_SPEC } } } } },
  status: { fields: CONDITIONS },
};

/** The merged lists of each built-in kind the double serves, from the Go types of Kubernetes 1.32; `metadata` is every kind's. */
const PATCH_FIELDS: Readonly<Record<string, PatchFields>> = {
  Namespace: { status: { fields: CONDITIONS } },
  Node: { spec: { fields: { podCIDRs: { merge: {} } } }, status: { fields: { ...CONDITIONS, addresses: { merge: { key: 'type' } } } } },
  Pod: { spec: { fields: POD_SPEC }, status: { fields: { ...CONDITIONS, podIPs: { merge: { key: 'ip' } } } } },
  Service: { spec: { fields: { ports: { merge: { key: 'port' } } } }, status: { fields: CONDITIONS } },
  ServiceAccount: { secrets: { merge: { key: 'name' } } },
  DaemonSet: WORKLOAD,
  Deployment: WORKLOAD,
  PodDisruptionBudget: { status: { fields: CONDITIONS } },
};

const DIRECTIVE = '$patch';
const RETAIN_KEYS = '$retainKeys';
const SET_ELEMENT_ORDER = '$setElementOrder/';
const DELETE_FROM_PRIMITIVE_LIST = '$deleteFromPrimitiveList/';

/** Applies a strategic merge patch to `current`, an object of the built-in `kind`. */
export function strategicMergePatch(current: JsonObject, patch: Json, kind: string): JsonObject {
  if (!isJsonObject(patch)) throw invalidPatch('a strategic merge patch is a JSON object');
  return mergeMap(current, patch, { metadata: { fields: OBJECT_META }, ...PATCH_FIELDS[kind] });
}

function mergeMap(original: JsonObject, patch: JsonObject, fields: PatchFields | undefined): JsonObject {
  const directive = patch[DIRECTIVE];
  if (directive !== undefined) {
    if (directive === 'delete') return {};
    if (directive !== 'replace') throw invalidPatch(`unknown patch type: ${JSON.stringify(directive)} in map: ${JSON.stringify(patch)}`);
    const { [DIRECTIVE]: _directive, ...replacement } = patch;
    return replacement;
  }
  const result: JsonObject = { ...original };
  const rest: JsonObject = { ...patch };
  if (RETAIN_KEYS in rest) {
    const retained = rest[RETAIN_KEYS];
    delete rest[RETAIN_KEYS];
    if (!Array.isArray(retained)) throw invalidPatch('$retainKeys is a list of field names');
    for (const [key, value] of Object.entries(rest)) {
      if (value !== null && !key.startsWith('$') && !retained.includes(key)) throw invalidPatch(`the field ${key} is in the patch but not in its $retainKeys`);
    }
    for (const key of Object.keys(result)) if (!retained.includes(key)) delete result[key];
  }
  for (const key of Object.keys(rest)) {
    if (!key.startsWith(SET_ELEMENT_ORDER)) continue;
    const order = rest[key];
    delete rest[key];
    const field = key.slice(SET_ELEMENT_ORDER.length);
    const meta = fields?.[field];
    if (meta?.merge === undefined) continue;
    if (!Array.isArray(order)) throw invalidPatch(`${key} is a list`);
    const live = asList(result[field], field);
    const merged = field in rest ? mergeList(live, asList(rest[field], field), meta) : live;
    delete rest[field];
    result[field] = ordered(merged, order, live, meta.merge.key);
  }
  for (const [key, value] of Object.entries(rest)) {
    if (key.startsWith(DELETE_FROM_PRIMITIVE_LIST)) {
      const field = key.slice(DELETE_FROM_PRIMITIVE_LIST.length);
      if (!Array.isArray(value)) throw invalidPatch(`${key} is a list`);
      if (Array.isArray(result[field])) result[field] = result[field].filter((item) => !value.some((gone) => sameScalar(gone, item)));
      continue;
    }
    if (value === null) {
      delete result[key];
      continue;
    }
    const meta = fields?.[key];
    const live = result[key];
    if (isJsonObject(value)) {
      result[key] = mergeMap(isJsonObject(live) ? live : {}, value, meta?.fields);
    } else if (Array.isArray(value) && meta?.merge !== undefined) {
      result[key] = mergeList(Array.isArray(live) ? live : [], value, meta);
    } else {
      result[key] = value;
    }
  }
  return result;
}

/** A merged list: deletions and a `$patch: replace` first, then each patch item merged into the live one with its key. */
function mergeList(live: readonly Json[], patch: readonly Json[], meta: PatchField): Json[] {
  const key = meta.merge?.key;
  if (key === undefined) {
    const merged = [...live];
    for (const item of patch) if (!merged.some((other) => sameScalar(other, item))) merged.push(item);
    return ordered(merged, patch, live, undefined);
  }
  let base = [...live];
  const items: JsonObject[] = [];
  let replace = false;
  for (const item of patch) {
    if (!isJsonObject(item)) throw invalidPatch(`an item of a list merged on ${key} is an object: ${JSON.stringify(item)}`);
    const directive = item[DIRECTIVE];
    if (directive === undefined) {
      if (item[key] === undefined) throw invalidPatch(`map: ${JSON.stringify(item)} does not contain declared merge key: ${key}`);
      items.push(item);
    } else if (directive === 'delete') {
      if (item[key] === undefined) throw invalidPatch(`map: ${JSON.stringify(item)} does not contain declared merge key: ${key}`);
      base = base.filter((other) => !(isJsonObject(other) && sameScalar(other[key], item[key])));
    } else if (directive === 'replace') {
      replace = true;
    } else {
      throw invalidPatch(`unknown patch type: ${JSON.stringify(directive)} in list item: ${JSON.stringify(item)}`);
    }
  }
  if (replace) return items;
  const merged = [...base];
  for (const item of items) {
    const at = merged.findIndex((other) => isJsonObject(other) && sameScalar(other[key], item[key]));
    const existing = merged[at];
    if (at >= 0 && isJsonObject(existing)) merged[at] = mergeMap(existing, item, meta.fields);
    else merged.push(mergeMap({}, item, meta.fields));
  }
  return ordered(merged, items, base, key);
}

/**
 * The real server's order for a merged list: the items the patch (or its `$setElementOrder`) names in its order,
 * the server-only items in their live order, interleaved where the live list puts a server-only item before a
 * patch item. An item the order names but nothing holds is left out.
 */
function ordered(merged: readonly Json[], order: readonly Json[], live: readonly Json[], key: string | undefined): Json[] {
  const id = (item: Json | undefined): Json | undefined => (key === undefined ? item : isJsonObject(item) ? item[key] : undefined);
  const indexIn = (list: readonly Json[], item: Json): number => list.findIndex((other) => sameScalar(id(other), id(item)));
  const named = merged.filter((item) => indexIn(order, item) >= 0).sort((a, b) => indexIn(order, a) - indexIn(order, b));
  const serverOnly = merged.filter((item) => indexIn(order, item) < 0).sort((a, b) => indexIn(live, a) - indexIn(live, b));
  const result: Json[] = [];
  let i = 0;
  let j = 0;
  while (i < serverOnly.length || j < named.length) {
    const left = serverOnly[i];
    const right = named[j];
    if (left === undefined) {
      result.push(right ?? null);
      j++;
    } else if (right === undefined) {
      result.push(left);
      i++;
    } else {
      const li = indexIn(live, left);
      const ri = indexIn(live, right);
      if (li >= 0 && ri >= 0 && li < ri) {
        result.push(left);
        i++;
      } else {
        result.push(right);
        j++;
      }
    }
  }
  return result;
}

function asList(value: Json | undefined, field: string): Json[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw invalidPatch(`${field} is not a list`);
  return value;
}

/** Merge keys and primitive-list items compare as Go compares interface values: same type, same value. */
function sameScalar(a: Json | undefined, b: Json | undefined): boolean {
  return a !== undefined && a === b;
}

function invalidPatch(message: string): StatusError {
  return new StatusError(422, 'Invalid', `the strategic merge patch cannot be applied: ${message}`);
}
