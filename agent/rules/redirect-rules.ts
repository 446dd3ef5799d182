// The orchestrator: installs, repairs, syncs and removes every piece of the capture, one operation at a time.
import { AmbitError } from '../../core/errors/index.js';
import { silentLogger, type Logger } from '../../core/log/index.js';
import { isOnPath, type CommandOptions } from '../exec.js';
import { detectBackend, type IptablesBackend, type IptablesBackendChoice, missingIptables, presentBackends, restoreCommand, saveCommand } from './backend.js';
import { AMBIT_BRIDGE_MAC, type BridgeSetMembers, buildBridgeFdbRemoval, buildBridgeFdbSync, buildBridgeSetSync, buildBridgeTable, buildBridgeTableRemoval, readBridgeRuleset, readFdb } from './bridge.js';
import { applyCommand, batchText, componentLogger, IPSET_DESTROY_HINT, IPSET_HINT, IPV6_RESTORE_HINT, NAT_RESTORE_HINT, NET_ADMIN_HINT, NFT_HINT, sameLines } from './commands.js';
import { deleteTcpFlows } from './conntrack.js';
import { type AddressFamily, FAMILIES, IPV4, IPV6 } from './family.js';
import { ALL_SETS, AMBIT_BOUND_SET, buildIpsetSync, buildSourceBindingSync, createSetLine, type IpsetSpec, listSets, temporarySetName } from './ipsets.js';
import { AMBIT_IPV6_REJECT_CHAIN, AMBIT_LOCAL_DNAT_CHAIN, AMBIT_MANGLE_CHAIN, AMBIT_MANGLE_OUTPUT_CHAIN, AMBIT_PREROUTING_CHAIN, AMBIT_SOURCE_CHECK_CHAIN, buildIpv6RejectRemoval, buildIpv6RejectRules, buildLocalDnatRemoval, buildLocalDnatRules, buildMangleRemoval, buildMangleRules, buildNatRemoval, buildNatRules, buildSourceCheckRemoval, buildSourceCheckRules, DEFAULT_INBOUND_PORT, DEFAULT_OUTBOUND_PORT, type NatRulesOptions } from './iptables.js';
import { buildTransparentRouting, buildTransparentRoutingRemoval, readIpState, readTransparentRouting } from './routing.js';
import { podInterfaces, type PodInterfaces, resolveSourceBindings, type SourceBinding } from './source-binding.js';

export interface RedirectRulesOptions {
  nodeIp: string;
  outboundPort?: number;
  inboundPort?: number;
  backend?: IptablesBackendChoice;
  log?: Logger;
  /** When set, every command runs as `ip netns exec <netns> <cmd>`: for tests and tooling run from outside. */
  netns?: string;
}

export interface RemoveRedirectRulesOptions {
  /** 'auto' removes Ambit's rules from every backend that has them, so a switched backend leaves nothing behind. */
  backend?: IptablesBackendChoice;
  log?: Logger;
  netns?: string;
}

/**
 * Removes everything Ambit installs, whichever pieces exist, so it also cleans up after a crash: the raw, nat, mangle
 * and filter chains with their jumps (in every backend that has them), the fwmark rule and route table, the bridge fdb entries
 * and nft table, and the ipsets. Used by `ambit agent --cleanup` and by RedirectRules.remove().
 */
export function removeRedirectRules(options: RemoveRedirectRulesOptions = {}): Promise<void> {
  return removeRules(componentLogger(options.log), options.backend ?? 'auto', options.netns);
}

/**
 * What of Ambit is in the node's namespace, as the batches that would remove it: per iptables backend of each family,
 * the fwmark rule and route table, the bridge fdb entries and nft table, and the ipsets. Empty everywhere when
 * nothing is left (`ambit uninstall --check`). A backend that cannot be read is `unreadable`, never "nothing there".
 */
export interface RulesRemovalPlan {
  readonly chains: ReadonlyArray<{ readonly family: 'iptables' | 'ip6tables'; readonly backend: IptablesBackend; readonly batch: string }>;
  readonly unreadable: ReadonlyArray<{ readonly family: 'iptables' | 'ip6tables'; readonly backend: IptablesBackend; readonly error: string }>;
  readonly routing: readonly string[];
  readonly fdb: readonly string[];
  readonly nftTable: string;
  readonly ipsets: readonly string[];
}

/** Reads the node's namespace and says what removing Ambit from it would do; changes nothing. */
export async function planRulesRemoval(options: { backend?: IptablesBackendChoice; netns?: string } = {}): Promise<RulesRemovalPlan> {
  const commandOptions: CommandOptions = { netns: options.netns };
  const choice = options.backend ?? 'auto';
  const backends = choice === 'auto' ? await presentBackends(IPV4) : [choice];
  const chains: Array<RulesRemovalPlan['chains'][number]> = [];
  const unreadable: Array<RulesRemovalPlan['unreadable'][number]> = [];
  const read = async (family: AddressFamily, familyBackends: readonly IptablesBackend[], removal: (dump: string) => string, required: boolean) => {
    // the whole dump rather than `-t nat`: asking legacy iptables for a table creates it, and an empty legacy nat
    // table on an nft node makes every iptables-nft command warn about it
    const dumps = await Promise.allSettled(familyBackends.map((backend) => applyCommand([saveCommand(family, backend)], commandOptions, NET_ADMIN_HINT)));
    if (required && dumps.length > 0 && dumps.every((dump) => dump.status === 'rejected')) throw (dumps[0] as PromiseRejectedResult).reason ?? missingIptables(family);
    for (const [index, backend] of familyBackends.entries()) {
      const dump = dumps[index];
      if (dump?.status !== 'fulfilled') {
        unreadable.push({ family: family.iptablesCommand, backend, error: String((dump as PromiseRejectedResult | undefined)?.reason) });
        continue;
      }
      const batch = removal(dump.value.stdout);
      if (batch !== '') chains.push({ family: family.iptablesCommand, backend, batch });
    }
  };
  if (backends.length === 0) throw missingIptables(IPV4);
  await read(IPV4, backends, (dump) => buildLocalDnatRemoval(dump) + buildSourceCheckRemoval(dump) + buildMangleRemoval(dump) + buildNatRemoval(dump), true);
  // A backend without ip6tables cannot have Ambit's IPv6 chain (install() refuses to run without it).
  const ipv6Backends = (await presentBackends(IPV6).catch(() => [])).filter((backend) => backends.includes(backend));
  await read(IPV6, ipv6Backends, buildIpv6RejectRemoval, false);
  const routing = buildTransparentRoutingRemoval(await readTransparentRouting(commandOptions));
  const fdb = buildBridgeFdbRemoval(await readFdb(commandOptions));
  const nftTable = (await isOnPath('nft')) ? buildBridgeTableRemoval(await readBridgeRuleset(commandOptions)) : '';
  const existingSets = await listSets(commandOptions);
  const ipsets = ALL_SETS.flatMap((spec) => [spec.name, temporarySetName(spec)]).filter((set) => existingSets.has(set));
  return { chains, unreadable, routing, fdb, nftTable, ipsets };
}

/** The pieces a plan would remove, one line each, for a person: empty when nothing of Ambit is left. */
export function describeRemovalPlan(plan: RulesRemovalPlan): string[] {
  return [
    ...plan.chains.map((chain) => `${chain.family} rules (${chain.backend}): ${chain.batch.split('\n').filter((line) => line.startsWith('-') || line.startsWith(':')).length} lines`),
    ...plan.routing.map((line) => `routing: ${line}`),
    ...plan.fdb.map((line) => `bridge fdb: ${line}`),
    ...(plan.nftTable === '' ? [] : ['the nft bridge table']),
    ...plan.ipsets.map((set) => `ipset ${set}`),
  ];
}

async function removeRules(log: Logger, choice: IptablesBackendChoice, netns: string | undefined): Promise<void> {
  const commandOptions: CommandOptions = { netns };
  const plan = await planRulesRemoval({ backend: choice, netns });
  for (const { family, backend, error } of plan.unreadable) log.warn({ backend, family, err: error }, 'cannot read this iptables backend; leaving it alone');
  for (const { family, backend, batch } of plan.chains) {
    await applyCommand([restoreCommand(family === 'iptables' ? IPV4 : IPV6, backend), '-w', '--noflush'], { ...commandOptions, input: batch }, NET_ADMIN_HINT);
  }
  if (plan.routing.length > 0) await applyCommand(['ip', '-batch', '-'], { ...commandOptions, input: batchText(plan.routing) }, NET_ADMIN_HINT);
  if (plan.fdb.length > 0) await applyCommand(['bridge', '-batch', '-'], { ...commandOptions, input: batchText(plan.fdb) }, NET_ADMIN_HINT);
  if (plan.nftTable !== '') await applyCommand(['nft', '-f', '-'], { ...commandOptions, input: plan.nftTable }, NFT_HINT);
  // last: the rules used the sets, and a set in use cannot be destroyed
  if (plan.ipsets.length > 0) {
    const batch = plan.ipsets.map((set) => `destroy ${set}`).join('\n') + '\n';
    await applyCommand(['ipset', 'restore'], { ...commandOptions, input: batch }, IPSET_DESTROY_HINT);
  }
  const removed = describeRemovalPlan(plan);
  if (removed.length > 0) {
    const backends = plan.chains.filter((chain) => chain.family === 'iptables').map((chain) => chain.backend);
    const ipv6Backends = plan.chains.filter((chain) => chain.family === 'ip6tables').map((chain) => chain.backend);
    log.info({ backends, chains: backends.length, ipv6Backends, ipsets: plan.ipsets.length, routing: plan.routing.length, bridge: plan.fdb.length + (plan.nftTable === '' ? 0 : 1) }, 'redirect rules removed');
  } else {
    log.debug('no redirect rules to remove');
  }
}

/**
 * Ambit's traffic capture in the node's network namespace: the `ambit-pods-v4` ipset of enrolled local pods, the
 * nat chain that DNATs their TCP to the agent, the mark, route and bridge redirect that bring the pods' replies
 * back to the agent's transparent connections, the `ambit-pods-v6` ipset with the chains that refuse the pods'
 * IPv6 TCP, and the source binding (raw chain, its two ipsets, the bridge table's sets) that drops TCP from a pod
 * address arriving through another interface than its own. Operations are serialized, so a pod sync racing a
 * reinstall cannot interleave their batches.
 */
export class RedirectRules {
  readonly #nodeIp: string;
  readonly #outboundPort: number;
  readonly #inboundPort: number;
  readonly #backendChoice: IptablesBackendChoice;
  readonly #commandOptions: CommandOptions;
  readonly #log: Logger;
  #backend: IptablesBackend | undefined;
  /** Sorted members of each live set as last written by this instance; absent when unknown. */
  #appliedPods = new Map<AddressFamily, string[]>();
  /** The source bindings last written, and the CNI-reported interfaces they were resolved from; absent when unknown. */
  #appliedBindings: { key: string; bindings: SourceBinding[] } | undefined;
  #previousOperation: Promise<unknown> = Promise.resolve();

  constructor(options: RedirectRulesOptions) {
    this.#nodeIp = options.nodeIp;
    this.#outboundPort = options.outboundPort ?? DEFAULT_OUTBOUND_PORT;
    this.#inboundPort = options.inboundPort ?? DEFAULT_INBOUND_PORT;
    this.#backendChoice = options.backend ?? 'auto';
    this.#commandOptions = { netns: options.netns };
    this.#log = componentLogger(options.log);
    validateOptions(options.nodeIp, this.#outboundPort, this.#inboundPort, this.#backendChoice);
    if (this.#backendChoice !== 'auto') this.#backend = this.#backendChoice;
  }

  /** The iptables backend in use: known from the start when forced, after the first install() when 'auto'. */
  get backend(): IptablesBackend | undefined {
    return this.#backend;
  }

  /**
   * Creates the ipsets, the raw, nat, mangle and filter chains with their jumps, the fwmark rule and its route table, and
   * the bridge redirect (fdb entries, nft table); running it again repairs whatever drifted and changes nothing else.
   */
  install(): Promise<void> {
    return this.#serialize(async () => {
      const backend = await this.#resolveBackend();
      if (!(await isOnPath('nft'))) throw missingNft();
      if (!(await isOnPath('conntrack'))) throw missingConntrack();
      // Without ip6tables the IPv6 of enrolled pods could not be refused: no capture at all rather than half of it.
      if (!(await isOnPath(saveCommand(IPV6, backend)))) throw missingIptables(IPV6);
      const existingSets = await listSets(this.#commandOptions);
      const createdSets = ALL_SETS.filter((spec) => !existingSets.has(spec.name));
      if (createdSets.length > 0) {
        const input = createdSets.map((spec) => createSetLine(spec) + '\n').join('');
        await applyCommand(['ipset', 'restore'], { ...this.#commandOptions, input }, IPSET_HINT);
      }
      let batch: string;
      let batch6: string;
      try {
        const tables = await applyCommand([saveCommand(IPV4, backend)], this.#commandOptions, NET_ADMIN_HINT);
        const natOptions: NatRulesOptions = {
          nodeIp: this.#nodeIp,
          outboundPort: this.#outboundPort,
          inboundPort: this.#inboundPort,
          family: IPV4,
          currentNatTable: tables.stdout,
        };
        batch =
          buildSourceCheckRules(tables.stdout) +
          buildNatRules(natOptions) +
          buildMangleRules({ family: IPV4, currentTables: tables.stdout }) +
          buildLocalDnatRules(tables.stdout);
        if (batch !== '') {
          await applyCommand([restoreCommand(IPV4, backend), '-w', '--noflush'], { ...this.#commandOptions, input: batch }, NAT_RESTORE_HINT);
        }
        const tables6 = await applyCommand([saveCommand(IPV6, backend)], this.#commandOptions, NET_ADMIN_HINT);
        batch6 = buildIpv6RejectRules(tables6.stdout, this.#appliedBindings?.bindings ?? []);
        if (batch6 !== '') {
          await applyCommand([restoreCommand(IPV6, backend), '-w', '--noflush'], { ...this.#commandOptions, input: batch6 }, IPV6_RESTORE_HINT);
        }
      } catch (err) {
        if (createdSets.length > 0) await this.#destroyCreatedSets(createdSets);
        throw err;
      }
      // After the mark rule: until the route exists a marked reply is routed as if unmarked, which is harmless.
      const ipState = await readIpState(this.#commandOptions);
      const routing = buildTransparentRouting(ipState);
      if (routing.length > 0) await applyCommand(['ip', '-batch', '-'], { ...this.#commandOptions, input: batchText(routing) }, NET_ADMIN_HINT);
      const fdbAdded = await this.#syncBridgeFdb(ipState.bridges);
      const bridgeTable = buildBridgeTable(await readBridgeRuleset(this.#commandOptions), this.#bridgeMembers());
      if (bridgeTable !== '') await applyCommand(['nft', '-f', '-'], { ...this.#commandOptions, input: bridgeTable }, NFT_HINT);

      if (batch === '' && batch6 === '' && routing.length === 0 && fdbAdded === 0 && bridgeTable === '') {
        this.#log.debug({ backend }, 'redirect rules already in place');
        return;
      }
      const batchLines = [...batch.split('\n'), ...batch6.split('\n')];
      this.#log.info(
        {
          backend,
          chains: [AMBIT_SOURCE_CHECK_CHAIN, AMBIT_PREROUTING_CHAIN, AMBIT_MANGLE_CHAIN, AMBIT_MANGLE_OUTPUT_CHAIN, AMBIT_LOCAL_DNAT_CHAIN, AMBIT_IPV6_REJECT_CHAIN].filter((chain) =>
            batchLines.includes(`:${chain} - [0:0]`),
          ),
          jumpsInserted: batchLines.filter((line) => line.startsWith('-I ')).length,
          jumpsDeleted: batchLines.filter((line) => line.startsWith('-D ')).length,
          setsCreated: createdSets.map((spec) => spec.name),
          routing,
          bridgesGivenFdbEntry: fdbAdded,
          bridgeTableWritten: bridgeTable !== '',
        },
        'redirect rules installed',
      );
    });
  }

  /**
   * Makes the ipsets hold exactly `ips` (the node's enrolled pods; IPv4 in `ambit-pods-v4`, which is captured, IPv6
   * in `ambit-pods-v6` and the bridge table's set, which are refused), each in one atomic swap, and binds each
   * enrolled IPv4 address of `interfaces` (what CNI ADD reported) to its interface (see AMBIT_SOURCE_CHECK_CHAIN).
   * Returns false, without running anything, when the sets already hold them as last applied (`force` applies them
   * anyway, to repair a set someone else changed). `addOnly` removes nothing from the pod sets: each keeps every member
   * it had (as this instance last wrote it, else as the kernel holds it: what the agent before a restart left) and
   * gains `ips`; for an agent whose view of the cluster is not complete yet, which must not release pods it merely has
   * not read. An address that is not an IP address, or is the node IP, is left out with a warning rather than failing
   * the sync: one bad pod must not stop the capture of all the others. An IPv4 address that joins the capture set has
   * its open connections ended (see #endTrackedFlows), but those in `justCreated`: addresses of pods CNI ADD has just
   * networked, which have no connections yet.
   */
  syncPods(
    ips: readonly string[],
    options: { force?: boolean; addOnly?: boolean; interfaces?: readonly PodInterfaces[]; justCreated?: readonly string[] } = {},
  ): Promise<boolean> {
    return this.#serialize(async () => {
      const invalid = ips.filter((address) => !FAMILIES.some((family) => family.isAddress(address)));
      if (invalid.length > 0) this.#log.warn({ invalid }, 'left out of the enrolled pod sets: not IP addresses');
      // a hostNetwork pod has the node IP: enrolling it would capture all TCP to the node, HBONE on 15008 included
      if (ips.includes(this.#nodeIp)) {
        this.#log.warn({ set: IPV4.setName, nodeIp: this.#nodeIp }, 'left the node IP out of the enrolled pod set: hostNetwork pods cannot be enrolled');
      }
      const wanted = new Map<AddressFamily, string[]>();
      for (const family of FAMILIES) {
        const kept = options.addOnly ? (this.#appliedPods.get(family) ?? (await this.#liveMembers(family))) : [];
        const pods = [...new Set([...kept, ...ips])].filter((address) => family.isAddress(address) && address !== this.#nodeIp);
        wanted.set(family, pods.sort());
      }
      const changed = FAMILIES.filter((family) => {
        const previous = this.#appliedPods.get(family);
        return options.force || previous === undefined || !sameLines(previous, wanted.get(family) ?? []);
      });
      const captured = new Set(wanted.get(IPV4));
      const interfaces = (options.interfaces ?? [])
        .filter((pod) => captured.has(pod.ip))
        .map((pod) => ({ ip: pod.ip, hostInterfaces: [...pod.hostInterfaces].sort() }))
        .sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : 0));
      const interfacesKey = JSON.stringify(interfaces);
      const rebind = options.force === true || this.#appliedBindings?.key !== interfacesKey;
      if (changed.length === 0 && !rebind) return false;
      const joined = changed.includes(IPV4) ? await this.#joiningPods(wanted.get(IPV4) ?? [], options) : [];
      // links read before the sets are written: a pod's CNI ADD may also have created the bridge it hangs off
      const ipState = await readIpState(this.#commandOptions);
      let bindings = this.#appliedBindings?.bindings ?? [];
      if (rebind) {
        const resolved = resolveSourceBindings(interfaces, ipState.links, ipState.bridges);
        if (resolved.unresolved.length > 0) {
          this.#log.warn({ pods: resolved.unresolved }, 'source address not bound: CNI ADD reported no single host interface of the pod that exists');
        }
        bindings = resolved.bindings;
      }
      const ipsetBatch = changed.map((family) => buildIpsetSync(wanted.get(family) ?? [], family)).join('') + (rebind ? buildSourceBindingSync(bindings) : '');
      await applyCommand(['ipset', 'restore'], { ...this.#commandOptions, input: ipsetBatch }, IPSET_HINT);
      if (changed.includes(IPV6) || rebind) {
        const input = buildBridgeSetSync({ ipv6Pods: wanted.get(IPV6) ?? [], bindings });
        await applyCommand(['nft', '-f', '-'], { ...this.#commandOptions, input }, NFT_HINT);
      }
      if (rebind) await this.#syncIpv6RejectChain(bindings);
      // After the swap, so that the flows' next packets meet the capture rules; before the sets count as applied, so
      // that a failure here is tried again by the next sync.
      if (joined.length > 0) await this.#endTrackedFlows(joined);
      const listed = new Set(ips);
      for (const family of changed) {
        const pods = wanted.get(family) ?? [];
        const previous = this.#appliedPods.get(family);
        this.#appliedPods.set(family, pods);
        const counts = previous === undefined ? {} : diffCounts(previous, pods);
        const unlisted = options.addOnly ? { keptUnlisted: pods.filter((address) => !listed.has(address)).length } : {};
        this.#log.info({ set: family.setName, pods: pods.length, ...counts, ...unlisted }, 'enrolled pod set updated');
      }
      if (rebind) {
        const previous = this.#appliedBindings?.bindings;
        this.#appliedBindings = { key: interfacesKey, bindings };
        if (previous === undefined || JSON.stringify(previous) !== JSON.stringify(bindings)) {
          this.#log.info({ set: AMBIT_BOUND_SET.name, bound: bindings.length, bridgePorts: bindings.filter((b) => b.bridge !== undefined).length }, 'pod source addresses bound to their interfaces');
        }
      }
      await this.#syncBridgeFdb(ipState.bridges);
      return true;
    });
  }

  /**
   * The IPv4 addresses this sync brings into the capture set, but those of `justCreated`: against the set as last
   * written here and, when that is not known or when repairing, as the kernel holds it (an address someone else took
   * out of the set had its new connections pass uncaptured meanwhile).
   */
  async #joiningPods(wanted: readonly string[], options: { force?: boolean; justCreated?: readonly string[] }): Promise<string[]> {
    const applied = this.#appliedPods.get(IPV4);
    const written = applied === undefined ? undefined : new Set(applied);
    const live = written === undefined || options.force ? new Set(await this.#liveMembers(IPV4)) : undefined;
    const created = new Set(options.justCreated ?? []);
    return wanted.filter((ip) => !((written === undefined || written.has(ip)) && (live === undefined || live.has(ip))) && !created.has(ip));
  }

  /**
   * Ends the TCP connections that pods had before they joined the capture set, by deleting their conntrack entries
   * (from and to each address). The nat rules see only the first packet of a connection, so without this a flow
   * opened while the pod was outside the mesh (a pod that predates the agent, a namespace relabelled) would go on
   * uncaptured, in the clear. Without its entry, the flow's next packet is tracked anew (conntrack picks up a
   * connection in mid-stream), meets the capture rules and lands on the agent's listener, which knows no such
   * connection and resets it. IPv4 only: an enrolled pod's IPv6 TCP is refused packet by packet, established or not
   * (AMBIT_IPV6_REJECT_CHAIN). TCP only: nothing else is captured, and a UDP entry deleted would only make a
   * Service's NAT pick a backend again. Two execs an address: a join through the store is rare, a CNI ADD has none.
   */
  async #endTrackedFlows(ips: readonly string[]): Promise<void> {
    let flows = 0;
    for (const ip of ips) {
      for (const direction of ['--orig-src', '--orig-dst'] as const) flows += await deleteTcpFlows(direction, ip, this.#commandOptions);
    }
    this.#log.info({ pods: ips, flows }, 'tracked connections of pods that joined the mesh ended');
  }

  /** The members of the live set, as the kernel holds them (none when the set does not exist). */
  async #liveMembers(family: AddressFamily): Promise<string[]> {
    const set = family.setName;
    if (!(await listSets(this.#commandOptions)).has(set)) return [];
    const saved = await applyCommand(['ipset', 'save', set], this.#commandOptions, IPSET_HINT);
    const prefix = `add ${set} `;
    return saved.stdout
      .split('\n')
      .filter((line) => line.startsWith(prefix))
      .map((line) => line.slice(prefix.length).trim().split(' ')[0]!);
  }

  /** The backend the node's rules are in now (the rule counts of each, as at start), without logging or caching it. */
  detectNodeBackend(): Promise<IptablesBackend> {
    return detectBackend(silentLogger(), this.#commandOptions.netns);
  }

  /** Removes everything install() made (see removeRedirectRules); absent pieces are fine. */
  remove(): Promise<void> {
    return this.#serialize(async () => {
      this.#appliedPods.clear();
      this.#appliedBindings = undefined;
      await removeRules(this.#log, this.#backendChoice, this.#commandOptions.netns);
    });
  }

  #serialize<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.#previousOperation.then(operation);
    this.#previousOperation = result.catch(() => undefined);
    return result;
  }

  async #resolveBackend(): Promise<IptablesBackend> {
    this.#backend ??= await detectBackend(this.#log, this.#commandOptions.netns);
    return this.#backend;
  }

  /** Brings the IPv6 reject chain to its rules for `bindings` (its per-interface rules); nothing when it has them. */
  async #syncIpv6RejectChain(bindings: readonly SourceBinding[]): Promise<void> {
    const backend = await this.#resolveBackend();
    const tables6 = await applyCommand([saveCommand(IPV6, backend)], this.#commandOptions, NET_ADMIN_HINT);
    const batch6 = buildIpv6RejectRules(tables6.stdout, bindings);
    if (batch6 === '') return;
    await applyCommand([restoreCommand(IPV6, backend), '-w', '--noflush'], { ...this.#commandOptions, input: batch6 }, IPV6_RESTORE_HINT);
    this.#log.info({ chain: AMBIT_IPV6_REJECT_CHAIN, interfaces: podInterfaces(bindings).length }, 'IPv6 reject chain refuses the bound pods by interface');
  }

  /** What the bridge table's sets hold as last written, for a rewrite of the table to keep. */
  #bridgeMembers(): BridgeSetMembers {
    return { ipv6Pods: this.#appliedPods.get(IPV6) ?? [], bindings: this.#appliedBindings?.bindings ?? [] };
  }

  /** Gives every bridge Ambit's fdb entry; returns how many were missing it. */
  async #syncBridgeFdb(bridges: readonly string[]): Promise<number> {
    if (bridges.length === 0) return 0;
    const lines = buildBridgeFdbSync(bridges, await readFdb(this.#commandOptions));
    if (lines.length === 0) return 0;
    await applyCommand(['bridge', '-batch', '-'], { ...this.#commandOptions, input: batchText(lines) }, NET_ADMIN_HINT);
    this.#log.info({ bridges: lines.length, mac: AMBIT_BRIDGE_MAC }, 'bridge fdb entry added for same-node transparent replies');
    return lines.length;
  }

  /** Undo of a first install whose batch failed: the sets would otherwise outlive the rules that use them. */
  async #destroyCreatedSets(specs: readonly IpsetSpec[]): Promise<void> {
    const sets = specs.map((spec) => spec.name);
    try {
      await applyCommand(['ipset', 'restore'], { ...this.#commandOptions, input: sets.map((set) => `destroy ${set}\n`).join('') }, IPSET_DESTROY_HINT);
    } catch (err) {
      this.#log.warn({ err, sets }, 'could not destroy the ipsets created by the failed install');
    }
  }
}

function diffCounts(previous: readonly string[], next: readonly string[]): { added: number; removed: number } {
  const before = new Set(previous);
  const after = new Set(next);
  return {
    added: next.filter((address) => !before.has(address)).length,
    removed: previous.filter((address) => !after.has(address)).length,
  };
}

function missingNft(): AmbitError {
  return new AmbitError(
    'NFT_MISSING',
    `nft is not on PATH (${process.env.PATH ?? ''}): the agent needs it for the bridge table that returns same-node replies ` +
      "to its transparent connections; install the Debian package 'nftables' (apt-get install nftables) in the agent's image",
  );
}

function missingConntrack(): AmbitError {
  return new AmbitError(
    'CONNTRACK_MISSING',
    `conntrack is not on PATH (${process.env.PATH ?? ''}): the agent needs it to end the connections a pod opened before it ` +
      "joined the mesh, which would otherwise go on uncaptured; install the Debian package 'conntrack' (apt-get install conntrack) in the agent's image",
  );
}

function validateOptions(nodeIp: string, outboundPort: number, inboundPort: number, backend: string): void {
  const problems: string[] = [];
  if (!IPV4.isAddress(nodeIp)) problems.push(`nodeIp ${JSON.stringify(nodeIp)} is not an IPv4 address`);
  for (const [name, port] of [['outboundPort', outboundPort], ['inboundPort', inboundPort]] as const) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) problems.push(`${name} ${port} is not a TCP port (1-65535)`);
  }
  if (outboundPort === inboundPort) problems.push(`outboundPort and inboundPort are both ${outboundPort}; they must differ`);
  if (!['auto', 'nft', 'legacy'].includes(backend)) problems.push(`backend ${JSON.stringify(backend)} is not one of auto, nft, legacy`);
  if (problems.length > 0) throw new AmbitError('RULES_INVALID_OPTIONS', `RedirectRules: ${problems.join('; ')}`);
}
