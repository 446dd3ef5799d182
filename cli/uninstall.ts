/**
 * `ambit uninstall`: gives every node plain networking back before anything is deleted. A bare `kubectl delete -k`
 * looks to an agent like a restart (SIGTERM keeps its rules, the plugin stays chained: enrolled pods fail closed), so
 * the command first marks the mesh as uninstalling (core/enrollment's UNINSTALL_ANNOTATION on the agents' ServiceAccount,
 * which every agent watches). Each agent then tells its CNI installer, which unchains the plugin and has the agent
 * remove every rule, ipset and file; each agent's /status says when, for which marker. Only when every node
 * is done does the command delete the mesh's objects. `ambit uninstall --check`, as root on a node, says whether
 * anything of Ambit is left there.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describeRemovalPlan, planRulesRemoval } from '../agent/index.js';
import { AMBIT_PLUGIN_TYPE, configsWithPlugin, DEFAULT_CNI_BIN_DIR, DEFAULT_CNI_CONF_DIR } from '../cni/index.js';
import { DEFAULT_AGENT_RUN_DIR, DEFAULT_AGENT_STATE_DIR } from '../core/cni/index.js';
import { AGENT_DAEMONSET_NAME, AGENT_SERVICE_ACCOUNT_NAME, DEFAULT_ROOT_NAMESPACE, ENROLL_LABEL, UNINSTALL_ANNOTATION, uninstallMarkerOf } from '../core/enrollment/index.js';
import { errnoCode } from '../core/errors/index.js';
import { ApiStatusError } from '../core/k8s/index.js';
import { parseFlags, usageError as cliUsageError } from './args.js';
import { connectCluster, describeAccess, kind, KUBE_FLAGS, KUBE_FLAGS_USAGE, NAMESPACES, type ClusterClient, type ResourceRef, type Verb } from './kube.js';
import { printChecks } from './check.js';
import { PART_OF_LABEL } from './install-objects.js';
import type { CheckResult } from './checks.js';
import { agentStatusesOf, type NodeStatus } from './status.js';

export const UNINSTALL_USAGE = `Usage: ambit uninstall [options]
       ambit uninstall --check [node options]

Gives every node plain networking back, then deletes Ambit's objects. It checks first that you may do all of it,
then marks the mesh as uninstalling (the annotation ${UNINSTALL_ANNOTATION} on the ServiceAccount ambit-system/${AGENT_SERVICE_ACCOUNT_NAME},
which the agents watch): on every node the CNI installer takes the plugin out of the node's CNI configuration, then
the agent removes every rule, ipset and file. When every node the DaemonSet runs on says it is done, the namespace
ambit-system and the cluster roles go; the CRDs (and so every policy) only with --purge. If a node does not finish in
time nothing is deleted: run it again, or remove the annotation to cancel (the nodes put their rules back).

Options:
${KUBE_FLAGS_USAGE}
  --namespace NS         the mesh's namespace (default ambit-system)
  --timeout SECONDS      how long to wait for the nodes (default 300)
  --purge                also delete the CRDs, and with them every AuthorizationPolicy and PeerAuthentication
  -o, --output text|json json: {"ok", "nodes": [...], "deleted": [...]} (default text)
  -h, --help             show this help

--check, as root on a node: confirms nothing of Ambit is left there (no rule, ipset, CNI entry or file).
  --cni-conf-dir DIR     (default ${DEFAULT_CNI_CONF_DIR})
  --cni-bin-dir DIR      (default ${DEFAULT_CNI_BIN_DIR})
  --run-dir DIR          the agent's run folder (default ${DEFAULT_AGENT_RUN_DIR})
  --state-dir DIR        the agent's state folder (default ${DEFAULT_AGENT_STATE_DIR})
  -o, --output text|json json: {"ok", "checks": [{"id", "ok", "message", "hint"}]}

Exit codes: 0 done (or nothing left), 1 a node did not finish or something is left, 2 bad usage.
`;

const DEFAULT_TIMEOUT_SECONDS = 300;
const POLL_MS = 1000;
/** The label kustomization.yaml puts on every object of the install. */
const PART_OF_SELECTOR = `${PART_OF_LABEL.key}=${PART_OF_LABEL.value}`;

const usageError = (message: string) => cliUsageError('uninstall', message);

export async function runUninstallCommand(argv: string[]): Promise<number> {
  const values = parseFlags('uninstall', argv, {
    ...KUBE_FLAGS,
    namespace: { type: 'string' },
    timeout: { type: 'string' },
    purge: { type: 'boolean' },
    check: { type: 'boolean' },
    'cni-conf-dir': { type: 'string' },
    'cni-bin-dir': { type: 'string' },
    'run-dir': { type: 'string' },
    'state-dir': { type: 'string' },
    output: { type: 'string', short: 'o' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    process.stdout.write(UNINSTALL_USAGE);
    return 0;
  }
  const output = values.output ?? 'text';
  if (output !== 'text' && output !== 'json') throw usageError(`--output ${output}: use text or json`);
  if (values.check) {
    for (const flag of ['kubeconfig', 'context', 'namespace', 'timeout', 'purge'] as const) {
      if (values[flag] !== undefined) throw usageError(`--${flag} does not apply to --check, which looks at this node only`);
    }
    const checks = await nodeLeftovers({
      confDir: values['cni-conf-dir'] ?? DEFAULT_CNI_CONF_DIR,
      binDir: values['cni-bin-dir'] ?? DEFAULT_CNI_BIN_DIR,
      runDir: values['run-dir'] ?? DEFAULT_AGENT_RUN_DIR,
      stateDir: values['state-dir'] ?? DEFAULT_AGENT_STATE_DIR,
    });
    return printChecks(checks, output);
  }
  for (const flag of ['cni-conf-dir', 'cni-bin-dir', 'run-dir', 'state-dir'] as const) {
    if (values[flag] !== undefined) throw usageError(`--${flag} applies to --check only`);
  }
  const timeoutSeconds = Number(values.timeout ?? DEFAULT_TIMEOUT_SECONDS);
  if (!Number.isInteger(timeoutSeconds) || timeoutSeconds < 1 || timeoutSeconds > 3600) throw usageError(`--timeout ${values.timeout}: a whole number of seconds from 1 to 3600`);
  const cluster = await connectCluster('uninstall', values);
  const say = output === 'text' ? (line: string) => process.stdout.write(`${line}\n`) : () => undefined;
  const result = await uninstall(cluster, { namespace: values.namespace ?? DEFAULT_ROOT_NAMESPACE, timeoutMs: timeoutSeconds * 1000, purge: values.purge ?? false, say });
  if (output === 'json') process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  return result.ok ? 0 : 1;
}

export interface UninstallResult {
  ok: boolean;
  /** Each agent's last answer. */
  nodes: Array<{ node: string; done: boolean; error?: string }>;
  /** What was deleted, `kind/name`. */
  deleted: string[];
  /** Namespaces that still carry the enrollment label (plain now; `ambit unenroll` removes it). */
  stillLabelled: string[];
  message: string;
}

const DAEMONSETS = kind('apps', 'v1', 'daemonsets');
const SERVICE_ACCOUNTS = kind('', 'v1', 'serviceaccounts');
const PODS = kind('', 'v1', 'pods');
/** The install's cluster-scoped kinds, deleted by the label kustomization.yaml puts on them; the CRDs with --purge only. */
const CLUSTER_KINDS = [
  { kind: 'ClusterRoleBinding', ref: kind('rbac.authorization.k8s.io', 'v1', 'clusterrolebindings') },
  { kind: 'ClusterRole', ref: kind('rbac.authorization.k8s.io', 'v1', 'clusterroles') },
];
const CRDS = { kind: 'CustomResourceDefinition', ref: kind('apiextensions.k8s.io', 'v1', 'customresourcedefinitions') };

/** A refusal before anything changed: nothing was marked, nothing deleted. */
function refused(message: string): UninstallResult {
  return { ok: false, nodes: [], deleted: [], stillLabelled: [], message };
}

async function uninstall(cluster: ClusterClient, options: { namespace: string; timeoutMs: number; purge: boolean; say: (line: string) => void }): Promise<UninstallResult> {
  const { namespace, say } = options;
  const deleted: string[] = [];
  let nodes: NodeStatus[] = [];
  const clusterKinds = [...CLUSTER_KINDS, ...(options.purge ? [CRDS] : [])];
  const meshNamespace = await cluster.get(NAMESPACES.named(namespace));
  const present = meshNamespace !== undefined;
  const daemonSet = present ? await cluster.get(DAEMONSETS.named(AGENT_DAEMONSET_NAME, namespace)) : undefined;
  const account = present ? await cluster.get(SERVICE_ACCOUNTS.named(AGENT_SERVICE_ACCOUNT_NAME, namespace)) : undefined;
  const cancel = `kubectl -n ${namespace} annotate serviceaccount ${AGENT_SERVICE_ACCOUNT_NAME} ${UNINSTALL_ANNOTATION}-`;
  const gone = (when: string) =>
    `the DaemonSet ${namespace}/${AGENT_DAEMONSET_NAME} is gone${when}, so no agent can take Ambit's rules and CNI entry off the nodes (a bare kubectl delete?). ` +
    `Re-apply the install (kubectl apply -k manifests/), wait for the agents (kubectl -n ${namespace} rollout status daemonset/${AGENT_DAEMONSET_NAME}), then run ambit uninstall again.`;
  if (present && (daemonSet === undefined || account === undefined)) {
    const message = daemonSet === undefined ? `${gone('')} Nothing was changed.` : `the ServiceAccount ${namespace}/${AGENT_SERVICE_ACCOUNT_NAME}, which the agents run as and watch for the uninstall, is gone. Nothing was changed. Re-apply the install (kubectl apply -k manifests/), then run ambit uninstall again.`;
    say(message);
    return refused(message);
  }
  // every permission the whole uninstall needs, before the first change: never a mesh marked and objects left
  const needed: Array<{ verb: Verb; ref: ResourceRef }> = [
    ...(present
      ? [
          { verb: 'patch' as const, ref: SERVICE_ACCOUNTS.named(AGENT_SERVICE_ACCOUNT_NAME, namespace) },
          { verb: 'get' as const, ref: SERVICE_ACCOUNTS.named(AGENT_SERVICE_ACCOUNT_NAME, namespace) },
          { verb: 'get' as const, ref: DAEMONSETS.named(AGENT_DAEMONSET_NAME, namespace) },
          { verb: 'list' as const, ref: PODS.all(namespace) },
          // each agent's /status, through the API server
          { verb: 'get' as const, ref: kind('', 'v1', 'pods/proxy').all(namespace) },
          { verb: 'delete' as const, ref: NAMESPACES.named(namespace) },
        ]
      : []),
    ...clusterKinds.flatMap(({ ref }) => [
      { verb: 'list' as const, ref: ref.all() },
      { verb: 'delete' as const, ref: ref.all() },
    ]),
    // the namespaces that keep the label, said at the end
    { verb: 'list', ref: NAMESPACES.all() },
  ];
  const denied = (await Promise.all(needed.map(async (ask) => ((await cluster.canI(ask.verb, ask.ref)) ? [] : [ask])))).flat();
  if (denied.length > 0) {
    const message = `not allowed to uninstall: missing ${denied.map((ask) => describeAccess(ask.verb, ask.ref)).join('; ')}. Nothing was changed; uninstall as a cluster admin.`;
    say(message);
    return refused(message);
  }
  if (account !== undefined) {
    // a run after a timed-out one keeps its marker: the nodes that finished stay done
    const marker = uninstallMarkerOf(account.metadata?.annotations).marker ?? new Date().toISOString();
    await cluster.mergePatch(SERVICE_ACCOUNTS.named(AGENT_SERVICE_ACCOUNT_NAME, namespace), { metadata: { annotations: { [UNINSTALL_ANNOTATION]: marker } } });
    say(`marked the mesh as uninstalling (annotation ${UNINSTALL_ANNOTATION}=${marker} on the serviceaccount ${namespace}/${AGENT_SERVICE_ACCOUNT_NAME}); waiting for every node`);
    const deadline = Date.now() + options.timeoutMs;
    const reported = new Set<string>();
    const doneFor = (node: NodeStatus) => doneForMarker(node, marker);
    for (;;) {
      const current = await cluster.get(DAEMONSETS.named(AGENT_DAEMONSET_NAME, namespace));
      if (current === undefined) {
        const message = `${gone(' (deleted while the nodes were finishing)')} Nothing was deleted.`;
        say(message);
        return { ok: false, nodes: summary(nodes, marker), deleted, stillLabelled: [], message };
      }
      nodes = (await agentStatusesOf(cluster, current, namespace)).filter((node) => node.terminating !== true);
      for (const node of nodes) {
        if (doneFor(node) && !reported.has(node.node)) {
          reported.add(node.node);
          say(`  ${node.node}: plugin unchained, rules, ipsets and files removed`);
        }
      }
      // every node the DaemonSet runs on, as its controller last counted them (for its current spec): a node with
      // no agent pod is not done, and two pods of one node do not stand for another
      const { generation } = (current.metadata ?? {}) as { generation?: number };
      const { desiredNumberScheduled, observedGeneration } = (current.status ?? {}) as { desiredNumberScheduled?: number; observedGeneration?: number };
      const counted = typeof desiredNumberScheduled === 'number' && (observedGeneration === undefined || generation === undefined || observedGeneration >= generation);
      const scheduled = counted ? desiredNumberScheduled : undefined;
      const doneNodes = new Set(nodes.filter(doneFor).map((node) => node.node));
      if (scheduled !== undefined && nodes.every(doneFor) && doneNodes.size >= scheduled) break;
      if (Date.now() >= deadline) {
        const pending = nodes.filter((node) => !doneFor(node));
        const missing = scheduled === undefined ? 0 : Math.max(0, scheduled - new Set(nodes.map((node) => node.node)).size);
        const waits = [
          ...pending.map((node) => `${node.node} (${node.error ?? (node.status?.uninstall.requested ? 'waiting for its CNI installer' : 'has not seen the request yet')})`),
          ...(missing === 0 ? [] : [`${missing} node(s) with no agent pod`]),
          ...(scheduled === undefined ? [`the DaemonSet's controller has not counted its nodes (status.desiredNumberScheduled for generation ${generation ?? '?'})`] : []),
        ];
        const message =
          `${pending.length + missing} node(s) did not finish in time: ${waits.join(', ')}. ` +
          `Nothing was deleted; the mesh stays marked as uninstalling (re-applying the install keeps the mark: cancel first to keep the mesh). Run ambit uninstall again, or cancel (${cancel}): the nodes that finished put their rules back.`;
        say(message);
        return { ok: false, nodes: summary(nodes, marker), deleted, stillLabelled: [], message };
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    // a cancel since the last look: the nodes are putting their rules back; deleting now would strand them
    const last = uninstallMarkerOf((await cluster.get(SERVICE_ACCOUNTS.named(AGENT_SERVICE_ACCOUNT_NAME, namespace)))?.metadata?.annotations).marker;
    if (last !== marker) {
      const message = `the uninstall was cancelled (the annotation ${UNINSTALL_ANNOTATION} on the serviceaccount ${namespace}/${AGENT_SERVICE_ACCOUNT_NAME} is ${last === undefined ? 'gone' : `now ${last}`}): nothing was deleted.`;
      say(message);
      return { ok: false, nodes: summary(nodes, marker), deleted, stillLabelled: [], message };
    }
    if (await cluster.delete(NAMESPACES.named(namespace))) deleted.push(`Namespace/${namespace}`);
  } else {
    say(`no namespace ${namespace}: no agent to wait for`);
  }
  for (const { kind: kindName, ref } of clusterKinds) {
    const items = await cluster.list(ref.all(), PART_OF_SELECTOR).catch((err: unknown) => {
      if (err instanceof ApiStatusError && err.status === 404) return []; // a kind the server does not serve
      throw err;
    });
    for (const item of items) {
      const name = item.metadata?.name ?? '';
      if (await cluster.delete(ref.named(name))) deleted.push(`${kindName}/${name}`);
    }
  }
  for (const name of deleted) say(`deleted ${name}`);
  if (!options.purge) say('kept the CRDs and every policy (ambit uninstall --purge deletes them)');
  const stillLabelled = (await cluster.list(NAMESPACES.all(), `${ENROLL_LABEL}=enabled`)).map((item) => item.metadata?.name ?? '').sort();
  if (stillLabelled.length > 0) say(`namespaces still labelled ${ENROLL_LABEL}=enabled (plain networking now; ambit unenroll removes the label): ${stillLabelled.join(', ')}`);
  return { ok: true, nodes: nodes.map((node) => ({ node: node.node, done: true })), deleted, stillLabelled, message: 'uninstalled' };
}

/** The node's agent is done for this run's marker (not for an earlier run's). */
function doneForMarker(node: NodeStatus, marker: string): boolean {
  return node.status?.uninstall.done === true && node.status.uninstall.marker === marker;
}

function summary(nodes: readonly NodeStatus[], marker: string): UninstallResult['nodes'] {
  return nodes.map((node) => ({ node: node.node, done: doneForMarker(node, marker), ...(node.error === undefined ? {} : { error: node.error }) }));
}

/** `--check`: what of Ambit is still on this node. */
export async function nodeLeftovers(dirs: { confDir: string; binDir: string; runDir: string; stateDir: string }): Promise<CheckResult[]> {
  const checks: CheckResult[] = [];
  try {
    const plan = await planRulesRemoval();
    const left = describeRemovalPlan(plan);
    const unreadable = plan.unreadable.map((entry) => `${entry.family} (${entry.backend}) cannot be read: ${entry.error}`);
    checks.push(
      left.length === 0 && unreadable.length === 0
        ? { id: 'node-rules', ok: true, message: 'no Ambit iptables rule, route, bridge entry, nft table or ipset' }
        : { id: 'node-rules', ok: false, message: [...left, ...unreadable].join('; '), hint: 'run `ambit cni uninstall` on this node (as root): it removes every rule and ipset, with or without an agent' },
    );
  } catch (err) {
    checks.push({ id: 'node-rules', ok: false, message: `cannot read the node's rules: ${(err as Error).message}`, hint: 'run as root in the node\'s network namespace, with iptables and ipset installed' });
  }
  /** One check of what a folder holds; a folder that cannot be read fails it, saying why (never a stack trace). */
  const probe = async <T>(id: string, dir: string, read: () => Promise<T>, judge: (found: T) => CheckResult): Promise<void> => {
    let found: T;
    try {
      found = await read();
    } catch (err) {
      checks.push({ id, ok: false, message: `cannot read ${dir}: ${(err as Error).message}`, hint: 'run it as root on the node, with the folders the node has' });
      return;
    }
    checks.push(judge(found));
  };
  await probe('node-cni-config', dirs.confDir, () => configsWithPlugin(dirs.confDir), (configs) =>
    configs.length === 0
      ? { id: 'node-cni-config', ok: true, message: `no CNI configuration in ${dirs.confDir} chains ${AMBIT_PLUGIN_TYPE}` }
      : { id: 'node-cni-config', ok: false, message: `${configs.map((c) => c.file).join(', ')} still chain ${AMBIT_PLUGIN_TYPE}`, hint: `run \`ambit cni uninstall --cni-conf-dir ${dirs.confDir} --cni-bin-dir ${dirs.binDir}\`` },
  );
  const binary = join(dirs.binDir, AMBIT_PLUGIN_TYPE);
  await probe('node-cni-binary', dirs.binDir, () => filesIn(dirs.binDir), (files) =>
    files.includes(binary)
      ? { id: 'node-cni-binary', ok: false, message: `${binary} is still there`, hint: `run \`ambit cni uninstall\`, or remove ${binary}` }
      : { id: 'node-cni-binary', ok: true, message: `no ${binary}` },
  );
  for (const [id, dir] of [['node-run-files', dirs.runDir], ['node-state-files', dirs.stateDir]] as const) {
    await probe(id, dir, () => filesIn(dir), (files) =>
      files.length === 0
        ? { id, ok: true, message: `no file of Ambit's under ${dir}` }
        : { id, ok: false, message: `left under ${dir}: ${files.join(', ')}`, hint: `once no agent runs on this node, remove ${dir}` },
    );
  }
  return checks;
}

async function filesIn(dir: string): Promise<string[]> {
  try {
    const entries = await readdir(dir, { recursive: true, withFileTypes: true });
    return entries.filter((entry) => !entry.isDirectory()).map((entry) => join(entry.parentPath, entry.name)).sort();
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return [];
    throw err;
  }
}
