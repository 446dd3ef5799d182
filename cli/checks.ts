/**
 * The shape every checking command prints (`ambit uninstall --check`, `ambit check`): with --output json exactly
 * `{"ok": bool, "checks": [{"id", "ok", "message", "hint"}]}`, a hint on each failure saying what to do; as text, a
 * line a check with the hint under a failure. Exit code 0 when every check passed, 1 otherwise.
 */
export interface CheckResult {
  /** Stable, for scripts: `node-rules`, `api-reachable`, ... */
  id: string;
  ok: boolean;
  message: string;
  /** What to do about a failure. */
  hint?: string;
}

export function formatChecks(checks: readonly CheckResult[]): string {
  const lines = checks.flatMap((check) => [`${check.ok ? 'ok  ' : 'FAIL'}  ${check.id}: ${check.message}`, ...(check.ok || check.hint === undefined ? [] : [`        hint: ${check.hint}`])]);
  const failed = checks.filter((check) => !check.ok).length;
  lines.push(failed === 0 ? `all ${checks.length} checks passed` : `${failed} of ${checks.length} checks failed`);
  return `${lines.join('\n')}\n`;
}

/** Prints the checks as asked and returns the exit code. */
export function printChecks(checks: readonly CheckResult[], output: 'text' | 'json'): number {
  const ok = checks.every((check) => check.ok);
  process.stdout.write(output === 'json' ? `${JSON.stringify({ ok, checks }, null, 2)}\n` : formatChecks(checks));
  return ok ? 0 : 1;
}
