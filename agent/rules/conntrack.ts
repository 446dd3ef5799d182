// Ending the tracked TCP flows of a pod that joins the mesh.
import { ExecaError } from 'execa';
import { runCommand, type CommandOptions } from '../exec.js';
import { commandFailure, CONNTRACK_HINT } from './commands.js';

/**
 * Deletes the conntrack entries of the TCP flows from (`--orig-src`) or to (`--orig-dst`) `ip`, as the flow's first
 * packet had it, and returns how many went. conntrack says how many on stderr, and exits 1 when that is none: here
 * an ordinary outcome (a pod without open connections), not a failure.
 */
export async function deleteTcpFlows(direction: '--orig-src' | '--orig-dst', ip: string, options: CommandOptions): Promise<number> {
  const argv = ['conntrack', '-D', '-p', 'tcp', direction, ip];
  try {
    return flowsDeleted((await runCommand(argv, options)).stderr) ?? 0;
  } catch (err) {
    if (err instanceof ExecaError && err.exitCode === 1 && flowsDeleted(String(err.stderr ?? '')) === 0) return 0;
    throw commandFailure(argv, options, CONNTRACK_HINT, err);
  }
}

/** `conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.` → 3. */
function flowsDeleted(stderr: string): number | undefined {
  const match = /(\d+) flow entries have been deleted/.exec(stderr);
  return match === null ? undefined : Number(match[1]);
}
