// The iptables chains Ambit owns (nat capture, mangle marks, raw source check, filter resets, the IPv6 reject chain),
// as iptables-save prints them, and the restore batches that bring a dump to them or remove them.
import { hex, sameLines } from './commands.js';
import { type AddressFamily, IPV4, IPV6 } from './family.js';
import { AMBIT_BOUND_SET, AMBIT_PORTS_SET } from './ipsets.js';
import { TRANSPARENT_MARK } from './routing.js';
import { podInterfaces, type SourceBinding } from './source-binding.js';

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

/** Ambit's raw chain, jumped to first from raw PREROUTING: it drops TCP from a bound address on another interface. */
export const AMBIT_SOURCE_CHECK_CHAIN = 'AMBIT-SOURCE-CHECK';

/** Ambit's mangle chain, jumped to first from mangle PREROUTING (a CNI's `ESTABLISHED -j ACCEPT` must not hide replies). */
export const AMBIT_MANGLE_CHAIN = 'AMBIT-MANGLE-PREROUTING';
/** Ambit's mangle chain, jumped to first from mangle OUTPUT: marks the agent's connections from a pod's address. */
export const AMBIT_MANGLE_OUTPUT_CHAIN = 'AMBIT-MANGLE-OUTPUT';

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

export interface NatRulesOptions {
  nodeIp: string;
  outboundPort?: number;
  inboundPort?: number;
  family?: AddressFamily;
  /** The table as `iptables-save -t nat` prints it now; omitted means a table without any Ambit rules. */
  currentNatTable?: string;
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
