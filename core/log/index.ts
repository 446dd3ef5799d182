/** Logging: one pino root logger a process, `child({ component })` a module, access logs, a bounded stdout. */
export {
  accessLogger,
  createLogger,
  LineBatcher,
  LOG_BATCH_BYTES,
  LOG_BUFFER_LIMIT_BYTES,
  LOG_EXIT_FLUSH_MS,
  LOG_FLUSH_INTERVAL_MS,
  LOG_LEVELS,
  registerLogMetrics,
  silentLogger,
  StdoutDestination,
  type LogDrops,
  type Logger,
  type LogLevel,
} from './log.js';
