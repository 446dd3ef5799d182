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

/**
 * The access logger: a child of `log` without the redaction pass. Its records are built field by field from
 * addresses, ports, workload names, identities and error messages, never from an object that could carry a key,
 * and redaction was a third of the cost of a line, paid twice for every proxied connection.
 */
export function accessLogger(log: Logger): Logger {
  return log.child({ component: 'access' }, { redact: [] });
}

/** How long a log line may wait in the buffer: access logs are read by people and collectors, not by the data path. */
export const LOG_FLUSH_INTERVAL_MS = 200;

/**
 * Stdout, written in batches of 16 KiB or more (one write per connection's access line would cost a syscall, a
 * thread-pool hand-off and a wake-up of whoever reads the pipe), flushed at least every LOG_FLUSH_INTERVAL_MS and at
 * exit, so nothing is lost.
 */
function bufferedStdout(): DestinationStream {
  const destination = pino.destination({ sync: false, minLength: 16 * 1024, maxWrite: 64 * 1024 });
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
