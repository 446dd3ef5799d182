import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { execa, type Options, type ResultPromise } from 'execa';
import { AmbitError, errnoCode } from '../core/errors/index.js';
import {
  buildCniConflist,
  CNI_PLUGIN_DIR,
  invokeCni,
  parsePodIp,
  parsePodIp6,
  readCniConfDir,
  TESTBED_CNIS,
  type CniInvocation,
  type TestbedCni,
} from './cni.js';
import { registerForExit, releaseFromExit, type SyncTeardown } from './exit-cleanup.js';
import {
  deleteHostLink,
  deleteHostLinkSync,
  deleteNamespaces,
  deleteNamespacesSync,
  hostLinkName,
  ipBatch,
  killPids,
  namespacePids,
  namespacePidsSync,
  namespacesWithPrefix,
  NETNS_ETC_DIR,
} from './netns.js';
import { claimHostLink, claimOwnership, OWNER_DIR, releaseHostLink, releaseOwnership } from './owner.js';
import { signalGroup, stopProcess } from './processes.js';

export interface TestbedOptions {
  nodes: number;
  podsPerNode: number;
  /** The pod network plugin: one for every node, or one per node (index 0 is node1). Default 'bridge'. */
  cni?: TestbedCni | TestbedCni[];
  /** Progress and teardown failures; failures go to stderr when absent. */
  log?: (msg: string) => void;
  /** Merged over every node's CNI network configuration: for tests of the testbed itself (a broken IPAM type). */
  cniConfigOverrides?: Record<string, unknown>;
  /**
   * Dual stack: every node gets an IPv6 address on the wire and an IPv6 pod CIDR beside its IPv4 one, and every pod
   * an IPv6 address from the same CNI ADD, as in a dual-stack cluster. Default false.
   */
  ipv6?: boolean;
  /**
   * A link from the host's own network namespace to the wire: a veth whose host end has HOST_LINK_IP, so processes in
   * the node namespaces reach a server the test runs in its own process (the API server double, the controller), as
   * cluster nodes reach their control plane. One testbed at a time has it (the address is the same for all): another
   * waits until it is given up. Default false: the host's network is then never touched.
   */
  hostLink?: boolean;
}

export interface TestbedNode {
  index: number;
  /** 'node1' */
  name: string;
  netns: string;
  ip: string;
  podCidr: string;
  /** Dual-stack testbeds: fd00:250::<i> on the wire and fd00:244:<i>::/64 for pods. */
  ip6?: string;
  podCidr6?: string;
  uplink: 'eth0';
  cni: TestbedCni;
  /**
   * The node's CNI configuration folder (the runtime's /etc/cni/net.d): a conflist with the primary plugin, read at
   * every ADD as a runtime does, so an installer can chain a plugin after it.
   */
  cniConfDir: string;
  /** The node's own plugin folder (the runtime's /opt/cni/bin), searched before Debian's. */
  cniBinDir: string;
}

/** What the runtime tells CNI plugins about a Kubernetes pod (containerd's CNI_ARGS). */
export interface TestbedPodOptions {
  /** Kubernetes namespace and name: sent as K8S_POD_NAMESPACE / K8S_POD_NAME with IgnoreUnknown=1. */
  k8s?: { namespace: string; name?: string };
}

export interface TestbedPod {
  /** 'pod-1-1' for node 1's first pod, unless named by addPod */
  name: string;
  node: TestbedNode;
  netns: string;
  ip: string;
  /** Dual-stack testbeds: the pod's IPv6 address. */
  ip6?: string;
  containerId: string;
  /** CNI_ARGS of its ADD, repeated for its DEL. */
  cniArgs?: string;
  /** The ADD's result, which the runtime caches and hands to DEL as prevResult. */
  cniResult?: unknown;
}

/** No options given: execa's defaults, so results type stdout and stderr as strings. */
type DefaultOptions = Record<never, never>;

/** Node IPs are 10.250.0.<i>/24 on the wire bridge and pod CIDRs 10.244.<i>.0/24, so i stops short of 255. */
const MAX_NODES = 254;
/** host-local hands out .2 to .254 of a /24 (.1 is the gateway). */
const MAX_PODS_PER_NODE = 253;
const WIRE_BRIDGE = 'wire0';
/** The host's address on the wire with `hostLink`: the top of the node subnet, which nodes (1 to 253) then leave free. */
export const HOST_LINK_IP = '10.250.0.254';
/**
 * The host link's second address: a second off-node process that must listen on the same ports (the controller's
 * second replica).
 */
export const HOST_LINK_IP2 = '10.250.0.253';
const NODE_SUBNET = '10.250.0.0/24';
/** The host link's wire end, in the wire namespace. */
const HOST_LINK_WIRE_PORT = 'h0';
/** How long a testbed waits for another to give the host link up (tests run in parallel; one holds it at a time). */
const HOST_LINK_WAIT_MS = 5 * 60_000;
const NODE_UPLINK = 'eth0';
/** How many random ids to try before concluding something is wrong with /run or the temp dir. */
const ID_ATTEMPTS = 5;

function nodeIp(index: number): string {
  return `10.250.0.${index}`;
}

function podCidr(index: number): string {
  return `10.244.${index}.0/24`;
}

function nodeIp6(index: number): string {
  return `fd00:250::${index.toString(16)}`;
}

function podCidr6(index: number): string {
  return `fd00:244:${index.toString(16)}::/64`;
}

/**
 * Why a testbed cannot be built on this machine, or undefined when it can. Tests take it through needsTestbed()
 * (test/prerequisites.ts): a visible skip, or under AMBIT_REQUIRE_TESTBED=1 a failure; the demo and the bench print it.
 */
export function testbedUnavailableReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root: builds network namespaces and runs CNI plugins';
  if (!onPath('ip')) return 'needs iproute2 (`ip`) on PATH';
  const missing = ['bridge', 'ptp', 'host-local'].filter((plugin) => !existsSync(join(CNI_PLUGIN_DIR, plugin)));
  if (missing.length > 0) return `needs containernetworking-plugins: ${missing.join(', ')} missing from ${CNI_PLUGIN_DIR}`;
  if (!existsSync('/proc/sys/net/bridge')) return 'needs the br_netfilter kernel module: run `modprobe br_netfilter`';
  return undefined;
}

/**
 * execa's declared return type for a generic options type is `ResultPromise<{} & O>`, which TypeScript cannot
 * simplify back to `ResultPromise<O>`; they are the same type, hence the cast.
 */
function inNamespace<OptionsType extends Options>(
  netns: string,
  file: string,
  args: readonly string[],
  options?: OptionsType,
): ResultPromise<OptionsType> {
  return execa('ip', ['netns', 'exec', netns, file, ...args], options) as unknown as ResultPromise<OptionsType>;
}

/** The node's uplink: a veth whose wire end is enslaved to the wire bridge and whose other end is the node's eth0. */
function wireLinkCommands(node: TestbedNode): string[] {
  const wirePort = `n${node.index}`;
  return [
    `link add ${wirePort} type veth peer name ${NODE_UPLINK} netns ${node.netns}`,
    `link set ${wirePort} master ${WIRE_BRIDGE}`,
    `link set ${wirePort} up`,
  ];
}

/** Whether an executable named `file` is on PATH (tests ask through needsTools() in test/prerequisites.ts). */
export function onPath(file: string): boolean {
  return (process.env['PATH'] ?? '').split(delimiter).some((dir) => dir !== '' && existsSync(join(dir, file)));
}

function validateOptions(options: TestbedOptions): TestbedCni[] {
  const { nodes, podsPerNode } = options;
  const maxNodes = options.hostLink === true ? MAX_NODES - 2 : MAX_NODES;
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > maxNodes) {
    const why = options.hostLink === true ? ` (the host link takes ${HOST_LINK_IP2} and ${HOST_LINK_IP})` : '';
    throw new AmbitError('TESTBED_INVALID_OPTIONS', `testbed nodes must be an integer from 1 to ${maxNodes}${why}; got ${nodes}`);
  }
  if (!Number.isInteger(podsPerNode) || podsPerNode < 0 || podsPerNode > MAX_PODS_PER_NODE) {
    throw new AmbitError(
      'TESTBED_INVALID_OPTIONS',
      `testbed podsPerNode must be an integer from 0 to ${MAX_PODS_PER_NODE}; got ${podsPerNode}`,
    );
  }
  const cni = options.cni ?? 'bridge';
  const perNode = Array.isArray(cni) ? cni : Array.from({ length: nodes }, () => cni);
  if (perNode.length !== nodes) {
    const given = `${perNode.length} plugins for ${nodes} nodes`;
    throw new AmbitError('TESTBED_INVALID_OPTIONS', `testbed cni lists ${given}; give one per node`);
  }
  for (const plugin of perNode) {
    if (!TESTBED_CNIS.includes(plugin)) {
      const supported = TESTBED_CNIS.join(' or ');
      throw new AmbitError('TESTBED_INVALID_OPTIONS', `testbed cni '${String(plugin)}' is not supported; use ${supported}`);
    }
  }
  return perNode;
}

/**
 * Nodes and pods as network namespaces on one machine. A "wire" namespace holds a bridge that plays the node
 * network; each node namespace plays a host (its eth0 on the wire, IP forwarding on, routes to the other nodes' pod
 * CIDRs) and gets its pods from the real bridge or ptp CNI plugin with host-local IPAM, run inside it as a container
 * runtime would. Everything lives in namespaces named `ambit-<6 hex>-...`; the host's own network is never touched.
 */
export class Testbed implements SyncTeardown {
  readonly nodes: TestbedNode[] = [];
  readonly pods: TestbedPod[] = [];
  /** Every namespace of this testbed starts with it: `ambit-<6 hex>-`. */
  readonly prefix: string;
  /** IPAM leases and anything a test wants to keep beside the testbed; removed by destroy(). */
  readonly tmpDir: string;
  /** With `hostLink`: HOST_LINK_IP, the host's address that every node reaches on the wire. */
  readonly hostIp: string | undefined;
  /** With `hostLink`: the host link's addresses, HOST_LINK_IP first. */
  readonly hostIps: readonly string[];

  readonly #id: string;
  readonly #log: (msg: string) => void;
  readonly #warn: (msg: string) => void;
  readonly #cniConfigOverrides: Record<string, unknown>;
  readonly #ipv6: boolean;
  readonly #processes = new Map<ChildProcess, string>();
  readonly #podNames = new Set<string>();
  readonly #podCounters = new Map<number, number>();
  /** Pods of one node are added one at a time: concurrent bridge ADDs race to create cni0 and its gateway address. */
  readonly #nodeQueues = new Map<number, Promise<unknown>>();
  #closed = false;
  #destroying: Promise<void> | undefined;

  private constructor(id: string, tmpDir: string, options: TestbedOptions) {
    this.#id = id;
    this.prefix = `ambit-${id}-`;
    this.tmpDir = tmpDir;
    this.#log = options.log ?? (() => {});
    this.#warn = options.log ?? ((msg) => process.stderr.write(`testbed: ${msg}\n`));
    this.#cniConfigOverrides = options.cniConfigOverrides ?? {};
    this.#ipv6 = options.ipv6 ?? false;
    this.hostIp = options.hostLink === true ? HOST_LINK_IP : undefined;
    this.hostIps = options.hostLink === true ? [HOST_LINK_IP, HOST_LINK_IP2] : [];
  }

  /** Builds the whole testbed; if any step fails, tears down what was made and rethrows. */
  static async create(options: TestbedOptions): Promise<Testbed> {
    const cnis = validateOptions(options);
    const unavailable = testbedUnavailableReason();
    if (unavailable !== undefined) throw new AmbitError('TESTBED_UNAVAILABLE', `cannot build a testbed: ${unavailable}`);
    const testbed = Testbed.#claim(options);
    try {
      await testbed.#build(cnis, options.podsPerNode);
    } catch (err) {
      await testbed.destroy();
      throw err;
    }
    return testbed;
  }

  static #claim(options: TestbedOptions): Testbed {
    for (let attempt = 1; ; attempt++) {
      const id = randomBytes(3).toString('hex');
      const tmpDir = mkdtempSync(join(tmpdir(), `ambit-${id}-`));
      try {
        // An id is free when no live testbed owns it and no stale one left namespaces under it.
        if (namespacesWithPrefix(`ambit-${id}-`).length > 0) {
          throw Object.assign(new Error(`namespaces named ambit-${id}-* exist`), { code: 'EEXIST' });
        }
        claimOwnership(id, tmpDir);
      } catch (err) {
        rmSync(tmpDir, { recursive: true, force: true });
        if (errnoCode(err) === 'EEXIST' && attempt < ID_ATTEMPTS) continue;
        throw new AmbitError('TESTBED_SETUP_FAILED', `cannot claim testbed id ${id} (owner records in ${OWNER_DIR})`, {
          cause: err,
        });
      }
      const testbed = new Testbed(id, tmpDir, options);
      registerForExit(testbed);
      return testbed;
    }
  }

  async #build(cnis: TestbedCni[], podsPerNode: number): Promise<void> {
    const started = performance.now();
    this.#log(`creating testbed ${this.prefix} (${cnis.length} nodes × ${podsPerNode} pods) in ${this.tmpDir}`);
    const wire = `${this.prefix}wire`;
    this.nodes.push(
      ...cnis.map((cni, position): TestbedNode => {
        const index = position + 1;
        const netns = `${this.prefix}n${index}`;
        const cniDir = join(this.tmpDir, 'cni', `node${index}`);
        return {
          index,
          name: `node${index}`,
          netns,
          ip: nodeIp(index),
          podCidr: podCidr(index),
          ...(this.#ipv6 ? { ip6: nodeIp6(index), podCidr6: podCidr6(index) } : {}),
          uplink: NODE_UPLINK,
          cni,
          cniConfDir: join(cniDir, 'net.d'),
          cniBinDir: join(cniDir, 'bin'),
        };
      }),
    );
    // Batched: starting a process costs tens of milliseconds here, an `ip` command inside a batch almost nothing.
    await ipBatch([wire, ...this.nodes.map((node) => node.netns)].map((netns) => `netns add ${netns}`));
    const wireCommands = ['link set lo up', `link add ${WIRE_BRIDGE} type bridge`, `link set ${WIRE_BRIDGE} up`];
    await ipBatch([...wireCommands, ...this.nodes.flatMap(wireLinkCommands)], wire);
    if (this.hostIp !== undefined) await this.#addHostLink(wire, this.hostIp);
    // allSettled, not all: destroy() must not start while a sibling node is still adding namespaces.
    const results = await Promise.allSettled(
      this.nodes.map(async (node) => {
        await this.#setUpNode(node);
        for (let pod = 0; pod < podsPerNode; pod++) await this.addPod(node);
      }),
    );
    const failure = results.find((result) => result.status === 'rejected');
    if (failure !== undefined) throw failure.reason;
    this.pods.sort((a, b) => a.node.index - b.node.index);
    this.#log(`testbed ${this.prefix} ready in ${Math.round(performance.now() - started)} ms`);
  }

  /** The veth from the host's namespace to the wire bridge; refused when the host already routes the node subnet. */
  async #addHostLink(wire: string, hostIp: string): Promise<void> {
    try {
      await claimHostLink(this.#id, HOST_LINK_WAIT_MS);
    } catch (err) {
      throw new AmbitError('TESTBED_SETUP_FAILED', `cannot take the host link for ${this.prefix}: ${String(err)}`, { cause: err });
    }
    const { stdout } = await execa('ip', ['-4', 'route', 'show', 'match', hostIp]);
    const clash = stdout.split('\n').filter((line) => line.trim() !== '' && !line.startsWith('default'));
    if (clash.length > 0) {
      throw new AmbitError('TESTBED_SETUP_FAILED', `the host already routes ${hostIp} (${clash.join('; ')}): a testbed host link to ${NODE_SUBNET} would clash`);
    }
    const link = hostLinkName(this.prefix);
    await ipBatch([`link add ${link} type veth peer name ${HOST_LINK_WIRE_PORT} netns ${wire}`, `addr add ${hostIp}/24 dev ${link}`, `addr add ${HOST_LINK_IP2}/24 dev ${link}`, `link set ${link} up`]);
    await ipBatch([`link set ${HOST_LINK_WIRE_PORT} master ${WIRE_BRIDGE}`, `link set ${HOST_LINK_WIRE_PORT} up`], wire);
  }

  /**
   * The node namespace forwards pod traffic like a host. On a bridge node, bridged same-node traffic must also cross
   * iptables (Kubernetes requires it, and the agent's capture rules rely on it); the setting is per namespace.
   */
  async #setUpNode(node: TestbedNode): Promise<void> {
    await mkdir(node.cniConfDir, { recursive: true });
    await mkdir(node.cniBinDir, { recursive: true });
    const conflist = buildCniConflist(node.cni, node.podCidr, join(this.tmpDir, 'ipam', node.name), this.#cniConfigOverrides, node.podCidr6);
    await writeFile(join(node.cniConfDir, `10-${node.cni}.conflist`), JSON.stringify(conflist, null, 2));
    const others = this.nodes.filter((other) => other !== node);
    const routes = others.flatMap((other) => [
      `route add ${other.podCidr} via ${other.ip}`,
      ...(other.podCidr6 !== undefined && other.ip6 !== undefined ? [`route add ${other.podCidr6} via ${other.ip6}`] : []),
    ]);
    // Dual-stack Kubernetes nodes forward IPv6 and pass bridged IPv6 through ip6tables too (kubeadm's prerequisites).
    const bridgeSysctls = node.cni === 'bridge' ? ['net.bridge.bridge-nf-call-iptables=1', ...(this.#ipv6 ? ['net.bridge.bridge-nf-call-ip6tables=1'] : [])] : [];
    const sysctls = ['net.ipv4.ip_forward=1', ...(this.#ipv6 ? ['net.ipv6.conf.all.forwarding=1'] : []), ...bridgeSysctls];
    const commands = [
      'link set lo up',
      `addr add ${node.ip}/24 dev ${NODE_UPLINK}`,
      // nodad: the address is usable at once, not after duplicate address detection's second or so
      ...(node.ip6 === undefined ? [] : [`addr add ${node.ip6}/64 dev ${NODE_UPLINK} nodad`]),
      `link set ${NODE_UPLINK} up`,
      ...routes,
      `netns exec ${node.netns} sysctl -q -w ${sysctls.join(' ')}`,
    ];
    try {
      await ipBatch(commands, node.netns);
    } catch (err) {
      if (node.cni === 'bridge' && String(err).includes('net/bridge')) {
        throw new AmbitError(
          'TESTBED_BR_NETFILTER_MISSING',
          `${node.name} (${node.netns}) has no net.bridge.bridge-nf-call-iptables: ` +
            'the br_netfilter kernel module is not loaded; ' +
            'run `modprobe br_netfilter` on the host (the testbed does not load kernel modules), or use the ptp CNI',
          { cause: err },
        );
      }
      throw err;
    }
  }

  pod(name: string): TestbedPod {
    const pod = this.pods.find((candidate) => candidate.name === name);
    if (pod === undefined) {
      const known = this.pods.map((candidate) => candidate.name).join(', ') || 'none';
      throw new AmbitError('TESTBED_UNKNOWN_POD', `testbed ${this.prefix} has no pod '${name}'; it has ${known}`);
    }
    return pod;
  }

  node(name: string): TestbedNode {
    const node = this.nodes.find((candidate) => candidate.name === name);
    if (node === undefined) {
      const known = this.nodes.map((candidate) => candidate.name).join(', ');
      throw new AmbitError('TESTBED_UNKNOWN_NODE', `testbed ${this.prefix} has no node '${name}'; it has ${known}`);
    }
    return node;
  }

  /** Runs a program inside a namespace (`ip netns exec`) with execa's options and result. */
  exec<OptionsType extends Options = DefaultOptions>(
    netns: string,
    file: string,
    args: readonly string[] = [],
    options?: OptionsType,
  ): ResultPromise<OptionsType> {
    return inNamespace(netns, file, args, options);
  }

  /**
   * Starts a long-running program inside a namespace and tracks it: destroy() (or removePod() of its pod) stops it,
   * SIGTERM then SIGKILL after 2 s, and so does the process's exit. It runs detached, in its own process group, so
   * its children go with it. Unlike exec(), `reject` defaults to false, so stopping it is not an error; stdout and
   * stderr are buffered (pass `buffer: false` for chatty programs) and readable as streams.
   */
  spawn<OptionsType extends Options = DefaultOptions>(
    netns: string,
    file: string,
    args: readonly string[] = [],
    options?: OptionsType,
  ): ResultPromise<OptionsType> {
    this.#assertOpen('spawn a process');
    return this.#track(inNamespace(netns, file, args, { reject: false, ...options, detached: true } as OptionsType), netns);
  }

  /**
   * Starts a long-running program in the host's own network namespace, tracked as spawn() tracks one: a server that
   * the nodes reach over the host link (see `hostLink`), as the controller of a cluster runs off its nodes.
   */
  spawnOnHost<OptionsType extends Options = DefaultOptions>(file: string, args: readonly string[] = [], options?: OptionsType): ResultPromise<OptionsType> {
    this.#assertOpen('spawn a process');
    if (this.hostIp === undefined) throw new AmbitError('TESTBED_INVALID_OPTIONS', `testbed ${this.prefix} has no host link: create it with hostLink: true`);
    return this.#track(execa(file, args, { reject: false, ...options, detached: true }) as unknown as ResultPromise<OptionsType>, 'host');
  }

  #track<Child>(child: Child, where: string): Child {
    const tracked = child as unknown as ChildProcess;
    this.#processes.set(tracked, where);
    tracked.once('exit', () => this.#processes.delete(tracked));
    return child;
  }

  /**
   * Names that resolve inside `node`'s namespace for the programs the testbed runs there (`ip netns exec` mounts
   * /etc/netns/NAME/hosts over /etc/hosts): the cluster's DNS for a Service name. Replaces what was set before.
   */
  async setHosts(node: TestbedNode, entries: Record<string, string[]>): Promise<void> {
    this.#assertOpen('set a node\'s hosts');
    const dir = join(NETNS_ETC_DIR, node.netns);
    await mkdir(dir, { recursive: true });
    const lines = ['127.0.0.1 localhost', '::1 localhost', ...Object.entries(entries).map(([ip, names]) => `${ip} ${names.join(' ')}`)];
    await writeFile(join(dir, 'hosts'), `${lines.join('\n')}\n`);
  }

  /**
   * Adds a pod to `node` through the plugins of the node's conflist (as a runtime would: in order, each given the
   * previous result); named `pod-<node>-<n>` unless `name` is given. A plugin's failure rejects with
   * TESTBED_CNI_FAILED carrying its `cniError`, after DEL has released what the ADD took.
   */
  addPod(node: TestbedNode | string, name?: string, options: TestbedPodOptions = {}): Promise<TestbedPod> {
    const target = typeof node === 'string' ? this.node(node) : node;
    const queued = (this.#nodeQueues.get(target.index) ?? Promise.resolve())
      .catch(() => undefined)
      .then(() => this.#attachPod(target, name, options));
    this.#nodeQueues.set(target.index, queued);
    return queued;
  }

  async #attachPod(node: TestbedNode, name: string | undefined, options: TestbedPodOptions): Promise<TestbedPod> {
    this.#assertOpen('add a pod');
    const ordinal = (this.#podCounters.get(node.index) ?? 0) + 1;
    const podName = name ?? `pod-${node.index}-${ordinal}`;
    if (this.#podNames.has(podName)) {
      const why = `testbed ${this.prefix} already has a pod named '${podName}'; pick another name`;
      throw new AmbitError('TESTBED_DUPLICATE_POD', why);
    }
    this.#podCounters.set(node.index, ordinal);
    this.#podNames.add(podName);
    const netns = `${this.prefix}n${node.index}p${ordinal}`;
    const cniArgs =
      options.k8s === undefined
        ? undefined
        : `IgnoreUnknown=1;K8S_POD_NAMESPACE=${options.k8s.namespace};K8S_POD_NAME=${options.k8s.name ?? podName};` +
          `K8S_POD_INFRA_CONTAINER_ID=${netns};K8S_POD_UID=${randomBytes(8).toString('hex')}`;
    const invocation = { ...(await this.#cniInvocation(node, netns)), cniArgs };
    try {
      await ipBatch([`netns add ${netns}`, `netns exec ${netns} ip link set lo up`]);
      const result = await invokeCni({ ...invocation, command: 'ADD' });
      const ip = parsePodIp(result);
      const ip6 = parsePodIp6(result);
      const pod: TestbedPod = {
        name: podName,
        node,
        netns,
        ip,
        ...(ip6 === undefined ? {} : { ip6 }),
        containerId: invocation.containerId,
        cniArgs,
        cniResult: JSON.parse(result) as unknown,
      };
      this.pods.push(pod);
      this.#log(`${podName} on ${node.name}: ${ip}${ip6 === undefined ? '' : ` ${ip6}`} (${node.cni}, netns ${netns})`);
      return pod;
    } catch (err) {
      this.#podNames.delete(podName);
      // The CNI spec has the runtime call DEL after a failed ADD, so the plugin can release what it took half-way.
      await invokeCni({ ...invocation, command: 'DEL' }).catch((delErr: unknown) => {
        this.#warn(`cleanup after failed ADD: ${String(delErr)}`);
      });
      const failure = await deleteNamespaces([netns]);
      if (failure !== '' && !failure.includes('No such file')) this.#warn(`cleanup after failed ADD: ${failure}`);
      throw err;
    }
  }

  /** Stops the pod's tracked processes, releases its network through CNI DEL, then deletes its namespace. */
  async removePod(pod: TestbedPod | string): Promise<void> {
    const target = typeof pod === 'string' ? this.pod(pod) : pod;
    const inPod = [...this.#processes].filter(([, netns]) => netns === target.netns);
    await Promise.all(inPod.map(([child]) => stopProcess(child)));
    await invokeCni({ ...(await this.#podCniInvocation(target)), command: 'DEL' });
    const failure = await deleteNamespaces([target.netns]);
    if (failure !== '') {
      throw new AmbitError('TESTBED_TEARDOWN_FAILED', `cannot delete ${target.name}'s namespace ${target.netns}: ${failure}`);
    }
    this.pods.splice(this.pods.indexOf(target), 1);
    this.#podNames.delete(target.name);
    this.#log(`removed ${target.name} (${target.ip})`);
  }

  /** The node's conflist as it is now (one IPAM data dir per node, so each node leases its own CIDR). */
  async #cniInvocation(node: TestbedNode, podNetns: string): Promise<Omit<CniInvocation, 'command'>> {
    const config = await readCniConfDir(node.cniConfDir);
    return { config, nodeNetns: node.netns, podNetns, containerId: podNetns, pluginDirs: [node.cniBinDir] };
  }

  async #podCniInvocation(pod: TestbedPod): Promise<Omit<CniInvocation, 'command'>> {
    return { ...(await this.#cniInvocation(pod.node, pod.netns)), cniArgs: pod.cniArgs, prevResult: pod.cniResult };
  }

  #assertOpen(action: string): void {
    if (this.#closed) throw new AmbitError('TESTBED_DESTROYED', `cannot ${action}: testbed ${this.prefix} has been destroyed`);
  }

  /**
   * Stops tracked processes, kills anything else still running in the namespaces, releases each pod through CNI DEL,
   * deletes every namespace of the testbed and its temp dir. Idempotent; never throws: failures are logged.
   */
  destroy(): Promise<void> {
    this.#destroying ??= this.#tearDown();
    return this.#destroying;
  }

  async #tearDown(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const started = performance.now();
    await this.#attempt('wait for pods being added', () => Promise.allSettled(this.#nodeQueues.values()));
    await this.#attempt('stop processes', () => Promise.all([...this.#processes.keys()].map((child) => stopProcess(child))));
    await this.#attempt('kill the processes left in the namespaces', async () => {
      killPids(await namespacePids(namespacesWithPrefix(this.prefix)));
    });
    await Promise.all(
      this.pods.map((pod) =>
        this.#attempt(`release ${pod.name} through CNI DEL`, async () => {
          const invocation: CniInvocation = { ...(await this.#podCniInvocation(pod)), command: 'DEL' };
          return invokeCni(invocation);
        }),
      ),
    );
    await this.#attempt('delete namespaces', async () => {
      const failure = await deleteNamespaces(namespacesWithPrefix(this.prefix));
      const left = namespacesWithPrefix(this.prefix);
      if (left.length > 0) throw new Error(`still present: ${left.join(', ')}: ${failure}`);
    });
    // Deleting the wire namespace takes the veth pair along; this is for a wire namespace that could not be deleted.
    if (this.hostIp !== undefined) {
      await this.#attempt('delete the host link', () => deleteHostLink(this.prefix));
      releaseHostLink(this.#id);
    }
    await this.#attempt('remove the temp dir', () => rm(this.tmpDir, { recursive: true, force: true }));
    await this.#attempt('release ownership', async () => releaseOwnership(this.#id));
    releaseFromExit(this);
    this.#log(`destroyed testbed ${this.prefix} in ${Math.round(performance.now() - started)} ms`);
  }

  async #attempt(step: string, action: () => Promise<unknown>): Promise<void> {
    try {
      await action();
    } catch (err) {
      this.#warn(`teardown of ${this.prefix}: cannot ${step}: ${String(err)}`);
    }
  }

  /**
   * Called by the exit handlers only, so also while destroy() is half-way (the process will not live to finish it).
   * No CNI DEL: deleting the namespaces takes their interfaces along.
   */
  teardownSync(): void {
    this.#closed = true;
    for (const child of this.#processes.keys()) if (child.pid !== undefined) signalGroup(child.pid, 'SIGKILL');
    const namespaces = namespacesWithPrefix(this.prefix);
    killPids(namespacePidsSync(namespaces));
    deleteNamespacesSync(namespaces);
    if (this.hostIp !== undefined) {
      deleteHostLinkSync(this.prefix);
      releaseHostLink(this.#id);
    }
    rmSync(this.tmpDir, { recursive: true, force: true });
    releaseOwnership(this.#id);
  }
}
