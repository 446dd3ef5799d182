/** kubectl, the real client the API server double is judged by, run against a double with a kubeconfig of the test's choosing. */
import path from 'node:path';
import { execa } from 'execa';
import type { Test } from 'tap';
import type { Double } from './apiserver-client.js';

export interface KubectlResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/**
 * kubectl with the double's admin kubeconfig (or `kubeconfig`, another user's) and the double's own cache folder,
 * so no earlier run answers for the double.
 */
export async function kubectl(double: Double, args: string[], kubeconfig = double.kubeconfig): Promise<KubectlResult> {
  const result = await execa('kubectl', ['--kubeconfig', kubeconfig, '--cache-dir', path.join(double.dir, 'cache'), ...args], {
    reject: false,
    timeout: 30_000,
  });
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** kubectl that must succeed: a failure is a test failure that shows kubectl's stderr. Returns stdout. */
export async function kubectlOk(t: Test, double: Double, args: string[], kubeconfig?: string): Promise<string> {
  const result = await kubectl(double, args, kubeconfig);
  t.equal(result.exitCode, 0, `kubectl ${args.join(' ')}${result.stderr === '' ? '' : `: ${result.stderr}`}`);
  return result.stdout;
}
