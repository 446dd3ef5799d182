/**
 * The checks of `ambit check`: each reads what it needs through the context (which reads each object once) and says
 * whether it holds, and, when it does not, what to do. They only read, and never the CA Secret: what the mesh trusts
 * is in the published trust-bundle ConfigMap. The checks of each node (its CNI plugin chained, its rules, its
 * iptables backend, its workload certificates) read the agent's own /status through the pods proxy, as
 * `ambit status` does (judged by judgeNodes, pure, on those answers).
 */
import { X509Certificate } from 'node:crypto';
import { DEFAULT_PORTS, type AgentStatus } from '../agent/index.js';
import { isAmbitError } from '../core/errors/index.js';
import { DEFAULT_ROOT_NAMESPACE, ENROLL_LABEL, enrollmentLabel, ISTIO_DATAPLANE_LABEL } from '../core/enrollment/index.js';
import { issuedBy, parseTrustBundle, pemCertificates, TRUST_BUNDLE_CONFIGMAP_NAME, TRUST_BUNDLE_KEYS } from '../core/identity/index.js';
import {
  AGENT_DAEMONSET,
  CONTROLLER_DEPLOYMENT,
  crdName,
  INSTALL_COMMAND,
  INSTALL_KINDS,
  INSTALL_VERBS,
  installScope,
  ISTIO_POLICY_GROUP,
  MESH_CRDS,
  MESH_POLICY_GROUP,
  PART_OF_LABEL,
} from './install-objects.js';
import { canIHint, describeAccess, kind, KubeForbiddenError, NAMESPACES, type ApiObject, type ClusterClient } from './kube.js';
import { agentPodSelector, agentStatuses, type NodeStatus } from './status.js';

/** One line of the report: `hint` is there when the check failed, and says what to do. */
export interface CheckResult {
  readonly id: string;
  readonly ok: boolean;
  readonly message: string;
  readonly hint?: string;
}

export type Outcome = { readonly ok: true; readonly message: string } | { readonly ok: false; readonly message: string; readonly hint: string };

export interface Check {
  readonly id: string;
  /** When it fails, the checks after it are not run (they could only fail the same way): the API's reachability. */
  readonly gate?: boolean;
  run(context: CheckContext): Promise<Outcome>;
}

/** Kubernetes 1.30: bound service-account tokens name their pod's node, which the mesh CA's node authorization reads. */
export const MIN_KUBERNETES_MINOR = 30;
/** A root or issuer that expires sooner fails the check: the time an operator needs to rotate the CA calmly. */
export const CA_EXPIRY_WARNING_DAYS = 30;
const DAY_MS = 86_400_000;
/** The most namespace names a message lists. */
const MAX_LISTED = 10;

const ROOT = DEFAULT_ROOT_NAMESPACE;
const DEPLOYMENTS = kind('apps', 'v1', 'deployments');
const DAEMONSETS = kind('apps', 'v1', 'daemonsets');
const PODS = kind('', 'v1', 'pods');
const CONFIGMAPS = kind('', 'v1', 'configmaps');
const CRDS = kind('apiextensions.k8s.io', 'v1', 'customresourcedefinitions');
const INSTALL_HINT = `install Ambit: ${INSTALL_COMMAND}`;

/** What the checks read, each object once however many checks need it. */
export class CheckContext {
  readonly cluster: ClusterClient;
  readonly now: number;
  readonly #reads = new Map<string, Promise<unknown>>();

  constructor(cluster: ClusterClient, now = Date.now()) {
    this.cluster = cluster;
    this.now = now;
  }

  rootNamespace(): Promise<ApiObject | undefined> {
    return this.#once('root-namespace', () => this.cluster.get(NAMESPACES.named(ROOT)));
  }

  agentDaemonSet(): Promise<ApiObject | undefined> {
    return this.#once('agents', () => this.cluster.get(DAEMONSETS.named(AGENT_DAEMONSET, ROOT)));
  }

  /** The agent DaemonSet's pods (by its selector's matchLabels), each with its node. */
  agentPods(): Promise<ApiObject[]> {
    return this.#once('agent-pods', async () => {
      const daemonSet = await this.agentDaemonSet();
      const selector = daemonSet === undefined ? undefined : agentPodSelector(daemonSet);
      return selector === undefined ? [] : this.cluster.list(PODS.all(ROOT), selector);
    });
  }

  /** Each agent's /status (`ambit status`), through the API server's pods proxy. */
  agentStatuses(): Promise<NodeStatus[]> {
    return this.#once('agent-statuses', () => agentStatuses(this.cluster, ROOT));
  }

  #once<T>(key: string, read: () => Promise<T>): Promise<T> {
    let pending = this.#reads.get(key) as Promise<T> | undefined;
    if (pending === undefined) {
      pending = read();
      this.#reads.set(key, pending);
    }
    return pending;
  }

  /** What to say when an object of the install is missing: its namespace gone means Ambit is not installed. */
  async missing(what: string): Promise<Outcome> {
    if ((await this.rootNamespace()) === undefined) return { ok: false, message: `namespace ${ROOT} does not exist: Ambit is not installed`, hint: INSTALL_HINT };
    return { ok: false, message: `${what} does not exist`, hint: `re-apply the install to restore it: ${INSTALL_COMMAND}` };
  }
}

/** Runs the checks in order; a failed gate marks the rest as not checked. An error fails only its own check. */
export async function runChecks(checks: readonly Check[], context: CheckContext): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  let failedGate: string | undefined;
  for (const check of checks) {
    if (failedGate !== undefined) {
      results.push({ id: check.id, ok: false, message: `not checked: ${failedGate} failed`, hint: `fix ${failedGate} first` });
      continue;
    }
    let outcome: Outcome;
    try {
      outcome = await check.run(context);
    } catch (err) {
      outcome = failureOf(err);
    }
    results.push({ id: check.id, ...outcome });
    if (check.gate === true && !outcome.ok) failedGate = check.id;
  }
  return results;
}

/** A request the check could not make: a refused permission says which; anything else, what went wrong. */
function failureOf(err: unknown): Outcome {
  if (err instanceof KubeForbiddenError) {
    return { ok: false, message: `cannot check: missing permission ${err.permission}`, hint: `ask for it in a Role or ClusterRole (check with: ${err.canI})` };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { ok: false, message: `cannot check: ${message}`, hint: 'the API server failed the request: check its health, then run ambit check again' };
}

const apiReachable: Check = {
  id: 'api-reachable',
  gate: true,
  async run({ cluster }) {
    try {
      // API discovery, which (unlike /version) the real server serves to authenticated users only
      await cluster.readPath('/api');
    } catch (err) {
      if (isAmbitError(err, 'K8S_UNREACHABLE')) {
        return { ok: false, message: err.message, hint: `check the server address in ${cluster.source}, the network path to it, and that the API server is up (kubectl cluster-info)` };
      }
      if (isAmbitError(err, 'K8S_UNAUTHORIZED')) return { ok: false, message: err.message, hint: `renew the credentials of ${cluster.source} (a token may have expired)` };
      throw err;
    }
    return { ok: true, message: `the API server ${cluster.server} answers and accepts the credentials of ${cluster.source}` };
  },
};

/** `{major: 1, minor: 32}` from what GET /version answers; providers write minor as "30+" (EKS, GKE). */
export function parseServerVersion(body: ApiObject | undefined): { major: number; minor: number; text: string } | undefined {
  const text = typeof body?.gitVersion === 'string' ? body.gitVersion : `${String(body?.major)}.${String(body?.minor)}`;
  const major = Number.parseInt(String(body?.major ?? ''), 10);
  const minor = Number.parseInt(String(body?.minor ?? ''), 10);
  if (Number.isInteger(major) && Number.isInteger(minor)) return { major, minor, text };
  const m = /^v?(\d+)\.(\d+)/.exec(text);
  return m === null ? undefined : { major: Number(m[1]), minor: Number(m[2]), text };
}

/** Whether the version the server reports is one the mesh runs on. */
export function judgeServerVersion(body: ApiObject | undefined): Outcome {
  const version = parseServerVersion(body);
  if (version === undefined) {
    return { ok: false, message: `the API server's /version answer names no version (${JSON.stringify(body)})`, hint: 'check that the kubeconfig points at a Kubernetes API server' };
  }
  if (version.major > 1 || (version.major === 1 && version.minor >= MIN_KUBERNETES_MINOR)) {
    return { ok: true, message: `Kubernetes ${version.text} (1.${MIN_KUBERNETES_MINOR} or later)` };
  }
  return {
    ok: false,
    message: `Kubernetes ${version.text} is older than 1.${MIN_KUBERNETES_MINOR}`,
    hint: `upgrade the cluster to Kubernetes 1.${MIN_KUBERNETES_MINOR} or later: the mesh CA authorizes an agent by the node its bound service-account token names, which 1.${MIN_KUBERNETES_MINOR} adds`,
  };
}

const apiVersion: Check = {
  id: 'api-version',
  async run({ cluster }) {
    return judgeServerVersion(await cluster.readPath('/version'));
  },
};

const crds: Check = {
  id: 'crds',
  // By API discovery, which every authenticated user may read: the check needs no permission on the CRD objects.
  async run(context) {
    const names = MESH_CRDS.map(crdName);
    const served = new Set<string>();
    for (const version of new Set(MESH_CRDS.map((c) => c.version))) {
      const list = await context.cluster.readPath(`/apis/${MESH_POLICY_GROUP}/${version}`);
      for (const resource of (list?.resources as { name?: string }[] | undefined) ?? []) served.add(`${resource.name ?? ''}.${MESH_POLICY_GROUP}`);
    }
    const missing = names.filter((name) => !served.has(name));
    if (missing.length === 0) return { ok: true, message: `${names.join(' and ')} are served (API discovery of ${MESH_POLICY_GROUP})` };
    const hint = (await context.rootNamespace()) === undefined ? INSTALL_HINT : `re-apply the install to restore them: ${INSTALL_COMMAND}`;
    return { ok: false, message: `not served by the API server: ${missing.join(', ')}`, hint };
  },
};

const rootNamespace: Check = {
  id: 'root-namespace',
  async run(context) {
    const namespace = await context.rootNamespace();
    if (namespace === undefined) return { ok: false, message: `namespace ${ROOT} does not exist: Ambit is not installed`, hint: INSTALL_HINT };
    if ((namespace.status as { phase?: string } | undefined)?.phase === 'Terminating') {
      return { ok: false, message: `namespace ${ROOT} is being deleted`, hint: `wait until it is gone (kubectl get namespace ${ROOT}), then install again: ${INSTALL_COMMAND}` };
    }
    return { ok: true, message: `namespace ${ROOT} exists` };
  },
};

const controllerReady: Check = {
  id: 'controller-ready',
  async run(context) {
    const what = `deployment ${ROOT}/${CONTROLLER_DEPLOYMENT}`;
    const deployment = await context.cluster.get(DEPLOYMENTS.named(CONTROLLER_DEPLOYMENT, ROOT));
    if (deployment === undefined) return context.missing(what);
    const wanted = (deployment.spec as { replicas?: number } | undefined)?.replicas ?? 1;
    const ready = (deployment.status as { readyReplicas?: number } | undefined)?.readyReplicas ?? 0;
    const inspect = `kubectl -n ${ROOT} describe deployment ${CONTROLLER_DEPLOYMENT}; kubectl -n ${ROOT} logs deployment/${CONTROLLER_DEPLOYMENT}`;
    if (wanted === 0) return { ok: false, message: `${what} is scaled to 0 replicas`, hint: `kubectl -n ${ROOT} scale deployment ${CONTROLLER_DEPLOYMENT} --replicas 2` };
    if (ready === 0) return { ok: false, message: `${what}: no replica of ${wanted} is ready; agents get no updates and no certificates`, hint: `see why: ${inspect}` };
    if (ready < wanted) return { ok: false, message: `${what}: ${ready} of ${wanted} replicas ready`, hint: `see why: ${inspect}` };
    return { ok: true, message: `${what}: ${ready} of ${wanted} replicas ready` };
  },
};

const agentsReady: Check = {
  id: 'agents-ready',
  async run(context) {
    const what = `daemonset ${ROOT}/${AGENT_DAEMONSET}`;
    const daemonSet = await context.agentDaemonSet();
    if (daemonSet === undefined) return context.missing(what);
    const status = (daemonSet.status ?? {}) as { desiredNumberScheduled?: number; numberReady?: number };
    const desired = status.desiredNumberScheduled ?? 0;
    const ready = status.numberReady ?? 0;
    if (desired === 0) {
      return { ok: false, message: `${what}: no node runs an agent (0 scheduled)`, hint: `check that the cluster has nodes and what keeps the agent off them: kubectl -n ${ROOT} describe daemonset ${AGENT_DAEMONSET}` };
    }
    if (ready >= desired) return { ok: true, message: `${what}: the agent is ready on all ${desired} nodes` };
    const pods = await context.agentPods();
    const notReady = pods.filter((pod) => !podReady(pod));
    const nodes = notReady.map((pod) => `${String((pod.spec as { nodeName?: string } | undefined)?.nodeName ?? '(unscheduled)')} (pod ${pod.metadata?.name ?? ''}${waitingReason(pod)})`);
    const absent = Math.max(0, desired - pods.length);
    const where = [...(nodes.length === 0 ? [] : [`not ready on ${nodes.join(', ')}`]), ...(absent === 0 ? [] : [`${absent} node(s) have no agent pod yet`])];
    const pod = notReady[0]?.metadata?.name;
    return {
      ok: false,
      message: `${what}: ${ready} of ${desired} agents ready${where.length === 0 ? '' : `; ${where.join('; ')}`}`,
      hint: pod === undefined ? `see why: kubectl -n ${ROOT} describe daemonset ${AGENT_DAEMONSET}` : `see why: kubectl -n ${ROOT} describe pod ${pod}; kubectl -n ${ROOT} logs ${pod} -c agent`,
    };
  },
};

function podReady(pod: ApiObject): boolean {
  const conditions = (pod.status as { conditions?: { type?: string; status?: string }[] } | undefined)?.conditions ?? [];
  return conditions.some((c) => c.type === 'Ready' && c.status === 'True');
}

/** `: CrashLoopBackOff` when a container of the pod waits for that reason. */
function waitingReason(pod: ApiObject): string {
  const statuses = (pod.status as { containerStatuses?: { state?: { waiting?: { reason?: string } } }[] } | undefined)?.containerStatuses ?? [];
  const reason = statuses.map((s) => s.state?.waiting?.reason).find((r) => r !== undefined);
  return reason === undefined ? '' : `: ${reason}`;
}

const trustBundle: Check = {
  id: 'trust-bundle',
  async run(context) {
    const what = `configmap ${ROOT}/${TRUST_BUNDLE_CONFIGMAP_NAME}`;
    const configMap = await context.cluster.get(CONFIGMAPS.named(TRUST_BUNDLE_CONFIGMAP_NAME, ROOT));
    if (configMap === undefined) {
      if ((await context.rootNamespace()) === undefined) return context.missing(what);
      return { ok: false, message: `${what} does not exist: the controller has not published the trust bundle`, hint: `the controller publishes it from its CA Secret: see why it has not (kubectl -n ${ROOT} logs deployment/${CONTROLLER_DEPLOYMENT})` };
    }
    return judgeTrustBundle(what, (configMap.data ?? {}) as Record<string, string>, context.now);
  },
};

/** Whether the published roots and issuer hold for more than CA_EXPIRY_WARNING_DAYS: pure, on the ConfigMap's data. */
export function judgeTrustBundle(what: string, data: Readonly<Record<string, string>>, now: number): Outcome {
  const rotate = `rotate the mesh CA before then: put the new issuer (and root) in the Secret ${ROOT}/ambit-ca; the controller publishes the new root first, and signs with the new issuer once it has reached the nodes`;
  const republish = `the controller republishes it from its CA Secret: check the Secret's certificates and the controller's logs (kubectl -n ${ROOT} logs deployment/${CONTROLLER_DEPLOYMENT})`;
  let roots: X509Certificate[];
  try {
    roots = parseTrustBundle(data[TRUST_BUNDLE_KEYS.roots] ?? '', `${what} key ${TRUST_BUNDLE_KEYS.roots}`);
  } catch (err) {
    return { ok: false, message: err instanceof Error ? err.message : String(err), hint: republish };
  }
  let chain: X509Certificate[];
  try {
    chain = pemCertificates(data[TRUST_BUNDLE_KEYS.issuerChain] ?? '').map((pem) => new X509Certificate(pem));
  } catch {
    return { ok: false, message: `${what} key ${TRUST_BUNDLE_KEYS.issuerChain} does not parse`, hint: republish };
  }
  const issuer = chain[0];
  if (issuer === undefined) return { ok: false, message: `${what} has no issuer in ${TRUST_BUNDLE_KEYS.issuerChain}`, hint: republish };
  const anchors = roots.filter((root) => chain.some((cert) => issuedBy(cert, root)));
  if (anchors.length === 0) {
    return { ok: false, message: `${what}: the issuer ${name(issuer)} leads to none of its ${roots.length} root(s): peers refuse the certificates it signs`, hint: republish };
  }
  const horizon = now + CA_EXPIRY_WARNING_DAYS * DAY_MS;
  // a self-signed root is its own issuer: each certificate once
  const inUse = [...new Map([...chain, ...anchors].map((cert) => [cert.fingerprint256, cert])).values()];
  const notYet = inUse.find((cert) => Date.parse(cert.validFrom) > now);
  if (notYet !== undefined) return { ok: false, message: `${what}: ${name(notYet)} is not valid before ${day(Date.parse(notYet.validFrom))}`, hint: `check the clocks, and the certificates in the Secret ${ROOT}/ambit-ca` };
  const expiring = inUse.filter((cert) => Date.parse(cert.validTo) <= horizon);
  const described = `issuer ${name(issuer)} until ${day(Date.parse(issuer.validTo))}, root ${anchors.map((root) => `${name(root)} until ${day(Date.parse(root.validTo))}`).join(', ')}`;
  if (expiring.length > 0) {
    const when = expiring.map((cert) => `${name(cert)} ${Date.parse(cert.validTo) <= now ? 'has expired' : 'expires'} ${day(Date.parse(cert.validTo))}`).join('; ');
    return { ok: false, message: `${what}: ${when} (within ${CA_EXPIRY_WARNING_DAYS} days)`, hint: rotate };
  }
  const retiring = roots.length - anchors.length;
  return { ok: true, message: `${what}: ${described}${retiring === 0 ? '' : `; ${retiring} retiring root(s) the issuer does not use`}` };
}

function name(cert: X509Certificate): string {
  return `"${cert.subject.replace(/\n/g, ', ')}"`;
}

function day(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

const enrolledNamespaces: Check = {
  id: 'enrolled-namespaces',
  async run(context) {
    const selectors = [`${ENROLL_LABEL}=enabled`, `${ISTIO_DATAPLANE_LABEL}=ambient`];
    const byName = new Map<string, string>();
    for (const selector of selectors) {
      for (const namespace of await context.cluster.list(NAMESPACES.all(), selector)) {
        const namespaceName = namespace.metadata?.name ?? '';
        const label = enrollmentLabel(namespace.metadata?.labels ?? {});
        if (namespaceName !== ROOT && label !== undefined) byName.set(namespaceName, label);
      }
    }
    const names = [...byName.keys()].sort();
    const listed = `${names.slice(0, MAX_LISTED).join(', ')}${names.length > MAX_LISTED ? `, and ${names.length - MAX_LISTED} more` : ''}`;
    if (names.length === 0) return { ok: true, message: 'no namespace is enrolled' };
    if ((await context.agentDaemonSet()) !== undefined) return { ok: true, message: `${names.length} namespace(s) enrolled: ${listed}` };
    const gone = (await context.rootNamespace()) === undefined ? `namespace ${ROOT}` : `daemonset ${ROOT}/${AGENT_DAEMONSET}`;
    const labelled = names.slice(0, MAX_LISTED).map((n) => `${n} (${byName.get(n) ?? ''})`);
    return {
      ok: false,
      message: `${gone} is gone, but ${names.length} namespace(s) are still enrolled: ${labelled.join(', ')}${names.length > MAX_LISTED ? `, and ${names.length - MAX_LISTED} more` : ''}. Where the nodes keep Ambit's rules and CNI entry, their pods stay fail-closed`,
      hint: `finish the uninstall: re-apply (${INSTALL_COMMAND}), then run ambit uninstall; or, to keep Ambit, re-apply and unenroll them (${names.slice(0, 3).map((n) => `ambit unenroll ${n}`).join('; ')}${names.length > 3 ? '; ...' : ''})`,
    };
  },
};

/** How old the CNI installer's last report may be: it reports every few seconds (cni/installer.ts WATCH_RECHECK_MS). */
export const INSTALLER_REPORT_MAX_AGE_MS = 30_000;

/** One aspect of every node, judged on the agents' /status answers: which nodes fail it, and why. */
interface NodeAspect {
  readonly id: string;
  /** Why this node fails, or undefined when it passes. */
  readonly fails: (status: AgentStatus, now: number) => string | undefined;
  readonly passed: string;
  readonly hint: (failing: readonly NodeStatus[]) => string;
}

const logsOf = (node: NodeStatus | undefined, container: string) => `kubectl -n ${ROOT} logs ${node?.pod ?? `daemonset/${AGENT_DAEMONSET}`} -c ${container}`;

export const NODE_ASPECTS: readonly NodeAspect[] = [
  {
    id: 'nodes-cni',
    fails: (status, now) => {
      if (status.cni.reportedAt === null) return 'its CNI installer has not reported since the agent started';
      if (now - Date.parse(status.cni.reportedAt) > INSTALLER_REPORT_MAX_AGE_MS) return `its CNI installer last reported at ${status.cni.reportedAt}`;
      if (status.cni.chainedIn === null) return status.uninstall.requested ? 'the plugin is unchained: the mesh is being uninstalled' : 'no CNI configuration chains ambit-cni';
      return undefined;
    },
    passed: 'the CNI plugin is chained on every node (as its installer reported in the last 30 s)',
    hint: (failing) => `the install-cni sidecar keeps the plugin chained: see why it does not (${logsOf(failing[0], 'install-cni')})`,
  },
  {
    id: 'nodes-rules',
    fails: (status) => {
      if (!status.rules.enabled) return 'the agent runs with --no-rules: it captures nothing';
      if (status.rules.uninstalled) return 'its rules were removed (ambit uninstall / ambit cni uninstall)';
      return status.rules.ok ? undefined : `the last install or repair of its rules failed: ${status.rules.error ?? 'not installed'}`;
    },
    passed: "every agent's redirect rules are in place (last install or repair succeeded)",
    hint: (failing) => `see the agent's log (${logsOf(failing[0], 'agent')}); it repairs its rules on an interval`,
  },
  {
    id: 'nodes-iptables-backend',
    fails: (status) =>
      status.rules.backend !== null && status.rules.nodeBackend !== null && status.rules.backend !== status.rules.nodeBackend
        ? `the agent writes iptables-${status.rules.backend}, the node's rules are in iptables-${status.rules.nodeBackend}`
        : undefined,
    passed: "every agent writes its rules through the node's iptables backend",
    hint: (failing) => `restart the agent so it detects the node's backend again (kubectl -n ${ROOT} delete pod ${failing[0]?.pod ?? ''}), or pin it with AMBIT_IPTABLES_BACKEND`,
  },
  {
    id: 'workload-certificates',
    fails: (status, now) => {
      const expired = status.workloads.filter((w) => w.certificateNotAfter !== null && Date.parse(w.certificateNotAfter) <= now);
      return expired.length === 0 ? undefined : `expired certificates of ${expired.map((w) => `${w.namespace}/${w.name} (${w.certificateNotAfter ?? ''})`).join(', ')}`;
    },
    passed: 'no workload certificate is expired',
    hint: (failing) => `the agent renews from the controller's CA: see why it cannot (${logsOf(failing[0], 'agent')}; kubectl -n ${ROOT} logs deployment/${CONTROLLER_DEPLOYMENT})`,
  },
];

/** Judges one aspect on every agent's answer; an agent that did not answer fails it, saying so. */
export function judgeNodes(aspect: NodeAspect, nodes: readonly NodeStatus[], now: number): Outcome {
  if (nodes.length === 0) return { ok: false, message: 'no agent pod to ask', hint: `see why no agent runs: kubectl -n ${ROOT} describe daemonset ${AGENT_DAEMONSET}` };
  const failing = nodes.flatMap((node) => {
    const why = node.status === undefined ? `its agent's status could not be read: ${node.error ?? 'no answer'}` : aspect.fails(node.status, now);
    return why === undefined ? [] : [{ node, why }];
  });
  if (failing.length === 0) return { ok: true, message: `${aspect.passed} (${nodes.length} node(s))` };
  const unreadable = failing.filter((f) => f.node.status === undefined);
  const hint =
    unreadable.length === failing.length
      ? `the status is read through the pods proxy (get on pods/proxy in ${ROOT}) from the agent's metrics port ${DEFAULT_PORTS.metrics}: check that the agent runs (${logsOf(unreadable[0]?.node, 'agent')})`
      : aspect.hint(failing.filter((f) => f.node.status !== undefined).map((f) => f.node));
  return { ok: false, message: `${failing.length} of ${nodes.length} node(s): ${failing.map((f) => `${f.node.node}: ${f.why}`).join('; ')}`, hint };
}

const nodeChecks: readonly Check[] = NODE_ASPECTS.map((aspect) => ({
  id: aspect.id,
  async run(context) {
    if ((await context.agentDaemonSet()) === undefined) return context.missing(`daemonset ${ROOT}/${AGENT_DAEMONSET}`);
    return judgeNodes(aspect, await context.agentStatuses(), context.now);
  },
}));

/** `ambit check`: an installed mesh. */
export const CLUSTER_CHECKS: readonly Check[] = [apiReachable, apiVersion, crds, rootNamespace, controllerReady, agentsReady, ...nodeChecks, trustBundle, enrolledNamespaces];

const crdConflicts: Check = {
  id: 'crd-conflicts',
  async run({ cluster }) {
    const conflicts: { name: string; why: string }[] = [];
    let existing = 0;
    for (const crd of MESH_CRDS) {
      const object = await cluster.get(CRDS.named(crdName(crd)));
      if (object === undefined) continue;
      existing += 1;
      const spec = (object.spec ?? {}) as { group?: string; names?: { kind?: string } };
      const labels = object.metadata?.labels ?? {};
      const why = [
        ...(labels[PART_OF_LABEL.key] === PART_OF_LABEL.value ? [] : [`no label ${PART_OF_LABEL.key}=${PART_OF_LABEL.value}${ownerOf(labels)}`]),
        ...(spec.group === crd.group ? [] : [`group ${String(spec.group)}`]),
        ...(spec.names?.kind === crd.kind ? [] : [`kind ${String(spec.names?.kind)}`]),
      ];
      if (why.length > 0) conflicts.push({ name: crdName(crd), why: why.join(', ') });
    }
    if (conflicts.length > 0) {
      return {
        ok: false,
        message: `CRDs of Ambit's names exist that Ambit did not install: ${conflicts.map((c) => `${c.name} (${c.why})`).join('; ')}`,
        hint: `the install would take them over and replace their schemas: find out who owns them (kubectl get crd ${conflicts.map((c) => c.name).join(' ')} -o yaml), and remove them before installing, or install on another cluster`,
      };
    }
    const istio: string[] = [];
    for (const crd of MESH_CRDS) {
      const istioName = crdName({ group: ISTIO_POLICY_GROUP, resource: crd.resource });
      if ((await cluster.get(CRDS.named(istioName))) !== undefined) istio.push(istioName);
    }
    const note =
      istio.length === 0 ? '' : `; note: Istio's ${istio.join(' and ')} are present, which do not conflict (another group); Ambit reads Istio's policies only with the controller's --istio-api`;
    return { ok: true, message: `${existing === 0 ? 'no CRD of Ambit is installed yet' : `${existing} CRD(s) of an earlier Ambit install, which the install updates`}${note}` };
  },
};

/** `, managed by helm` from an object's recommended labels, when it has them. */
function ownerOf(labels: Readonly<Record<string, string>>): string {
  const owner = labels['app.kubernetes.io/managed-by'] ?? labels[PART_OF_LABEL.key];
  return owner === undefined ? '' : `; its ${labels['app.kubernetes.io/managed-by'] === undefined ? 'part-of' : 'managed-by'} label says ${owner}`;
}

const installPermissions: Check = {
  id: 'install-permissions',
  // SelfSubjectAccessReviews, which every authenticated user may create: one per kind the install applies and verb
  async run({ cluster }) {
    const asks = INSTALL_KINDS.flatMap((k) => INSTALL_VERBS.map((verb) => ({ verb, ref: installScope(k) })));
    const answers = await Promise.all(asks.map(async (ask) => ({ ...ask, allowed: await cluster.canI(ask.verb, ask.ref) })));
    const denied = answers.filter((a) => !a.allowed);
    if (denied.length === 0) {
      return { ok: true, message: `may ${INSTALL_VERBS.join(', ')} each of the ${INSTALL_KINDS.length} kinds the install applies (${INSTALL_KINDS.map((k) => k.kind).join(', ')})` };
    }
    return {
      ok: false,
      message: `missing ${denied.length} of the ${asks.length} permissions the install needs: ${denied.map((d) => describeAccess(d.verb, d.ref)).join('; ')}`,
      hint: `install as a cluster admin, or ask for these permissions in a ClusterRole (check one with: ${canIHint(denied[0]!.verb, denied[0]!.ref)})`,
    };
  },
};

/** `ambit check --pre`: what can be checked before an install. */
export const PRE_INSTALL_CHECKS: readonly Check[] = [apiReachable, apiVersion, crdConflicts, installPermissions];
