import type net from 'node:net';
import type { ReadonlyWorkloadStore } from '../core/discovery/index.js';
import type { HboneClient } from '../core/hbone/index.js';
import type { Logger } from '../core/log/index.js';
import type { PolicyStore } from '../core/policy/index.js';
import type { AgentConfig } from './config.js';
import type { ConnectionRegistry } from './connections.js';
import type { EarlyDataBudget } from './early-data.js';
import type { UpstreamConnector } from './proxy.js';
import type { AgentTelemetry } from './telemetry.js';
import type { Address, OutboundContext, Revalidation } from './types.js';

/** What the agent's listeners share; each gets only this bundle, never the CA or the rule manager. */
export interface ProxyInputs {
  config: AgentConfig;
  /** The discovery store's readers only: the sources write it, never a listener. */
  store: ReadonlyWorkloadStore;
  nodeIp: string;
  hbone: HboneClient;
  telemetry: AgentTelemetry;
  /** What the outbound decision reads, built once rather than per connection. */
  outbound: OutboundContext;
  log: Logger;
  /** Every carried connection by its end IPs: a pod leaving the mesh loses its connections. */
  connections: ConnectionRegistry<Revalidation>;
  /** How the agent dials its pods: from the client's address or the node's, as `--upstream-source` says. */
  upstream: UpstreamConnector;
  /** The bytes held for HBONE streams not answered yet, against the agent's cap. */
  earlyData: EarlyDataBudget;
  /** AuthorizationPolicy and PeerAuthentication, decided at the destination: the decision only, not the writers. */
  policies: Pick<PolicyStore, 'decideFacts'>;
  /** SO_ORIGINAL_DST of a captured socket; injected by in-process tests that have no iptables. */
  originalDestination: (socket: net.Socket) => Address;
}
