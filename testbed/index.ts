export { HOST_LINK_IP, onPath, Testbed, testbedUnavailableReason, type TestbedNode, type TestbedOptions, type TestbedPod, type TestbedPodOptions } from './testbed.js';
export { readCniConfDir, type CniConflist, type CniErrorObject, type TestbedCni } from './cni.js';
export { removeStaleTestbeds } from './owner.js';
export { captureDuring, parsePcap, startCapture, type Capture, type CapturedPacket } from './capture.js';
export { CLI_PATH, curlFrom, ECHO_PORT, HTTP_PORT, inEnrolledSet, MeshCluster, metricValue, startWorkload, WORKLOAD_SERVER_PATH, type MeshClusterOptions, type PodSpec, type ServiceSpec } from './cluster.js';
export {
  API_SERVER_AUDIENCE,
  ApiServer,
  boundServiceAccountUser,
  DEFAULT_BOOKMARK_INTERVAL_MS,
  MESH_CUSTOM_RESOURCES,
  NODE_NAME_EXTRA,
  POD_NAME_EXTRA,
  POD_UID_EXTRA,
  SERVICE_NAME_LABEL,
  sliceName,
  StatusError,
  type AccessDenial,
  type ApiServerOptions,
  type ExpiredWatchAnswer,
  type Json,
  type JsonObject,
  type ObjectHandle,
  type ResourceType,
  type TokenUser,
} from './apiserver/index.js';
export { registerForExit, releaseFromExit, type SyncTeardown } from './exit-cleanup.js';
export { stopProcess } from './processes.js';
export {
  containerProcess,
  IMAGE_APP_DIR,
  KubeCluster,
  type ContainerContext,
  type ContainerProcess,
  type ContainerSpec,
  type EnvVar,
  type KubeClusterOptions,
  type KubeProcess,
  type VolumeMount,
} from './kube-cluster.js';
export { intermediateCa, meshCaSecret } from './mesh-ca.js';
export { CHECKOUT_DIR, containerOf, MANIFESTS_DIR, renderedPodTemplate, renderManifests, type RenderedContainer, type RenderedObject, type RenderedPodTemplate } from './manifests.js';
