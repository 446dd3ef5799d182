/**
 * `ambit authz check`: what the destination agent would decide for a connection, without sending one. It loads the
 * same objects the agent loads and calls the same `PolicyStore.decideFacts` the agent calls on every connection.
 */
import { isIP } from 'node:net';
import pino from 'pino';
import { LocalSource, WorkloadStore, type Workload } from '../core/discovery/index.js';
import { AmbitError } from '../core/errors/index.js';
import { trustDomainFlag } from '../core/identity/index.js';
import { parseFlags, subcommand, usageError as cliUsageError } from './args.js';
import { createLogger, silentLogger } from '../core/log/index.js';
import { DEFAULT_ROOT_NAMESPACE, PolicyStore, principalOf, type InboundDecision } from '../core/policy/index.js';

export const AUTHZ_USAGE = `Usage: ambit authz check --config DIR <source> <destination> --port N [options]

Prints the decision the destination agent would take for one connection, and what decided it: the policy
(namespace/name) and rule index, or the default. Same code as the agent's enforcement.

Source (one of):
  --from-principal ID    the client's identity: spiffe://<td>/ns/<ns>/sa/<sa> or <td>/ns/<ns>/sa/<sa>
  --from-namespace NS    a mesh client of this namespace whose principal does not matter
  --plaintext            a client outside the mesh (no identity); PeerAuthentication applies
  --from-ip IP           the client's address (default: the address of a pod with that identity or namespace;
                         required with --plaintext)
Destination (one of):
  --to-pod NS/NAME       a pod of the config
  --to-ip IP             the pod with this address
  --port N               the destination (pod) port

Options:
  --config DIR           the local-mode folder of Kubernetes YAML (policies included)
  --root-namespace NS    policies here apply mesh-wide (default ${DEFAULT_ROOT_NAMESPACE})
  --istio-api            read security.istio.io AuthorizationPolicy/PeerAuthentication too
  --trust-domain NAME    SPIFFE trust domain of the pods (default cluster.local)
  --output text|json     json: {"decision","policy","rule","reason"} for scripts (default text)
  -h, --help             show this help

Exit codes: 0 the check ran (ALLOW or DENY), 1 the config could not be loaded, 2 bad usage.
`;

const usageError = (message: string) => cliUsageError('authz', message);

export async function runAuthzCommand(argv: string[]): Promise<number> {
  const command = subcommand('authz', argv, ['check'], AUTHZ_USAGE);
  if (typeof command === 'number') return command;
  const values = parseFlags('authz', command.rest, {
    config: { type: 'string' },
    'from-principal': { type: 'string' },
    'from-namespace': { type: 'string' },
    'from-ip': { type: 'string' },
    plaintext: { type: 'boolean' },
    'to-pod': { type: 'string' },
    'to-ip': { type: 'string' },
    port: { type: 'string' },
    'root-namespace': { type: 'string' },
    'istio-api': { type: 'boolean' },
    'trust-domain': { type: 'string' },
    output: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    process.stdout.write(AUTHZ_USAGE);
    return 0;
  }
  const output = values.output ?? 'text';
  if (output !== 'text' && output !== 'json') throw usageError(`--output ${output} is not text or json`);
  if (!values.config) throw usageError('--config DIR is required');
  const sources = [values['from-principal'], values['from-namespace'], values.plaintext ? 'plaintext' : undefined].filter((v) => v !== undefined);
  if (sources.length !== 1) throw usageError('give exactly one source: --from-principal, --from-namespace or --plaintext');
  const destinations = [values['to-pod'], values['to-ip']].filter((v) => v !== undefined);
  if (destinations.length !== 1) throw usageError('give exactly one destination: --to-pod NS/NAME or --to-ip IP');
  const port = Number(values.port);
  if (values.port === undefined || !Number.isInteger(port) || port < 1 || port > 65535) throw usageError(`--port ${values.port ?? ''} must be a port number (1-65535)`);
  const fromIp = values['from-ip'];
  if (fromIp !== undefined && isIP(fromIp) === 0) throw usageError(`--from-ip ${fromIp} is not an IP address`);
  if (values['to-ip'] !== undefined && isIP(values['to-ip']) === 0) throw usageError(`--to-ip ${values['to-ip']} is not an IP address`);
  const principal = values['from-principal'];
  if (principal !== undefined && !/^(spiffe:\/\/)?[^/]+\/ns\/[^/]+\/sa\/[^/]+$/.test(principal)) {
    throw usageError(`--from-principal ${principal} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>)`);
  }
  const rootNamespace = values['root-namespace'] ?? DEFAULT_ROOT_NAMESPACE;

  const store = new WorkloadStore({ trustDomain: trustDomainFlag('authz', values['trust-domain']), rootNamespace });
  const policies = new PolicyStore({ rootNamespace, istioApi: values['istio-api'] ?? false, log: silentLogger() });
  // Rejections are warnings on stderr: an invalid policy stands as deny-all, and the operator must see why.
  const log = createLogger({ level: 'warn', name: 'ambit-authz', destination: pino.destination({ fd: 2, sync: true }) });
  const source = new LocalSource({ dir: values.config, store, log, collections: [policies.collection()] });
  await source.start();
  await source.close();

  const destination = findDestination(store, values['to-pod'], values['to-ip']);
  const targetIp = values['to-ip'] ?? destination.ips[0];
  if (targetIp === undefined) throw new AmbitError('AUTHZ_NO_ADDRESS', `pod ${destination.namespace}/${destination.name} has no IP in the config; use --to-ip`);
  const sourceIp = fromIp ?? defaultSourceIp(store, principal, values['from-namespace']);
  if (sourceIp === undefined) throw usageError('no pod of the config has that identity or namespace to take an address from; give --from-ip');

  const decision = policies.decideFacts(
    {
      sourceIp,
      plaintext: values.plaintext ?? false,
      ...(principal === undefined ? {} : { sourceIdentity: principal }),
      ...(values['from-namespace'] === undefined ? {} : { sourceNamespace: values['from-namespace'] }),
      destination,
      target: { host: targetIp, port },
    },
    (workload) => store.servicesOf(workload),
  );
  if (output === 'json') {
    process.stdout.write(`${JSON.stringify({ decision: decision.decision, policy: decision.policy === 'default' ? null : decision.policy, rule: decision.rule, reason: decision.reason })}\n`);
  } else {
    process.stdout.write(describe(decision, { principal, namespace: values['from-namespace'], plaintext: values.plaintext ?? false, sourceIp }, destination, targetIp, port, policies));
  }
  return 0;
}

function findDestination(store: WorkloadStore, toPod: string | undefined, toIp: string | undefined): Workload {
  if (toIp !== undefined) {
    const workload = store.workloadByIp(toIp);
    if (!workload) throw new AmbitError('AUTHZ_UNKNOWN_DESTINATION', `no pod of the config has IP ${toIp}`);
    return workload;
  }
  const [namespace, name, extra] = (toPod ?? '').split('/');
  if (!namespace || !name || extra !== undefined) throw usageError(`--to-pod ${toPod} is not NAMESPACE/NAME`);
  const workload = store.workloads().find((w) => w.namespace === namespace && w.name === name);
  if (!workload) throw new AmbitError('AUTHZ_UNKNOWN_DESTINATION', `no pod ${namespace}/${name} in the config`);
  return workload;
}

function defaultSourceIp(store: WorkloadStore, principal: string | undefined, namespace: string | undefined): string | undefined {
  const wanted = principalOf(principal);
  const match = store.workloads().find((w) => (wanted !== undefined ? principalOf(w.identity) === wanted : w.namespace === namespace) && w.ips.length > 0);
  return match?.ips[0];
}

function describe(
  decision: InboundDecision,
  from: { principal: string | undefined; namespace: string | undefined; plaintext: boolean; sourceIp: string },
  destination: Workload,
  targetIp: string,
  port: number,
  policies: PolicyStore,
): string {
  const by = decision.policy === 'default' ? 'the default' : decision.rule === null ? decision.policy : `${decision.policy} rule ${decision.rule}`;
  const who = from.plaintext ? 'plaintext (no identity)' : from.principal !== undefined ? `principal ${principalOf(from.principal)}` : `a mesh identity in namespace ${from.namespace}`;
  const lines = [
    `${decision.decision} by ${by} (${decision.reason})`,
    `  source:      ${who}, ip ${from.sourceIp}`,
    `  destination: pod ${destination.namespace}/${destination.name} ${targetIp}:${port}`,
  ];
  if (decision.mtls) lines.push(`  mTLS mode:   ${decision.mtls.mode} (${decision.mtls.policy ?? 'default'})`);
  for (const audit of decision.audit) lines.push(`  audited by:  ${audit.policy} rule ${audit.rule}`);
  for (const fallback of decision.l7Fallbacks) {
    lines.push(`  note:        ${fallback.policy} rule ${fallback.rule} (${fallback.action}) uses ${fallback.fields.join(', ')}, which only a waypoint sees; decided at L4, failing closed`);
  }
  const invalid = policies.invalid.get(decision.policy);
  if (invalid !== undefined) lines.push(`  warning:     ${decision.policy} is ${invalid}`);
  return `${lines.join('\n')}\n`;
}
