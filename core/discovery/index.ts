export * from './types.js';
export { canonicalIp } from '../ip/index.js';
export { convertObject, describe, InvalidObjectError, ObjectReader, CLUSTER_DOMAIN } from './convert.js';
export {
  DEFAULT_ROOT_NAMESPACE,
  enrollmentLabel,
  isNamespaceEnrolled,
  isPodOptedOut,
  isWorkloadEnrolled,
  namespaceEnrollment,
  podExclusion,
  type NamespaceEnrollment,
  type PodExclusion,
} from '../enrollment/index.js';
export { selectorMatches } from './selector.js';
export { parseManifests } from './manifest-file.js';
export { WorkloadStore, type ReadonlyWorkloadStore, type WorkloadStoreOptions, type StoreDump, type DumpedEndpoint, type ServiceRef } from './store.js';
export { LocalSource, type LocalCollection, type LocalSourceOptions, type LocalSourceProblem, type LocalReload } from './local-source.js';
