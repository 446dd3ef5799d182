/**
 * The install as `kubectl apply -k manifests/` would send it: `kubectl kustomize manifests/`, parsed. The
 * Kubernetes-mode testbed starts the agent and the controller from these objects (testbed/kube-cluster.ts), so what
 * the tests run is what a cluster runs, and the manifests cannot drift from it.
 */
import path from 'node:path';
import { execa } from 'execa';
import yaml from 'js-yaml';
import { AmbitError } from '../core/errors/index.js';
import { CLI_PATH } from './cluster.js';

/** The checkout whose build the testbed runs: the image's /app. */
export const CHECKOUT_DIR = path.resolve(path.dirname(CLI_PATH), '..', '..');
export const MANIFESTS_DIR = path.join(CHECKOUT_DIR, 'manifests');

export type EnvVar = { name: string; value: string } | { name: string; valueFrom: { fieldRef: { fieldPath: string } } };

export interface VolumeMount {
  name: string;
  mountPath: string;
}

/** The part of a pod's container that says how its process starts. */
export interface ContainerSpec {
  command: string[];
  args: string[];
  env: EnvVar[];
  volumeMounts: VolumeMount[];
}

export interface RenderedObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [key: string]: unknown;
}

/** A rendered container: what starts its process, as the pod spec has it. */
export interface RenderedContainer extends ContainerSpec {
  name: string;
}

/** A pod volume, of the kinds the manifests use. */
export interface RenderedVolume {
  name: string;
  hostPath?: { path: string; type?: string };
  configMap?: { name: string };
  projected?: { sources: Array<{ serviceAccountToken?: { audience?: string; expirationSeconds?: number; path: string } }> };
}

export interface RenderedPodSpec {
  serviceAccountName: string;
  automountServiceAccountToken?: boolean;
  initContainers?: RenderedContainer[];
  containers: RenderedContainer[];
  volumes?: RenderedVolume[];
}

/** A workload's pod template: its labels and its spec. */
export interface RenderedPodTemplate {
  /** The owner, `DaemonSet/ambit-agent`. */
  owner: string;
  namespace: string;
  labels: Record<string, string>;
  spec: RenderedPodSpec;
}

let rendering: Promise<RenderedObject[]> | undefined;

/** The rendered base (kubectl kustomize), once per process: the files do not change while tests run. */
export function renderManifests(): Promise<RenderedObject[]> {
  rendering ??= (async () => {
    const { stdout } = await execa('kubectl', ['kustomize', MANIFESTS_DIR], { maxBuffer: 16 * 1024 * 1024 });
    return (yaml.loadAll(stdout) as RenderedObject[]).filter((object) => object !== null && object !== undefined);
  })();
  return rendering;
}

/** The pod template of a rendered DaemonSet or Deployment, with every container normalised (no args: []). */
export async function renderedPodTemplate(kind: 'DaemonSet' | 'Deployment', name: string): Promise<RenderedPodTemplate> {
  const object = (await renderManifests()).find((candidate) => candidate.kind === kind && candidate.metadata.name === name);
  if (object === undefined) throw new AmbitError('TESTBED_MANIFESTS', `the rendered manifests (${MANIFESTS_DIR}) have no ${kind} ${name}`);
  return podTemplateOf(object);
}

/** The pod template of a DaemonSet or Deployment object (rendered, or as the API server holds it once applied). */
export function podTemplateOf(object: RenderedObject): RenderedPodTemplate {
  const template = (object['spec'] as { template: { metadata?: { labels?: Record<string, string> }; spec: RenderedPodSpec } }).template;
  const normalise = (container: RenderedContainer): RenderedContainer => ({
    name: container.name,
    command: container.command ?? [],
    args: container.args ?? [],
    env: container.env ?? [],
    volumeMounts: container.volumeMounts ?? [],
  });
  return {
    owner: `${object.kind}/${object.metadata.name}`,
    namespace: object.metadata.namespace ?? 'default',
    labels: template.metadata?.labels ?? {},
    spec: {
      ...template.spec,
      containers: template.spec.containers.map(normalise),
      ...(template.spec.initContainers === undefined ? {} : { initContainers: template.spec.initContainers.map(normalise) }),
    },
  };
}

/** One container of a pod template, by name (init containers included: a native sidecar is one). */
export function containerOf(template: RenderedPodTemplate, name: string): RenderedContainer {
  const container = [...(template.spec.initContainers ?? []), ...template.spec.containers].find((candidate) => candidate.name === name);
  if (container === undefined) throw new AmbitError('TESTBED_MANIFESTS', `${template.owner} has no container ${name}`);
  return container;
}
