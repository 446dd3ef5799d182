/**
 * What the double checks of a body before it stores it (create, update, and the result of a patch), and what it
 * does not. `fieldValidation` (Ignore, Warn — the default — or Strict) says what happens to a field it does not
 * know: Ignore drops it, Warn drops it with a `Warning` header, Strict refuses the request with 400, as the real
 * server. Which fields the double knows:
 *   - every kind: the fields of `metadata` (ObjectMeta);
 *   - a built-in kind: its top-level fields (ResourceType.fields); nothing below them (no built-in schemas here);
 *   - a custom resource defined by a CRD: every field, from the version's structural schema, with
 *     `x-kubernetes-preserve-unknown-fields` keeping what it covers;
 *   - a kind registered without a CRD (`registerResource`): only metadata.
 * A custom resource is then validated against its schema (ajv: types, enums, patterns, lengths, required, counts),
 * with a 422 Invalid that names each field. Not checked: formats, CEL rules (x-kubernetes-validations), list-type
 * uniqueness, defaults (not applied), and the values of built-in kinds.
 */
import type { ErrorObject, ValidateFunction } from 'ajv';
import { badRequest, StatusError } from './status.js';
import { child, isJsonObject, str, type Json, type JsonObject, type ResourceType } from './types.js';

export type FieldValidation = 'Ignore' | 'Warn' | 'Strict';

/** A CRD version's schema, compiled. */
export interface CustomResourceSchema {
  readonly schema: JsonObject;
  readonly validate: ValidateFunction;
}

/** What a stored body became: unknown fields dropped (Ignore, Warn), and the warnings to send (Warn). */
export interface Admitted {
  readonly object: JsonObject;
  readonly warnings: readonly string[];
}

const OBJECT_META_FIELDS = [
  'name',
  'generateName',
  'namespace',
  'selfLink',
  'uid',
  'resourceVersion',
  'generation',
  'creationTimestamp',
  'deletionTimestamp',
  'deletionGracePeriodSeconds',
  'labels',
  'annotations',
  'ownerReferences',
  'finalizers',
  'managedFields',
];
const PRESERVE = 'x-kubernetes-preserve-unknown-fields';

export function fieldValidationOf(query: URLSearchParams): FieldValidation {
  const value = query.get('fieldValidation') ?? '';
  if (value === '') return 'Warn';
  if (value === 'Ignore' || value === 'Warn' || value === 'Strict') return value;
  throw badRequest(`fieldValidation must be Ignore, Warn or Strict, not "${value}"`);
}

/** Checks `body` of `type` as the class comment says; throws the Status a refusal gets. */
export function admit(type: ResourceType, body: JsonObject, directive: FieldValidation, schema: CustomResourceSchema | undefined): Admitted {
  const unknown: string[] = [];
  const object = knownFields(type, body, schema, unknown);
  if (unknown.length > 0 && directive === 'Strict') {
    const fields = unknown.map((field) => `unknown field "${field}"`).join(', ');
    throw badRequest(`${type.kind} in version "${type.version}" cannot be handled as a ${type.kind}: strict decoding error: ${fields}`);
  }
  if (schema !== undefined && !schema.validate(object)) throw invalid(type, object, schema.validate.errors ?? []);
  return { object, warnings: directive === 'Warn' ? unknown.map((field) => `unknown field "${field}"`) : [] };
}

/** `body` without the fields the double knows to be unknown; their paths (`spec.rules[0].foo`) go to `unknown`. */
function knownFields(type: ResourceType, body: JsonObject, schema: CustomResourceSchema | undefined, unknown: string[]): JsonObject {
  const root = schema?.schema;
  const properties = root === undefined ? undefined : child(root, 'properties');
  const result: JsonObject = {};
  for (const [key, value] of Object.entries(body)) {
    if (key === 'apiVersion' || key === 'kind') {
      result[key] = value;
    } else if (key === 'metadata') {
      result[key] = isJsonObject(value) ? keepOnly(value, OBJECT_META_FIELDS, 'metadata', unknown) : value;
    } else if (root !== undefined) {
      const sub = properties?.[key];
      if (isJsonObject(sub)) result[key] = pruned(value, sub, key, unknown);
      else if (root[PRESERVE] === true) result[key] = value;
      else unknown.push(key);
    } else if (type.fields === undefined || type.fields.includes(key)) {
      result[key] = value;
    } else {
      unknown.push(key);
    }
  }
  return result;
}

function keepOnly(object: JsonObject, known: readonly string[], path: string, unknown: string[]): JsonObject {
  const result: JsonObject = {};
  for (const [key, value] of Object.entries(object)) {
    if (known.includes(key)) result[key] = value;
    else unknown.push(`${path}.${key}`);
  }
  return result;
}

/** Structural pruning: an object keeps the fields its schema declares, or all of them under preserve-unknown-fields. */
function pruned(value: Json, schema: JsonObject, path: string, unknown: string[]): Json {
  if (Array.isArray(value)) {
    const items = schema.items;
    return isJsonObject(items) ? value.map((item, i) => pruned(item, items, `${path}[${i}]`, unknown)) : value;
  }
  if (!isJsonObject(value)) return value;
  const properties = isJsonObject(schema.properties) ? schema.properties : {};
  const additional = isJsonObject(schema.additionalProperties) ? schema.additionalProperties : undefined;
  const preserve = schema[PRESERVE] === true;
  const result: JsonObject = {};
  for (const [key, item] of Object.entries(value)) {
    const sub = properties[key] ?? additional;
    if (isJsonObject(sub)) result[key] = pruned(item, sub, `${path}.${key}`, unknown);
    else if (preserve) result[key] = item;
    else unknown.push(`${path}.${key}`);
  }
  return result;
}

interface FieldError {
  readonly reason: string;
  readonly field: string;
  readonly message: string;
}

/** A 422 Invalid as the real server words a custom resource's schema errors, one cause per field. */
function invalid(type: ResourceType, object: JsonObject, errors: readonly ErrorObject[]): StatusError {
  const name = str(child(object, 'metadata').name) ?? '';
  const causes = errors.map((error) => fieldError(object, error));
  const each = causes.map((c) => `${c.field}: ${c.message}`);
  const list = each.length === 1 ? (each[0] ?? '') : `[${each.join(', ')}]`;
  return new StatusError(422, 'Invalid', `${type.kind}.${type.group} "${name}" is invalid: ${list}`, {
    name,
    group: type.group,
    kind: type.kind,
    causes: causes.map((c) => ({ reason: c.reason, message: c.message, field: c.field })),
  });
}

function fieldError(object: JsonObject, error: ErrorObject): FieldError {
  const { field, value } = locate(object, error.instancePath);
  const params = error.params as Record<string, unknown>;
  const shown = showValue(value);
  switch (error.keyword) {
    case 'required':
      return { reason: 'FieldValueRequired', field: join(field, String(params.missingProperty)), message: 'Required value' };
    case 'enum': {
      const allowed = Array.isArray(params.allowedValues) ? params.allowedValues.map((v) => JSON.stringify(v)).join(', ') : '';
      return { reason: 'FieldValueNotSupported', field, message: `Unsupported value: ${shown}: supported values: ${allowed}` };
    }
    case 'type':
      return { reason: 'FieldValueTypeInvalid', field, message: `Invalid value: "${typeName(value)}": ${field} in body must be of type ${String(params.type)}: "${typeName(value)}"` };
    case 'pattern':
      return { reason: 'FieldValueInvalid', field, message: `Invalid value: ${shown}: ${field} in body should match '${String(params.pattern)}'` };
    case 'minLength':
      return { reason: 'FieldValueInvalid', field, message: `Invalid value: ${shown}: ${field} in body should be at least ${String(params.limit)} chars long` };
    case 'maxLength':
      return { reason: 'FieldValueTooLong', field, message: `Too long: may not be more than ${String(params.limit)} bytes` };
    case 'minItems':
      return { reason: 'FieldValueInvalid', field, message: `Invalid value: ${shown}: ${field} in body should have at least ${String(params.limit)} items` };
    case 'maxItems':
      return { reason: 'FieldValueTooMany', field, message: `Too many: ${Array.isArray(value) ? value.length : 0}: must have at most ${String(params.limit)} items` };
    case 'minimum':
    case 'maximum': {
      const relation = error.keyword === 'minimum' ? 'greater' : 'less';
      return { reason: 'FieldValueInvalid', field, message: `Invalid value: ${shown}: ${field} in body should be ${relation} than or equal to ${String(params.limit)}` };
    }
    default:
      return { reason: 'FieldValueInvalid', field, message: `Invalid value: ${shown}: ${error.message ?? error.keyword}` };
  }
}

/** A JSON pointer (`/spec/rules/0/to`) as the field path the real server prints (`spec.rules[0].to`), and its value. */
function locate(object: JsonObject, pointer: string): { field: string; value: Json | undefined } {
  let field = '';
  let value: Json | undefined = object;
  for (const raw of pointer.split('/').slice(1)) {
    const key = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    if (Array.isArray(value)) {
      field += `[${key}]`;
      value = value[Number(key)];
    } else {
      field = join(field, key);
      value = isJsonObject(value) ? value[key] : undefined;
    }
  }
  return { field, value };
}

function join(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

function showValue(value: Json | undefined): string {
  if (isJsonObject(value)) return '"object"';
  if (Array.isArray(value)) return String(value.length);
  return JSON.stringify(value ?? null);
}

function typeName(value: Json | undefined): string {
  if (value === null || value === undefined) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
  return typeof value;
}
