export { canonicalCidr, canonicalIp, familyOf, parseCidr, parseIp, rangeContains, type IpAddress, type IpRange } from './address.js';
