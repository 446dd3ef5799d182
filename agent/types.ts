import type { Duplex } from 'node:stream';
import type { ReadonlyWorkloadStore } from '../core/discovery/index.js';
import type { InboundDecision } from '../core/policy/index.js';
import type { ConnectionRecord } from './telemetry.js';

/** What the outbound decision needs to know besides the store. */
export interface OutboundContext {
  store: ReadonlyWorkloadStore;
  nodeName: string;
  nodeIp: string;
  /** The agent's own ports on the node's addresses: a captured connection sent to one of them would loop. */
  agentPorts: readonly number[];
  hbonePort: number;
  /** Picks one of several equally good endpoints; injectable so tests are deterministic. */
  pick?: <T>(candidates: readonly T[]) => T;
}

export interface Address {
  host: string;
  port: number;
}

/**
 * An open connection's answer when a policy or workload change asks again: the destination's decision on the store
 * as it is now, or that the pod at one end is gone (another pod has its address now).
 */
export type Reauthorization = { kind: 'decided'; decision: InboundDecision } | { kind: 'gone'; message: string };

/** A reauthorization with the connection it is about, for the log line when it closes the connection. */
export type Revalidation = Reauthorization & { record: ConnectionRecord };

/**
 * What carrying a connection asks of the registry of open connections (ConnectionRegistry): it registers the
 * connection, and notes the epoch at which it was decided.
 */
export interface ConnectionTracker<T> {
  readonly epoch: number;
  track(ips: readonly string[], ends: readonly Duplex[], reauthorize?: () => T | undefined, decidedAt?: number): () => void;
}
