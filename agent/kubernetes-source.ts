import { EventEmitter } from 'node:events';
import type { DiscoveryChange, LocalCollection, WorkloadStore } from '../core/discovery/index.js';
import { AGENT_SERVICE_ACCOUNT_NAME, UNINSTALL_ANNOTATION, uninstallMarkerOf } from '../core/enrollment/index.js';
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
  /** The mesh's own namespace, where the agents' ServiceAccount (which `ambit uninstall` annotates) is. */
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
export class KubernetesSource extends EventEmitter<{ uninstall: [marker: string | undefined] }> {
  readonly #stream: ControllerStream;
  readonly #reflectors: Array<Reflector<Prepared> | Reflector<{ marker?: string; invalid?: string }>>;
  #uninstallMarker: string | undefined;
  #invalidMarker: string | undefined;
  #markerRead = false;

  private constructor(stream: ControllerStream) {
    super();
    this.#stream = stream;
    this.#reflectors = [];
  }

  /** `ambit uninstall`'s marker on the agents' ServiceAccount (as last read), undefined when none; 'uninstall' says when it changes. */
  get uninstallMarker(): string | undefined {
    return this.#uninstallMarker;
  }

  /** Whether the ServiceAccount has been listed once: until then, uninstallMarker is not known (undefined says nothing). */
  get uninstallMarkerRead(): boolean {
    return this.#markerRead;
  }

  /** The agents' ServiceAccount as listed or watched: its annotation sets or clears the marker. */
  #noteMarker({ marker, invalid }: { marker?: string; invalid?: string }, log: Logger): void {
    if (invalid !== undefined && invalid !== this.#invalidMarker) {
      log.error({ annotation: UNINSTALL_ANNOTATION, value: invalid }, 'the uninstall annotation is not a time (ambit uninstall writes one): ignored, nothing is uninstalled');
    }
    this.#invalidMarker = invalid;
    if (marker === this.#uninstallMarker) return;
    this.#uninstallMarker = marker;
    this.emit('uninstall', marker);
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
    const source = new KubernetesSource(stream);
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
    // `ambit uninstall`'s annotation on the agents' ServiceAccount, and only that object (RBAC: list/watch of that name)
    const uninstall = new Reflector<{ marker?: string; invalid?: string }>({
      kubeConfig,
      kind: 'ServiceAccount',
      path: `/api/v1/namespaces/${encodeURIComponent(options.rootNamespace)}/serviceaccounts`,
      fieldSelector: `metadata.name=${AGENT_SERVICE_ACCOUNT_NAME}`,
      log,
      registry: options.registry,
      transform: (object) => uninstallMarkerOf(object.metadata.annotations),
      consumer: {
        // the object gone (its namespace being deleted, or not listed) changes nothing: the agents are going too
        replace: (items) => {
          const [item] = items;
          if (item !== undefined) source.#noteMarker(item, log);
          source.#markerRead = true;
        },
        added: (item) => source.#noteMarker(item, log),
        modified: (item) => source.#noteMarker(item, log),
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
