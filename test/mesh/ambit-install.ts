/**
 * Ambit installed on the API server double as `kubectl apply -k manifests/` leaves it: every rendered object created,
 * each CRD served as the apiextensions server serves an established one, and the status the cluster's controllers
 * would write (the controller's ready replicas, the agent pods on their nodes, the published trust bundle). What the
 * operator commands read, from the real manifests, so a renamed object fails their tests.
 */
import { execFile } from 'node:child_process';
import { TRUST_BUNDLE_CONFIGMAP_NAME, TRUST_BUNDLE_KEYS, type CertificateAuthority } from '../../core/identity/index.js';
import { CLI_PATH, meshCaSecret, renderManifests as renderTestbedManifests, type ApiServer, type JsonObject, type ResourceType } from '../../testbed/index.js';


/**
 * The kinds of the install that the double does not serve from the start, as a real server names them (spelled out
 * here, not taken from cli/install-objects.ts: a wrong plural there must fail against the double).
 */
const INSTALL_TYPES: readonly ResourceType[] = [
  { group: 'apiextensions.k8s.io', version: 'v1', resource: 'customresourcedefinitions', kind: 'CustomResourceDefinition', namespaced: false, shortNames: ['crd', 'crds'], builtIn: true },
  { group: 'rbac.authorization.k8s.io', version: 'v1', resource: 'clusterroles', kind: 'ClusterRole', namespaced: false, builtIn: true },
  { group: 'rbac.authorization.k8s.io', version: 'v1', resource: 'clusterrolebindings', kind: 'ClusterRoleBinding', namespaced: false, builtIn: true },
  { group: 'rbac.authorization.k8s.io', version: 'v1', resource: 'roles', kind: 'Role', namespaced: true, builtIn: true },
  { group: 'rbac.authorization.k8s.io', version: 'v1', resource: 'rolebindings', kind: 'RoleBinding', namespaced: true, builtIn: true },
  { group: 'apps', version: 'v1', resource: 'deployments', kind: 'Deployment', namespaced: true, shortNames: ['deploy'], builtIn: true },
  { group: 'apps', version: 'v1', resource: 'daemonsets', kind: 'DaemonSet', namespaced: true, shortNames: ['ds'], builtIn: true },
  { group: 'policy', version: 'v1', resource: 'poddisruptionbudgets', kind: 'PodDisruptionBudget', namespaced: true, shortNames: ['pdb'], builtIn: true },
  { group: 'networking.k8s.io', version: 'v1', resource: 'networkpolicies', kind: 'NetworkPolicy', namespaced: true, shortNames: ['netpol'], builtIn: true },
];
const CORE_PLURALS: Readonly<Record<string, string>> = { Namespace: 'namespaces', ServiceAccount: 'serviceaccounts', ConfigMap: 'configmaps', Service: 'services' };

export interface ManifestObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: JsonObject;
}

/** `kubectl kustomize manifests/` (testbed/manifests.ts), once per test process. */
export async function renderManifests(): Promise<ManifestObject[]> {
  return structuredClone(await renderTestbedManifests()) as unknown as ManifestObject[];
}

/** Serves the install's kinds (Deployments, CRDs, RBAC, ...), as a real server does before anything is installed. */
export function serveInstallKinds(api: ApiServer): void {
  for (const type of INSTALL_TYPES) api.registerResource(type);
}

function pluralOf(kind: string): string {
  const plural = CORE_PLURALS[kind] ?? INSTALL_TYPES.find((t) => t.kind === kind)?.resource;
  if (plural === undefined) throw new Error(`the install fixture does not know the kind ${kind}: add it to INSTALL_TYPES`);
  return plural;
}

/** Serves a CRD's kinds as the apiextensions server does once the CRD is established. */
export function serveCrd(api: ApiServer, crd: ManifestObject | JsonObject): void {
  const spec = crd.spec as { group: string; scope: string; names: { plural: string; kind: string }; versions: { name: string; served: boolean }[] };
  for (const version of spec.versions.filter((v) => v.served)) {
    api.registerResource({ group: spec.group, version: version.name, resource: spec.names.plural, kind: spec.names.kind, namespaced: spec.scope === 'Namespaced' });
  }
}

export interface InstallState {
  /** The nodes the agent DaemonSet runs on. */
  nodes: readonly string[];
  /** The nodes whose agent pod is not Ready (with a container waiting for `reason`). */
  notReady?: Readonly<Record<string, string>>;
  /** Ready controller replicas (default: all of them). */
  controllerReady?: number;
  /** Publishes `ca`'s root and issuer in the trust-bundle ConfigMap, and its Secret beside it; none: not published. */
  ca?: CertificateAuthority;
}

/** Creates every rendered object, serves the CRDs, and writes the status the cluster would. */
export async function installAmbit(api: ApiServer, state: InstallState): Promise<ManifestObject[]> {
  serveInstallKinds(api);
  const objects = await renderManifests();
  for (const object of objects) {
    api.objects(object.apiVersion, pluralOf(object.kind)).create(object as unknown as JsonObject);
    if (object.kind === 'CustomResourceDefinition') serveCrd(api, object);
  }
  const controller = objects.find((o) => o.kind === 'Deployment');
  const agents = objects.find((o) => o.kind === 'DaemonSet');
  if (controller === undefined || agents === undefined) throw new Error('the manifests render no Deployment or no DaemonSet');
  const namespace = controller.metadata.namespace ?? '';
  const replicas = (controller.spec?.replicas as number | undefined) ?? 1;
  api.objects('apps/v1', 'deployments').patch(controller.metadata.name, { status: { replicas, readyReplicas: state.controllerReady ?? replicas } }, namespace);
  const notReady = state.notReady ?? {};
  const template = (agents.spec?.template as { metadata: { labels: Record<string, string> } }).metadata;
  for (const node of state.nodes) {
    const waiting = notReady[node];
    api.objects('v1', 'pods').create(
      {
        metadata: { name: `${agents.metadata.name}-${node}`, namespace, labels: template.labels },
        spec: { nodeName: node, hostNetwork: true, containers: [{ name: 'agent', image: 'ambit' }] },
        status: {
          phase: 'Running',
          conditions: [{ type: 'Ready', status: waiting === undefined ? 'True' : 'False' }],
          containerStatuses: [{ name: 'agent', ready: waiting === undefined, state: waiting === undefined ? { running: {} } : { waiting: { reason: waiting } } }],
        },
      },
      namespace,
    );
  }
  const ready = state.nodes.filter((node) => notReady[node] === undefined).length;
  api.objects('apps/v1', 'daemonsets').patch(agents.metadata.name, { status: { desiredNumberScheduled: state.nodes.length, currentNumberScheduled: state.nodes.length, numberReady: ready } }, namespace);
  if (state.ca !== undefined) {
    api.objects('v1', 'secrets').create(meshCaSecret(state.ca, { namespace }));
    api.objects('v1', 'configmaps').create({
      metadata: { name: TRUST_BUNDLE_CONFIGMAP_NAME, namespace },
      data: { [TRUST_BUNDLE_KEYS.roots]: state.ca.rootPem, [TRUST_BUNDLE_KEYS.issuerChain]: state.ca.chainPem === '' ? state.ca.rootPem : state.ca.chainPem },
    });
  }
  return objects;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs the built `ambit` CLI with only PATH and a HOME of the test's own (no KUBECONFIG, no ~/.kube/config of the
 * machine's), plus `env`.
 */
export function ambit(args: readonly string[], options: { home: string; env?: Record<string, string> }): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI_PATH, ...args],
      { timeout: 30_000, env: { PATH: process.env.PATH ?? '', HOME: options.home, ...options.env } },
      (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
    );
  });
}

/** kubectl against the double's kubeconfig, with a discovery cache of the test's own. */
export async function kubectl(kubeconfig: string, cacheDir: string, args: readonly string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile('kubectl', ['--kubeconfig', kubeconfig, '--cache-dir', cacheDir, ...args], { timeout: 30_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
    );
  });
}
