import { EventEmitter } from 'node:events';
import type { DiscoveryChange, LocalCollection, WorkloadStore } from '../core/discovery/index.js';
import { AGENT_DAEMONSET_NAME, UNINSTALL_ANNOTATION } from '../core/enrollment/index.js';
import type { TrustBundleSource } from '../core/hbone/index.js';
import { loadKubeConfig, Reflector } from '../core/k8s/index.js';
import type { Logger } from '../core/log/index.js';
import type { Registry } from '../core/metrics/index.js';
import { ClusterView, watchedKinds, type Prepared, type StreamChange } from '../core/stream/index.js';
import type { KubernetesSettings } from './config.js';
import { ControllerStream } from './controller-stream.js';

/** The store source of the agent's own watch; the controller's records are CONTROLLER_SOURCE's. */
export const NODE_WATCH_SOURCE = 'node-watch';

export interface KubernetesSourceOptions {
  readonly settings: KubernetesSettings;
  readonly nodeName: string;
  /** The mesh's own namespace, where the agent DaemonSet (which `ambit uninstall` annotates) is. */
  readonly rootNamespace: string;
  readonly trustDomain: string;
  readonly store: WorkloadStore;
  readonly policies: LocalCollection;
  readonly trustBundle: TrustBundleSource;
  readonly registry: Registry;
  readonly log: Logger;
}

/**
 * Kubernetes mode's view of the cluster, as issue 13 and istio-cni have it: the controller's discovery stream for
 * everything, and the agent's own watch of Namespaces and of this node's Pods (`spec.nodeName`, indexed by the API
 * server), so that a pod's CNI ADD is decided without waiting for the controller, even while it is away. The store is
 * synced (and the agent ready) on the controller's first snapshot; the agent's own records make no difference to
 * that. Both convert objects with the same code (core/stream's ClusterView), so they agree on every record.
 */
export class KubernetesSource extends EventEmitter<{ uninstall: [requested: boolean] }> {
  readonly #stream: ControllerStream;
  readonly #reflectors: Array<Reflector<Prepared> | Reflector<boolean>>;
  #uninstallRequested = false;

  private constructor(stream: ControllerStream) {
    super();
    this.#stream = stream;
    this.#reflectors = [];
  }

  /** Whether `ambit uninstall`'s annotation is on the agent DaemonSet (as last read); 'uninstall' says when this changes. */
  get uninstallRequested(): boolean {
    return this.#uninstallRequested;
  }

  #setUninstallRequested(requested: boolean): void {
    if (requested === this.#uninstallRequested) return;
    this.#uninstallRequested = requested;
    this.emit('uninstall', requested);
  }

  static async start(options: KubernetesSourceOptions): Promise<KubernetesSource> {
    const { settings, store, log } = options;
    // first: a kubeconfig that cannot be read fails the start before anything is made
    const kubeConfig = await loadKubeConfig(
      settings.kubeconfig === undefined
        ? { inCluster: true, ...(settings.serviceAccountDir === undefined ? {} : { serviceAccountDir: settings.serviceAccountDir }) }
        : { kubeconfig: settings.kubeconfig },
    );
    const stream = new ControllerStream({
      url: settings.controllerUrl,
      controllerIdentity: settings.controllerIdentity,
      trustBundle: options.trustBundle,
      tokenFile: settings.tokenFile,
      store,
      policies: options.policies,
      log,
    });
    const sink = {
      apply: (changes: readonly StreamChange[]) => {
        const discovery = changes.filter((change): change is DiscoveryChange => change.kind !== 'Policy');
        if (discovery.length > 0) store.applyBatch(discovery, NODE_WATCH_SOURCE);
      },
    };
    const view = new ClusterView(sink, { trustDomain: options.trustDomain, log });
    const kinds = watchedKinds().filter((kind) => kind.record === 'Namespace' || kind.record === 'Pod');
    const reflectors = kinds.map(
      (kind) =>
        new Reflector({
          kubeConfig,
          kind: kind.kind,
          path: kind.path,
          ...(kind.record === 'Pod' ? { fieldSelector: `spec.nodeName=${options.nodeName}` } : {}),
          log,
          registry: options.registry,
          transform: (object) => view.prepare(kind, object),
          consumer: {
            replace: (items) => view.replace(kind, items),
            added: (object) => view.upsert(kind, object),
            modified: (object) => view.upsert(kind, object),
            deleted: (object) => view.delete(kind, object),
          },
        }),
    );
    const source = new KubernetesSource(stream);
    // `ambit uninstall`'s annotation on the agent DaemonSet, and only that object (RBAC: list/watch of that name)
    const uninstall = new Reflector<boolean>({
      kubeConfig,
      kind: 'DaemonSet',
      path: `/apis/apps/v1/namespaces/${encodeURIComponent(options.rootNamespace)}/daemonsets`,
      fieldSelector: `metadata.name=${AGENT_DAEMONSET_NAME}`,
      log,
      registry: options.registry,
      transform: (object) => (object.metadata as { annotations?: Record<string, string> }).annotations?.[UNINSTALL_ANNOTATION] !== undefined,
      consumer: {
        // a DaemonSet gone (being deleted, or not listed) changes nothing: its pods, this agent's among them, are going
        replace: (marked) => {
          if (marked.length > 0) source.#setUninstallRequested(marked.some(Boolean));
        },
        added: (marked) => source.#setUninstallRequested(marked),
        modified: (marked) => source.#setUninstallRequested(marked),
        deleted: () => undefined,
      },
    });
    source.#reflectors.push(...reflectors, uninstall);
    for (const reflector of source.#reflectors) reflector.start();
    stream.start();
    return source;
  }

  /** Nothing to report here: refusals and stream problems are logged as they happen. */
  lastErrors(): readonly unknown[] {
    return [];
  }

  async close(): Promise<void> {
    this.#stream.close();
    await Promise.all(this.#reflectors.map((reflector) => reflector.stop()));
  }
}
