import { parseArgs, type ParseArgsConfig } from 'node:util';

/**
 * One error type for the whole mesh: a stable `code` that scripts and tests match on, a message that names the
 * object and suggests the fix, and the original failure kept as `cause`.
 */
export class AmbitError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AmbitError';
    this.code = code;
  }
}

/**
 * Codes of errors that say the configuration asks for what cannot be had: the CLI exits 2 for them, as for bad usage,
 * since retrying the same configuration cannot help.
 */
export const CONFIGURATION_ERROR_CODES: ReadonlySet<string> = new Set(['USAGE', 'UPSTREAM_SOURCE_UNAVAILABLE']);

/** A usage error (exit 2) that points at the command's help: `ambit <command> --help`. */
export function usageError(command: string, message: string): AmbitError {
  return new AmbitError('USAGE', `${message} (see ambit ${command} --help)`);
}

/** Strict flag parsing for `ambit <command>`: unknown flags and missing values are usage errors, never ignored. */
export function parseFlags<T extends NonNullable<ParseArgsConfig['options']>>(command: string, args: string[], options: T) {
  try {
    return parseArgs({ args, strict: true, allowPositionals: false, options }).values;
  } catch (err) {
    throw usageError(command, err instanceof Error ? err.message : String(err));
  }
}

/** True when `err` is an AmbitError with the given code. */
export function isAmbitError(err: unknown, code?: string): err is AmbitError {
  return err instanceof AmbitError && (code === undefined || err.code === code);
}

/** Node's system errors carry a string code (ECONNREFUSED, EADDRINUSE, ...). */
export function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}
