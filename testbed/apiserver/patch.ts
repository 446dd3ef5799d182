import { badRequest, StatusError } from './status.js';
import { isJsonObject, type Json, type JsonObject } from './types.js';

export const MERGE_PATCH = 'application/merge-patch+json';
/** kubectl sends this for built-in kinds; for the labels and annotations it changes, a merge patch does the same. */
export const STRATEGIC_MERGE_PATCH = 'application/strategic-merge-patch+json';
export const JSON_PATCH = 'application/json-patch+json';

/** RFC 7386: objects merge key by key, `null` removes a key, anything else (arrays too) replaces. */
export function mergePatch(target: Json, patch: Json): Json {
  if (!isJsonObject(patch)) return patch;
  const result: JsonObject = isJsonObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key] ?? null, value);
  }
  return result;
}

/** RFC 6902 add, remove, replace and test; move and copy are refused with 415, the double has no use for them. */
export function jsonPatch(target: JsonObject, operations: Json): JsonObject {
  if (!Array.isArray(operations)) throw badRequest('a JSON patch is an array of operations');
  let doc: Json = structuredClone(target);
  for (const op of operations) {
    if (!isJsonObject(op) || typeof op.op !== 'string' || typeof op.path !== 'string') throw badRequest('a JSON patch operation needs op and path');
    const path = op.path.split('/').slice(1).map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'));
    if (op.op === 'test') {
      if (JSON.stringify(lookup(doc, path)) !== JSON.stringify(op.value ?? null)) {
        throw new StatusError(422, 'Invalid', `the JSON patch test at ${op.path} failed`);
      }
      continue;
    }
    if (!['add', 'remove', 'replace'].includes(op.op)) throw new StatusError(415, 'UnsupportedMediaType', `JSON patch operation "${op.op}" is not served by the double`);
    doc = apply(doc, path, op.op, op.value ?? null, op.path);
  }
  if (!isJsonObject(doc)) throw badRequest('a JSON patch must leave an object');
  return doc;
}

function lookup(doc: Json, path: readonly string[]): Json | undefined {
  let at: Json | undefined = doc;
  for (const key of path) {
    if (Array.isArray(at)) at = at[Number(key)];
    else if (isJsonObject(at)) at = at[key];
    else return undefined;
  }
  return at;
}

function apply(doc: Json, path: readonly string[], op: string, value: Json, where: string): Json {
  const [key, ...rest] = path;
  if (key === undefined) return op === 'remove' ? null : value;
  if (Array.isArray(doc)) {
    const copy = [...doc];
    const index = key === '-' ? copy.length : Number(key);
    if (!Number.isInteger(index) || index < 0 || index > copy.length) throw new StatusError(422, 'Invalid', `no array index ${key} at ${where}`);
    if (rest.length > 0) copy[index] = apply(copy[index] ?? null, rest, op, value, where);
    else if (op === 'add') copy.splice(index, 0, value);
    else if (op === 'remove') copy.splice(index, 1);
    else copy[index] = value;
    return copy;
  }
  if (!isJsonObject(doc)) throw new StatusError(422, 'Invalid', `nothing to patch at ${where}`);
  const copy: JsonObject = { ...doc };
  if (rest.length > 0) {
    if (!(key in copy)) throw new StatusError(422, 'Invalid', `no value at ${where}`);
    copy[key] = apply(copy[key] ?? null, rest, op, value, where);
  } else if (op === 'remove') {
    if (!(key in copy)) throw new StatusError(422, 'Invalid', `no value to remove at ${where}`);
    delete copy[key];
  } else {
    if (op === 'replace' && !(key in copy)) throw new StatusError(422, 'Invalid', `no value to replace at ${where}`);
    copy[key] = value;
  }
  return copy;
}
