import { createHash } from 'node:crypto';
import { AmbitError, usageError } from '../errors/index.js';
import { isDnsLabel } from '../names/index.js';

/** The trust domain of a mesh that was not given one, as in Istio. */
export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

export interface SpiffeIdParts {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

const SPIFFE_SCHEME = 'spiffe://';
const MAX_TRUST_DOMAIN_LENGTH = 255;
// The SPIFFE spec's path-segment alphabet; Kubernetes namespace and service account names are a subset.
const PATH_SEGMENT = /^[A-Za-z0-9._-]+$/;

/** `spiffe://<trustDomain>`: the ID of a trust domain itself, as a root certificate names it in its URI SAN. */
export function trustDomainId(trustDomain: string): string {
  validateTrustDomain(trustDomain);
  return `${SPIFFE_SCHEME}${trustDomain}`;
}

/**
 * What follows `spiffe://` in `id` (`<trustDomain>/ns/<namespace>/sa/<serviceAccount>`, the form Istio writes
 * principals in), or undefined when `id` is not a spiffe:// URI. Nothing after the scheme is checked.
 */
export function withoutSpiffeScheme(id: string): string | undefined {
  return id.startsWith(SPIFFE_SCHEME) ? id.slice(SPIFFE_SCHEME.length) : undefined;
}

/** The entries of a certificate's subject alternative names in Node's text form (`DNS:a, URI:spiffe://…`). */
export function subjectAltNames(text: string | undefined): string[] {
  return text ? text.split(', ') : [];
}

/** `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`, validated as `parseSpiffeId` would. */
export function spiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  const id = `${SPIFFE_SCHEME}${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
  checkTrustDomain(trustDomain, id);
  checkSegment(namespace, 'namespace', id);
  checkSegment(serviceAccount, 'service account', id);
  return id;
}

/** Splits a workload SPIFFE ID; anything but exactly `spiffe://<td>/ns/<ns>/sa/<sa>` is BAD_SPIFFE_ID. */
export function parseSpiffeId(uri: string): SpiffeIdParts {
  if (!uri.startsWith(SPIFFE_SCHEME)) {
    throw badId(uri, `it must start with "${SPIFFE_SCHEME}"`);
  }
  const rest = uri.slice(SPIFFE_SCHEME.length);
  const slash = rest.indexOf('/');
  if (slash < 0) throw badId(uri, 'it has no path; expected /ns/<namespace>/sa/<serviceaccount>');
  const trustDomain = rest.slice(0, slash);
  checkTrustDomain(trustDomain, uri);
  const segments = rest.slice(slash + 1).split('/');
  const [nsKey, namespace, saKey, serviceAccount] = segments;
  if (segments.length !== 4 || nsKey !== 'ns' || saKey !== 'sa' || namespace === undefined || serviceAccount === undefined) {
    throw badId(uri, 'its path must be exactly /ns/<namespace>/sa/<serviceaccount>');
  }
  checkSegment(namespace, 'namespace', uri);
  checkSegment(serviceAccount, 'service account', uri);
  return { trustDomain, namespace, serviceAccount };
}

/**
 * The TLS server name that stands for an identity: `<32 hex chars of sha256(spiffeId)>.id.ambit`.
 *
 * SNI carries a DNS hostname (RFC 6066: letters, digits and hyphens, labels of at most 63 bytes), and a SPIFFE
 * ID has ':' and '/' and can be longer than a label, so it cannot be sent as is. A hash gives a fixed-length
 * label; 128 bits make collisions between the few identities one node serves impossible in practice. The HBONE
 * client sends it and the server maps it back through a table of its local identities to pick the certificate.
 * It is not a secret: anyone who can guess an identity can compute its name.
 */
export function sniForIdentity(id: string): string {
  return `${createHash('sha256').update(id).digest('hex').slice(0, 32)}.id.ambit`;
}

/** Throws AmbitError('BAD_TRUST_DOMAIN') unless `trustDomain` is a lowercase DNS-shaped name. */
export function validateTrustDomain(trustDomain: string): void {
  const problem = trustDomainProblem(trustDomain);
  if (problem !== undefined) throw new AmbitError('BAD_TRUST_DOMAIN', `trust domain "${trustDomain}" is invalid: ${problem}`);
}

function trustDomainProblem(trustDomain: string): string | undefined {
  if (trustDomain.length === 0) return 'it is empty';
  if (trustDomain.length > MAX_TRUST_DOMAIN_LENGTH) return `it is longer than ${MAX_TRUST_DOMAIN_LENGTH} characters`;
  // SPIFFE allows [a-z0-9._-] in a trust domain; we also require DNS-shaped labels so the trust domain can appear
  // wherever a hostname is expected (Istio's trust domains are DNS names too), with SPIFFE's '_' where '-' may be.
  if (!trustDomain.split('.').every((label) => isDnsLabel(label.replaceAll('_', '-')))) {
    return "it must be a lowercase DNS name (a-z, 0-9, '-', '_', dots between labels) with no port or user, e.g. cluster.local";
  }
  return undefined;
}

function checkTrustDomain(trustDomain: string, uri: string): void {
  const problem = trustDomainProblem(trustDomain);
  if (problem !== undefined) throw badId(uri, `its trust domain "${trustDomain}" is invalid: ${problem}`);
}

function checkSegment(segment: string, what: string, uri: string): void {
  if (segment.length === 0) throw badId(uri, `its ${what} is empty`);
  if (segment === '.' || segment === '..' || !PATH_SEGMENT.test(segment)) {
    throw badId(uri, `its ${what} "${segment}" may only hold letters, digits, '.', '-' and '_'`);
  }
}

function badId(uri: string, reason: string): AmbitError {
  return new AmbitError('BAD_SPIFFE_ID', `SPIFFE ID "${uri}" is malformed: ${reason}`);
}

/** The trust domain a command's `--trust-domain` names (default cluster.local), or a usage error that says why not. */
export function trustDomainFlag(command: string, value: string | undefined): string {
  const trustDomain = value ?? DEFAULT_TRUST_DOMAIN;
  try {
    validateTrustDomain(trustDomain);
  } catch (err) {
    throw usageError(command, `--trust-domain ${trustDomain} is not a valid trust domain: ${(err as Error).message}`);
  }
  return trustDomain;
}

/** The SPIFFE ID in a certificate's URI SAN (Node's `subjectaltname` text form), or undefined. */
export function spiffeIdFromSan(subjectAltName: string | undefined): string | undefined {
  for (const entry of subjectAltNames(subjectAltName)) {
    const uri = entry.startsWith('URI:') ? entry.slice('URI:'.length) : undefined;
    if (uri !== undefined && withoutSpiffeScheme(uri) !== undefined) return uri;
  }
  return undefined;
}
