import net from 'node:net';
import { randomBytes } from 'node:crypto';

/** The response header that says why a CONNECT was refused, so a refusal is never an unexplained 4xx/5xx. */
export const REASON_HEADER = 'ambit-reason';
/** On a refusal by policy: which policy and rule decided (`ns/name`, `ns/name rule 2`, or `default`). */
export const POLICY_HEADER = 'ambit-policy';
/**
 * How many bytes of a client's first data may travel on a CONNECT stream before its 200: the source sends no more,
 * and the destination, which holds them while it authorizes and connects, refuses a stream that sends more. Enough
 * for a request (or a TLS ClientHello); a larger upload waits one round trip for the answer.
 */
export const HBONE_EARLY_DATA_STREAM_BYTES = 64 * 1024;

/** The request headers Istio's HBONE carries besides `:authority`. */
export interface HboneHeaders {
  forwarded?: string;
  baggage?: string;
  traceparent?: string;
}

export interface Authority {
  host: string;
  port: number;
}

/** `10.0.0.1:80` or `[fd00::1]:80` → host and port; undefined for anything else (names are not accepted). */
export function parseAuthority(authority: string | undefined): Authority | undefined {
  if (!authority) return undefined;
  let host: string;
  let portText: string;
  if (authority.startsWith('[')) {
    const end = authority.indexOf(']:');
    if (end < 0) return undefined;
    host = authority.slice(1, end);
    portText = authority.slice(end + 2);
  } else {
    const colon = authority.lastIndexOf(':');
    if (colon < 0) return undefined;
    host = authority.slice(0, colon);
    // An IPv6 address must be bracketed: `fd00::1:80` could be an address or an address and a port.
    if (host.includes(':')) return undefined;
    portText = authority.slice(colon + 1);
  }
  if (!/^[0-9]{1,5}$/.test(portText)) return undefined;
  const port = Number(portText);
  if (port < 1 || port > 65535 || net.isIP(host) === 0) return undefined;
  return { host, port };
}

export function formatAuthority(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/** `forwarded: for="10.0.0.1:43210"` (RFC 7239; IPv6 in brackets). */
export function forwardedFor(address: string, port: number): string {
  return `for="${formatAuthority(address, port)}"`;
}

/** The client address in a `forwarded` header, or undefined when absent or malformed. */
export function parseForwardedFor(value: string | undefined): Authority | undefined {
  const match = value ? /for="?([^";,]+)"?/i.exec(value) : null;
  return match ? parseAuthority(match[1]) : undefined;
}

export interface BaggageFields {
  cluster?: string;
  namespace?: string;
  workloadKind?: string;
  workloadName?: string;
  service?: string;
  version?: string;
}

/** W3C baggage with the keys Istio's HBONE peers read for telemetry. */
export function buildBaggage(fields: BaggageFields): string {
  const parts: string[] = [];
  if (fields.cluster) parts.push(`k8s.cluster.name=${fields.cluster}`);
  if (fields.namespace) parts.push(`k8s.namespace.name=${fields.namespace}`);
  if (fields.workloadName) parts.push(`k8s.${fields.workloadKind ?? 'pod'}.name=${fields.workloadName}`);
  if (fields.service) parts.push(`service.name=${fields.service}`);
  if (fields.version) parts.push(`service.version=${fields.version}`);
  return parts.join(',');
}

/** Random bytes are drawn in blocks: one call into the CSPRNG per connection is a measurable per-connection cost. */
const ENTROPY_BLOCK = 24 * 256;
let entropy = Buffer.alloc(0);
let entropyOffset = 0;

/** A fresh W3C trace context for a connection that arrived without one (random trace and span IDs, sampled). */
export function newTraceparent(): string {
  if (entropyOffset + 24 > entropy.length) {
    entropy = randomBytes(ENTROPY_BLOCK);
    entropyOffset = 0;
  }
  const hex = entropy.toString('hex', entropyOffset, entropyOffset + 24);
  entropyOffset += 24;
  return `00-${hex.slice(0, 32)}-${hex.slice(32, 48)}-01`;
}
