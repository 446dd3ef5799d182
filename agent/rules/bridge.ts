// The bridge side: Ambit's fdb entry on every bridge and its nft `bridge` table (same-node replies, source binding
// by bridge port, IPv6 drops).
import { createHash } from 'node:crypto';
import type { CommandOptions } from '../exec.js';
import { applyCommand, hex, NET_ADMIN_HINT, NFT_HINT, sameLines } from './commands.js';
import { TRANSPARENT_MARK } from './routing.js';
import { podInterfaces, type SourceBinding } from './source-binding.js';

/** The nft set of the bridge table with the enrolled pods' IPv6 addresses (ipsets are not visible to nft). */
export const AMBIT_BRIDGE_V6_SET = 'pods6';

/** The nft sets of the bridge table: bound addresses, and (address . bridge port) pairs they may come from. */
export const AMBIT_BRIDGE_BOUND_SET = 'bound4';
export const AMBIT_BRIDGE_PORTS_SET = 'ports4';
/** The nft set of the bridge table with the bridge ports of bound pods: their IPv6 TCP is dropped whatever the address. */
export const AMBIT_BRIDGE_V6_PORTS_SET = 'ports6';

/** Ambit's nft table of family `bridge` (same-node replies on a bridge CNI). */
export const AMBIT_BRIDGE_TABLE = 'ambit';
/** Locally administered unicast, spelling "ambit": the fdb entry every bridge gets, and where redirected frames go. */
export const AMBIT_BRIDGE_MAC = '02:61:6d:62:69:74';
/** After br_netfilter (priority 0), which runs iptables for bridged frames and so sets the mark. */
export const AMBIT_BRIDGE_CHAIN_PRIORITY = 100;

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
  chains: Array<{ name?: string; type?: string | string[]; hook?: string; prio?: number; policy?: string }>;
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
  policy?: string;
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
      // a chain set to `policy drop` by hand would cut every bridge off: it is not Ambit's, so it is rewritten
      return chain?.type === 'filter' && chain.hook === name && chain.prio === AMBIT_BRIDGE_CHAIN_PRIORITY && chain.policy === 'accept' && sameLines(tags, rules.map(ruleTag));
    });
  const setCurrent =
    state.sets.length === BRIDGE_SETS.length &&
    BRIDGE_SETS.every(({ name, json }) => JSON.stringify(state.sets.find((set) => set.name === name)?.type) === JSON.stringify(json));
  return state.exists && chainsCurrent && setCurrent && state.rules.length === BRIDGE_CHAINS.flatMap((chain) => chain.rules).length;
}

export async function readFdb(options: CommandOptions): Promise<FdbEntry[]> {
  const output = await applyCommand(['bridge', '-j', 'fdb', 'show'], options, NET_ADMIN_HINT);
  const text = output.stdout.trim();
  return text === '' ? [] : (JSON.parse(text) as FdbEntry[]);
}

export async function readBridgeRuleset(options: CommandOptions): Promise<string> {
  return (await applyCommand(['nft', '-j', 'list', 'ruleset', 'bridge'], options, NFT_HINT)).stdout;
}
