// What differs between the IPv4 rules (captured) and the IPv6 rules (refused).
import { isIPv4, isIPv6 } from 'node:net';

/**
 * What differs between the IPv4 and IPv6 rules: the set, its ipset family, the iptables command and how an address
 * is written with a port. IPv4 is captured, IPv6 refused (AMBIT_IPV6_REJECT_CHAIN).
 */
export interface AddressFamily {
  readonly setName: string;
  readonly ipsetFamily: 'inet' | 'inet6';
  readonly iptablesCommand: 'iptables' | 'ip6tables';
  readonly isAddress: (address: string) => boolean;
  readonly hostPort: (address: string, port: number) => string;
}

export const IPV4: AddressFamily = {
  setName: 'ambit-pods-v4',
  ipsetFamily: 'inet',
  iptablesCommand: 'iptables',
  isAddress: isIPv4,
  hostPort: (address, port) => `${address}:${port}`,
};

export const IPV6: AddressFamily = {
  setName: 'ambit-pods-v6',
  ipsetFamily: 'inet6',
  iptablesCommand: 'ip6tables',
  isAddress: isIPv6,
  hostPort: (address, port) => `[${address}]:${port}`,
};

export const FAMILIES: readonly AddressFamily[] = [IPV4, IPV6];

/** The family whose set an address belongs in (IPv6 for an IPv6 address, else IPv4). */
export function addressFamily(address: string): AddressFamily {
  return IPV6.isAddress(address) ? IPV6 : IPV4;
}
