import { pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';
import { Counter, type Registry } from 'prom-client';

export type { Logger };

/**
 * The process's root logger: JSON lines on stdout (or the given destination). Private keys and tokens are
 * redacted wherever they appear, so a careless `log.info({ cert })` cannot leak them.
 */
/** The levels a `--log-level` flag may name. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function createLogger(options: { level?: LevelWithSilent; name?: string; destination?: DestinationStream } = {}): Logger {
  const destination = options.destination ?? new StdoutDestination();
  const log = pino(
    {
      name: options.name ?? 'ambit',
      level: options.level ?? 'info',
      base: { pid: process.pid },
      redact: {
        paths: ['key', 'privateKey', '*.key', '*.privateKey', 'token', '*.token', 'authorization', '*.authorization'],
        censor: '[redacted]',
      },
    },
    destination,
  );
  if (destination instanceof StdoutDestination) destination.reportDropsTo(log);
  return log;
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
 * How many bytes of log lines may wait for stdout. A log collector that stalls must not grow the agent's heap with
 * every access line: past this the lines are dropped, counted (`droppedLines`, ambit_log_dropped_lines_total) and,
 * once stdout has caught up, reported in one log line. Several seconds of a busy agent's lines: a collector that
 * is merely slow loses nothing.
 */
export const LOG_BUFFER_LIMIT_BYTES = 8 * 1024 * 1024;

/** How long, at the end of the process, stdout gets to take the lines still waiting for it. */
export const LOG_EXIT_FLUSH_MS = 2_000;

/** A log destination that may have to drop lines, and says how many it dropped so far. */
export interface LogDrops {
  readonly droppedLines: number;
}

function countLines(data: string): number {
  let count = 0;
  for (let i = data.indexOf('\n'); i !== -1; i = data.indexOf('\n', i + 1)) count++;
  return count;
}

/**
 * Stdout, written in batches (one write per connection's access line would cost a syscall, a thread-pool hand-off
 * and a wake-up of whoever reads the pipe), flushed at least every LOG_FLUSH_INTERVAL_MS and at exit, so nothing is
 * lost while stdout keeps up. Writes never wait: sonic-boom writes from the thread pool, and holds at most
 * LOG_BUFFER_LIMIT_BYTES (it drops a whole batch that would go past it).
 */
export class StdoutDestination implements DestinationStream, LogDrops {
  readonly #batcher: LineBatcher;
  #dropped = 0;
  /** Lines dropped since the last report, and when the first of them was. */
  #unreported = 0;
  #droppingSince = 0;
  #report: Logger | undefined;
  /** Set when the process ends: stdout is waited for until then, no longer. */
  #giveUpAt: number | undefined;

  constructor() {
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
      this.finish();
      clearInterval(timer);
      handOver();
      try {
        destination.flushSync();
      } catch {
        // Stdout does not take the rest (it stalls, or it is closed). Destroyed, pino does not try again either.
        destination.destroy();
      }
    });
    const destination = pino.destination({
      sync: false,
      minLength: 0,
      maxWrite: 64 * 1024,
      maxLength: LOG_BUFFER_LIMIT_BYTES,
      // A stalled stdout is retried every 100 ms (and its retries keep the process alive) until the process ends.
      retryEAGAIN: () => this.#giveUpAt === undefined || Date.now() < this.#giveUpAt,
    });
    destination.on('error', (err: Error) => {
      // A write given up at the end (above) is no failure; any other is as loud as it was without this listener.
      if (this.#giveUpAt === undefined) throw err;
    });
    destination.on('drop', (data: string) => {
      if (this.#unreported === 0) this.#droppingSince = Date.now();
      const lines = countLines(data);
      this.#dropped += lines;
      this.#unreported += lines;
    });
    // Everything that waited has been written: stdout keeps up again.
    destination.on('drain', () => {
      if (this.#unreported > 0) this.#reportDrops();
    });
    const batcher = new LineBatcher(destination);
    this.#batcher = batcher;
    const timer = setInterval(handOver, LOG_FLUSH_INTERVAL_MS);
    timer.unref();
  }

  write(line: string): boolean {
    return this.#batcher.write(line);
  }

  get droppedLines(): number {
    return this.#dropped;
  }

  /**
   * The process is ending: stdout gets LOG_EXIT_FLUSH_MS more to take what waits, then it is given up. Without this a
   * stalled stdout would keep the process alive (sonic-boom's retries are timers) or block its exit (the last flush).
   */
  finish(): void {
    this.#giveUpAt ??= Date.now() + LOG_EXIT_FLUSH_MS;
  }

  /** The logger that says, once stdout has caught up, how many lines were dropped (createLogger sets it). */
  reportDropsTo(log: Logger): void {
    this.#report = log;
  }

  #reportDrops(): void {
    const droppedLines = this.#unreported;
    this.#unreported = 0;
    this.#report?.warn(
      { component: 'log', droppedLines, droppedSince: new Date(this.#droppingSince).toISOString() },
      `stdout did not keep up: ${droppedLines} log lines were dropped (ambit_log_dropped_lines_total counts them all)`,
    );
  }
}

/** Counts, on `registry`, the lines `destination` dropped: ambit_log_dropped_lines_total. */
export function registerLogMetrics(registry: Registry, destination: LogDrops): void {
  let counted = 0;
  new Counter({
    name: 'ambit_log_dropped_lines_total',
    help: `Log lines dropped because stdout did not take them (more than ${LOG_BUFFER_LIMIT_BYTES} bytes were waiting)`,
    registers: [registry],
    collect() {
      const dropped = destination.droppedLines;
      this.inc(dropped - counted);
      counted = dropped;
    },
  });
}

/** A logger that drops everything: for unit tests and library callers that pass none. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
