import { convertObject, WorkloadStore, type DiscoveryChange } from '../../core/discovery/index.js';

/**
 * A store on `nodeName` holding the given Kubernetes objects (as a source would have converted them); a complete
 * view (synced) unless `synced` is false.
 */
export function storeWith(objects: unknown[], nodeName = 'node1', options: { synced?: boolean } = {}): WorkloadStore {
  const store = new WorkloadStore({ nodeName });
  const changes: DiscoveryChange[] = [];
  for (const obj of objects) {
    const converted = convertObject(obj, 'cluster.local');
    if (converted.kind !== 'skip') changes.push({ op: 'upsert', kind: converted.kind, object: converted.object } as DiscoveryChange);
  }
  store.applyBatch(changes);
  if (options.synced ?? true) store.markSynced();
  return store;
}
