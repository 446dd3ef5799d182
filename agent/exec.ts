import { access, constants } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

/**
 * A stuck xtables lock or a wedged netlink socket must not hang the agent for ever: the caller gets an error
 * and retries on its next reconcile.
 */
const COMMAND_TIMEOUT_MS = 30_000;

export interface CommandOptions {
  /** Run inside this network namespace (`ip netns exec <netns> ...`) instead of the caller's own. */
  netns?: string;
  /** Written to the command's stdin: how restore batches reach iptables-restore and ipset. */
  input?: string;
}

export interface CommandOutput {
  stdout: string;
  stderr: string;
}

/** The argv actually executed: the command itself, or wrapped in `ip netns exec`. */
export function commandArgv(argv: readonly string[], netns?: string): string[] {
  return netns === undefined ? [...argv] : ['ip', 'netns', 'exec', netns, ...argv];
}

/** Runs one command to completion; rejects with execa's error (it carries `stderr` and `exitCode`). */
export async function runCommand(argv: readonly string[], options: CommandOptions = {}): Promise<CommandOutput> {
  const [file, ...args] = commandArgv(argv, options.netns);
  if (file === undefined) throw new TypeError('runCommand needs at least the command name');
  const result = await execa(file, args, {
    input: options.input ?? '',
    timeout: COMMAND_TIMEOUT_MS,
    stripFinalNewline: false,
  });
  return { stdout: result.stdout, stderr: result.stderr };
}

/**
 * True when `name` is an executable file in a PATH directory. Checked on the filesystem because, run through
 * `ip netns exec`, a missing command is an ordinary exit code 255 rather than ENOENT.
 */
export async function isOnPath(name: string, searchPath: string = process.env.PATH ?? ''): Promise<boolean> {
  for (const dir of searchPath.split(path.delimiter)) {
    if (dir === '') continue;
    try {
      await access(path.join(dir, name), constants.X_OK);
      return true;
    } catch {
      // not in this directory; keep looking
    }
  }
  return false;
}
