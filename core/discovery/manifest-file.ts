import { AmbitError } from '../errors.js';

type LoadAllYaml = (text: string, options: { listener: (event: 'open' | 'close', state: { result: unknown }) => void }) => unknown[];

let yamlLoader: Promise<LoadAllYaml> | undefined;

/** @kubernetes/client-node costs most of a second to load, so only processes that read files pay for it. */
function loadYamlParser(): Promise<LoadAllYaml> {
  yamlLoader ??= import('@kubernetes/client-node').then((k8s) => k8s.loadAllYaml as LoadAllYaml);
  return yamlLoader;
}

/**
 * Parses one manifest file into plain objects: YAML documents separated by `---` (JSON is YAML too), each an
 * object, a `v1 List`, a typed list (`PodList`, as the API returns it) or an array. Throws AmbitError
 * MANIFEST_PARSE_FAILED, naming the file and line, when the text is not YAML (a half-written file).
 *
 * loadAllYaml also turns each document into a client-library model, and that step bends wrong types instead of
 * refusing them (`labels: web` becomes `{0: 'w', 1: 'e', 2: 'b'}`; an empty document or `ports: 5` throws for the
 * whole file). The documents are therefore taken as parsed, through the YAML parser's node listener (the outermost
 * node of each document closes last), and validated by convertObject, which names the field that is wrong.
 */
export async function parseManifests(text: string, file: string): Promise<unknown[]> {
  const loadAll = await loadYamlParser();
  const documents: unknown[] = [];
  let depth = 0;
  const listener = (event: 'open' | 'close', state: { result: unknown }) => {
    if (event === 'open') depth += 1;
    else if (--depth === 0) documents.push(state.result);
  };
  try {
    loadAll(text, { listener });
  } catch (err) {
    if (err instanceof Error && err.name === 'YAMLException') {
      const { mark, reason } = err as Error & { mark?: { line?: number; column?: number }; reason?: string };
      const where = mark?.line === undefined ? file : `${file}:${mark.line + 1}:${(mark.column ?? 0) + 1}`;
      throw new AmbitError('MANIFEST_PARSE_FAILED', `${where}: not valid YAML: ${reason ?? err.message}`, { cause: err });
    }
    // The model conversion failed after every document was parsed; the parsed documents are what is wanted.
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
