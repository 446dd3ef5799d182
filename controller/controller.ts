import { X509Certificate } from 'node:crypto';
import type http from 'node:http';
import { Counter } from 'prom-client';
import { CA_PATH, CA_SECRET_NAME, CA_TOKEN_AUDIENCE, CertStore, parseTrustBundle, registerCertExpiryGauge, spiffeId, type CertIssuer } from '../core/identity/index.js';
import { AmbitError } from '../core/errors/index.js';
import { KubeApi, loadKubeConfig, Reflector } from '../core/k8s/index.js';
import { silentLogger, type Logger } from '../core/log/index.js';
import { createRegistry, createStatusServer, type Readiness, type Registry } from '../core/metrics/index.js';
import { ClusterView, STREAM_TOKEN_AUDIENCE, watchedKinds, type WatchedKind } from '../core/stream/index.js';
import { CaService } from './ca-service.js';
import { ChangeLog } from './change-log.js';
import type { ControllerConfig } from './config.js';
import { MeshCa } from './mesh-ca.js';
import { PodPlacements } from './placements.js';
import { StreamServer } from './stream-server.js';
import { cachedAuthenticator, tokenReviewer } from './token-review.js';

export interface ControllerDependencies {
  readonly log?: Logger;
  readonly registry?: Registry;
  /** The clock of the reflectors' failure times (milliseconds); tests move one by hand. */
  readonly now?: () => number;
  /** Aborts a start that waits for a signing key (SIGTERM before the CA Secret could be loaded). */
  readonly signal?: AbortSignal;
}

/**
 * `ambit controller`: a reflector per watched kind feeds the cluster view, whose changes the stream serves to the
 * agents. Ready (and streaming) once every kind has been listed; a kind that cannot be listed (a CRD not installed,
 * RBAC missing) keeps it unready, and its reflector says why in the log and retries.
 */
export class Controller {
  readonly #reflectors: Reflector<unknown>[];
  readonly #stream: StreamServer;
  readonly #ca: MeshCa;
  readonly #certs: CertStore;
  readonly #statusServers: http.Server[];
  readonly #log: Logger;
  readonly changes: ChangeLog;
  /** The port the discovery stream listens on (the configured one, or the one the system chose for 0). */
  readonly streamPort: number;

  /** What the readiness port answers: every kind listed, and none failing to watch for more than 2 minutes. */
  readonly #readiness: () => Readiness;

  private constructor(
    reflectors: Reflector<unknown>[],
    ca: MeshCa,
    certs: CertStore,
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
    this.#ca = ca;
    this.#certs = certs;
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
    const api = new KubeApi(kubeConfig);
    const ca = new MeshCa({
      api,
      namespace: config.namespace,
      trustDomain: config.trustDomain,
      holder: config.podName,
      rereadIntervalMs: config.caRereadIntervalMs,
      propagationMs: config.caPropagationMs,
      ttlMs: config.certTtlMs,
      registry,
      log,
    });
    const certs = new CertStore({ issuer: inProcessIssuer(ca, config.certTtlMs), log });
    registerCertExpiryGauge(registry, () => ({
      roots: ca.rootsPem === '' ? [] : parseTrustBundle(ca.rootsPem, 'the published roots'),
      issuer: ca.signer === undefined ? undefined : new X509Certificate(ca.signer.rootPem),
      workloads: certs.expirations(),
    }));
    // The status port first: while there is no signing key (a Secret that does not load, the other replica creating
    // the root), /status and ambit_ca_secret_valid say why. Ready only once the stream serves.
    let parts: { readiness: () => Readiness; details: () => Record<string, unknown> } = {
      readiness: () => ({ ready: false, reason: `no signing key yet: ${ca.status.message}` }),
      details: () => ({}),
    };
    const readiness = (): Readiness => parts.readiness();
    const statusServers = [createStatusServer({ registry }), createStatusServer({ readiness, status: () => ({ ready: readiness().ready, ca: ca.status, ...parts.details() }) })];
    const stopBefore = async (err: unknown): Promise<never> => {
      certs.close();
      await ca.close();
      await Promise.all(statusServers.filter((server) => server.listening).map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
      throw err;
    };
    await listenAll(statusServers, [config.ports.metrics, config.ports.readiness], config.listenHost).catch(stopBefore);
    // the signer, then the controller's own certificate (signed by it, in process): the stream serves with it
    const ownIdentity = spiffeId(config.trustDomain, config.namespace, 'ambit-controller');
    const serving = await ca
      .start(deps.signal)
      .then(() => certs.get(ownIdentity))
      .catch(stopBefore);

    const changes = new ChangeLog();
    const rejected = new Counter({
      name: 'ambit_controller_objects_rejected_total',
      help: 'API objects the controller could not convert (malformed), by kind; each is logged with the field at fault',
      labelNames: ['kind'],
      registers: [registry],
    });
    const placements = new PodPlacements();
    // the CA's (node, service account) index follows the same changes as the log the agents are streamed
    const sink = {
      apply: (batch: Parameters<ChangeLog['apply']>[0]) => {
        placements.apply(batch);
        return changes.apply(batch);
      },
    };
    const view = new ClusterView(sink, { trustDomain: config.trustDomain, log, onRejected: (kind) => rejected.inc({ kind }) });
    const listed = new Set<WatchedKind>();
    const kinds = watchedKinds({ istioApi: config.istioApi });
    const reflectors: Reflector<unknown>[] = kinds.map(
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
    ) as Reflector<unknown>[];
    // the Secret's watch makes a change take effect at once; MeshCa reads it periodically anyway
    const refresh = () => void ca.refresh();
    reflectors.push(
      new Reflector<null>({
        kubeConfig,
        kind: 'Secret',
        path: `/api/v1/namespaces/${config.namespace}/secrets`,
        fieldSelector: `metadata.name=${CA_SECRET_NAME}`,
        log,
        registry,
        transform: () => null,
        consumer: { replace: refresh, added: refresh, modified: refresh, deleted: refresh },
      }) as Reflector<unknown>,
    );
    const synced = () => listed.size === kinds.length;
    const caService = new CaService({
      authenticate: cachedAuthenticator(tokenReviewer(api, CA_TOKEN_AUDIENCE)),
      synced,
      signer: () => ca.signer,
      ttlMs: config.certTtlMs,
      trustDomain: config.trustDomain,
      agentUsers: new Set(config.streamUsers),
      reserved: new Set([ownIdentity]),
      placements,
      registry,
      log,
    });
    const stream = new StreamServer({
      changes,
      keyPem: serving.keyPem,
      certChainPem: serving.certChainPem,
      authenticate: cachedAuthenticator(tokenReviewer(api, STREAM_TOKEN_AUDIENCE)),
      synced,
      allowedUsers: config.streamUsers,
      routes: new Map([[CA_PATH, caService.handle]]),
      host: config.listenHost,
      port: config.ports.stream,
      log,
    });
    // renewed at half life like any leaf; a new signer re-issues it at once
    certs.on('rotated', (_identity, cert) => stream.setCredentials(cert.keyPem, cert.certChainPem));
    ca.on('signer', () => void certs.renewAll());
    const streamPort = await stream.listen().catch(stopBefore);
    // Ready once every kind is listed, and from then on: a failing watch (an RBAC change, an overloaded API server)
    // hits both replicas alike, and taking both out of the Service would leave a restarted agent with no state at
    // all. How long each kind has failed is a metric instead (ambit_k8s_watch_failing_seconds).
    parts = {
      readiness: () => (synced() ? { ready: true } : { ready: false, reason: `not yet listed: ${kinds.filter((kind) => !listed.has(kind)).map((kind) => kind.kind).join(', ')}` }),
      details: () => ({ streams: stream.streams, version: changes.version }),
    };
    for (const reflector of reflectors) reflector.start();
    log.info({ port: streamPort, kinds: kinds.length, api: api.server, identity: ownIdentity, signer: ca.status.signer }, 'controller started');
    return new Controller(reflectors, ca, certs, stream, statusServers, changes, log, streamPort, readiness);
  }

  get readiness(): Readiness {
    return this.#readiness();
  }

  /** The mesh CA's state: whether the Secret's last read was accepted, and the signer and roots in use. */
  get ca(): MeshCa['status'] {
    return this.#ca.status;
  }

  async close(): Promise<void> {
    await Promise.all(this.#reflectors.map((reflector) => reflector.stop()));
    await this.#stream.close();
    this.#certs.close();
    await this.#ca.close();
    await Promise.all(this.#statusServers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    this.#log.info('controller stopped');
  }
}

/** The controller's own certificates, signed in process by the signer in use (never through its endpoint). */
function inProcessIssuer(ca: MeshCa, ttlMs: number): CertIssuer {
  return {
    sign: async (csrPem, identity) => {
      const signer = ca.signer;
      if (signer === undefined) throw new AmbitError('CA_NO_SIGNER', 'the controller holds no signing key');
      return { certChainPem: await signer.sign(csrPem, { spiffeId: identity, ttlMs }) };
    },
  };
}

/** Listens on each server's port; rejects at the first that cannot bind (the others may be listening). */
function listenAll(servers: readonly http.Server[], ports: readonly number[], host: string): Promise<void> {
  return Promise.all(
    servers.map(
      (server, index) =>
        new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(ports[index], host, () => resolve());
        }),
    ),
  ).then(() => undefined);
}
