/**
 * The installer: puts the `ambit-cni` executable in the node's CNI bin folder and chains it after the primary
 * plugin in the node's CNI configuration, and takes both away again. Every write goes through writeFileAtomic, so
 * the container runtime, which reads the configuration for each pod, never sees half a file, nor after a crash.
 */
import { watch, type FSWatcher } from 'node:fs';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { writeFileAtomic } from '../core/fs/index.js';
import { AmbitError, errnoCode } from '../core/errors/index.js';
import { silentLogger, type Logger } from '../core/log/index.js';
import { CNI_PROTOCOL_VERSION, type InstallerReport } from '../core/cni/index.js';
import { askAgent } from './agent-client.js';

/** The plugin's `type` in the conflist, and its file name in the bin folder. */
export const AMBIT_PLUGIN_TYPE = 'ambit-cni';
export const DEFAULT_CNI_CONF_DIR = '/etc/cni/net.d';
export const DEFAULT_CNI_BIN_DIR = '/opt/cni/bin';
/** How often `--watch` re-checks even without a file event (events can be missed on some filesystems). */
export const WATCH_RECHECK_MS = 5_000;
/** How long the installer waits for the agent's status (is the mesh being uninstalled?) on each re-check. */
const STATUS_TIMEOUT_MS = 2_000;
/** How long the agent has to remove its rules when asked. */
const UNINSTALL_TIMEOUT_MS = 30_000;

export interface PluginEntryOptions {
  agentSocket: string;
  /** The agent's persistent enrollment file; the plugin's default when absent. */
  enrollmentFile?: string;
  agentTimeoutMs?: number;
  /**
   * The namespace the installer runs in (the DaemonSet's, the mesh's own), when it runs in the DaemonSet: until an
   * agent has written the enrollment file on the node, the plugin starts only pods of it and kube-system (plugin.ts).
   */
  meshNamespace?: string;
}

export interface InstallerOptions extends PluginEntryOptions {
  confDir: string;
  binDir: string;
  /** The executable to install (the single-executable build). */
  pluginBinary: string;
  log: Logger;
}

export type ConfigChange = 'added' | 'updated' | 'unchanged' | 'converted' | 'removed' | 'absent';

export interface InstallResult {
  /** The configuration file the runtime reads, after the change. */
  file: string;
  change: ConfigChange;
}

/**
 * The plugin's entry in the conflist. The root namespace is not in it: the plugin reads the agent's from the
 * enrollment file, so the two cannot disagree (an entry an older installer wrote with one is rewritten without it).
 * `meshNamespace` counts only until that file exists: it says that the DaemonSet installed the plugin, so an agent
 * is on its way, and which pods may start before it.
 */
export function pluginEntry(options: PluginEntryOptions): Record<string, unknown> {
  return {
    type: AMBIT_PLUGIN_TYPE,
    agentSocket: options.agentSocket,
    ...(options.enrollmentFile === undefined ? {} : { enrollmentFile: options.enrollmentFile }),
    ...(options.agentTimeoutMs === undefined ? {} : { agentTimeoutMs: options.agentTimeoutMs }),
    ...(options.meshNamespace === undefined ? {} : { meshNamespace: options.meshNamespace }),
  };
}

/** The file a runtime uses, as libcni picks it: the first in lexical order ending in .conflist, .conf or .json. */
export async function findPrimaryConfig(confDir: string): Promise<string | undefined> {
  let names: string[];
  try {
    names = await readdir(confDir);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
  const first = names.filter((n) => /\.(conflist|conf|json)$/.test(n)).sort()[0];
  return first === undefined ? undefined : join(confDir, first);
}

/**
 * The configuration with the plugin chained last: a conflist gets the entry appended (or moved to the end, or
 * updated); a single-plugin .conf becomes a list. Undefined when nothing needs to change. Throws on a file that is
 * not a CNI configuration, naming what is wrong: the installer never rewrites what it does not understand.
 */
export function withPlugin(text: string, file: string, entry: Record<string, unknown>): { text: string; conflist: boolean } | undefined {
  const config = parseConfig(text, file);
  if (!Array.isArray(config.plugins)) {
    // A .conf holds one plugin; chaining needs a list. Same name and version, the plugin's own keys kept.
    const { cniVersion, name, ...plugin } = config;
    return { text: format({ cniVersion, name, plugins: [plugin, entry] }), conflist: true };
  }
  const plugins = config.plugins as unknown[];
  const others = plugins.filter((p) => !isAmbit(p));
  const last = plugins[plugins.length - 1];
  if (others.length === plugins.length - 1 && isAmbit(last) && JSON.stringify(last) === JSON.stringify(entry)) return undefined;
  return { text: format({ ...config, plugins: [...others, entry] }), conflist: false };
}

/** The configuration without the plugin; undefined when it has none. */
export function withoutPlugin(text: string, file: string): string | undefined {
  const config = parseConfig(text, file);
  if (!Array.isArray(config.plugins)) return undefined;
  const plugins = config.plugins as unknown[];
  const others = plugins.filter((p) => !isAmbit(p));
  if (others.length === plugins.length) return undefined;
  return format({ ...config, plugins: others });
}

/** Copies the executable into the bin folder (0755, atomically), unless an identical one is already there. */
export async function installBinary(source: string, binDir: string): Promise<boolean> {
  const target = join(binDir, AMBIT_PLUGIN_TYPE);
  const [from, to] = await Promise.all([stat(source), stat(target).catch(() => undefined)]);
  if (to !== undefined && to.size === from.size && (await sameContent(source, target))) return false;
  try {
    await writeFileAtomic(target, await readFile(source), { mode: 0o755 });
  } catch (err) {
    throw new AmbitError('CNI_INSTALL_FAILED', `cannot install ${source} as ${target}: ${(err as Error).message}`, { cause: err });
  }
  return true;
}

/** Installs the executable, then chains it in the configuration: the plugin exists before the runtime can call it. */
export async function installCni(options: InstallerOptions): Promise<InstallResult> {
  const binaryChanged = await installBinary(options.pluginBinary, options.binDir);
  const result = await ensureConfigured(options);
  options.log.info({ file: result.file, change: result.change, binary: join(options.binDir, AMBIT_PLUGIN_TYPE), binaryChanged }, 'ambit-cni installed');
  return result;
}

/** Chains the plugin in the primary configuration if it is not (or not exactly, or not last) there. */
export async function ensureConfigured(options: InstallerOptions): Promise<InstallResult> {
  const file = await findPrimaryConfig(options.confDir);
  if (file === undefined) {
    throw new AmbitError(
      'CNI_INSTALL_FAILED',
      `no CNI configuration in ${options.confDir} to chain ambit-cni into: install the cluster's network plugin first, or pass --cni-conf-dir`,
    );
  }
  const text = await readFile(file, 'utf8');
  const updated = withPlugin(text, file, pluginEntry(options));
  if (updated === undefined) return { file, change: 'unchanged' };
  if (updated.conflist) {
    // The list replaces the .conf under a name that sorts the same, so it stays the runtime's first choice.
    const target = file.replace(/\.(conf|json)$/, '.conflist');
    await writeAtomically(target, updated.text, file);
    if (target !== file) await rm(file, { force: true });
    return { file: target, change: 'converted' };
  }
  const hadEntry = (parseConfig(text, file).plugins as unknown[]).some(isAmbit);
  await writeAtomically(file, updated.text, file);
  return { file, change: hadEntry ? 'updated' : 'added' };
}

/** Unchains the plugin from every configuration in the folder and removes the executable. */
/**
 * The configurations in `confDir` that chain ambit-cni, each with its text without it. A file that is not a CNI
 * configuration is skipped (and logged, given `log`).
 */
export async function configsWithPlugin(confDir: string, log?: Logger): Promise<Array<{ file: string; without: string }>> {
  let names: string[] = [];
  try {
    names = (await readdir(confDir)).filter((n) => /\.(conflist|conf|json)$/.test(n));
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
  const found: Array<{ file: string; without: string }> = [];
  for (const name of names) {
    const file = join(confDir, name);
    const text = await readFile(file, 'utf8');
    try {
      const without = withoutPlugin(text, file);
      if (without !== undefined) found.push({ file, without });
    } catch (err) {
      log?.warn({ file, err: (err as Error).message }, 'left alone: not a CNI configuration');
    }
  }
  return found;
}

export async function uninstallCni(options: Pick<InstallerOptions, 'confDir' | 'binDir' | 'log'>): Promise<ConfigChange> {
  let change: ConfigChange = 'absent';
  for (const { file, without } of await configsWithPlugin(options.confDir, options.log)) {
    await writeAtomically(file, without, file);
    change = 'removed';
    options.log.info({ file }, 'ambit-cni removed from the CNI configuration');
  }
  await rm(join(options.binDir, AMBIT_PLUGIN_TYPE), { force: true });
  return change;
}

/**
 * What the agent says of `ambit uninstall` (its annotation on the mesh's Namespace), telling it where the plugin is
 * chained (`report`, for `ambit check`): 'requested', 'not-requested', or 'no-answer' (no agent, or one that fails
 * status). An older agent that does not say is 'not-requested'.
 */
export async function askUninstall(agentSocket: string, report?: InstallerReport): Promise<'requested' | 'not-requested' | 'no-answer'> {
  try {
    const response = await askAgent(agentSocket, { version: CNI_PROTOCOL_VERSION, op: 'status', ...(report === undefined ? {} : { installer: report }) }, STATUS_TIMEOUT_MS);
    if (!response.ok) return 'no-answer';
    return response.uninstall === true ? 'requested' : 'not-requested';
  } catch {
    return 'no-answer';
  }
}

/**
 * The node's part of `ambit uninstall`, in the order that never leaves an enrolled pod half-meshed: the plugin out of
 * every configuration and its executable gone (new pods start plain), then the agent removes every rule, ipset and
 * file. Resolves true once the agent has said so; false (logged) when it did not, for the next re-check to retry.
 */
export async function completeUninstall(options: Pick<InstallerOptions, 'confDir' | 'binDir' | 'agentSocket' | 'log'>): Promise<boolean> {
  await uninstallCni(options);
  try {
    const response = await askAgent(options.agentSocket, { version: CNI_PROTOCOL_VERSION, op: 'uninstall', ifMarked: true }, UNINSTALL_TIMEOUT_MS);
    if (response.ok) {
      options.log.info('uninstall: the plugin is unchained and the agent removed every rule, ipset and file');
      return true;
    }
    // cancelled meanwhile: the next re-check hears it and chains the plugin again
    if (response.error.code === 'cancelled') options.log.warn({ reason: response.error.message }, 'uninstall: cancelled before the agent removed its rules');
    else options.log.error({ error: response.error }, 'uninstall: the agent refused to remove its rules; will retry');
  } catch (err) {
    options.log.error({ err }, 'uninstall: the agent did not answer; will retry');
  }
  return false;
}

/**
 * Keeps the plugin chained: the primary network plugin may rewrite its configuration at any time (upgrades,
 * restarts), dropping the entry. Re-checks on every change in the folder and every WATCH_RECHECK_MS. Each re-check
 * first asks the agent whether the mesh is being uninstalled; while it is, the installer keeps the plugin unchained
 * and has the agent remove its rules (completeUninstall), and adds nothing back. Once the node is done, an agent that
 * does not answer leaves it so; an agent that answers (the uninstall cancelled) has the executable and entry back. Stops when `signal` aborts;
 * resolves then.
 */
export function watchCni(options: InstallerOptions, signal: AbortSignal, onChange?: (result: InstallResult) => void, chainedIn: string | null = null): Promise<void> {
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    let running: Promise<void> = Promise.resolve();
    let uninstalled = false;
    const check = () => {
      running = running
        .then(async () => {
          if (signal.aborted) return;
          // tells the agent where the plugin was chained at the last look (the first: the install's)
          const answer = await askUninstall(options.agentSocket, { chainedIn });
          if (answer === 'requested') {
            chainedIn = null;
            // again on every re-check while the mesh is being uninstalled: an agent restarted since installed its
            // rules again, and must remove them before its pod is deleted (SIGTERM keeps them)
            if (!uninstalled) uninstalled = await completeUninstall(options);
            else await completeUninstall({ ...options, log: silentLogger() });
            return;
          }
          // the node is done and its agent stopped answering: its pod is being deleted with the mesh (a kubelet stops
          // a native sidecar last). Chaining again would name a removed plugin and fail every pod of the node; only an
          // agent that answers "not requested" (a cancel) brings the plugin back.
          if (answer === 'no-answer' && uninstalled) return;
          uninstalled = false;
          // the executable first (an uninstall removed it, or a sidecar restarted mid-uninstall never installed it)
          const binary = await stat(join(options.binDir, AMBIT_PLUGIN_TYPE)).catch(() => undefined);
          if (binary === undefined) await installBinary(options.pluginBinary, options.binDir);
          const result = await ensureConfigured(options);
          chainedIn = result.file;
          if (result.change !== 'unchanged') {
            options.log.warn({ file: result.file, change: result.change }, 'the CNI configuration lost ambit-cni; chained it again');
            onChange?.(result);
          }
        })
        .catch((err: unknown) => {
          // what the agent hears next: not chained (a stale file name would pass ambit check while nothing is chained)
          chainedIn = null;
          options.log.error({ err }, 'cannot re-check the CNI configuration; will retry');
        });
    };
    const schedule = () => {
      clearTimeout(timer);
      // Editors and installers write in bursts; settle for a moment, then look once.
      timer = setTimeout(check, 50);
    };
    let watcher: FSWatcher | undefined;
    try {
      watcher = watch(options.confDir, schedule);
      watcher.on('error', (err) => options.log.warn({ err }, 'watching the CNI configuration folder failed; re-checking on the interval only'));
    } catch (err) {
      options.log.warn({ err }, 'cannot watch the CNI configuration folder; re-checking on the interval only');
    }
    // an agent (re)started: its socket appears, and it hears at once where the plugin is chained (ambit check reads it)
    let socketWatcher: FSWatcher | undefined;
    try {
      socketWatcher = watch(dirname(options.agentSocket), (_event, name) => {
        if (name === basename(options.agentSocket)) schedule();
      });
      socketWatcher.on('error', () => socketWatcher?.close());
    } catch {
      // no run folder yet: the interval finds the agent
    }
    const interval = setInterval(check, WATCH_RECHECK_MS);
    check();
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        clearInterval(interval);
        watcher?.close();
        socketWatcher?.close();
        void running.then(() => resolve());
      },
      { once: true },
    );
  });
}

function isAmbit(plugin: unknown): boolean {
  return typeof plugin === 'object' && plugin !== null && (plugin as { type?: unknown }).type === AMBIT_PLUGIN_TYPE;
}

function parseConfig(text: string, file: string): Record<string, unknown> & { plugins?: unknown } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new AmbitError('CNI_CONFIG_INVALID', `${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new AmbitError('CNI_CONFIG_INVALID', `${file} is not a JSON object`);
  const config = value as Record<string, unknown>;
  if (typeof config.cniVersion !== 'string') throw new AmbitError('CNI_CONFIG_INVALID', `${file} has no cniVersion`);
  if (config.plugins !== undefined && !Array.isArray(config.plugins)) throw new AmbitError('CNI_CONFIG_INVALID', `${file}: plugins is not a list`);
  if (config.plugins === undefined && typeof config.type !== 'string') throw new AmbitError('CNI_CONFIG_INVALID', `${file} has neither plugins nor a type`);
  return config;
}

function format(config: Record<string, unknown>): string {
  return `${JSON.stringify(config, null, 2)}\n`;
}

/** Replaces `target` atomically and durably, with the mode of `modeFrom` (the file it replaces). */
async function writeAtomically(target: string, text: string, modeFrom: string): Promise<void> {
  const mode = (await stat(modeFrom).catch(() => undefined))?.mode ?? 0o644;
  try {
    await writeFileAtomic(target, text, { mode: mode & 0o777 });
  } catch (err) {
    throw new AmbitError('CNI_INSTALL_FAILED', (err as Error).message, { cause: err });
  }
}

async function sameContent(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([readFile(a), readFile(b)]);
  return x.equals(y);
}
