import type { Logger } from '../log/index.js';

/** Resolves at the first SIGTERM or SIGINT, logged; the handlers go with it. How a program's process waits to stop. */
export function untilStopSignal(log: Logger): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      log.info({ signal }, 'shutting down');
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      resolve(signal);
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}
