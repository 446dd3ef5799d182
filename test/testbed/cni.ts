import { execa } from 'execa';
import { AmbitError } from '../../core/errors.js';
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
): Record<string, unknown> {
  const ipam = {
    type: 'host-local',
    // Per testbed, so nothing is written to /var/lib/cni and two testbeds never share leases.
    dataDir: ipamDataDir,
    ranges: [[{ subnet: podCidr }]],
    routes: [{ dst: '0.0.0.0/0' }],
  };
  const plugin = cni === 'bridge' ? { bridge: POD_BRIDGE, isGateway: true, hairpinMode: true } : {};
  return { cniVersion: CNI_VERSION, name: 'ambit-testbed', type: cni, ...plugin, ipam, ...overrides };
}

export interface CniInvocation {
  command: 'ADD' | 'DEL';
  config: Record<string, unknown>;
  /** The namespace that plays the host: the plugin runs inside it. */
  nodeNetns: string;
  podNetns: string;
  containerId: string;
}

/**
 * Runs a plugin as a container runtime does (CNI spec 1.0): parameters in the environment, the network
 * configuration on stdin, the result or an error object on stdout.
 */
export async function invokeCni(invocation: CniInvocation): Promise<string> {
  const type = String(invocation.config['type']);
  const result = await execa('ip', ['netns', 'exec', invocation.nodeNetns, `${CNI_PLUGIN_DIR}/${type}`], {
    input: JSON.stringify(invocation.config),
    env: {
      CNI_COMMAND: invocation.command,
      CNI_CONTAINERID: invocation.containerId,
      CNI_NETNS: `${NETNS_DIR}/${invocation.podNetns}`,
      CNI_IFNAME: POD_IFNAME,
      CNI_PATH: CNI_PLUGIN_DIR,
    },
    reject: false,
  });
  if (result.exitCode !== 0) {
    const what = `CNI ${type} ${invocation.command} for ${invocation.podNetns} (run in ${invocation.nodeNetns})`;
    throw new AmbitError('TESTBED_CNI_FAILED', `${what} failed: ${describeCniFailure(result.stdout, result.stderr)}`, {
      cause: result,
    });
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
  const result = parseJsonObject(stdout);
  const interfaces = Array.isArray(result?.['interfaces']) ? (result['interfaces'] as Array<Record<string, unknown>>) : [];
  const ips = Array.isArray(result?.['ips']) ? (result['ips'] as Array<Record<string, unknown>>) : [];
  for (const entry of ips) {
    const iface = typeof entry['interface'] === 'number' ? interfaces[entry['interface']] : undefined;
    const address = typeof entry['address'] === 'string' ? entry['address'] : '';
    const ip = address.split('/')[0] ?? '';
    if (iface?.['name'] === POD_IFNAME && iface['sandbox'] !== undefined && /^\d+\.\d+\.\d+\.\d+$/.test(ip)) {
      return ip;
    }
  }
  throw new AmbitError('TESTBED_CNI_FAILED', `CNI ADD result has no IPv4 address on the pod's ${POD_IFNAME}: ${stdout}`);
}

function parseJsonObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
