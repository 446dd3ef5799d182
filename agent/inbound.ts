import type http2 from 'node:http2';
import type net from 'node:net';
import type { ReadonlyWorkloadStore, Workload } from '../core/discovery/index.js';
import type { ConnectionFacts } from '../core/policy/index.js';
import { HBONE_EARLY_DATA_STREAM_BYTES, refuseStream, type HboneInboundRequest } from '../core/hbone/index.js';
import { authorize, describePolicy, refusalMessage } from './authorize.js';
import { EARLY_DATA_AGENT_BYTES, EarlyData } from './early-data.js';
import type { ProxyInputs } from './inputs.js';
import { abortStream, carry, connectAndCarry, upstreamFailure } from './proxy.js';
import type { ConnectionRecord, Peer } from './telemetry.js';
import type { Address, Reauthorization } from './types.js';

export type InboundRefusal = 'unknown_destination' | 'not_local' | 'not_enrolled' | 'identity_mismatch';

export type InboundRequest =
  | { kind: 'deliver'; destination: Workload; target: Address }
  | { kind: 'refuse'; status: number; reason: InboundRefusal; message: string };

/**
 * Pure: may a connection to `target` be delivered on this node? The target must be an enrolled pod of this node,
 * and when the connection came over HBONE, that pod must have the identity the TLS session was opened for, so a
 * client that holds a certificate for one workload cannot reach another behind the same node listener.
 */
export function buildInboundRequest(store: ReadonlyWorkloadStore, nodeName: string, target: Address, sessionIdentity?: string): InboundRequest {
  const destination = store.workloadByIp(target.host);
  if (!destination) {
    return { kind: 'refuse', status: 404, reason: 'unknown_destination', message: `${target.host} is not a known pod` };
  }
  if (destination.node !== nodeName) {
    return { kind: 'refuse', status: 404, reason: 'not_local', message: `pod ${destination.namespace}/${destination.name} is not on node ${nodeName}` };
  }
  if (!destination.enrolled) {
    return { kind: 'refuse', status: 403, reason: 'not_enrolled', message: `pod ${destination.namespace}/${destination.name} is not in the mesh` };
  }
  if (sessionIdentity !== undefined && destination.identity !== sessionIdentity) {
    return {
      kind: 'refuse',
      status: 403,
      reason: 'identity_mismatch',
      message: `pod ${destination.namespace}/${destination.name} has identity ${destination.identity}, the TLS session was for ${sessionIdentity}`,
    };
  }
  return { kind: 'deliver', destination, target };
}

type CurrentWorkload = { kind: 'current'; workload: Workload } | { kind: 'left' } | { kind: 'gone'; message: string };

/** The pod at one end of an open connection, as the store has it now: looked up by address, the same pod by uid. */
function currentWorkload(inputs: ProxyInputs, opened: Workload, ip: string): CurrentWorkload {
  const now = inputs.store.workloadByIp(ip);
  // No longer an enrolled pod of this node: the reconcile closes the connection cleanly (FIN), with the others of a
  // pod that left the mesh.
  if (now === undefined || !now.enrolled || now.node !== inputs.config.nodeName) return { kind: 'left' };
  if (now.uid !== opened.uid) return { kind: 'gone', message: `pod ${opened.namespace}/${opened.name} is gone; ${ip} is pod ${now.namespace}/${now.name} now` };
  return { kind: 'current', workload: now };
}

/**
 * Decides an open connection again, after a policy or workload change, on the store as it is now: its destination
 * (and, for a same-node connection, its source) looked up again by address, so that a relabelled pod is judged on
 * the labels it has now, and a pod that is gone is not judged at all. Undefined when an end left the mesh.
 */
export function reauthorizer(
  inputs: ProxyInputs,
  destination: { workload: Workload; ip: string },
  factsFor: (destination: Workload) => ConnectionFacts,
  source?: { workload: Workload; ip: string },
): () => Reauthorization | undefined {
  return () => {
    const to = currentWorkload(inputs, destination.workload, destination.ip);
    const from = source === undefined ? undefined : currentWorkload(inputs, source.workload, source.ip);
    if (to.kind === 'left' || from?.kind === 'left') return undefined;
    if (to.kind === 'gone') return to;
    if (from?.kind === 'gone') return from;
    return { kind: 'decided', decision: authorize(inputs, factsFor(to.workload)) };
  };
}

export function peerOfWorkload(workload: Workload | undefined, ip: string, port: number): Peer {
  if (!workload) return { ip, port };
  return { ip, port, workload: workload.workloadName, namespace: workload.namespace, identity: workload.identity, app: workload.labels.app };
}

/**
 * The client an HBONE stream speaks for, as the `forwarded` header names it, but only when the TLS peer is that
 * client's own identity: any mesh workload can write the header, and a pod must not be shown an address (and pass
 * a NetworkPolicy) on the word of a workload that does not own it.
 */
export function verifiedHboneClient(sourceWorkload: Workload | undefined, request: HboneInboundRequest): string | undefined {
  if (request.forwardedFor === undefined || sourceWorkload === undefined) return undefined;
  return sourceWorkload.identity === request.peerIdentity ? request.forwardedFor.host : undefined;
}

/**
 * Why an HBONE stream's client cannot be the source of its connection to the pod: no `forwarded` header, one that
 * names an address the TLS peer does not own, or an owned address that cannot be bound (see transparentSourceFor).
 */
function unverifiedSourceMessage(request: HboneInboundRequest, verifiedClient: string | undefined): string {
  const client = request.forwardedFor;
  const why =
    client === undefined
      ? 'the CONNECT names no client (no forwarded header)'
      : verifiedClient === undefined
        ? `${request.peerIdentity} does not own ${client.host}, the client its forwarded header names`
        : `${client.host} cannot be the source of a connection to ${request.target.host} (IPv4 only, neither the node's nor the pod's own address)`;
  return `${why}: with --upstream-source transparent the pod is not shown the node's address instead`;
}

/** An HBONE CONNECT that the server accepted at the protocol level: check it, connect to the pod, splice. */
export function handleHboneConnect(inputs: ProxyInputs, stream: http2.ServerHttp2Stream, request: HboneInboundRequest): void {
  const { telemetry } = inputs;
  const client = request.forwardedFor;
  const claimedWorkload = client ? inputs.store.workloadByIp(client.host) : undefined;
  const verifiedClient = verifiedHboneClient(claimedWorkload, request);
  // Telemetry, like policy, takes the forwarded client only when the TLS identity owns it: otherwise any mesh
  // workload could have the access log and the istio_* series name another workload as the source.
  const sourceWorkload = verifiedClient === undefined ? undefined : claimedWorkload;
  const source: Peer = {
    ...peerOfWorkload(sourceWorkload, verifiedClient ?? request.remoteAddress, verifiedClient === undefined ? 0 : (client?.port ?? 0)),
    identity: request.peerIdentity,
  };
  const decision = buildInboundRequest(inputs.store, inputs.config.nodeName, request.target, request.localIdentity);
  if (decision.kind === 'refuse') {
    telemetry.refused('hbone', decision.reason, { path: 'hbone', source, destination: { ip: request.target.host, port: request.target.port }, hbone: request.remoteAddress }, decision.message);
    refuseStream(stream, decision.status, decision.reason);
    return;
  }
  const record: ConnectionRecord = {
    reporter: 'destination',
    path: 'hbone',
    source,
    destination: peerOfWorkload(decision.destination, decision.target.host, decision.target.port),
    hbone: request.remoteAddress,
    security: 'mutual_tls',
    startedAt: Date.now(),
  };
  // Transparent: the pod sees its real client or nothing. From the node's address, the stream would pass the pod's
  // ingress NetworkPolicy (most CNIs let the node through) on the word of a peer that proved no client.
  if (inputs.upstream.transparent && inputs.upstream.sourceFor(decision.target, verifiedClient) === undefined) {
    telemetry.refused('hbone', 'source_unverified', record, unverifiedSourceMessage(request, verifiedClient));
    refuseStream(stream, 403, 'source_unverified');
    return;
  }
  // The forwarded address counts only when the TLS identity owns it; otherwise the HBONE peer (its node) is the source
  // (only with --upstream-source node, which then delivers from the node's address).
  const factsFor = (destination: Workload, verified: string | undefined): ConnectionFacts => ({
    sourceIp: verified ?? request.remoteAddress,
    sourceIdentity: request.peerIdentity,
    plaintext: false,
    destination,
    target: decision.target,
  });
  const verdict = authorize(inputs, factsFor(decision.destination, verifiedClient));
  const decidedAt = inputs.connections.epoch;
  if (verdict.decision === 'DENY') {
    telemetry.refused('hbone', verdict.reason, record, refusalMessage(verdict), { policy: verdict.policy, rule: verdict.rule });
    refuseStream(stream, 403, verdict.reason, describePolicy(verdict));
    return;
  }
  const early = new EarlyData(stream, inputs.earlyData, (reason) => {
    const message =
      reason === 'early_data_limit'
        ? `the stream sent more than ${HBONE_EARLY_DATA_STREAM_BYTES} bytes before its answer`
        : `the agent already holds ${EARLY_DATA_AGENT_BYTES} bytes for streams it has not answered`;
    telemetry.refused('hbone', reason, record, message);
    refuseStream(stream, reason === 'early_data_limit' ? 413 : 503, reason);
  });
  inputs.upstream.connect(decision.target, verifiedClient).then(
    (upstream) => {
      if (early.refused || stream.destroyed || stream.closed) {
        early.drop();
        upstream.destroy();
        return;
      }
      stream.respond({ ':status': 200 });
      // Asked again, the client's address counts only if the TLS identity still owns it.
      const reauthorize = reauthorizer(inputs, { workload: decision.destination, ip: decision.target.host }, (destination) =>
        factsFor(destination, verifiedHboneClient(client ? inputs.store.workloadByIp(client.host) : undefined, request)),
      );
      // The held bytes go first, before the splice reads on from the stream (in this same turn, so none overtakes).
      const { chunks, ended } = early.take();
      for (const chunk of chunks) upstream.write(chunk);
      if (ended) upstream.end();
      carry(inputs, { records: [record], downstream: stream, upstream, counted: upstream, countedIsClient: false, reauthorize, decidedAt });
    },
    (err: unknown) => {
      early.drop();
      if (early.refused) return;
      const failure = upstreamFailure(err);
      telemetry.refused('hbone', failure.reason, record, err instanceof Error ? err.message : String(err));
      refuseStream(stream, failure.status, failure.reason);
    },
  );
}

/** A plaintext connection captured on its way into an enrolled pod (port 15006): PERMISSIVE for now, counted. */
export function handlePlaintextInbound(inputs: ProxyInputs, socket: net.Socket): void {
  const { telemetry } = inputs;
  socket.on('error', () => undefined);
  // Plaintext proves no identity, whatever pod the address belongs to.
  const source: Peer = { ...peerOfWorkload(inputs.store.workloadByIp(socket.remoteAddress ?? ''), socket.remoteAddress ?? '', socket.remotePort ?? 0), identity: undefined };
  let target: Address;
  try {
    target = inputs.originalDestination(socket);
  } catch (err) {
    telemetry.refused('inbound', 'no_original_destination', { path: 'plaintext', source }, err instanceof Error ? err.message : String(err));
    abortStream(socket);
    return;
  }
  const decision = buildInboundRequest(inputs.store, inputs.config.nodeName, target);
  if (decision.kind === 'refuse') {
    telemetry.refused('inbound', decision.reason, { path: 'plaintext', source, destination: { ip: target.host, port: target.port } }, decision.message);
    abortStream(socket);
    return;
  }
  const record: ConnectionRecord = {
    reporter: 'destination',
    path: 'plaintext',
    source,
    destination: peerOfWorkload(decision.destination, target.host, target.port),
    security: 'none',
    startedAt: Date.now(),
  };
  // Before the upstream connect: STRICT refuses plaintext, then AuthorizationPolicy decides with no identity.
  const facts: ConnectionFacts = { sourceIp: source.ip, plaintext: true, destination: decision.destination, target: decision.target };
  const verdict = authorize(inputs, facts);
  if (verdict.decision === 'DENY') {
    telemetry.refused('inbound', verdict.reason, record, refusalMessage(verdict), { policy: verdict.policy, rule: verdict.rule });
    abortStream(socket);
    return;
  }
  const reauthorize = reauthorizer(inputs, { workload: decision.destination, ip: target.host }, (destination) => ({ ...facts, destination }));
  connectAndCarry(inputs, 'inbound', [record], socket, decision.target, reauthorize);
}
