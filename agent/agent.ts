import type http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { Counter } from 'prom-client';
import { CNI_SOCKET_NAME } from '../core/cni/index.js';
import { LocalSource, WorkloadStore } from '../core/discovery/index.js';
import { KubernetesSource } from './kubernetes-source.js';

/** Where the store's cluster state comes from: a local folder, or the controller and the agent's own watch. */
interface ClusterSource {
  close(): Promise<void>;
  lastErrors(): readonly unknown[];
}
import { AmbitError, isAmbitError } from '../core/errors/index.js';
import { HboneClient, HboneServer, SecureContextCache } from '../core/hbone/index.js';
import { CertStore, registerCertExpiryGauge, sniForIdentity } from '../core/identity/index.js';
import { accessLogger, createLogger, registerLogMetrics, StdoutDestination, type LogDrops, type Logger } from '../core/log/index.js';
import { createRegistry, createStatusServer, type Readiness, type Registry } from '../core/metrics/index.js';
import { UNINSTALL_ANNOTATION } from '../core/enrollment/index.js';
import { PolicyStore } from '../core/policy/index.js';
import { ambitVersion } from '../core/version/index.js';
import { originalDestination as addonOriginalDestination } from '../core/sockopt/index.js';
import { CniHandler } from './cni-handler.js';
import { refusalMessage } from './authorize.js';
import { CniServer } from './cni-server.js';
import { ConnectionRegistry } from './connections.js';
import { AGENT_STARTED_LOG, type AgentConfig } from './config.js';
import { runCommand } from './exec.js';
import { AGENT_STATUS_SCHEMA, type AgentStatus } from './status.js';
import { EarlyDataBudget } from './early-data.js';
import { handleHboneConnect, handlePlaintextInbound } from './inbound.js';
import type { ProxyInputs } from './inputs.js';
import { openKubernetesIdentity, openLocalIdentity, type MeshIdentity } from './mesh-identity.js';
import { startMemoryRelease } from './memory.js';
import { handleOutbound } from './outbound.js';
import { checkUpstreamSource, UpstreamConnector } from './proxy.js';
import { addressFamily, RedirectRules, type IptablesBackend, type PodInterfaces } from './rules/index.js';
import { AgentTelemetry } from './telemetry.js';
import type { Address, Revalidation } from './types.js';

/** How often the telemetry looks for the series of workloads that are gone (it keeps them SERIES_RETENTION_MS). */
const SERIES_PRUNE_INTERVAL_MS = 60_000;

export interface AgentDependencies {
  log?: Logger;
  /** The destination of `log`, when it may drop lines: the agent exports how many it dropped. */
  logDrops?: LogDrops;
  /** In-process tests inject the original destination instead of reading SO_ORIGINAL_DST. */
  originalDestination?: (socket: net.Socket) => Address;
}

function listen(server: net.Server | http.Server, port: number, host: string, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(new AmbitError('LISTEN_FAILED', `cannot listen on ${host}:${port} (${what}): ${err.message}; is another agent running on this node?`, { cause: err }));
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

function closeServer(server: net.Server | http.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** A cancelled uninstall whose rules could not be put back tries again after this long. */
const CANCEL_RETRY_MS = 5_000;

/**
 * The node agent: capture listeners (15001 outbound, 15006 plaintext inbound), the HBONE server (15008), metrics
 * (15020) and readiness (15021), the redirect rules, and the certificates of the node's enrolled workloads. It
 * reports ready only once every listener is bound and the rules match the store after its first full sync
 * (`readiness`).
 */
export class Agent {
  readonly config: AgentConfig;
  readonly registry: Registry;
  readonly store: WorkloadStore;
  readonly nodeIp: string;
  readonly #log: Logger;
  readonly #source: ClusterSource;
  readonly #identity: MeshIdentity;
  readonly #certs: CertStore;
  readonly #hboneClient: HboneClient;
  readonly #hboneServer: HboneServer;
  readonly #servers: Array<net.Server | http.Server> = [];
  readonly #sockets = new Set<net.Socket>();
  readonly #rules: RedirectRules | undefined;
  readonly #sniTable = new Map<string, string>();
  readonly #cniHandler: CniHandler | undefined;
  readonly #connections = new ConnectionRegistry<Revalidation>({
    isDenied: (answer) => answer.kind === 'gone' || answer.decision.decision === 'DENY',
    onRevoked: (answers) => this.#reportRevoked(answers),
  });
  readonly policies: PolicyStore;
  readonly #telemetry: AgentTelemetry;
  /** The local enrolled IPs as of the last reconcile: the ones that drop out lose their carried connections. */
  #enrolledIps = new Set<string>();
  /** Addresses of pods CNI ADD has just enrolled, until the next capture-set sync: no connections of theirs to end. */
  #createdAtAdd = new Set<string>();
  #cniServer: CniServer | undefined;
  /** Set by an uninstall over the CNI socket: the rules are going and must not come back (until a cancel). */
  #uninstalled = false;
  /** `ambit uninstall`'s marker that uninstall was for; undefined for `ambit cni uninstall`, which is for good. */
  #uninstalledFor: string | undefined;
  /** The uninstall finished (rules, ipsets and files removed) while this marker was set (undefined: none was). */
  #uninstallDone: { readonly for: string | undefined } | undefined;
  /** The last install or repair of the rules, for /status. */
  #rulesCheck: { at: Date; error?: string } | undefined;
  /** The backend the node's rules were last found in, for /status. */
  #nodeBackend: IptablesBackend | undefined;
  #reconciling: Promise<void> = Promise.resolve();
  #stopMemoryRelease: (() => void) | undefined;
  #pruneTimer: NodeJS.Timeout | undefined;
  #resyncTimer: NodeJS.Timeout | undefined;
  /** start() has finished: every listener bound, the rules installed, the first reconcile done, the CNI socket open. */
  #started = false;
  /** A reconcile on the store's first full sync has finished: the capture set matches the cluster, removals included. */
  #fullyReconciled = false;
  #closed = false;
  /** A revalidation waits for the end of this tick's changes (#revalidate). */
  #revalidationQueued = false;

  private constructor(parts: {
    config: AgentConfig;
    log: Logger;
    registry: Registry;
    store: WorkloadStore;
    source: ClusterSource;
    identity: MeshIdentity;
    nodeIp: string;
    certs: CertStore;
    hboneClient: HboneClient;
    hboneServer: HboneServer;
    rules: RedirectRules | undefined;
    policies: PolicyStore;
    telemetry: AgentTelemetry;
  }) {
    this.policies = parts.policies;
    this.#telemetry = parts.telemetry;
    this.config = parts.config;
    this.#log = parts.log;
    this.registry = parts.registry;
    this.store = parts.store;
    this.#source = parts.source;
    this.#identity = parts.identity;
    this.nodeIp = parts.nodeIp;
    this.#certs = parts.certs;
    this.#hboneClient = parts.hboneClient;
    this.#hboneServer = parts.hboneServer;
    this.#rules = parts.rules;
    const { runDir, stateDir } = parts.config;
    this.#cniHandler =
      runDir === undefined || stateDir === undefined
        ? undefined
        : new CniHandler({
            store: parts.store,
            nodeName: parts.config.nodeName,
            rootNamespace: parts.config.rootNamespace,
            runDir,
            stateDir,
            reconcileNow: () => this.#reconcileNow(),
            podCreated: (ips) => {
              for (const ip of ips) this.#createdAtAdd.add(ip);
            },
            ruleInPlace: async (ip) => {
              const result = await runCommand(['ipset', 'test', addressFamily(ip).setName, ip]).then(
                () => true,
                () => false,
              );
              return result && !this.#uninstalled;
            },
            uninstall: (options) => this.#uninstall(options),
            uninstallRequested: () => {
              if (this.#source instanceof KubernetesSource && !this.#source.uninstallMarkerRead) return undefined;
              // a cancel still queued: the plugin stays out until the rules are back
              return this.#uninstallMarker() !== undefined || this.#cancelPending();
            },
            uninstallState: () => (this.#cancelPending() ? 'cancelling' : this.#uninstalled ? 'done' : 'none'),
            ready: () => this.ready,
            log: parts.log.child({ component: 'cni' }),
          });
  }

  /**
   * Loads the cluster state and the mesh's trust (local mode's CA folder, or the trust bundle the controller publishes),
   * binds every listener, installs the rules; then the agent serves, and is ready once the store has had its first
   * full sync (`readiness`). In kubernetes mode it does not wait for its workloads' certificates: the controller signs
   * them, and may be away.
   */
  static async start(config: AgentConfig, deps: AgentDependencies = {}): Promise<Agent> {
    checkUpstreamSource(config);
    const ownOutput = deps.log === undefined ? new StdoutDestination() : undefined;
    const log = deps.log ?? createLogger({ level: config.logLevel, name: 'ambit-agent', destination: ownOutput });
    const registry = createRegistry();
    // The logger is made before the registry (and, by `ambit agent`, before the agent): its drops are counted here.
    const logDrops = ownOutput ?? deps.logDrops;
    if (logDrops) registerLogMetrics(registry, logDrops);
    const telemetry = new AgentTelemetry(registry, accessLogger(log));
    const store = new WorkloadStore({ trustDomain: config.trustDomain, nodeName: config.nodeName, rootNamespace: config.rootNamespace, log: log.child({ component: 'store' }) });
    const policies = new PolicyStore({ rootNamespace: config.rootNamespace, istioApi: config.istioApi, log: log.child({ component: 'policy' }) });
    // Local mode reads its folder first (a missing folder is the first thing to say); kubernetes mode opens the trust
    // bundle first, since it is what the controller's certificate is checked against.
    let source: ClusterSource;
    let identity: MeshIdentity;
    if (config.kubernetes !== undefined) {
      identity = await openKubernetesIdentity(config.kubernetes, log);
      try {
        source = await KubernetesSource.start({
          settings: config.kubernetes,
          nodeName: config.nodeName,
          rootNamespace: config.rootNamespace,
          trustDomain: config.trustDomain,
          store,
          policies: policies.collection(),
          trustBundle: identity.trustBundle,
          registry,
          log: log.child({ component: 'kubernetes-source' }),
        });
      } catch (err) {
        await identity.close();
        throw err;
      }
    } else {
      const local = new LocalSource({ dir: config.configDir, store, log: log.child({ component: 'local-source' }), collections: [policies.collection()] });
      await local.start();
      source = local;
      if (config.nodeIp === undefined && store.nodeIp(config.nodeName) === undefined) {
        await source.close();
        throw new AmbitError('NODE_IP_UNKNOWN', `node ${config.nodeName} has no address: add a Node object with status.addresses to ${config.configDir}, or pass --node-ip`);
      }
      try {
        identity = await openLocalIdentity(config, log);
      } catch (err) {
        await source.close();
        throw err;
      }
    }
    // kubernetes mode requires --node-ip (config.ts); local mode checked it above
    const nodeIp = (config.nodeIp ?? store.nodeIp(config.nodeName)) as string;
    const { trustBundle } = identity;
    const certs = new CertStore({ issuer: identity.issuer, log });
    const contexts = new SecureContextCache(trustBundle);
    const hboneClient = new HboneClient({
      contextFor: async (identity) => contexts.get(await certs.get(identity)),
      sniFor: sniForIdentity,
      keepaliveIntervalMs: config.hbone.keepaliveIntervalMs,
      keepaliveTimeoutMs: config.hbone.keepaliveTimeoutMs,
      responseTimeoutMs: config.hbone.responseTimeoutMs,
      log: log.child({ component: 'hbone-client' }),
    });

    // eslint-disable-next-line prefer-const -- the server's callbacks need the agent, which needs the server
    let agent: Agent;
    const hboneServer = new HboneServer({
      host: config.listenHost,
      port: config.ports.hbone,
      trustBundle,
      resolveSni: async (servername) => {
        const identity = agent.#sniTable.get(servername);
        if (!identity) return undefined;
        return { identity, context: contexts.get(await certs.get(identity)) };
      },
      onConnect: (stream, request) => handleHboneConnect(inputs, stream, request),
      onRefused: (reason, detail) => telemetry.refused('hbone', reason, { hbone: detail.remoteAddress }, detail.message),
      onSessionClosed: (reason, detail) => telemetry.hboneSessionClosed(reason, detail),
      maxConnections: config.hbone.maxConnections,
      maxConnectionsPerSource: config.hbone.maxConnectionsPerSource,
      keepaliveTimeoutMs: config.hbone.keepaliveTimeoutMs,
      log: log.child({ component: 'hbone-server' }),
    });
    const rules = config.manageRules
      ? new RedirectRules({
          nodeIp,
          outboundPort: config.ports.outbound,
          inboundPort: config.ports.inboundPlaintext,
          backend: config.iptablesBackend,
          log,
        })
      : undefined;
    agent = new Agent({ config, log, registry, store, source, identity, nodeIp, certs, hboneClient, hboneServer, rules, policies, telemetry });
    // New streams go on sessions whose handshake used the current roots and leaves; open streams carry on, for the
    // grace only when their server chains to no root left.
    trustBundle.on('change', () => hboneClient.retireSessions(trustBundle.roots()));
    identity.onSignerChange((signer) => {
      void certs.renewAll().then(() => {
        hboneClient.retireSessions();
        log.info({ ...signer, identities: certs.identities().length }, 'workload certificates re-issued by the new signer');
      });
    });
    const inputs: ProxyInputs = {
      config,
      store,
      nodeIp,
      hbone: hboneClient,
      telemetry,
      outbound: { store, nodeName: config.nodeName, nodeIp, agentPorts: Object.values(config.ports), hbonePort: config.ports.hbone },
      log,
      connections: agent.#connections,
      policies,
      earlyData: new EarlyDataBudget(registry),
      upstream: new UpstreamConnector({ source: config.upstreamSource, nodeIp, registry }),
      originalDestination:
        deps.originalDestination ??
        ((socket) => {
          const { address, port } = addonOriginalDestination(socket);
          return { host: address, port };
        }),
    };
    agent.#registerCertMetrics();
    agent.#watchUninstall();
    try {
      await agent.#bind(inputs);
      if (rules) {
        await rules.install();
        agent.#rulesCheck = { at: new Date() };
        agent.#nodeBackend = rules.backend;
      }
      // Pods the CNI reported before a restart, whose status may not carry their IPs yet, stay captured.
      const restored = await agent.#cniHandler?.restore();
      if (restored) log.info({ pods: restored }, 'restored CNI-reported pod networks');
      // The first reconcile must succeed: an agent that reports ready without its pods' rules would let their
      // traffic leave in plaintext. Changes that arrive meanwhile queue behind it.
      store.on('change', () => agent.#scheduleReconcile());
      // A new policy, or a workload whose labels now match a different one, applies to open connections too.
      policies.on('change', () => agent.#revalidate());
      store.on('change', () => agent.#revalidate());
      agent.#reconciling = agent.#reconcile();
      await agent.#reconciling;
      // Only now can ADD be answered truthfully: until here the plugin finds no socket and fails enrolled pods.
      if (config.runDir !== undefined && agent.#cniHandler) {
        agent.#cniServer = await CniServer.listen({
          path: join(config.runDir, CNI_SOCKET_NAME),
          handle: (request) => agent.#cniHandler!.handle(request),
          log: log.child({ component: 'cni' }),
        });
      }
    } catch (err) {
      await agent.close();
      throw err;
    }
    agent.#stopMemoryRelease = startMemoryRelease(log);
    agent.#startRulesResync();
    agent.#startSeriesPrune();
    agent.#started = true;
    const facts = { node: config.nodeName, nodeIp, ports: config.ports, rules: rules ? rules.backend : 'unmanaged', cniSocket: agent.#cniServer?.path ?? null };
    if (agent.#fullyReconciled) log.info(facts, AGENT_STARTED_LOG.ready);
    else log.warn({ ...facts, problems: source.lastErrors() }, AGENT_STARTED_LOG.unsynced);
    return agent;
  }

  /**
   * Readiness (`ready`, `/healthz/ready` on 15021): started, and reconciled on the store's first full sync. Before
   * that sync the agent serves (it captures, carries and refuses traffic, and answers the CNI plugin, so the node's
   * pods keep starting and the mesh's own always do) but is not ready: its capture set still holds the pods it found
   * and has not read since (kept, so that they are not released uncaptured), and pods of namespaces it has not read
   * wait. Saying so is the truth an operator needs (`kubectl get pods` shows it, a DaemonSet rollout stops at the
   * node), and stops nothing on the node: the CNI plugin's STATUS does not ask the agent.
   */
  get readiness(): Readiness {
    if (this.#closed) return { ready: false, reason: 'stopping' };
    if (!this.#started) return { ready: false, reason: 'starting' };
    if (!this.#fullyReconciled) return { ready: false, reason: 'the cluster state has not been read completely yet (first full sync): see the config folder problems in the log' };
    return { ready: true };
  }

  get ready(): boolean {
    return this.readiness.ready;
  }

  /** What `GET /status` on the metrics port answers (agent/status.ts): names, identities and times, nothing secret. */
  status(): AgentStatus {
    const readiness = this.readiness;
    const notAfter = new Map(this.#certs.expirations().map((entry) => [entry.spiffeId, entry.notAfter.toISOString()]));
    const check = this.#rulesCheck;
    const installer = this.#cniHandler?.installerReport();
    return {
      schema: AGENT_STATUS_SCHEMA,
      component: 'agent',
      version: ambitVersion(),
      node: this.config.nodeName,
      mode: this.config.mode,
      ready: readiness.ready,
      ...(readiness.ready ? {} : { reason: readiness.reason }),
      rules: {
        enabled: this.#rules !== undefined,
        backend: this.#rules?.backend ?? null,
        nodeBackend: this.#nodeBackend ?? null,
        checkedAt: check?.at.toISOString() ?? null,
        ok: this.#rules === undefined || (check !== undefined && check.error === undefined),
        ...(check?.error === undefined ? {} : { error: check.error }),
        uninstalled: this.#uninstalled,
      },
      cni: { chainedIn: installer?.chainedIn ?? null, reportedAt: installer?.at.toISOString() ?? null },
      uninstall: {
        requested: this.#uninstallMarker() !== undefined,
        marker: this.#uninstallMarker() ?? null,
        // done for the marker set now: a run of ambit uninstall never counts a node done by an earlier one
        done: this.#uninstallDone !== undefined && this.#uninstallDone.for === this.#uninstallMarker(),
      },
      workloads: this.store
        .localWorkloads()
        .filter((workload) => workload.enrolled)
        .map((workload) => ({ namespace: workload.namespace, name: workload.name, identity: workload.identity, ips: workload.ips, certificateNotAfter: notAfter.get(workload.identity) ?? null })),
      roots: this.#identity.trustBundle.roots().map((root) => ({ fingerprint: root.fingerprint256, notAfter: new Date(root.validTo).toISOString() })),
    };
  }

  /**
   * Stops accepting and closes open connections. The redirect rules stay unless `removeRules` (default: the
   * config's removeRulesOnExit): while the agent is away, captured connections are refused, never sent in plaintext.
   */
  async close(options: { removeRules?: boolean } = {}): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopMemoryRelease?.();
    clearInterval(this.#resyncTimer);
    clearInterval(this.#pruneTimer);
    await this.#cniServer?.close();
    await this.#source.close();
    await this.#reconciling.catch(() => undefined);
    const closing = this.#servers.map(closeServer);
    for (const socket of this.#sockets) socket.destroy();
    closing.push(this.#hboneServer.close());
    this.#hboneClient.close();
    this.#certs.close();
    // after the store, which then keeps no outcome of a request the closing issuer ends
    closing.push(this.#identity.close());
    await Promise.all(closing);
    const removeRules = options.removeRules ?? this.config.removeRulesOnExit;
    if (this.#rules && removeRules && !this.#uninstalled) await this.#rules.remove();
    this.#log.info({ rulesRemoved: Boolean(this.#rules && removeRules) }, 'agent stopped');
  }

  /** The metrics of workloads that left the cluster go, after SERIES_RETENTION_MS (telemetry.prune). */
  #startSeriesPrune(): void {
    this.#pruneTimer = setInterval(() => {
      const workloads = new Set(this.store.workloads().map((w) => `${w.namespace}/${w.workloadName}`));
      this.#telemetry.prune((namespace, workload) => workloads.has(`${namespace}/${workload}`));
    }, SERIES_PRUNE_INTERVAL_MS);
    this.#pruneTimer.unref();
  }

  /**
   * Another program (a CNI, kube-proxy, an operator) may flush or reorder the node's nat table or the ipset. The
   * rules are checked on an interval and repaired, through the same queue as store-driven reconciles.
   */
  #startRulesResync(): void {
    const rules = this.#rules;
    clearInterval(this.#resyncTimer);
    if (!rules || this.config.rulesResyncSeconds === 0) return;
    this.#resyncTimer = setInterval(() => {
      this.#reconciling = this.#reconciling.then(async () => {
        if (!this.#closed && !this.#uninstalled) await this.#repairRules(rules);
      });
    }, this.config.rulesResyncSeconds * 1000);
    this.#resyncTimer.unref();
  }

  /** Installs or repairs the rules and the capture set, in the queue; /status shows the outcome (an error, logged). */
  async #repairRules(rules: RedirectRules): Promise<boolean> {
    try {
      this.#nodeBackend = await rules.detectNodeBackend().catch(() => this.#nodeBackend);
      await rules.install();
      await this.#syncCaptureSet(rules, { force: true });
      this.#rulesCheck = { at: new Date() };
      return true;
    } catch (err) {
      this.#rulesCheck = { at: new Date(), error: err instanceof Error ? err.message : String(err) };
      this.#log.error({ err }, 'installing or repairing the redirect rules failed; will retry');
      return false;
    }
  }

  async #bind(inputs: ProxyInputs): Promise<void> {
    const { config } = this;
    const track = (socket: net.Socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    };
    const outbound = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
      track(socket);
      handleOutbound(inputs, socket);
    });
    const plaintext = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
      track(socket);
      handlePlaintextInbound(inputs, socket);
    });
    const metrics = createStatusServer({ registry: this.registry, readiness: () => this.readiness, status: () => this.status() });
    const readiness = createStatusServer({ readiness: () => this.readiness });
    for (const [server, port, what] of [
      [outbound, config.ports.outbound, 'outbound capture'],
      [plaintext, config.ports.inboundPlaintext, 'inbound plaintext capture'],
      [metrics, config.ports.metrics, 'metrics'],
      [readiness, config.ports.readiness, 'readiness'],
    ] as const) {
      await listen(server, port, config.listenHost, what);
      this.#servers.push(server);
    }
    await this.#hboneServer.listen();
  }

  /** Store changes arrive in bursts; reconciles run one at a time, each against the latest store. */
  #scheduleReconcile(): void {
    void this.#reconcileNow().catch(() => undefined);
  }

  /** Queues a reconcile and resolves (or rejects) with its outcome: CNI ADD answers only after its rules exist. */
  #reconcileNow(): Promise<void> {
    const run = this.#reconciling.then(() => this.#reconcile());
    this.#reconciling = run.catch((err: unknown) =>
      this.#log.error({ err }, 'reconciling redirect rules and certificates failed; will retry on the next change'),
    );
    return run;
  }

  /**
   * Closes the open connections that the current policies, on the workloads as they are now, no longer allow, each
   * logged and counted with its policy; and those whose pod is gone (another pod has its address).
   */
  #revalidate(): void {
    // One revalidation per tick, after every change of that tick: a local reload that relabels a workload and
    // changes the policy that names it updates the policies and then the store, and a connection judged in between
    // (new policy, old labels) would be closed by a rule that no longer stands. In Kubernetes mode the two are
    // separate objects and separate deltas, judged together only when they arrive in one read; between two reads
    // the cluster itself was in that state.
    if (this.#closed || this.#revalidationQueued) return;
    this.#revalidationQueued = true;
    queueMicrotask(() => {
      this.#revalidationQueued = false;
      if (this.#closed) return;
      try {
        // Also with no connection tracked: the revalidation counts, for those still connecting (ConnectionRegistry.track).
        this.#connections.revalidate();
      } catch (err) {
        this.#log.error({ err }, 'revalidating open connections failed');
      }
    });
  }

  /** Each connection a revalidation closed, logged and counted with the policy that closed it. */
  #reportRevoked(answers: readonly Revalidation[]): void {
    for (const answer of answers) {
      const { record } = answer;
      if (answer.kind === 'gone') {
        this.#log.info({ path: record.path, src: record.source, dst: record.destination, reason: 'workload_gone', detail: answer.message }, 'open connection closed: its pod is gone');
        continue;
      }
      const { decision } = answer;
      const policy = { policy: decision.policy, rule: decision.rule };
      this.#telemetry.revoked(record, decision.reason, policy, `open connection closed: ${refusalMessage(decision)}`);
    }
  }

  /** `ambit uninstall`'s marker on the agents' ServiceAccount, undefined when none (or not in Kubernetes mode). */
  #uninstallMarker(): string | undefined {
    return this.#source instanceof KubernetesSource ? this.#source.uninstallMarker : undefined;
  }

  /** `ambit uninstall` done here, its marker since removed, and the cancel not run yet. */
  #cancelPending(): boolean {
    return this.#uninstalled && this.#uninstalledFor !== undefined && this.#uninstallMarker() === undefined;
  }

  #watchUninstall(): void {
    const source = this.#source;
    if (!(source instanceof KubernetesSource)) return;
    const changed = (marker: string | undefined) => {
      if (marker !== undefined) {
        this.#log.warn({ namespace: this.config.rootNamespace, annotation: UNINSTALL_ANNOTATION, marker }, 'uninstall requested: the CNI installer unchains the plugin, then every rule, ipset and file goes');
        return;
      }
      this.#log.warn('uninstall cancelled (the annotation is gone): the rules come back, the installer chains the plugin again');
      // in the queue: after an uninstall that took it first, never beside one
      this.#reconciling = this.#reconciling.then(() => this.#cancelUninstall());
    };
    if (source.uninstallMarker !== undefined) changed(source.uninstallMarker);
    source.on('uninstall', changed);
  }

  /** A cancelled `ambit uninstall`: a node that was done captures again (rules, the enrolled set, the enrollment file). */
  async #cancelUninstall(): Promise<void> {
    // `ambit cni uninstall` is for good; and the marker may be back by the time this runs
    if (!this.#uninstalled || this.#uninstalledFor === undefined || this.#uninstallMarker() !== undefined || this.#closed) return;
    // the rules first, still "uninstalled" meanwhile: the installer keeps the plugin out and ADD waits until they are
    // in place; a repair that fails keeps it so, and is tried again
    if (this.#rules && !(await this.#repairRules(this.#rules))) {
      setTimeout(() => {
        this.#reconciling = this.#reconciling.then(() => this.#cancelUninstall());
      }, CANCEL_RETRY_MS).unref();
      return;
    }
    this.#uninstalled = false;
    this.#uninstalledFor = undefined;
    this.#uninstallDone = undefined;
    if (this.#rules && !this.#closed) this.#startRulesResync();
    this.#scheduleReconcile();
  }

  /**
   * An uninstall over the CNI socket: every rule and ipset goes, then the files, and they stay gone. In the queue
   * of rule changes, so that it and a cancel run one after the other; `ifMarked` (the installer finishing
   * `ambit uninstall`) refuses once the marker is gone, as a cancel that came first says.
   */
  #uninstall(options: { ifMarked: boolean; removeFiles: () => Promise<void> }): Promise<string | undefined> {
    const run = this.#reconciling.then(async (): Promise<string | undefined> => {
      const marker = this.#uninstallMarker();
      if (options.ifMarked && marker === undefined) return 'the mesh is no longer marked as uninstalling (the uninstall was cancelled): the rules stay';
      // the installer asks again on every re-check while the mesh is marked: once done, nothing more to remove
      if (options.ifMarked && this.#uninstallDone !== undefined && this.#uninstallDone.for === marker) return undefined;
      this.#uninstalled = true;
      this.#uninstalledFor = options.ifMarked ? marker : undefined;
      this.#uninstallDone = undefined;
      clearInterval(this.#resyncTimer);
      try {
        if (this.#rules) await this.#rules.remove();
        await options.removeFiles();
      } catch (err) {
        // half removed: /status says so, and the installer asks again
        this.#rulesCheck = { at: new Date(), error: `removing the rules failed: ${err instanceof Error ? err.message : String(err)}` };
        throw err;
      }
      this.#rulesCheck = { at: new Date() };
      this.#uninstallDone = { for: marker };
      return undefined;
    });
    this.#reconciling = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /**
   * Brings the rules and certificates to the store. Until the store's first full sync, an object it lacks may just
   * not have been read yet (a config file that has never parsed): the reconcile then only adds, keeping every pod in
   * the capture set (those the agent found there at start, CNI-reported ones included) and every carried connection;
   * removals, and the closing of connections of pods that left, wait for the first reconcile after the sync.
   */
  async #reconcile(): Promise<void> {
    if (this.#closed) return;
    const synced = this.store.synced;
    if (synced && !this.#fullyReconciled) await this.#cniHandler?.forgetNetworksOfGonePods();
    const local = this.store.localWorkloads().filter((w) => w.enrolled);
    const identities = new Set(local.map((w) => w.identity));
    this.#sniTable.clear();
    for (const identity of identities) this.#sniTable.set(sniForIdentity(identity), identity);
    this.#hboneServer.retainIdentities(identities);
    for (const identity of this.#certs.identities()) if (!identities.has(identity)) this.#certs.forget(identity);
    // Rules first: capture (or release) is what a relabel or a CNI ADD waits for, and a new key can take a good
    // part of a second. A connection that arrives before its pod's certificate waits for it, it does not fail.
    const enrolled = new Set(this.#localEnrolledIps());
    if (this.#rules && !this.#uninstalled) await this.#syncCaptureSet(this.#rules);
    if (!this.#uninstalled) await this.#cniHandler?.writeEnrollmentSnapshot();
    // Pods that left the mesh (relabelled, opted out, deleted): the mesh stops carrying their connections.
    let left: string[] = [];
    if (synced) {
      left = [...this.#enrolledIps].filter((ip) => !enrolled.has(ip));
      this.#enrolledIps = enrolled;
    } else {
      for (const ip of enrolled) this.#enrolledIps.add(ip);
    }
    const closed = left.length > 0 ? this.#connections.closeFor(left) : 0;
    if (closed > 0) this.#log.info({ pods: left, connections: closed }, 'closed the connections of pods that left the mesh');
    // Asked for now, ahead of the pods' first connections; a failure is logged and retried with backoff by the store.
    const issuing = Promise.all([...identities].map((identity) => this.#certs.get(identity)));
    // Local mode's agent starts only with every certificate: its CA is in the process, and a failure is a broken
    // folder. In kubernetes mode the controller signs, and the agent starts and serves while it is away. Later,
    // issuing must not hold up the next relabel or CNI ADD queued behind this reconcile.
    if (!this.#started && this.config.kubernetes === undefined) await issuing;
    else issuing.catch(() => undefined);
    if (synced && !this.#fullyReconciled) {
      this.#fullyReconciled = true;
      // start() says it itself when the sync came before it finished.
      if (this.#started) this.#log.info({ node: this.config.nodeName, afterFirstSync: true }, AGENT_STARTED_LOG.ready);
    }
  }

  /**
   * The one place the pod sets are written: IPv4 addresses are captured, IPv6 ones refused (the mesh does not carry
   * IPv6 yet); only additions until the store's first full sync (see #reconcile). A pod that joins them other than by
   * CNI ADD (a relabel, a pod older than the agent) has its open connections ended, so that none goes on uncaptured.
   */
  #syncCaptureSet(rules: RedirectRules, options: { force?: boolean } = {}): Promise<boolean> {
    const ips = this.#localEnrolledIps();
    // Read with the addresses, in one turn: an ADD marks its pod and records its network in one turn too. A mark
    // this sync does not use is dropped, so that a pod that joins later is never taken for a new one (at worst a
    // new pod's sync ends connections it does not have).
    const listed = new Set(ips);
    const justCreated = [...this.#createdAtAdd].filter((ip) => listed.has(ip));
    this.#createdAtAdd.clear();
    return rules.syncPods(ips, { ...options, addOnly: !this.store.synced, interfaces: this.#podInterfaces(), justCreated });
  }

  #localEnrolledIps(): string[] {
    return [...this.store.localEnrolledIps(4), ...this.store.localEnrolledIps(6)];
  }

  /** The host interfaces CNI ADD reported for each pod address: the rules bind the enrolled ones to them. */
  #podInterfaces(): PodInterfaces[] {
    return this.store.podNetworks().flatMap((network) => (network.hostInterfaces === undefined ? [] : network.ips.map((ip) => ({ ip, hostInterfaces: network.hostInterfaces! }))));
  }

  /**
   * The expiry of every certificate the agent depends on (`ambit check` and alerts read it): its workloads' leaves, each
   * root of the trust bundle, and the signer of the leaves; and the outcome of each certificate request.
   */
  #registerCertMetrics(): void {
    const certs = this.#certs;
    const identity = this.#identity;
    registerCertExpiryGauge(this.registry, () => ({ roots: identity.trustBundle.roots(), issuer: identity.signer(), workloads: certs.expirations() }));
    const requests = new Counter({
      name: 'ambit_cert_requests_total',
      help: 'Workload certificate requests by outcome: ok, refused (by the CA), unavailable (no answer), error (anything else)',
      labelNames: ['outcome'],
      registers: [this.registry],
    });
    for (const outcome of ['ok', 'refused', 'unavailable', 'error']) requests.inc({ outcome }, 0);
    certs.on('rotated', () => requests.inc({ outcome: 'ok' }));
    const failed = (_spiffeId: string, err: Error) => requests.inc({ outcome: requestOutcome(err) });
    certs.on('issue-failed', failed);
    certs.on('renewal-failed', failed);
  }
}


function requestOutcome(err: Error): 'refused' | 'unavailable' | 'error' {
  if (isAmbitError(err, 'CA_REFUSED')) return 'refused';
  if (isAmbitError(err, 'CA_UNAVAILABLE')) return 'unavailable';
  return 'error';
}
