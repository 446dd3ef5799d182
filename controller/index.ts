// `ambit controller`: the only component that watches the cluster; it streams compact records to the agents.
import { createLogger, StdoutDestination } from '../core/log/index.js';
import { untilStopSignal } from '../core/process/index.js';
import { CONTROLLER_USAGE, loadControllerConfig } from './config.js';
import { Controller } from './controller.js';

export { ChangeLog, DEFAULT_HISTORY_VERSIONS, type Delta } from './change-log.js';
export { DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_STREAM_USERS, StreamServer, type Authenticate, type StreamServerOptions, type TokenVerdict } from './stream-server.js';
export { CONTROLLER_USAGE, DEFAULT_CONTROLLER_PORTS, loadControllerConfig, type ControllerConfig } from './config.js';
export { Controller, type ControllerDependencies } from './controller.js';
export { tokenReviewer } from './token-review.js';

/** `ambit controller`: runs until SIGTERM or SIGINT, then stops its watches and streams; returns the exit code. */
export async function runControllerCommand(argv: string[]): Promise<number> {
  const command = loadControllerConfig(process.env, argv);
  if (command.help || !command.config) {
    process.stdout.write(CONTROLLER_USAGE);
    return 0;
  }
  const output = new StdoutDestination();
  const log = createLogger({ level: command.config.logLevel, name: 'ambit-controller', destination: output });
  // listening before the start: a SIGTERM while it starts (a rollout, a test) still shuts down cleanly, after it
  const stopped = untilStopSignal(log);
  // a SIGTERM while it waits for its signing key (a Secret that does not load) ends the wait
  const aborted = new AbortController();
  void stopped.then(() => aborted.abort());
  let controller: Controller;
  try {
    controller = await Controller.start(command.config, { log, signal: aborted.signal });
  } catch (err) {
    if (!aborted.signal.aborted) throw err;
    output.finish();
    return 0;
  }
  await stopped;
  await controller.close();
  output.finish();
  return 0;
}
