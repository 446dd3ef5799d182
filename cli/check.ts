/**
 * `ambit check [--pre]`: whether Ambit is installed and working (or, with --pre, whether it can be installed), one
 * line per check, and for each failure what to do. It only reads.
 */
import { parseFlags, usageError } from './args.js';
import { CheckContext, CLUSTER_CHECKS, PRE_INSTALL_CHECKS, runChecks, type Check, type CheckResult } from './checks.js';
import { connectCluster, KUBE_FLAGS, KUBE_FLAGS_USAGE } from './kube.js';

const ids = (checks: readonly Check[]) => checks.map((c) => c.id).join(', ');

export const CHECK_USAGE = `Usage: ambit check [--pre] [options]

Checks that Ambit is installed and working: one line per check, and under each failure a hint that says what to
do. It only reads; it never reads the CA Secret (what the mesh trusts is in the published trust-bundle ConfigMap).
The nodes-* and workload-certificates checks ask each agent (its read-only /status, through the API server's pods
proxy: get on pods/proxy in ambit-system), as ambit status does.

  checks:       ${ids(CLUSTER_CHECKS)}
  with --pre:   ${ids(PRE_INSTALL_CHECKS)}

Options:
  --pre                  before an install: the API version, CRDs of Ambit's names that are not Ambit's, and
                         your permission to apply the install (by SelfSubjectAccessReview)
  -o, --output FORMAT    text (default), or json: {"ok": bool, "checks": [{"id", "ok", "message", "hint"}]}
                         (hint on failed checks only)
${KUBE_FLAGS_USAGE}
  -h, --help             show this help

Exit codes: 0 every check passed, 1 a check failed, 2 bad usage, or a kubeconfig that cannot be read (nothing is
checked then).
`;

export async function runCheckCommand(argv: string[]): Promise<number> {
  const values = parseFlags('check', argv, {
    pre: { type: 'boolean' },
    output: { type: 'string', short: 'o' },
    ...KUBE_FLAGS,
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    process.stdout.write(CHECK_USAGE);
    return 0;
  }
  const output = values.output ?? 'text';
  if (output !== 'text' && output !== 'json') throw usageError('check', `--output ${output} is not text or json`);
  const cluster = await connectCluster('check', values);
  const results = await runChecks(values.pre === true ? PRE_INSTALL_CHECKS : CLUSTER_CHECKS, new CheckContext(cluster));
  return printChecks(results, output);
}

/**
 * Prints checks as every checking command does (`ambit check`, `ambit uninstall --check`): with --output json
 * exactly `{"ok", "checks": [{"id", "ok", "message", "hint"}]}`, else formatReport; returns the exit code (0: all
 * passed, 1: one failed).
 */
export function printChecks(results: readonly CheckResult[], output: 'text' | 'json'): number {
  const ok = results.every((r) => r.ok);
  process.stdout.write(output === 'json' ? `${JSON.stringify({ ok, checks: results }, null, 2)}\n` : formatReport(results));
  return ok ? 0 : 1;
}

/** One line a check (✔ or ✘, its id, its message), the hint indented under a failure, and a summary. */
export function formatReport(results: readonly CheckResult[]): string {
  const width = Math.max(...results.map((r) => r.id.length));
  const lines = results.flatMap((r) => [`${r.ok ? '✔' : '✘'} ${r.id.padEnd(width)}  ${r.message}`, ...(r.ok || r.hint === undefined ? [] : [`    hint: ${r.hint}`])]);
  const failed = results.filter((r) => !r.ok).length;
  lines.push('', failed === 0 ? `all ${results.length} checks passed` : `${failed} of ${results.length} checks failed`);
  return `${lines.join('\n')}\n`;
}
