import { readFile } from 'node:fs/promises';
import type http from 'node:http';
import path from 'node:path';
import { Counter } from 'prom-client';
import { KubeApi, loadKubeConfig, Reflector } from '../core/k8s/index.js';
import { silentLogger, type Logger } from '../core/log/index.js';
import { createRegistry, createStatusServer, type Readiness, type Registry } from '../core/metrics/index.js';
import { ClusterView, STREAM_TOKEN_AUDIENCE, watchedKinds, type Prepared, type WatchedKind } from '../core/stream/index.js';
import { ChangeLog } from './change-log.js';
import type { ControllerConfig } from './config.js';
import { StreamServer } from './stream-server.js';
import { cachedAuthenticator, tokenReviewer } from './token-review.js';

export interface ControllerDependencies {
  readonly log?: Logger;
  readonly registry?: Registry;
  /** The clock of the reflectors' failure times (milliseconds); tests move one by hand. */
  readonly now?: () => number;
}

/**
 * `ambit controller`: a reflector per watched kind feeds the cluster view, whose changes the stream serves to the
 * agents. Ready (and streaming) once every kind has been listed; a kind that cannot be listed (a CRD not installed,
 * RBAC missing) keeps it unready, and its reflector says why in the log and retries.
 */
export class Controller {
  readonly #reflectors: Reflector<Prepared>[];
  readonly #stream: StreamServer;
  readonly #statusServers: http.Server[];
  readonly #log: Logger;
  readonly changes: ChangeLog;
  /** The port the discovery stream listens on (the configured one, or the one the system chose for 0). */
  readonly streamPort: number;

  /** What the readiness port answers: every kind listed, and none failing to watch for more than 2 minutes. */
  readonly #readiness: () => Readiness;

  private constructor(
    reflectors: Reflector<Prepared>[],
    stream: StreamServer,
    statusServers: http.Server[],
    changes: ChangeLog,
    log: Logger,
    streamPort: number,
    readiness: () => Readiness,
  ) {
    this.streamPort = streamPort;
    this.#readiness = readiness;
    this.#reflectors = reflectors;
    this.#stream = stream;
    this.#statusServers = statusServers;
    this.changes = changes;
    this.#log = log;
  }

  static async start(config: ControllerConfig, deps: ControllerDependencies = {}): Promise<Controller> {
    const log = (deps.log ?? silentLogger()).child({ component: 'controller' });
    const registry = deps.registry ?? createRegistry();
    const kubeConfig = await loadKubeConfig(
      config.kubeconfig === undefined ? { inCluster: true, ...(config.serviceAccountDir === undefined ? {} : { serviceAccountDir: config.serviceAccountDir }) } : { kubeconfig: config.kubeconfig },
    );
    const [keyPem, certChainPem] = await Promise.all([readFile(path.join(config.tlsDir, 'tls.key'), 'utf8'), readFile(path.join(config.tlsDir, 'tls.crt'), 'utf8')]);
    const changes = new ChangeLog();
    const rejected = new Counter({
      name: 'ambit_controller_objects_rejected_total',
      help: 'API objects the controller could not convert (malformed), by kind; each is logged with the field at fault',
      labelNames: ['kind'],
      registers: [registry],
    });
    const view = new ClusterView(changes, { trustDomain: config.trustDomain, log, onRejected: (kind) => rejected.inc({ kind }) });
    const listed = new Set<WatchedKind>();
    const kinds = watchedKinds({ istioApi: config.istioApi });
    const reflectors = kinds.map(
      (kind) =>
        new Reflector({
          kubeConfig,
          kind: kind.record === 'Policy' ? `${kind.kind}.${kind.apiVersion.split('/')[0] ?? ''}` : kind.kind,
          path: kind.path,
          log,
          registry,
          ...(deps.now === undefined ? {} : { now: deps.now }),
          // each object becomes its record as it is read: a list of 10k pods is never held as Pod objects
          transform: (object) => view.prepare(kind, object),
          consumer: {
            replace: (items) => {
              view.replace(kind, items);
              if (!listed.has(kind)) {
                listed.add(kind);
                if (listed.size === kinds.length) log.info({ records: changes.size, version: changes.version }, 'cluster listed; streaming to agents');
              }
            },
            added: (object) => view.upsert(kind, object),
            modified: (object) => view.upsert(kind, object),
            deleted: (object) => view.delete(kind, object),
          },
        }),
    );
    const synced = () => listed.size === kinds.length;
    const stream = new StreamServer({
      changes,
      keyPem,
      certChainPem,
      authenticate: cachedAuthenticator(tokenReviewer(new KubeApi(kubeConfig), STREAM_TOKEN_AUDIENCE)),
      synced,
      allowedUsers: config.streamUsers,
      host: config.listenHost,
      port: config.ports.stream,
      log,
    });
    // Ready once every kind is listed, and from then on: a failing watch (an RBAC change, an overloaded API server)
    // hits both replicas alike, and taking both out of the Service would leave a restarted agent with no state at
    // all. How long each kind has failed is a metric instead (ambit_k8s_watch_failing_seconds).
    const readiness = (): Readiness =>
      synced() ? { ready: true } : { ready: false, reason: `not yet listed: ${kinds.filter((kind) => !listed.has(kind)).map((kind) => kind.kind).join(', ')}` };
    const statusServers = [createStatusServer({ registry }), createStatusServer({ readiness })];
    const streamPort = await stream.listen();
    try {
      await Promise.all(
        statusServers.map(
          (server, index) =>
            new Promise<void>((resolve, reject) => {
              server.once('error', reject);
              server.listen(index === 0 ? config.ports.metrics : config.ports.readiness, config.listenHost, () => resolve());
            }),
        ),
      );
    } catch (err) {
      // nothing half-started stays behind: the stream and whichever status server did bind
      await stream.close();
      for (const server of statusServers) if (server.listening) server.close();
      throw err;
    }
    for (const reflector of reflectors) reflector.start();
    log.info({ port: streamPort, kinds: kinds.length, api: new KubeApi(kubeConfig).server }, 'controller started');
    return new Controller(reflectors, stream, statusServers, changes, log, streamPort, readiness);
  }

  get readiness(): Readiness {
    return this.#readiness();
  }

  async close(): Promise<void> {
    await Promise.all(this.#reflectors.map((reflector) => reflector.stop()));
    await this.#stream.close();
    await Promise.all(this.#statusServers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    this.#log.info('controller stopped');
  }
}
