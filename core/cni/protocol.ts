/**
 * The agent's CNI socket protocol, shared by the `ambit-cni` plugin, the installer and the agent.
 *
 * One connection carries one exchange: the client writes one JSON object followed by `\n`, the agent answers with
 * one JSON object followed by `\n` and closes. Every message carries `version`; an agent that does not speak the
 * client's version answers `unsupported-version` naming the versions it does speak. Messages are small (pod names
 * and a few IPs): anything longer than CNI_MESSAGE_LIMIT is refused without being parsed.
 *
 * This file imports only Node built-ins and core/errors/ (which imports nothing): the plugin is bundled into a
 * single executable from it.
 */
import { isIP } from 'node:net';
import { AmbitError } from '../errors/index.js';
import { isDnsLabel, isDnsSubdomain } from '../names/index.js';

export const CNI_PROTOCOL_VERSION = 1;
/** Where the agent listens, and the plugin and installer connect, unless configured otherwise. */
export const DEFAULT_AGENT_RUN_DIR = '/var/run/ambit';
export const CNI_SOCKET_NAME = 'cni.sock';
export const DEFAULT_CNI_SOCKET = `${DEFAULT_AGENT_RUN_DIR}/${CNI_SOCKET_NAME}`;
/**
 * The agent's last word on which namespaces are enrolled, and which one is the mesh's own (its `--root-namespace`:
 * the agent is the one place that is configured), written (writeFileAtomic: fsynced, renamed, folder fsynced) when
 * the agent starts and whenever either changes, once the agent has read the whole cluster state. The plugin reads it
 * only when the agent cannot be reached, to tell an enrolled pod (fail: it must not start unprotected) from one
 * outside the mesh (pass: it must never be failed by Ambit); a file it cannot read or parse tells neither, and fails
 * ADD for a retry.
 * It lives on persistent storage, not beside the socket in /var/run: after a node reboot the runtime starts pods
 * before the agent is back, and the file is what keeps an enrolled pod from starting uncaptured then.
 */
export const ENROLLMENT_FILE_NAME = 'enrollment.json';
export const DEFAULT_AGENT_STATE_DIR = '/var/lib/ambit';
export const DEFAULT_ENROLLMENT_FILE = `${DEFAULT_AGENT_STATE_DIR}/${ENROLLMENT_FILE_NAME}`;
/** The enrollment file lists namespaces: thousands fit. */
export const ENROLLMENT_FILE_LIMIT = 4 * 1024 * 1024;
/** The longest request or response line, newline included. */
export const CNI_MESSAGE_LIMIT = 16 * 1024;

/** A pod as the container runtime describes it to the plugin. */
export interface CniPod {
  readonly namespace: string;
  readonly name: string;
  /** K8S_POD_INFRA_CONTAINER_ID, else CNI_CONTAINERID: DEL and CHECK must match the ADD that made the entry. */
  readonly containerId: string;
  /** CNI_NETNS (a path); informational. */
  readonly netns?: string;
  /** The pod's IPs from the primary plugin's result, canonical text form; may be empty for DEL. */
  readonly ips: readonly string[];
  /**
   * ADD: the interfaces of the primary plugin's result outside the sandbox (the host end of the pod's veth, and the
   * bridge when there is one), from which the agent binds the pod's addresses to its interface. Absent in requests
   * of plugins that predate it: such a pod is captured, its source address is not checked.
   */
  readonly hostInterfaces?: readonly string[];
}

export type CniRequest =
  | { readonly version: number; readonly op: 'add' | 'check' | 'del'; readonly pod: CniPod }
  /**
   * Is the agent up and has it reconciled once? The installer sidecar asks on every re-check, and reports where the
   * plugin is chained (`ambit check` reads it in the agent's /status); absent from other callers and older installers.
   */
  | { readonly version: number; readonly op: 'status'; readonly installer?: InstallerReport }
  /**
   * Remove every rule, ipset and file Ambit installed on this node: `ambit cni uninstall` (for good), or the installer
   * finishing `ambit uninstall` (`ifMarked`: only while the mesh is still marked as uninstalling; a cancel that got
   * there first wins, and the agent refuses with `cancelled`).
   */
  | { readonly version: number; readonly op: 'uninstall'; readonly ifMarked?: boolean };

/** What the CNI installer says of the node's CNI configuration. */
export interface InstallerReport {
  /** The configuration file that chains ambit-cni; null when none does (the mesh is being uninstalled). */
  readonly chainedIn: string | null;
}

export type CniErrorCode =
  /** The request is not valid JSON or not a request of this protocol. */
  | 'bad-request'
  /** The client speaks a version this agent does not. */
  | 'unsupported-version'
  /**
   * The agent cannot answer for the pod yet (its pod object or the first full sync of the cluster state has not
   * arrived), or the pod is enrolled and its rules could not be installed: the plugin fails ADD, the runtime retries.
   */
  | 'not-ready'
  /** CHECK: the pod is enrolled but its rules are not in place. */
  | 'rules-missing'
  /** uninstall with ifMarked: the mesh is no longer marked as uninstalling (the uninstall was cancelled). */
  | 'cancelled'
  | 'internal';

export type CniResponse =
  | {
      readonly version: number;
      readonly ok: true;
      /** add/check/del: whether the pod is in the mesh (its rules are in place when true). */
      readonly enrolled?: boolean;
      /** Why, in words an operator reads in the runtime's event: "namespace demo has ambit.dev/mode=enabled". */
      readonly reason?: string;
      /**
       * status: the mesh is being uninstalled (core/enrollment's UNINSTALL_ANNOTATION): the installer unchains the
       * plugin, then sends `uninstall`. Absent from older agents, which an installer then treats as false.
       */
      readonly uninstall?: boolean;
    }
  | {
      readonly version: number;
      readonly ok: false;
      readonly error: { readonly code: CniErrorCode; readonly message: string; readonly supportedVersions?: readonly number[] };
    };

/** The enrollment file: which namespaces the agent last saw enrolled, and its root namespace. */
export interface EnrollmentSnapshot {
  readonly version: number;
  /** When the agent wrote it (ISO 8601). */
  readonly written: string;
  /** Never lists the root namespace, whatever its labels. */
  readonly enrolledNamespaces: readonly string[];
  /** The agent's `--root-namespace`. Absent in files written by agents that predate it. */
  readonly rootNamespace?: string;
}

/** A message that does not follow the protocol; `code` is what the agent answers with. */
export class CniProtocolError extends AmbitError {
  declare readonly code: CniErrorCode;
  readonly supportedVersions?: readonly number[];

  constructor(code: CniErrorCode, message: string, supportedVersions?: readonly number[]) {
    super(code, message);
    this.name = 'CniProtocolError';
    if (supportedVersions) this.supportedVersions = supportedVersions;
  }
}

const OPS = new Set(['add', 'check', 'del', 'status', 'uninstall']);
const CONTAINER_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,255}$/;
/** What Linux accepts as an interface name (IFNAMSIZ, no '/', no whitespace), minus '.' and '..'. */
const INTERFACE_NAME_RE = /^(?!\.{1,2}$)[A-Za-z0-9_.:@-]{1,15}$/;

/** A network interface name as Linux accepts it: safe inside an ipset or nft batch line. */
export function isInterfaceName(name: string): boolean {
  return INTERFACE_NAME_RE.test(name);
}

/** A Kubernetes namespace name (a DNS-1123 label). */
export function isNamespaceName(name: string): boolean {
  return isDnsLabel(name);
}

/** Parses one request line (without its newline); throws CniProtocolError naming what is wrong. */
export function parseCniRequest(line: string): CniRequest {
  const value = parseJsonObject(line, 'request');
  const version = value.version;
  if (typeof version !== 'number' || !Number.isInteger(version)) throw new CniProtocolError('bad-request', 'request has no integer "version"');
  if (version !== CNI_PROTOCOL_VERSION) {
    throw new CniProtocolError('unsupported-version', `protocol version ${version} is not supported; this agent speaks ${CNI_PROTOCOL_VERSION}`, [CNI_PROTOCOL_VERSION]);
  }
  const op = value.op;
  if (typeof op !== 'string' || !OPS.has(op)) throw new CniProtocolError('bad-request', `"op" must be one of ${[...OPS].join(', ')}`);
  if (op === 'uninstall') {
    const ifMarked = value.ifMarked;
    if (ifMarked !== undefined && typeof ifMarked !== 'boolean') throw new CniProtocolError('bad-request', 'request "ifMarked" is not a boolean');
    return ifMarked === true ? { version, op, ifMarked } : { version, op };
  }
  if (op === 'status') {
    const installer = value.installer;
    if (installer === undefined) return { version, op };
    const chainedIn = typeof installer === 'object' && installer !== null ? (installer as { chainedIn?: unknown }).chainedIn : undefined;
    if (chainedIn !== null && (typeof chainedIn !== 'string' || chainedIn === '' || chainedIn.length > 4096)) {
      throw new CniProtocolError('bad-request', 'status "installer" must be {"chainedIn": a file path or null}');
    }
    return { version, op, installer: { chainedIn } };
  }
  return { version, op: op as 'add' | 'check' | 'del', pod: parsePod(value.pod, op !== 'del') };
}

/** Parses one response line; throws CniProtocolError when the agent's answer is not a response of this protocol. */
export function parseCniResponse(line: string): CniResponse {
  const value = parseJsonObject(line, 'response');
  if (typeof value.version !== 'number') throw new CniProtocolError('bad-request', 'response has no "version"');
  if (value.ok === true) {
    if (value.enrolled !== undefined && typeof value.enrolled !== 'boolean') throw new CniProtocolError('bad-request', 'response "enrolled" is not a boolean');
    if (value.reason !== undefined && typeof value.reason !== 'string') throw new CniProtocolError('bad-request', 'response "reason" is not a string');
    if (value.uninstall !== undefined && typeof value.uninstall !== 'boolean') throw new CniProtocolError('bad-request', 'response "uninstall" is not a boolean');
    return value as unknown as CniResponse;
  }
  if (value.ok === false) {
    const error = value.error as Record<string, unknown> | undefined;
    if (typeof error !== 'object' || error === null || typeof error.code !== 'string' || typeof error.message !== 'string') {
      throw new CniProtocolError('bad-request', 'error response has no "error" with "code" and "message"');
    }
    return value as unknown as CniResponse;
  }
  throw new CniProtocolError('bad-request', 'response has no boolean "ok"');
}

/** One message as it goes on the wire. */
export function encodeCniMessage(message: CniRequest | CniResponse): string {
  return `${JSON.stringify(message)}\n`;
}

/** Parses the enrollment file; throws CniProtocolError when it is not one. */
export function parseEnrollmentSnapshot(text: string): EnrollmentSnapshot {
  const value = parseJsonObject(text, 'enrollment file', ENROLLMENT_FILE_LIMIT);
  const names = value.enrolledNamespaces;
  if (!Array.isArray(names) || !names.every((n) => typeof n === 'string')) {
    throw new CniProtocolError('bad-request', 'enrollment file has no "enrolledNamespaces" list of strings');
  }
  const rootNamespace = value.rootNamespace;
  if (rootNamespace !== undefined && (typeof rootNamespace !== 'string' || !isNamespaceName(rootNamespace))) {
    throw new CniProtocolError('bad-request', `enrollment file "rootNamespace" is not a namespace name: ${JSON.stringify(rootNamespace)?.slice(0, 80)}`);
  }
  return {
    version: typeof value.version === 'number' ? value.version : 0,
    written: String(value.written ?? ''),
    enrolledNamespaces: names as string[],
    ...(rootNamespace === undefined ? {} : { rootNamespace }),
  };
}

function parseJsonObject(text: string, what: string, limit = CNI_MESSAGE_LIMIT): Record<string, unknown> {
  if (text.length > limit) throw new CniProtocolError('bad-request', `${what} is longer than ${limit} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CniProtocolError('bad-request', `${what} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new CniProtocolError('bad-request', `${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

function parsePod(value: unknown, needsIps: boolean): CniPod {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new CniProtocolError('bad-request', 'request has no "pod" object');
  const pod = value as Record<string, unknown>;
  const field = (name: string, valid: (text: string) => boolean): string => {
    const v = pod[name];
    if (typeof v !== 'string' || !valid(v)) throw new CniProtocolError('bad-request', `pod "${name}" is missing or not valid: ${JSON.stringify(v)?.slice(0, 80)}`);
    return v;
  };
  // A namespace is a DNS-1123 label and a pod name a subdomain, as Kubernetes validates them.
  const namespace = field('namespace', isDnsLabel);
  const name = field('name', isDnsSubdomain);
  const containerId = field('containerId', (text) => CONTAINER_ID_RE.test(text));
  const ipsValue = pod.ips ?? [];
  if (!Array.isArray(ipsValue) || ipsValue.length > 16) throw new CniProtocolError('bad-request', 'pod "ips" must be a list of at most 16 addresses');
  const ips = ipsValue.map((ip) => {
    if (typeof ip !== 'string' || isIP(ip) === 0) throw new CniProtocolError('bad-request', `pod IP ${JSON.stringify(ip)?.slice(0, 80)} is not an IP address`);
    return ip;
  });
  if (needsIps && ips.length === 0) throw new CniProtocolError('bad-request', 'pod has no IPs');
  const netns = pod.netns;
  if (netns !== undefined && (typeof netns !== 'string' || netns.length > 4096)) throw new CniProtocolError('bad-request', 'pod "netns" is not a path');
  const hostInterfaces = pod.hostInterfaces;
  if (hostInterfaces !== undefined && (!Array.isArray(hostInterfaces) || hostInterfaces.length > 16 || !hostInterfaces.every((n) => typeof n === 'string' && isInterfaceName(n)))) {
    throw new CniProtocolError('bad-request', `pod "hostInterfaces" must be a list of at most 16 interface names: ${JSON.stringify(hostInterfaces)?.slice(0, 80)}`);
  }
  return {
    namespace,
    name,
    containerId,
    ...(netns === undefined ? {} : { netns }),
    ips,
    ...(hostInterfaces === undefined ? {} : { hostInterfaces: hostInterfaces as string[] }),
  };
}
