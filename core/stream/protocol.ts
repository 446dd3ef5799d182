import { isIP } from 'node:net';
import { AmbitError } from '../errors/index.js';
import { LineSplitter } from '../lines/index.js';
import type { ConvertedObject, DiscoveryChange, DiscoveryKind } from '../discovery/index.js';

/**
 * The discovery stream, controller to agents: one HTTP/2 GET on the controller's port, answered with JSON lines.
 * The agent sends its service-account token (`authorization: Bearer`) and, to resume, the epoch and version it
 * holds (`?epoch=&version=`). The controller answers either
 *   {"t":"snapshot","epoch":E,"version":V}  {"t":"records","changes":[upserts…]}…  {"t":"synced","epoch":E,"version":V}
 * (the whole state, in chunks of at most SNAPSHOT_CHUNK records and MAX_MESSAGE_BYTES; the agent applies it at
 * `synced`, in one batch, so a reader never sees half of it), or
 *   {"t":"resume","epoch":E,"version":V}
 * when it still has every change after the agent's version in that epoch. Then, for as long as the stream lives,
 *   {"t":"delta","version":V,"changes":[…]}   each change to the records once, in version order, and
 *   {"t":"ping","version":V}                  every few seconds, so that a dead stream is noticed by the silence.
 * With `accept-encoding: gzip` the body is `content-encoding: gzip`, every write one whole gzip member (the body their
 * concatenation, which any gzip reader takes): the snapshot compressed once for all the agents that take it at that
 * version, each delta once for all, each member decodable the moment it arrives.
 * Records are the compact ones of core/discovery (a pod's workload record, not the Pod object); policies travel as
 * their Kubernetes objects without status, and each agent converts them as in local mode (so an invalid one stands
 * as deny-all there too). An epoch is one controller process's numbering: versions of two replicas do not compare,
 * so a reconnect to the other replica gets a snapshot.
 */
export const STREAM_PATH = '/ambit.discovery.v1/stream';
/** The ALPN both ends speak. */
export const STREAM_ALPN = 'h2';
/** The audience of the projected token an agent presents (a token for the API server must not work here). */
export const STREAM_TOKEN_AUDIENCE = 'ambit-controller';
/** How often the controller writes a ping on an idle stream. */
export const DEFAULT_PING_INTERVAL_MS = 10_000;
/** An agent that hears nothing for this long (three pings) drops the stream and connects again. */
export const DEFAULT_SILENCE_DEADLINE_MS = 30_000;
/** Upserts per `records` line of a snapshot at most: lines stay small enough to parse without a long pause. */
export const SNAPSHOT_CHUNK = 500;
/**
 * The most JSON of changes the controller puts in one line (a delta, or a snapshot's chunk), far below what an agent
 * reads (MAX_LINE_BYTES): a relist of a big cluster, or a few large policies, becomes several lines.
 */
export const MAX_MESSAGE_BYTES = 1024 * 1024;
/** The longest line an agent accepts; a record is far smaller, so a longer one is a broken stream. */
export const MAX_LINE_BYTES = 8 * 1024 * 1024;

/** A policy object as it travels: the Kubernetes object without status or managedFields. */
export interface PolicyRecord {
  /** `apiVersion kind namespace/name`: unique across the policy kinds and API groups. */
  readonly key: string;
  readonly object: Readonly<Record<string, unknown>>;
}

/** One change of the stream: a discovery record, or a policy. */
export type StreamChange =
  | DiscoveryChange
  | { readonly op: 'upsert'; readonly kind: 'Policy'; readonly policy: PolicyRecord }
  | { readonly op: 'delete'; readonly kind: 'Policy'; readonly key: string };

export type StreamMessage =
  | { readonly t: 'snapshot'; readonly epoch: string; readonly version: number }
  | { readonly t: 'records'; readonly changes: readonly StreamChange[] }
  | { readonly t: 'synced'; readonly epoch: string; readonly version: number }
  | { readonly t: 'resume'; readonly epoch: string; readonly version: number }
  | { readonly t: 'delta'; readonly version: number; readonly changes: readonly StreamChange[] }
  | { readonly t: 'ping'; readonly version: number };

/** One message as a line of the stream. */
export function encodeMessage(message: StreamMessage): string {
  return `${JSON.stringify(message)}\n`;
}

const DISCOVERY_KINDS: ReadonlySet<string> = new Set<DiscoveryKind>(['Namespace', 'Pod', 'Service', 'Node', 'EndpointSlice']);
const NAMESPACED: ReadonlySet<string> = new Set(['Pod', 'Service', 'EndpointSlice']);

/**
 * Parses and checks one line from the controller. The controller proved its identity in the TLS handshake, but a
 * record that the store would choke on (or that would capture the wrong addresses) must not get that far: each
 * record's shape is checked here, the fields the data path keys on (names, IPs) strictly. A bad line throws
 * STREAM_PROTOCOL_ERROR, and the agent drops the stream and keeps its last good state.
 */
export function parseMessage(line: string): StreamMessage {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (err) {
    throw protocolError(`a line is not JSON (${(err as Error).message})`);
  }
  if (!isObject(value)) throw protocolError('a line is not a JSON object');
  switch (value.t) {
    case 'snapshot':
    case 'synced':
    case 'resume':
      return { t: value.t, epoch: epochOf(value), version: versionOf(value) };
    case 'ping':
      return { t: 'ping', version: versionOf(value) };
    case 'records':
      return { t: 'records', changes: changesOf(value) };
    case 'delta':
      return { t: 'delta', version: versionOf(value), changes: changesOf(value) };
    default:
      throw protocolError(`unknown message type ${JSON.stringify(value.t)}`);
  }
}

function epochOf(message: Record<string, unknown>): string {
  const epoch = message.epoch;
  if (typeof epoch !== 'string' || !/^[A-Za-z0-9-]{1,64}$/.test(epoch)) throw protocolError(`bad epoch ${JSON.stringify(epoch)}`);
  return epoch;
}

function versionOf(message: Record<string, unknown>): number {
  const version = message.version;
  if (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 0) throw protocolError(`bad version ${JSON.stringify(version)}`);
  return version;
}

function changesOf(message: Record<string, unknown>): StreamChange[] {
  const changes = message.changes;
  if (!Array.isArray(changes)) throw protocolError(`${String(message.t)}: changes is not an array`);
  return changes.map((change, index) => checkChange(change, `${String(message.t)} change ${index}`));
}

function checkChange(change: unknown, where: string): StreamChange {
  if (!isObject(change)) throw protocolError(`${where} is not an object`);
  const { op, kind } = change;
  if (op !== 'upsert' && op !== 'delete') throw protocolError(`${where}: op ${JSON.stringify(op)} is neither upsert nor delete`);
  if (kind === 'Policy') {
    if (op === 'delete') return { op, kind, key: name(change.key, `${where}.key`) };
    const policy = change.policy;
    if (!isObject(policy) || !isObject(policy.object)) throw protocolError(`${where}: a policy upsert carries no object`);
    return { op, kind, policy: { key: name(policy.key, `${where}.policy.key`), object: policy.object } };
  }
  if (typeof kind !== 'string' || !DISCOVERY_KINDS.has(kind)) throw protocolError(`${where}: unknown kind ${JSON.stringify(kind)}`);
  const discoveryKind = kind as DiscoveryKind;
  if (op === 'delete') {
    return NAMESPACED.has(kind)
      ? { op, kind: discoveryKind, namespace: name(change.namespace, `${where}.namespace`), name: name(change.name, `${where}.name`) }
      : { op, kind: discoveryKind, name: name(change.name, `${where}.name`) };
  }
  const object = change.object;
  if (!isObject(object)) throw protocolError(`${where}: an upsert carries no object`);
  checkRecord(discoveryKind, object, where);
  return { op, ...({ kind: discoveryKind, object } as unknown as ConvertedObject) };
}

/** The fields the store keys on and the data path matches addresses by; the rest the store reads as it is. */
function checkRecord(kind: DiscoveryKind, object: Record<string, unknown>, where: string): void {
  name(object.name, `${where} (${kind}).name`);
  if (NAMESPACED.has(kind)) name(object.namespace, `${where} (${kind}).namespace`);
  const labels = object.labels;
  if (labels !== undefined && !(isObject(labels) && Object.values(labels).every((v) => typeof v === 'string'))) {
    throw protocolError(`${where} (${kind}).labels is not a map of strings`);
  }
  if (kind === 'Pod') {
    addresses(object.ips, `${where} (Pod).ips`);
    for (const field of ['uid', 'workloadName', 'serviceAccount', 'identity'] as const) name(object[field], `${where} (Pod).${field}`);
    for (const field of ['hostNetwork', 'ready', 'terminated'] as const) {
      if (typeof object[field] !== 'boolean') throw protocolError(`${where} (Pod).${field} is not a boolean`);
    }
    ports(object.containerPorts, `${where} (Pod).containerPorts`);
  }
  if (kind === 'Service') {
    addresses(object.vips, `${where} (Service).vips`);
    ports(object.ports, `${where} (Service).ports`);
  }
  if (kind === 'Node') addresses(object.addresses, `${where} (Node).addresses`);
  if (kind === 'EndpointSlice') {
    ports(object.ports, `${where} (EndpointSlice).ports`);
    const endpoints = object.endpoints;
    if (!Array.isArray(endpoints)) throw protocolError(`${where} (EndpointSlice).endpoints is not an array`);
    addresses(endpoints.map((endpoint: unknown) => (isObject(endpoint) ? endpoint.ip : undefined)), `${where} (EndpointSlice).endpoints[].ip`);
  }
}

/** A list of ports: objects with a TCP/UDP port number and a protocol, as the store reads them. */
function ports(value: unknown, where: string): void {
  const valid = (port: unknown) =>
    isObject(port) && Number.isInteger(port.port) && (port.port as number) >= 1 && (port.port as number) <= 65535 && typeof port.protocol === 'string';
  if (!Array.isArray(value) || !value.every(valid)) throw protocolError(`${where} is not a list of ports (port 1-65535, protocol)`);
}

function name(value: unknown, where: string): string {
  if (typeof value !== 'string' || value === '' || value.length > 512) throw protocolError(`${where} is not a non-empty string`);
  return value;
}

function addresses(value: unknown, where: string): void {
  if (!Array.isArray(value) || !value.every((address) => typeof address === 'string' && isIP(address) !== 0)) {
    throw protocolError(`${where} is not a list of IP addresses`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function protocolError(message: string): AmbitError {
  return new AmbitError('STREAM_PROTOCOL_ERROR', `discovery stream: ${message}`);
}

/** A splitter for the discovery stream's lines: at most MAX_LINE_BYTES of an unfinished one. */
export function streamLineSplitter(maxLength = MAX_LINE_BYTES): LineSplitter {
  return new LineSplitter({ maxLength, code: 'STREAM_PROTOCOL_ERROR', what: 'discovery stream: a line' });
}

/** What a change is about: one record per key, across kinds. */
export function changeKey(change: StreamChange): string {
  if (change.kind === 'Policy') return `Policy ${change.op === 'delete' ? change.key : change.policy.key}`;
  if (change.op === 'delete') return `${change.kind} ${change.namespace === undefined ? '' : `${change.namespace}/`}${change.name}`;
  const object = change.object as { namespace?: string; name: string };
  return `${change.kind} ${object.namespace === undefined || change.kind === 'Namespace' || change.kind === 'Node' ? '' : `${object.namespace}/`}${object.name}`;
}
