import { selectorMatches, type Labels } from '../../core/discovery/index.js';
import { badRequest } from './status.js';
import { child, str, type JsonObject } from './types.js';

type SetRequirement =
  | { readonly op: 'in' | 'notin'; readonly key: string; readonly values: readonly string[] }
  | { readonly op: 'exists' | '!exists'; readonly key: string }
  | { readonly op: '!='; readonly key: string; readonly value: string };

/**
 * A parsed `labelSelector` query parameter (the string form of kubectl's `-l`). Equality terms are checked by core's
 * one matcher (`selectorMatches`, which Services use); the set-based and negative terms only exist in this form.
 */
export class LabelSelector {
  readonly #equal: Labels;
  readonly #others: readonly SetRequirement[];

  private constructor(equal: Labels, others: readonly SetRequirement[]) {
    this.#equal = equal;
    this.#others = others;
  }

  /** Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`; a malformed term is a 400 naming it. */
  static parse(text: string | undefined): LabelSelector {
    const equal: Record<string, string> = {};
    const others: SetRequirement[] = [];
    for (const term of splitTerms(text ?? '')) {
      const set = /^([^\s!=(),]+)\s+(in|notin)\s+\(([^()]*)\)$/.exec(term);
      const compare = /^([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)$/.exec(term);
      const exists = /^(!?)\s*([^\s!=(),]+)$/.exec(term);
      if (set !== null) {
        const values = (set[3] ?? '').split(',').map((v) => v.trim()).filter((v) => v !== '');
        others.push({ op: set[2] === 'in' ? 'in' : 'notin', key: checkKey(set[1] ?? ''), values: values.map(checkValue) });
      } else if (compare !== null) {
        const key = checkKey(compare[1] ?? '');
        const value = checkValue(compare[3] ?? '');
        if (compare[2] === '!=') others.push({ op: '!=', key, value });
        else if (key in equal && equal[key] !== value) others.push({ op: 'in', key, values: [] });
        else equal[key] = value;
      } else if (exists !== null) {
        others.push({ op: exists[1] === '!' ? '!exists' : 'exists', key: checkKey(exists[2] ?? '') });
      } else {
        throw badRequest(`unable to parse requirement: "${term}" in label selector "${text ?? ''}"`);
      }
    }
    return new LabelSelector(equal, others);
  }

  matches(labels: Labels): boolean {
    if (!selectorMatches(this.#equal, labels)) return false;
    return this.#others.every((req) => {
      const has = Object.hasOwn(labels, req.key);
      const value = labels[req.key];
      switch (req.op) {
        case 'in':
          return has && req.values.includes(value ?? '');
        case 'notin':
          return !has || !req.values.includes(value ?? '');
        case 'exists':
          return has;
        case '!exists':
          return !has;
        case '!=':
          return value !== req.value;
      }
    });
  }
}

function fieldRequirements(text: string | undefined): FieldRequirement[] {
  return splitTerms(text ?? '').map((term) => {
    const m = /^([^\s!=]+)\s*(==|=|!=)\s*([^\s!=]*)$/.exec(term);
    if (m === null) throw badRequest(`invalid field selector term "${term}": want field=value, field==value or field!=value`);
    return { field: m[1] ?? '', negate: m[2] === '!=', value: m[3] ?? '' };
  });
}

/** Commas split terms except inside `( )` of a set term. */
function splitTerms(text: string): string[] {
  const terms: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = text[i];
    if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (i === text.length || (c === ',' && depth === 0)) {
      const term = text.slice(start, i).trim();
      if (term !== '') terms.push(term);
      start = i + 1;
    }
  }
  if (depth !== 0) throw badRequest(`unbalanced parentheses in label selector "${text}"`);
  return terms;
}

const LABEL_KEY = /^([a-z0-9]([-a-z0-9.]*[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

function checkKey(key: string): string {
  if (!LABEL_KEY.test(key)) throw badRequest(`invalid label key "${key}": a qualified name is [prefix/]name of alphanumerics, '-', '_' and '.'`);
  return key;
}

function checkValue(value: string): string {
  if (!LABEL_VALUE.test(value)) throw badRequest(`invalid label value "${value}": at most 63 alphanumerics, '-', '_' and '.'`);
  return value;
}

/** The fields a `fieldSelector` may name, per kind; metadata's two for every kind, as the real server. */
const FIELDS_BY_KIND: Readonly<Record<string, readonly string[]>> = { Pod: ['spec.nodeName'] };

interface FieldRequirement {
  readonly field: string;
  readonly negate: boolean;
  readonly value: string;
}

/** A parsed `fieldSelector`: `metadata.name`, `metadata.namespace` and, for pods, `spec.nodeName`; `=`, `==`, `!=`. */
export class FieldSelector {
  readonly #requirements: readonly FieldRequirement[];

  private constructor(requirements: readonly FieldRequirement[]) {
    this.#requirements = requirements;
  }

  static parse(text: string | undefined, kind: string): FieldSelector {
    const allowed = ['metadata.name', 'metadata.namespace', ...(FIELDS_BY_KIND[kind] ?? [])];
    const requirements = fieldRequirements(text);
    for (const { field } of requirements) {
      if (!allowed.includes(field)) throw badRequest(`field label not supported: ${field} (a ${kind} field selector takes ${allowed.join(', ')})`);
    }
    return new FieldSelector(requirements);
  }

  /**
   * The one name a selector requires (`metadata.name=NAME` among its terms), undefined for none or a malformed
   * selector: what the real server authorizes a list or watch by, so that `resourceNames` can allow it.
   */
  static requiredName(text: string | undefined): string | undefined {
    try {
      return fieldRequirements(text).find((r) => r.field === 'metadata.name' && !r.negate)?.value;
    } catch {
      return undefined;
    }
  }

  matches(object: JsonObject): boolean {
    return this.#requirements.every((req) => {
      const [top, field] = req.field.split('.') as [string, string];
      const actual = str(child(object, top)[field]) ?? '';
      return (actual === req.value) !== req.negate;
    });
  }
}

/** An object's labels as core's `Labels` (string values only, as the API validates them). */
export function labelsOf(object: JsonObject): Labels {
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(child(child(object, 'metadata'), 'labels'))) if (typeof v === 'string') labels[k] = v;
  return labels;
}
