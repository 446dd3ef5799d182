/**
 * `ambit cni install|uninstall`: chains the ambit-cni plugin into the node's CNI configuration (and keeps it there
 * with --watch), or takes it out and has the agent remove every rule, so the node returns to plain networking.
 */
import { access, constants } from 'node:fs/promises';
import { DEFAULT_CNI_SOCKET, DEFAULT_ENROLLMENT_FILE, isNamespaceName } from '../core/cni/index.js';
import { AmbitError } from '../core/errors/index.js';
import { parseFlags, subcommand, usageError as cliUsageError } from './args.js';
import { createLogger } from '../core/log/index.js';
import {
  askAgent,
  buildCniSea,
  DEFAULT_CNI_BIN_DIR,
  DEFAULT_CNI_CONF_DIR,
  DEFAULT_CNI_SEA_FILE,
  installCni,
  uninstallCni,
  askUninstall,
  watchCni,
  type InstallerOptions,
} from '../cni/index.js';

export const CNI_USAGE = `Usage: ambit cni install [options]
       ambit cni uninstall [options]

install    copies the ambit-cni executable into the CNI bin folder and chains it last in the node's CNI
           configuration (a .conf becomes a .conflist); with --watch, keeps re-adding it whenever the primary
           network plugin rewrites its configuration, until SIGTERM.
uninstall  takes ambit-cni out of every configuration in the folder, removes the executable, and has the agent
           remove every Ambit rule and ipset (directly, if the agent is not running): plain networking again.

Options:
  --cni-conf-dir DIR     the runtime's CNI configuration folder   (default ${DEFAULT_CNI_CONF_DIR})
  --cni-bin-dir DIR      the runtime's CNI plugin folder          (default ${DEFAULT_CNI_BIN_DIR})
  --agent-socket PATH    the agent's CNI socket                   (default ${DEFAULT_CNI_SOCKET})
  --enrollment-file PATH the agent's enrollment file (its         (default ${DEFAULT_ENROLLMENT_FILE})
                         --state-dir), read when it is down
  --agent-timeout-ms N   how long ADD waits for the agent         (plugin default 5000)
  --namespace NS         install, in the DaemonSet: its namespace (downward API; AMBIT_NAMESPACE). Until an agent
                         has written the enrollment file on this node, only pods of NS and kube-system start; the
                         others wait for the agent (CNI error 11). Without it they start uncaptured, with a warning
  --plugin PATH          the executable to install                (default: the single-executable build,
                                                                   built on first use)
  --watch                install: keep the plugin chained until SIGTERM/SIGINT
  --iptables-backend B   uninstall without an agent: auto | nft | legacy (default auto)
  --log-level LEVEL      info (default), debug, warn, error
  -h, --help             show this help

The mesh's own namespace, whose pods are never enrolled, is the agent's --root-namespace: the agent writes it into
the enrollment file, where the plugin reads it. --namespace counts only before that file exists.

Exit codes: 0 done, 1 failure (nothing half-applied: each file is replaced atomically), 2 bad usage.
`;

const usageError = (message: string) => cliUsageError('cni', message);

export async function runCniCommand(argv: string[]): Promise<number> {
  const command = subcommand('cni', argv, ['install', 'uninstall'], CNI_USAGE);
  if (typeof command === 'number') return command;
  const { sub } = command;
  const values = parseFlags('cni', command.rest, {
    'cni-conf-dir': { type: 'string' },
    'cni-bin-dir': { type: 'string' },
    'agent-socket': { type: 'string' },
    'enrollment-file': { type: 'string' },
    'agent-timeout-ms': { type: 'string' },
    namespace: { type: 'string' },
    // Removed; still parsed, so that it fails with where the value comes from now rather than as an unknown option.
    'root-namespace': { type: 'string' },
    plugin: { type: 'string' },
    watch: { type: 'boolean' },
    'iptables-backend': { type: 'string' },
    'log-level': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    process.stdout.write(CNI_USAGE);
    return 0;
  }
  const absolute = (flag: string, value: string) => {
    if (!value.startsWith('/')) throw usageError(`--${flag} ${value} is not an absolute path`);
    return value;
  };
  const confDir = absolute('cni-conf-dir', values['cni-conf-dir'] ?? DEFAULT_CNI_CONF_DIR);
  const binDir = absolute('cni-bin-dir', values['cni-bin-dir'] ?? DEFAULT_CNI_BIN_DIR);
  const agentSocket = absolute('agent-socket', values['agent-socket'] ?? DEFAULT_CNI_SOCKET);
  const enrollmentFile = absolute('enrollment-file', values['enrollment-file'] ?? DEFAULT_ENROLLMENT_FILE);
  let agentTimeoutMs: number | undefined;
  if (values['agent-timeout-ms'] !== undefined) {
    agentTimeoutMs = Number(values['agent-timeout-ms']);
    if (!Number.isInteger(agentTimeoutMs) || agentTimeoutMs < 100 || agentTimeoutMs > 60_000) {
      throw usageError(`--agent-timeout-ms ${values['agent-timeout-ms']} is not a whole number from 100 to 60000`);
    }
  }
  if (values['root-namespace'] !== undefined) {
    throw usageError(
      "--root-namespace is no longer an option of ambit cni: the plugin reads the mesh's own namespace from the agent's enrollment file, " +
        "which the agent writes with its own --root-namespace (set it there only, and drop it here)",
    );
  }
  const meshNamespace = values.namespace ?? process.env.AMBIT_NAMESPACE;
  if (meshNamespace !== undefined && !isNamespaceName(meshNamespace)) throw usageError(`--namespace ${meshNamespace} is not a namespace name (a DNS label)`);
  if (values.namespace !== undefined && sub === 'uninstall') throw usageError('--namespace applies to install only');
  const backend = values['iptables-backend'] ?? 'auto';
  if (!['auto', 'nft', 'legacy'].includes(backend)) throw usageError(`--iptables-backend ${backend} is not one of auto, nft, legacy`);
  const logLevel = values['log-level'] ?? 'info';
  if (!['debug', 'info', 'warn', 'error'].includes(logLevel)) throw usageError(`--log-level ${logLevel} is not one of debug, info, warn, error`);
  if (values.watch && sub === 'uninstall') throw usageError('--watch applies to install only');
  const log = createLogger({ level: logLevel as 'info', name: 'ambit-cni-installer' });

  if (sub === 'uninstall') {
    await uninstallCni({ confDir, binDir, log });
    await removeRules(agentSocket, backend as 'auto' | 'nft' | 'legacy', log);
    return 0;
  }

  const pluginBinary = values.plugin ?? (await defaultPlugin());
  await access(pluginBinary, constants.X_OK).catch((err: unknown) => {
    throw new AmbitError('CNI_INSTALL_FAILED', `the plugin ${pluginBinary} is not an executable file: ${(err as Error).message}`);
  });
  const options: InstallerOptions = {
    confDir,
    binDir,
    agentSocket,
    enrollmentFile,
    pluginBinary,
    log,
    ...(agentTimeoutMs === undefined ? {} : { agentTimeoutMs }),
    ...(meshNamespace === undefined ? {} : { meshNamespace }),
  };
  // a sidecar restarted while the mesh is being uninstalled must not chain the plugin again: the watch finishes it
  let chainedIn: string | null = null;
  if (values.watch && (await askUninstall(agentSocket)) === 'requested') {
    log.warn({ agentSocket }, 'the agent says the mesh is being uninstalled: not chaining the plugin');
  } else {
    const result = await installCni(options);
    chainedIn = result.file;
    process.stdout.write(`ambit-cni chained in ${result.file} (${result.change})\n`);
  }
  if (!values.watch) return 0;
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  log.info({ confDir }, 'watching the CNI configuration');
  await watchCni(options, stop.signal, undefined, chainedIn);
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
  return 0;
}

/** The single-executable build beside the compiled code, built when missing or older than the code. */
async function defaultPlugin(): Promise<string> {
  const result = await buildCniSea({ outFile: DEFAULT_CNI_SEA_FILE });
  return result.outFile;
}

/** Has the agent remove its rules; when no agent answers, removes them here (this runs in the node's namespace). */
async function removeRules(agentSocket: string, backend: 'auto' | 'nft' | 'legacy', log: ReturnType<typeof createLogger>): Promise<void> {
  try {
    const response = await askAgent(agentSocket, { version: 1, op: 'uninstall' }, 10_000);
    if (response.ok) {
      log.info({ agentSocket }, 'the agent removed every rule and ipset');
      return;
    }
    log.warn({ error: response.error }, 'the agent refused to uninstall; removing the rules directly');
  } catch (err) {
    log.info({ agentSocket, reason: (err as Error).message }, 'no agent answered; removing the rules directly');
  }
  const { removeRedirectRules } = await import('../agent/index.js');
  await removeRedirectRules({ backend, log });
  log.info('removed Ambit redirect rules and ipsets');
}
