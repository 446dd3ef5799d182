import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/**
 * The process's root logger: JSON lines on stdout (or the given destination). Private keys and tokens are
 * redacted wherever they appear, so a careless `log.info({ cert })` cannot leak them.
 */
export function createLogger(options: { level?: LevelWithSilent; name?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  return pino(
    {
      name: options.name ?? 'ambit',
      level: options.level ?? 'info',
      base: { pid: process.pid },
      redact: {
        paths: ['key', 'privateKey', '*.key', '*.privateKey', 'token', '*.token', 'authorization', '*.authorization'],
        censor: '[redacted]',
      },
    },
    options.destination ?? pino.destination({ sync: false }),
  );
}

/** A logger that drops everything: for unit tests and library callers that pass none. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
