import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { AmbitError } from '../core/errors/index.js';
import { NETNS_DIR } from './netns.js';

/** Debian's containernetworking-plugins install here. */
export const CNI_PLUGIN_DIR = '/usr/lib/cni';

const CNI_VERSION = '1.0.0';

export type TestbedCni = 'bridge' | 'ptp';

export const TESTBED_CNIS: readonly TestbedCni[] = ['bridge', 'ptp'];

/** The bridge a bridge-CNI node's pods hang off, as on most Kubernetes nodes using that plugin. */
const POD_BRIDGE = 'cni0';

const POD_IFNAME = 'eth0';

/** The network configuration a container runtime would read from the node's conflist. */
export function buildCniConfig(
  cni: TestbedCni,
  podCidr: string,
  ipamDataDir: string,
  overrides: Record<string, unknown> = {},
  podCidr6?: string,
): Record<string, unknown> {
  const ipam = {
    type: 'host-local',
    // Per testbed, so nothing is written to /var/lib/cni and two testbeds never share leases.
    dataDir: ipamDataDir,
    // Dual stack is one more range and one more default route, as in a dual-stack cluster's CNI configuration.
    ranges: [[{ subnet: podCidr }], ...(podCidr6 === undefined ? [] : [[{ subnet: podCidr6 }]])],
    routes: [{ dst: '0.0.0.0/0' }, ...(podCidr6 === undefined ? [] : [{ dst: '::/0' }])],
  };
  const plugin = cni === 'bridge' ? { bridge: POD_BRIDGE, isGateway: true, hairpinMode: true } : {};
  return { cniVersion: CNI_VERSION, name: 'ambit-testbed', type: cni, ...plugin, ipam, ...overrides };
}

/** A network configuration list as a node's CNI folder holds it (`*.conflist`). */
export interface CniConflist {
  cniVersion: string;
  name: string;
  plugins: Array<Record<string, unknown>>;
  [key: string]: unknown;
}

/** The conflist a node's runtime reads: the primary plugin alone, until an installer chains more after it. */
export function buildCniConflist(
  cni: TestbedCni,
  podCidr: string,
  ipamDataDir: string,
  overrides: Record<string, unknown> = {},
  podCidr6?: string,
): CniConflist {
  const { cniVersion, name, ...plugin } = buildCniConfig(cni, podCidr, ipamDataDir, overrides, podCidr6);
  return { cniVersion: String(cniVersion), name: String(name), plugins: [plugin] };
}

/**
 * The configuration a runtime uses, read as libcni does: the first file of the folder in lexical order ending in
 * .conflist, .conf or .json; a single-plugin .conf becomes a list of one.
 */
export async function readCniConfDir(confDir: string): Promise<CniConflist> {
  const names = (await readdir(confDir)).filter((n) => /\.(conflist|conf|json)$/.test(n)).sort();
  const first = names[0];
  if (first === undefined) throw new AmbitError('TESTBED_CNI_FAILED', `no CNI network configuration in ${confDir}`);
  const value = JSON.parse(await readFile(join(confDir, first), 'utf8')) as Record<string, unknown>;
  if (Array.isArray(value['plugins'])) return value as CniConflist;
  const { cniVersion, name, ...plugin } = value;
  return { cniVersion: String(cniVersion), name: String(name), plugins: [plugin] };
}

export interface CniInvocation {
  command: 'ADD' | 'DEL';
  /** A single plugin's configuration, or a list run in order (ADD) or in reverse (DEL) with `prevResult` chained. */
  config: Record<string, unknown> | CniConflist;
  /** The namespace that plays the host: the plugin runs inside it. */
  nodeNetns: string;
  podNetns: string;
  containerId: string;
  /** CNI_ARGS as the runtime sends it (`IgnoreUnknown=1;K8S_POD_NAMESPACE=…`); unset when absent. */
  cniArgs?: string;
  /** Folders searched for plugin executables, before Debian's; CNI_PATH lists them all. */
  pluginDirs?: readonly string[];
  /** DEL: the cached result of the ADD, handed to each plugin as `prevResult` as a runtime does. */
  prevResult?: unknown;
}

/** A plugin's error object (CNI spec: code, msg, details) when it printed one; on TESTBED_CNI_FAILED errors. */
export interface CniErrorObject {
  code: number;
  msg: string;
  details?: string;
}

/**
 * Runs a plugin, or a conflist's plugins, as a container runtime does (CNI spec 1.0): parameters in the environment,
 * the network configuration on stdin (name, cniVersion and the previous plugin's result merged in for chained
 * plugins), the result or an error object on stdout. Resolves with the last plugin's result.
 */
export async function invokeCni(invocation: CniInvocation): Promise<string> {
  if (!Array.isArray((invocation.config as CniConflist).plugins)) return invokePlugin(invocation, invocation.config, invocation.prevResult);
  const list = invocation.config as CniConflist;
  const { plugins, ...common } = list;
  const configs = plugins.map((plugin) => ({ ...plugin, cniVersion: common.cniVersion, name: common.name }));
  if (invocation.command === 'DEL') {
    // Every plugin gets its DEL, even when one fails: the spec wants DEL to release all it can.
    let firstError: unknown;
    for (const config of configs.reverse()) {
      await invokePlugin(invocation, config, invocation.prevResult).catch((err: unknown) => {
        firstError ??= err;
      });
    }
    if (firstError !== undefined) throw firstError;
    return '';
  }
  let prevResult: unknown;
  let output = '';
  for (const config of configs) {
    output = await invokePlugin(invocation, config, prevResult);
    prevResult = JSON.parse(output) as unknown;
  }
  return output;
}

async function invokePlugin(invocation: CniInvocation, config: Record<string, unknown>, prevResult: unknown): Promise<string> {
  const type = String(config['type']);
  const dirs = [...(invocation.pluginDirs ?? []), CNI_PLUGIN_DIR];
  const executable = dirs.map((dir) => join(dir, type)).find((file) => existsSync(file)) ?? join(CNI_PLUGIN_DIR, type);
  const input = prevResult === undefined ? config : { ...config, prevResult };
  const result = await execa('ip', ['netns', 'exec', invocation.nodeNetns, executable], {
    input: JSON.stringify(input),
    env: {
      CNI_COMMAND: invocation.command,
      CNI_CONTAINERID: invocation.containerId,
      CNI_NETNS: `${NETNS_DIR}/${invocation.podNetns}`,
      CNI_IFNAME: POD_IFNAME,
      CNI_PATH: dirs.join(':'),
      ...(invocation.cniArgs === undefined ? {} : { CNI_ARGS: invocation.cniArgs }),
    },
    reject: false,
  });
  if (result.exitCode !== 0) {
    const what = `CNI ${type} ${invocation.command} for ${invocation.podNetns} (run in ${invocation.nodeNetns})`;
    const error = parseJsonObject(result.stdout);
    const cniError = error !== undefined && typeof error['code'] === 'number' ? (error as unknown as CniErrorObject) : undefined;
    throw Object.assign(
      new AmbitError('TESTBED_CNI_FAILED', `${what} failed: ${describeCniFailure(result.stdout, result.stderr)}`, { cause: result }),
      { cniError, plugin: type },
    );
  }
  return result.stdout;
}

/** The spec's error object is `{ code, msg, details }`; a plugin that could not even start leaves only stderr. */
function describeCniFailure(stdout: string, stderr: string): string {
  const error = parseJsonObject(stdout);
  if (error !== undefined && typeof error['code'] === 'number') {
    const details = typeof error['details'] === 'string' && error['details'] !== '' ? ` (${error['details']})` : '';
    return `code ${error['code']}: ${String(error['msg'])}${details}`;
  }
  return (stderr.trim() || stdout.trim()) || 'no output';
}

/** The pod's IPv4 address: the `ips` entry whose `interface` indexes the sandbox's eth0. */
export function parsePodIp(stdout: string): string {
  const ip = podAddresses(stdout).find((address) => isIP(address) === 4);
  if (ip === undefined) throw new AmbitError('TESTBED_CNI_FAILED', `CNI ADD result has no IPv4 address on the pod's ${POD_IFNAME}: ${stdout}`);
  return ip;
}

/** The pod's IPv6 address on eth0, when the network is dual stack. */
export function parsePodIp6(stdout: string): string | undefined {
  return podAddresses(stdout).find((address) => isIP(address) === 6);
}

function podAddresses(stdout: string): string[] {
  const result = parseJsonObject(stdout);
  const interfaces = Array.isArray(result?.['interfaces']) ? (result['interfaces'] as Array<Record<string, unknown>>) : [];
  const ips = Array.isArray(result?.['ips']) ? (result['ips'] as Array<Record<string, unknown>>) : [];
  return ips
    .filter((entry) => {
      const iface = typeof entry['interface'] === 'number' ? interfaces[entry['interface']] : undefined;
      return iface?.['name'] === POD_IFNAME && iface['sandbox'] !== undefined;
    })
    .map((entry) => (typeof entry['address'] === 'string' ? entry['address'] : '').split('/')[0] ?? '');
}

function parseJsonObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
