import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { execa, type ResultPromise } from 'execa';
import { isAmbitError } from '../core/errors/errors.js';
import { chooseIptablesBackend, countRules, detectIptablesBackend, type IptablesBackend } from '../agent/rules/backend.js';
import { AMBIT_BRIDGE_MAC, buildBridgeFdbRemoval, buildBridgeFdbSync, buildBridgeRule, buildBridgeSetSync, buildBridgeTable, buildBridgeTableRemoval } from '../agent/rules/bridge.js';
import { buildIpsetSync, buildSourceBindingSync } from '../agent/rules/ipsets.js';
import { buildIpv6RejectChainRules, buildIpv6RejectRemoval, buildIpv6RejectRules, buildLocalDnatRemoval, buildLocalDnatRules, buildMangleRemoval, buildMangleRules, buildNatRemoval, buildNatRules, buildSourceCheckChainRules, buildSourceCheckRemoval, buildSourceCheckRules } from '../agent/rules/iptables.js';
import { RedirectRules, removeRedirectRules } from '../agent/rules/redirect-rules.js';
import { TRANSPARENT_ROUTE_TABLE, buildTransparentRouting, buildTransparentRoutingRemoval } from '../agent/rules/routing.js';
import { resolveSourceBindings } from '../agent/rules/source-binding.js';
import { expected, keywordValues, meaning, parseIpRuleLine, parseNftBatch, parseNftRule, parseRestoreBatch, parseRule, type IptablesRule, type NftCommand, type NftRule, type RestoreSection, type RuleMeaning } from './mesh/rules-parse.js';
import { registerForExit, releaseFromExit } from '../testbed/exit-cleanup.js';
import { needsRoot, skipReason } from './prerequisites.js';

const NODE_IP = '10.99.0.1';
/** `ip -j rule show` and `ip -j route show table 15006` as they print Ambit's rule and route: inputs of the builders. */
const FWMARK_RULE = { priority: 90, src: 'all', fwmark: '0x2000', fwmask: '0x2000', table: '15006' };
const LOCAL_ROUTE = { type: 'local', dst: 'default', dev: 'lo', scope: 'host', flags: [] };
const rootSkip = needsRoot('creates network namespaces, iptables rules and ipsets');

const MARK = { '--set-xmark': '0x2000/0x2000' };
const RESET = { '--reject-with': 'tcp-reset' };
const OUTBOUND = expected('AMBIT-PREROUTING', ['proto tcp', 'set ambit-pods-v4 src'], 'DNAT', { '--to-destination': `${NODE_IP}:15001` });
const INBOUND = expected('AMBIT-PREROUTING', ['proto tcp', 'set ambit-pods-v4 dst'], 'DNAT', { '--to-destination': `${NODE_IP}:15006` });
const SOCKET_MARK = expected('AMBIT-MANGLE-PREROUTING', ['proto tcp', 'set ambit-pods-v4 src', 'socket --transparent', 'socket --nowildcard'], 'MARK', MARK);
const CONNMARK_RESTORE = expected('AMBIT-MANGLE-PREROUTING', ['proto tcp', 'connmark --mark 0x2000/0x2000'], 'MARK', MARK);
const CONNMARK_SET = expected('AMBIT-MANGLE-OUTPUT', ['proto tcp', 'tcp --tcp-flags FIN,SYN,RST,ACK SYN', 'set ambit-pods-v4 src'], 'CONNMARK', MARK);
const LOCAL_REPLY = expected('AMBIT-MANGLE-OUTPUT', ['proto tcp', 'connmark --mark 0x2000/0x2000', 'conntrack --ctdir REPLY'], 'MARK', MARK);
const LOCAL_DNAT = expected(
  'AMBIT-LOCAL-DNAT',
  ['proto tcp', 'connmark --mark 0x2000/0x2000', 'conntrack --ctstate DNAT', 'conntrack --ctdir ORIGINAL', 'set ambit-pods-v4 dst'],
  'REJECT',
  RESET,
);
const IPV6_TO_POD = expected('AMBIT-IPV6-REJECT', ['proto tcp', 'set ambit-pods-v6 dst'], 'REJECT', RESET);
const IPV6_FROM_POD = expected('AMBIT-IPV6-REJECT', ['proto tcp', 'set ambit-pods-v6 src', 'conntrack --ctdir ORIGINAL'], 'REJECT', RESET);
/** The `ip -batch` lines that add Ambit's fwmark rule and local route, parsed. */
const FWMARK_ADD = { verb: 'add', priority: 90, fwmark: '0x2000', fwmask: '0x2000', table: '15006' };
const LOCAL_ROUTE_ADD = { verb: 'add', type: 'local', dst: '0.0.0.0/0', dev: 'lo', table: '15006' };
const SOURCE_CHECK = expected('AMBIT-SOURCE-CHECK', ['!in lo', 'proto tcp', 'set ambit-pods-bound-v4 src', '!set ambit-pod-ports-v4 src,src'], 'DROP');

/** A rule in one line of words: the verb, chain and position, the sorted conditions, the target and its options. */
function describe(rule: IptablesRule): string {
  const options = Object.entries(rule.targetOptions).map(([option, value]) => ` ${option} ${value}`);
  return `${rule.verb} ${rule.chain}${rule.position === undefined ? '' : ` ${rule.position}`} [${[...rule.conditions].sort().join(', ')}] -j ${rule.target}${options.join('')}`;
}

/** What a section does, step by step: `declare C`, `flush C`, `delete-chain C`, or a described rule. */
function steps(section: RestoreSection): string[] {
  return section.entries.map((entry) => (entry.kind === 'rule' ? describe(entry.rule) : `${entry.kind} ${entry.chain}`));
}

/** The one section of `batch`, which must be of `table`. */
function onlySection(t: Test, batch: string, table: string): RestoreSection {
  const sections = parseRestoreBatch(batch);
  t.same(sections.map((section) => section.table), [table], `one *${table} section`);
  return sections[0] ?? { table, declared: [], entries: [], rules: [] };
}

function chainRules(section: RestoreSection, chain: string): RuleMeaning[] {
  return section.rules.filter((rule) => rule.verb === '-A' && rule.chain === chain).map(meaning);
}

/** Order-free comparison, for rules (or lines) whose order does not change what they do. */
function sameSet<T>(t: Test, actual: readonly T[], wanted: readonly T[], message: string): void {
  const sorted = (values: readonly T[]) => values.map((value) => JSON.stringify(value)).sort();
  t.same(sorted(actual), sorted(wanted), message);
}

/**
 * The fresh batch for one of Ambit's chains: the chain declared (created, or flushed if it exists), its rules (in
 * order when `ordered`), a jump to it inserted at position 1 of each hook, nothing deleted.
 */
function assertFreshChain(t: Test, section: RestoreSection, chain: string, hooks: string[], rules: RuleMeaning[], ordered = true): void {
  t.same(section.declared, [chain], `${chain} is declared`);
  if (ordered) t.same(chainRules(section, chain), rules, `${chain} has its rules, in order`);
  else sameSet(t, chainRules(section, chain), rules, `${chain} has its rules`);
  const inserted = section.rules.filter((rule) => rule.verb === '-I');
  sameSet(t, inserted.map(describe), hooks.map((hook) => `-I ${hook} 1 [] -j ${chain}`), `the jump from ${hooks.join(' and ')} is inserted at position 1, unconditional`);
  t.same(section.rules.filter((rule) => rule.verb === '-D'), [], 'nothing is deleted');
  const declaredAt = section.entries.findIndex((entry) => entry.kind === 'declare');
  const firstRule = section.entries.findIndex((entry) => entry.kind === 'rule');
  t.ok(declaredAt !== -1 && declaredAt < firstRule, 'the chain is declared before any rule');
}

const BUILTIN_CHAINS: Record<string, string[]> = {
  nat: ['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'],
  mangle: ['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'],
  filter: ['INPUT', 'FORWARD', 'OUTPUT'],
  raw: ['PREROUTING', 'OUTPUT'],
};

/** A table as iptables-save prints it, with the given user chains and rules. */
function saveDump(table: string, chains: string[], rules: string[]): string {
  return [
    '# Generated by iptables-save v1.8.9 (nf_tables)',
    `*${table}`,
    ...(BUILTIN_CHAINS[table] ?? []).map((chain) => `:${chain} ACCEPT [0:0]`),
    ...chains.map((chain) => `:${chain} - [0:0]`),
    ...rules,
    'COMMIT',
    '',
  ].join('\n');
}

/**
 * What a fresh batch leaves in its table, as iptables-save prints it back (the root tests check that it does): the
 * declared chains, each inserted jump as the first rule of its hook, the chains' rules as the builder wrote them.
 */
function installedParts(batch: string): { table: string; chains: string[]; jumps: string[]; rules: string[] } {
  const sections = parseRestoreBatch(batch);
  const rules = sections.flatMap((section) => section.rules);
  return {
    table: sections[0]?.table ?? '',
    chains: sections.flatMap((section) => section.declared),
    jumps: rules.filter((rule) => rule.verb === '-I').map((rule) => `-A ${rule.chain} -j ${rule.target}`),
    rules: rules.filter((rule) => rule.verb === '-A').map((rule) => rule.line),
  };
}

/** The dump of a table where `batch` was applied, with `above` before Ambit's jumps (a CNI that inserted its own). */
function installedDump(batch: string, above: string[] = []): string {
  const parts = installedParts(batch);
  return saveDump(parts.table, parts.chains, [...above, ...parts.jumps, ...parts.rules]);
}

t.test('the rule parsers', async (t) => {
  const bindings = [
    { ip: '10.1.0.2', iface: 'veth1', bridge: 'cni0' },
    { ip: '10.1.0.3', iface: 'veth2' },
  ];
  const everyBatch = [
    buildNatRules({ nodeIp: NODE_IP }),
    buildMangleRules(),
    buildLocalDnatRules(),
    buildIpv6RejectRules('', bindings),
    buildSourceCheckRules(),
    buildNatRemoval(installedDump(buildNatRules({ nodeIp: NODE_IP }))),
    buildMangleRemoval(installedDump(buildMangleRules())),
  ];
  for (const batch of everyBatch) t.doesNotThrow(() => parseRestoreBatch(batch), `parses: ${batch.split('\n')[1] ?? ''}`);
  t.doesNotThrow(() => parseNftBatch(buildBridgeTable('', { ipv6Pods: ['fd00::2'], bindings })), 'parses the bridge table');
  t.doesNotThrow(() => parseNftBatch(buildBridgeSetSync({ ipv6Pods: ['fd00::2'], bindings })), 'parses the bridge set sync');
  const routing = [
    ...buildTransparentRouting({ rules: [{ ...FWMARK_RULE, priority: 100 }], routes: [{ type: 'unicast', dst: '10.1.0.0/16', dev: 'eth0' }] }),
    ...buildTransparentRoutingRemoval({ rules: [FWMARK_RULE], routes: [LOCAL_ROUTE] }),
  ];
  t.doesNotThrow(() => ipBatch(routing), 'parses the ip -batch lines');
  t.throws(() => routeLine('route add local 0.0.0.0/0 dev lo table 15006 proto kernel'), /unknown route word proto/);

  t.throws(() => parseRule('-A X -p tcp --dport 80 -j ACCEPT'), /unknown token --dport/, 'a module option without its -m');
  t.throws(() => parseRule('-A X -m string --algo bm -j DROP'), /unknown match module string/);
  t.throws(() => parseRule('-A X -m set --match-set ambit-pods-v4 src -j DNAT --to 10.0.0.1'), /unknown option --to of -j DNAT/);
  t.throws(() => parseRule('-A X -p tcp'), /no target/);
  t.throws(() => parseRestoreBatch('*nat\n-A X -j Y\n'), /without COMMIT/);
  t.throws(() => parseRestoreBatch('*nat\n-Z X\nCOMMIT\n'), /unknown verb -Z/);
  t.throws(() => parseNftBatch('add rule bridge ambit forward ip6 flowlabel 3 drop'), /unknown key ip6 flowlabel/);
  t.throws(() => parseNftBatch('add rule bridge ambit forward drop meta l4proto tcp'), /after the verdict/);
  t.throws(() => parseNftBatch('insert rule bridge ambit forward drop'), /unknown nft command/);
  t.throws(() => parseIpRuleLine('rule add priority 90 from all lookup 15006'), /unknown ip rule word from/);
  t.throws(() => setSwap('create ambit-pods-v4 hash:ip family inet -exist\nrename ambit-pods-v4 x\n', 'ambit-pods-v4'), /unknown ipset command: rename/);
  for (const batch of [buildIpsetSync(['10.1.0.4']), buildSourceBindingSync(bindings)]) t.doesNotThrow(() => setSwap(batch, 'ambit-pods-v4'), 'parses the ipset batches');

  const [outboundLine] = installedParts(buildNatRules({ nodeIp: NODE_IP })).rules;
  const reformatted = `-A  AMBIT-PREROUTING -m set --match-set ambit-pods-v4 src -p tcp   -j DNAT --to-destination ${NODE_IP}:15001`;
  t.same(meaning(parseRule(reformatted)), meaning(parseRule(outboundLine ?? '')), 'another option order and spacing mean the same');
});

/**
 * Mutation checks: one meaningful token of a builder's real output changed, and the assertion the tests make
 * about it no longer holds, so those tests can fail.
 */
t.test('a changed token changes the meaning the tests check', async (t) => {
  const mutate = (line: string | undefined, from: string, to: string): string => {
    t.ok(line?.includes(from), `the line has ${from}`);
    return (line ?? '').replace(from, to);
  };
  const nat = parseRestoreBatch(buildNatRules({ nodeIp: NODE_IP }))[0]?.rules ?? [];
  const outbound = nat.find((rule) => rule.verb === '-A')?.line;
  t.same(meaning(parseRule(outbound ?? '')), OUTBOUND, 'the real rule has the meaning the nat test checks');
  t.notSame(meaning(parseRule(mutate(outbound, ' src ', ' dst '))), OUTBOUND, 'src → dst');
  t.notSame(meaning(parseRule(mutate(outbound, ':15001', ':15002'))), OUTBOUND, 'another target port');
  const jump = nat.find((rule) => rule.verb === '-I')?.line;
  t.equal(describe(parseRule(jump ?? '')), '-I PREROUTING 1 [] -j AMBIT-PREROUTING');
  t.notSame(describe(parseRule(mutate(jump, 'PREROUTING 1', 'PREROUTING 2'))), '-I PREROUTING 1 [] -j AMBIT-PREROUTING', 'a jump not at position 1');

  const undeclared = buildNatRules({ nodeIp: NODE_IP }).replace(':AMBIT-PREROUTING - [0:0]\n', '');
  t.notSame(parseRestoreBatch(undeclared)[0]?.declared, ['AMBIT-PREROUTING'], 'a chain not declared');

  const [sourceCheck] = buildSourceCheckChainRules();
  t.same(meaning(parseRule(sourceCheck ?? '')), SOURCE_CHECK);
  t.notSame(meaning(parseRule(mutate(sourceCheck, '! -i lo ', ''))), SOURCE_CHECK, 'the lo exemption dropped');
  t.notSame(meaning(parseRule(mutate(sourceCheck, 'set ! --match-set', 'set --match-set'))), SOURCE_CHECK, 'a negation dropped');

  const mangle = installedParts(buildMangleRules()).rules[0];
  t.same(meaning(parseRule(mangle ?? '')), SOCKET_MARK);
  t.notSame(meaning(parseRule(mutate(mangle, '0x2000/0x2000', '0x2000/0x4000'))), SOCKET_MARK, 'another mask');
  t.notSame(meaning(parseRule(mutate(mangle, ' --nowildcard', ''))), SOCKET_MARK, 'a socket option dropped');

  const ipv6 = buildIpv6RejectChainRules([{ ip: '10.1.0.2', iface: 'veth1', bridge: 'cni0' }])[2];
  const physdevIn = expected('AMBIT-IPV6-REJECT', ['proto tcp', 'physdev --physdev-in veth1', 'conntrack --ctdir ORIGINAL'], 'REJECT', RESET);
  t.same(meaning(parseRule(ipv6 ?? '')), physdevIn);
  t.notSame(meaning(parseRule(mutate(ipv6, '--physdev-in', '--physdev-out'))), physdevIn, 'the other direction');

  const table = buildBridgeTable('');
  const forward = table.split('\n').find((line) => line.includes('ip6 saddr'));
  const rule = (line: string) => nftRule(parseNftBatch(line)[0]);
  t.same(statements(rule(forward ?? '')), ['meta l4proto tcp', 'ip6 saddr @pods6', 'drop'].sort());
  t.notSame(statements(rule(mutate(forward, 'saddr', 'daddr'))), ['meta l4proto tcp', 'ip6 saddr @pods6', 'drop'].sort(), 'saddr → daddr');
  t.notSame(statements(rule(mutate(forward, ' drop ', ' accept '))), ['meta l4proto tcp', 'ip6 saddr @pods6', 'drop'].sort(), 'drop → accept');
  const check = table.split('\n').find((line) => line.includes('@bound4 '));
  t.notOk(rule(mutate(check, ' != ', ' ')).matches.has('ip saddr . iifname != @ports4'), 'the != of the source check dropped');

  const [ipRule] = buildTransparentRouting({ rules: [], routes: [LOCAL_ROUTE] });
  t.same(parseIpRuleLine(ipRule ?? ''), FWMARK_ADD);
  t.notSame(parseIpRuleLine(mutate(ipRule, '/0x2000', '/0x4000')), FWMARK_ADD, 'another mask');
  t.notSame(parseIpRuleLine(mutate(ipRule, 'lookup 15006', 'lookup 15007')), FWMARK_ADD, 'another table');

  const sync = buildIpsetSync(['10.1.0.4']);
  t.same(setSwap(sync, 'ambit-pods-v4').swap, { type: 'hash:ip', family: 'inet', members: ['10.1.0.4'], swapped: true });
  t.same(setSwap(mutate(sync, 'swap ambit-pods-v4-tmp ambit-pods-v4', 'swap ambit-pods-v4-tmp ambit-pods-v6'), 'ambit-pods-v4').swap.swapped, false, 'swapped into another set');
  t.same(setSwap(mutate(sync, 'add ambit-pods-v4-tmp', 'add ambit-pods-v4'), 'ambit-pods-v4').swap.members, [], 'added to the live set');
});

/** The one rule of a parsed single-line nft batch. */
function nftRule(command: NftCommand | undefined): NftRule {
  if (command?.object !== 'rule') throw new Error('not a rule');
  return command;
}

/** A bridge rule's matches, mangles, counter and verdict, sorted: what it does, without its tag. */
function statements(rule: NftRule): string[] {
  return [...rule.matches, ...rule.mangles, ...(rule.counter ? ['counter'] : []), ...(rule.verdict === undefined ? [] : [rule.verdict])].sort();
}

/**
 * The atomic replacement of one ipset in an `ipset restore` batch: both the set and its temporary created with the
 * same type and family, the temporary flushed, filled, swapped into the set and destroyed, in that order.
 */
function setSwap(batch: string, name: string): { swap: { type: string; family: string; members: string[]; swapped: boolean }; swapAt: number } {
  const lines = batch.split('\n').filter((line) => line !== '').map((line) => line.split(/\s+/));
  const unknown = lines.find((words) => !['create', 'flush', 'add', 'swap', 'destroy'].includes(words[0] ?? ''));
  if (unknown !== undefined) throw new Error(`unknown ipset command: ${unknown.join(' ')}`);
  const swapAt = lines.findIndex((words) => words[0] === 'swap' && words[2] === name);
  const temporary = lines[swapAt]?.[1] ?? '';
  const at = (verb: string, set: string) => lines.findIndex((words) => words[0] === verb && words[1] === set);
  const create = lines[at('create', name)] ?? [];
  const createTemporary = lines[at('create', temporary)] ?? [];
  const adds = lines.map((words, index) => ({ words, index })).filter(({ words }) => words[0] === 'add' && words[1] === temporary);
  const sameKind = create.slice(2).join(' ') === createTemporary.slice(2).join(' ') && create.includes('-exist');
  const ordered =
    at('create', name) !== -1 &&
    at('create', temporary) < at('flush', temporary) &&
    adds.every(({ index }) => index > at('flush', temporary) && index < swapAt) &&
    swapAt < at('destroy', temporary);
  const swap = {
    type: create[2] ?? '',
    family: keywordValues(create.join(' '), ['family']).family ?? '',
    members: adds.map(({ words }) => words[2] ?? ''),
    swapped: swapAt !== -1 && temporary !== name && sameKind && ordered,
  };
  return { swap, swapAt };
}

/** The deletions of a batch, described; `-D` takes the first matching rule, so each one deletes one copy. */
function deletions(section: RestoreSection): string[] {
  return section.rules.filter((rule) => rule.verb === '-D').map(describe);
}

function entryIndex(section: RestoreSection, step: string): number {
  return steps(section).indexOf(step);
}

t.test('buildNatRules', async (t) => {
  const fresh = buildNatRules({ nodeIp: NODE_IP });
  // pod-to-pod matches both: the outbound rule must come first
  assertFreshChain(t, onlySection(t, fresh, 'nat'), 'AMBIT-PREROUTING', ['PREROUTING'], [OUTBOUND, INBOUND]);
  const other = onlySection(t, buildNatRules({ nodeIp: '192.168.5.9', outboundPort: 16001, inboundPort: 16006 }), 'nat');
  t.same(
    chainRules(other, 'AMBIT-PREROUTING').map((rule) => rule.options),
    [{ '--to-destination': '192.168.5.9:16001' }, { '--to-destination': '192.168.5.9:16006' }],
    'ports and node IP are configurable',
  );

  t.equal(buildNatRules({ nodeIp: NODE_IP, currentNatTable: installedDump(fresh, []) }), '', 'an in-place dump yields an empty batch');
  const parts = installedParts(fresh);
  const withKube = saveDump('nat', parts.chains, [...parts.jumps, '-A PREROUTING -j KUBE-SERVICES', ...parts.rules]);
  t.equal(buildNatRules({ nodeIp: NODE_IP, currentNatTable: withKube }), '', 'nothing to do with kube-proxy below the jump');

  const moved = onlySection(t, buildNatRules({ nodeIp: NODE_IP, currentNatTable: installedDump(fresh, ['-A PREROUTING -j KUBE-SERVICES']) }), 'nat');
  t.same(deletions(moved), ['-D PREROUTING [] -j AMBIT-PREROUTING'], 'a jump that is no longer first is deleted');
  const insertAt = entryIndex(moved, '-I PREROUTING 1 [] -j AMBIT-PREROUTING');
  t.ok(insertAt !== -1, 'and inserted again at position 1');
  t.ok(entryIndex(moved, '-D PREROUTING [] -j AMBIT-PREROUTING') < insertAt, 'deletion comes before insertion (-D would take the new one)');

  const duplicated = saveDump('nat', parts.chains, [...parts.jumps, '-A PREROUTING -p udp -j ACCEPT', ...parts.jumps, ...parts.rules]);
  const deduplicated = onlySection(t, buildNatRules({ nodeIp: NODE_IP, currentNatTable: duplicated }), 'nat');
  t.same(deletions(deduplicated), ['-D PREROUTING [] -j AMBIT-PREROUTING'], 'the second jump is deleted');
  t.same(deduplicated.rules.filter((rule) => rule.verb === '-I'), [], 'the first jump is kept');

  const oldPort = saveDump('nat', parts.chains, [...parts.jumps, ...parts.rules.map((rule) => rule.replace(':15001', ':14001'))]);
  const rewritten = onlySection(t, buildNatRules({ nodeIp: NODE_IP, currentNatTable: oldPort }), 'nat');
  t.same(rewritten.declared, ['AMBIT-PREROUTING'], 'a changed chain is declared, which flushes it');
  t.same(chainRules(rewritten, 'AMBIT-PREROUTING'), [OUTBOUND, INBOUND], 'and rewritten');
  t.same(rewritten.rules.filter((rule) => rule.verb !== '-A'), [], 'while the jump is left alone');
});

/** A removal batch: `jumps` deleted (in any order), then the chain flushed, then deleted. */
function assertRemoval(t: Test, section: RestoreSection, chain: string, jumps: string[]): void {
  sameSet(t, deletions(section), jumps, 'every jump to the chain is deleted');
  const flushAt = entryIndex(section, `flush ${chain}`);
  const deleteAt = entryIndex(section, `delete-chain ${chain}`);
  t.ok(flushAt !== -1 && flushAt < deleteAt, 'the chain is flushed, then deleted (a chain must be empty to go)');
  const lastJump = Math.max(-1, ...section.entries.map((entry, index) => (entry.kind === 'rule' ? index : -1)));
  t.ok(lastJump < deleteAt, 'after the jumps to it are gone');
  t.same(section.entries.filter((entry) => entry.kind === 'declare'), [], 'nothing is declared');
}

t.test('buildNatRemoval', async (t) => {
  const parts = installedParts(buildNatRules({ nodeIp: NODE_IP }));
  t.equal(buildNatRemoval(saveDump('nat', [], ['-A PREROUTING -j KUBE-SERVICES'])), '', 'nothing to remove');
  const leftovers = saveDump('nat', parts.chains, [...parts.jumps, '-A PREROUTING -j KUBE-SERVICES', ...parts.jumps, '-A OUTPUT -p tcp -j AMBIT-PREROUTING', ...parts.rules]);
  assertRemoval(t, onlySection(t, buildNatRemoval(leftovers), 'nat'), 'AMBIT-PREROUTING', [
    '-D PREROUTING [] -j AMBIT-PREROUTING',
    '-D PREROUTING [] -j AMBIT-PREROUTING',
    '-D OUTPUT [proto tcp] -j AMBIT-PREROUTING',
  ]);
  const empty = onlySection(t, buildNatRemoval(saveDump('nat', ['AMBIT-PREROUTING'], [])), 'nat');
  t.same(steps(empty), ['flush AMBIT-PREROUTING', 'delete-chain AMBIT-PREROUTING'], 'an empty leftover chain');
  const filter = '*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j AMBIT-PREROUTING\nCOMMIT\n';
  const fromFullDump = onlySection(t, buildNatRemoval(filter + saveDump('nat', parts.chains, parts.jumps)), 'nat');
  assertRemoval(t, fromFullDump, 'AMBIT-PREROUTING', ['-D PREROUTING [] -j AMBIT-PREROUTING']);
});

t.test('buildMangleRules and buildMangleRemoval', async (t) => {
  const fresh = buildMangleRules();
  const sections = parseRestoreBatch(fresh);
  t.same(sections.map((section) => section.table), ['mangle', 'mangle'], 'one mangle section per chain');
  const [prerouting, output] = sections as [RestoreSection, RestoreSection];
  // both PREROUTING rules set the same mark: their order does not matter
  assertFreshChain(t, prerouting, 'AMBIT-MANGLE-PREROUTING', ['PREROUTING'], [SOCKET_MARK, CONNMARK_RESTORE], false);
  assertFreshChain(t, output, 'AMBIT-MANGLE-OUTPUT', ['OUTPUT'], [CONNMARK_SET, LOCAL_REPLY], false);

  const installed = installedDump(fresh);
  t.equal(buildMangleRules({ currentTables: installed }), '', 'an in-place dump yields an empty batch');
  t.equal(buildMangleRules({ currentTables: saveDump('nat', [], []) + installed }), '', 'the mangle section of a full dump is the one read');
  const slidDown = onlySection(t, buildMangleRules({ currentTables: installedDump(fresh, ['-A PREROUTING -j cali-PREROUTING']) }), 'mangle');
  t.same(deletions(slidDown), ['-D PREROUTING [] -j AMBIT-MANGLE-PREROUTING'], 'a CNI above it: the jump is deleted');
  t.ok(entryIndex(slidDown, '-D PREROUTING [] -j AMBIT-MANGLE-PREROUTING') < entryIndex(slidDown, '-I PREROUTING 1 [] -j AMBIT-MANGLE-PREROUTING'), 'and inserted at the top after');
  t.same(slidDown.declared, ['AMBIT-MANGLE-PREROUTING'], 'the OUTPUT chain is left alone');
  sameSet(t, chainRules(slidDown, 'AMBIT-MANGLE-PREROUTING'), [SOCKET_MARK, CONNMARK_RESTORE], 'the declared chain gets its rules back');
  const outputSlid = onlySection(t, buildMangleRules({ currentTables: installedDump(fresh, ['-A OUTPUT -j KUBE-OUTPUT']) }), 'mangle');
  t.same(deletions(outputSlid), ['-D OUTPUT [] -j AMBIT-MANGLE-OUTPUT'], 'and the OUTPUT jump the same');
  t.ok(entryIndex(outputSlid, '-D OUTPUT [] -j AMBIT-MANGLE-OUTPUT') < entryIndex(outputSlid, '-I OUTPUT 1 [] -j AMBIT-MANGLE-OUTPUT'));

  const parts = installedParts(fresh);
  const refilled = parseRestoreBatch(buildMangleRules({ currentTables: saveDump('mangle', parts.chains, parts.jumps) }));
  sameSet(t, refilled.flatMap((section) => section.declared), ['AMBIT-MANGLE-PREROUTING', 'AMBIT-MANGLE-OUTPUT'], 'flushed chains are declared');
  sameSet(t, refilled.flatMap((section) => section.rules.filter((rule) => rule.verb === '-A').map(meaning)), [SOCKET_MARK, CONNMARK_RESTORE, CONNMARK_SET, LOCAL_REPLY], 'and get their rules back');
  t.same(refilled.flatMap((section) => section.rules.filter((rule) => rule.verb !== '-A')), [], 'their jumps, still first, are left alone');

  t.equal(buildMangleRemoval(installedDump(buildNatRules({ nodeIp: NODE_IP })).replace('*nat', '*mangle')), '', 'the nat chain is not the mangle chain');
  const removal = parseRestoreBatch(buildMangleRemoval(installed));
  t.same(removal.map((section) => section.table), ['mangle', 'mangle']);
  assertRemoval(t, removal[0] as RestoreSection, 'AMBIT-MANGLE-PREROUTING', ['-D PREROUTING [] -j AMBIT-MANGLE-PREROUTING']);
  assertRemoval(t, removal[1] as RestoreSection, 'AMBIT-MANGLE-OUTPUT', ['-D OUTPUT [] -j AMBIT-MANGLE-OUTPUT']);
});

t.test('buildLocalDnatRules and its removal', async (t) => {
  const fresh = buildLocalDnatRules('');
  assertFreshChain(t, onlySection(t, fresh, 'filter'), 'AMBIT-LOCAL-DNAT', ['OUTPUT'], [LOCAL_DNAT]);
  t.equal(buildLocalDnatRules(installedDump(fresh)), '', 'an in-place dump yields an empty batch');
  const slid = onlySection(t, buildLocalDnatRules(installedDump(fresh, ['-A OUTPUT -j ACCEPT'])), 'filter');
  t.same(deletions(slid), ['-D OUTPUT [] -j AMBIT-LOCAL-DNAT'], 'a jump below an ACCEPT is deleted');
  t.ok(entryIndex(slid, '-D OUTPUT [] -j AMBIT-LOCAL-DNAT') < entryIndex(slid, '-I OUTPUT 1 [] -j AMBIT-LOCAL-DNAT'), 'and goes back to the top');
  const parts = installedParts(fresh);
  const refilled = onlySection(t, buildLocalDnatRules(saveDump('filter', parts.chains, parts.jumps)), 'filter');
  t.same(refilled.declared, ['AMBIT-LOCAL-DNAT'], 'a flushed chain is declared');
  t.same(chainRules(refilled, 'AMBIT-LOCAL-DNAT'), [LOCAL_DNAT], 'and refilled');
  assertRemoval(t, onlySection(t, buildLocalDnatRemoval(installedDump(fresh)), 'filter'), 'AMBIT-LOCAL-DNAT', ['-D OUTPUT [] -j AMBIT-LOCAL-DNAT']);
  t.equal(buildLocalDnatRemoval(''), '', 'nothing to remove');
});

t.test('buildIpv6RejectRules and its removal', async (t) => {
  const fresh = buildIpv6RejectRules('');
  assertFreshChain(t, onlySection(t, fresh, 'filter'), 'AMBIT-IPV6-REJECT', ['INPUT', 'FORWARD'], [IPV6_TO_POD, IPV6_FROM_POD], false);
  t.equal(buildIpv6RejectRules(installedDump(fresh)), '', 'an in-place dump yields an empty batch');
  const slid = onlySection(t, buildIpv6RejectRules(installedDump(fresh, ['-A INPUT -j ACCEPT'])), 'filter');
  t.same(deletions(slid), ['-D INPUT [] -j AMBIT-IPV6-REJECT'], 'a jump below an ACCEPT is deleted');
  t.ok(entryIndex(slid, '-D INPUT [] -j AMBIT-IPV6-REJECT') < entryIndex(slid, '-I INPUT 1 [] -j AMBIT-IPV6-REJECT'), 'and goes back to the top');
  t.same(slid.rules.filter((rule) => rule.chain === 'FORWARD'), [], 'the jump already first is left alone');
  const parts = installedParts(fresh);
  const copied = saveDump('filter', parts.chains, [...parts.jumps, '-A FORWARD -j AMBIT-IPV6-REJECT', ...parts.rules]);
  const deduplicated = onlySection(t, buildIpv6RejectRules(copied), 'filter');
  t.same(deletions(deduplicated), ['-D FORWARD [] -j AMBIT-IPV6-REJECT'], 'a copy goes');
  t.same(deduplicated.rules.filter((rule) => rule.verb === '-I'), [], 'the first one stays');
  assertRemoval(t, onlySection(t, buildIpv6RejectRemoval(installedDump(fresh)), 'filter'), 'AMBIT-IPV6-REJECT', [
    '-D INPUT [] -j AMBIT-IPV6-REJECT',
    '-D FORWARD [] -j AMBIT-IPV6-REJECT',
  ]);
  t.equal(buildIpv6RejectRemoval(''), '', 'nothing to remove');

  const bindings = [
    { ip: '10.1.0.3', iface: 'veth2' },
    { ip: '10.1.0.2', iface: 'veth1', bridge: 'cni0' },
    { ip: '10.1.0.4', iface: 'veth1', bridge: 'cni0' },
  ];
  const ctdir = 'conntrack --ctdir ORIGINAL';
  const byInterface = [
    expected('AMBIT-IPV6-REJECT', ['proto tcp', 'physdev --physdev-in veth1', ctdir], 'REJECT', RESET),
    expected('AMBIT-IPV6-REJECT', ['proto tcp', 'physdev --physdev-out veth1'], 'REJECT', RESET),
    expected('AMBIT-IPV6-REJECT', ['in veth2', 'proto tcp', ctdir], 'REJECT', RESET),
    expected('AMBIT-IPV6-REJECT', ['out veth2', 'proto tcp'], 'REJECT', RESET),
  ];
  sameSet(
    t,
    buildIpv6RejectChainRules(bindings).map((line) => meaning(parseRule(line))),
    [IPV6_TO_POD, IPV6_FROM_POD, ...byInterface],
    'the address rules, and each bound interface once: physdev for a bridge port, -i/-o for a routed veth, what comes from it only in its own direction',
  );
  const withInterfaces = buildIpv6RejectRules('', bindings);
  t.equal(buildIpv6RejectRules(installedDump(withInterfaces), bindings), '', 'in place with its interfaces: nothing to do');
  const bound = onlySection(t, buildIpv6RejectRules(installedDump(fresh), bindings), 'filter');
  t.same(bound.declared, ['AMBIT-IPV6-REJECT'], 'a pod bound since: the chain is declared');
  sameSet(t, chainRules(bound, 'AMBIT-IPV6-REJECT'), [IPV6_TO_POD, IPV6_FROM_POD, ...byInterface], 'and rewritten with its interfaces');
  const unbound = onlySection(t, buildIpv6RejectRules(installedDump(withInterfaces), []), 'filter');
  t.same(unbound.declared, ['AMBIT-IPV6-REJECT'], 'no pod bound any more: the chain is declared');
  sameSet(t, chainRules(unbound, 'AMBIT-IPV6-REJECT'), [IPV6_TO_POD, IPV6_FROM_POD], 'with the address rules only');
  t.same(unbound.rules.filter((rule) => rule.verb !== '-A'), [], 'its jumps left alone');
});

/** An `ip -batch` route line: its verb, type, destination, device and table. */
function routeLine(line: string): Record<string, string> {
  const words = line.split(/\s+/);
  if (words[0] !== 'route') throw new Error(`not a route line: ${line}`);
  const known = words[1] === 'flush' ? ['table'] : ['dev', 'table'];
  for (let index = words[1] === 'flush' ? 2 : 4; index < words.length; index += 2) {
    if (!known.includes(words[index] ?? '')) throw new Error(`unknown route word ${words[index]} in: ${line}`);
  }
  const values = keywordValues(line, known);
  return words[1] === 'flush' ? { verb: 'flush', table: values.table ?? '' } : { verb: words[1] ?? '', type: words[2] ?? '', dst: words[3] ?? '', ...values };
}

/** The lines of an `ip -batch`, each parsed by its kind. */
function ipBatch(lines: string[]): Array<Record<string, unknown>> {
  return lines.map((line) => (line.startsWith('rule ') ? { ...parseIpRuleLine(line) } : routeLine(line)));
}

t.test('buildTransparentRouting and its removal', async (t) => {
  const main = { priority: 32766, src: 'all', table: 'main' };
  sameSet(t, ipBatch(buildTransparentRouting({ rules: [main], routes: [] })), [FWMARK_ADD, LOCAL_ROUTE_ADD], 'a node without them gets the fwmark rule and the local route');
  t.same(buildTransparentRouting({ rules: [main, FWMARK_RULE], routes: [LOCAL_ROUTE] }), [], 'nothing to do when both are in place');
  const deleted = ({ fwmark, fwmask, table }: typeof FWMARK_ADD, priority: number) => ({ verb: 'del', priority, fwmark, fwmask, table });
  sameSet(
    t,
    ipBatch(buildTransparentRouting({ rules: [{ ...FWMARK_RULE, priority: 100 }, FWMARK_RULE, FWMARK_RULE], routes: [LOCAL_ROUTE] })),
    [deleted(FWMARK_ADD, 100), deleted(FWMARK_ADD, 90)],
    'rules into our table that are stale or duplicated go, one copy kept',
  );
  t.same(
    ipBatch(buildTransparentRouting({ rules: [FWMARK_RULE], routes: [LOCAL_ROUTE, { type: 'unicast', dst: '10.1.0.0/16', dev: 'eth0' }] })),
    [{ verb: 'flush', table: '15006' }, LOCAL_ROUTE_ADD],
    'a table holding anything else is flushed, then gets the local route',
  );
  t.same(buildTransparentRoutingRemoval({ rules: [main], routes: [] }), [], 'nothing to remove');
  sameSet(t, ipBatch(buildTransparentRoutingRemoval({ rules: [main, FWMARK_RULE], routes: [LOCAL_ROUTE] })), [deleted(FWMARK_ADD, 90), { verb: 'flush', table: '15006' }], 'the fwmark rule goes, the table is emptied');
});

/** A `bridge -batch` fdb line: its verb, address, device and flags. */
function fdbLine(line: string): { verb: string; mac: string; dev: string; flags: string[] } {
  const words = line.split(/\s+/);
  if (words[0] !== 'fdb' || words[3] !== 'dev') throw new Error(`not an fdb line: ${line}`);
  return { verb: words[1] ?? '', mac: words[2] ?? '', dev: words[4] ?? '', flags: words.slice(5).sort() };
}

/** The commands of a bridge batch that act on Ambit's table, with a check that nothing else is touched. */
function ambitCommands(t: Test, batch: string): NftCommand[] {
  const commands = parseNftBatch(batch);
  t.ok(commands.every((command) => command.family === 'bridge' && command.table === 'ambit'), 'only the bridge table ambit');
  return commands;
}

function rulesOf(commands: NftCommand[], chain: string): NftRule[] {
  return commands.flatMap((command) => (command.object === 'rule' && command.chain === chain ? [command] : []));
}

const TAG = /^ambit:[0-9a-f]{12}$/;
const TRANSPARENT_REPLY = ['meta mark & 0x2000 0x2000', 'meta pkttype other', `ether daddr set ${AMBIT_BRIDGE_MAC}`, 'meta pkttype set host'].sort();
const BRIDGE_SOURCE_CHECK = ['meta l4proto tcp', 'ip saddr @bound4', 'ip saddr . iifname != @ports4', 'counter', 'drop'].sort();
const IPV6_BY_PORT = (direction: 'iifname' | 'oifname') => ['meta protocol ip6', 'meta l4proto tcp', `${direction} @ports6`, 'drop'].sort();

t.test('bridge fdb entries and the bridge table', async (t) => {
  const ours = (bridge: string) => ({ mac: AMBIT_BRIDGE_MAC, ifname: bridge, master: bridge, state: 'permanent' });
  const portEntry = { mac: AMBIT_BRIDGE_MAC, ifname: 'veth1', master: 'cni0' };
  t.same(
    buildBridgeFdbSync(['cni0', 'docker0'], [ours('docker0'), portEntry]).map(fdbLine),
    [{ verb: 'replace', mac: AMBIT_BRIDGE_MAC, dev: 'cni0', flags: ['local', 'self'] }],
    'only the bridge without it gets a local entry on the bridge itself',
  );
  t.same(buildBridgeFdbSync([], []), []);
  t.same(
    buildBridgeFdbRemoval([ours('cni0'), portEntry, ours('cni0')]).map(fdbLine),
    [{ verb: 'del', mac: AMBIT_BRIDGE_MAC, dev: 'cni0', flags: ['self'] }],
    'the entry on the bridge itself, once',
  );

  const table = buildBridgeTable('');
  const commands = ambitCommands(t, table);
  t.same(
    commands.slice(0, 3).map((command) => `${command.verb} ${command.object}`),
    ['add table', 'delete table', 'add table'],
    'replaced in one transaction: declared (so the delete cannot fail), deleted, made again',
  );
  const sets = commands.flatMap((command) => (command.object === 'set' ? [[command.name, command.type]] : []));
  sameSet(t, sets, [['pods6', 'ipv6_addr'], ['bound4', 'ipv4_addr'], ['ports4', 'ipv4_addr . ifname'], ['ports6', 'ifname']], 'the set of enrolled IPv6 addresses and those of the source binding');
  const chains = commands.flatMap((command) => (command.object === 'chain' ? [command] : []));
  sameSet(
    t,
    chains.map(({ name, type, hook, priority, policy }) => ({ name, type, hook, priority, policy })),
    ['prerouting', 'forward', 'input'].map((name) => ({ name, type: 'filter', hook: name, priority: 100, policy: 'accept' })),
    'three filter chains at their hooks, after br_netfilter, accepting by default',
  );
  const lastSet = Math.max(...commands.map((command, index) => (command.object === 'set' ? index : -1)));
  const misplaced = commands.flatMap((command, index) => {
    if (command.object !== 'rule') return [];
    const chainAt = commands.findIndex((other) => other.object === 'chain' && other.name === command.chain);
    return chainAt === -1 || chainAt > index || index < lastSet || !TAG.test(command.comment ?? '') ? [command.chain] : [];
  });
  t.same(misplaced, [], 'every rule comes after its chain and the sets it uses, tagged with its digest');
  t.same(rulesOf(commands, 'prerouting').map(statements), [BRIDGE_SOURCE_CHECK, TRANSPARENT_REPLY], 'prerouting: the source check first, then the transparent reply');
  sameSet(
    t,
    rulesOf(commands, 'forward').map(statements),
    [['meta l4proto tcp', 'ip6 saddr @pods6', 'drop'].sort(), ['meta l4proto tcp', 'ip6 daddr @pods6', 'drop'].sort(), IPV6_BY_PORT('iifname'), IPV6_BY_PORT('oifname')],
    'forward: IPv6 TCP of enrolled pods by address both ways, and by bridge port both ways',
  );
  t.same(rulesOf(commands, 'input').map(statements), [[...IPV6_BY_PORT('iifname'), 'tcp flags & (syn | ack) syn'].sort()], 'input: a bound pod\'s IPv6 SYN to the node');
  t.same(statements(parseNftRule('prerouting', buildBridgeRule())), TRANSPARENT_REPLY, 'buildBridgeRule is the transparent reply');
  t.equal(parseNftRule('prerouting', buildBridgeRule()).comment, rulesOf(commands, 'prerouting')[1]?.comment, 'with the tag the table gives it');
  t.same(commands.filter((command) => command.object === 'element'), [], 'no members without pods');

  const elements = (batch: string) => Object.fromEntries(parseNftBatch(batch).flatMap((command) => (command.object === 'element' ? [[command.name, command.elements]] : [])));
  t.same(elements(buildBridgeTable('', { ipv6Pods: ['fd00::2', 'fd00::3'] })), { pods6: ['fd00::2', 'fd00::3'] }, 'a rewrite keeps the members');
  const bindings = [
    { ip: '10.1.0.2', iface: 'veth1', bridge: 'cni0' },
    { ip: '10.1.0.3', iface: 'veth2' },
  ];
  t.same(
    elements(buildBridgeTable('', { bindings })),
    { bound4: ['10.1.0.2', '10.1.0.3'], ports4: ['10.1.0.2 . "veth1"'], ports6: ['"veth1"'] },
    'every bound address, the routed one too; only bridge ports have a port pair, and their IPv6 TCP is dropped whatever the address',
  );

  const tags = (chain: string) => rulesOf(commands, chain).map((rule) => rule.comment ?? '');
  const [tag, transparentTag] = tags('prerouting');
  const bridgeSets = [
    { name: 'pods6', type: 'ipv6_addr' },
    { name: 'bound4', type: 'ipv4_addr' },
    { name: 'ports4', type: ['ipv4_addr', 'ifname'] },
    { name: 'ports6', type: 'ifname' },
  ];
  const ruleset = (comment: string | undefined, prio = 100, set = true, policy = 'accept') =>
    JSON.stringify({
      nftables: [
        { metainfo: { version: '1.0.6' } },
        { table: { family: 'bridge', name: 'nat', handle: 1 } },
        { table: { family: 'bridge', name: 'ambit', handle: 2 } },
        ...bridgeSets.slice(set ? 0 : 1).map((entry, index) => ({ set: { family: 'bridge', table: 'ambit', ...entry, handle: 10 + index } })),
        { chain: { family: 'bridge', table: 'ambit', name: 'prerouting', type: 'filter', hook: 'prerouting', prio, policy } },
        { chain: { family: 'bridge', table: 'ambit', name: 'forward', type: 'filter', hook: 'forward', prio: 100, policy: 'accept' } },
        ...(comment === undefined ? [] : [comment, transparentTag].map((c, index) => ({ rule: { family: 'bridge', table: 'ambit', chain: 'prerouting', handle: 4 + index, comment: c, expr: [] } }))),
        ...tags('forward').map((forwardTag, index) => ({ rule: { family: 'bridge', table: 'ambit', chain: 'forward', handle: 5 + index, comment: forwardTag, expr: [] } })),
        { chain: { family: 'bridge', table: 'ambit', name: 'input', type: 'filter', hook: 'input', prio: 100, policy: 'accept' } },
        ...tags('input').map((inputTag, index) => ({ rule: { family: 'bridge', table: 'ambit', chain: 'input', handle: 20 + index, comment: inputTag, expr: [] } })),
      ],
    });
  t.equal(buildBridgeTable(ruleset(tag)), '', 'in place: nothing to do');
  t.equal(buildBridgeTable(ruleset(tag, 100, false)), table, 'without its set: rewritten');
  t.equal(buildBridgeTable(ruleset(undefined)), table, 'a flushed chain: rewritten');
  t.equal(buildBridgeTable(ruleset('ambit:000000000000')), table, 'an older rule: rewritten');
  t.equal(buildBridgeTable(ruleset(tag, 0)), table, 'a chain at another priority: rewritten');
  t.equal(buildBridgeTable(ruleset(tag, 100, true, 'drop')), table, 'a chain whose policy someone set to drop: rewritten');
  t.same(
    parseNftBatch(buildBridgeTableRemoval(ruleset(tag))).map((command) => `${command.verb} ${command.object} ${command.family} ${command.table}`),
    ['delete table bridge ambit'],
    'removal deletes the table, sets and chains with it',
  );
  t.equal(buildBridgeTableRemoval(JSON.stringify({ nftables: [{ table: { family: 'bridge', name: 'nat' } }] })), '', 'someone else\'s table stays');
});

t.test('buildIpsetSync', async (t) => {
  t.same(
    setSwap(buildIpsetSync(['10.1.0.4', '10.1.0.5']), 'ambit-pods-v4').swap,
    { type: 'hash:ip', family: 'inet', members: ['10.1.0.4', '10.1.0.5'], swapped: true },
    'the members go into a temporary set of the same kind, which is swapped in atomically and destroyed',
  );
  const empty = setSwap(buildIpsetSync([]), 'ambit-pods-v4').swap;
  t.same([empty.members, empty.swapped], [[], true], 'an empty list empties the set');
});

t.test('source binding: the raw chain, its sets, and which interface an address is bound to', async (t) => {
  const fresh = buildSourceCheckRules('');
  assertFreshChain(t, onlySection(t, fresh, 'raw'), 'AMBIT-SOURCE-CHECK', ['PREROUTING'], [SOURCE_CHECK]);
  const inPlace = installedDump(fresh);
  t.equal(buildSourceCheckRules(inPlace), '', 'an in-place dump yields an empty batch');
  assertRemoval(t, onlySection(t, buildSourceCheckRemoval(inPlace), 'raw'), 'AMBIT-SOURCE-CHECK', ['-D PREROUTING [] -j AMBIT-SOURCE-CHECK']);

  const sync = buildSourceBindingSync([
    { ip: '10.1.0.2', iface: 'veth1', bridge: 'cni0' },
    { ip: '10.1.0.3', iface: 'veth2' },
  ]);
  const ports = setSwap(sync, 'ambit-pod-ports-v4');
  const bound = setSwap(sync, 'ambit-pods-bound-v4');
  t.same(ports.swap, { type: 'hash:net,iface', family: 'inet', members: ['10.1.0.2,cni0', '10.1.0.3,veth2'], swapped: true }, 'a bridge port\'s pair names its bridge, as iptables sees it');
  t.same(bound.swap, { type: 'hash:ip', family: 'inet', members: ['10.1.0.2', '10.1.0.3'], swapped: true }, 'every bound address');
  t.ok(ports.swapAt < bound.swapAt, 'an address is never bound before its pair exists');

  const links = [{ ifname: 'lo' }, { ifname: 'cni0' }, { ifname: 'veth1', master: 'cni0' }, { ifname: 'veth2' }, { ifname: 'veth3' }];
  t.same(
    resolveSourceBindings(
      [
        { ip: '10.1.0.3', hostInterfaces: ['veth2'] },
        { ip: '10.1.0.2', hostInterfaces: ['cni0', 'veth1'] },
        { ip: '10.1.0.4', hostInterfaces: ['vethgone'] },
        { ip: '10.1.0.5', hostInterfaces: ['veth2', 'veth3'] },
        { ip: '10.1.0.6', hostInterfaces: ['cni0'] },
      ],
      links,
      ['cni0'],
    ),
    {
      bindings: [
        { ip: '10.1.0.2', iface: 'veth1', bridge: 'cni0' },
        { ip: '10.1.0.3', iface: 'veth2' },
      ],
      unresolved: ['10.1.0.4', '10.1.0.5', '10.1.0.6'],
    },
    'the bridge is not the pod\'s interface; a missing link, two candidates or only the bridge bind nothing',
  );
});

t.test('backend choice', async (t) => {
  t.equal(countRules(saveDump('nat', ['X'], ['-A PREROUTING -j X', '-A X -j ACCEPT'])), 2);
  t.equal(chooseIptablesBackend({ legacy: 3, nft: 2 }), 'legacy', 'legacy with more rules');
  t.equal(chooseIptablesBackend({ legacy: 2, nft: 2 }), 'nft', 'nft on a tie');
  t.equal(chooseIptablesBackend({ legacy: 0, nft: 0 }), 'nft', 'nft on an empty node');
  t.equal(chooseIptablesBackend({ legacy: 5 }), 'legacy', 'the only readable one');
  t.equal(chooseIptablesBackend({ nft: 0 }), 'nft', 'the only readable one');
  t.equal(chooseIptablesBackend({}), undefined);

  const savedPath = process.env.PATH;
  t.teardown(() => {
    process.env.PATH = savedPath;
  });
  process.env.PATH = '/nonexistent-ambit-test';
  await t.rejects(detectIptablesBackend(), { code: 'IPTABLES_MISSING', message: /apt-get install iptables/ }, 'no iptables at all names the package');
  process.env.PATH = savedPath;
});

t.test('options are validated', async (t) => {
  const invalid = { name: 'AmbitError', code: 'RULES_INVALID_OPTIONS' };
  t.throws(() => new RedirectRules({ nodeIp: 'node-1' }), invalid, 'node IP must be an address');
  t.throws(() => new RedirectRules({ nodeIp: NODE_IP, outboundPort: 70000 }), invalid, 'port range');
  t.throws(() => new RedirectRules({ nodeIp: NODE_IP, outboundPort: 15006 }), invalid, 'ports must differ');
  t.throws(() => new RedirectRules({ nodeIp: NODE_IP, backend: 'iptables' as IptablesBackend }), invalid, 'backend name');
  t.equal(new RedirectRules({ nodeIp: NODE_IP, backend: 'legacy' }).backend, 'legacy', 'a forced backend is known at once');
  t.equal(new RedirectRules({ nodeIp: NODE_IP }).backend, undefined, "'auto' is unknown until detected");
});
// ---- root: real namespaces ------------------------------------------------------------------------------------

// Ambit's rules as iptables-save prints them back from the kernel: what the root tests find in a namespace.
const JUMP = '-A PREROUTING -j AMBIT-PREROUTING';
const OUTBOUND_RULE = `-A AMBIT-PREROUTING -p tcp -m set --match-set ambit-pods-v4 src -j DNAT --to-destination ${NODE_IP}:15001`;
const INBOUND_RULE = `-A AMBIT-PREROUTING -p tcp -m set --match-set ambit-pods-v4 dst -j DNAT --to-destination ${NODE_IP}:15006`;
const MANGLE_JUMP = '-A PREROUTING -j AMBIT-MANGLE-PREROUTING';
const MARK_RULE =
  '-A AMBIT-MANGLE-PREROUTING -p tcp -m set --match-set ambit-pods-v4 src -m socket --transparent --nowildcard -j MARK --set-xmark 0x2000/0x2000';
const CONNMARK_RESTORE_RULE = '-A AMBIT-MANGLE-PREROUTING -p tcp -m connmark --mark 0x2000/0x2000 -j MARK --set-xmark 0x2000/0x2000';
const MANGLE_OUTPUT_JUMP = '-A OUTPUT -j AMBIT-MANGLE-OUTPUT';
const CONNMARK_SET_RULE =
  '-A AMBIT-MANGLE-OUTPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m set --match-set ambit-pods-v4 src -j CONNMARK --set-xmark 0x2000/0x2000';
const LOCAL_REPLY_RULE = '-A AMBIT-MANGLE-OUTPUT -p tcp -m connmark --mark 0x2000/0x2000 -m conntrack --ctdir REPLY -j MARK --set-xmark 0x2000/0x2000';
/** Ambit's mangle rules as iptables-save prints them: the builtin chains' jumps, then its own chains (in either order). */
const MANGLE_RULES = [MANGLE_JUMP, MANGLE_OUTPUT_JUMP, MARK_RULE, CONNMARK_RESTORE_RULE, CONNMARK_SET_RULE, LOCAL_REPLY_RULE];
const IPV6_INPUT_JUMP = '-A INPUT -j AMBIT-IPV6-REJECT';
const IPV6_FORWARD_JUMP = '-A FORWARD -j AMBIT-IPV6-REJECT';
const IPV6_REJECT_RULES = [
  '-A AMBIT-IPV6-REJECT -p tcp -m set --match-set ambit-pods-v6 dst -j REJECT --reject-with tcp-reset',
  '-A AMBIT-IPV6-REJECT -p tcp -m set --match-set ambit-pods-v6 src -m conntrack --ctdir ORIGINAL -j REJECT --reject-with tcp-reset',
];
const LOCAL_DNAT_JUMP = '-A OUTPUT -j AMBIT-LOCAL-DNAT';
const LOCAL_DNAT_RULE =
  '-A AMBIT-LOCAL-DNAT -p tcp -m connmark --mark 0x2000/0x2000 -m conntrack --ctstate DNAT --ctdir ORIGINAL -m set --match-set ambit-pods-v4 dst -j REJECT --reject-with tcp-reset';

function inNetns(netns: string, argv: string[], options: { input?: string } = {}) {
  return execa('ip', ['netns', 'exec', netns, ...argv], { input: options.input ?? '' });
}

/** A fresh network namespace, deleted when the test ends however it ends. */
async function createNetns(t: Test, role: string): Promise<string> {
  const name = `ambit-rr-${role}-${randomBytes(3).toString('hex')}`;
  await execa('ip', ['netns', 'add', name]);
  // also when the run is interrupted (tap's timeout sends SIGTERM) before the teardown runs
  const onExit = { teardownSync: () => void spawnSync('ip', ['netns', 'del', name]) };
  registerForExit(onExit);
  t.teardown(async () => {
    await execa('ip', ['netns', 'del', name], { reject: false });
    releaseFromExit(onExit);
  });
  await inNetns(name, ['ip', 'link', 'set', 'lo', 'up']);
  return name;
}

/** A node namespace: the node IP on its own interface, as on a real node. */
async function createNodeNetns(t: Test): Promise<string> {
  const node = await createNetns(t, 'node');
  const dummy = await execa('ip', ['netns', 'exec', node, 'ip', 'link', 'add', 'ambit-node', 'type', 'dummy'], { reject: false });
  // kernels built without the dummy driver: a bridge without ports holds a local address just as well
  if (dummy.failed) await inNetns(node, ['ip', 'link', 'add', 'ambit-node', 'type', 'bridge']);
  await inNetns(node, ['ip', 'addr', 'add', `${NODE_IP}/24`, 'dev', 'ambit-node']);
  await inNetns(node, ['ip', 'link', 'set', 'ambit-node', 'up']);
  return node;
}

async function natTable(netns: string, backend: IptablesBackend): Promise<string> {
  return (await inNetns(netns, [`iptables-${backend}-save`, '-t', 'nat'])).stdout;
}

function ruleLines(dump: string): string[] {
  return dump.split('\n').filter((line) => line.startsWith('-A '));
}

async function setNames(netns: string): Promise<string[]> {
  return (await inNetns(netns, ['ipset', 'list', '-n'])).stdout.split('\n').filter((line) => line !== '');
}

async function setMembers(netns: string, set = 'ambit-pods-v4'): Promise<string[]> {
  const listing = (await inNetns(netns, ['ipset', 'list', set])).stdout;
  const members = listing.split('Members:\n')[1] ?? '';
  return members.split('\n').filter((line) => line !== '').sort();
}

async function bridgeV6Set(netns: string): Promise<string> {
  return (await inNetns(netns, ['nft', 'list', 'set', 'bridge', 'ambit', 'pods6'])).stdout;
}

async function rawTable(netns: string, backend: IptablesBackend): Promise<string> {
  return (await inNetns(netns, [`iptables-${backend}-save`, '-t', 'raw'])).stdout;
}

async function ipv6FilterTable(netns: string, backend: IptablesBackend): Promise<string> {
  return (await inNetns(netns, [`ip6tables-${backend}-save`, '-t', 'filter'])).stdout;
}

async function filterTable(netns: string, backend: IptablesBackend): Promise<string> {
  return (await inNetns(netns, [`iptables-${backend}-save`, '-t', 'filter'])).stdout;
}

async function mangleTable(netns: string, backend: IptablesBackend): Promise<string> {
  return (await inNetns(netns, [`iptables-${backend}-save`, '-t', 'mangle'])).stdout;
}

async function ipRules(netns: string): Promise<Array<Record<string, unknown>>> {
  return JSON.parse((await inNetns(netns, ['ip', '-j', 'rule', 'show'])).stdout) as Array<Record<string, unknown>>;
}

async function tableRoutes(netns: string): Promise<Array<Record<string, unknown>>> {
  const result = await execa('ip', ['-n', netns, '-j', 'route', 'show', 'table', String(TRANSPARENT_ROUTE_TABLE)], { reject: false });
  // a table that never held a route does not exist: the same as an empty one
  return result.exitCode === 0 && result.stdout.trim() !== '' ? (JSON.parse(result.stdout) as Array<Record<string, unknown>>) : [];
}

async function bridgeTables(netns: string): Promise<string> {
  return (await inNetns(netns, ['nft', 'list', 'tables', 'bridge'])).stdout;
}

async function ambitFdbEntries(netns: string): Promise<string[]> {
  const entries = JSON.parse((await inNetns(netns, ['bridge', '-j', 'fdb', 'show'])).stdout) as Array<{ mac: string; ifname: string; master?: string }>;
  // only the test's bridges: on a kernel without the dummy driver the node's own interface is a bridge too
  return entries.filter((entry) => entry.mac === AMBIT_BRIDGE_MAC && entry.ifname.startsWith('ambit-br')).map((entry) => `${entry.ifname}/${entry.master ?? ''}`);
}

/** Everything but the ipset, the nat chain: what routes replies to transparent connections. */
async function assertTransparentRouting(t: Test, node: string, backend: IptablesBackend, present: boolean): Promise<void> {
  // legacy lists its own chains by name, nft in the order they were made
  const mangle = ruleLines(await mangleTable(node, backend)).filter((rule) => rule.includes('AMBIT')).sort();
  const fwmarkRules = (await ipRules(node)).filter((rule) => rule.table === String(TRANSPARENT_ROUTE_TABLE));
  if (present) {
    t.same(mangle, [...MANGLE_RULES].sort(), 'the mangle jumps and mark rules');
    t.same(ruleLines(await mangleTable(node, backend)).filter((rule) => rule.startsWith('-A AMBIT-MANGLE-OUTPUT ')), [CONNMARK_SET_RULE, LOCAL_REPLY_RULE], 'in order');
    t.same(fwmarkRules, [FWMARK_RULE], 'one fwmark rule');
    t.same(await tableRoutes(node), [LOCAL_ROUTE], 'the local route');
    t.match(await bridgeTables(node), 'table bridge ambit', 'the bridge table');
    t.same(ruleLines(await filterTable(node, backend)).filter((rule) => rule.includes('AMBIT')), [LOCAL_DNAT_JUMP, LOCAL_DNAT_RULE], 'the reset of a passthrough NATed to a local pod');
  } else {
    t.same(mangle, [], 'no mangle rules');
    t.same(ruleLines(await filterTable(node, backend)).filter((rule) => rule.includes('AMBIT')), [], 'no filter rules');
    t.same(fwmarkRules, [], 'no fwmark rule');
    t.same(await tableRoutes(node), [], 'no route');
    t.notMatch(await bridgeTables(node), 'ambit', 'no bridge table');
  }
}

for (const backend of ['legacy', 'nft'] as const) {
  t.test(`install, sync and remove with the ${backend} backend`, { skip: rootSkip }, async (t) => {
    const node = await createNodeNetns(t);
    const other = backend === 'nft' ? 'legacy' : 'nft';
    const rules = new RedirectRules({ nodeIp: NODE_IP, backend, netns: node });

    await rules.install();
    let rulesNow = ruleLines(await natTable(node, backend));
    t.same(rulesNow.filter((rule) => rule === JUMP).length, 1, 'one jump');
    t.equal(rulesNow.find((rule) => rule.startsWith('-A PREROUTING ')), JUMP, 'the jump is first in PREROUTING');
    t.same(rulesNow.filter((rule) => rule.startsWith('-A AMBIT-PREROUTING ')), [OUTBOUND_RULE, INBOUND_RULE], 'both rules, in order');
    t.notMatch(await natTable(node, other), /AMBIT/, `nothing in the ${other} backend`);
    t.ok((await setNames(node)).includes('ambit-pods-v4'), 'the ipset exists');
    t.ok((await setNames(node)).includes('ambit-pods-v6'), 'and the IPv6 one');
    t.same(
      ruleLines(await ipv6FilterTable(node, backend)).filter((rule) => rule.includes('AMBIT')),
      [IPV6_INPUT_JUMP, IPV6_FORWARD_JUMP, ...IPV6_REJECT_RULES],
      'the IPv6 reject chain, jumped to from INPUT and FORWARD',
    );
    t.notMatch(await ipv6FilterTable(node, other), /AMBIT/, `no IPv6 rules in the ${other} backend`);
    await assertTransparentRouting(t, node, backend, true);
    t.notMatch(await mangleTable(node, other), /AMBIT/, `no mangle rules in the ${other} backend`);
    t.same(
      ruleLines(await rawTable(node, backend)),
      ['-A PREROUTING -j AMBIT-SOURCE-CHECK', ...buildSourceCheckChainRules()],
      'the source check, jumped to first from raw PREROUTING',
    );
    t.ok((await setNames(node)).includes('ambit-pod-ports-v4'), 'with its sets');

    await rules.install();
    rulesNow = ruleLines(await natTable(node, backend));
    t.equal(rulesNow.filter((rule) => rule === JUMP).length, 1, 'still one jump after a second install');
    t.equal(rulesNow.filter((rule) => rule.startsWith('-A AMBIT-PREROUTING ')).length, 2, 'still two rules');
    await assertTransparentRouting(t, node, backend, true);

    t.equal(await rules.syncPods(['10.99.1.2', '10.99.1.3']), true, 'first sync changes the set');
    t.same(await setMembers(node), ['10.99.1.2', '10.99.1.3']);
    t.equal(await rules.syncPods(['10.99.1.3', '10.99.1.2', '10.99.1.3']), false, 'same pods in another order: nothing to do');
    t.equal(await rules.syncPods(['10.99.1.3', '10.99.1.4']), true);
    t.same(await setMembers(node), ['10.99.1.3', '10.99.1.4'], 'the set holds exactly the new list');
    t.notOk((await setNames(node)).includes('ambit-pods-v4-tmp'), 'no temporary set left behind');
    t.equal(await rules.syncPods(['10.99.1.3', '10.99.1.4', 'not-an-ip', NODE_IP]), false, 'bad addresses and the node IP are left out');
    t.same(await setMembers(node), ['10.99.1.3', '10.99.1.4'], 'and the set is untouched');
    t.equal(await rules.syncPods(['10.99.1.5', 'fd00::5', 'not-an-ip']), true, 'a bad address does not block the others');
    t.same(await setMembers(node), ['10.99.1.5']);
    t.same(await setMembers(node, 'ambit-pods-v6'), ['fd00::5'], 'an IPv6 address goes to the IPv6 set');
    t.match(await bridgeV6Set(node), /elements = \{ fd00::5 \}/, 'and to the bridge table\'s set');
    t.equal(await rules.syncPods([]), true);
    t.same(await setMembers(node), [], 'an empty list empties the set');
    t.same(await setMembers(node, 'ambit-pods-v6'), [], 'both sets');
    t.notMatch(await bridgeV6Set(node), 'elements', 'all three');

    // the host ends of two pods: a bridge port and a routed interface (their peers stay in the node namespace)
    await inNetns(node, ['ip', 'link', 'add', 'br-rr', 'type', 'bridge']);
    await inNetns(node, ['ip', 'link', 'add', 'vport', 'type', 'veth', 'peer', 'name', 'vport-peer']);
    await inNetns(node, ['ip', 'link', 'set', 'vport', 'master', 'br-rr']);
    await inNetns(node, ['ip', 'link', 'add', 'vrouted', 'type', 'veth', 'peer', 'name', 'vrouted-peer']);
    const interfaces = [
      { ip: '10.99.1.6', hostInterfaces: ['br-rr', 'vport'] },
      { ip: '10.99.1.7', hostInterfaces: ['vrouted'] },
      { ip: '10.99.1.8', hostInterfaces: ['vrouted'] },
    ];
    t.equal(await rules.syncPods(['10.99.1.6', '10.99.1.7'], { interfaces }), true);
    t.same(await setMembers(node, 'ambit-pods-bound-v4'), ['10.99.1.6', '10.99.1.7'], 'enrolled addresses with a known interface are bound; 10.99.1.8 is not enrolled');
    t.same(await setMembers(node, 'ambit-pod-ports-v4'), ['10.99.1.6,br-rr', '10.99.1.7,vrouted'], 'a bridge port as iptables sees it: its bridge');
    const bridgeSets = (await inNetns(node, ['nft', 'list', 'table', 'bridge', 'ambit'])).stdout;
    t.match(bridgeSets, /set bound4 \{[^}]*elements = \{ 10\.99\.1\.6, 10\.99\.1\.7 \}/, 'the bridge table binds both');
    t.match(bridgeSets, /set ports4 \{[^}]*elements = \{ 10\.99\.1\.6 \. "vport" \}/, 'and has the bridge port of the bridged one');
    t.equal(await rules.syncPods(['10.99.1.7', '10.99.1.6'], { interfaces: [...interfaces].reverse() }), false, 'the same in another order: nothing to do');
    t.equal(await rules.syncPods(['10.99.1.6', '10.99.1.7']), true, 'no interfaces known any more: unbound');
    t.same(await setMembers(node, 'ambit-pods-bound-v4'), []);

    await rules.remove();
    t.notMatch(await natTable(node, backend), /AMBIT/, 'no chain, no jump');
    t.notMatch(await rawTable(node, backend), /AMBIT/, 'no source check');
    t.notMatch(await ipv6FilterTable(node, backend), /AMBIT/, 'no IPv6 chain, no jumps');
    t.same(await setNames(node), [], 'no ipset');
    await assertTransparentRouting(t, node, backend, false);
    await t.resolves(rules.remove(), 'removing again is fine');
    await t.resolves(removeRedirectRules({ netns: node }), 'so is the standalone cleanup');

    await rules.install();
    await removeRedirectRules({ netns: node });
    t.notMatch(await natTable(node, backend), /AMBIT/, 'the standalone cleanup removes an install too');
    await assertTransparentRouting(t, node, backend, false);
    t.same(await setNames(node), []);
  });
}

t.test('addOnly: a restarted agent keeps the members it finds, adds, and removes nothing until told to', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  t.teardown(() => removeRedirectRules({ netns: node }));
  const before = new RedirectRules({ nodeIp: NODE_IP, netns: node });
  await before.install();
  await before.syncPods(['10.99.1.2', '10.99.1.3']);

  // A new instance, as after a restart: it has written nothing yet, so only the kernel knows the members.
  const after = new RedirectRules({ nodeIp: NODE_IP, netns: node });
  await after.install();
  t.equal(await after.syncPods(['10.99.1.4'], { addOnly: true }), true, 'a new member changes the set');
  t.same(await setMembers(node), ['10.99.1.2', '10.99.1.3', '10.99.1.4'], 'the members found in the kernel stay');
  t.equal(await after.syncPods(['10.99.1.4'], { addOnly: true }), false, 'nothing new: nothing to do');
  await inNetns(node, ['ipset', 'flush', 'ambit-pods-v4']);
  t.equal(await after.syncPods([], { addOnly: true, force: true }), true, 'a forced repair');
  t.same(await setMembers(node), ['10.99.1.2', '10.99.1.3', '10.99.1.4'], 'writes back every member it kept, not what someone else left');
  t.equal(await after.syncPods(['10.99.1.4']), true, 'without addOnly');
  t.same(await setMembers(node), ['10.99.1.4'], 'the set holds exactly the list again');
});

/** Adds a conntrack entry, as a connection would have made it: TCP established, or a UDP flow. */
async function track(node: string, protocol: 'tcp' | 'udp', src: string, dst: string, dport: number): Promise<void> {
  const state = protocol === 'tcp' ? ['--state', 'ESTABLISHED'] : [];
  await inNetns(node, ['conntrack', '-I', '-p', protocol, '-s', src, '-d', dst, '--sport', '40000', '--dport', String(dport), ...state, '-t', '600']);
}

/** The node's TCP and UDP conntrack entries as `protocol src>dst:port`, sorted (the node's own IGMP aside). */
async function trackedFlows(node: string): Promise<string[]> {
  const listing = (await inNetns(node, ['conntrack', '-L'])).stdout;
  return listing
    .split('\n')
    .filter((line) => line.startsWith('tcp ') || line.startsWith('udp '))
    .map((line) => {
      const [protocol] = line.split(/\s+/);
      const field = (name: string) => new RegExp(`${name}=(\\S+)`).exec(line)?.[1];
      return `${protocol} ${field('src')}>${field('dst')}:${field('dport')}`;
    })
    .sort();
}

t.test('a pod that joins the capture set has its tracked TCP flows ended; one CNI ADD just created, or one that leaves, has not', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  t.teardown(() => removeRedirectRules({ netns: node }));
  const rules = new RedirectRules({ nodeIp: NODE_IP, netns: node });
  await rules.install();
  await rules.syncPods(['10.99.1.2']);
  // 10.99.1.3 joins (relabelled), 10.99.1.4 is new from CNI ADD, 10.99.1.2 was captured all along, 10.99.9.9 is outside.
  await track(node, 'tcp', '10.99.1.3', '10.99.9.9', 80);
  await track(node, 'tcp', '10.99.9.9', '10.99.1.3', 8080);
  await track(node, 'udp', '10.99.1.3', '10.99.9.9', 53);
  await track(node, 'tcp', '10.99.1.4', '10.99.9.9', 80);
  await track(node, 'tcp', '10.99.1.2', '10.99.9.9', 80);
  await track(node, 'tcp', '10.99.9.9', '10.99.9.8', 80);
  t.equal(await rules.syncPods(['10.99.1.2', '10.99.1.3', '10.99.1.4'], { justCreated: ['10.99.1.4'] }), true);
  t.same(
    await trackedFlows(node),
    ['tcp 10.99.1.2>10.99.9.9:80', 'tcp 10.99.1.4>10.99.9.9:80', 'tcp 10.99.9.9>10.99.9.8:80', 'udp 10.99.1.3>10.99.9.9:53'],
    "the joining pod's TCP flows are gone, both ways; its UDP, the new pod's, the captured pod's and others' stay",
  );

  await track(node, 'tcp', '10.99.1.3', '10.99.9.9', 81);
  t.equal(await rules.syncPods(['10.99.1.2', '10.99.1.4']), true, '10.99.1.3 leaves');
  t.ok((await trackedFlows(node)).includes('tcp 10.99.1.3>10.99.9.9:81'), 'a pod that leaves keeps its entries: the agent closes what it carried through them');

  // A restarted agent finds 10.99.1.2 and 10.99.1.4 in the kernel's set: they joined before it, not now.
  const after = new RedirectRules({ nodeIp: NODE_IP, netns: node });
  await after.install();
  await track(node, 'tcp', '10.99.1.5', '10.99.9.9', 80);
  t.equal(await after.syncPods(['10.99.1.2', '10.99.1.4', '10.99.1.5']), true);
  t.same(
    (await trackedFlows(node)).filter((flow) => flow.startsWith('tcp 10.99.1.')),
    ['tcp 10.99.1.2>10.99.9.9:80', 'tcp 10.99.1.3>10.99.9.9:81', 'tcp 10.99.1.4>10.99.9.9:80'],
    'after a restart only the pod new to the set loses its flows',
  );

  // Someone empties the set: new connections of its pods pass uncaptured until the repair, which ends them.
  await inNetns(node, ['ipset', 'flush', 'ambit-pods-v4']);
  await track(node, 'tcp', '10.99.1.2', '10.99.9.9', 82);
  t.equal(await after.syncPods(['10.99.1.2', '10.99.1.4', '10.99.1.5'], { force: true }), true, 'the repair');
  t.notOk((await trackedFlows(node)).some((flow) => flow.startsWith('tcp 10.99.1.2>')), 'ends the flows of the pods it puts back');
});

t.test('install repairs the routing of transparent replies after an outside flush', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  const rules = new RedirectRules({ nodeIp: NODE_IP, backend: 'nft', netns: node });
  await rules.install();
  await inNetns(node, ['iptables-nft', '-t', 'mangle', '-F', 'AMBIT-MANGLE-PREROUTING']);
  await inNetns(node, ['iptables-nft', '-t', 'mangle', '-F', 'AMBIT-MANGLE-OUTPUT']);
  await inNetns(node, ['ip', 'rule', 'del', 'priority', '90']);
  await inNetns(node, ['ip', 'route', 'flush', 'table', String(TRANSPARENT_ROUTE_TABLE)]);
  await inNetns(node, ['nft', 'delete', 'table', 'bridge', 'ambit']);
  t.same(ruleLines(await mangleTable(node, 'nft')), [MANGLE_JUMP, MANGLE_OUTPUT_JUMP], 'flushed: only the jumps are left');
  await rules.install();
  await assertTransparentRouting(t, node, 'nft', true);

  // a CNI that puts its own mangle jump first (Calico accepts established traffic there) and a stray rule into our table
  await inNetns(node, ['iptables-nft-restore', '--noflush'], { input: '*mangle\n:cali-PREROUTING - [0:0]\n-I PREROUTING 1 -j cali-PREROUTING\nCOMMIT\n' });
  await inNetns(node, ['ip', 'rule', 'add', 'priority', '95', 'lookup', String(TRANSPARENT_ROUTE_TABLE)]);
  await rules.install();
  const prerouting = ruleLines(await mangleTable(node, 'nft')).filter((rule) => rule.startsWith('-A PREROUTING '));
  t.same(prerouting, [MANGLE_JUMP, '-A PREROUTING -j cali-PREROUTING'], 'ours first again, the CNI kept');
  await assertTransparentRouting(t, node, 'nft', true);
  await rules.remove();
  t.same(ruleLines(await mangleTable(node, 'nft')), ['-A PREROUTING -j cali-PREROUTING'], 'removal leaves foreign rules alone');
});

/**
 * Makes PATH a folder holding only `tools` (links to the real ones) until `restore()` or the test's end: a node image
 * that lacks the others.
 */
async function onlyTheseTools(t: Test, tools: readonly string[]): Promise<{ restore: () => void }> {
  const fakeBin = await mkdtemp(path.join(tmpdir(), 'ambit-rr-bin-'));
  const savedPath = process.env.PATH;
  const restore = () => {
    process.env.PATH = savedPath;
  };
  t.teardown(async () => {
    restore();
    await rm(fakeBin, { recursive: true, force: true });
  });
  for (const tool of tools) {
    const found = await execa('sh', ['-c', `command -v ${tool}`]);
    await symlink(found.stdout.trim(), path.join(fakeBin, tool));
  }
  process.env.PATH = fakeBin;
  return { restore };
}

t.test('install refuses without nft, naming the package', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  const tools = await onlyTheseTools(t, ['ip', 'ipset', 'bridge', 'iptables-nft-save', 'iptables-nft-restore', 'ip6tables-nft-save', 'ip6tables-nft-restore']);
  const rules = new RedirectRules({ nodeIp: NODE_IP, backend: 'nft', netns: node });
  await t.rejects(rules.install(), { code: 'NFT_MISSING', message: /apt-get install nftables/ });
  tools.restore();
  t.same(await setNames(node), [], 'nothing was installed');
});

t.test('install refuses without conntrack, naming the package', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  const tools = await onlyTheseTools(t, ['ip', 'ipset', 'bridge', 'nft', 'iptables-nft-save', 'iptables-nft-restore', 'ip6tables-nft-save', 'ip6tables-nft-restore']);
  const rules = new RedirectRules({ nodeIp: NODE_IP, backend: 'nft', netns: node });
  await t.rejects(rules.install(), { code: 'CONNTRACK_MISSING', message: /end the connections a pod opened before it joined the mesh.*apt-get install conntrack/ });
  tools.restore();
  t.same(await setNames(node), [], 'nothing was installed');
});

t.test('install refuses without ip6tables: IPv6 could not be refused', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  const tools = await onlyTheseTools(t, ['ip', 'ipset', 'bridge', 'nft', 'conntrack', 'iptables-nft-save', 'iptables-nft-restore']);
  const rules = new RedirectRules({ nodeIp: NODE_IP, backend: 'nft', netns: node });
  await t.rejects(rules.install(), { code: 'IPTABLES_MISSING', message: /ip6tables-nft-save.*apt-get install iptables/ });
  tools.restore();
  t.same(await setNames(node), [], 'nothing was installed');
  t.notMatch(await natTable(node, 'nft'), /AMBIT/, 'not even the IPv4 capture');
});

/** A bridge in `node` with a gateway address, as the bridge CNI makes it; bridged IPv4 crosses iptables. */
async function addBridge(node: string, name: string, gateway: string): Promise<void> {
  await inNetns(node, ['ip', 'link', 'add', name, 'type', 'bridge']);
  await inNetns(node, ['ip', 'addr', 'add', `${gateway}/24`, 'dev', name]);
  await inNetns(node, ['ip', 'link', 'set', name, 'up']);
}

async function attachToBridge(node: string, pod: string, bridge: string, hostSide: string, address: string, gateway: string): Promise<void> {
  await inNetns(node, ['ip', 'link', 'add', hostSide, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod]);
  await inNetns(node, ['ip', 'link', 'set', hostSide, 'master', bridge, 'up']);
  await inNetns(pod, ['ip', 'addr', 'add', `${address}/24`, 'dev', 'eth0']);
  await inNetns(pod, ['ip', 'link', 'set', 'eth0', 'up']);
  await inNetns(pod, ['ip', 'route', 'add', 'default', 'via', gateway]);
}

t.test('every bridge gets the fdb entry, also one created after install; removal takes them all', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  await addBridge(node, 'ambit-br0', '10.99.5.1');
  const rules = new RedirectRules({ nodeIp: NODE_IP, netns: node });
  await rules.install();
  t.same(await ambitFdbEntries(node), ['ambit-br0/ambit-br0']);
  await addBridge(node, 'ambit-br1', '10.99.6.1');
  t.equal(await rules.syncPods(['10.99.6.2']), true);
  t.same((await ambitFdbEntries(node)).sort(), ['ambit-br0/ambit-br0', 'ambit-br1/ambit-br1'], 'a pod change checks the bridges');
  await inNetns(node, ['bridge', 'fdb', 'del', AMBIT_BRIDGE_MAC, 'dev', 'ambit-br0', 'self']);
  await rules.install();
  t.same((await ambitFdbEntries(node)).sort(), ['ambit-br0/ambit-br0', 'ambit-br1/ambit-br1'], 'install repairs a removed one');
  await rules.remove();
  t.same(await ambitFdbEntries(node), [], 'all gone');
});


t.test('install repairs drift and keeps foreign rules', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  const rules = new RedirectRules({ nodeIp: NODE_IP, backend: 'nft', netns: node });
  await rules.install();
  // what kube-proxy does on restart: its own jump inserted above ours; plus a stray copy of ours
  await inNetns(node, ['iptables-nft-restore', '--noflush'], {
    input: '*nat\n:KUBE-SERVICES - [0:0]\n-I PREROUTING 1 -j KUBE-SERVICES\n-A PREROUTING -j AMBIT-PREROUTING\nCOMMIT\n',
  });
  await rules.install();
  const prerouting = ruleLines(await natTable(node, 'nft')).filter((rule) => rule.startsWith('-A PREROUTING '));
  t.same(prerouting, [JUMP, '-A PREROUTING -j KUBE-SERVICES'], 'ours first and once, kube-proxy kept');
  await rules.remove();
  t.same(ruleLines(await natTable(node, 'nft')), ['-A PREROUTING -j KUBE-SERVICES'], 'removal leaves foreign rules alone');
});

t.test('auto-detection follows the backend the node uses', { skip: rootSkip }, async (t) => {
  const emptyNode = await createNodeNetns(t);
  t.equal(await detectIptablesBackend({ netns: emptyNode }), 'nft', 'an empty node: nft');
  const nftRules = new RedirectRules({ nodeIp: NODE_IP, netns: emptyNode });
  await nftRules.install();
  t.equal(nftRules.backend, 'nft');
  await removeRedirectRules({ netns: emptyNode });
  t.notMatch(await natTable(emptyNode, 'nft'), /AMBIT/, 'the auto cleanup removes nft rules');
  const legacyTables = (await inNetns(emptyNode, ['cat', '/proc/net/ip_tables_names'])).stdout;
  t.equal(legacyTables, '', 'detection and cleanup created no legacy table on an nft node');

  const legacyNode = await createNodeNetns(t);
  await inNetns(legacyNode, ['iptables-legacy-restore', '--noflush'], {
    input: '*filter\n-A INPUT -p tcp --dport 22 -j ACCEPT\n-A FORWARD -j ACCEPT\nCOMMIT\n',
  });
  const rules = new RedirectRules({ nodeIp: NODE_IP, netns: legacyNode });
  await rules.install();
  t.equal(rules.backend, 'legacy', 'a node with legacy rules: legacy');
  t.match(await natTable(legacyNode, 'legacy'), /-A PREROUTING -j AMBIT-PREROUTING/, 'rules went to legacy');
  t.notMatch(await natTable(legacyNode, 'nft'), /AMBIT/, 'and not to nft');

  // an agent that crashed on legacy is cleaned up by a tool that never detected anything
  await removeRedirectRules({ netns: legacyNode });
  t.notMatch(await natTable(legacyNode, 'legacy'), /AMBIT/, 'the auto cleanup sweeps legacy too');
  t.same(await setNames(legacyNode), []);
});

t.test('a failed first install leaves nothing behind', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  const fakeBin = await mkdtemp(path.join(tmpdir(), 'ambit-rr-bin-'));
  const savedPath = process.env.PATH;
  t.teardown(async () => {
    process.env.PATH = savedPath;
    await rm(fakeBin, { recursive: true, force: true });
  });
  const fakeRestore = path.join(fakeBin, 'iptables-nft-restore');
  await writeFile(fakeRestore, '#!/bin/sh\necho "iptables-nft-restore: line 3 failed: simulated" >&2\nexit 1\n');
  await chmod(fakeRestore, 0o755);
  process.env.PATH = `${fakeBin}${path.delimiter}${savedPath ?? ''}`;

  const rules = new RedirectRules({ nodeIp: NODE_IP, backend: 'nft', netns: node });
  const failure: unknown = await rules.install().then(
    () => undefined,
    (err: unknown) => err,
  );
  t.ok(isAmbitError(failure, 'RULES_APPLY_FAILED'), 'the install fails with RULES_APPLY_FAILED');
  t.match(failure, { message: /simulated/, cause: Error }, 'with stderr in the message and the exec error as cause');
  t.match(failure, { message: /batch line: -A AMBIT-SOURCE-CHECK .*NET_ADMIN/ }, 'naming the rejected batch line and the fix');
  process.env.PATH = savedPath;
  t.same(await setNames(node), [], 'the ipset created for the failed install is gone');
  t.notMatch(await natTable(node, 'nft'), /AMBIT/);
  await assertTransparentRouting(t, node, 'nft', false);
});

/** Starts `node -e` in a namespace; resolves once the script printed its first line. */
async function startInNetns(t: Test, netns: string, script: string): Promise<{ process: ResultPromise<{ reject: false }>; output: () => string }> {
  const child = execa('ip', ['netns', 'exec', netns, process.execPath, '-e', script], { reject: false });
  t.teardown(() => {
    if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGKILL');
  });
  let output = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('\n')) resolve();
    });
    void child.then((result) => reject(new Error(`listener exited early: ${result.stderr}`)));
  });
  return { process: child, output: () => output };
}

/** Prints "listening", then the remote address of the first accepted connection, and exits. */
function listenerScript(address: string, port: number): string {
  return `const net = require('node:net');
const server = net.createServer((socket) => {
  console.log(JSON.stringify({ remote: socket.remoteAddress, local: socket.localAddress + ':' + socket.localPort }));
  socket.end(() => server.close());
});
server.listen(${port}, '${address}', () => console.log('listening'));`;
}

/** Connects from a namespace; prints what the client believes it is connected to, or the error. */
function connectFrom(netns: string, address: string, port: number) {
  const script = `const socket = require('node:net').connect({ host: '${address}', port: ${port}, timeout: 1500 });
socket.on('connect', () => { console.log(socket.remoteAddress + ':' + socket.remotePort); socket.destroy(); });
socket.on('timeout', () => { console.log('timeout'); socket.destroy(); process.exitCode = 1; });
socket.on('error', (err) => { console.log(err.code); process.exitCode = 1; });`;
  return execa('ip', ['netns', 'exec', netns, process.execPath, '-e', script], { reject: false, timeout: 10_000 });
}

async function connectVeth(node: string, other: string, hostSide: string, nodeAddress: string, otherAddress: string): Promise<void> {
  await inNetns(node, ['ip', 'link', 'add', hostSide, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', other]);
  await inNetns(node, ['ip', 'addr', 'add', `${nodeAddress}/24`, 'dev', hostSide]);
  await inNetns(node, ['ip', 'link', 'set', hostSide, 'up']);
  await inNetns(other, ['ip', 'addr', 'add', `${otherAddress}/24`, 'dev', 'eth0']);
  await inNetns(other, ['ip', 'link', 'set', 'eth0', 'up']);
  await inNetns(other, ['ip', 'route', 'add', 'default', 'via', nodeAddress]);
}

t.test('DNAT delivers pod traffic to the agent ports', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  const pod = await createNetns(t, 'pod');
  const peer = await createNetns(t, 'peer');
  await connectVeth(node, pod, 'ambit-pod0', '10.99.1.1', '10.99.1.2');
  await connectVeth(node, peer, 'ambit-peer0', '10.99.3.1', '10.99.3.2');

  const rules = new RedirectRules({ nodeIp: NODE_IP, netns: node });
  await rules.install();
  await rules.syncPods([]);

  const uncaptured = await connectFrom(pod, '10.99.2.7', 80);
  t.not(uncaptured.exitCode, 0, 'a pod not in the set is not captured');

  await rules.syncPods(['10.99.1.2']);
  const outbound = await startInNetns(t, node, listenerScript(NODE_IP, 15001));
  const client = await connectFrom(pod, '10.99.2.7', 80);
  t.equal(client.stdout.trim(), '10.99.2.7:80', 'the pod believes it reached the original destination');
  await outbound.process;
  const accepted = JSON.parse(outbound.output().split('\n')[1] ?? '{}') as { remote?: string; local?: string };
  t.same(accepted, { remote: '10.99.1.2', local: `${NODE_IP}:15001` }, 'the outbound listener accepted the pod');

  const inbound = await startInNetns(t, node, listenerScript(NODE_IP, 15006));
  const peerClient = await connectFrom(peer, '10.99.1.2', 8080);
  t.equal(peerClient.stdout.trim(), '10.99.1.2:8080', 'plaintext to an enrolled pod is captured');
  await inbound.process;
  const inboundAccepted = JSON.parse(inbound.output().split('\n')[1] ?? '{}') as { remote?: string; local?: string };
  t.same(inboundAccepted, { remote: '10.99.3.2', local: `${NODE_IP}:15006` }, 'the inbound listener accepted the peer');
});

/**
 * Connects from `netns` to address:port over a transparent socket bound to `source`; prints what the peer answered
 * (the address it saw) or the error. The node side of an agent's delivery, without the agent.
 */
function transparentConnectFrom(netns: string, source: string, address: string, port: number) {
  const sockopt = new URL('../core/sockopt/index.js', import.meta.url).href;
  const script = `const { transparentSocket } = await import(${JSON.stringify(sockopt)});
const socket = transparentSocket(${JSON.stringify(source)}, { allowHalfOpen: true });
socket.setTimeout(1500, () => { console.log('timeout'); socket.destroy(); });
let answer = '';
socket.on('data', (chunk) => (answer += chunk));
socket.on('end', () => { console.log(answer); socket.destroy(); });
socket.on('error', (err) => console.log(err.code));
socket.connect({ host: ${JSON.stringify(address)}, port: ${port} });`;
  return execa('ip', ['netns', 'exec', netns, process.execPath, '--input-type=module', '-e', script], { reject: false, timeout: 10_000 });
}

/** Prints "listening", then answers every connection with the address it came from. */
function addressEchoScript(port: number): string {
  return `const server = require('node:net').createServer((socket) => socket.end(socket.remoteAddress));
server.listen(${port}, '0.0.0.0', () => console.log('listening'));`;
}

t.test('the rules bring replies to transparent connections back to the node', { skip: rootSkip }, async (t) => {
  const node = await createNodeNetns(t);
  const pod = await createNetns(t, 'pod');
  await connectVeth(node, pod, 'ambit-pod0', '10.99.1.1', '10.99.1.2');
  await startInNetns(t, pod, addressEchoScript(8080));
  const rules = new RedirectRules({ nodeIp: NODE_IP, netns: node });
  await rules.install();
  await rules.syncPods(['10.99.1.2']);
  t.equal((await transparentConnectFrom(node, '10.99.3.7', '10.99.1.2', 8080)).stdout.trim(), '10.99.3.7', 'the pod saw the client address');
  await rules.remove();
  t.equal((await transparentConnectFrom(node, '10.99.3.7', '10.99.1.2', 8080)).stdout.trim(), 'timeout', 'without the rules the replies never come back');
});

const bridgeNetfilterSkip = rootSkip || skipReason(existsSync('/proc/sys/net/bridge') ? undefined : 'needs the br_netfilter kernel module: run `modprobe br_netfilter`');

t.test('on a bridge, a reply switched towards a same-subnet client reaches the node instead', { skip: bridgeNetfilterSkip }, async (t) => {
  const node = await createNodeNetns(t);
  await addBridge(node, 'ambit-br0', '10.99.5.1');
  const [client, server] = [await createNetns(t, 'client'), await createNetns(t, 'server')];
  await attachToBridge(node, client, 'ambit-br0', 'ambit-c0', '10.99.5.2', '10.99.5.1');
  await attachToBridge(node, server, 'ambit-br0', 'ambit-s0', '10.99.5.3', '10.99.5.1');
  await inNetns(node, ['sysctl', '-q', '-w', 'net.bridge.bridge-nf-call-iptables=1']);
  await startInNetns(t, server, addressEchoScript(8080));
  const rules = new RedirectRules({ nodeIp: NODE_IP, netns: node });
  await rules.install();
  await rules.syncPods(['10.99.5.3']);
  t.equal((await transparentConnectFrom(node, '10.99.5.2', '10.99.5.3', 8080)).stdout.trim(), '10.99.5.2', 'the server saw its neighbour');
  await inNetns(node, ['nft', 'delete', 'table', 'bridge', 'ambit']);
  t.equal((await transparentConnectFrom(node, '10.99.5.2', '10.99.5.3', 8080)).stdout.trim(), 'timeout', 'without the bridge table the client gets the reply (and resets it)');
});

/** An address for a pod's eth0 at once usable (no duplicate address detection) and a route to the bridge's subnet. */
async function addIpv6(pod: string, address: string): Promise<void> {
  await inNetns(pod, ['ip', '-6', 'addr', 'add', `${address}/64`, 'dev', 'eth0', 'nodad']);
}

t.test('on a bridge whose IPv6 skips ip6tables, enrolled pods\' IPv6 TCP between its ports is dropped', { skip: bridgeNetfilterSkip }, async (t) => {
  const node = await createNodeNetns(t);
  await addBridge(node, 'ambit-br0', '10.99.5.1');
  const [client, server] = [await createNetns(t, 'client'), await createNetns(t, 'server')];
  await attachToBridge(node, client, 'ambit-br0', 'ambit-c0', '10.99.5.2', '10.99.5.1');
  await attachToBridge(node, server, 'ambit-br0', 'ambit-s0', '10.99.5.3', '10.99.5.1');
  await addIpv6(client, 'fd00:99:5::2');
  await addIpv6(server, 'fd00:99:5::3');
  // the kernel's default: bridged IPv6 frames never reach ip6tables, so only the bridge table can stop them
  await inNetns(node, ['sysctl', '-q', '-w', 'net.bridge.bridge-nf-call-ip6tables=0']);
  await startInNetns(t, server, `const server = require('node:net').createServer((socket) => socket.on('error', () => socket.destroy()).end(socket.remoteAddress));
server.listen(8080, '::', () => console.log('listening'));`);
  const rules = new RedirectRules({ nodeIp: NODE_IP, netns: node });
  await rules.install();
  await rules.syncPods([]);
  t.equal((await connectFrom(client, 'fd00:99:5::3', 8080)).stdout.trim(), 'fd00:99:5::3:8080', 'a pod outside the mesh: switched as ever');
  await rules.syncPods(['fd00:99:5::3']);
  t.equal((await connectFrom(client, 'fd00:99:5::3', 8080)).stdout.trim(), 'timeout', 'to an enrolled pod: dropped');
  await rules.syncPods(['fd00:99:5::2']);
  t.equal((await connectFrom(client, 'fd00:99:5::3', 8080)).stdout.trim(), 'timeout', 'from an enrolled pod: dropped');
  await rules.remove();
  t.equal((await connectFrom(client, 'fd00:99:5::3', 8080)).stdout.trim(), 'fd00:99:5::3:8080', 'removed: switched again');
});
