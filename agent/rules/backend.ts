// Which iptables backend (nft or legacy) the node uses, and the save/restore commands of each.
import { AmbitError } from '../../core/errors/index.js';
import type { Logger } from '../../core/log/index.js';
import { isOnPath } from '../exec.js';
import { applyCommand, componentLogger, NET_ADMIN_HINT } from './commands.js';
import { type AddressFamily, IPV4 } from './family.js';

export type IptablesBackend = 'nft' | 'legacy';
export type IptablesBackendChoice = IptablesBackend | 'auto';

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

export async function detectBackend(log: Logger, netns: string | undefined): Promise<IptablesBackend> {
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

export function saveCommand(family: AddressFamily, backend: IptablesBackend): string {
  return `${family.iptablesCommand}-${backend}-save`;
}

export function restoreCommand(family: AddressFamily, backend: IptablesBackend): string {
  return `${family.iptablesCommand}-${backend}-restore`;
}

/** The backends whose save command is installed; neither is an error, since the agent cannot capture anything. */
export async function presentBackends(family: AddressFamily): Promise<IptablesBackend[]> {
  const backends: IptablesBackend[] = ['legacy', 'nft'];
  const present = await Promise.all(backends.map((backend) => isOnPath(saveCommand(family, backend))));
  const found = backends.filter((_, index) => present[index]);
  if (found.length === 0) throw missingIptables(family);
  return found;
}

export function missingIptables(family: AddressFamily): AmbitError {
  return new AmbitError(
    'IPTABLES_MISSING',
    `neither ${saveCommand(family, 'nft')} nor ${saveCommand(family, 'legacy')} is on PATH (${process.env.PATH ?? ''}): ` +
      "install the Debian package 'iptables' (apt-get install iptables) in the agent's image",
  );
}
