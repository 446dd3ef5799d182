import yaml from 'js-yaml';
import { AmbitError } from '../errors/index.js';

/**
 * Parses one manifest file into plain objects: YAML documents separated by `---` (JSON is YAML too), each an
 * object, a `v1 List`, a typed list (`PodList`, as the API returns it) or an array. Throws AmbitError
 * MANIFEST_PARSE_FAILED, naming the file and line, when the text is not YAML (a half-written file).
 *
 * The documents are taken as the YAML parser produced them and validated by convertObject, which names the field
 * that is wrong. (@kubernetes/client-node's loadAllYaml would also convert them into client models, bending wrong
 * types instead of refusing them, and importing it costs the agent about 60 MB of memory and most of a second.)
 */
export function parseManifests(text: string, file: string): unknown[] {
  let documents: unknown[];
  try {
    documents = yaml.loadAll(text);
  } catch (err) {
    if (err instanceof yaml.YAMLException) {
      const where = err.mark?.line === undefined ? file : `${file}:${err.mark.line + 1}:${(err.mark.column ?? 0) + 1}`;
      throw new AmbitError('MANIFEST_PARSE_FAILED', `${where}: not valid YAML: ${err.reason ?? err.message}`, { cause: err });
    }
    throw err;
  }
  return documents.filter((document) => document !== null && document !== undefined).flatMap(unwrapLists);
}

function unwrapLists(document: unknown): unknown[] {
  if (Array.isArray(document)) return document.flatMap(unwrapLists);
  if (typeof document !== 'object' || document === null) return [document];
  const { kind, apiVersion, items } = document as { kind?: unknown; apiVersion?: unknown; items?: unknown };
  if (typeof kind !== 'string' || !kind.endsWith('List') || !Array.isArray(items)) return [document];
  // Items of a typed list (PodList) leave out their kind and apiVersion: they are the list's.
  const itemKind = kind === 'List' ? undefined : kind.slice(0, -'List'.length);
  return items.map((item: unknown) => {
    if (itemKind === undefined || typeof item !== 'object' || item === null) return item;
    const fields = item as Record<string, unknown>;
    return { ...fields, kind: fields.kind ?? itemKind, apiVersion: fields.apiVersion ?? apiVersion };
  });
}
