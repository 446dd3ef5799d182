// The ipsets Ambit owns and the atomic swaps that set their members.
import type { CommandOptions } from '../exec.js';
import { applyCommand, IPSET_HINT } from './commands.js';
import { type AddressFamily, FAMILIES, IPV4 } from './family.js';
import type { SourceBinding } from './source-binding.js';

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
export const ALL_SETS: readonly IpsetSpec[] = [...FAMILIES.map(podSet), AMBIT_BOUND_SET, AMBIT_PORTS_SET];

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

export function createSetLine(spec: IpsetSpec): string {
  return `create ${spec.name} ${spec.type} family ${spec.family} -exist`;
}

export function temporarySetName(spec: IpsetSpec): string {
  return `${spec.name}-tmp`;
}

export async function listSets(options: CommandOptions): Promise<Set<string>> {
  const output = await applyCommand(['ipset', 'list', '-n'], options, IPSET_HINT);
  return new Set(output.stdout.split('\n').map((line) => line.trim()).filter((line) => line !== ''));
}
