// Parsers of the batches the rule builders emit (iptables-restore, nft -f, the `ip rule` lines of ip -batch), so that
// the builders' tests check what a rule means (chain, matches, target) and not how it is spelled. Anything these
// parsers do not know throws: a test cannot pass by parsing garbage into nothing. Other word-list lines (routes, fdb,
// ipset restore) are read with keywordValues by the tests that need them.

/** One iptables rule: its matches as an order-free set of canonical conditions, its target and the target's options. */
export interface IptablesRule {
  verb: '-A' | '-D' | '-I';
  chain: string;
  /** The position of an `-I CHAIN N`. */
  position?: number;
  /** e.g. "proto tcp", "!in lo", "set ambit-pods-v4 src", "!set ambit-pod-ports-v4 src,src", "socket --transparent". */
  conditions: Set<string>;
  target: string;
  targetOptions: Record<string, string>;
  /** The line as written, to build an "already in place" dump from what a builder emitted. */
  line: string;
}

/** The options each match module may carry, with how many values each takes. */
const MATCH_MODULES: Record<string, Record<string, number>> = {
  set: { '--match-set': 2 },
  socket: { '--transparent': 0, '--nowildcard': 0 },
  connmark: { '--mark': 1 },
  conntrack: { '--ctdir': 1, '--ctstate': 1 },
  tcp: { '--tcp-flags': 2, '--dport': 1, '--sport': 1 },
  physdev: { '--physdev-in': 1, '--physdev-out': 1 },
};

/** The options each target may carry; a target not listed is a jump to a chain, which takes none. */
const TARGET_OPTIONS: Record<string, Record<string, number>> = {
  DNAT: { '--to-destination': 1 },
  MARK: { '--set-xmark': 1 },
  CONNMARK: { '--set-xmark': 1 },
  REJECT: { '--reject-with': 1 },
  DROP: {},
  ACCEPT: {},
  RETURN: {},
};

const CHAIN_NAME = /^[A-Za-z][A-Za-z0-9_-]*$/;

/** Parses one iptables rule line (`-A|-D CHAIN ...` or `-I CHAIN [N] ...`); throws on anything it does not know. */
export function parseRule(line: string): IptablesRule {
  const words = line.trim().split(/\s+/);
  let index = 0;
  const take = (what: string): string => {
    const word = words[index++];
    if (word === undefined) throw new Error(`${what} missing in: ${line}`);
    return word;
  };
  const verb = take('verb');
  if (verb !== '-A' && verb !== '-D' && verb !== '-I') throw new Error(`unknown verb ${verb} in: ${line}`);
  const chain = take('chain');
  if (!CHAIN_NAME.test(chain)) throw new Error(`bad chain name ${chain} in: ${line}`);
  let position: number | undefined;
  if (verb === '-I' && /^\d+$/.test(words[index] ?? '')) position = Number(take('position'));
  const conditions = new Set<string>();
  let target: string | undefined;
  const targetOptions: Record<string, string> = {};
  const values = (count: number, what: string) => Array.from({ length: count }, () => take(`value of ${what}`));
  while (index < words.length) {
    let negated = false;
    if (words[index] === '!') {
      negated = true;
      index++;
    }
    const word = take('option');
    const not = negated ? '!' : '';
    if (word === '-p') conditions.add(`${not}proto ${take('protocol')}`);
    else if (word === '-i') conditions.add(`${not}in ${take('interface')}`);
    else if (word === '-o') conditions.add(`${not}out ${take('interface')}`);
    else if (word === '-m' && !negated) {
      const module = take('module');
      const known = MATCH_MODULES[module];
      if (known === undefined) throw new Error(`unknown match module ${module} in: ${line}`);
      let options = 0;
      while (index < words.length && (words[index]?.startsWith('--') || (words[index] === '!' && words[index + 1]?.startsWith('--')))) {
        const optionNot = words[index] === '!' ? '!' : '';
        if (optionNot) index++;
        const option = take('module option');
        const arity = known[option];
        if (arity === undefined) throw new Error(`unknown option ${option} of -m ${module} in: ${line}`);
        const args = values(arity, option);
        // a set match reads best as the set and its directions
        conditions.add(module === 'set' ? `${optionNot}set ${args.join(' ')}` : `${optionNot}${module} ${[option, ...args].join(' ')}`);
        options++;
      }
      if (options === 0) throw new Error(`-m ${module} without an option in: ${line}`);
    } else if ((word === '-j' || word === '-g') && !negated && target === undefined) {
      target = take('target');
      const known = TARGET_OPTIONS[target] ?? (CHAIN_NAME.test(target) ? {} : undefined);
      if (known === undefined) throw new Error(`bad target ${target} in: ${line}`);
      while (index < words.length && words[index]?.startsWith('--')) {
        const option = take('target option');
        const arity = known[option];
        if (arity === undefined) throw new Error(`unknown option ${option} of -j ${target} in: ${line}`);
        targetOptions[option] = values(arity, option).join(' ');
      }
    } else throw new Error(`unknown token ${not}${word} in: ${line}`);
  }
  if (target === undefined) throw new Error(`no target in: ${line}`);
  return { verb, chain, ...(position === undefined ? {} : { position }), conditions, target, targetOptions, line: line.trim() };
}

/** What a rule means, in a form t.same compares: the conditions sorted, the spelling gone. */
export interface RuleMeaning {
  chain: string;
  match: string[];
  target: string;
  options?: Record<string, string>;
}

export function meaning(rule: IptablesRule): RuleMeaning {
  const options = Object.keys(rule.targetOptions).length === 0 ? {} : { options: rule.targetOptions };
  return { chain: rule.chain, match: [...rule.conditions].sort(), target: rule.target, ...options };
}

/** An expected meaning, its conditions sorted like meaning()'s so that the test may list them in any order. */
export function expected(chain: string, match: string[], target: string, options?: Record<string, string>): RuleMeaning {
  return { chain, match: [...match].sort(), target, ...(options === undefined ? {} : { options }) };
}

/** One `*table` ... `COMMIT` section of an iptables-restore batch or an iptables-save dump. */
export interface RestoreSection {
  table: string;
  /** `:NAME POLICY [0:0]` lines: declaring a user chain in a restore batch creates or flushes it. */
  declared: string[];
  /** Every line of the section in order, parsed. */
  entries: RestoreEntry[];
  rules: IptablesRule[];
}

export type RestoreEntry = { kind: 'declare'; chain: string } | { kind: 'flush' | 'delete-chain'; chain: string } | { kind: 'rule'; rule: IptablesRule };

/** Parses an iptables-restore batch (or a save dump) into its sections; throws on a line it does not know. */
export function parseRestoreBatch(text: string): RestoreSection[] {
  const sections: RestoreSection[] = [];
  let current: RestoreSection | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('*')) {
      if (current !== undefined) throw new Error(`*${line.slice(1)} before COMMIT of *${current.table}`);
      current = { table: line.slice(1), declared: [], entries: [], rules: [] };
      continue;
    }
    if (current === undefined) throw new Error(`outside a table section: ${line}`);
    if (line === 'COMMIT') {
      sections.push(current);
      current = undefined;
      continue;
    }
    const declaration = /^:(\S+) (\S+) \[\d+:\d+\]$/.exec(line);
    const chainCommand = /^-([FX]) (\S+)$/.exec(line);
    if (declaration?.[1] !== undefined) {
      current.declared.push(declaration[1]);
      current.entries.push({ kind: 'declare', chain: declaration[1] });
    } else if (chainCommand?.[2] !== undefined) {
      current.entries.push({ kind: chainCommand[1] === 'F' ? 'flush' : 'delete-chain', chain: chainCommand[2] });
    } else {
      const rule = parseRule(line);
      current.rules.push(rule);
      current.entries.push({ kind: 'rule', rule });
    }
  }
  if (current !== undefined) throw new Error(`*${current.table} without COMMIT`);
  return sections;
}

/** One command of an `nft -f` batch. */
export type NftCommand =
  | { verb: 'add' | 'delete' | 'flush'; object: 'table'; family: string; table: string }
  | { verb: 'add' | 'flush'; object: 'set'; family: string; table: string; name: string; type?: string }
  | { verb: 'add'; object: 'element'; family: string; table: string; name: string; elements: string[] }
  | { verb: 'add'; object: 'chain'; family: string; table: string; name: string; type: string; hook: string; priority: number; policy: string }
  | ({ verb: 'add'; object: 'rule'; family: string; table: string } & NftRule);

/** A rule of the bridge table split into its statements. */
export interface NftRule {
  chain: string;
  /** Order-free matches, e.g. "meta l4proto tcp", "ip6 saddr @pods6", "ip saddr . iifname != @ports4". */
  matches: Set<string>;
  /** Payload and meta mangling, e.g. "ether daddr set 02:61:6d:62:69:74", "meta pkttype set host". */
  mangles: Set<string>;
  counter: boolean;
  verdict?: 'drop' | 'accept';
  comment?: string;
}

/** The keys each selector may take; iifname and oifname take none. */
const NFT_SELECTORS: Record<string, string[]> = {
  meta: ['l4proto', 'protocol', 'mark', 'pkttype'],
  ip: ['saddr', 'daddr'],
  ip6: ['saddr', 'daddr'],
  ether: ['saddr', 'daddr'],
  tcp: ['flags', 'dport', 'sport'],
  iifname: [],
  oifname: [],
};

/** Parses an `nft -f` batch of the kinds the bridge builders write; throws on a line it does not know. */
export function parseNftBatch(text: string): NftCommand[] {
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '')
    .map(parseNftCommand);
}

function parseNftCommand(line: string): NftCommand {
  const table = /^(add|delete|flush) table (\S+) (\S+)$/.exec(line);
  if (table) return { verb: table[1] as 'add', object: 'table', family: table[2] as string, table: table[3] as string };
  const set = /^add set (\S+) (\S+) (\S+) \{ type ([^;{}]+); \}$/.exec(line);
  if (set) return { verb: 'add', object: 'set', family: set[1] as string, table: set[2] as string, name: set[3] as string, type: set[4] as string };
  const flushSet = /^flush set (\S+) (\S+) (\S+)$/.exec(line);
  if (flushSet) return { verb: 'flush', object: 'set', family: flushSet[1] as string, table: flushSet[2] as string, name: flushSet[3] as string };
  const element = /^add element (\S+) (\S+) (\S+) \{ ([^{}]+) \}$/.exec(line);
  if (element) {
    const elements = (element[4] as string).split(',').map((value) => value.trim());
    return { verb: 'add', object: 'element', family: element[1] as string, table: element[2] as string, name: element[3] as string, elements };
  }
  const chain = /^add chain (\S+) (\S+) (\S+) \{ type (\S+) hook (\S+) priority (-?\d+); policy (\S+); \}$/.exec(line);
  if (chain) {
    const [, family, tableName, name, type, hook, priority, policy] = chain as unknown as string[];
    return { verb: 'add', object: 'chain', family: family as string, table: tableName as string, name: name as string, type: type as string, hook: hook as string, priority: Number(priority), policy: policy as string };
  }
  const rule = /^add rule (\S+) (\S+) (\S+) (.+)$/.exec(line);
  if (rule) return { verb: 'add', object: 'rule', family: rule[1] as string, table: rule[2] as string, ...parseNftRule(rule[3] as string, rule[4] as string) };
  throw new Error(`unknown nft command: ${line}`);
}

/** Splits a rule's expression (everything after `add rule FAMILY TABLE CHAIN`) into its statements. */
export function parseNftRule(chain: string, expression: string): NftRule {
  const words = expression.match(/"[^"]*"|[()]|[^\s()]+/g) ?? [];
  let index = 0;
  const take = (what: string): string => {
    const word = words[index++];
    if (word === undefined) throw new Error(`${what} missing in: ${expression}`);
    return word;
  };
  const selector = (): string => {
    const word = take('selector');
    const keys = NFT_SELECTORS[word];
    if (keys === undefined) throw new Error(`unknown selector ${word} in: ${expression}`);
    if (keys.length === 0) return word;
    const key = take(`key of ${word}`);
    if (!keys.includes(key)) throw new Error(`unknown key ${word} ${key} in: ${expression}`);
    return `${word} ${key}`;
  };
  const value = (): string => {
    if (words[index] !== '(') return take('value');
    const group: string[] = [take('(')];
    while (words[index] !== ')') group.push(take('closing parenthesis'));
    take(')');
    return `(${group.slice(1).join(' ')})`;
  };
  const parsed: NftRule = { chain, matches: new Set(), mangles: new Set(), counter: false };
  while (index < words.length) {
    const word = words[index] as string;
    if (parsed.verdict !== undefined && word !== 'comment') throw new Error(`${word} after the verdict in: ${expression}`);
    if (word === 'counter') {
      index++;
      parsed.counter = true;
    } else if (word === 'drop' || word === 'accept') {
      index++;
      parsed.verdict = word;
    } else if (word === 'comment') {
      index++;
      const comment = take('comment');
      if (!/^"[^"]*"$/.test(comment) || index !== words.length) throw new Error(`a comment must be quoted and last in: ${expression}`);
      parsed.comment = comment.slice(1, -1);
    } else {
      let left = selector();
      while (words[index] === '.') {
        index++;
        left += ` . ${selector()}`;
      }
      if (words[index] === '&') {
        index++;
        left += ` & ${value()}`;
      }
      if (words[index] === 'set') {
        index++;
        parsed.mangles.add(`${left} set ${value()}`);
        continue;
      }
      // nft's implicit operator is ==; written or not, it means the same
      const operator = words[index] === '==' || words[index] === '!=' ? take('operator') : '==';
      parsed.matches.add(`${left}${operator === '!=' ? ' !=' : ''} ${value()}`);
    }
  }
  return parsed;
}

/** The values after each keyword of a word-list batch line (`ip -batch`, `bridge -batch`, `ipset restore`). */
export function keywordValues(line: string, keywords: readonly string[]): Record<string, string> {
  const words = line.trim().split(/\s+/);
  const found: Record<string, string> = {};
  for (const [index, word] of words.entries()) {
    const next = words[index + 1];
    if (keywords.includes(word) && next !== undefined) found[word] = next;
  }
  return found;
}

/** One `ip rule` line of an `ip -batch`: `rule add|del priority P fwmark M/K lookup T`, nothing else. */
export interface IpRuleLine {
  verb: 'add' | 'del';
  priority: number;
  fwmark?: string;
  fwmask?: string;
  table: string;
}

export function parseIpRuleLine(line: string): IpRuleLine {
  const words = line.trim().split(/\s+/);
  if (words[0] !== 'rule' || (words[1] !== 'add' && words[1] !== 'del')) throw new Error(`not an ip rule line: ${line}`);
  const known = new Set(['priority', 'fwmark', 'lookup']);
  for (let index = 2; index < words.length; index += 2) {
    if (!known.has(words[index] as string) || words[index + 1] === undefined) throw new Error(`unknown ip rule word ${words[index]} in: ${line}`);
  }
  const values = keywordValues(line, [...known]);
  const [fwmark, fwmask] = values.fwmark?.split('/') ?? [];
  if (values.priority === undefined || values.lookup === undefined) throw new Error(`priority and lookup are needed in: ${line}`);
  return { verb: words[1], priority: Number(values.priority), ...(fwmark === undefined ? {} : { fwmark }), ...(fwmask === undefined ? {} : { fwmask }), table: values.lookup };
}
