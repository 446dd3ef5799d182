import { isIPv4 } from 'node:net';
import { ExecaError } from 'execa';
import { AmbitError } from '../core/errors.js';
import { silentLogger, type Logger } from '../core/log.js';
import { isOnPath, runCommand, type CommandOptions, type CommandOutput } from './exec.js';

/** Where captured outbound connections land: the agent's outbound listener on the node IP. */
export const DEFAULT_OUTBOUND_PORT = 15001;
/** Where plaintext connections to an enrolled pod land: the agent's inbound listener on the node IP. */
export const DEFAULT_INBOUND_PORT = 15006;
/** Ambit's own nat chain; everything Ambit adds to the nat table lives in it, so removal is one flush. */
export const AMBIT_PREROUTING_CHAIN = 'AMBIT-PREROUTING';

export type IptablesBackend = 'nft' | 'legacy';
export type IptablesBackendChoice = IptablesBackend | 'auto';

/**
 * What differs between IPv4 and IPv6 redirection. IPv6 is one more constant (`ambit-pods-v6`, `inet6`,
 * `ip6tables`, `[ip]:port`) and one more pass over the same functions.
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
  const table = readNatTable(options.currentNatTable ?? '');
  const wanted = buildChainRules(options);
  const keptJump = table.firstPreroutingRule === JUMP_RULE ? JUMP_RULE : undefined;
  const strayJumps = table.jumps.slice(keptJump === undefined ? 0 : 1);
  const chainIsCurrent = table.chainExists && sameLines(table.chainRules, wanted);
  if (chainIsCurrent && keptJump !== undefined && strayJumps.length === 0) return '';
  return [
    '*nat',
    `:${AMBIT_PREROUTING_CHAIN} - [0:0]`,
    ...wanted,
    ...strayJumps.map(toDeletion),
    ...(keptJump === undefined ? [`-I PREROUTING 1 -j ${AMBIT_PREROUTING_CHAIN}`] : []),
    'COMMIT',
    '',
  ].join('\n');
}

/**
 * The batch that deletes every jump to Ambit's chain and the chain itself, or '' when none is left. `saveOutput`
 * is an iptables-save dump of all tables or of the nat table alone.
 */
export function buildNatRemoval(saveOutput: string): string {
  const table = readNatTable(saveOutput);
  if (!table.chainExists && table.jumps.length === 0) return '';
  const chain = AMBIT_PREROUTING_CHAIN;
  return [
    '*nat',
    ...table.jumps.map(toDeletion),
    // a chain must be empty before it can be deleted
    ...(table.chainExists ? [`-F ${chain}`, `-X ${chain}`] : []),
    'COMMIT',
    '',
  ].join('\n');
}

/**
 * The `ipset restore` batch that replaces the set's members with `addresses`. The live set only ever changes
 * through the swap, which is atomic; ipset restore itself stops at the first bad line, so a failure leaves at
 * most a stale temporary set, which the next sync flushes and removal destroys.
 */
export function buildIpsetSync(addresses: readonly string[], family: AddressFamily = IPV4): string {
  const set = family.setName;
  const temporary = temporarySetName(family);
  return [
    createSetLine(set, family),
    createSetLine(temporary, family),
    `flush ${temporary}`,
    ...addresses.map((address) => `add ${temporary} ${address}`),
    `swap ${temporary} ${set}`,
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
 * Removes the jump, the chain and the ipsets, whichever of them exist, so it also cleans up after a crash.
 * Used by `ambit agent --cleanup` and by RedirectRules.remove().
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
  const family = IPV4;
  const backends = choice === 'auto' ? await presentBackends(family) : [choice];

  // the whole dump rather than `-t nat`: asking legacy iptables for a table creates it, and an empty legacy nat
  // table on an nft node makes every iptables-nft command warn about it
  const natTables = await Promise.allSettled(
    backends.map((backend) => applyCommand([saveCommand(family, backend)], commandOptions, NET_ADMIN_HINT)),
  );
  if (natTables.every((table) => table.status === 'rejected')) {
    throw natTables[0]?.reason ?? missingIptables(family);
  }
  const removedFrom: IptablesBackend[] = [];
  for (const [index, backend] of backends.entries()) {
    const table = natTables[index];
    if (table?.status !== 'fulfilled') {
      log.warn({ backend, err: table?.reason }, 'cannot read this iptables backend; leaving it alone');
      continue;
    }
    const removal = buildNatRemoval(table.value.stdout);
    if (removal === '') continue;
    await applyCommand([restoreCommand(family, backend), '-w', '--noflush'], { ...commandOptions, input: removal }, NET_ADMIN_HINT);
    removedFrom.push(backend);
  }

  const existingSets = await listSets(commandOptions);
  const doomedSets = [family.setName, temporarySetName(family)].filter((set) => existingSets.has(set));
  if (doomedSets.length > 0) {
    const batch = doomedSets.map((set) => `destroy ${set}`).join('\n') + '\n';
    await applyCommand(['ipset', 'restore'], { ...commandOptions, input: batch }, IPSET_DESTROY_HINT);
  }
  if (removedFrom.length > 0 || doomedSets.length > 0) {
    log.info({ backends: removedFrom, chains: removedFrom.length, ipsets: doomedSets.length }, 'redirect rules removed');
  } else {
    log.debug('no redirect rules to remove');
  }
}

/**
 * Ambit's traffic capture in the node's network namespace: the `ambit-pods-v4` ipset of enrolled local pods and
 * the nat chain that DNATs their TCP to the agent. Operations are serialized, so a pod sync racing a reinstall
 * cannot interleave their batches.
 */
export class RedirectRules {
  readonly #nodeIp: string;
  readonly #outboundPort: number;
  readonly #inboundPort: number;
  readonly #backendChoice: IptablesBackendChoice;
  readonly #commandOptions: CommandOptions;
  readonly #log: Logger;
  readonly #family = IPV4;
  #backend: IptablesBackend | undefined;
  /** Sorted members of the live set as last written by this instance; undefined when unknown. */
  #appliedPods: string[] | undefined;
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

  /** Creates the ipset, the chain and the jump; running it again repairs whatever drifted and changes nothing else. */
  install(): Promise<void> {
    return this.#serialize(async () => {
      const family = this.#family;
      const backend = await this.#resolveBackend();
      const setCreated = !(await listSets(this.#commandOptions)).has(family.setName);
      if (setCreated) {
        await applyCommand(['ipset', 'restore'], { ...this.#commandOptions, input: createSetLine(family.setName, family) + '\n' }, IPSET_HINT);
      }
      try {
        const natTable = await applyCommand([saveCommand(family, backend), '-t', 'nat'], this.#commandOptions, NET_ADMIN_HINT);
        const natOptions: NatRulesOptions = {
          nodeIp: this.#nodeIp,
          outboundPort: this.#outboundPort,
          inboundPort: this.#inboundPort,
          family,
          currentNatTable: natTable.stdout,
        };
        const batch = buildNatRules(natOptions);
        if (batch === '') {
          this.#log.debug({ backend }, 'redirect rules already in place');
          return;
        }
        await applyCommand([restoreCommand(family, backend), '-w', '--noflush'], { ...this.#commandOptions, input: batch }, NAT_RESTORE_HINT);
        const batchLines = batch.split('\n');
        this.#log.info(
          {
            backend,
            chain: AMBIT_PREROUTING_CHAIN,
            rules: buildChainRules(natOptions).length,
            jumpsInserted: batchLines.filter((line) => line.startsWith('-I ')).length,
            jumpsDeleted: batchLines.filter((line) => line.startsWith('-D ')).length,
            setCreated,
          },
          'redirect rules installed',
        );
      } catch (err) {
        if (setCreated) await this.#destroyCreatedSet();
        throw err;
      }
    });
  }

  /**
   * Makes the ipset hold exactly `ipv4s` (the node's enrolled pods), in one atomic swap. Returns false, without
   * running anything, when the set already holds them as last applied (`force` applies it anyway, to repair a set
   * someone else changed). An address that is not IPv4, or is the node IP, is left
   * out with a warning rather than failing the sync: one bad pod must not stop the capture of all the others.
   */
  syncPods(ipv4s: readonly string[], options: { force?: boolean } = {}): Promise<boolean> {
    return this.#serialize(async () => {
      const family = this.#family;
      const invalid = ipv4s.filter((address) => !family.isAddress(address));
      if (invalid.length > 0) {
        this.#log.warn({ set: family.setName, invalid }, `left out of the enrolled pod set: not ${family.ipsetFamily} addresses`);
      }
      // a hostNetwork pod has the node IP: enrolling it would capture all TCP to the node, HBONE on 15008 included
      if (ipv4s.includes(this.#nodeIp)) {
        this.#log.warn({ set: family.setName, nodeIp: this.#nodeIp }, 'left the node IP out of the enrolled pod set: hostNetwork pods cannot be enrolled');
      }
      const pods = [...new Set(ipv4s)].filter((address) => family.isAddress(address) && address !== this.#nodeIp).sort();
      const previous = this.#appliedPods;
      if (!options.force && previous !== undefined && sameLines(previous, pods)) return false;
      await applyCommand(['ipset', 'restore'], { ...this.#commandOptions, input: buildIpsetSync(pods, family) }, IPSET_HINT);
      this.#appliedPods = pods;
      const counts = previous === undefined ? {} : diffCounts(previous, pods);
      this.#log.info({ set: family.setName, pods: pods.length, ...counts }, 'enrolled pod set updated');
      return true;
    });
  }

  /** Removes the jump, the chain and the ipsets; absent pieces are fine. */
  remove(): Promise<void> {
    return this.#serialize(async () => {
      this.#appliedPods = undefined;
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

  /** Undo of a first install whose nat batch failed: the set would otherwise outlive the rules that use it. */
  async #destroyCreatedSet(): Promise<void> {
    const set = this.#family.setName;
    try {
      await applyCommand(['ipset', 'restore'], { ...this.#commandOptions, input: `destroy ${set}\n` }, IPSET_DESTROY_HINT);
    } catch (err) {
      this.#log.warn({ err, set }, 'could not destroy the ipset created by the failed install');
    }
  }
}

const JUMP_RULE = `-A PREROUTING -j ${AMBIT_PREROUTING_CHAIN}`;
const NET_ADMIN_HINT = 'is the agent running as root with NET_ADMIN?';
const NAT_RESTORE_HINT = 'is the agent running with NET_ADMIN, and does the kernel have the nat and xt_set modules?';
const IPSET_HINT = "is the agent running with NET_ADMIN, and is the 'ipset' package installed (Debian: apt-get install ipset)?";
const IPSET_DESTROY_HINT = `${IPSET_HINT} A set still in use by some iptables rule cannot be destroyed: look for rules using it with iptables-save`;

interface NatTable {
  chainExists: boolean;
  /** The rules of Ambit's chain, in order. */
  chainRules: string[];
  /** Every rule of any chain that jumps to Ambit's chain, in save order. */
  jumps: string[];
  firstPreroutingRule: string | undefined;
}

/** Reads the nat section of an iptables-save dump; a dump without one is a nat table without Ambit. */
function readNatTable(saveOutput: string): NatTable {
  const chain = AMBIT_PREROUTING_CHAIN;
  const allLines = saveOutput.split('\n').map((line) => line.trim());
  const start = allLines.indexOf('*nat');
  const end = start === -1 ? -1 : allLines.indexOf('COMMIT', start);
  const lines = start === -1 ? [] : allLines.slice(start + 1, end === -1 ? undefined : end);
  const rules = lines.filter((line) => line.startsWith('-A '));
  return {
    chainExists: lines.some((line) => line.startsWith(`:${chain} `)),
    chainRules: rules.filter((rule) => rule.startsWith(`-A ${chain} `)),
    jumps: rules.filter((rule) => jumpsTo(rule, chain)),
    firstPreroutingRule: rules.find((rule) => rule.startsWith('-A PREROUTING ')),
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

function createSetLine(set: string, family: AddressFamily): string {
  return `create ${set} hash:ip family ${family.ipsetFamily} -exist`;
}

function temporarySetName(family: AddressFamily): string {
  return `${family.setName}-tmp`;
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

async function listSets(options: CommandOptions): Promise<Set<string>> {
  const output = await applyCommand(['ipset', 'list', '-n'], options, IPSET_HINT);
  return new Set(output.stdout.split('\n').map((line) => line.trim()).filter((line) => line !== ''));
}

/** Runs one command and turns any failure into RULES_APPLY_FAILED, naming the batch line the tool rejected. */
async function applyCommand(argv: string[], options: CommandOptions, hint: string): Promise<CommandOutput> {
  try {
    return await runCommand(argv, options);
  } catch (err) {
    const stderr = err instanceof ExecaError ? String(err.stderr ?? '').trim() : '';
    const detail = stderr !== '' ? stderr : err instanceof Error ? err.message : String(err);
    const where = options.netns === undefined ? '' : ` in network namespace ${options.netns}`;
    const line = failedBatchLine(stderr, options.input);
    const offending = line === undefined ? '' : ` (batch line: ${line})`;
    throw new AmbitError('RULES_APPLY_FAILED', `${argv.join(' ')} failed${where}: ${detail}${offending}; ${hint}`, { cause: err });
  }
}

/** iptables-restore says "line 4", ipset "Error in line 4": the batch text of that line makes the error readable. */
function failedBatchLine(stderr: string, input: string | undefined): string | undefined {
  if (input === undefined) return undefined;
  const match = /line:? (\d+)/i.exec(stderr);
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
