import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';

/** A parsed IP address; an IPv4-mapped IPv6 address is its IPv4 address. */
export type IpAddress = ipaddr.IPv4 | ipaddr.IPv6;

/** An address or CIDR range: `address` as written (not masked), `bits` of prefix. */
export interface IpRange {
  readonly address: IpAddress;
  readonly bits: number;
}

// Prefix lengths in decimal without leading zeros, as Go's netip.ParsePrefix reads them.
const PREFIX_BITS = /^(0|[1-9][0-9]{0,2})$/;

/**
 * The address `text` names, or undefined. What is an address is Node's rule (`net.isIP`: dotted quads without
 * leading zeros, the IPv6 text forms), minus zone ids (fe80::1%eth0), which are link-local and never a pod's or a
 * peer's address here. A socket may report an IPv4 peer as ::ffff:a.b.c.d: it is the same peer as a.b.c.d.
 */
export function parseIp(text: string): IpAddress | undefined {
  const cached = PARSED.get(text);
  if (cached !== undefined) return cached;
  const written = parseAsWritten(text);
  const address = written !== undefined && isMapped(written) ? written.toIPv4Address() : written;
  if (address === undefined) return undefined;
  if (PARSED.size >= PARSED_MAX) PARSED.clear();
  PARSED.set(text, address);
  return address;
}

/**
 * Addresses parsed lately, by text. Every connection's decision parses its two addresses, and a node's connections
 * come from and go to few of them (its pods, their peers); ipaddr.js's parse (two regexes, objects, for a dotted IPv6
 * a URL) cost a policy decision 2-3x its time. Bounded: emptied when full. What it holds is never mutated: callers
 * only read parsed addresses.
 */
const PARSED = new Map<string, IpAddress>();
const PARSED_MAX = 4096;

/** The address as written: IPv4-mapped IPv6 stays IPv6. */
function parseAsWritten(text: string): IpAddress | undefined {
  const family = isIP(text);
  if (family === 0 || text.includes('%')) return undefined;
  if (family === 4) return ipaddr.IPv4.parse(text);
  // ipaddr.js reads any IPv6 text ending in a dotted quad as IPv4-mapped (::1.2.3.4 as ::ffff:1.2.3.4), which would
  // make an IPv4-compatible or NAT64 address the IPv4 peer; the URL parser (WHATWG) writes it in hex groups first.
  return ipaddr.IPv6.parse(text.includes('.') ? new URL(`http://[${text}]/`).hostname.slice(1, -1) : text);
}

function isMapped(address: IpAddress): address is ipaddr.IPv6 {
  return address.kind() === 'ipv6' && (address as ipaddr.IPv6).isIPv4MappedAddress();
}

/** 4 or 6, the family of a parsed address. */
export function familyOf(address: IpAddress): 4 | 6 {
  return address.kind() === 'ipv4' ? 4 : 6;
}

/**
 * The text form Node reports for socket addresses (IPv6 compressed, lower case; IPv4-mapped IPv6 as IPv4), or
 * undefined when `text` is not an address (see parseIp).
 */
export function canonicalIp(text: string): string | undefined {
  return parseIp(text)?.toString();
}

/**
 * `address` or `address/bits`, or undefined. Ranges and addresses of different families never match (as in Envoy):
 * ::/0 holds no IPv4 peer. An IPv4-mapped IPv6 range of /96 or longer is the IPv4 range it maps.
 */
export function parseCidr(text: string): IpRange | undefined {
  const slash = text.indexOf('/');
  const address = parseAsWritten(slash === -1 ? text : text.slice(0, slash));
  if (address === undefined) return undefined;
  let bits = address.kind() === 'ipv4' ? 32 : 128;
  if (slash !== -1) {
    const bitsText = text.slice(slash + 1);
    if (!PREFIX_BITS.test(bitsText) || Number(bitsText) > bits) return undefined;
    bits = Number(bitsText);
  }
  if (isMapped(address) && bits >= 96) return { address: address.toIPv4Address(), bits: bits - 96 };
  return { address, bits };
}

/** Whether `range` holds `address` (an address of the other family never). */
export function rangeContains(range: IpRange, address: IpAddress): boolean {
  return range.address.kind() === address.kind() && address.match(range.address, range.bits);
}

/**
 * The canonical text of an address or CIDR range (lower case, IPv6 compressed), or undefined when `text` is
 * neither. The address part of a range is kept as written: Istio accepts 10.1.2.3/8 as 10.0.0.0/8.
 */
export function canonicalCidr(text: string): string | undefined {
  if (parseCidr(text) === undefined) return undefined;
  const slash = text.indexOf('/');
  const address = parseAsWritten(slash === -1 ? text : text.slice(0, slash)) as IpAddress;
  return `${address.toString()}${slash === -1 ? '' : text.slice(slash)}`;
}
