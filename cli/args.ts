import { parseArgs, type ParseArgsConfig } from 'node:util';
import { parseFlags, usageError } from '../core/errors/index.js';

export { parseFlags, usageError };

/**
 * The subcommand of `ambit <command> <sub> ...`: returns it with the rest of the arguments, or the exit code after
 * printing the usage (no subcommand: 2; --help: 0). An unknown subcommand is a usage error.
 */
export function subcommand(command: string, argv: string[], known: readonly string[], usage: string): { sub: string; rest: string[] } | number {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '-h' || sub === '--help') {
    process.stdout.write(usage);
    return sub === undefined ? 2 : 0;
  }
  if (!known.includes(sub)) throw usageError(command, `unknown ${command} command '${sub}'`);
  return { sub, rest };
}

/** Strict parsing of flags and positional arguments (`ambit enroll NAMESPACE --dry-run`); unknown flags are usage errors. */
export function parseCommandLine<T extends NonNullable<ParseArgsConfig['options']>>(command: string, args: string[], options: T) {
  try {
    return parseArgs({ args, strict: true, allowPositionals: true, options });
  } catch (err) {
    throw usageError(command, err instanceof Error ? err.message : String(err));
  }
}
