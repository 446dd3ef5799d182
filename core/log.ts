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
/** How much the batcher collects before it hands lines on (one write, one thread-pool hand-off per batch). */
export const LOG_BATCH_BYTES = 16 * 1024;

/**
 * Collects log lines and hands them to `target` joined, LOG_BATCH_BYTES or more at a time (and whenever flushed).
 * pino's destination (sonic-boom) appends each line to the string it is buffering and measures that string's byte
 * length on every write, which copies the whole buffer per line: about 16 KB of garbage per access line, a quarter of
 * all an agent allocated per short connection, and its young-generation collections with it. Joined batches leave
 * sonic-boom one flat string per batch; it still does the writing (partial writes, EAGAIN, the final sync flush).
 */
export class LineBatcher {
  readonly #target: { write(data: string): unknown };
  readonly #minLength: number;
  #lines: string[] = [];
  #length = 0;

  constructor(target: { write(data: string): unknown }, minLength = LOG_BATCH_BYTES) {
    this.#target = target;
    this.#minLength = minLength;
  }

  write(line: string): boolean {
    this.#lines.push(line);
    this.#length += line.length;
    if (this.#length >= this.#minLength) this.flush();
    return true;
  }

  /** Hands every collected line to the target, in order. */
  flush(): void {
    if (this.#lines.length === 0) return;
    const batch = this.#lines.join('');
    this.#lines = [];
    this.#length = 0;
    this.#target.write(batch);
  }
}

/**
 * Stdout, written in batches (one write per connection's access line would cost a syscall, a thread-pool hand-off
 * and a wake-up of whoever reads the pipe), flushed at least every LOG_FLUSH_INTERVAL_MS and at exit, so nothing is
 * lost.
 */
function bufferedStdout(): DestinationStream {
  // Hooked before pino's own exit hooks (registered when the destination is made), so that the lines still in the
  // batcher reach the destination before pino ends it (beforeExit) or flushes it for the last time (exit).
  const handOver = () => {
    try {
      batcher.flush();
    } catch {
      // The destination is gone (stdout closed, or ended at beforeExit): there is nowhere left to write.
    }
  };
  process.once('beforeExit', handOver);
  process.once('exit', () => {
    clearInterval(timer);
    handOver();
    try {
      destination.flushSync();
    } catch {
      // As above.
    }
  });
  const destination = pino.destination({ sync: false, minLength: 0, maxWrite: 64 * 1024 });
  const batcher = new LineBatcher(destination);
  const timer = setInterval(handOver, LOG_FLUSH_INTERVAL_MS);
  timer.unref();
  return batcher;
}

/** A logger that drops everything: for unit tests and library callers that pass none. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
