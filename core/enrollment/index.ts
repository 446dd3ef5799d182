// The enrollment rule (namespace label, pod opt-out, the mesh's own namespace), in one place for the agent and the
// CNI plugin; nothing here imports anything, so the plugin's single executable takes it whole.
export { ENROLL_LABEL, ISTIO_DATAPLANE_LABEL, type Labels } from './labels.js';
export { DEFAULT_ROOT_NAMESPACE } from './root-namespace.js';
export {
  enrollmentLabel,
  isNamespaceEnrolled,
  isPodOptedOut,
  isWorkloadEnrolled,
  namespaceEnrollment,
  optOutLabel,
  podExclusion,
  type EnrollmentNamespace,
  type NamespaceEnrollment,
  type PodExclusion,
} from './enrollment.js';
export { AGENT_DAEMONSET_NAME, AGENT_SERVICE_ACCOUNT_NAME, isIsoUtcInstant, UNINSTALL_ANNOTATION, uninstallMarkerOf } from './uninstall.js';
