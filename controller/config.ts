import net from 'node:net';
import { hostname } from 'node:os';
import { parseFlags, usageError as commandUsageError, type AmbitError } from '../core/errors/index.js';
import { LOG_LEVELS, type LogLevel } from '../core/log/index.js';
import { trustDomainFlag } from '../core/identity/index.js';
import { isDnsLabel } from '../core/names/index.js';
import { DEFAULT_CA_PROPAGATION_MS, DEFAULT_CA_REREAD_INTERVAL_MS } from './mesh-ca.js';
import { DEFAULT_STREAM_USERS } from './stream-server.js';

/** The controller's ports: the discovery stream and the CA, metrics, readiness (and /status). */
export const DEFAULT_CONTROLLER_PORTS = Object.freeze({ stream: 15012, metrics: 15020, readiness: 15021 });

export interface ControllerConfig {
  /** A kubeconfig file; undefined: the pod's service account (in-cluster). */
  readonly kubeconfig: string | undefined;
  /** In-cluster: where the service account is mounted (AMBIT_SERVICE_ACCOUNT_DIR; default the kubelet's folder). */
  readonly serviceAccountDir: string | undefined;
  readonly trustDomain: string;
  readonly listenHost: string;
  readonly ports: Readonly<{ stream: number; metrics: number; readiness: number }>;
  /** The controller's namespace: its CA Secret, trust-bundle ConfigMap and Lease live there, and its identity names it. */
  readonly namespace: string;
  /** This replica's name (its pod's): the holder of the Lease. */
  readonly podName: string;
  /** Lifetime of the workload certificates it signs, and of its own serving certificate. */
  readonly certTtlMs: number;
  /** How often the CA Secret is read again, whatever its watch says. */
  readonly caRereadIntervalMs: number;
  /** How long a root is in the published bundle before a key that chains to it signs, and stays after one stopped. */
  readonly caPropagationMs: number;
  /**
   * The Kubernetes users of the agents: they may read the stream, and the CA signs for them the identities of the
   * pods on their node (any other caller gets only its own identity).
   */
  readonly streamUsers: readonly string[];
  readonly istioApi: boolean;
  readonly logLevel: LogLevel;
}

export const CONTROLLER_USAGE = `Usage: ambit controller [options]

Runs the controller: the only component that watches the cluster. It streams compact workload, service and policy
records to the agents on its port (HTTP/2 over TLS; see README, "Discovery stream"), and is the mesh CA on the
same port (README, "Mesh CA"): it signs a CSR after a TokenReview of the caller's token (audience ambit-ca) and
node authorization. Its signing key comes from the Secret <namespace>/ambit-ca (created once, self-signed, when
absent); it publishes the roots as the ConfigMap <namespace>/ambit-trust-bundle, and serves with a certificate of
its own identity, spiffe://<trust-domain>/ns/<namespace>/sa/ambit-controller, that it signs and renews.

Options (each also as an environment variable):
  --kubeconfig FILE      the API server and credentials        AMBIT_KUBECONFIG (default: in-cluster service account)
  --namespace NS         its namespace (downward API)          AMBIT_NAMESPACE (default ambit-system)
  --pod-name NAME        this replica's pod (downward API)     AMBIT_POD_NAME (default: the host name)
  --cert-ttl S           lifetime of signed certificates, s    AMBIT_CERT_TTL (default 86400: 24 h; 10 to 31536000)
  --ca-reread-interval S read the CA Secret again every S s    AMBIT_CA_REREAD_INTERVAL (default ${DEFAULT_CA_REREAD_INTERVAL_MS / 1000})
  --ca-propagation S     a new signing key waits until its     AMBIT_CA_PROPAGATION (default ${DEFAULT_CA_PROPAGATION_MS / 1000}; 0 to 3600)
                         root has been published S s (every node's mounted bundle has it); an old root stays S s
  --trust-domain NAME    SPIFFE trust domain                   AMBIT_TRUST_DOMAIN (default cluster.local)
  --listen-host IP       bind address                          AMBIT_LISTEN_HOST (default 0.0.0.0)
  --port N               discovery stream port                 AMBIT_PORT (default ${DEFAULT_CONTROLLER_PORTS.stream})
  --metrics-port N       Prometheus metrics                    AMBIT_METRICS_PORT (default ${DEFAULT_CONTROLLER_PORTS.metrics})
  --readiness-port N     /healthz/ready                        AMBIT_READINESS_PORT (default ${DEFAULT_CONTROLLER_PORTS.readiness})
  --stream-users LIST    the agents' users, comma-separated: they read the stream and get their node's identities
                                                               AMBIT_STREAM_USERS (default ${DEFAULT_STREAM_USERS.join(',')})
  --istio-api            watch security.istio.io policies too  AMBIT_ISTIO_API=1
  --log-level LEVEL      trace|debug|info|warn|error|silent    AMBIT_LOG_LEVEL (default info)
  -h, --help             show this help

Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad usage or configuration.
`;

const usageError = (message: string): AmbitError => commandUsageError('controller', message);

/** One validated, frozen configuration from flags and environment (flags win); unknown flags and bad values are errors. */
export function loadControllerConfig(env: NodeJS.ProcessEnv, argv: string[]): { help: boolean; config: ControllerConfig | undefined } {
  const values = parseFlags('controller', argv, {
    kubeconfig: { type: 'string' },
    namespace: { type: 'string' },
    'pod-name': { type: 'string' },
    'cert-ttl': { type: 'string' },
    'ca-reread-interval': { type: 'string' },
    'ca-propagation': { type: 'string' },
    'trust-domain': { type: 'string' },
    'listen-host': { type: 'string' },
    port: { type: 'string' },
    'metrics-port': { type: 'string' },
    'readiness-port': { type: 'string' },
    'stream-users': { type: 'string' },
    'istio-api': { type: 'boolean' },
    'log-level': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return { help: true, config: undefined };
  const namespace = values.namespace ?? env.AMBIT_NAMESPACE ?? 'ambit-system';
  if (!isDnsLabel(namespace)) throw usageError(`--namespace ${namespace} is not a namespace name (a DNS label)`);
  const podName = values['pod-name'] ?? env.AMBIT_POD_NAME ?? hostname();
  if (podName === '') throw usageError('--pod-name is empty');
  const seconds = (flag: string, text: string | undefined, min: number, max: number, fallback: number): number => {
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!Number.isInteger(value) || value < min || value > max) throw usageError(`--${flag} ${text} is not a whole number of seconds from ${min} to ${max}`);
    return value;
  };
  const certTtlMs = seconds('cert-ttl', values['cert-ttl'] ?? env.AMBIT_CERT_TTL, 10, 31_536_000, 86_400) * 1000;
  const caPropagationMs = seconds('ca-propagation', values['ca-propagation'] ?? env.AMBIT_CA_PROPAGATION, 0, 3600, DEFAULT_CA_PROPAGATION_MS / 1000) * 1000;
  const caRereadIntervalMs = seconds('ca-reread-interval', values['ca-reread-interval'] ?? env.AMBIT_CA_REREAD_INTERVAL, 1, 3600, DEFAULT_CA_REREAD_INTERVAL_MS / 1000) * 1000;
  const logLevel = (values['log-level'] ?? env.AMBIT_LOG_LEVEL ?? 'info') as ControllerConfig['logLevel'];
  if (!LOG_LEVELS.includes(logLevel)) throw usageError(`--log-level ${logLevel} is not one of ${LOG_LEVELS.join(', ')}`);
  const listenHost = values['listen-host'] ?? env.AMBIT_LISTEN_HOST ?? '0.0.0.0';
  if (net.isIP(listenHost) === 0) throw usageError(`--listen-host ${listenHost} is not an IP address`);
  const port = (flag: string, text: string | undefined, fallback: number): number => {
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!Number.isInteger(value) || value < 1 || value > 65535) throw usageError(`--${flag} ${text} is not a TCP port (1-65535)`);
    return value;
  };
  const ports = Object.freeze({
    stream: port('port', values.port ?? env.AMBIT_PORT, DEFAULT_CONTROLLER_PORTS.stream),
    metrics: port('metrics-port', values['metrics-port'] ?? env.AMBIT_METRICS_PORT, DEFAULT_CONTROLLER_PORTS.metrics),
    readiness: port('readiness-port', values['readiness-port'] ?? env.AMBIT_READINESS_PORT, DEFAULT_CONTROLLER_PORTS.readiness),
  });
  if (new Set(Object.values(ports)).size !== 3) throw usageError(`--port, --metrics-port and --readiness-port must differ (${Object.values(ports).join(', ')})`);
  const usersText = values['stream-users'] ?? env.AMBIT_STREAM_USERS;
  const streamUsers = usersText === undefined ? [...DEFAULT_STREAM_USERS] : usersText.split(',').map((user) => user.trim()).filter((user) => user !== '');
  if (streamUsers.length === 0) throw usageError('--stream-users names no user: no agent could read the stream');
  const trustDomain = trustDomainFlag('controller', values['trust-domain'] ?? env.AMBIT_TRUST_DOMAIN);
  return {
    help: false,
    config: Object.freeze({
      kubeconfig: values.kubeconfig ?? env.AMBIT_KUBECONFIG,
      serviceAccountDir: env.AMBIT_SERVICE_ACCOUNT_DIR || undefined,
      trustDomain,
      listenHost,
      ports,
      namespace,
      podName,
      certTtlMs,
      caRereadIntervalMs,
      caPropagationMs,
      streamUsers: Object.freeze(streamUsers),
      istioApi: values['istio-api'] ?? env.AMBIT_ISTIO_API === '1',
      logLevel,
    }),
  };
}
