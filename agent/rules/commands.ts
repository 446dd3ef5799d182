// Running the rule tools: a failure becomes RULES_APPLY_FAILED with the rejected batch line and a hint.
import { ExecaError } from 'execa';
import { AmbitError } from '../../core/errors/index.js';
import { silentLogger, type Logger } from '../../core/log/index.js';
import { runCommand, type CommandOptions, type CommandOutput } from '../exec.js';

export const NET_ADMIN_HINT = 'is the agent running as root with NET_ADMIN?';
export const IPV6_RESTORE_HINT = 'is the agent running with NET_ADMIN, and does the kernel have ip6tables filter, REJECT, xt_set and xt_conntrack?';
export const NAT_RESTORE_HINT = 'is the agent running with NET_ADMIN, and does the kernel have the raw, nat, mangle and filter tables, xt_set, xt_socket, xt_connmark, xt_conntrack and REJECT?';
export const IPSET_HINT = "is the agent running with NET_ADMIN, and is the 'ipset' package installed (Debian: apt-get install ipset)?";
export const IPSET_DESTROY_HINT = `${IPSET_HINT} A set still in use by some iptables rule cannot be destroyed: look for rules using it with iptables-save`;
export const NFT_HINT = 'is the agent running with NET_ADMIN, and does the kernel have nf_tables with the bridge family (CONFIG_NF_TABLES_BRIDGE)?';
export const CONNTRACK_HINT = "is the agent running with NET_ADMIN, and is the 'conntrack' package installed (Debian: apt-get install conntrack)?";

export function sameLines(left: readonly string[], right: readonly string[]): boolean {
  return left.length === right.length && left.every((line, index) => line === right[index]);
}

export function hex(value: number): string {
  return `0x${value.toString(16)}`;
}

export function batchText(lines: readonly string[]): string {
  return lines.join('\n') + '\n';
}

/** Runs one command and turns any failure into RULES_APPLY_FAILED, naming the batch line the tool rejected. */
export async function applyCommand(argv: string[], options: CommandOptions, hint: string): Promise<CommandOutput> {
  try {
    return await runCommand(argv, options);
  } catch (err) {
    throw commandFailure(argv, options, hint, err);
  }
}

export function commandFailure(argv: readonly string[], options: CommandOptions, hint: string, err: unknown): AmbitError {
  const stderr = err instanceof ExecaError ? String(err.stderr ?? '').trim() : '';
  const detail = stderr !== '' ? stderr : err instanceof Error ? err.message : String(err);
  const where = options.netns === undefined ? '' : ` in network namespace ${options.netns}`;
  const line = failedBatchLine(stderr, options.input);
  const offending = line === undefined ? '' : ` (batch line: ${line})`;
  return new AmbitError('RULES_APPLY_FAILED', `${argv.join(' ')} failed${where}: ${detail}${offending}; ${hint}`, { cause: err });
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

/** The logger of the rules' code: the caller's, or a silent one. */
export function componentLogger(log: Logger | undefined): Logger {
  return (log ?? silentLogger()).child({ component: 'redirect-rules' });
}
