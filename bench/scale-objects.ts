/**
 * The cluster of the scale bench as Kubernetes objects, as a real API server would hold them: pods of about 6 KB
 * (managedFields of the deployment controller and the kubelet, labels, an owner, a container with env, ports,
 * resources, probes and mounts, a status with conditions and container statuses), Services of 5 pods, 100 Services
 * a namespace, 50 pods a node (at least one node per agent), and the policies of the policy bench.
 */
import type { JsonObject } from '../testbed/index.js';

export const PODS_PER_SERVICE = 5;
const SERVICES_PER_NAMESPACE = 100;
const PODS_PER_NODE = 50;
export const ENROLL_LABEL = 'ambit.dev/mode';

export interface ClusterShape {
  readonly pods: number;
  readonly services: number;
  readonly namespaces: number;
  readonly nodes: number;
}

export function clusterShape(pods: number, agents: number): ClusterShape {
  const services = Math.ceil(pods / PODS_PER_SERVICE);
  return { pods, services, namespaces: Math.ceil(services / SERVICES_PER_NAMESPACE), nodes: Math.max(agents, Math.ceil(pods / PODS_PER_NODE)) };
}

export function namespaceOfService(service: number): string {
  return `ns-${Math.floor(service / SERVICES_PER_NAMESPACE)}`;
}

export function nodeName(node: number): string {
  return `node-${node}`;
}

/** A distinct address per index, in 10.128.0.0/9 for pods, 10.96.0.0/12 for Services. */
function address(base: number, index: number): string {
  const n = index + 1;
  return `10.${base + (n >> 16)}.${(n >> 8) & 255}.${n & 255}`;
}

export function namespaceObject(name: string, enrolled: boolean): JsonObject {
  return { metadata: { name, labels: { 'kubernetes.io/metadata.name': name, ...(enrolled ? { [ENROLL_LABEL]: 'enabled' } : {}) } } };
}

export function nodeObject(node: number, ip: string): JsonObject {
  return {
    metadata: { name: nodeName(node), labels: { 'kubernetes.io/hostname': nodeName(node), 'topology.kubernetes.io/zone': `zone-${node % 3}` } },
    status: { addresses: [{ type: 'InternalIP', address: ip }, { type: 'Hostname', address: nodeName(node) }] },
  };
}

export function serviceObject(service: number): JsonObject {
  const app = `app-${service}`;
  return {
    metadata: { name: app, namespace: namespaceOfService(service), labels: { app } },
    spec: {
      type: 'ClusterIP',
      clusterIP: address(96, service),
      clusterIPs: [address(96, service)],
      selector: { app },
      ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }, { name: 'grpc', port: 9090, targetPort: 9090, protocol: 'TCP' }],
      sessionAffinity: 'None',
      ipFamilies: ['IPv4'],
      ipFamilyPolicy: 'SingleStack',
      internalTrafficPolicy: 'Cluster',
    },
  };
}

const TIME = '2026-12-03T10:00:00Z';

/** Pod `index` of the cluster: pod i belongs to Service i / 5 and runs on node i % nodes. */
export function podObject(index: number, shape: ClusterShape, generation = 0): JsonObject {
  const service = Math.floor(index / PODS_PER_SERVICE) % shape.services;
  const app = `app-${service}`;
  const hash = `7d9f${(service % 4096).toString(16).padStart(3, '0')}c5b`;
  const name = `${app}-${hash}-${(index + generation * shape.pods).toString(36).padStart(5, '0')}`;
  const node = nodeName(index % shape.nodes);
  const ip = address(128, index + generation * shape.pods);
  const image = `registry.example.com/team-${service % 50}/${app}:1.${service % 17}.${service % 5}`;
  const labels = { app, 'pod-template-hash': hash, version: 'v1', team: `team-${service % 50}`, 'app.kubernetes.io/part-of': `product-${service % 20}` };
  return {
    metadata: {
      name,
      namespace: namespaceOfService(service),
      labels,
      annotations: { 'kubectl.kubernetes.io/restartedAt': TIME, 'prometheus.io/scrape': 'true', 'prometheus.io/port': '9102' },
      ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `${app}-${hash}`, uid: `0a1b2c3d-0000-4000-8000-${String(service).padStart(12, '0')}`, controller: true, blockOwnerDeletion: true }],
      managedFields: [
        {
          manager: 'kube-controller-manager',
          operation: 'Update',
          apiVersion: 'v1',
          time: TIME,
          fieldsType: 'FieldsV1',
          fieldsV1: {
            'f:metadata': { 'f:generateName': {}, 'f:labels': { '.': {}, 'f:app': {}, 'f:pod-template-hash': {}, 'f:version': {}, 'f:team': {} }, 'f:ownerReferences': { '.': {}, [`k:{"uid":"${service}"}`]: {} } },
            'f:spec': {
              'f:containers': {
                [`k:{"name":"${app}"}`]: {
                  '.': {}, 'f:env': { '.': {}, 'k:{"name":"LOG_LEVEL"}': { '.': {}, 'f:name': {}, 'f:value': {} }, 'k:{"name":"POD_IP"}': { '.': {}, 'f:name': {}, 'f:valueFrom': {} } },
                  'f:image': {}, 'f:imagePullPolicy': {}, 'f:livenessProbe': {}, 'f:name': {}, 'f:ports': {}, 'f:readinessProbe': {}, 'f:resources': {}, 'f:terminationMessagePath': {}, 'f:volumeMounts': {},
                },
              },
              'f:dnsPolicy': {}, 'f:enableServiceLinks': {}, 'f:restartPolicy': {}, 'f:schedulerName': {}, 'f:securityContext': {}, 'f:serviceAccount': {}, 'f:terminationGracePeriodSeconds': {}, 'f:volumes': {},
            },
          },
        },
        {
          manager: 'kubelet',
          operation: 'Update',
          apiVersion: 'v1',
          time: TIME,
          fieldsType: 'FieldsV1',
          subresource: 'status',
          fieldsV1: {
            'f:status': {
              'f:conditions': { 'k:{"type":"ContainersReady"}': { '.': {}, 'f:lastProbeTime': {}, 'f:lastTransitionTime': {}, 'f:status': {}, 'f:type': {} }, 'k:{"type":"Initialized"}': {}, 'k:{"type":"Ready"}': {}, 'k:{"type":"PodReadyToStartContainers"}': {} },
              'f:containerStatuses': {}, 'f:hostIP': {}, 'f:hostIPs': {}, 'f:phase': {}, 'f:podIP': {}, 'f:podIPs': { '.': {}, [`k:{"ip":"${ip}"}`]: { '.': {}, 'f:ip': {} } }, 'f:startTime': {},
            },
          },
        },
      ],
    },
    spec: {
      nodeName: node,
      serviceAccountName: app,
      serviceAccount: app,
      restartPolicy: 'Always',
      dnsPolicy: 'ClusterFirst',
      schedulerName: 'default-scheduler',
      terminationGracePeriodSeconds: 30,
      enableServiceLinks: true,
      priority: 0,
      preemptionPolicy: 'PreemptLowerPriority',
      securityContext: { runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [
        {
          name: app,
          image,
          imagePullPolicy: 'IfNotPresent',
          ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }, { name: 'grpc', containerPort: 9090, protocol: 'TCP' }, { name: 'metrics', containerPort: 9102, protocol: 'TCP' }],
          env: [
            { name: 'LOG_LEVEL', value: 'info' },
            { name: 'SERVICE_NAME', value: app },
            { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://otel-collector.observability.svc:4317' },
            { name: 'POD_IP', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'status.podIP' } } },
            { name: 'POD_NAME', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.name' } } },
            { name: 'NODE_NAME', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'spec.nodeName' } } },
          ],
          resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { cpu: '1', memory: '512Mi' } },
          readinessProbe: { httpGet: { path: '/ready', port: 'http', scheme: 'HTTP' }, periodSeconds: 5, timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3 },
          livenessProbe: { httpGet: { path: '/healthz', port: 'http', scheme: 'HTTP' }, initialDelaySeconds: 10, periodSeconds: 10, timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3 },
          volumeMounts: [{ name: 'config', mountPath: '/etc/app', readOnly: true }, { name: 'kube-api-access', mountPath: '/var/run/secrets/kubernetes.io/serviceaccount', readOnly: true }],
          terminationMessagePath: '/dev/termination-log',
          terminationMessagePolicy: 'File',
          securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
        },
      ],
      volumes: [
        { name: 'config', configMap: { name: `${app}-config`, defaultMode: 420 } },
        {
          name: 'kube-api-access',
          projected: {
            defaultMode: 420,
            sources: [
              { serviceAccountToken: { expirationSeconds: 3607, path: 'token' } },
              { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
              { downwardAPI: { items: [{ path: 'namespace', fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } }] } },
            ],
          },
        },
      ],
      tolerations: [
        { key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 300 },
        { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 300 },
      ],
    },
    status: {
      phase: 'Running',
      hostIP: '192.168.0.1',
      podIP: ip,
      podIPs: [{ ip }],
      startTime: TIME,
      qosClass: 'Burstable',
      conditions: [
        { type: 'PodReadyToStartContainers', status: 'True', lastProbeTime: null, lastTransitionTime: TIME },
        { type: 'Initialized', status: 'True', lastProbeTime: null, lastTransitionTime: TIME },
        { type: 'Ready', status: 'True', lastProbeTime: null, lastTransitionTime: TIME },
        { type: 'ContainersReady', status: 'True', lastProbeTime: null, lastTransitionTime: TIME },
        { type: 'PodScheduled', status: 'True', lastProbeTime: null, lastTransitionTime: TIME },
      ],
      containerStatuses: [
        {
          name: app,
          ready: true,
          started: true,
          restartCount: 0,
          image,
          imageID: `${image.split(':')[0] ?? image}@sha256:${'9f'.repeat(32)}`,
          containerID: `containerd://${index.toString(16).padStart(64, 'a')}`,
          state: { running: { startedAt: TIME } },
          lastState: {},
        },
      ],
    },
  };
}
