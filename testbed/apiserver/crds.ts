/**
 * CustomResourceDefinitions made real: a stored CRD registers its kind for serving (discovery, OpenAPI, list, watch,
 * create...), with its names, scope and short names, and the schema its objects are validated against; a deleted
 * CRD takes its kind and its objects with it. As the apiextensions server, it then writes the CRD's status
 * (Established, NamesAccepted, acceptedNames, storedVersions), which `kubectl wait --for condition=Established`
 * reads. A deleted CRD's objects are removed at once (each a DELETED event), then its open watches end. What the
 * double does not do: conversion between versions (a CRD serves exactly one version here), the status and scale
 * subresources, the Terminating phase of a CRD with objects, names conflicts (NamesAccepted is always True).
 */
import type { Ajv } from 'ajv';
import type { CustomResourceSchema } from './field-validation.js';
import { CRD_GROUP, type ResourceRegistry } from './resources.js';
import { StatusError } from './status.js';
import { canonical, keyOf, type ObjectStore } from './store.js';
import { child, isJsonObject, str, type Json, type JsonObject, type ResourceType, type StoreEvent } from './types.js';

/** One served version of a CRD: the kind to register and its schema. */
interface ServedVersion {
  readonly type: ResourceType;
  readonly schema: JsonObject;
}

export class CustomResourceDefinitions {
  readonly #store: ObjectStore;
  readonly #registry: ResourceRegistry;
  readonly #ajv: Ajv;
  /** CRD name → the kinds it registered. */
  readonly #served = new Map<string, ResourceType[]>();
  /** typeKey → the compiled schema of that kind. */
  readonly #schemas = new Map<string, CustomResourceSchema>();
  readonly #unsubscribe: () => void;
  readonly #crdType: ResourceType;
  readonly #onRemoved: (type: ResourceType) => void;

  /** `onRemoved` is called when a deleted CRD's kind is no longer served: the server ends its watches. */
  constructor(store: ObjectStore, registry: ResourceRegistry, ajv: Ajv, onRemoved: (type: ResourceType) => void) {
    this.#store = store;
    this.#onRemoved = onRemoved;
    this.#registry = registry;
    const crdType = registry.get(CRD_GROUP, 'v1', 'customresourcedefinitions');
    if (crdType === undefined) throw new Error('the registry serves no CustomResourceDefinitions');
    this.#crdType = crdType;
    this.#ajv = ajv;
    this.#unsubscribe = store.subscribe((event) => this.#sync(event));
  }

  stop(): void {
    this.#unsubscribe();
  }

  schemaOf(type: ResourceType): CustomResourceSchema | undefined {
    return this.#schemas.get(keyOf(type));
  }

  /** Refuses a CRD the double cannot serve (any other kind passes), with the real server's wording where it has one. */
  check(kind: ResourceType, crd: JsonObject): void {
    if (keyOf(kind) !== keyOf(this.#crdType)) return;
    const { type, schema } = servedVersion(crd);
    try {
      this.#ajv.compile(schema);
    } catch (err) {
      throw invalidCrd(crd, `spec.versions[0].schema.openAPIV3Schema: Invalid value: "object": ${err instanceof Error ? err.message : String(err)}`);
    }
    const existing = this.#registry.get(type.group, type.version, type.resource);
    if (existing !== undefined && existing.builtIn === true) throw invalidCrd(crd, `spec.names.plural: Invalid value: "${type.resource}": is a built-in kind of ${type.group}/${type.version}`);
  }

  #sync(event: StoreEvent): void {
    if (event.key !== keyOf(this.#crdType)) return;
    const name = str(child(event.object, 'metadata').name) ?? '';
    for (const type of this.#served.get(name) ?? []) this.#unregister(type, event.type === 'DELETED');
    this.#served.delete(name);
    if (event.type === 'DELETED') return;
    let served: ServedVersion;
    try {
      served = servedVersion(event.object);
    } catch {
      return; // a CRD written past `check` (by a test, directly) that the double cannot serve: it serves nothing
    }
    const { type, schema } = served;
    this.#registry.register(type);
    this.#schemas.set(keyOf(type), { schema, validate: this.#ajv.compile(schema) });
    this.#served.set(name, [type]);
    this.#establish(event.object, type);
  }

  /** Forgets a kind; when its CRD is gone, its objects go too (each a DELETED event for its watchers). */
  #unregister(type: ResourceType, removeObjects: boolean): void {
    this.#registry.unregister(type);
    this.#schemas.delete(keyOf(type));
    if (!removeObjects) return;
    for (const object of this.#store.list(type)) {
      const meta = child(object, 'metadata');
      this.#store.delete(type, str(meta.namespace) ?? '', str(meta.name) ?? '');
    }
    this.#onRemoved(type);
  }

  #establish(crd: JsonObject, type: ResourceType): void {
    const names = child(child(crd, 'spec'), 'names');
    const status: JsonObject = {
      conditions: [
        { type: 'NamesAccepted', status: 'True', reason: 'NoConflicts', message: 'no conflicts found' },
        { type: 'Established', status: 'True', reason: 'InitialNamesAccepted', message: 'the initial names have been accepted' },
      ],
      acceptedNames: { ...names, singular: type.singular ?? '', listKind: str(names.listKind) ?? `${type.kind}List` },
      storedVersions: [type.version],
    };
    const current = child(crd, 'status');
    if (canonical(withoutTimes(current)) === canonical(status)) return;
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const stamped = (status.conditions as JsonObject[]).map((c) => ({ ...c, lastTransitionTime: now }));
    this.#store.update(this.#crdType, '', str(child(crd, 'metadata').name) ?? '', { ...crd, status: { ...status, conditions: stamped } });
  }
}

/** A status as compared: without the times its conditions were written at. */
function withoutTimes(status: JsonObject): JsonObject {
  if (!Array.isArray(status.conditions)) return status;
  const conditions = status.conditions.map((condition) => {
    if (!isJsonObject(condition)) return condition;
    const { lastTransitionTime: _time, ...rest } = condition;
    return rest;
  });
  return { ...status, conditions };
}

/** The one served version of a CRD as a kind and its schema; a 422 Invalid for a CRD the double cannot serve. */
function servedVersion(crd: JsonObject): ServedVersion {
  const spec = child(crd, 'spec');
  const names = child(spec, 'names');
  const group = str(spec.group) ?? '';
  const plural = str(names.plural) ?? '';
  const kind = str(names.kind) ?? '';
  const name = str(child(crd, 'metadata').name) ?? '';
  if (group === '' || !group.includes('.')) throw invalidCrd(crd, `spec.group: Invalid value: "${group}": should be a domain with at least one dot`);
  if (plural === '') throw invalidCrd(crd, 'spec.names.plural: Required value');
  if (kind === '') throw invalidCrd(crd, 'spec.names.kind: Required value');
  if (name !== `${plural}.${group}`) throw invalidCrd(crd, `metadata.name: Invalid value: "${name}": must be spec.names.plural+"."+spec.group`);
  const scope = str(spec.scope);
  if (scope !== 'Namespaced' && scope !== 'Cluster') throw invalidCrd(crd, `spec.scope: Unsupported value: ${JSON.stringify(scope ?? '')}: supported values: "Cluster", "Namespaced"`);
  const versions = (Array.isArray(spec.versions) ? spec.versions : []).filter(isJsonObject);
  if (versions.filter((v) => v.storage === true).length !== 1) throw invalidCrd(crd, 'spec.versions: Invalid value: must have exactly one version marked as storage version');
  const served = versions.filter((v) => v.served === true);
  if (served.length !== 1) {
    throw new StatusError(422, 'Invalid', `CustomResourceDefinition.apiextensions.k8s.io "${name}" is invalid: spec.versions: the double serves a CRD with exactly one served version (it has no conversion between versions), not ${served.length}`);
  }
  const version = served[0] ?? {};
  const schema = child(child(version, 'schema'), 'openAPIV3Schema');
  if (Object.keys(schema).length === 0) throw invalidCrd(crd, 'spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required');
  const listOf = (value: Json | undefined): string[] => (Array.isArray(value) ? value.filter((s): s is string => typeof s === 'string') : []);
  const shortNames = listOf(names.shortNames);
  const categories = listOf(names.categories);
  const type: ResourceType = {
    group,
    version: str(version.name) ?? '',
    resource: plural,
    kind,
    namespaced: scope === 'Namespaced',
    singular: str(names.singular) ?? kind.toLowerCase(),
    ...(shortNames.length > 0 ? { shortNames } : {}),
    ...(categories.length > 0 ? { categories } : {}),
  };
  return { type, schema };
}

function invalidCrd(crd: JsonObject, error: string): StatusError {
  const name = str(child(crd, 'metadata').name) ?? '';
  return new StatusError(422, 'Invalid', `CustomResourceDefinition.apiextensions.k8s.io "${name}" is invalid: ${error}`, { name, group: CRD_GROUP, kind: 'CustomResourceDefinition' });
}
