import { pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/**
 * The process's root logger: JSON lines on stdout (or the given destination). Private keys and tokens are
 * redacted wherever they appear, so a careless `log.info({ cert })` cannot leak them.
 */
export function createLogger(options: { level?: LevelWithSilent; name?: string; destination?: DestinationStream } = {}): Logger {
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
    options.destination ?? bufferedStdout(),
  );
}

/** How long a log line may wait in the buffer: access logs are read by people and collectors, not by the data path. */
export const LOG_FLUSH_INTERVAL_MS = 200;

/**
 * Stdout, written in batches of up to 4 KiB (one write per connection's access line costs a syscall and a context
 * switch for whoever reads the pipe), flushed at least every LOG_FLUSH_INTERVAL_MS and at exit, so nothing is lost.
 */
function bufferedStdout(): DestinationStream {
  const destination = pino.destination({ sync: false, minLength: 4096 });
  const timer = setInterval(() => {
    // flush() with nothing buffered is a no-op; while a write is in flight it waits for that write.
    destination.flush();
  }, LOG_FLUSH_INTERVAL_MS);
  timer.unref();
  process.once('exit', () => {
    clearInterval(timer);
    destination.flushSync();
  });
  return destination;
}

/** A logger that drops everything: for unit tests and library callers that pass none. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
