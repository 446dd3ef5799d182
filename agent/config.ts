import net from 'node:net';
import { DEFAULT_AGENT_RUN_DIR, DEFAULT_AGENT_STATE_DIR } from '../core/cni/index.js';
import { HBONE_KEEPALIVE_INTERVAL_MS, HBONE_KEEPALIVE_TIMEOUT_MS, HBONE_MAX_CONNECTIONS, HBONE_MAX_CONNECTIONS_PER_SOURCE, HBONE_RESPONSE_TIMEOUT_MS } from '../core/hbone/index.js';
import { DEFAULT_ROOT_NAMESPACE } from '../core/policy/index.js';
import { parseFlags, usageError as commandUsageError, type AmbitError } from '../core/errors/index.js';
import { LOG_LEVELS, type LogLevel } from '../core/log/index.js';
import { parseSpiffeId, spiffeId, trustDomainFlag } from '../core/identity/index.js';
import { isDnsLabel } from '../core/names/index.js';

/** The controller's Service, as the manifests name it. */
export const DEFAULT_CONTROLLER_URL = 'https://ambit-controller.ambit-system.svc:15012';
/** Where the DaemonSet mounts the projected token for the controller. */
export const DEFAULT_TOKEN_FILE = '/var/run/secrets/ambit/controller/token';
/** Where the DaemonSet mounts the trust bundle ConfigMap the controller publishes (core/identity's TrustBundleFolder). */
export const DEFAULT_TRUST_BUNDLE_DIR = '/var/run/secrets/ambit/trust-bundle';
/** Where the DaemonSet mounts the projected token for the controller's CA (audience ambit-ca). */
export const DEFAULT_CA_TOKEN_FILE = '/var/run/secrets/ambit/ca-token/token';

/** The agent's ports (DESIGN.md, "Ports"); each can be moved for tests that run several agents in one namespace. */
export const DEFAULT_PORTS = Object.freeze({
  outbound: 15001,
  inboundPlaintext: 15006,
  hbone: 15008,
  metrics: 15020,
  readiness: 15021,
});

/**
 * How the agent process runs, wherever it is started: V8 and glibc set for many small short-lived connections on
 * cores shared with the node's pods, memory given back by the agent itself (memory.ts). Why each: README.md,
 * "How the agent process runs".
 */
export const AGENT_NODE_FLAGS: readonly string[] = Object.freeze(['--max-semi-space-size=1', '--single-threaded-gc', '--expose-gc', '--compact-on-every-full-gc', '--no-memory-reducer']);
export const AGENT_ENV: Readonly<Record<string, string>> = Object.freeze({
  MALLOC_ARENA_MAX: '1',
  GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=33554432',
});

/**
 * Where the agent's connections to its local pods and to what it passes through come from. `transparent`: the
 * client's address, so pods and NetworkPolicies see the real client, and a passthrough leaves with its pod's address
 * (needs CAP_NET_ADMIN, the native addon and the managed rules that route the replies back). `node`: the node's
 * address, which bypasses the pods' egress NetworkPolicy for everything passed through, and which many CNIs exempt
 * from ingress NetworkPolicy, so policies on meshed pods stop applying; only for setups that cannot have the former
 * (in-process tests, a node without the privilege).
 */
export const UPSTREAM_SOURCES = ['transparent', 'node'] as const;
export type UpstreamSource = (typeof UPSTREAM_SOURCES)[number];

/**
 * What the agent logs once `Agent.start` has finished, for whoever waits for it (the test harness, the demo): ready,
 * or up and serving but not ready because its first full sync has not come (see `Agent.readiness`).
 */
export const AGENT_STARTED_LOG = Object.freeze({ ready: 'agent ready', unsynced: 'agent serving, not ready until its first full sync' });

export type AgentPorts = { -readonly [K in keyof typeof DEFAULT_PORTS]: number };

/** Where the agent learns the cluster: a folder of YAML, or the controller's discovery stream. */
export const AGENT_MODES = ['local', 'kubernetes'] as const;
export type AgentMode = (typeof AGENT_MODES)[number];

/** Kubernetes mode: the controller's stream, and the agent's own watch of Namespaces and this node's Pods. */
export interface KubernetesSettings {
  /** `https://host:port` of the controller's Service. */
  readonly controllerUrl: string;
  /** The SPIFFE ID the controller's certificate must carry. */
  readonly controllerIdentity: string;
  /** The projected service-account token for the controller (audience ambit-controller). */
  readonly tokenFile: string;
  /** The mounted trust bundle ConfigMap: the roots peers and the controller chain to, and the issuer's chain. */
  readonly trustBundleDir: string;
  /** The projected service-account token for the controller's CA (audience ambit-ca), sent with every CSR. */
  readonly caTokenFile: string;
  /** For the agent's own watch; undefined: the pod's service account (in-cluster). */
  readonly kubeconfig: string | undefined;
  /** In-cluster: where the service account is mounted (AMBIT_SERVICE_ACCOUNT_DIR; default the kubelet's folder). */
  readonly serviceAccountDir: string | undefined;
}

export interface AgentConfig {
  /** This node's name: pods with `spec.nodeName` equal to it are this agent's to capture. */
  readonly nodeName: string;
  readonly mode: AgentMode;
  /** Local mode: the folder of Kubernetes YAML (Namespaces, Pods, Services, Nodes) that describes the cluster. */
  readonly configDir: string;
  /** Kubernetes mode's settings; undefined in local mode. */
  readonly kubernetes: KubernetesSettings | undefined;
  /**
   * Local mode: the folder holding the mesh CA (`ca.crt`, `ca.key`) that signs this node's workload certificates;
   * '' in kubernetes mode, where the controller signs and the agent holds no CA key.
   */
  readonly caDir: string;
  readonly trustDomain: string;
  /** The address captured traffic is DNATed to and HBONE listens on; default: the Node object's first address. */
  readonly nodeIp: string | undefined;
  /** Where the listeners bind; the capture listeners must be reachable at the node IP. */
  readonly listenHost: string;
  readonly ports: Readonly<AgentPorts>;
  /** Install and reconcile the iptables/ipset redirect rules (off only for in-process tests). */
  readonly manageRules: boolean;
  /** Where connections to local pods and passthrough destinations come from; an agent that cannot have `transparent` does not start. */
  readonly upstreamSource: UpstreamSource;
  readonly iptablesBackend: 'auto' | 'nft' | 'legacy';
  readonly logLevel: LogLevel;
  /** The cluster name carried in HBONE baggage. */
  readonly clusterName: string;
  /** How often the rules are checked and repaired if something else changed them (0: only on store changes). */
  readonly rulesResyncSeconds: number;
  /**
   * The folder of the CNI socket (`cni.sock`), the enrollment file the plugin reads when the agent is down, and the
   * record of CNI-reported pod networks; undefined: no CNI socket (the store alone decides, as in-process tests do).
   */
  readonly runDir: string | undefined;
  /**
   * Persistent folder (survives reboots) of the enrollment file the plugin reads when the agent is down; undefined
   * without a CNI socket.
   */
  readonly stateDir: string | undefined;
  /**
   * Remove the rules on a clean shutdown. Off by default: the rules stay while the agent restarts, so captured
   * traffic is refused, never sent in plaintext; `ambit cni uninstall` or `ambit agent --cleanup` removes them.
   */
  readonly removeRulesOnExit: boolean;
  /** Policies in this namespace apply mesh-wide. */
  readonly rootNamespace: string;
  /** Read `security.istio.io` AuthorizationPolicy and PeerAuthentication objects too. */
  readonly istioApi: boolean;
  /** How HBONE notices a dead peer, and the listener's caps (core/hbone says why each default is what it is). */
  readonly hbone: Readonly<HboneSettings>;
}

export interface HboneSettings {
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
  responseTimeoutMs: number;
  maxConnections: number;
  /** Never above maxConnections: a source cannot hold more than the whole listener. */
  maxConnectionsPerSource: number;
}

const HBONE_DEFAULTS: Readonly<HboneSettings> = Object.freeze({
  keepaliveIntervalMs: HBONE_KEEPALIVE_INTERVAL_MS,
  keepaliveTimeoutMs: HBONE_KEEPALIVE_TIMEOUT_MS,
  responseTimeoutMs: HBONE_RESPONSE_TIMEOUT_MS,
  maxConnections: HBONE_MAX_CONNECTIONS,
  maxConnectionsPerSource: HBONE_MAX_CONNECTIONS_PER_SOURCE,
});

export const AGENT_USAGE = `Usage: ambit agent [options]

Runs the node agent: captures the TCP traffic of enrolled pods on this node and carries it over HBONE (mTLS).

Options (each also as an environment variable):
  --node NAME            this node's name                      AMBIT_NODE_NAME (required)
  --mode M               local | kubernetes: where the cluster AMBIT_MODE (default local)
                         is read from (a folder, or the controller's stream and the agent's own watch)
  --config DIR           local-mode folder of Kubernetes YAML  AMBIT_CONFIG_DIR (required in local mode)
  --controller URL       kubernetes mode: the controller       AMBIT_CONTROLLER (default ${DEFAULT_CONTROLLER_URL})
  --controller-identity ID  its certificate's SPIFFE ID        AMBIT_CONTROLLER_IDENTITY
                         (default spiffe://<trust-domain>/ns/<root-namespace>/sa/ambit-controller)
  --token-file FILE      kubernetes mode: the projected token  AMBIT_TOKEN_FILE (default ${DEFAULT_TOKEN_FILE})
                         for the controller (audience ambit-controller)
  --kubeconfig FILE      kubernetes mode: for the agent's own  AMBIT_KUBECONFIG (default: in-cluster service account)
                         watch of Namespaces and this node's Pods
  --trust-bundle-dir DIR kubernetes mode: the mounted trust    AMBIT_TRUST_BUNDLE_DIR (default ${DEFAULT_TRUST_BUNDLE_DIR})
                         bundle ConfigMap ambit-trust-bundle: trust-bundle.pem, optional issuer-chain.pem (watched)
  --ca-token-file FILE   kubernetes mode: the projected token  AMBIT_CA_TOKEN_FILE (default ${DEFAULT_CA_TOKEN_FILE})
                         sent with each CSR to the controller's CA (audience ambit-ca)
  --ca-dir DIR           local mode: the mesh CA folder:       AMBIT_CA_DIR (required in local mode)
                         ca.crt, ca.key, optional trust-bundle.pem (watched)
  --node-ip IP           node address for DNAT and HBONE       AMBIT_NODE_IP (default: from the Node object)
  --trust-domain NAME    SPIFFE trust domain                   AMBIT_TRUST_DOMAIN (default cluster.local)
  --listen-host IP       bind address of the listeners         AMBIT_LISTEN_HOST (default 0.0.0.0)
  --port-offset N        add N to every port (tests)           AMBIT_PORT_OFFSET (default 0)
  --iptables-backend B   auto | nft | legacy                   AMBIT_IPTABLES_BACKEND (default auto)
  --no-rules             do not install redirect rules         AMBIT_NO_RULES=1
                         (needs --upstream-source node: no rules, no route back for transparent replies)
  --upstream-source S    transparent | node: connect to pods   AMBIT_UPSTREAM_SOURCE (default transparent)
                         and passthrough destinations from the client's address, or from the node's (which
                         bypasses egress NetworkPolicy, and which many CNIs exempt from ingress policy);
                         an agent that cannot connect transparently does not start
  --log-level LEVEL      trace|debug|info|warn|error|silent    AMBIT_LOG_LEVEL (default info)
  --cluster-name NAME    cluster name for telemetry            AMBIT_CLUSTER_NAME (default Kubernetes)
  --rules-resync-interval S  repair drifted rules every S s    AMBIT_RULES_RESYNC_INTERVAL (default 30; 0 = off)
  --run-dir DIR          CNI socket and state folder           AMBIT_RUN_DIR (default ${DEFAULT_AGENT_RUN_DIR})
  --state-dir DIR        persistent enrollment file folder     AMBIT_STATE_DIR (default ${DEFAULT_AGENT_STATE_DIR})
  --no-cni               no CNI socket (implied by --no-rules) AMBIT_NO_CNI=1
  --root-namespace NS    policies here apply mesh-wide         AMBIT_ROOT_NAMESPACE (default ${DEFAULT_ROOT_NAMESPACE})
                         and its pods are never enrolled nor held back at CNI ADD (the
                         CNI plugin reads it from the enrollment file the agent writes)
  --istio-api            read security.istio.io policies too   AMBIT_ISTIO_API=1
  --hbone-keepalive-interval S  PING an HBONE peer silent for S s   AMBIT_HBONE_KEEPALIVE_INTERVAL (default ${HBONE_KEEPALIVE_INTERVAL_MS / 1000})
  --hbone-keepalive-timeout S   no answer in S s: the peer is dead  AMBIT_HBONE_KEEPALIVE_TIMEOUT (default ${HBONE_KEEPALIVE_TIMEOUT_MS / 1000})
  --hbone-response-timeout S    a CONNECT unanswered in S s fails   AMBIT_HBONE_RESPONSE_TIMEOUT (default ${HBONE_RESPONSE_TIMEOUT_MS / 1000})
  --hbone-max-connections N     most connections 15008 holds        AMBIT_HBONE_MAX_CONNECTIONS (default ${HBONE_MAX_CONNECTIONS})
  --hbone-max-connections-per-source N  of those, most from one source address  AMBIT_HBONE_MAX_CONNECTIONS_PER_SOURCE
                         (default ${HBONE_MAX_CONNECTIONS_PER_SOURCE}, or --hbone-max-connections if lower)
  --remove-rules-on-exit remove the rules on a clean shutdown  AMBIT_REMOVE_RULES_ON_EXIT=1
                         (default: they stay, so traffic is refused while the agent restarts)
  --cleanup              remove Ambit's rules and ipsets (after a crash, or to uninstall) and exit
  -h, --help             show this help

In kubernetes mode no node holds a CA key: the agent sends a CSR for each of its pods' identities to the
controller, which signs it once the token and the node check out. Local mode puts the mesh CA's private key
(--ca-dir/ca.key) on every node: whoever can read it on any node can mint any identity of the mesh; the agent
refuses a ca.key that group or others can read or write (chmod 600 it).

Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad usage or configuration.
`;

const BACKENDS = ['auto', 'nft', 'legacy'] as const;

export interface AgentCommand {
  help: boolean;
  cleanup: boolean;
  config: AgentConfig | undefined;
}

const usageError = (message: string): AmbitError => commandUsageError('agent', message);

/**
 * One validated, frozen configuration from flags and environment (flags win). Unknown flags and bad values are
 * errors, never ignored: a typo must not silently run the agent with a default.
 */
export function loadAgentConfig(env: NodeJS.ProcessEnv, argv: string[]): AgentCommand {
  const values = parseFlags('agent', argv, {
    node: { type: 'string' },
    mode: { type: 'string' },
    config: { type: 'string' },
    controller: { type: 'string' },
    'controller-identity': { type: 'string' },
    'token-file': { type: 'string' },
    kubeconfig: { type: 'string' },
    'trust-bundle-dir': { type: 'string' },
    'ca-token-file': { type: 'string' },
    'ca-dir': { type: 'string' },
    'node-ip': { type: 'string' },
    'trust-domain': { type: 'string' },
    'listen-host': { type: 'string' },
    'port-offset': { type: 'string' },
    'iptables-backend': { type: 'string' },
    'no-rules': { type: 'boolean' },
    'upstream-source': { type: 'string' },
    'log-level': { type: 'string' },
    'cluster-name': { type: 'string' },
    'rules-resync-interval': { type: 'string' },
    'run-dir': { type: 'string' },
    'state-dir': { type: 'string' },
    'no-cni': { type: 'boolean' },
    'remove-rules-on-exit': { type: 'boolean' },
    'root-namespace': { type: 'string' },
    'istio-api': { type: 'boolean' },
    'hbone-keepalive-interval': { type: 'string' },
    'hbone-keepalive-timeout': { type: 'string' },
    'hbone-response-timeout': { type: 'string' },
    'hbone-max-connections': { type: 'string' },
    'hbone-max-connections-per-source': { type: 'string' },
    cleanup: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return { help: true, cleanup: false, config: undefined };

  const logLevel = (values['log-level'] ?? env.AMBIT_LOG_LEVEL ?? 'info') as AgentConfig['logLevel'];
  if (!LOG_LEVELS.includes(logLevel)) throw usageError(`--log-level ${logLevel} is not one of ${LOG_LEVELS.join(', ')}`);
  const iptablesBackend = (values['iptables-backend'] ?? env.AMBIT_IPTABLES_BACKEND ?? 'auto') as AgentConfig['iptablesBackend'];
  if (!BACKENDS.includes(iptablesBackend)) throw usageError(`--iptables-backend ${iptablesBackend} is not one of ${BACKENDS.join(', ')}`);
  const nodeIp = values['node-ip'] ?? env.AMBIT_NODE_IP;
  if (nodeIp !== undefined && net.isIP(nodeIp) === 0) throw usageError(`--node-ip ${nodeIp} is not an IP address`);
  const manageRules = !(values['no-rules'] ?? env.AMBIT_NO_RULES === '1');
  const upstreamSource = (values['upstream-source'] ?? env.AMBIT_UPSTREAM_SOURCE ?? 'transparent') as UpstreamSource;
  if (!UPSTREAM_SOURCES.includes(upstreamSource)) throw usageError(`--upstream-source ${upstreamSource} is not one of ${UPSTREAM_SOURCES.join(', ')}`);

  if (values.cleanup) {
    const config = Object.freeze({ ...partialDefaults(), nodeIp, iptablesBackend, logLevel, manageRules, upstreamSource });
    return { help: false, cleanup: true, config: config as AgentConfig };
  }

  const nodeName = values.node ?? env.AMBIT_NODE_NAME;
  const mode = (values.mode ?? env.AMBIT_MODE ?? 'local') as AgentMode;
  if (!AGENT_MODES.includes(mode)) throw usageError(`--mode ${mode} is not one of ${AGENT_MODES.join(', ')}`);
  const configDir = values.config ?? env.AMBIT_CONFIG_DIR ?? '';
  const caDir = values['ca-dir'] ?? env.AMBIT_CA_DIR;
  const trustBundleDir = values['trust-bundle-dir'] ?? env.AMBIT_TRUST_BUNDLE_DIR;
  const caTokenFile = values['ca-token-file'] ?? env.AMBIT_CA_TOKEN_FILE;
  if (!nodeName) throw usageError('--node (or AMBIT_NODE_NAME) is required');
  if (mode === 'local' && !configDir) throw usageError('--config (or AMBIT_CONFIG_DIR) is required in local mode');
  if (mode === 'kubernetes' && configDir) throw usageError('--config is for local mode; in kubernetes mode the cluster comes from the controller');
  // the Node object arrives with the controller's first snapshot, and the rules must be in place before it does
  if (mode === 'kubernetes' && nodeIp === undefined) throw usageError('--node-ip (or AMBIT_NODE_IP, the downward API\'s status.hostIP) is required in kubernetes mode');
  // A removed option fails with its migration, never silently: a DaemonSet that still mounts the key is told to stop.
  if (mode === 'kubernetes' && caDir) throw usageError('in kubernetes mode agents hold no CA key; the controller signs (remove --ca-dir, or AMBIT_CA_DIR)');
  if (mode === 'local' && !caDir) throw usageError('--ca-dir (or AMBIT_CA_DIR) is required in local mode');
  if (mode === 'local' && trustBundleDir !== undefined) throw usageError('--trust-bundle-dir is for kubernetes mode; in local mode the trust bundle is in --ca-dir');
  if (mode === 'local' && caTokenFile !== undefined) throw usageError('--ca-token-file is for kubernetes mode; in local mode the agent signs with --ca-dir');
  const listenHost = values['listen-host'] ?? env.AMBIT_LISTEN_HOST ?? '0.0.0.0';
  if (net.isIP(listenHost) === 0) throw usageError(`--listen-host ${listenHost} is not an IP address`);
  const offsetText = values['port-offset'] ?? env.AMBIT_PORT_OFFSET ?? '0';
  const offset = Number(offsetText);
  if (!Number.isInteger(offset) || offset < 0 || offset > 50000) throw usageError(`--port-offset ${offsetText} is not a whole number from 0 to 50000`);
  const ports = Object.freeze(
    Object.fromEntries(Object.entries(DEFAULT_PORTS).map(([name, port]) => [name, port + offset])) as AgentPorts,
  );
  const resyncText = values['rules-resync-interval'] ?? env.AMBIT_RULES_RESYNC_INTERVAL ?? '30';
  const rulesResyncSeconds = Number(resyncText);
  if (!Number.isInteger(rulesResyncSeconds) || rulesResyncSeconds < 0 || rulesResyncSeconds > 86400) {
    throw usageError(`--rules-resync-interval ${resyncText} is not a whole number of seconds from 0 to 86400`);
  }
  const runDirValue = values['run-dir'] ?? env.AMBIT_RUN_DIR ?? DEFAULT_AGENT_RUN_DIR;
  if (!runDirValue.startsWith('/')) throw usageError(`--run-dir ${runDirValue} is not an absolute path`);
  const stateDirValue = values['state-dir'] ?? env.AMBIT_STATE_DIR ?? DEFAULT_AGENT_STATE_DIR;
  if (!stateDirValue.startsWith('/')) throw usageError(`--state-dir ${stateDirValue} is not an absolute path`);
  // The CNI socket promises rules before it answers: without rules to manage there is nothing to promise.
  const cni = manageRules && !(values['no-cni'] ?? env.AMBIT_NO_CNI === '1');
  const removeRulesOnExit = values['remove-rules-on-exit'] ?? env.AMBIT_REMOVE_RULES_ON_EXIT === '1';
  const rootNamespace = values['root-namespace'] ?? env.AMBIT_ROOT_NAMESPACE ?? DEFAULT_ROOT_NAMESPACE;
  if (!isDnsLabel(rootNamespace)) throw usageError(`--root-namespace ${rootNamespace} is not a namespace name (a DNS label)`);
  const istioApi = values['istio-api'] ?? env.AMBIT_ISTIO_API === '1';
  const whole = (flag: string, text: string | undefined, min: number, max: number, fallback: number): number => {
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!Number.isInteger(value) || value < min || value > max) throw usageError(`--${flag} ${text} is not a whole number from ${min} to ${max}`);
    return value;
  };
  const maxConnections = whole('hbone-max-connections', values['hbone-max-connections'] ?? env.AMBIT_HBONE_MAX_CONNECTIONS, 1, 1_000_000, HBONE_DEFAULTS.maxConnections);
  const perSourceText = values['hbone-max-connections-per-source'] ?? env.AMBIT_HBONE_MAX_CONNECTIONS_PER_SOURCE;
  const maxConnectionsPerSource = whole('hbone-max-connections-per-source', perSourceText, 1, 1_000_000, Math.min(HBONE_DEFAULTS.maxConnectionsPerSource, maxConnections));
  if (maxConnectionsPerSource > maxConnections) {
    throw usageError(`--hbone-max-connections-per-source ${perSourceText} is more than --hbone-max-connections ${maxConnections}: one source cannot hold more than the whole listener`);
  }
  const hbone = Object.freeze({
    keepaliveIntervalMs: whole('hbone-keepalive-interval', values['hbone-keepalive-interval'] ?? env.AMBIT_HBONE_KEEPALIVE_INTERVAL, 1, 3600, HBONE_DEFAULTS.keepaliveIntervalMs / 1000) * 1000,
    keepaliveTimeoutMs: whole('hbone-keepalive-timeout', values['hbone-keepalive-timeout'] ?? env.AMBIT_HBONE_KEEPALIVE_TIMEOUT, 1, 600, HBONE_DEFAULTS.keepaliveTimeoutMs / 1000) * 1000,
    responseTimeoutMs: whole('hbone-response-timeout', values['hbone-response-timeout'] ?? env.AMBIT_HBONE_RESPONSE_TIMEOUT, 1, 600, HBONE_DEFAULTS.responseTimeoutMs / 1000) * 1000,
    maxConnections,
    maxConnectionsPerSource,
  });
  const trustDomain = trustDomainFlag('agent', values['trust-domain'] ?? env.AMBIT_TRUST_DOMAIN);

  let kubernetes: KubernetesSettings | undefined;
  if (mode === 'kubernetes') {
    const controllerUrl = values.controller ?? env.AMBIT_CONTROLLER ?? DEFAULT_CONTROLLER_URL;
    let url: URL;
    try {
      url = new URL(controllerUrl);
    } catch {
      throw usageError(`--controller ${controllerUrl} is not a URL`);
    }
    if (url.protocol !== 'https:' || url.pathname !== '/' || url.search !== '') throw usageError(`--controller ${controllerUrl} must be https://host:port, nothing more`);
    const controllerIdentity = values['controller-identity'] ?? env.AMBIT_CONTROLLER_IDENTITY ?? spiffeId(trustDomain, rootNamespace, 'ambit-controller');
    let identityDomain: string | undefined;
    try {
      identityDomain = parseSpiffeId(controllerIdentity).trustDomain;
    } catch (err) {
      throw usageError(`--controller-identity ${controllerIdentity} is not a SPIFFE ID: ${(err as Error).message}`);
    }
    if (identityDomain !== trustDomain) throw usageError(`--controller-identity ${controllerIdentity} is not of the trust domain ${trustDomain}`);
    const tokenFile = values['token-file'] ?? env.AMBIT_TOKEN_FILE ?? DEFAULT_TOKEN_FILE;
    if (!tokenFile.startsWith('/')) throw usageError(`--token-file ${tokenFile} is not an absolute path`);
    const bundleDir = trustBundleDir ?? DEFAULT_TRUST_BUNDLE_DIR;
    if (!bundleDir.startsWith('/')) throw usageError(`--trust-bundle-dir ${bundleDir} is not an absolute path`);
    const caToken = caTokenFile ?? DEFAULT_CA_TOKEN_FILE;
    if (!caToken.startsWith('/')) throw usageError(`--ca-token-file ${caToken} is not an absolute path`);
    kubernetes = Object.freeze({ controllerUrl: url.origin, controllerIdentity, tokenFile, trustBundleDir: bundleDir, caTokenFile: caToken,
      kubeconfig: values.kubeconfig ?? env.AMBIT_KUBECONFIG,
      serviceAccountDir: env.AMBIT_SERVICE_ACCOUNT_DIR || undefined,
    });
  }

  return {
    help: false,
    cleanup: false,
    config: Object.freeze({
      nodeName,
      mode,
      configDir,
      kubernetes,
      caDir: caDir ?? '',
      trustDomain,
      nodeIp,
      listenHost,
      ports,
      manageRules,
      upstreamSource,
      iptablesBackend,
      logLevel,
      clusterName: values['cluster-name'] ?? env.AMBIT_CLUSTER_NAME ?? 'Kubernetes',
      rulesResyncSeconds,
      runDir: cni ? runDirValue : undefined,
      stateDir: cni ? stateDirValue : undefined,
      removeRulesOnExit,
      rootNamespace,
      istioApi,
      hbone,
    }),
  };
}

function partialDefaults(): Omit<AgentConfig, 'nodeIp' | 'iptablesBackend' | 'logLevel' | 'manageRules' | 'upstreamSource'> {
  return {
    nodeName: '',
    mode: 'local',
    configDir: '',
    kubernetes: undefined,
    caDir: '',
    trustDomain: 'cluster.local',
    listenHost: '0.0.0.0',
    ports: DEFAULT_PORTS,
    clusterName: 'Kubernetes',
    rulesResyncSeconds: 0,
    runDir: undefined,
    stateDir: undefined,
    removeRulesOnExit: false,
    rootNamespace: DEFAULT_ROOT_NAMESPACE,
    istioApi: false,
    hbone: HBONE_DEFAULTS,
  };
}
