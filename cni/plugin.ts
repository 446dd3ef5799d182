/**
 * The `ambit-cni` chained CNI plugin: what it decides, without processes or sockets.
 *
 * The runtime runs the plugin after the primary plugin (bridge, ptp, flannel, calico...) with the CNI_* environment
 * and the network configuration, including the primary plugin's `prevResult`, on stdin. The plugin never changes the
 * pod's networking itself: it tells the node agent about the pod, and the agent installs the pod's redirect rules
 * before it answers. ADD passes `prevResult` through unchanged; a pod outside the mesh is never failed by Ambit.
 *
 * Everything here is a function of (environment, stdin, agent answer, enrollment file); `runCniPlugin` takes those
 * through `PluginIo`, so every decision is unit-tested with stubs. `main.ts` wires the real ones.
 * This file imports only Node built-ins and core files that do: it is bundled into a single executable.
 *
 * Error codes (CNI spec "Well-known Error Codes"; 100 and up are the plugin's own):
 *
 * | code | when |
 * |---|---|
 * | 1   | the config's cniVersion is not supported, or the command is newer than it (CHECK < 0.4.0, STATUS/GC < 1.1.0) |
 * | 4   | CNI_COMMAND missing or unknown; a CNI_* variable the command needs is missing |
 * | 5   | stdin could not be read, or was not closed within STDIN_TIMEOUT_MS |
 * | 6   | stdin is not a JSON object, or is larger than STDIN_LIMIT |
 * | 7   | invalid config: cniVersion/name/type missing, bad agentSocket/agentTimeoutMs, prevResult missing or malformed |
 * | 11  | try again later: the agent is not ready for an enrolled pod (or has not read the cluster state yet), or cannot be |
 * |     | reached and the enrollment file says the namespace is enrolled or cannot be read or parsed, or does not exist yet |
 * |     | on a node the DaemonSet installed (`meshNamespace`) and the pod is not of kube-system or the mesh's namespace     |
 * | 100 | the agent refused the pod (bad request, protocol version skew, internal error); its message is in `msg` |
 * | 101 | CHECK: the pod is enrolled but its redirect rules are missing |
 * | 102 | the pod's namespace is enrolled but prevResult lists no pod IP to capture |
 * | 199 | a bug in the plugin (an unexpected exception); the stack goes to stderr, never stdout |
 */
import path from 'node:path';
import { AmbitError } from '../core/errors/index.js';
import { canonicalIp, parseCidr } from '../core/ip/index.js';
import { namespaceEnrollment } from '../core/enrollment/index.js';
import {
  CNI_PROTOCOL_VERSION,
  DEFAULT_CNI_SOCKET,
  DEFAULT_ENROLLMENT_FILE,
  isInterfaceName,
  isNamespaceName,
  parseEnrollmentSnapshot,
  type CniPod,
  type CniRequest,
  type CniResponse,
} from '../core/cni/index.js';

/** The spec version of VERSION's own output, and of errors printed before the config's version is known. */
export const CNI_SPEC_VERSION = '1.1.0';
/**
 * 0.3.0 brought chaining (`prevResult`) and the result format this plugin reads, unchanged since; 0.1/0.2 have no
 * chaining. 0.3.x stays: the installer joins the node's existing conflist, whose cniVersion every plugin in it
 * shares, and flannel's and Calico's manifests still ship "0.3.1". CHECK needs 0.4.0 and STATUS/GC 1.1.0.
 */
export const SUPPORTED_CNI_VERSIONS: readonly string[] = Object.freeze(['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
/** A network config is a few KiB; more is not a config, and reading it all would let a caller make us hang or swell. */
export const STDIN_LIMIT = 1024 * 1024;
/** libcni writes stdin and closes it at once; a caller that keeps it open must not hold the plugin forever. */
export const STDIN_TIMEOUT_MS = 10_000;
export const DEFAULT_AGENT_TIMEOUT_MS = 5000;
/** Below 100 ms a busy agent would fail pods spuriously; above a minute the runtime's own deadline comes first. */
export const AGENT_TIMEOUT_MIN_MS = 100;
export const AGENT_TIMEOUT_MAX_MS = 60_000;
/** DEL never fails, so there is no point waiting long: the agent reconciles a missed DEL from the pod watch. */
export const DEL_TIMEOUT_MS = 1000;
/**
 * The cluster's own namespace (DNS, the network plugin's controllers): on a node where no agent has written the
 * enrollment file yet, its pods start, with the mesh's, so that the agent can reach the controller and read the cluster.
 */
export const KUBE_SYSTEM_NAMESPACE = 'kube-system';
/** sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL. */
export const UNIX_SOCKET_PATH_LIMIT = 107;

export const CNI_ERROR_CODES = Object.freeze({
  CNI_INCOMPATIBLE_VERSION: 1,
  CNI_INVALID_ENVIRONMENT: 4,
  CNI_IO_FAILURE: 5,
  CNI_DECODE_FAILED: 6,
  CNI_INVALID_CONFIG: 7,
  CNI_TRY_AGAIN_LATER: 11,
  CNI_AGENT_REFUSED: 100,
  CNI_RULES_MISSING: 101,
  CNI_NO_POD_IP: 102,
  CNI_INTERNAL: 199,
});
export type CniPluginErrorCode = keyof typeof CNI_ERROR_CODES;

/** A failure the runtime is told about: `cniCode` and the message go into the CNI error JSON. */
export class CniPluginError extends AmbitError {
  declare readonly code: CniPluginErrorCode;
  readonly cniCode: number;
  readonly details: string;

  constructor(code: CniPluginErrorCode, message: string, options: { details?: string; cause?: unknown } = {}) {
    super(code, message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CniPluginError';
    this.cniCode = CNI_ERROR_CODES[code];
    this.details = options.details ?? '';
  }
}

export const CNI_COMMANDS = ['ADD', 'DEL', 'CHECK', 'VERSION', 'STATUS', 'GC'] as const;
export type CniCommand = (typeof CNI_COMMANDS)[number];

/** What the runtime passes in the environment, as the command needs it. */
export interface CniEnvironment {
  readonly containerId: string;
  readonly ifname: string;
  readonly netns: string;
  /** CNI_ARGS as key/value pairs. */
  readonly args: ReadonlyMap<string, string>;
}

/** The network configuration as this plugin reads it; keys it does not know are ignored, as the spec asks. */
export interface PluginConfig {
  readonly cniVersion: string;
  readonly name: string;
  readonly type: string;
  readonly agentSocket: string;
  readonly agentTimeoutMs: number;
  /**
   * The agent's enrollment file (persistent), read only when the agent cannot be reached. It also names the mesh's
   * own namespace (the agent's `--root-namespace`), so that is configured in one place: a `rootNamespace` key left
   * in the conflist by an older installer is ignored.
   */
  readonly enrollmentFile: string;
  /**
   * The namespace of the DaemonSet whose installer chained the plugin (the downward API's, so the mesh's own), or
   * undefined for an entry written by hand or by an installer that predates it. It counts only while the enrollment
   * file does not exist: on a node where the DaemonSet has installed the plugin and no agent has read the cluster yet,
   * only pods of this namespace and kube-system start; every other one waits for the agent. Once the agent has
   * written the file, the file's root namespace alone is the mesh's own.
   */
  readonly meshNamespace: string | undefined;
  /** The primary plugin's result, as the runtime passed it (0.4.0+ on DEL too; required for ADD and CHECK). */
  readonly prevResult: Readonly<Record<string, unknown>> | undefined;
}

/** stdin as main.ts read it: at most `limit + 1` bytes, so that a larger one is known to be too large. */
export interface StdinContent {
  readonly data: Buffer;
  readonly overLimit: boolean;
}

/** The plugin's outside world; main.ts passes the real one, tests pass stubs. */
export interface PluginIo {
  /** Reads stdin up to `limit` bytes (a byte more marks it over the limit); rejects when stdin fails or stalls. */
  readStdin(limit: number): Promise<StdinContent>;
  /** One exchange with the agent; rejects when it cannot be reached, does not answer in time, or answers garbage. */
  askAgent(socketPath: string, request: CniRequest, timeoutMs: number): Promise<CniResponse>;
  /** The enrollment file's text, or undefined when it does not exist; rejects when it cannot be read. */
  readEnrollmentFile(file: string): Promise<string | undefined>;
  /** A line for the runtime's log (stderr): never on stdout, which carries only the result. */
  warn(message: string): void;
}

/** What the process prints and how it exits. */
export interface CniOutcome {
  readonly exitCode: 0 | 1;
  /** One JSON document and a newline, or nothing. */
  readonly stdout: string;
}

/** Runs one invocation. Never rejects: every failure becomes a CNI error outcome. */
export async function runCniPlugin(env: NodeJS.ProcessEnv, io: PluginIo): Promise<CniOutcome> {
  let cniVersion = CNI_SPEC_VERSION;
  try {
    const command = parseCniCommand(env);
    if (command === 'VERSION') return success(buildVersionResult());
    const environment = parseCniEnvironment(command, env);
    const config = parseNetworkConfig(await readStdin(io));
    cniVersion = config.cniVersion;
    checkCommandVersion(command, cniVersion);
    switch (command) {
      // STATUS does not ask the agent: a failed STATUS tells the runtime the node's network is down, which stops
      // every pod, while an agent restart must hold back only enrolled pods, as ADD does. GC has nothing to
      // collect: the plugin keeps no state, and the agent forgets pods the API server says are gone.
      case 'STATUS':
      case 'GC':
        return success(undefined);
      case 'DEL':
        await deletePod(config, buildCniPod(command, environment, config), io);
        return success(undefined);
      case 'ADD':
      case 'CHECK': {
        if (config.prevResult === undefined) {
          throw new CniPluginError('CNI_INVALID_CONFIG', `${command} needs "prevResult": ambit-cni is a chained plugin and must come after the primary plugin (bridge, ptp...) in the conflist`);
        }
        await enrollPod(command, config, buildCniPod(command, environment, config), io);
        return success(command === 'ADD' ? buildAddResult(config.cniVersion, config.prevResult) : undefined);
      }
    }
  } catch (err) {
    if (err instanceof CniPluginError) return failure(cniVersion, err);
    io.warn(`unexpected failure: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return failure(cniVersion, new CniPluginError('CNI_INTERNAL', `ambit-cni failed unexpectedly: ${err instanceof Error ? err.message : String(err)}`));
  }
}

/** ADD's result: the previous plugin's, unchanged but for `cniVersion`, which is the configuration's. */
export function buildAddResult(cniVersion: string, prevResult: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const { cniVersion: _previous, ...rest } = prevResult;
  return { cniVersion, ...rest };
}

export function buildVersionResult(): { cniVersion: string; supportedVersions: readonly string[] } {
  return { cniVersion: CNI_SPEC_VERSION, supportedVersions: SUPPORTED_CNI_VERSIONS };
}

/** The CNI error document: what the runtime shows in the pod's events. */
export function buildCniErrorResult(cniVersion: string, err: CniPluginError): { cniVersion: string; code: number; msg: string; details: string } {
  return { cniVersion, code: err.cniCode, msg: err.message, details: err.details };
}

export function parseCniCommand(env: NodeJS.ProcessEnv): CniCommand {
  const command = env.CNI_COMMAND;
  if (command === undefined || command === '') throw new CniPluginError('CNI_INVALID_ENVIRONMENT', 'CNI_COMMAND is not set: ambit-cni is run by the container runtime');
  if (!(CNI_COMMANDS as readonly string[]).includes(command)) {
    throw new CniPluginError('CNI_INVALID_ENVIRONMENT', `CNI_COMMAND ${JSON.stringify(command.slice(0, 40))} is not one of ${CNI_COMMANDS.join(', ')}`);
  }
  return command as CniCommand;
}

/** The CNI_* variables each command needs (DEL may come without a netns: the namespace may be gone already). */
const REQUIRED_ENV: Readonly<Record<CniCommand, readonly string[]>> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME'],
  VERSION: [],
  STATUS: [],
  GC: [],
};

export function parseCniEnvironment(command: CniCommand, env: NodeJS.ProcessEnv): CniEnvironment {
  for (const name of REQUIRED_ENV[command]) {
    if (env[name] === undefined || env[name] === '') throw new CniPluginError('CNI_INVALID_ENVIRONMENT', `${name} is not set; CNI ${command} needs it`);
  }
  return { containerId: env.CNI_CONTAINERID ?? '', ifname: env.CNI_IFNAME ?? '', netns: env.CNI_NETNS ?? '', args: parseCniArgs(env.CNI_ARGS ?? '') };
}

/**
 * CNI_ARGS, `K=V;K=V` as containerd and CRI-O send it. Pairs without `=` are skipped rather than refused: an odd
 * argument meant for another plugin in the chain must not fail a pod that Ambit has nothing to do with.
 */
export function parseCniArgs(text: string): Map<string, string> {
  const args = new Map<string, string>();
  for (const pair of text.split(';')) {
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    args.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  return args;
}

async function readStdin(io: PluginIo): Promise<StdinContent> {
  try {
    return await io.readStdin(STDIN_LIMIT);
  } catch (err) {
    throw new CniPluginError('CNI_IO_FAILURE', `cannot read the network configuration from stdin: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

/** Parses and validates the network configuration; unknown keys are ignored (they belong to the runtime or others). */
export function parseNetworkConfig(stdin: StdinContent): PluginConfig {
  if (stdin.overLimit) throw new CniPluginError('CNI_DECODE_FAILED', `the network configuration on stdin is larger than ${STDIN_LIMIT} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(stdin.data.toString('utf8'));
  } catch (err) {
    throw new CniPluginError('CNI_DECODE_FAILED', `the network configuration on stdin is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(value)) throw new CniPluginError('CNI_DECODE_FAILED', 'the network configuration on stdin is not a JSON object');

  const cniVersion = value.cniVersion;
  if (typeof cniVersion !== 'string' || cniVersion === '') throw invalidConfig('"cniVersion" is missing or not a string');
  if (!SUPPORTED_CNI_VERSIONS.includes(cniVersion)) {
    throw new CniPluginError('CNI_INCOMPATIBLE_VERSION', `cniVersion ${JSON.stringify(cniVersion.slice(0, 20))} is not supported; ambit-cni supports ${SUPPORTED_CNI_VERSIONS.join(', ')}`);
  }
  const name = value.name;
  if (typeof name !== 'string' || name === '') throw invalidConfig('"name" is missing or not a string');
  const type = value.type;
  if (typeof type !== 'string' || type === '') throw invalidConfig('"type" is missing or not a string');

  const agentSocket = value.agentSocket ?? DEFAULT_CNI_SOCKET;
  if (typeof agentSocket !== 'string' || !path.isAbsolute(agentSocket) || agentSocket.includes('\0')) {
    throw invalidConfig(`"agentSocket" must be an absolute path, got ${JSON.stringify(agentSocket)?.slice(0, 80)}`);
  }
  if (Buffer.byteLength(agentSocket) > UNIX_SOCKET_PATH_LIMIT) throw invalidConfig(`"agentSocket" is longer than ${UNIX_SOCKET_PATH_LIMIT} bytes, the limit of a unix socket path`);
  const agentTimeoutMs = value.agentTimeoutMs ?? DEFAULT_AGENT_TIMEOUT_MS;
  if (typeof agentTimeoutMs !== 'number' || !Number.isInteger(agentTimeoutMs) || agentTimeoutMs < AGENT_TIMEOUT_MIN_MS || agentTimeoutMs > AGENT_TIMEOUT_MAX_MS) {
    throw invalidConfig(`"agentTimeoutMs" must be an integer from ${AGENT_TIMEOUT_MIN_MS} to ${AGENT_TIMEOUT_MAX_MS}, got ${JSON.stringify(agentTimeoutMs)?.slice(0, 40)}`);
  }
  const enrollmentFile = value.enrollmentFile ?? DEFAULT_ENROLLMENT_FILE;
  if (typeof enrollmentFile !== 'string' || !path.isAbsolute(enrollmentFile) || enrollmentFile.includes('\0')) {
    throw invalidConfig(`"enrollmentFile" must be an absolute path, got ${JSON.stringify(enrollmentFile)?.slice(0, 80)}`);
  }
  const meshNamespace = value.meshNamespace;
  if (meshNamespace !== undefined && (typeof meshNamespace !== 'string' || !isNamespaceName(meshNamespace))) {
    throw invalidConfig(`"meshNamespace" must be a namespace name, got ${JSON.stringify(meshNamespace)?.slice(0, 80)}`);
  }
  const prevResult = value.prevResult;
  if (prevResult !== undefined && !isObject(prevResult)) throw invalidConfig('"prevResult" is not an object');
  return { cniVersion, name, type, agentSocket, agentTimeoutMs, enrollmentFile, meshNamespace, prevResult };
}

function invalidConfig(problem: string): CniPluginError {
  return new CniPluginError('CNI_INVALID_CONFIG', `invalid ambit-cni network configuration: ${problem}`);
}

/** CHECK came with spec 0.4.0, STATUS and GC with 1.1.0: a runtime speaking an older version does not send them. */
export function checkCommandVersion(command: CniCommand, cniVersion: string): void {
  const since = command === 'CHECK' ? '0.4.0' : command === 'STATUS' || command === 'GC' ? '1.1.0' : undefined;
  if (since !== undefined && compareVersions(cniVersion, since) < 0) {
    throw new CniPluginError('CNI_INCOMPATIBLE_VERSION', `CNI ${command} needs cniVersion ${since} or later; the configuration says ${cniVersion}`);
  }
}

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/**
 * The pod as the agent's protocol describes it, or undefined when the container is not a Kubernetes pod (no
 * K8S_POD_NAMESPACE/K8S_POD_NAME): such a container is passed through without asking the agent.
 * ADD and CHECK refuse a malformed prevResult, pod or not; DEL reads what it can, since it must succeed anyway.
 */
export function buildCniPod(command: 'ADD' | 'CHECK' | 'DEL', environment: CniEnvironment, config: PluginConfig): CniPod | undefined {
  let ips: string[] = [];
  let hostInterfaces: string[] = [];
  if (config.prevResult !== undefined) {
    try {
      ips = podIpsFromResult(config.prevResult);
      hostInterfaces = hostInterfacesFromResult(config.prevResult);
    } catch (err) {
      if (command !== 'DEL') throw err;
    }
  }
  const namespace = environment.args.get('K8S_POD_NAMESPACE');
  const name = environment.args.get('K8S_POD_NAME');
  if (!namespace || !name) return undefined;
  const containerId = environment.args.get('K8S_POD_INFRA_CONTAINER_ID') || environment.containerId;
  const pod = { namespace, name, containerId, ips, ...(command === 'ADD' && hostInterfaces.length > 0 ? { hostInterfaces } : {}) };
  return environment.netns === '' ? pod : { ...pod, netns: environment.netns };
}

/**
 * The interfaces of a CNI result outside the sandbox: bridge lists the bridge and the host end of the pod's veth,
 * ptp the host end alone. The agent tells them apart (the veth is the one that is not a bridge) and binds the pod's
 * addresses to it. Names Linux would not accept are left out, so a bad one cannot reach a batch line.
 */
export function hostInterfacesFromResult(result: Readonly<Record<string, unknown>>): string[] {
  const interfaces = Array.isArray(result.interfaces) ? (result.interfaces as unknown[]) : [];
  const names = interfaces
    .filter((entry): entry is Record<string, unknown> => isObject(entry) && (entry.sandbox === undefined || entry.sandbox === ''))
    .map((entry) => entry.name)
    .filter((name): name is string => typeof name === 'string' && isInterfaceName(name));
  return [...new Set(names)];
}

/**
 * The pod's own addresses in a CNI result, canonical text form, without duplicates: those on an interface inside
 * the sandbox, or on no interface at all. Bridge and ptp list the host-side veth (and the bridge) without `sandbox`
 * and the pod's eth0 with it, and point each IP at eth0.
 */
export function podIpsFromResult(result: Readonly<Record<string, unknown>>): string[] {
  const interfaces = result.interfaces ?? [];
  if (!Array.isArray(interfaces)) throw invalidConfig('"prevResult.interfaces" is not a list');
  const inSandbox = interfaces.map((entry: unknown, i) => {
    if (!isObject(entry)) throw invalidConfig(`"prevResult.interfaces[${i}]" is not an object`);
    if (entry.sandbox !== undefined && typeof entry.sandbox !== 'string') throw invalidConfig(`"prevResult.interfaces[${i}].sandbox" is not a string`);
    return typeof entry.sandbox === 'string' && entry.sandbox !== '';
  });
  const ipEntries = result.ips ?? [];
  if (!Array.isArray(ipEntries)) throw invalidConfig('"prevResult.ips" is not a list');
  const ips: string[] = [];
  ipEntries.forEach((entry: unknown, i) => {
    if (!isObject(entry)) throw invalidConfig(`"prevResult.ips[${i}]" is not an object`);
    const address = parseCidrAddress(entry.address);
    if (address === undefined) throw invalidConfig(`"prevResult.ips[${i}].address" is not an address in CIDR form: ${JSON.stringify(entry.address)?.slice(0, 60)}`);
    const index = entry.interface;
    if (index !== undefined && (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index >= interfaces.length)) {
      throw invalidConfig(`"prevResult.ips[${i}].interface" is not an index into "prevResult.interfaces": ${JSON.stringify(index)?.slice(0, 20)}`);
    }
    if ((index === undefined || inSandbox[index]) && !ips.includes(address)) ips.push(address);
  });
  return ips;
}

/** `10.1.2.3/24` → `10.1.2.3`, `FD00:0::5/64` → `fd00::5`; undefined when it is not an address with a valid prefix. */
export function parseCidrAddress(value: unknown): string | undefined {
  if (typeof value !== 'string' || !value.includes('/') || parseCidr(value) === undefined) return undefined;
  return canonicalIp(value.slice(0, value.indexOf('/')));
}

/** ADD and CHECK for a pod: asks the agent; when it cannot be reached, the enrollment file decides. */
async function enrollPod(command: 'ADD' | 'CHECK', config: PluginConfig, pod: CniPod | undefined, io: PluginIo): Promise<void> {
  if (pod === undefined) return;
  const podName = `${pod.namespace}/${pod.name}`;
  if (pod.ips.length === 0) {
    // The agent captures by IP and refuses a pod without one; only the enrollment file can tell whether that matters.
    const enrollment = await lookUpEnrollment(config, pod, io);
    if (enrollment.enrolled === 'unknown') {
      throw new CniPluginError('CNI_TRY_AGAIN_LATER', `cannot tell whether pod ${podName} is in the mesh: the previous plugin's result lists no IP for its interface and ${enrollment.details}; the runtime will retry`, { details: enrollment.details });
    }
    if (enrollment.enrolled) {
      throw new CniPluginError('CNI_NO_POD_IP', `pod ${podName} is in the mesh (namespace ${pod.namespace} is enrolled) but the previous plugin's result lists no IP for its interface, so its traffic cannot be captured`, { details: enrollment.details });
    }
    return;
  }
  const op = command === 'ADD' ? 'add' : 'check';
  let response: CniResponse;
  try {
    response = await io.askAgent(config.agentSocket, { version: CNI_PROTOCOL_VERSION, op, pod }, config.agentTimeoutMs);
  } catch (err) {
    const problem = err instanceof Error ? err.message : String(err);
    const enrollment = await lookUpEnrollment(config, pod, io, problem);
    if (enrollment.enrolled === 'unknown') {
      throw new CniPluginError(
        'CNI_TRY_AGAIN_LATER',
        `cannot tell whether pod ${podName} is in the mesh: the Ambit agent at ${config.agentSocket} did not answer (${problem}) and ${enrollment.details}; the runtime will retry`,
        { details: enrollment.details, cause: err },
      );
    }
    if (enrollment.enrolled) {
      throw new CniPluginError(
        'CNI_TRY_AGAIN_LATER',
        `pod ${podName} is in the mesh (namespace ${pod.namespace} is enrolled) but the Ambit agent at ${config.agentSocket} did not answer: ${problem}; the runtime will retry`,
        { details: enrollment.details, cause: err },
      );
    }
    return;
  }
  if (!response.ok) throw agentRefusal(podName, response.error);
}

/** The agent's refusal as a CNI error. */
export function agentRefusal(podName: string, error: { readonly code: string; readonly message: string; readonly supportedVersions?: readonly number[] }): CniPluginError {
  const details = `agent error code ${error.code}${error.supportedVersions ? `; the agent speaks protocol versions ${error.supportedVersions.join(', ')}, this plugin ${CNI_PROTOCOL_VERSION}` : ''}`;
  switch (error.code) {
    case 'unsupported-version': {
      const agent = error.supportedVersions?.length ? `version ${error.supportedVersions.join(', ')}` : `another version (${error.message})`;
      return new CniPluginError(
        'CNI_AGENT_REFUSED',
        `pod ${podName} cannot be enrolled: the Ambit agent on this node speaks CNI socket protocol ${agent} and this ambit-cni plugin version ${CNI_PROTOCOL_VERSION}, ` +
          "so they come from different Ambit releases; the DaemonSet's install-cni container copies the plugin from the agent's own image, " +
          'so finish the upgrade, or restart the ambit-agent pod on this node, and the two match again',
        { details },
      );
    }
    case 'not-ready':
      return new CniPluginError('CNI_TRY_AGAIN_LATER', `the Ambit agent is not ready for pod ${podName}: ${error.message}; the runtime will retry`, { details });
    case 'rules-missing':
      return new CniPluginError('CNI_RULES_MISSING', `pod ${podName} is in the mesh but its redirect rules are missing: ${error.message}`, { details });
    default:
      return new CniPluginError('CNI_AGENT_REFUSED', `the Ambit agent refused pod ${podName}: ${error.message}`, { details });
  }
}

export interface EnrollmentVerdict {
  /**
   * `'unknown'` when the file exists but cannot be read or parsed: it may be the file a power loss emptied, of a
   * node whose pods are enrolled, so the plugin cannot tell and fails ADD (the runtime retries).
   */
  readonly enrolled: boolean | 'unknown';
  /** For the CNI error's `details`: which file said so and when it was written, or what is wrong with it. */
  readonly details: string;
  /** When the pod starts on a guess (no file: no agent has written one on this node yet), the line for stderr. */
  readonly warning?: string;
}

/** The root namespace comes from the file as well: one that cannot be used lets no pod through, the mesh's own included. */
const UNUSABLE_FILE_HOLDS_ALL = ", which names the mesh's own namespace too, so no pod starts on it";

/** What else than the file's text the verdict depends on. */
export interface EnrollmentFileContext {
  /** Reading the file failed (other than ENOENT). */
  readonly readError?: unknown;
  /** The conflist entry's `meshNamespace` (PluginConfig): the DaemonSet's installer chained the plugin. */
  readonly meshNamespace?: string | undefined;
}

/**
 * What the enrollment file alone, the agent's last word kept on persistent storage, says about a pod of `namespace`.
 * No file means no agent has read the cluster on this node yet (a new node, or `ambit cni uninstall` removed it). When
 * the DaemonSet's installer chained the plugin (`meshNamespace`), an agent is on its way, and until it has read the
 * cluster nobody on the node knows which namespaces are enrolled: every pod is "unknown" and waits, but those of the
 * mesh's own namespace and kube-system, which the agent needs to read the cluster (its controller, the cluster's DNS).
 * An entry without it (written by hand, or by an older installer) lets the pod start, with a warning.
 * A file that exists but cannot be read or parsed is "unknown" for every namespace, the mesh's own too (the file is
 * what names it): an agent did write it, and it may be what a power loss left of one that listed this namespace. The
 * agent's root namespace is never enrolled. A file without `rootNamespace` (an agent that predates it) says only
 * which namespaces are enrolled: those fail, as they would have, and every other one passes (such an agent left its
 * root namespace out of the list too).
 */
export function enrollmentFileVerdict(namespace: string, file: string, text: string | undefined, context: EnrollmentFileContext = {}): EnrollmentVerdict {
  const { readError, meshNamespace } = context;
  if (readError !== undefined) {
    return { enrolled: 'unknown', details: `${file} cannot be read (${readError instanceof Error ? readError.message : String(readError)})${UNUSABLE_FILE_HOLDS_ALL}` };
  }
  if (text === undefined) {
    if (meshNamespace === undefined) {
      const why = `${file} does not exist (no Ambit agent has written it on this node yet)`;
      return { enrolled: false, details: why, warning: why };
    }
    const notYet = `${file} does not exist: no Ambit agent has read the cluster on this node yet, so which namespaces are enrolled is not known here`;
    if (namespace === meshNamespace || namespace === KUBE_SYSTEM_NAMESPACE) {
      return { enrolled: false, details: `${notYet}; namespace ${namespace} starts all the same (the mesh's own namespace, ${meshNamespace}, and ${KUBE_SYSTEM_NAMESPACE} never wait)` };
    }
    return {
      enrolled: 'unknown',
      details: `${notYet}: until this node's Ambit agent (the DaemonSet's in ${meshNamespace}) is up, only pods of ${meshNamespace} and ${KUBE_SYSTEM_NAMESPACE} start`,
    };
  }
  let snapshot;
  try {
    snapshot = parseEnrollmentSnapshot(text);
  } catch (err) {
    return { enrolled: 'unknown', details: `${file} is not an enrollment file (${(err as Error).message})${UNUSABLE_FILE_HOLDS_ALL}` };
  }
  const written = `enrollment file ${file} written ${snapshot.written || 'at an unknown time'}`;
  if (snapshot.rootNamespace === undefined) {
    return {
      enrolled: snapshot.enrolledNamespaces.includes(namespace),
      details: `${written} by an agent that predates "rootNamespace": it names no root namespace, so every namespace it lists waits for the agent, which rewrites the file once it has read the cluster`,
    };
  }
  if (namespaceEnrollment(namespace, undefined, snapshot.rootNamespace) === 'root') {
    return { enrolled: false, details: `namespace ${namespace} is the mesh's own (the agent's --root-namespace in ${written}), never enrolled` };
  }
  return { enrolled: snapshot.enrolledNamespaces.includes(namespace), details: written };
}

async function lookUpEnrollment(config: PluginConfig, pod: CniPod, io: PluginIo, agentProblem?: string): Promise<EnrollmentVerdict> {
  const file = config.enrollmentFile;
  let verdict: EnrollmentVerdict;
  try {
    verdict = enrollmentFileVerdict(pod.namespace, file, await io.readEnrollmentFile(file), { meshNamespace: config.meshNamespace });
  } catch (err) {
    verdict = enrollmentFileVerdict(pod.namespace, file, undefined, { readError: err });
  }
  if (verdict.warning !== undefined) {
    const agent = agentProblem === undefined ? '' : `the Ambit agent at ${config.agentSocket} did not answer (${agentProblem}) and `;
    io.warn(`${agent}${verdict.warning}: pod ${pod.namespace}/${pod.name} starts without mesh capture until the agent captures it`);
  }
  return verdict;
}

/** DEL: tells the agent, briefly, and succeeds whatever happens; the agent also forgets pods the API says are gone. */
async function deletePod(config: PluginConfig, pod: CniPod | undefined, io: PluginIo): Promise<void> {
  if (pod === undefined) return;
  const timeoutMs = Math.min(DEL_TIMEOUT_MS, config.agentTimeoutMs);
  try {
    const response = await io.askAgent(config.agentSocket, { version: CNI_PROTOCOL_VERSION, op: 'del', pod }, timeoutMs);
    if (!response.ok) io.warn(`the Ambit agent did not remove pod ${pod.namespace}/${pod.name}: ${response.error.message} [${response.error.code}]`);
  } catch (err) {
    io.warn(`could not tell the Ambit agent at ${config.agentSocket} that pod ${pod.namespace}/${pod.name} is gone: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function success(result: object | undefined): CniOutcome {
  return { exitCode: 0, stdout: result === undefined ? '' : `${JSON.stringify(result)}\n` };
}

function failure(cniVersion: string, err: CniPluginError): CniOutcome {
  return { exitCode: 1, stdout: `${JSON.stringify(buildCniErrorResult(cniVersion, err))}\n` };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
