import { createLogger, StdoutDestination } from '../core/log/index.js';
import { untilStopSignal } from '../core/process/index.js';
import { Agent } from './agent.js';
import { AGENT_USAGE, loadAgentConfig } from './config.js';
import { removeRedirectRules } from './rules/index.js';

export { Agent, type AgentDependencies } from './agent.js';
export { AGENT_ENV, AGENT_NODE_FLAGS, AGENT_STARTED_LOG, AGENT_USAGE, DEFAULT_PORTS, loadAgentConfig, type AgentConfig, type AgentPorts } from './config.js';
export { buildOutboundRequest, type OutboundRequest } from './outbound.js';
export type { OutboundContext } from './types.js';
export { buildInboundRequest, type InboundRequest } from './inbound.js';
export { AgentTelemetry, type ConnectionRecord } from './telemetry.js';
export { describeRemovalPlan, planRulesRemoval, RedirectRules, removeRedirectRules, type RulesRemovalPlan } from './rules/index.js';

/**
 * `ambit agent`: runs until SIGTERM or SIGINT, then shuts down cleanly (rules kept unless --remove-rules-on-exit,
 * so traffic stays captured and refused while the agent restarts); returns the exit code.
 */
export async function runAgentCommand(argv: string[]): Promise<number> {
  const command = loadAgentConfig(process.env, argv);
  if (command.help || !command.config) {
    process.stdout.write(AGENT_USAGE);
    return 0;
  }
  const config = command.config;
  const logOutput = new StdoutDestination();
  const log = createLogger({ level: config.logLevel, name: 'ambit-agent', destination: logOutput });
  if (command.cleanup) {
    await removeRedirectRules({ backend: config.iptablesBackend, log });
    log.info('removed Ambit redirect rules and ipsets');
    return 0;
  }
  // listening before the start: a SIGTERM while it starts (a rollout, a test) still shuts down cleanly, after it
  const stopped = untilStopSignal(log);
  const agent = await Agent.start(config, { log, logDrops: logOutput });
  await stopped;
  await agent.close();
  logOutput.finish();
  return 0;
}
export { AGENT_STATUS_SCHEMA, parseAgentStatus, type AgentStatus, type RulesStatus, type WorkloadStatus } from './status.js';
