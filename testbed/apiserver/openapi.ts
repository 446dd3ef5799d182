/**
 * The OpenAPI v3 documents kubectl reads before `apply`, `create` and `replace`: `/openapi/v3` lists one document
 * per group-version, and each document holds, per kind, the PATCH operation of its objects with the query
 * parameter `fieldValidation`. That parameter is how kubectl 1.32 learns that the server validates fields itself:
 * it then sends `fieldValidation=Strict` and skips its own (client-side) validation, for which it would need the
 * whole OpenAPI v2 schema. The documents hold no schemas of the kinds: kubectl then computes a strategic merge patch
 * from its compiled-in types (built-in kinds) or a merge patch (custom resources), as it does for a server whose
 * documents lack them. `/openapi/v2` is not served.
 */
import { createHash } from 'node:crypto';
import { SERVER_VERSION } from './discovery.js';
import type { ResourceRegistry } from './resources.js';
import type { JsonObject, ResourceType } from './types.js';

const ROOT = '/openapi/v3';
const PATCH_SCHEMA = 'io.k8s.apimachinery.pkg.apis.meta.v1.Patch';

export interface OpenApiAnswer {
  readonly body: JsonObject;
  /** Whether the request named the document's current hash: the answer never changes, and may be cached for good. */
  readonly immutable: boolean;
}

/** `/openapi/v3` or `/openapi/v3/api/v1`, `/openapi/v3/apis/GROUP/VERSION`; undefined for any other path. */
export function openApiDocument(registry: ResourceRegistry, path: string, query: URLSearchParams): OpenApiAnswer | undefined {
  const documents = groupVersionDocuments(registry);
  if (path === ROOT) {
    const paths: JsonObject = {};
    for (const [key, document] of documents) paths[key] = { serverRelativeURL: `${ROOT}/${key}?hash=${hashOf(document)}` };
    return { body: { paths }, immutable: false };
  }
  if (!path.startsWith(`${ROOT}/`)) return undefined;
  const document = documents.get(path.slice(ROOT.length + 1));
  if (document === undefined) return undefined;
  return { body: document, immutable: query.get('hash') === hashOf(document) };
}

/** One document per served group-version, keyed as `/openapi/v3` lists them: `api/v1`, `apis/apps/v1`. */
function groupVersionDocuments(registry: ResourceRegistry): Map<string, JsonObject> {
  const byGroupVersion = new Map<string, ResourceType[]>();
  for (const type of registry.all()) {
    const key = type.group === '' ? `api/${type.version}` : `apis/${type.group}/${type.version}`;
    byGroupVersion.set(key, [...(byGroupVersion.get(key) ?? []), type]);
  }
  const documents = new Map<string, JsonObject>();
  for (const [key, types] of byGroupVersion) {
    const paths: JsonObject = {};
    for (const type of types) paths[objectPath(key, type)] = { patch: patchOperation(type) };
    documents.set(key, {
      openapi: '3.0.0',
      info: { title: 'Kubernetes', version: String(SERVER_VERSION.gitVersion) },
      paths,
      components: { schemas: { [PATCH_SCHEMA]: { type: 'object', description: 'the body of a PATCH request, in one of the media types the operation lists' } } },
    });
  }
  return documents;
}

function objectPath(groupVersionKey: string, type: ResourceType): string {
  return `/${groupVersionKey}${type.namespaced ? '/namespaces/{namespace}' : ''}/${type.resource}/{name}`;
}

/** The media types the double's PATCH takes: a strategic merge patch for built-in kinds only, as the real server. */
function patchOperation(type: ResourceType): JsonObject {
  const mediaTypes = ['application/json-patch+json', 'application/merge-patch+json', ...(type.builtIn === true ? ['application/strategic-merge-patch+json'] : [])];
  const content: JsonObject = {};
  for (const mediaType of mediaTypes) content[mediaType] = { schema: { $ref: `#/components/schemas/${PATCH_SCHEMA}` } };
  return {
    description: `partially update the specified ${type.kind}`,
    parameters: [
      {
        name: 'fieldValidation',
        in: 'query',
        description: 'Ignore, Warn (the default) or Strict: what the server does with a field it does not know. The double knows the fields of metadata, the top-level fields of a built-in kind, and every field of a custom resource from its CRD',
        schema: { type: 'string', uniqueItems: true },
      },
    ],
    requestBody: { content, required: true },
    responses: { '200': { description: 'OK' } },
    'x-kubernetes-action': 'patch',
    'x-kubernetes-group-version-kind': { group: type.group, version: type.version, kind: type.kind },
  };
}

function hashOf(document: JsonObject): string {
  return createHash('sha512').update(JSON.stringify(document)).digest('hex').toUpperCase();
}
