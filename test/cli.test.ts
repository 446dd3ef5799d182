/** The `ambit` command's help and exit codes, as scripts see them. */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { needsRoot, needsTools } from './prerequisites.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'main.js');

/** Runs the CLI; `wrapper` (e.g. `ip netns exec NS setpriv ...`) runs it under another program. */
function ambit(args: string[], wrapper: string[] = []): Promise<{ code: number; stdout: string; stderr: string }> {
  const [file, ...wrapperArgs] = [...wrapper, process.execPath];
  return new Promise((resolve) => {
    execFile(file as string, [...wrapperArgs, CLI, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

t.test('help and version exit 0', async (t) => {
  t.match(await ambit(['--help']), { code: 0, stdout: /Usage: ambit <command>/ });
  t.match(await ambit(['agent', '--help']), { code: 0, stdout: /--cleanup/ });
  t.match(await ambit(['agent', '--help']), { stdout: /the mesh CA's private key\s+\(--ca-dir\/ca\.key\) on every node/ }, 'the help says where the CA key sits in local mode');
  t.match(await ambit(['agent', '--help']), { stdout: /In kubernetes mode no node holds a CA key/ }, 'and that it sits on no node in kubernetes mode');
  t.match(await ambit(['demo', '--help']), { code: 0, stdout: /Needs root/ });
  t.match(await ambit(['version']), { code: 0, stdout: /^ambit \d+\.\d+\.\d+/ });
  t.match(await ambit(['cni', '--help']), { code: 0, stdout: /ambit cni install/ });
  t.match(await ambit(['cni', 'install', '--help']), { code: 0, stdout: /--cni-conf-dir/ });
});

t.test('usage errors exit 2 and say what is wrong', async (t) => {
  t.match(await ambit([]), { code: 2, stdout: /Usage/ });
  t.match(await ambit(['frobnicate']), { code: 2, stderr: /unknown command 'frobnicate'/ });
  t.match(await ambit(['agent']), { code: 2, stderr: /--node .* is required/ });
  t.match(await ambit(['agent', '--node', 'n', '--config', '/c', '--ca-dir', '/x', '--log-level', 'loud']), { code: 2, stderr: /--log-level loud/ });
  t.match(await ambit(['agent', '--node', 'n', '--config', '/c', '--ca-dir', '/x', '--run-dir', 'relative']), { code: 2, stderr: /--run-dir relative is not an absolute path/ });
  t.match(await ambit(['cni']), { code: 2, stdout: /Usage: ambit cni/ });
  t.match(await ambit(['cni', 'reinstall']), { code: 2, stderr: /unknown cni command 'reinstall'/ });
  t.match(await ambit(['cni', 'install', '--cni-conf-dir', 'etc']), { code: 2, stderr: /--cni-conf-dir etc is not an absolute path/ });
  t.match(await ambit(['cni', 'install', '--agent-timeout-ms', '5']), { code: 2, stderr: /--agent-timeout-ms 5/ });
  t.match(await ambit(['cni', 'uninstall', '--watch']), { code: 2, stderr: /--watch applies to install only/ });
  t.match(await ambit(['cni', 'install', '--bogus']), { code: 2, stderr: /bogus/ });
  t.match(await ambit(['cni', 'install', '--namespace', 'Ambit_System']), { code: 2, stderr: /--namespace Ambit_System is not a namespace name/ });
  t.match(await ambit(['cni', 'uninstall', '--namespace', 'ambit-system']), { code: 2, stderr: /--namespace applies to install only/ });
  t.match(
    await ambit(['cni', 'install', '--root-namespace', 'mesh-system']),
    { code: 2, stderr: /--root-namespace is no longer an option of ambit cni: the plugin reads the mesh's own namespace from the agent's enrollment file, which the agent writes with its own --root-namespace/ },
    'the removed option says where the value comes from now',
  );
});

t.test('cni install on a folder with no CNI configuration fails (1) and says what to do', async (t) => {
  const { mkdtemp, rm, writeFile, chmod } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-cli-cni-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const plugin = path.join(dir, 'plugin');
  await writeFile(plugin, '#!/bin/sh\n');
  await chmod(plugin, 0o755);
  const r = await ambit(['cni', 'install', '--cni-conf-dir', dir, '--cni-bin-dir', dir, '--plugin', plugin]);
  t.equal(r.code, 1);
  t.match(r.stderr, /no CNI configuration in .* install the cluster's network plugin first/);
  const missing = await ambit(['cni', 'install', '--cni-conf-dir', dir, '--cni-bin-dir', dir, '--plugin', path.join(dir, 'nope')]);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /is not an executable file/);
});

t.test('a runtime failure exits 1 with the reason', async (t) => {
  const r = await ambit(['agent', '--node', 'n', '--config', '/nonexistent-ambit-config', '--ca-dir', '/nonexistent-ca', '--no-rules', '--upstream-source', 'node']);
  t.equal(r.code, 1);
  t.match(r.stderr, /nonexistent-ambit-config/);
  t.match(r.stderr, /CONFIG_DIR_NOT_FOUND/);
});

const agentArgs = ['agent', '--node', 'n', '--config', '/nonexistent-ambit-config', '--ca-dir', '/nonexistent-ca'];

t.test('an agent asked for transparent connections without its rules does not start: a configuration error', async (t) => {
  const r = await ambit([...agentArgs, '--no-rules']);
  t.equal(r.code, 2, 'exit 2, as for bad configuration');
  t.match(r.stderr, /UPSTREAM_SOURCE_UNAVAILABLE/);
  t.match(r.stderr, /--no-rules/, 'it says why');
  t.match(r.stderr, /--upstream-source node/, 'and what to do');
});

const noCapSkip =
  needsRoot('runs the agent as root without CAP_NET_ADMIN, in its own network namespace') || needsTools(['ip', 'setpriv'], 'a network namespace, capabilities dropped');

t.test('an agent without CAP_NET_ADMIN asked for transparent connections does not start', { skip: noCapSkip }, async (t) => {
  const netns = `ambit-cli-${process.pid}-${Date.now().toString(36)}`;
  await new Promise<void>((resolve, reject) => execFile('ip', ['netns', 'add', netns], (err) => (err ? reject(err) : resolve())));
  t.teardown(() => new Promise<void>((resolve) => execFile('ip', ['netns', 'del', netns], () => resolve())));
  // root with CAP_NET_ADMIN and CAP_NET_RAW (either allows IP_TRANSPARENT) gone from every set: a pod without NET_ADMIN
  const drop = ['setpriv', '--bounding-set', '-net_admin,-net_raw', '--inh-caps', '-net_admin,-net_raw'];
  const r = await ambit(agentArgs, ['ip', 'netns', 'exec', netns, ...drop]);
  t.equal(r.code, 2, `exit 2 (stderr: ${r.stderr})`);
  t.match(r.stderr, /UPSTREAM_SOURCE_UNAVAILABLE/);
  t.match(r.stderr, /CAP_NET_ADMIN/, 'it names the missing capability');
  t.match(r.stderr, /--upstream-source node/);
});

t.test('an agent refuses a CA key that group or others can read, naming the file and the chmod', async (t) => {
  const { chmod, mkdir, mkdtemp, rm, writeFile } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { CertificateAuthority } = await import('../core/identity/index.js');
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-cli-ca-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const configDir = path.join(dir, 'config');
  const caDir = path.join(dir, 'ca');
  await mkdir(configDir);
  await writeFile(path.join(configDir, 'node.yaml'), JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'n' }, status: { addresses: [{ type: 'InternalIP', address: '127.0.0.1' }] } }));
  await (await CertificateAuthority.create({ trustDomain: 'cluster.local' })).save(caDir);
  const keyFile = path.join(caDir, 'ca.key');
  await chmod(keyFile, 0o644);
  const offset = String(30000 + Math.floor(Math.random() * 200) * 10);
  const r = await ambit(['agent', '--node', 'n', '--config', configDir, '--ca-dir', caDir, '--no-rules', '--upstream-source', 'node', '--listen-host', '127.0.0.1', '--port-offset', offset]);
  t.equal(r.code, 1, 'the agent does not start');
  t.match(r.stderr, `${keyFile} is open to group or others (mode 0644)`);
  t.match(r.stderr, `chmod 600 ${keyFile}`);
  t.match(r.stderr, /CA_KEY_EXPOSED/);
});
