import { createHash } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { ExecaError } from 'execa';
import { AmbitError } from '../core/errors/index.js';
import { silentLogger, type Logger } from '../core/log/index.js';
import { isOnPath, runCommand, type CommandOptions, type CommandOutput } from './exec.js';

/** Where captured outbound connections land: the agent's outbound listener on the node IP. */
export const DEFAULT_OUTBOUND_PORT = 15001;
/** Where plaintext connections to an enrolled pod land: the agent's inbound listener on the node IP. */
export const DEFAULT_INBOUND_PORT = 15006;
/** Ambit's own nat chain; everything Ambit adds to the nat table lives in it, so removal is one flush. */
export const AMBIT_PREROUTING_CHAIN = 'AMBIT-PREROUTING';

/*
 * IPv6 is refused, not carried (carrying it is a later issue): the mesh captures IPv4 only, and an enrolled pod's
 * IPv6 TCP would otherwise pass in the clear, without mTLS, STRICT or policy. The ip6tables filter chain
 * AMBIT_IPV6_REJECT_CHAIN, jumped to first from INPUT and FORWARD, answers with a TCP reset (clients fail at once)
 * every TCP packet to an address in `ambit-pods-v6`, and every packet from one that opens or continues a connection
 * of its own (`--ctdir ORIGINAL`): the pod's answers to the node's own connections pass, as kubelet probes do in
 * IPv4, where the node's traffic is not captured either. Bridged traffic between pods of one bridge crosses
 * ip6tables only with `bridge-nf-call-ip6tables=1` (which dual-stack Kubernetes nodes set); without it, the
 * `forward` chain of the bridge table drops such frames (the nft bridge family cannot reset on every kernel), from
 * AMBIT_BRIDGE_V6_SET, which holds the same addresses as the ipset.
 */
/** Ambit's ip6tables filter chain that refuses the IPv6 TCP of enrolled pods. */
export const AMBIT_IPV6_REJECT_CHAIN = 'AMBIT-IPV6-REJECT';
/** The built-in chains that jump to it, each as their first rule: traffic to the node, and traffic it forwards. */
const IPV6_REJECT_HOOKS = ['INPUT', 'FORWARD'] as const;
/** The nft set of the bridge table with the enrolled pods' IPv6 addresses (ipsets are not visible to nft). */
export const AMBIT_BRIDGE_V6_SET = 'pods6';

/*
 * Source binding. The source agent takes a client's identity from its source address, so an enrolled pod's
 * address is bound to the interface CNI ADD reported for it (the host end of its veth): a TCP packet from a bound
 * address that arrives anywhere else is dropped, before it is captured. Two places see the two halves:
 * - raw PREROUTING, AMBIT_SOURCE_CHECK_CHAIN: a TCP packet whose source is in AMBIT_BOUND_SET and whose (source, in
 *   interface) pair is not in AMBIT_PORTS_SET is dropped. A routed pod (ptp, Calico) is bound to its veth; a bridge
 *   port's pod to its bridge, since iptables sees bridged packets arrive on the bridge. That also drops a bound
 *   address arriving from the wire.
 * - the bridge table's prerouting chain: the same test with the bridge port (`iifname` in the bridge family), from
 *   AMBIT_BRIDGE_BOUND_SET and AMBIT_BRIDGE_PORTS_SET. ipset's `physdev:` entries cannot do it: iptables' set match
 *   has no way to ask for the bridge port (measured on kernel 6.18: such entries never match).
 * Pods whose interface the agent does not know (they joined through the store, not CNI ADD) are in neither set and
 * are not checked. Packets the node sends (kubelet probes, the agent's own connections) leave through OUTPUT and
 * are not seen here, except those to the node's own addresses, which come back in through `lo`: the agent's
 * connection from a pod's address to a host-network workload is one, so `lo` is never checked (only the node's own
 * stack can send on it).
 */
/** Ambit's raw chain, jumped to first from raw PREROUTING: it drops TCP from a bound address on another interface. */
export const AMBIT_SOURCE_CHECK_CHAIN = 'AMBIT-SOURCE-CHECK';
/** The nft sets of the bridge table: bound addresses, and (address . bridge port) pairs they may come from. */
export const AMBIT_BRIDGE_BOUND_SET = 'bound4';
export const AMBIT_BRIDGE_PORTS_SET = 'ports4';
/** The nft set of the bridge table with the bridge ports of bound pods: their IPv6 TCP is dropped whatever the address. */
export const AMBIT_BRIDGE_V6_PORTS_SET = 'ports6';

/*
 * Transparent source. The agent connects from the client's address (an IP_TRANSPARENT socket bound to it): to a
 * local pod it delivers, from the client's address, and to a destination it passes through (outside the mesh, a
 * Service VIP, a slice's endpoint that is no pod), from its own pod's address, so that NetworkPolicies and firewalls
 * on the way judge the pod and not the node. Replies are then addressed to an IP that is not the node's. Four pieces
 * bring them back:
 * - mangle AMBIT_MANGLE_CHAIN marks TCP from an enrolled pod that belongs to a transparent socket (`-m socket
 *   --transparent`; only enrolled pods are ever connected to this way, so only their packets pay for the lookup);
 * - for a passthrough the reply comes from anywhere, so the connection is marked instead: mangle
 *   AMBIT_MANGLE_OUTPUT_CHAIN sets TRANSPARENT_MARK in the conntrack mark of a SYN the node sends from an enrolled
 *   pod's address (only the agent's transparent sockets do), and AMBIT_MANGLE_CHAIN copies it to every packet of the
 *   connection that comes in. That holds for a reply that is un-NATed on its way in, and for one that a host-network
 *   workload sends from this node: AMBIT_MANGLE_OUTPUT_CHAIN marks those replies (`--ctdir REPLY`: never the agent's
 *   own packets), so that routing hands them to the agent's socket over `lo` instead of sending them to the pod;
 * - `ip rule fwmark TRANSPARENT_MARK lookup TRANSPARENT_ROUTE_TABLE`, whose only route is `local default dev lo`,
 *   delivers marked packets to the local stack, where the socket takes them;
 * - on a bridge CNI, a pod answers a same-node client (same subnet) at layer 2, straight to the client's MAC, and
 *   br_netfilter re-routes a bridged frame only when DNAT changed its destination. The nft `bridge` table
 *   AMBIT_BRIDGE_TABLE, hooked after br_netfilter has run iptables (so the mark is set), readdresses such marked
 *   frames to AMBIT_BRIDGE_MAC, a local fdb entry Ambit adds to every bridge: the bridge hands them to its own
 *   interface, where routing (with the mark) delivers them locally. `meta broute` would need no fdb entry, but it
 *   runs before br_netfilter (so before the mark) and needs nft_meta_bridge, which not every kernel has.
 * No sysctl is changed: rp_filter passes even in strict mode (the pod's address is routed through the interface
 * its reply came in on, the bridge included; a passthrough reply's source is routed where it came from, and
 * rp_filter does not look at the mark), and route_localnet and accept_local do not apply (no loopback or local
 * source addresses are involved).
 */
/**
 * One fwmark bit, set and matched under its own mask so other bits survive. Clear of kube-proxy (0x4000, 0x8000),
 * Calico (0xffff0000 by default), Cilium (magic marks under 0x1f00, identities in the upper 16 bits), Istio ambient
 * and istio-cni (0x040, 0x100-0x220, 0x111, 0x539), AWS VPC CNI (0x80), Weave and kube-router (0x10000-0x40000).
 */
export const TRANSPARENT_MARK = 0x2000;
/** The route table of marked replies: clear of Calico (1-250), Istio (100-103), Cilium (200-202, 2004, 2005), Tailscale (52). */
export const TRANSPARENT_ROUTE_TABLE = 15006;
/**
 * Before main (32766) and before the rules that send traffic to a pod elsewhere: Calico's WireGuard rule (99),
 * AWS VPC CNI's `to <pod> lookup main` (512). Cilium's own fwmark rules (9, 10) match other marks.
 */
export const TRANSPARENT_RULE_PRIORITY = 90;
/** Ambit's mangle chain, jumped to first from mangle PREROUTING (a CNI's `ESTABLISHED -j ACCEPT` must not hide replies). */
export const AMBIT_MANGLE_CHAIN = 'AMBIT-MANGLE-PREROUTING';
/** Ambit's mangle chain, jumped to first from mangle OUTPUT: marks the agent's connections from a pod's address. */
export const AMBIT_MANGLE_OUTPUT_CHAIN = 'AMBIT-MANGLE-OUTPUT';
/** Ambit's nft table of family `bridge` (same-node replies on a bridge CNI). */
export const AMBIT_BRIDGE_TABLE = 'ambit';
/** Locally administered unicast, spelling "ambit": the fdb entry every bridge gets, and where redirected frames go. */
export const AMBIT_BRIDGE_MAC = '02:61:6d:62:69:74';
/** After br_netfilter (priority 0), which runs iptables for bridged frames and so sets the mark. */
export const AMBIT_BRIDGE_CHAIN_PRIORITY = 100;

/*
 * NAT to a local pod. A passthrough leaves from the pod's address through nat OUTPUT, where the node's service proxy
 * may DNAT it (kube-proxy: a NodePort on a node IP, externalIPs, a LoadBalancer IP, a selector-less Service in local
 * mode). When the backend it picks is an enrolled pod of this node, the connection is delivered locally: it never
 * crosses PREROUTING, so it never reaches the inbound listener, and no agent applies the pod's STRICT
 * PeerAuthentication or AuthorizationPolicy (to another node it is captured there, and is fine). The filter chain
 * AMBIT_LOCAL_DNAT_CHAIN, jumped to first from OUTPUT, resets such a connection instead: one the agent opened from a
 * pod's address (TRANSPARENT_MARK in its conntrack mark, which AMBIT_MANGLE_OUTPUT_CHAIN sets on the SYN: mangle
 * OUTPUT runs before nat OUTPUT, filter OUTPUT after both), that was DNATed, in its own direction (a host-network
 * workload's replies to such a connection are DNATed too, and go to a pod's address), to an address in
 * `ambit-pods-v4`. The agent's own delivery to a local pod connects to the pod directly, without DNAT, and passes.
 * The reset comes back to the agent's socket like any reply to it (the connection's mark routes it over `lo`), so
 * the connect fails at once with ECONNREFUSED. IPv6 needs nothing: an enrolled pod's IPv6 TCP is refused anyway.
 */
/** Ambit's filter chain, jumped to first from OUTPUT: resets a passthrough that the node's NAT sends to a local pod. */
export const AMBIT_LOCAL_DNAT_CHAIN = 'AMBIT-LOCAL-DNAT';

export type IptablesBackend = 'nft' | 'legacy';
export type IptablesBackendChoice = IptablesBackend | 'auto';

/**
 * What differs between the IPv4 and IPv6 rules: the set, its ipset family, the iptables command and how an address
 * is written with a port. IPv4 is captured, IPv6 refused (AMBIT_IPV6_REJECT_CHAIN).
 */
export interface AddressFamily {
  readonly setName: string;
  readonly ipsetFamily: 'inet' | 'inet6';
  readonly iptablesCommand: 'iptables' | 'ip6tables';
  readonly isAddress: (address: string) => boolean;
  readonly hostPort: (address: string, port: number) => string;
}

export const IPV4: AddressFamily = {
  setName: 'ambit-pods-v4',
  ipsetFamily: 'inet',
  iptablesCommand: 'iptables',
  isAddress: isIPv4,
  hostPort: (address, port) => `${address}:${port}`,
};

export const IPV6: AddressFamily = {
  setName: 'ambit-pods-v6',
  ipsetFamily: 'inet6',
  iptablesCommand: 'ip6tables',
  isAddress: isIPv6,
  hostPort: (address, port) => `[${address}]:${port}`,
};

const FAMILIES: readonly AddressFamily[] = [IPV4, IPV6];

/** The family whose set an address belongs in (IPv6 for an IPv6 address, else IPv4). */
export function addressFamily(address: string): AddressFamily {
  return IPV6.isAddress(address) ? IPV6 : IPV4;
}

/** One ipset Ambit owns. */
export interface IpsetSpec {
  readonly name: string;
  readonly type: 'hash:ip' | 'hash:net,iface';
  readonly family: 'inet' | 'inet6';
}

function podSet(family: AddressFamily): IpsetSpec {
  return { name: family.setName, type: 'hash:ip', family: family.ipsetFamily };
}

/** The enrolled IPv4 addresses bound to an interface (source binding). */
export const AMBIT_BOUND_SET: IpsetSpec = { name: 'ambit-pods-bound-v4', type: 'hash:ip', family: 'inet' };
/** `address,interface` pairs: where each bound address may arrive, as raw PREROUTING sees it. */
export const AMBIT_PORTS_SET: IpsetSpec = { name: 'ambit-pod-ports-v4', type: 'hash:net,iface', family: 'inet' };

/** Every ipset Ambit makes; the rules that use the last two need them to exist first. */
const ALL_SETS: readonly IpsetSpec[] = [...FAMILIES.map(podSet), AMBIT_BOUND_SET, AMBIT_PORTS_SET];

/** What CNI ADD reported for an enrolled pod address: the interfaces outside the sandbox (see CniPod.hostInterfaces). */
export interface PodInterfaces {
  readonly ip: string;
  readonly hostInterfaces: readonly string[];
}

/** An address bound to its interface: the host end of its veth, and the bridge that veth is a port of, if any. */
export interface SourceBinding {
  readonly ip: string;
  readonly iface: string;
  readonly bridge?: string;
}

/** One link as `ip -j link show` prints it. */
export interface LinkEntry {
  ifname?: string;
  master?: string;
}

/**
 * The bindings of `pods` on a node with these links and bridges: the pod's interface is the one reported interface
 * that exists and is not a bridge. An address with none, or with several, is not bound (and returned apart): its
 * traffic is not checked, which is what it was before, rather than dropped by a guess.
 */
export function resolveSourceBindings(
  pods: readonly PodInterfaces[],
  links: readonly LinkEntry[],
  bridges: readonly string[],
): { bindings: SourceBinding[]; unresolved: string[] } {
  const masters = new Map(links.filter((link) => link.ifname !== undefined).map((link) => [link.ifname as string, link.master]));
  const bindings: SourceBinding[] = [];
  const unresolved: string[] = [];
  for (const pod of pods) {
    const candidates = [...new Set(pod.hostInterfaces)].filter((name) => masters.has(name) && !bridges.includes(name));
    const iface = candidates.length === 1 ? candidates[0] : undefined;
    if (iface === undefined) {
      unresolved.push(pod.ip);
      continue;
    }
    const master = masters.get(iface);
    bindings.push(master !== undefined && bridges.includes(master) ? { ip: pod.ip, iface, bridge: master } : { ip: pod.ip, iface });
  }
  return { bindings: bindings.sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : 0)), unresolved };
}

export interface NatRulesOptions {
  nodeIp: string;
  outboundPort?: number;
  inboundPort?: number;
  family?: AddressFamily;
  /** The table as `iptables-save -t nat` prints it now; omitted means a table without any Ambit rules. */
  currentNatTable?: string;
}

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

/** The two DNAT rules of Ambit's chain, exactly as iptables-save prints them back. */
export function buildChainRules(options: NatRulesOptions): string[] {
  const family = options.family ?? IPV4;
  const outbound = family.hostPort(options.nodeIp, options.outboundPort ?? DEFAULT_OUTBOUND_PORT);
  const inbound = family.hostPort(options.nodeIp, options.inboundPort ?? DEFAULT_INBOUND_PORT);
  const chain = AMBIT_PREROUTING_CHAIN;
  const set = family.setName;
  return [
    `-A ${chain} -p tcp -m set --match-set ${set} src -j DNAT --to-destination ${outbound}`,
    `-A ${chain} -p tcp -m set --match-set ${set} dst -j DNAT --to-destination ${inbound}`,
  ];
}

/**
 * The `iptables-restore --noflush` batch that brings the nat table to Ambit's rules, or '' when it already has
 * them. Declaring the chain flushes it, so the rules are rewritten rather than appended twice. The jump must be
 * the first rule of PREROUTING: the agent has to see a ClusterIP before kube-proxy's DNAT rewrites it, and
 * kube-proxy inserts its own jump at the top, so a jump that slid down is moved back, and duplicates go.
 */
export function buildNatRules(options: NatRulesOptions): string {
  return buildTableBatch('nat', AMBIT_PREROUTING_CHAIN, buildChainRules(options), options.currentNatTable ?? '');
}

/** The mark rules of Ambit's mangle PREROUTING chain, exactly as iptables-save prints them back. */
export function buildMangleChainRules(family: AddressFamily = IPV4): string[] {
  const mark = hex(TRANSPARENT_MARK);
  return [
    `-A ${AMBIT_MANGLE_CHAIN} -p tcp -m set --match-set ${family.setName} src -m socket --transparent --nowildcard -j MARK --set-xmark ${mark}/${mark}`,
    `-A ${AMBIT_MANGLE_CHAIN} -p tcp -m connmark --mark ${mark}/${mark} -j MARK --set-xmark ${mark}/${mark}`,
  ];
}

/** The rules of Ambit's mangle OUTPUT chain, exactly as iptables-save prints them back. */
export function buildMangleOutputChainRules(family: AddressFamily = IPV4): string[] {
  const mark = hex(TRANSPARENT_MARK);
  const chain = AMBIT_MANGLE_OUTPUT_CHAIN;
  return [
    `-A ${chain} -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m set --match-set ${family.setName} src -j CONNMARK --set-xmark ${mark}/${mark}`,
    `-A ${chain} -p tcp -m connmark --mark ${mark}/${mark} -m conntrack --ctdir REPLY -j MARK --set-xmark ${mark}/${mark}`,
  ];
}

/**
 * The batch that brings the mangle table to Ambit's mark rules, or '' when it has them; `currentTables` is an
 * iptables-save dump holding the mangle table (or all tables). The jumps are kept first in PREROUTING and OUTPUT like
 * the nat one.
 */
export function buildMangleRules(options: { family?: AddressFamily; currentTables?: string } = {}): string {
  const current = options.currentTables ?? '';
  return (
    buildTableBatch('mangle', AMBIT_MANGLE_CHAIN, buildMangleChainRules(options.family), current) +
    buildTableBatch('mangle', AMBIT_MANGLE_OUTPUT_CHAIN, buildMangleOutputChainRules(options.family), current, ['OUTPUT'])
  );
}

/** The reset rule of Ambit's filter OUTPUT chain (see AMBIT_LOCAL_DNAT_CHAIN), exactly as iptables-save prints it back. */
export function buildLocalDnatChainRules(family: AddressFamily = IPV4): string[] {
  const mark = hex(TRANSPARENT_MARK);
  return [
    `-A ${AMBIT_LOCAL_DNAT_CHAIN} -p tcp -m connmark --mark ${mark}/${mark} -m conntrack --ctstate DNAT --ctdir ORIGINAL -m set --match-set ${family.setName} dst -j REJECT --reject-with tcp-reset`,
  ];
}

/** The batch that brings the filter table to Ambit's OUTPUT reset, jumped to first from OUTPUT, or '' when it is so. */
export function buildLocalDnatRules(currentTables = ''): string {
  return buildTableBatch('filter', AMBIT_LOCAL_DNAT_CHAIN, buildLocalDnatChainRules(), currentTables, ['OUTPUT']);
}

/** As buildNatRemoval, for the filter chain that resets a passthrough NATed to a local pod. */
export function buildLocalDnatRemoval(saveOutput: string): string {
  return buildChainRemoval(saveOutput, 'filter', AMBIT_LOCAL_DNAT_CHAIN);
}

/**
 * The rules of Ambit's IPv6 reject chain, exactly as ip6tables-save prints them back: by address (`ambit-pods-v6`),
 * then by interface for each pod whose host interface CNI ADD reported (`bindings`). The mesh carries no IPv6, so an
 * enrolled pod has no legitimate IPv6 TCP whatever the address, and its link-local fe80:: one is in no set: TCP
 * that enters from the pod's veth and opens or continues a connection of its own is reset, and so is TCP forwarded to
 * it. A bridge port is matched with physdev (iptables sees the bridge as the interface), a routed veth with -i/-o.
 * A pod whose interface the agent does not know (joined through the store) has the address rules only.
 */
export function buildIpv6RejectChainRules(bindings: readonly SourceBinding[] = []): string[] {
  const chain = AMBIT_IPV6_REJECT_CHAIN;
  const set = IPV6.setName;
  const reject = '-j REJECT --reject-with tcp-reset';
  const own = '-m conntrack --ctdir ORIGINAL';
  return [
    `-A ${chain} -p tcp -m set --match-set ${set} dst ${reject}`,
    `-A ${chain} -p tcp -m set --match-set ${set} src ${own} ${reject}`,
    ...podInterfaces(bindings).flatMap(({ iface, bridged }) =>
      bridged
        ? [`-A ${chain} -p tcp -m physdev --physdev-in ${iface} ${own} ${reject}`, `-A ${chain} -p tcp -m physdev --physdev-out ${iface} ${reject}`]
        : [`-A ${chain} -i ${iface} -p tcp ${own} ${reject}`, `-A ${chain} -o ${iface} -p tcp ${reject}`],
    ),
  ];
}

/** The distinct host interfaces of `bindings`, sorted, each with whether it is a bridge port. */
function podInterfaces(bindings: readonly SourceBinding[]): Array<{ iface: string; bridged: boolean }> {
  const byName = new Map(bindings.map((binding) => [binding.iface, binding.bridge !== undefined]));
  return [...byName.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([iface, bridged]) => ({ iface, bridged }));
}

/**
 * The `ip6tables-restore --noflush` batch that brings the filter table to Ambit's IPv6 reject chain, jumped to first
 * from INPUT and FORWARD (a CNI's or firewall's ACCEPT above it would let the traffic through), or '' when it is so.
 */
export function buildIpv6RejectRules(currentTables = '', bindings: readonly SourceBinding[] = []): string {
  return buildTableBatch('filter', AMBIT_IPV6_REJECT_CHAIN, buildIpv6RejectChainRules(bindings), currentTables, IPV6_REJECT_HOOKS);
}

/** As buildNatRemoval, for the IPv6 reject chain; `saveOutput` is an ip6tables-save dump. */
export function buildIpv6RejectRemoval(saveOutput: string): string {
  return buildChainRemoval(saveOutput, 'filter', AMBIT_IPV6_REJECT_CHAIN);
}

/** The drop rule of Ambit's raw chain, exactly as iptables-save prints it back. */
export function buildSourceCheckChainRules(): string[] {
  return [
    `-A ${AMBIT_SOURCE_CHECK_CHAIN} ! -i lo -p tcp -m set --match-set ${AMBIT_BOUND_SET.name} src -m set ! --match-set ${AMBIT_PORTS_SET.name} src,src -j DROP`,
  ];
}

/** The batch that brings the raw table to Ambit's source check, jumped to first from PREROUTING, or '' when it is so. */
export function buildSourceCheckRules(currentTables = ''): string {
  return buildTableBatch('raw', AMBIT_SOURCE_CHECK_CHAIN, buildSourceCheckChainRules(), currentTables);
}

/** As buildNatRemoval, for the raw chain of the source check. */
export function buildSourceCheckRemoval(saveOutput: string): string {
  return buildChainRemoval(saveOutput, 'raw', AMBIT_SOURCE_CHECK_CHAIN);
}

type Table = 'nat' | 'mangle' | 'filter' | 'raw';

function buildTableBatch(table: Table, chain: string, wanted: string[], saveOutput: string, hooks: readonly string[] = ['PREROUTING']): string {
  const state = readChain(saveOutput, table, chain);
  const kept = hooks.filter((hook) => state.firstRules.get(hook) === jumpRule(chain, hook));
  const strayJumps = state.jumps.filter((rule) => !kept.some((hook) => rule === jumpRule(chain, hook)));
  // a hook whose first rule is ours and that has a second jump: the copy goes, and -D takes the first match
  const extraCopies = kept.flatMap((hook) => state.jumps.filter((rule) => rule === jumpRule(chain, hook)).slice(1));
  const missing = hooks.filter((hook) => !kept.includes(hook));
  const chainIsCurrent = state.chainExists && sameLines(state.chainRules, wanted);
  if (chainIsCurrent && missing.length === 0 && strayJumps.length === 0 && extraCopies.length === 0) return '';
  return [
    `*${table}`,
    `:${chain} - [0:0]`,
    ...wanted,
    ...[...strayJumps, ...extraCopies].map(toDeletion),
    ...missing.map((hook) => `-I ${hook} 1 -j ${chain}`),
    'COMMIT',
    '',
  ].join('\n');
}

/**
 * The batch that deletes every jump to Ambit's chain and the chain itself, or '' when none is left. `saveOutput`
 * is an iptables-save dump of all tables or of the nat table alone.
 */
export function buildNatRemoval(saveOutput: string): string {
  return buildChainRemoval(saveOutput, 'nat', AMBIT_PREROUTING_CHAIN);
}

/** As buildNatRemoval, for the mangle chains of transparent replies. */
export function buildMangleRemoval(saveOutput: string): string {
  return buildChainRemoval(saveOutput, 'mangle', AMBIT_MANGLE_CHAIN) + buildChainRemoval(saveOutput, 'mangle', AMBIT_MANGLE_OUTPUT_CHAIN);
}

function buildChainRemoval(saveOutput: string, table: Table, chain: string): string {
  const state = readChain(saveOutput, table, chain);
  if (!state.chainExists && state.jumps.length === 0) return '';
  return [
    `*${table}`,
    ...state.jumps.map(toDeletion),
    // a chain must be empty before it can be deleted
    ...(state.chainExists ? [`-F ${chain}`, `-X ${chain}`] : []),
    'COMMIT',
    '',
  ].join('\n');
}

/** One `ip rule` as `ip -j rule show` prints it. */
export interface IpRuleEntry {
  priority?: number;
  fwmark?: string;
  fwmask?: string;
  table?: string;
}

/** One route as `ip -j route show table N` prints it. */
export interface IpRouteEntry {
  type?: string;
  dst?: string;
  dev?: string;
}

/** What the policy routing of transparent replies looks like now: this node's IPv4 rules and Ambit's table. */
export interface TransparentRoutingState {
  rules: readonly IpRuleEntry[];
  routes: readonly IpRouteEntry[];
}

const TRANSPARENT_RULE_SELECTOR = `priority ${TRANSPARENT_RULE_PRIORITY} fwmark ${hex(TRANSPARENT_MARK)}/${hex(TRANSPARENT_MARK)} lookup ${TRANSPARENT_ROUTE_TABLE}`;

function isTransparentRule(rule: IpRuleEntry): boolean {
  const mark = hex(TRANSPARENT_MARK);
  return rule.priority === TRANSPARENT_RULE_PRIORITY && rule.fwmark === mark && rule.fwmask === mark && rule.table === String(TRANSPARENT_ROUTE_TABLE);
}

function isTransparentRoute(route: IpRouteEntry): boolean {
  return route.type === 'local' && route.dst === 'default' && route.dev === 'lo';
}

/**
 * The `ip -batch` lines that leave exactly one fwmark rule pointing at Ambit's table and exactly the local default
 * route in it, or [] when that is the state already. Every rule that looks up Ambit's table is Ambit's.
 */
export function buildTransparentRouting(current: TransparentRoutingState): string[] {
  const table = String(TRANSPARENT_ROUTE_TABLE);
  const ours = current.rules.filter((rule) => rule.table === table);
  const kept = ours.findIndex(isTransparentRule);
  const lines = ours.filter((_, index) => index !== kept).map(ruleDeletion);
  if (kept === -1) lines.push(`rule add ${TRANSPARENT_RULE_SELECTOR}`);
  if (!(current.routes.length === 1 && current.routes.some(isTransparentRoute))) {
    if (current.routes.length > 0) lines.push(`route flush table ${table}`);
    lines.push(`route add local 0.0.0.0/0 dev lo table ${table}`);
  }
  return lines;
}

/** The `ip -batch` lines that remove every rule looking up Ambit's table and empty the table; [] when none is left. */
export function buildTransparentRoutingRemoval(current: TransparentRoutingState): string[] {
  const table = String(TRANSPARENT_ROUTE_TABLE);
  return [
    ...current.rules.filter((rule) => rule.table === table).map(ruleDeletion),
    ...(current.routes.length > 0 ? [`route flush table ${table}`] : []),
  ];
}

function ruleDeletion(rule: IpRuleEntry): string {
  const mark = rule.fwmark === undefined ? '' : ` fwmark ${rule.fwmark}${rule.fwmask === undefined ? '' : `/${rule.fwmask}`}`;
  return `rule del priority ${rule.priority ?? 0}${mark} lookup ${rule.table ?? ''}`;
}

/** One entry of `bridge -j fdb show`: on the bridge itself, `ifname` and `master` are both the bridge. */
export interface FdbEntry {
  mac?: string;
  ifname?: string;
  master?: string;
}

/** The `bridge -batch` lines that give every bridge Ambit's local fdb entry; [] when all have it. */
export function buildBridgeFdbSync(bridges: readonly string[], fdb: readonly FdbEntry[]): string[] {
  const have = new Set(bridgesWithAmbitMac(fdb));
  return bridges.filter((bridge) => !have.has(bridge)).map((bridge) => `fdb replace ${AMBIT_BRIDGE_MAC} dev ${bridge} self local`);
}

/** The `bridge -batch` lines that remove Ambit's fdb entry from every bridge that has it. */
export function buildBridgeFdbRemoval(fdb: readonly FdbEntry[]): string[] {
  return bridgesWithAmbitMac(fdb).map((bridge) => `fdb del ${AMBIT_BRIDGE_MAC} dev ${bridge} self`);
}

function bridgesWithAmbitMac(fdb: readonly FdbEntry[]): string[] {
  const bridges = fdb
    .filter((entry) => entry.mac?.toLowerCase() === AMBIT_BRIDGE_MAC && entry.ifname !== undefined && entry.ifname === entry.master)
    .map((entry) => entry.ifname as string);
  return [...new Set(bridges)];
}

const BRIDGE_RULE = `meta mark & ${hex(TRANSPARENT_MARK)} == ${hex(TRANSPARENT_MARK)} meta pkttype other ether daddr set ${AMBIT_BRIDGE_MAC} meta pkttype set host`;
const BRIDGE_SOURCE_CHECK_RULE =
  `meta l4proto tcp ip saddr @${AMBIT_BRIDGE_BOUND_SET} ip saddr . iifname != @${AMBIT_BRIDGE_PORTS_SET} counter drop`;

/** nft prints rules back in its own words; a digest of the rule as written, in its comment, tells a changed rule apart. */
function ruleTag(rule: string): string {
  return `ambit:${createHash('sha256').update(rule).digest('hex').slice(0, 12)}`;
}

function tagged(rule: string): string {
  return `${rule} comment "${ruleTag(rule)}"`;
}

/**
 * The chains of Ambit's bridge table, both after br_netfilter. `prerouting`: TCP from a bound address that entered
 * through another port than its own is dropped (source binding); a marked frame (a reply to a
 * transparent socket) that the bridge would switch to another port (`pkttype other`) goes to the bridge's own
 * interface instead. `forward`: the IPv6 TCP of enrolled pods switched between two ports of one bridge is dropped,
 * for nodes where bridged IPv6 does not cross ip6tables (which would have reset it first): by address, and by the
 * bridge port of a bound pod (AMBIT_BRIDGE_V6_PORTS_SET), which also covers its link-local fe80:: address. `input`:
 * a bound pod's IPv6 SYN to the node itself is dropped (a drop, not a reset: this hook runs before ip6tables INPUT).
 */
const BRIDGE_CHAINS: ReadonlyArray<{ name: string; rules: readonly string[] }> = [
  { name: 'prerouting', rules: [BRIDGE_SOURCE_CHECK_RULE, BRIDGE_RULE] },
  {
    name: 'forward',
    rules: [
      `meta l4proto tcp ip6 saddr @${AMBIT_BRIDGE_V6_SET} drop`,
      `meta l4proto tcp ip6 daddr @${AMBIT_BRIDGE_V6_SET} drop`,
      // by bridge port, whatever the address: the pods' link-local fe80:: addresses are in no set
      `meta protocol ip6 meta l4proto tcp iifname @${AMBIT_BRIDGE_V6_PORTS_SET} drop`,
      `meta protocol ip6 meta l4proto tcp oifname @${AMBIT_BRIDGE_V6_PORTS_SET} drop`,
    ],
  },
  {
    // to the node itself (its link-local address on the bridge): this hook comes before ip6tables INPUT, which would
    // reset; only a SYN the pod sends is dropped, so the pod still answers the node's own connections
    name: 'input',
    rules: [`meta protocol ip6 meta l4proto tcp iifname @${AMBIT_BRIDGE_V6_PORTS_SET} tcp flags & (syn | ack) == syn drop`],
  },
];

/** The transparent-reply rule of Ambit's bridge prerouting chain, with its tag. */
export function buildBridgeRule(): string {
  return tagged(BRIDGE_RULE);
}

/** The sets of Ambit's bridge table, with their types as `nft -j` prints them. */
const BRIDGE_SETS: ReadonlyArray<{ name: string; type: string; json: string | string[] }> = [
  { name: AMBIT_BRIDGE_V6_SET, type: 'ipv6_addr', json: 'ipv6_addr' },
  { name: AMBIT_BRIDGE_BOUND_SET, type: 'ipv4_addr', json: 'ipv4_addr' },
  { name: AMBIT_BRIDGE_PORTS_SET, type: 'ipv4_addr . ifname', json: ['ipv4_addr', 'ifname'] },
  { name: AMBIT_BRIDGE_V6_PORTS_SET, type: 'ifname', json: 'ifname' },
];

/** What the bridge table's sets hold: the enrolled pods' IPv6 addresses and the source bindings. */
export interface BridgeSetMembers {
  readonly ipv6Pods?: readonly string[];
  readonly bindings?: readonly SourceBinding[];
}

/**
 * The `nft -f` batch that (re)creates Ambit's bridge table in one transaction, with `members` in its sets, or ''
 * when `currentRuleset` (`nft -j list ruleset bridge`) shows it in place: the sets, and each chain at its hook and
 * priority with exactly Ambit's rules. The sets' members are syncPods' business.
 */
export function buildBridgeTable(currentRuleset: string, members: BridgeSetMembers = {}): string {
  if (bridgeTableIsCurrent(currentRuleset)) return '';
  const table = `bridge ${AMBIT_BRIDGE_TABLE}`;
  return [
    // declaring then deleting makes the delete safe when the table is absent; the whole file is one transaction
    `add table ${table}`,
    `delete table ${table}`,
    `add table ${table}`,
    ...BRIDGE_SETS.map(({ name, type }) => `add set ${table} ${name} { type ${type}; }`),
    ...bridgeSetElements(members),
    ...BRIDGE_CHAINS.flatMap(({ name, rules }) => [
      `add chain ${table} ${name} { type filter hook ${name} priority ${AMBIT_BRIDGE_CHAIN_PRIORITY}; policy accept; }`,
      ...rules.map((rule) => `add rule ${table} ${name} ${tagged(rule)}`),
    ]),
    '',
  ].join('\n');
}

/**
 * The `nft -f` batch that makes the bridge table's sets hold exactly `members`, in one transaction. It declares the
 * table and sets first, so that it applies even after someone deleted them (install() then restores the chains).
 */
export function buildBridgeSetSync(members: BridgeSetMembers): string {
  const table = `bridge ${AMBIT_BRIDGE_TABLE}`;
  return [
    `add table ${table}`,
    ...BRIDGE_SETS.flatMap(({ name, type }) => [`add set ${table} ${name} { type ${type}; }`, `flush set ${table} ${name}`]),
    ...bridgeSetElements(members),
    '',
  ].join('\n');
}

function bridgeSetElements(members: BridgeSetMembers): string[] {
  const bindings = members.bindings ?? [];
  const bridged = bindings.filter((binding) => binding.bridge !== undefined);
  const elements: Array<[string, string[]]> = [
    [AMBIT_BRIDGE_V6_SET, [...(members.ipv6Pods ?? [])]],
    // every bound address, routed ones included: one of them arriving on a bridge port is not from its own veth
    [AMBIT_BRIDGE_BOUND_SET, bindings.map((binding) => binding.ip)],
    [AMBIT_BRIDGE_PORTS_SET, bridged.map((binding) => `${binding.ip} . "${binding.iface}"`)],
    [AMBIT_BRIDGE_V6_PORTS_SET, podInterfaces(bridged).map(({ iface }) => `"${iface}"`)],
  ];
  return elements
    .filter(([, values]) => values.length > 0)
    .map(([set, values]) => `add element bridge ${AMBIT_BRIDGE_TABLE} ${set} { ${values.join(', ')} }`);
}

/** The `nft -f` batch that deletes Ambit's bridge table, or '' when `currentRuleset` has none. */
export function buildBridgeTableRemoval(currentRuleset: string): string {
  return readNftTable(currentRuleset).exists ? `delete table bridge ${AMBIT_BRIDGE_TABLE}\n` : '';
}

interface NftTableState {
  exists: boolean;
  chains: Array<{ name?: string; type?: string | string[]; hook?: string; prio?: number }>;
  rules: Array<{ chain?: string; comment?: string }>;
  sets: Array<{ name?: string; type?: string | string[] }>;
}

function readNftTable(rulesetJson: string): NftTableState {
  let objects: unknown[] = [];
  try {
    const parsed = JSON.parse(rulesetJson === '' ? '{}' : rulesetJson) as { nftables?: unknown[] };
    objects = Array.isArray(parsed.nftables) ? parsed.nftables : [];
  } catch {
    objects = [];
  }
  const state: NftTableState = { exists: false, chains: [], rules: [], sets: [] };
  for (const object of objects) {
    const entry = object as { table?: { family?: string; name?: string }; chain?: NftObject; rule?: NftObject; set?: NftObject };
    if (entry.table?.family === 'bridge' && entry.table.name === AMBIT_BRIDGE_TABLE) state.exists = true;
    if (entry.chain && isOurs(entry.chain)) state.chains.push(entry.chain);
    if (entry.rule && isOurs(entry.rule)) state.rules.push(entry.rule);
    if (entry.set && isOurs(entry.set)) state.sets.push(entry.set);
  }
  return state;
}

interface NftObject {
  family?: string;
  table?: string;
  name?: string;
  chain?: string;
  type?: string | string[];
  hook?: string;
  prio?: number;
  comment?: string;
}

function isOurs(object: NftObject): boolean {
  return object.family === 'bridge' && object.table === AMBIT_BRIDGE_TABLE;
}

function bridgeTableIsCurrent(rulesetJson: string): boolean {
  const state = readNftTable(rulesetJson);
  const chainsCurrent =
    state.chains.length === BRIDGE_CHAINS.length &&
    BRIDGE_CHAINS.every(({ name, rules }) => {
      const chain = state.chains.find((candidate) => candidate.name === name);
      const tags = state.rules.filter((rule) => rule.chain === name).map((rule) => rule.comment ?? '');
      return chain?.type === 'filter' && chain.hook === name && chain.prio === AMBIT_BRIDGE_CHAIN_PRIORITY && sameLines(tags, rules.map(ruleTag));
    });
  const setCurrent =
    state.sets.length === BRIDGE_SETS.length &&
    BRIDGE_SETS.every(({ name, json }) => JSON.stringify(state.sets.find((set) => set.name === name)?.type) === JSON.stringify(json));
  return state.exists && chainsCurrent && setCurrent && state.rules.length === BRIDGE_CHAINS.flatMap((chain) => chain.rules).length;
}

/**
 * The `ipset restore` batch that replaces the set's members with `addresses`. The live set only ever changes
 * through the swap, which is atomic; ipset restore itself stops at the first bad line, so a failure leaves at
 * most a stale temporary set, which the next sync flushes and removal destroys.
 */
export function buildIpsetSync(addresses: readonly string[], family: AddressFamily = IPV4): string {
  return buildSetSwap(podSet(family), addresses);
}

/**
 * As buildIpsetSync, for the two sets of the source binding: the bound addresses, then each one's interface as raw
 * PREROUTING sees it (its bridge for a bridge port). The pairs go first, so an address is never bound without them.
 */
export function buildSourceBindingSync(bindings: readonly SourceBinding[]): string {
  return (
    buildSetSwap(AMBIT_PORTS_SET, bindings.map((binding) => `${binding.ip},${binding.bridge ?? binding.iface}`)) +
    buildSetSwap(AMBIT_BOUND_SET, bindings.map((binding) => binding.ip))
  );
}

function buildSetSwap(spec: IpsetSpec, members: readonly string[]): string {
  const temporary = temporarySetName(spec);
  return [
    createSetLine({ ...spec, name: spec.name }),
    createSetLine({ ...spec, name: temporary }),
    `flush ${temporary}`,
    ...members.map((member) => `add ${temporary} ${member}`),
    `swap ${temporary} ${spec.name}`,
    `destroy ${temporary}`,
    '',
  ].join('\n');
}

/**
 * kube-proxy's and istio-cni's rule: the node's other components already use one backend, and the one with more
 * rules is the one in use. Legacy wins only with strictly more rules, since nft is the default of every current
 * distribution. Returns undefined when neither backend could be read.
 */
export function chooseIptablesBackend(ruleCounts: { legacy?: number; nft?: number }): IptablesBackend | undefined {
  if (ruleCounts.legacy === undefined) return ruleCounts.nft === undefined ? undefined : 'nft';
  if (ruleCounts.nft === undefined) return 'legacy';
  return ruleCounts.legacy > ruleCounts.nft ? 'legacy' : 'nft';
}

/** The number of rules in an iptables-save dump. */
export function countRules(saveOutput: string): number {
  return saveOutput.split('\n').filter((line) => line.startsWith('-A ')).length;
}

/** Finds the backend the node uses, by the rule counts of `iptables-legacy-save` and `iptables-nft-save`. */
export function detectIptablesBackend(options: { netns?: string; log?: Logger } = {}): Promise<IptablesBackend> {
  return detectBackend(componentLogger(options.log), options.netns);
}

/**
 * Removes everything Ambit installs, whichever pieces exist, so it also cleans up after a crash: the raw, nat, mangle
 * and filter chains with their jumps (in every backend that has them), the fwmark rule and route table, the bridge fdb entries
 * and nft table, and the ipsets. Used by `ambit agent --cleanup` and by RedirectRules.remove().
 */
export function removeRedirectRules(options: RemoveRedirectRulesOptions = {}): Promise<void> {
  return removeRules(componentLogger(options.log), options.backend ?? 'auto', options.netns);
}

async function detectBackend(log: Logger, netns: string | undefined): Promise<IptablesBackend> {
  const present = await presentBackends(IPV4);
  if (present.length === 1 && present[0] !== undefined) return present[0];
  const dumps = await Promise.allSettled(
    present.map((backend) => applyCommand([saveCommand(IPV4, backend)], { netns }, NET_ADMIN_HINT)),
  );
  const ruleCounts: { legacy?: number; nft?: number } = {};
  present.forEach((backend, index) => {
    const dump = dumps[index];
    if (dump?.status === 'fulfilled') ruleCounts[backend] = countRules(dump.value.stdout);
    else log.warn({ backend, err: dump?.reason }, 'cannot read this iptables backend; not considering it');
  });
  const backend = chooseIptablesBackend(ruleCounts);
  if (backend === undefined) {
    const firstFailure = dumps.find((dump) => dump.status === 'rejected');
    throw firstFailure?.reason ?? new AmbitError('RULES_APPLY_FAILED', 'no iptables backend could be read');
  }
  log.info({ backend, ruleCounts }, 'iptables backend detected');
  return backend;
}

async function removeRules(log: Logger, choice: IptablesBackendChoice, netns: string | undefined): Promise<void> {
  const commandOptions: CommandOptions = { netns };
  const backends = choice === 'auto' ? await presentBackends(IPV4) : [choice];
  const removedFrom = await removeChains(
    log,
    IPV4,
    backends,
    commandOptions,
    (dump) => buildLocalDnatRemoval(dump) + buildSourceCheckRemoval(dump) + buildMangleRemoval(dump) + buildNatRemoval(dump),
  );
  // A backend without ip6tables cannot have Ambit's IPv6 chain (install() refuses to run without it).
  const ipv6Backends = (await presentBackends(IPV6).catch(() => [])).filter((backend) => backends.includes(backend));
  const removedFrom6 = ipv6Backends.length === 0 ? [] : await removeChains(log, IPV6, ipv6Backends, commandOptions, buildIpv6RejectRemoval);

  const routing = buildTransparentRoutingRemoval(await readTransparentRouting(commandOptions));
  if (routing.length > 0) await applyCommand(['ip', '-batch', '-'], { ...commandOptions, input: batchText(routing) }, NET_ADMIN_HINT);
  const bridgeChanges = await removeBridgeRedirect(commandOptions);

  // last: the rules used the sets, and a set in use cannot be destroyed
  const existingSets = await listSets(commandOptions);
  const doomedSets = ALL_SETS.flatMap((spec) => [spec.name, temporarySetName(spec)]).filter((set) => existingSets.has(set));
  if (doomedSets.length > 0) {
    const batch = doomedSets.map((set) => `destroy ${set}`).join('\n') + '\n';
    await applyCommand(['ipset', 'restore'], { ...commandOptions, input: batch }, IPSET_DESTROY_HINT);
  }
  if (removedFrom.length > 0 || removedFrom6.length > 0 || doomedSets.length > 0 || routing.length > 0 || bridgeChanges > 0) {
    log.info(
      { backends: removedFrom, chains: removedFrom.length, ipv6Backends: removedFrom6, ipsets: doomedSets.length, routing: routing.length, bridge: bridgeChanges },
      'redirect rules removed',
    );
  } else {
    log.debug('no redirect rules to remove');
  }
}

/** Removes Ambit's chains of one family from those of `backends` that have them (`removal` builds the batch from a dump). */
async function removeChains(
  log: Logger,
  family: AddressFamily,
  backends: readonly IptablesBackend[],
  commandOptions: CommandOptions,
  removal: (dump: string) => string,
): Promise<IptablesBackend[]> {
  // the whole dump rather than `-t nat`: asking legacy iptables for a table creates it, and an empty legacy nat
  // table on an nft node makes every iptables-nft command warn about it
  const dumps = await Promise.allSettled(
    backends.map((backend) => applyCommand([saveCommand(family, backend)], commandOptions, NET_ADMIN_HINT)),
  );
  if (dumps.every((dump) => dump.status === 'rejected')) {
    throw dumps[0]?.reason ?? missingIptables(family);
  }
  const removedFrom: IptablesBackend[] = [];
  for (const [index, backend] of backends.entries()) {
    const dump = dumps[index];
    if (dump?.status !== 'fulfilled') {
      log.warn({ backend, command: family.iptablesCommand, err: dump?.reason }, 'cannot read this iptables backend; leaving it alone');
      continue;
    }
    const batch = removal(dump.value.stdout);
    if (batch === '') continue;
    await applyCommand([restoreCommand(family, backend), '-w', '--noflush'], { ...commandOptions, input: batch }, NET_ADMIN_HINT);
    removedFrom.push(backend);
  }
  return removedFrom;
}

/** Removes the fdb entries and the nft table; returns how many pieces went. Without nft, there is no table to remove. */
async function removeBridgeRedirect(options: CommandOptions): Promise<number> {
  const fdbRemoval = buildBridgeFdbRemoval(await readFdb(options));
  if (fdbRemoval.length > 0) await applyCommand(['bridge', '-batch', '-'], { ...options, input: batchText(fdbRemoval) }, NET_ADMIN_HINT);
  if (!(await isOnPath('nft'))) return fdbRemoval.length;
  const tableRemoval = buildBridgeTableRemoval(await readBridgeRuleset(options));
  if (tableRemoval !== '') await applyCommand(['nft', '-f', '-'], { ...options, input: tableRemoval }, NFT_HINT);
  return fdbRemoval.length + (tableRemoval === '' ? 0 : 1);
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

const NET_ADMIN_HINT = 'is the agent running as root with NET_ADMIN?';
const IPV6_RESTORE_HINT = 'is the agent running with NET_ADMIN, and does the kernel have ip6tables filter, REJECT, xt_set and xt_conntrack?';
const NAT_RESTORE_HINT = 'is the agent running with NET_ADMIN, and does the kernel have the raw, nat, mangle and filter tables, xt_set, xt_socket, xt_connmark, xt_conntrack and REJECT?';
const IPSET_HINT = "is the agent running with NET_ADMIN, and is the 'ipset' package installed (Debian: apt-get install ipset)?";
const IPSET_DESTROY_HINT = `${IPSET_HINT} A set still in use by some iptables rule cannot be destroyed: look for rules using it with iptables-save`;
const NFT_HINT = 'is the agent running with NET_ADMIN, and does the kernel have nf_tables with the bridge family (CONFIG_NF_TABLES_BRIDGE)?';
const CONNTRACK_HINT = "is the agent running with NET_ADMIN, and is the 'conntrack' package installed (Debian: apt-get install conntrack)?";

interface ChainState {
  chainExists: boolean;
  /** The rules of Ambit's chain, in order. */
  chainRules: string[];
  /** Every rule of any chain that jumps to Ambit's chain, in save order. */
  jumps: string[];
  /** The first rule of each chain that has one. */
  firstRules: Map<string, string>;
}

function jumpRule(chain: string, hook = 'PREROUTING'): string {
  return `-A ${hook} -j ${chain}`;
}

/** Reads one table's section of an iptables-save dump; a dump without it is a table without Ambit. */
function readChain(saveOutput: string, table: Table, chain: string): ChainState {
  const allLines = saveOutput.split('\n').map((line) => line.trim());
  const start = allLines.indexOf(`*${table}`);
  const end = start === -1 ? -1 : allLines.indexOf('COMMIT', start);
  const lines = start === -1 ? [] : allLines.slice(start + 1, end === -1 ? undefined : end);
  const rules = lines.filter((line) => line.startsWith('-A '));
  const firstRules = new Map<string, string>();
  for (const rule of rules) {
    const owner = rule.split(/\s+/)[1];
    if (owner !== undefined && !firstRules.has(owner)) firstRules.set(owner, rule);
  }
  return {
    chainExists: lines.some((line) => line.startsWith(`:${chain} `)),
    chainRules: rules.filter((rule) => rule.startsWith(`-A ${chain} `)),
    jumps: rules.filter((rule) => jumpsTo(rule, chain)),
    firstRules,
  };
}

function jumpsTo(rule: string, chain: string): boolean {
  const tokens = rule.split(/\s+/);
  return tokens.some((token, index) => (token === '-j' || token === '-g') && tokens[index + 1] === chain);
}

/** iptables-save prints a rule in the form `-D` accepts, so swapping the verb deletes exactly that rule. */
function toDeletion(rule: string): string {
  return `-D ${rule.slice('-A '.length)}`;
}

function sameLines(left: readonly string[], right: readonly string[]): boolean {
  return left.length === right.length && left.every((line, index) => line === right[index]);
}

function diffCounts(previous: readonly string[], next: readonly string[]): { added: number; removed: number } {
  const before = new Set(previous);
  const after = new Set(next);
  return {
    added: next.filter((address) => !before.has(address)).length,
    removed: previous.filter((address) => !after.has(address)).length,
  };
}

function createSetLine(spec: IpsetSpec): string {
  return `create ${spec.name} ${spec.type} family ${spec.family} -exist`;
}

function temporarySetName(spec: IpsetSpec): string {
  return `${spec.name}-tmp`;
}

function saveCommand(family: AddressFamily, backend: IptablesBackend): string {
  return `${family.iptablesCommand}-${backend}-save`;
}

function restoreCommand(family: AddressFamily, backend: IptablesBackend): string {
  return `${family.iptablesCommand}-${backend}-restore`;
}

/** The backends whose save command is installed; neither is an error, since the agent cannot capture anything. */
async function presentBackends(family: AddressFamily): Promise<IptablesBackend[]> {
  const backends: IptablesBackend[] = ['legacy', 'nft'];
  const present = await Promise.all(backends.map((backend) => isOnPath(saveCommand(family, backend))));
  const found = backends.filter((_, index) => present[index]);
  if (found.length === 0) throw missingIptables(family);
  return found;
}

function missingIptables(family: AddressFamily): AmbitError {
  return new AmbitError(
    'IPTABLES_MISSING',
    `neither ${saveCommand(family, 'nft')} nor ${saveCommand(family, 'legacy')} is on PATH (${process.env.PATH ?? ''}): ` +
      "install the Debian package 'iptables' (apt-get install iptables) in the agent's image",
  );
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

function hex(value: number): string {
  return `0x${value.toString(16)}`;
}

function batchText(lines: readonly string[]): string {
  return lines.join('\n') + '\n';
}

/** The policy routing of transparent replies, the node's bridges and its links, in one `ip -batch` read. */
async function readIpState(options: CommandOptions): Promise<TransparentRoutingState & { bridges: string[]; links: LinkEntry[] }> {
  const input = batchText(['rule show', `route show table ${TRANSPARENT_ROUTE_TABLE}`, 'link show type bridge', 'link show']);
  const output = await applyCommand(['ip', '-4', '-j', '-batch', '-'], { ...options, input }, NET_ADMIN_HINT);
  // one JSON array per command, each on its own line
  const [rules, routes, bridges, links] = output.stdout
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as unknown[]);
  return {
    rules: (rules ?? []) as IpRuleEntry[],
    routes: (routes ?? []) as IpRouteEntry[],
    bridges: ((bridges ?? []) as LinkEntry[]).map((link) => link.ifname).filter((name): name is string => name !== undefined),
    links: (links ?? []) as LinkEntry[],
  };
}

async function readTransparentRouting(options: CommandOptions): Promise<TransparentRoutingState> {
  const { rules, routes } = await readIpState(options);
  return { rules, routes };
}

async function readFdb(options: CommandOptions): Promise<FdbEntry[]> {
  const output = await applyCommand(['bridge', '-j', 'fdb', 'show'], options, NET_ADMIN_HINT);
  const text = output.stdout.trim();
  return text === '' ? [] : (JSON.parse(text) as FdbEntry[]);
}

async function readBridgeRuleset(options: CommandOptions): Promise<string> {
  return (await applyCommand(['nft', '-j', 'list', 'ruleset', 'bridge'], options, NFT_HINT)).stdout;
}

async function listSets(options: CommandOptions): Promise<Set<string>> {
  const output = await applyCommand(['ipset', 'list', '-n'], options, IPSET_HINT);
  return new Set(output.stdout.split('\n').map((line) => line.trim()).filter((line) => line !== ''));
}

/** Runs one command and turns any failure into RULES_APPLY_FAILED, naming the batch line the tool rejected. */
async function applyCommand(argv: string[], options: CommandOptions, hint: string): Promise<CommandOutput> {
  try {
    return await runCommand(argv, options);
  } catch (err) {
    throw commandFailure(argv, options, hint, err);
  }
}

function commandFailure(argv: readonly string[], options: CommandOptions, hint: string, err: unknown): AmbitError {
  const stderr = err instanceof ExecaError ? String(err.stderr ?? '').trim() : '';
  const detail = stderr !== '' ? stderr : err instanceof Error ? err.message : String(err);
  const where = options.netns === undefined ? '' : ` in network namespace ${options.netns}`;
  const line = failedBatchLine(stderr, options.input);
  const offending = line === undefined ? '' : ` (batch line: ${line})`;
  return new AmbitError('RULES_APPLY_FAILED', `${argv.join(' ')} failed${where}: ${detail}${offending}; ${hint}`, { cause: err });
}

/**
 * Deletes the conntrack entries of the TCP flows from (`--orig-src`) or to (`--orig-dst`) `ip`, as the flow's first
 * packet had it, and returns how many went. conntrack says how many on stderr, and exits 1 when that is none: here
 * an ordinary outcome (a pod without open connections), not a failure.
 */
async function deleteTcpFlows(direction: '--orig-src' | '--orig-dst', ip: string, options: CommandOptions): Promise<number> {
  const argv = ['conntrack', '-D', '-p', 'tcp', direction, ip];
  try {
    return flowsDeleted((await runCommand(argv, options)).stderr) ?? 0;
  } catch (err) {
    if (err instanceof ExecaError && err.exitCode === 1 && flowsDeleted(String(err.stderr ?? '')) === 0) return 0;
    throw commandFailure(argv, options, CONNTRACK_HINT, err);
  }
}

/** `conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.` → 3. */
function flowsDeleted(stderr: string): number | undefined {
  const match = /(\d+) flow entries have been deleted/.exec(stderr);
  return match === null ? undefined : Number(match[1]);
}

/**
 * iptables-restore says "line 4", ipset "Error in line 4", ip and bridge "Command failed -:4", nft "/dev/stdin:4:":
 * the batch text of that line makes the error readable.
 */
function failedBatchLine(stderr: string, input: string | undefined): string | undefined {
  if (input === undefined) return undefined;
  const match = /(?:line:? |-:|stdin:)(\d+)/i.exec(stderr);
  if (match?.[1] === undefined) return undefined;
  return input.split('\n')[Number(match[1]) - 1];
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

function componentLogger(log: Logger | undefined): Logger {
  return (log ?? silentLogger()).child({ component: 'redirect-rules' });
}
