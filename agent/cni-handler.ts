import { mkdir, readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  CNI_PROTOCOL_VERSION,
  CniProtocolError,
  ENROLLMENT_FILE_NAME,
  isInterfaceName,
  type CniPod,
  type CniRequest,
  type CniResponse,
  type EnrollmentSnapshot,
} from '../core/cni/index.js';
import {
  canonicalIp,
  ENROLL_LABEL,
  enrollmentLabel,
  isNamespaceEnrolled,
  namespaceEnrollment,
  podExclusion,
  type NamespaceInfo,
  type PodInfo,
  type PodNetwork,
  type WorkloadStore,
} from '../core/discovery/index.js';
import { writeFileAtomic } from '../core/fs/index.js';
import { errnoCode } from '../core/errors/index.js';
import type { Logger } from '../core/log/index.js';

/** The agent's record of the pod networks the CNI reported, so a restart keeps capturing pods whose status lags. */
export const POD_NETWORKS_FILE_NAME = 'cni-pods.json';
/**
 * How long ADD waits for the pod object of an enrolled namespace to reach the agent's store (the runtime asks as soon
 * as the kubelet has the pod; the agent's watch may be a moment behind), or for the store's first full sync when
 * the namespace is unknown. Then ADD fails and the runtime retries.
 */
export const CNI_POD_WAIT_MS = 2_000;

export type PodEnrollmentDecision =
  | { readonly kind: 'enrolled'; readonly reason: string }
  | { readonly kind: 'not-enrolled'; readonly reason: string }
  /** The namespace enrolls its pods but this pod's object (labels, node) is not known yet. */
  | { readonly kind: 'pod-unknown'; readonly reason: string }
  /** The namespace is not known, and the store has not had its first full sync: it may just not have arrived. */
  | { readonly kind: 'not-synced'; readonly reason: string };

/** What the agent knows about a pod the runtime is creating. */
export interface PodEnrollmentFacts {
  readonly namespaceName: string;
  readonly podName: string;
  readonly namespace: NamespaceInfo | undefined;
  readonly pod: PodInfo | undefined;
  /** The store's first full sync is done: an unknown namespace is then one that does not exist. */
  readonly synced: boolean;
  /** The mesh's own namespace (`--root-namespace`). */
  readonly rootNamespace: string;
}

/**
 * Whether a pod the runtime is creating belongs in the mesh, from the agent's store, and why, in the words the
 * runtime's event shows. The store's rule (`namespaceEnrollment` and `podExclusion`, as `isWorkloadEnrolled` applies
 * them), with the reason spelled out and "not known yet" kept apart. The mesh's own namespace comes first: its pods
 * (the controller, waypoints) must always start, synced or not.
 */
export function decidePodEnrollment(facts: PodEnrollmentFacts): PodEnrollmentDecision {
  const { namespaceName, podName, namespace, pod } = facts;
  switch (namespaceEnrollment(namespaceName, namespace, facts.rootNamespace)) {
    case 'root':
      return { kind: 'not-enrolled', reason: `namespace ${namespaceName} is the mesh's own (--root-namespace): its pods are never enrolled` };
    case 'unknown':
      if (!facts.synced) {
        return { kind: 'not-synced', reason: `namespace ${namespaceName} is not known to the agent yet: it has not finished reading the cluster state (its first full sync)` };
      }
      return { kind: 'not-enrolled', reason: `namespace ${namespaceName} is not known to the agent` };
    case 'not-labelled':
      return { kind: 'not-enrolled', reason: `namespace ${namespaceName} is not labelled ${ENROLL_LABEL}=enabled` };
    case 'enrolled':
      break;
  }
  const label = enrollmentLabel(namespace!.labels);
  if (pod === undefined) return { kind: 'pod-unknown', reason: `namespace ${namespaceName} has ${label} but the agent has not seen pod ${namespaceName}/${podName} yet` };
  const exclusion = podExclusion(pod);
  if (exclusion?.kind === 'host-network') return { kind: 'not-enrolled', reason: `pod ${namespaceName}/${podName} uses the host network` };
  if (exclusion?.kind === 'opted-out') return { kind: 'not-enrolled', reason: `pod ${namespaceName}/${podName} opts out with ${exclusion.label}` };
  return { kind: 'enrolled', reason: `namespace ${namespaceName} has ${label}` };
}

/** Decisions that may change once the store has more: ADD waits a moment for them before it says "try again". */
function isPending(decision: PodEnrollmentDecision): boolean {
  return decision.kind === 'pod-unknown' || decision.kind === 'not-synced';
}

export interface CniHandlerOptions {
  store: WorkloadStore;
  nodeName: string;
  /** The mesh's own namespace (`--root-namespace`): never enrolled, never held back. */
  rootNamespace: string;
  /** Where the pod-network record lives (the CNI socket's folder, in /var/run: a reboot must forget it). */
  runDir: string;
  /** Where the enrollment file lives (persistent: after a reboot it is the plugin's only guide until the agent is up). */
  stateDir: string;
  /** Runs a reconcile after everything queued so far and resolves when the rules match the store. */
  reconcileNow: () => Promise<void>;
  /**
   * Called with an enrolled pod's addresses just before ADD records its network: a pod the runtime has just created
   * has no connections, so the reconcile that captures it has none to end (it does for pods that join otherwise).
   */
  podCreated: (ips: readonly string[]) => void;
  /** Whether the kernel's enrolled-pod set of `ip`'s family holds it (CHECK asks the kernel, not the agent's memory). */
  ruleInPlace: (ip: string) => Promise<boolean>;
  /**
   * Removes every rule and ipset, then the files (`removeFiles`), in the agent's one queue of rule changes; with
   * `ifMarked`, only while the mesh is still marked as uninstalling. Resolves with why it refused, or undefined.
   */
  uninstall: (options: { ifMarked: boolean; removeFiles: () => Promise<void> }) => Promise<string | undefined>;
  /**
   * `ambit uninstall` asked: status tells the installer to unchain the plugin, then send `uninstall`. Undefined while
   * not known (the marker not read yet): status then answers not-ready, which the installer takes as no answer.
   */
  uninstallRequested?: () => boolean | undefined;
  /**
   * `done`: the rules, ipsets and files are gone, and a pod ADD reaches now is not captured; `cancelling`: a cancel
   * is putting them back, and ADD waits for it (the runtime retries).
   */
  uninstallState?: () => 'none' | 'done' | 'cancelling';
  ready: () => boolean;
  log: Logger;
  podWaitMs?: number;
}

/**
 * The agent's answers on the CNI socket. ADD of an enrolled pod records its network in the store, waits for the
 * reconcile that puts its IP in the enrolled-pod set, and only then answers: when the runtime starts the pod's
 * containers, its traffic is already captured.
 */
export class CniHandler {
  readonly #options: CniHandlerOptions;
  /** What the enrollment file last written says; undefined until this process wrote one, so that it writes at start. */
  #lastSnapshot: string | undefined;
  #writes: Promise<void> = Promise.resolve();
  #installerReport: { chainedIn: string | null; at: Date } | undefined;

  constructor(options: CniHandlerOptions) {
    this.#options = options;
  }

  /**
   * Loads the pod networks recorded before a restart, and returns how many it kept. Once the store has had its first
   * full sync, those whose pod is gone from it are dropped (see forgetNetworksOfGonePods); before, all are kept.
   */
  async restore(): Promise<number> {
    const { store, runDir, log } = this.#options;
    let networks: PodNetwork[];
    try {
      const parsed = JSON.parse(await readFile(join(runDir, POD_NETWORKS_FILE_NAME), 'utf8')) as { pods?: unknown };
      networks = Array.isArray(parsed.pods) ? (parsed.pods as PodNetwork[]).filter(isPodNetwork) : [];
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') log.warn({ err }, `ignoring an unreadable ${POD_NETWORKS_FILE_NAME}`);
      return 0;
    }
    if (networks.length > 0) store.applyPodNetworks(networks.map((network) => ({ op: 'upsert' as const, network })));
    return networks.length - (await this.forgetNetworksOfGonePods());
  }

  /**
   * Drops the recorded networks of pods the store does not have (deleted while the agent was down, so their DEL
   * never reached it) and returns how many. Only on a complete view: before the store's first full sync a pod it
   * lacks may just not have been read yet (its file does not parse), and its record is what keeps it captured while
   * its status shows no IP. The agent calls it again on the first reconcile after the sync.
   */
  async forgetNetworksOfGonePods(): Promise<number> {
    const { store, log } = this.#options;
    if (!store.synced) return 0;
    const gone = store.podNetworks().filter((n) => store.pod(n.namespace, n.name) === undefined);
    if (gone.length === 0) return 0;
    store.applyPodNetworks(gone.map(({ namespace, name, containerId }) => ({ op: 'delete' as const, namespace, name, containerId })));
    log.info({ dropped: gone.length }, 'dropped pod networks of pods deleted while the agent was down');
    await this.#persistNetworks();
    return gone.length;
  }

  /** What the installer sidecar last reported of the node's CNI configuration, and when; undefined before it did. */
  installerReport(): { chainedIn: string | null; at: Date } | undefined {
    return this.#installerReport;
  }

  async handle(request: CniRequest): Promise<CniResponse> {
    switch (request.op) {
      case 'status':
        if (request.installer !== undefined) this.#installerReport = { chainedIn: request.installer.chainedIn, at: new Date() };
        switch (this.#options.uninstallRequested === undefined ? false : this.#options.uninstallRequested()) {
          case undefined:
            throw new CniProtocolError('not-ready', 'the agent has not read yet whether the mesh is being uninstalled');
          case true:
            return this.#ok({ reason: 'the mesh is being uninstalled', uninstall: true });
        }
        return this.#ok({ reason: this.#options.ready() ? 'agent ready' : 'agent starting' });
      case 'uninstall': {
        const refused = await this.#options.uninstall({
          ifMarked: request.ifMarked === true,
          removeFiles: async () => {
            await rm(join(this.#options.stateDir, ENROLLMENT_FILE_NAME), { force: true });
            await rm(join(this.#options.runDir, POD_NETWORKS_FILE_NAME), { force: true });
            this.#lastSnapshot = undefined;
          },
        });
        if (refused !== undefined) {
          this.#options.log.warn({ reason: refused }, 'uninstall over the CNI socket refused');
          return { version: CNI_PROTOCOL_VERSION, ok: false, error: { code: 'cancelled', message: refused } };
        }
        this.#options.log.info('uninstall requested over the CNI socket: every rule, ipset and file removed');
        return this.#ok({ reason: 'rules removed' });
      }
      case 'add':
        return this.#add(request.pod);
      case 'del':
        return this.#del(request.pod);
      case 'check':
        return this.#check(request.pod);
    }
  }

  /**
   * Writes the enrollment file, the plugin's only guide when the agent is down: after the first reconcile that
   * follows the store's first full sync (so a file an older agent wrote, without the root namespace, is replaced),
   * then whenever the set of enrolled namespaces changes. Called after each reconcile. Not before the first full
   * sync: a partial view would replace the last complete one with a list missing namespaces that are enrolled.
   */
  async writeEnrollmentSnapshot(): Promise<void> {
    const { store, stateDir, rootNamespace } = this.#options;
    if (!store.synced) return;
    const enrolledNamespaces = store
      .namespaces()
      .filter((ns) => isNamespaceEnrolled(ns, rootNamespace))
      .map((ns) => ns.name)
      .sort();
    const key = enrolledNamespaces.join(',');
    if (key === this.#lastSnapshot) return;
    const snapshot: EnrollmentSnapshot = { version: CNI_PROTOCOL_VERSION, written: new Date().toISOString(), rootNamespace, enrolledNamespaces };
    await this.#write(join(stateDir, ENROLLMENT_FILE_NAME), JSON.stringify(snapshot, null, 2), 0o644);
    // Only once it is on disk: a write that failed is tried again after the next reconcile.
    this.#lastSnapshot = key;
  }

  async #add(pod: CniPod): Promise<CniResponse> {
    const { store, log } = this.#options;
    const ips = canonicalIps(pod);
    // until the node is done the mesh captures as before: its plugin goes first, its rules after
    const uninstall = this.#options.uninstallState?.() ?? 'none';
    if (uninstall === 'cancelling') throw new CniProtocolError('not-ready', 'the uninstall was cancelled and the rules are coming back; try again');
    if (uninstall === 'done') {
      const reason = 'Ambit was uninstalled from this node (ambit uninstall): the pod starts outside the mesh';
      log.info({ pod: `${pod.namespace}/${pod.name}`, reason }, 'CNI ADD: pod is not in the mesh');
      return this.#ok({ enrolled: false, reason });
    }
    let decision = this.#decide(pod);
    if (isPending(decision)) decision = await this.#waitForStore(pod);
    if (isPending(decision)) throw new CniProtocolError('not-ready', `${decision.reason}; try again`);
    if (decision.kind === 'not-enrolled') {
      log.info({ pod: `${pod.namespace}/${pod.name}`, reason: decision.reason }, 'CNI ADD: pod is not in the mesh');
      return this.#ok({ enrolled: false, reason: decision.reason });
    }
    const podInfo = store.pod(pod.namespace, pod.name)!;
    if (podInfo.node !== undefined && podInfo.node !== this.#options.nodeName) {
      throw new CniProtocolError('not-ready', `pod ${pod.namespace}/${pod.name} is scheduled on ${podInfo.node}, not on this agent's node ${this.#options.nodeName}`);
    }
    const network = { namespace: pod.namespace, name: pod.name, containerId: pod.containerId, ips, ...(pod.hostInterfaces ? { hostInterfaces: pod.hostInterfaces } : {}) };
    this.#options.podCreated(ips);
    store.applyPodNetworks([{ op: 'upsert', network }]);
    await this.#persistNetworks();
    await this.#options.reconcileNow();
    // A dual-stack pod is answered only once both sets hold it: IPv4 captured, IPv6 refused (the mesh does not carry it).
    const inSets = new Set([...store.localEnrolledIps(4), ...store.localEnrolledIps(6)]);
    const missing = ips.filter((ip) => !inSets.has(ip));
    if (missing.length > 0) {
      throw new CniProtocolError('not-ready', `pod ${pod.namespace}/${pod.name}: ${missing.join(', ')} not in the enrolled pod sets after reconcile (another pod holds the IP?)`);
    }
    log.info(
      { pod: `${pod.namespace}/${pod.name}`, ips, hostInterfaces: pod.hostInterfaces, containerId: pod.containerId, reason: decision.reason },
      'CNI ADD: pod enrolled, rules in place',
    );
    return this.#ok({ enrolled: true, reason: decision.reason });
  }

  async #del(pod: CniPod): Promise<CniResponse> {
    const { store, log } = this.#options;
    const known = store.podNetwork(pod.namespace, pod.name);
    store.applyPodNetworks([{ op: 'delete', namespace: pod.namespace, name: pod.name, containerId: pod.containerId }]);
    if (known !== undefined && known.containerId === pod.containerId) {
      await this.#persistNetworks();
      await this.#options.reconcileNow();
      log.info({ pod: `${pod.namespace}/${pod.name}`, containerId: pod.containerId }, 'CNI DEL: pod network forgotten');
    }
    return this.#ok({ reason: known ? 'pod network removed' : 'pod network not known (nothing to do)' });
  }

  async #check(pod: CniPod): Promise<CniResponse> {
    const decision = this.#decide(pod);
    if (isPending(decision)) throw new CniProtocolError('not-ready', decision.reason);
    if (decision.kind === 'not-enrolled') return this.#ok({ enrolled: false, reason: decision.reason });
    const missing: string[] = [];
    for (const ip of canonicalIps(pod)) if (!(await this.#options.ruleInPlace(ip))) missing.push(ip);
    if (missing.length > 0) throw new CniProtocolError('rules-missing', `pod ${pod.namespace}/${pod.name} is enrolled but ${missing.join(', ')} is not in the enrolled pod sets`);
    return this.#ok({ enrolled: true, reason: decision.reason });
  }

  #decide(pod: CniPod): PodEnrollmentDecision {
    const { store, rootNamespace } = this.#options;
    return decidePodEnrollment({
      namespaceName: pod.namespace,
      podName: pod.name,
      namespace: store.namespace(pod.namespace),
      pod: store.pod(pod.namespace, pod.name),
      synced: store.synced,
      rootNamespace,
    });
  }

  /** The decision once the store has what it lacked (the pod, or the first full sync), or as it stands at the deadline. */
  #waitForStore(pod: CniPod): Promise<PodEnrollmentDecision> {
    const { store } = this.#options;
    return new Promise((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        store.off('change', onChange);
        resolve(this.#decide(pod));
      };
      const onChange = () => {
        if (!isPending(this.#decide(pod))) finish();
      };
      const timer = setTimeout(finish, this.#options.podWaitMs ?? CNI_POD_WAIT_MS);
      store.on('change', onChange);
    });
  }

  #persistNetworks(): Promise<void> {
    const pods = this.#options.store.podNetworks();
    return this.#write(join(this.#options.runDir, POD_NETWORKS_FILE_NAME), JSON.stringify({ version: CNI_PROTOCOL_VERSION, pods }), 0o600);
  }

  /** One write at a time, each atomic and on disk when it resolves, so a reader (or a power loss) never sees half a file. */
  #write(path: string, text: string, mode: number): Promise<void> {
    const write = async () => {
      await mkdir(dirname(path), { recursive: true, mode: 0o700 });
      await writeFileAtomic(path, text, { mode });
    };
    const result = this.#writes.then(write);
    this.#writes = result.catch(() => undefined);
    return result;
  }

  #ok(fields: { enrolled?: boolean; reason?: string; uninstall?: boolean }): CniResponse {
    return { version: CNI_PROTOCOL_VERSION, ok: true, ...fields };
  }
}

function canonicalIps(pod: CniPod): string[] {
  return pod.ips.map((ip) => {
    const canonical = canonicalIp(ip);
    if (canonical === undefined) throw new CniProtocolError('bad-request', `pod IP ${ip} is not an IP address`);
    return canonical;
  });
}

function isPodNetwork(value: unknown): value is PodNetwork {
  const v = value as Partial<PodNetwork> | null;
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof v.namespace === 'string' &&
    typeof v.name === 'string' &&
    typeof v.containerId === 'string' &&
    Array.isArray(v.ips) &&
    v.ips.every((ip) => typeof ip === 'string' && canonicalIp(ip) === ip) &&
    (v.hostInterfaces === undefined || (Array.isArray(v.hostInterfaces) && v.hostInterfaces.every((n) => typeof n === 'string' && isInterfaceName(n))))
  );
}
