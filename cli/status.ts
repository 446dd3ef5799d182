/**
 * `ambit status`: per node, the agent's version, readiness, rules, and its enrolled pods with their identities and
 * certificate expiry. It reaches each agent as kubectl would, through the API server: the pods proxy subresource to
 * the read-only `GET /status` on the agent's metrics port (agent/status.ts), never by opening a port to the network.
 */
import { DEFAULT_PORTS, parseAgentStatus, type AgentStatus } from '../agent/index.js';
import { AGENT_DAEMONSET_NAME, DEFAULT_ROOT_NAMESPACE } from '../core/enrollment/index.js';
import { AmbitError } from '../core/errors/index.js';
import { parseFlags, usageError as cliUsageError } from './args.js';
import { connectCluster, kind, KUBE_FLAGS, KUBE_FLAGS_USAGE, type ApiObject, type ClusterClient } from './kube.js';

export const STATUS_USAGE = `Usage: ambit status [options]

Per node: the agent's version and readiness, its redirect rules and iptables backend, and the enrolled pods it
serves with their SPIFFE identities and certificate expiry. Read through the API server's pods proxy
(get on pods/proxy in the mesh's namespace) from each agent's /status on its metrics port: names, identities and
times, nothing secret.

Options:
${KUBE_FLAGS_USAGE}
  --namespace NS         the mesh's namespace (default ambit-system)
  --node NAME            this node only
  -o, --output text|json json: {"ok", "nodes": [{"node", "pod", "ok", "error"?, "status"?}]} (default text)
  -h, --help             show this help

Exit codes: 0 every agent answered, 1 one did not (or the API could not be reached), 2 bad usage.
`;

/** The agent's metrics port, where /status is (manifests/agent.yaml's container port `metrics`). */
const AGENT_METRICS_PORT = DEFAULT_PORTS.metrics;
const DAEMONSETS = kind('apps', 'v1', 'daemonsets');
const MAX_STATUS_BYTES = 4 * 1024 * 1024;
const PODS = kind('', 'v1', 'pods');

export interface NodeStatus {
  node: string;
  pod: string;
  ok: boolean;
  /** The pod is being deleted (a rollout replaces it): it does not stand for its node. */
  terminating?: boolean;
  error?: string;
  status?: AgentStatus;
}

const usageError = (message: string) => cliUsageError('status', message);

export async function runStatusCommand(argv: string[]): Promise<number> {
  const values = parseFlags('status', argv, {
    ...KUBE_FLAGS,
    namespace: { type: 'string' },
    node: { type: 'string' },
    output: { type: 'string', short: 'o' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    process.stdout.write(STATUS_USAGE);
    return 0;
  }
  const output = values.output ?? 'text';
  if (output !== 'text' && output !== 'json') throw usageError(`--output ${output}: use text or json`);
  const cluster = await connectCluster('status', values);
  const nodes = await agentStatuses(cluster, values.namespace ?? DEFAULT_ROOT_NAMESPACE, values.node);
  const ok = nodes.length > 0 && nodes.every((node) => node.ok);
  if (output === 'json') process.stdout.write(`${JSON.stringify({ ok, nodes }, null, 2)}\n`);
  else process.stdout.write(formatStatus(nodes, Date.now()));
  return ok ? 0 : 1;
}

/** The agent DaemonSet's pod selector (its matchLabels), as `a=b,c=d`; undefined when it has none. */
export function agentPodSelector(daemonSet: ApiObject): string | undefined {
  const matchLabels = (daemonSet.spec as { selector?: { matchLabels?: Record<string, string> } } | undefined)?.selector?.matchLabels ?? {};
  const pairs = Object.entries(matchLabels).map(([key, value]) => `${key}=${value}`);
  return pairs.length === 0 ? undefined : pairs.join(',');
}

/**
 * Each agent pod's /status through the pods proxy, in node order: the pods the agent DaemonSet selects (a missing
 * DaemonSet is an error that says so); an agent that does not answer, or answers something malformed, says why.
 */
export async function agentStatuses(cluster: ClusterClient, namespace: string, onlyNode?: string): Promise<NodeStatus[]> {
  const daemonSet = await cluster.get(DAEMONSETS.named(AGENT_DAEMONSET_NAME, namespace));
  if (daemonSet === undefined) throw new AmbitError('STATUS_NO_DAEMONSET', `there is no DaemonSet ${namespace}/${AGENT_DAEMONSET_NAME}: is Ambit installed (kubectl apply -k manifests/)?`);
  return agentStatusesOf(cluster, daemonSet, namespace, onlyNode);
}

/** agentStatuses, for a DaemonSet already read. */
export async function agentStatusesOf(cluster: ClusterClient, daemonSet: ApiObject, namespace: string, onlyNode?: string): Promise<NodeStatus[]> {
  const selector = agentPodSelector(daemonSet);
  if (selector === undefined) throw new AmbitError('STATUS_NO_DAEMONSET', `the DaemonSet ${namespace}/${AGENT_DAEMONSET_NAME} has no selector matchLabels`);
  const pods = await cluster.list(PODS.all(namespace), selector);
  const agents = pods
    .map((pod) => ({
      pod: pod.metadata?.name ?? '',
      node: (pod.spec as { nodeName?: string } | undefined)?.nodeName ?? '',
      terminating: (pod.metadata as { deletionTimestamp?: string } | undefined)?.deletionTimestamp !== undefined,
    }))
    // a pod not yet on a node has no agent to ask
    .filter((agent) => agent.node !== '' && (onlyNode === undefined || agent.node === onlyNode))
    .sort((a, b) => a.node.localeCompare(b.node) || a.pod.localeCompare(b.pod));
  if (onlyNode !== undefined && agents.length === 0) throw new AmbitError('STATUS_NO_AGENT', `no agent pod (${selector}) in ${namespace} is on node ${onlyNode}`);
  return Promise.all(
    agents.map(async ({ pod, node, terminating }): Promise<NodeStatus> => {
      const going = terminating ? { terminating: true } : {};
      try {
        const status = parseAgentStatus(await cluster.proxyGet({ namespace, name: pod }, AGENT_METRICS_PORT, '/status', MAX_STATUS_BYTES));
        return { node, pod, ok: true, ...going, status };
      } catch (err) {
        return { node, pod, ok: false, ...going, error: err instanceof Error ? err.message : String(err) };
      }
    }),
  );
}

/** The human form: a line per node, a line per pod under it. */
export function formatStatus(nodes: readonly NodeStatus[], now: number): string {
  if (nodes.length === 0) return 'no agent pods found: is Ambit installed (kubectl apply -k manifests/)?\n';
  const lines: string[] = [];
  for (const { node, pod, ok, error, status } of nodes) {
    if (!ok || status === undefined) {
      lines.push(`${node}  ${pod}  UNREACHABLE  ${error ?? ''}`);
      continue;
    }
    const rules = !status.rules.enabled
      ? 'rules off'
      : status.rules.uninstalled
        ? 'rules removed'
        : status.rules.ok
          ? `rules ok (${status.rules.backend ?? '?'})`
          : `rules FAILING: ${status.rules.error ?? 'not installed'}`;
    const uninstall = status.uninstall.done ? '  UNINSTALLED' : status.uninstall.requested ? '  UNINSTALLING (waiting for its CNI installer)' : '';
    lines.push(`${node}  ${pod}  ambit ${status.version}  ${status.ready ? 'ready' : `NOT READY (${status.reason ?? ''})`}  ${rules}  ${status.workloads.length} enrolled pod(s)${uninstall}`);
    for (const workload of status.workloads) {
      const cert = workload.certificateNotAfter === null ? 'no certificate yet' : `certificate expires ${workload.certificateNotAfter} (${inHours(Date.parse(workload.certificateNotAfter) - now)})`;
      lines.push(`    ${workload.namespace}/${workload.name}  ${workload.identity}  ${cert}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

function inHours(ms: number): string {
  if (ms <= 0) return 'EXPIRED';
  const hours = ms / 3_600_000;
  return hours >= 48 ? `in ${Math.floor(hours / 24)} d` : `in ${hours.toFixed(1)} h`;
}
