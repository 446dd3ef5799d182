import { apiVersionOf, singularName, VERBS, type ResourceRegistry } from './resources.js';
import type { JsonObject } from './types.js';

/** What `/version` says: kubectl 1.32 warns about a skew of more than one minor version. */
export const SERVER_VERSION: JsonObject = {
  major: '1',
  minor: '32',
  gitVersion: 'v1.32.0',
  gitCommit: '0000000000000000000000000000000000000000',
  gitTreeState: 'clean',
  buildDate: '2024-12-11T00:00:00Z',
  goVersion: 'go1.23.3',
  compiler: 'gc',
  platform: 'linux/amd64',
};

/**
 * The plain (unaggregated) discovery documents: `/api`, `/apis`, `/api/v1`, `/apis/GROUP/VERSION`. kubectl asks
 * for the aggregated form first and takes these when the answer's content type is plain JSON.
 */
export function discoveryDocument(registry: ResourceRegistry, path: string, serverAddress: string): JsonObject | undefined {
  if (path === '/api') {
    return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress }] };
  }
  const groups = registry.groups();
  if (path === '/apis') {
    const list = [...groups.entries()]
      .filter(([group]) => group !== '')
      .map(([name, versions]) => ({
        name,
        versions: versions.map((version) => ({ groupVersion: `${name}/${version}`, version })),
        preferredVersion: { groupVersion: `${name}/${versions[0] ?? ''}`, version: versions[0] ?? '' },
      }));
    return { kind: 'APIGroupList', apiVersion: 'v1', groups: list };
  }
  const m = /^\/(?:api\/(v1)|apis\/([^/]+)(?:\/([^/]+))?)$/.exec(path);
  if (m === null) return undefined;
  const group = m[2] ?? '';
  const versions = groups.get(group);
  if (versions === undefined) return undefined;
  const version = m[1] ?? m[3];
  if (version === undefined) {
    return {
      kind: 'APIGroup',
      apiVersion: 'v1',
      name: group,
      versions: versions.map((v) => ({ groupVersion: `${group}/${v}`, version: v })),
      preferredVersion: { groupVersion: `${group}/${versions[0] ?? ''}`, version: versions[0] ?? '' },
    };
  }
  if (!versions.includes(version)) return undefined;
  const resources = registry
    .all()
    .filter((type) => type.group === group && type.version === version)
    .map((type) => ({
      name: type.resource,
      singularName: singularName(type),
      namespaced: type.namespaced,
      kind: type.kind,
      verbs: VERBS,
      ...(type.shortNames === undefined ? {} : { shortNames: [...type.shortNames] }),
      ...(type.categories === undefined ? {} : { categories: [...type.categories] }),
    }));
  return { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: apiVersionOf({ group, version, resource: '', kind: '', namespaced: false }), resources };
}
