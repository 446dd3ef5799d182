// Policy routing of the replies to the agent's transparent sockets: the fwmark rule and its route table.
import type { CommandOptions } from '../exec.js';
import { applyCommand, batchText, hex, NET_ADMIN_HINT } from './commands.js';
import type { LinkEntry } from './source-binding.js';

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

/** The policy routing of transparent replies, the node's bridges and its links, in one `ip -batch` read. */
export async function readIpState(options: CommandOptions): Promise<TransparentRoutingState & { bridges: string[]; links: LinkEntry[] }> {
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

export async function readTransparentRouting(options: CommandOptions): Promise<TransparentRoutingState> {
  const { rules, routes } = await readIpState(options);
  return { rules, routes };
}
