/** The installer's edits of a node's CNI configuration: chaining, conversion, removal, atomicity, re-adding. */
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import {
  ensureConfigured,
  findPrimaryConfig,
  installCni,
  pluginEntry,
  uninstallCni,
  watchCni,
  withoutPlugin,
  withPlugin,
  type InstallerOptions,
} from '../cni/installer.js';
import { CniServer } from '../agent/cni-server.js';
import type { CniResponse } from '../core/cni/index.js';
import { silentLogger } from '../core/log/log.js';

const ENTRY = pluginEntry({ agentSocket: '/var/run/ambit/cni.sock' });
const bridge = { type: 'bridge', bridge: 'cni0', ipam: { type: 'host-local', ranges: [[{ subnet: '10.244.1.0/24' }]] } };
const conflist = (plugins: unknown[]) => JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', plugins });

async function setUp(t: Test): Promise<InstallerOptions & { root: string }> {
  const root = await mkdtemp(join(tmpdir(), 'ambit-cni-installer-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const confDir = join(root, 'net.d');
  const binDir = join(root, 'bin');
  await mkdir(confDir);
  await mkdir(binDir);
  const pluginBinary = join(root, 'ambit-cni-build');
  await writeFile(pluginBinary, '#!/bin/sh\necho fake plugin\n');
  await chmod(pluginBinary, 0o755);
  return { root, confDir, binDir, pluginBinary, agentSocket: '/var/run/ambit/cni.sock', log: silentLogger() };
}

t.test("the plugin entry has no root namespace (the plugin reads the agent's from the enrollment file); an older entry with one is rewritten", async (t) => {
  t.same(ENTRY, { type: 'ambit-cni', agentSocket: '/var/run/ambit/cni.sock' });
  const older = withPlugin(conflist([bridge, { ...ENTRY, rootNamespace: 'mesh-system' }]), 'f', ENTRY);
  t.same(JSON.parse(older!.text).plugins, [bridge, ENTRY], 'the entry an older installer wrote loses its rootNamespace');
  const inDaemonSet = pluginEntry({ agentSocket: '/var/run/ambit/cni.sock', meshNamespace: 'ambit-system' });
  t.same(inDaemonSet, { ...ENTRY, meshNamespace: 'ambit-system' }, "in the DaemonSet, the entry names its namespace: the plugin's guide until the agent has written the enrollment file");
});

t.test('withPlugin: appended last, moved last, updated, or left alone', async (t) => {
  const added = withPlugin(conflist([bridge]), 'f', ENTRY);
  t.same(JSON.parse(added!.text).plugins, [bridge, ENTRY], 'appended after the primary');
  t.equal(added!.conflist, false);
  t.equal(withPlugin(added!.text, 'f', ENTRY), undefined, 'already there, last, identical: no change');
  const portmap = { type: 'portmap', capabilities: { portMappings: true } };
  const moved = withPlugin(conflist([bridge, ENTRY, portmap]), 'f', ENTRY);
  t.same(JSON.parse(moved!.text).plugins, [bridge, portmap, ENTRY], 'moved to the end when another plugin was added after it');
  const updated = withPlugin(conflist([bridge, { ...ENTRY, agentSocket: '/old.sock' }]), 'f', ENTRY);
  t.same(JSON.parse(updated!.text).plugins, [bridge, ENTRY], 'a changed entry is updated, not duplicated');
  const dup = withPlugin(conflist([bridge, ENTRY, ENTRY]), 'f', ENTRY);
  t.same(JSON.parse(dup!.text).plugins, [bridge, ENTRY], 'duplicates collapse to one');
  const fromConf = withPlugin(JSON.stringify({ cniVersion: '0.4.0', name: 'net', ...bridge }), 'f', ENTRY);
  t.same(JSON.parse(fromConf!.text), { cniVersion: '0.4.0', name: 'net', plugins: [bridge, ENTRY] }, 'a single-plugin .conf becomes a list');
  t.equal(fromConf!.conflist, true);
  const withExtra = JSON.parse(withPlugin(JSON.stringify({ cniVersion: '1.0.0', name: 'n', disableCheck: true, plugins: [bridge] }), 'f', ENTRY)!.text);
  t.equal(withExtra.disableCheck, true, 'top-level keys of the list are kept');
});

t.test('a file that is not a CNI configuration is refused with its name and the reason, never rewritten', async (t) => {
  t.throws(() => withPlugin('{not json', '/etc/cni/net.d/10-x.conflist', ENTRY), { code: 'CNI_CONFIG_INVALID', message: /10-x.conflist is not valid JSON/ });
  t.throws(() => withPlugin('[]', 'f', ENTRY), { message: /not a JSON object/ });
  t.throws(() => withPlugin('{"name":"x","plugins":[]}', 'f', ENTRY), { message: /no cniVersion/ });
  t.throws(() => withPlugin('{"cniVersion":"1.0.0","plugins":{}}', 'f', ENTRY), { message: /plugins is not a list/ });
  t.throws(() => withPlugin('{"cniVersion":"1.0.0","name":"x"}', 'f', ENTRY), { message: /neither plugins nor a type/ });
});

t.test('withoutPlugin removes every entry and nothing else', async (t) => {
  t.same(JSON.parse(withoutPlugin(conflist([bridge, ENTRY]), 'f')!).plugins, [bridge]);
  t.equal(withoutPlugin(conflist([bridge]), 'f'), undefined, 'nothing to remove');
  t.equal(withoutPlugin(JSON.stringify({ cniVersion: '1.0.0', name: 'n', ...bridge }), 'f'), undefined, 'a .conf has no chain');
});

t.test('install and uninstall on a folder: the runtime\'s first file, write-then-rename, mode kept', async (t) => {
  const opts = await setUp(t);
  await t.rejects(installCni(opts), { code: 'CNI_INSTALL_FAILED', message: /no CNI configuration in .*net\.d/ }, 'nothing to chain into');
  await writeFile(join(opts.confDir, '10-flannel.conflist'), conflist([bridge]), { mode: 0o600 });
  await writeFile(join(opts.confDir, '20-other.conflist'), conflist([bridge]));
  await writeFile(join(opts.confDir, 'README'), 'not a config');
  t.equal(await findPrimaryConfig(opts.confDir), join(opts.confDir, '10-flannel.conflist'), 'lexical order, config extensions only');
  const result = await installCni(opts);
  t.same(result, { file: join(opts.confDir, '10-flannel.conflist'), change: 'added' });
  t.same(JSON.parse(await readFile(result.file, 'utf8')).plugins, [bridge, ENTRY]);
  t.equal((await stat(result.file)).mode & 0o777, 0o600, 'the file keeps its mode');
  t.same(JSON.parse(await readFile(join(opts.confDir, '20-other.conflist'), 'utf8')).plugins, [bridge], 'only the file the runtime uses is changed');
  t.equal(await readFile(join(opts.binDir, 'ambit-cni'), 'utf8'), '#!/bin/sh\necho fake plugin\n', 'the executable is copied');
  t.ok(((await stat(join(opts.binDir, 'ambit-cni'))).mode & 0o755) === 0o755);
  t.same((await readdir(opts.confDir)).filter((n) => n.includes('tmp')), [], 'no temporary file left');
  t.same(await installCni(opts), { file: result.file, change: 'unchanged' }, 'idempotent');

  t.equal(await uninstallCni(opts), 'removed');
  t.same(JSON.parse(await readFile(result.file, 'utf8')).plugins, [bridge], 'back to the primary plugin alone');
  await t.rejects(stat(join(opts.binDir, 'ambit-cni')), { code: 'ENOENT' });
  t.equal(await uninstallCni(opts), 'absent', 'uninstalling twice is fine');
});

t.test('a .conf is converted to a .conflist of the same name that the runtime still picks first', async (t) => {
  const opts = await setUp(t);
  await writeFile(join(opts.confDir, '10-bridge.conf'), JSON.stringify({ cniVersion: '1.0.0', name: 'net', ...bridge }));
  const result = await ensureConfigured(opts);
  t.same(result, { file: join(opts.confDir, '10-bridge.conflist'), change: 'converted' });
  t.same(await readdir(opts.confDir), ['10-bridge.conflist'], 'the .conf is gone, replaced by the list');
  t.equal(await findPrimaryConfig(opts.confDir), result.file);
});

t.test('an invalid primary configuration fails the install and is left exactly as it was', async (t) => {
  const opts = await setUp(t);
  await writeFile(join(opts.confDir, '10-broken.conflist'), '{"cniVersion": ');
  await t.rejects(ensureConfigured(opts), { code: 'CNI_CONFIG_INVALID' });
  t.equal(await readFile(join(opts.confDir, '10-broken.conflist'), 'utf8'), '{"cniVersion": ');
});

t.test('--watch re-adds the plugin when the primary network plugin rewrites its file', async (t) => {
  const opts = await setUp(t);
  const file = join(opts.confDir, '10-flannel.conflist');
  await writeFile(file, conflist([bridge]));
  const stop = new AbortController();
  const readds: string[] = [];
  const watching = watchCni(opts, stop.signal, (r) => readds.push(r.change));
  const waitFor = async (test: () => Promise<boolean>) => {
    const deadline = Date.now() + 3000;
    while (!(await test())) {
      if (Date.now() > deadline) throw new Error('timed out');
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const chained = async () => JSON.parse(await readFile(file, 'utf8')).plugins.length === 2;
  await waitFor(chained);
  const before = readds.length;
  // The primary CNI's own installer writes its file back without us (write-then-rename, as most do).
  await writeFile(`${file}.new`, conflist([bridge]));
  const { rename } = await import('node:fs/promises');
  await rename(`${file}.new`, file);
  const started = Date.now();
  // The file is back before the watcher reports it: the report comes once the write is on disk (folder fsynced).
  await waitFor(async () => (await chained()) && readds.length > before);
  t.ok(Date.now() - started < 1000, `re-added in ${Date.now() - started} ms`);
  t.equal(readds.length, before + 1, 'reported once as a re-add');
  t.equal(readds.at(-1), 'added');
  stop.abort();
  await watching;
});

/**
 * Polls `test` (each 20 ms, up to 5 s); `nudge` every 200 ms (a change in the folder makes the watch look once it
 * settles for 50 ms: nudging faster would keep it from ever looking).
 */
async function until(what: string, test: () => Promise<boolean>, nudge?: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + 5000;
  for (let round = 0; ; round++) {
    if (round % 10 === 0) await nudge?.();
    if (await test()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

t.test('--watch during ambit uninstall: out once the node is done, it stays out when the agent goes, and a cancel brings back the executable and the entry', async (t) => {
  const opts = await setUp(t);
  const file = join(opts.confDir, '10-flannel.conflist');
  await writeFile(file, conflist([bridge]));
  await installCni(opts);
  const binary = join(opts.binDir, 'ambit-cni');
  const chained = async () => JSON.parse(await readFile(file, 'utf8')).plugins.length === 2;
  const hasBinary = () => stat(binary).then(() => true, () => false);
  // the agent's side of the socket, as the agent's own server parses it; what it answers is the test's
  let agent: 'marked' | 'stopping' | 'cancelled' = 'marked';
  const asked = { status: 0, uninstall: 0, ifMarked: 0 };
  const server = await CniServer.listen({
    path: join(opts.root, 'cni.sock'),
    log: silentLogger(),
    handle: async (request): Promise<CniResponse> => {
      if (request.op === 'uninstall') {
        asked.uninstall++;
        if (request.ifMarked === true) asked.ifMarked++;
        return { version: 1, ok: true, reason: 'rules removed' };
      }
      asked.status++;
      if (agent === 'stopping') return { version: 1, ok: false, error: { code: 'internal', message: 'the agent is stopping' } };
      return agent === 'marked' ? { version: 1, ok: true, uninstall: true } : { version: 1, ok: true };
    },
  });
  t.teardown(() => server.close());
  const stop = new AbortController();
  const watching = watchCni({ ...opts, agentSocket: join(opts.root, 'cni.sock') }, stop.signal);
  t.teardown(async () => {
    stop.abort();
    await watching;
  });
  const nudge = () => writeFile(join(opts.confDir, 'nudge.txt'), String(Math.random()));

  await until('the node is done', async () => asked.uninstall > 0 && !(await chained()) && !(await hasBinary()));
  t.equal(asked.ifMarked, asked.uninstall, 'every uninstall asks only while the mesh is marked (a cancel that got there first wins)');

  agent = 'stopping';
  const before = asked.status;
  await until('two looks at an agent that no longer answers', async () => asked.status >= before + 2, nudge);
  t.notOk(await chained(), 'the plugin stays out: chaining it now would name a removed executable and fail every pod of the node');
  t.notOk(await hasBinary(), 'and the executable stays gone');

  agent = 'cancelled';
  let entryWithoutExecutable = false;
  await until(
    'the cancel is heard',
    async () => {
      // the entry first and the executable second would fail every pod that starts in between
      const [entry, executable] = [await chained(), await hasBinary()];
      if (entry && !executable) entryWithoutExecutable = true;
      return entry && executable;
    },
    nudge,
  );
  t.notOk(entryWithoutExecutable, 'never an entry without its executable');
  t.same(await readFile(binary), await readFile(opts.pluginBinary), 'the executable is back before the entry that names it');
});
