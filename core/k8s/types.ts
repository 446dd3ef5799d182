/**
 * A Kubernetes object as the API server sent it: plain JSON, never one of client-node's model classes (building them
 * costs a copy of every object of every event). The reflector reads only the metadata it names here.
 */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    resourceVersion: string;
    uid?: string;
    labels?: Record<string, string>;
    [field: string]: unknown;
  };
  [field: string]: unknown;
}

/**
 * What a Status object (an API error) says: its HTTP code, its machine reason (`Expired`, `Gone`), its message, and
 * the reasons of its `details.causes` (`ResourceVersionTooLarge`).
 */
export interface KubeStatus {
  code: number;
  reason: string;
  message: string;
  causes: string[];
}

/**
 * The claims of a bound service-account token that a TokenReview reports in `status.user.extra`: the pod it is
 * bound to, and (Kubernetes 1.30 and later) that pod's node.
 */
export const BOUND_TOKEN_EXTRA = Object.freeze({
  podName: 'authentication.kubernetes.io/pod-name',
  podUid: 'authentication.kubernetes.io/pod-uid',
  nodeName: 'authentication.kubernetes.io/node-name',
});
