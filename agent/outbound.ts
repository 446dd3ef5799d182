import { isIPv6, type Socket } from 'node:net';
import type { Service, ServiceEndpoint, Workload } from '../core/discovery/index.js';
import { buildBaggage, formatAuthority, forwardedFor, HboneError, newTraceparent } from '../core/hbone/index.js';
import type { ConnectionFacts } from '../core/policy/index.js';
import { authorize, refusalMessage } from './authorize.js';
import { buildInboundRequest, peerOfWorkload, reauthorizer } from './inbound.js';
import type { ProxyInputs } from './inputs.js';
import { abortStream, carry, connectAndCarry } from './proxy.js';
import type { ConnectionRecord } from './telemetry.js';
import type { Address, OutboundContext } from './types.js';

/**
 * The decision for one captured outbound connection, made before any byte moves:
 * - `hbone`: tunnel to the destination node's agent (`via`), authority `target`, expecting `destination.identity`;
 * - `local`: the destination is an enrolled pod on this node: connect to it directly (no network hop);
 * - `passthrough`: the destination is outside the mesh, or a service whose endpoints the mesh does not know (then
 *   `target` is its VIP): plain TCP to `target`;
 * - `refuse`: no safe way to carry it; the client gets a reset.
 */
export type OutboundRequest =
  | { kind: 'hbone'; source: Workload; destination: Workload; service: Service | undefined; target: Address; via: Address; authority: string }
  | { kind: 'local'; source: Workload; destination: Workload; service: Service | undefined; target: Address }
  | { kind: 'passthrough'; source: Workload; destination: Workload | undefined; service: Service | undefined; target: Address }
  | { kind: 'refuse'; source: Workload | undefined; target: Address; reason: OutboundRefusal; message: string };

export type OutboundRefusal = 'unknown_source' | 'loop' | 'endpoint_loop' | 'no_service_port' | 'no_healthy_endpoint' | 'unknown_destination_node';

/**
 * Whether `address` is one of the agent's own listeners: one of its ports on the node IP, or on another address the
 * Node object lists (by default the listeners bind all of the node's addresses). Sending a captured connection there
 * would connect the agent to itself: back into its capture (15001, 15006), into its HBONE listener in plaintext
 * (15008), or into its metrics and readiness on behalf of a pod. The one rule for where a captured connection may not
 * go, whether the pod dialled the address or a Service's endpoint names it.
 */
function isAgentItself(ctx: OutboundContext, address: Address): boolean {
  if (!ctx.agentPorts.includes(address.port)) return false;
  return address.host === ctx.nodeIp || (ctx.store.node(ctx.nodeName)?.addresses.includes(address.host) ?? false);
}

function pickRandom<T>(candidates: readonly T[]): T {
  return candidates[Math.floor(Math.random() * candidates.length)] as T;
}

/** Pure: decides where a captured connection from `sourceIp` to `original` goes. */
export function buildOutboundRequest(ctx: OutboundContext, sourceIp: string, original: Address): OutboundRequest {
  const { store } = ctx;
  const source = store.workloadByIp(sourceIp);
  if (!source || source.node !== ctx.nodeName || !source.enrolled) {
    return {
      kind: 'refuse',
      source,
      target: original,
      reason: 'unknown_source',
      message: `${sourceIp} is not an enrolled pod on node ${ctx.nodeName}; its rules may be stale`,
    };
  }
  if (isAgentItself(ctx, original)) {
    return { kind: 'refuse', source, target: original, reason: 'loop', message: `${formatAuthority(original.host, original.port)} is the agent itself` };
  }

  let destination: Workload | undefined;
  let target = original;
  const service = store.serviceByVip(original.host);
  if (service) {
    const servicePort = service.ports.find((p) => p.port === original.port && p.protocol === 'TCP');
    if (!servicePort) {
      return {
        kind: 'refuse',
        source,
        target: original,
        reason: 'no_service_port',
        message: `service ${service.namespace}/${service.name} has no TCP port ${original.port}`,
      };
    }
    const endpoints = store.serviceEndpoints(service, original.port);
    if (endpoints === undefined) {
      // The mesh does not know where this service goes (no selector, no EndpointSlice: default/kubernetes without
      // its slice, endpoints managed outside the cluster); the node's service proxy behind the VIP does.
      return { kind: 'passthrough', source, destination: undefined, service, target: original };
    }
    const chosen = chooseEndpoint(ctx, endpoints, isIPv6(original.host));
    if (chosen === 'loop') {
      const itself = endpoints.filter((e) => isAgentItself(ctx, { host: e.ip, port: e.port })).map((e) => formatAuthority(e.ip, e.port));
      return {
        kind: 'refuse',
        source,
        target: original,
        reason: 'endpoint_loop',
        message: `every ready endpoint of service ${service.namespace}/${service.name} for port ${original.port} is this node's agent itself (${itself.join(', ')}): its EndpointSlices name a hostNetwork pod of this node on an agent port`,
      };
    }
    if (!chosen) {
      return {
        kind: 'refuse',
        source,
        target: original,
        reason: 'no_healthy_endpoint',
        message: `service ${service.namespace}/${service.name} has no ready endpoint for port ${original.port}`,
      };
    }
    destination = chosen.workload;
    target = { host: chosen.ip, port: chosen.port };
  } else {
    destination = store.workloadByIp(original.host);
  }

  if (!destination || !destination.enrolled) {
    return { kind: 'passthrough', source, destination, service, target };
  }
  if (destination.node === ctx.nodeName) {
    return { kind: 'local', source, destination, service, target };
  }
  const nodeIp = destination.node ? store.nodeIp(destination.node) : undefined;
  if (!nodeIp) {
    return {
      kind: 'refuse',
      source,
      target,
      reason: 'unknown_destination_node',
      message: `pod ${destination.namespace}/${destination.name} runs on node ${destination.node ?? '(none)'} whose address is unknown`,
    };
  }
  return {
    kind: 'hbone',
    source,
    destination,
    service,
    target,
    via: { host: nodeIp, port: ctx.hbonePort },
    authority: formatAuthority(target.host, target.port),
  };
}

/**
 * Locality first: an endpoint on this node, else in this node's zone, else any; of the family of the VIP dialled,
 * and never the agent itself (`loop` when there are endpoints of the family and all of them are).
 */
function chooseEndpoint(ctx: OutboundContext, endpoints: readonly ServiceEndpoint[], ipv6: boolean): ServiceEndpoint | 'loop' | undefined {
  const pick = ctx.pick ?? pickRandom;
  const ofFamily = endpoints.filter((e) => isIPv6(e.ip) === ipv6);
  const candidates = ofFamily.filter((e) => !isAgentItself(ctx, { host: e.ip, port: e.port }));
  if (candidates.length === 0) return ofFamily.length > 0 ? 'loop' : undefined;
  const local = candidates.filter((e) => e.node === ctx.nodeName);
  if (local.length > 0) return pick(local);
  const zone = ctx.store.nodeZone(ctx.nodeName);
  const sameZone = zone === undefined ? [] : candidates.filter((e) => e.zone === zone);
  return pick(sameZone.length > 0 ? sameZone : candidates);
}

/** A connection captured on 15001: decide, then carry it (HBONE, same-node, passthrough) or reset it. */
export function handleOutbound(inputs: ProxyInputs, socket: Socket): void {
  const { telemetry, config } = inputs;
  socket.on('error', () => undefined);
  const sourceIp = socket.remoteAddress ?? '';
  const sourcePort = socket.remotePort ?? 0;
  let original: Address;
  try {
    original = inputs.originalDestination(socket);
  } catch (err) {
    telemetry.refused('outbound', 'no_original_destination', { source: { ip: sourceIp, port: sourcePort } }, err instanceof Error ? err.message : String(err));
    abortStream(socket);
    return;
  }
  const request = buildOutboundRequest(inputs.outbound, sourceIp, original);
  const source = peerOfWorkload(request.source, sourceIp, sourcePort);
  if (request.kind === 'refuse') {
    telemetry.refused('outbound', request.reason, { source, destination: { ip: request.target.host, port: request.target.port } }, request.message);
    abortStream(socket);
    return;
  }
  const destination = peerOfWorkload(request.destination, request.target.host, request.target.port);
  const service = request.service?.hostname;
  const startedAt = Date.now();

  if (request.kind === 'passthrough') {
    const record: ConnectionRecord = { reporter: 'source', path: 'passthrough', source, destination, service, security: 'none', startedAt };
    connectAndCarry(inputs, 'outbound', [record], socket, request.target);
    return;
  }

  if (request.kind === 'local') {
    // Same node: no network hop, but the same checks and the same metrics as if the bytes had crossed over HBONE.
    const sourceRecord: ConnectionRecord = { reporter: 'source', path: 'local', source, destination, service, security: 'mutual_tls', startedAt };
    const decision = buildInboundRequest(inputs.store, config.nodeName, request.target, request.destination.identity);
    if (decision.kind === 'refuse') {
      telemetry.refused('outbound', decision.reason, sourceRecord, decision.message);
      abortStream(socket);
      return;
    }
    // The agent captured the client from its own pod: its identity is as certain as a TLS peer's.
    const facts: ConnectionFacts = { sourceIp, sourceIdentity: request.source.identity, plaintext: false, destination: decision.destination, target: decision.target };
    const verdict = authorize(inputs, facts);
    if (verdict.decision === 'DENY') {
      telemetry.refused('outbound', verdict.reason, { ...sourceRecord, reporter: 'destination' }, refusalMessage(verdict), { policy: verdict.policy, rule: verdict.rule });
      abortStream(socket);
      return;
    }
    const records = [sourceRecord, { ...sourceRecord, reporter: 'destination' as const }];
    const reauthorize = reauthorizer(
      inputs,
      { workload: decision.destination, ip: decision.target.host },
      (destination) => ({ ...facts, destination }),
      { workload: request.source, ip: sourceIp },
    );
    connectAndCarry(inputs, 'outbound', records, socket, request.target, reauthorize);
    return;
  }

  const hbone = `${request.via.host}:${request.via.port}`;
  const record: ConnectionRecord = { reporter: 'source', path: 'hbone', source, destination, service, hbone, security: 'mutual_tls', startedAt };
  const refused = (err: unknown) => {
    const reason = err instanceof HboneError ? err.reason : 'hbone_failed';
    telemetry.refused('outbound', reason, record, err instanceof Error ? err.message : String(err));
  };
  // The client's bytes go out with the CONNECT, not a round trip after it: the destination agent holds them until
  // it has authorized and connected, and drops them if it refuses.
  inputs.hbone
    .open({
      sourceIdentity: request.source.identity,
      destinationIdentity: request.destination.identity,
      via: request.via,
      authority: request.authority,
      headers: {
        forwarded: forwardedFor(sourceIp, sourcePort),
        baggage: buildBaggage({
          cluster: config.clusterName,
          namespace: request.source.namespace,
          workloadName: request.source.workloadName,
          service: request.source.labels.app,
          version: request.source.labels.version,
        }),
        traceparent: newTraceparent(),
      },
    })
    .then(
      ({ stream, established }) => carry(inputs, { records: [record], downstream: socket, upstream: stream, counted: socket, countedIsClient: true, established, refused }),
      (err: unknown) => {
        refused(err);
        abortStream(socket);
      },
    );
}
