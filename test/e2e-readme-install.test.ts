/**
 * The README's install walkthrough, word for word (root; issue 15): the block under its `install-walkthrough`
 * marker runs command by command in one bash, as a user types it, against the API server double with RBAC enforced
 * (`kubectl apply -k manifests/` is real), on a network-namespace testbed that runs what was applied as a cluster
 * would (KubeCluster, install 'kubectl'). Between the commands the test looks at what each one should have done:
 * the checks pass, the namespace is meshed, the policy is enforced, the status names the pods, and uninstall leaves
 * nothing on the nodes.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { CHECKOUT_DIR, CLI_PATH, curlFrom, HTTP_PORT, KubeCluster, Testbed, type TestbedNode, type TestbedPod } from '../testbed/index.js';
import { within } from './mesh/hold.js';
import { needsTestbed, needsTools } from './prerequisites.js';

const unavailable = needsTestbed() || needsTools(['kubectl', 'bash'], 'runs the README with bash and kubectl');
const MARKER = '<!-- install-walkthrough';
const SENTINEL = '__ambit_walkthrough_done__';

/** The commands of the README's walkthrough block, a heredoc kept with its command. */
export function walkthroughCommands(readme: string): string[] {
  const start = readme.indexOf(MARKER);
  if (start < 0) throw new Error(`README.md has no ${MARKER} marker`);
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(start));
  if (block === null) throw new Error('no ```sh block after the walkthrough marker');
  const commands: string[] = [];
  const lines = block[1]!.split('\n').filter((line) => line.trim() !== '');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const heredoc = /<<'(\w+)'/.exec(line);
    if (heredoc === null) {
      commands.push(line);
      continue;
    }
    const end = lines.indexOf(heredoc[1]!, i + 1);
    if (end < 0) throw new Error(`the heredoc of '${line}' does not end`);
    commands.push(lines.slice(i, end + 1).join('\n'));
    i = end;
  }
  return commands;
}

/** One bash, fed a command at a time, as a terminal would: each command's exit code and output. */
class Shell {
  readonly #bash: ChildProcessWithoutNullStreams;
  #stdout = '';
  #stderr = '';

  constructor(env: NodeJS.ProcessEnv, cwd: string) {
    this.#bash = spawn('bash', ['--noprofile', '--norc'], { env, cwd });
    this.#bash.stdout.on('data', (chunk: Buffer) => (this.#stdout += chunk.toString()));
    this.#bash.stderr.on('data', (chunk: Buffer) => (this.#stderr += chunk.toString()));
    // an interactive shell expands aliases; this one is fed the same lines
    this.#bash.stdin.write('shopt -s expand_aliases\n');
  }

  /** Runs one command; resolves when it has finished (or rejects when `abort` rejects first). */
  async run(command: string, abort: Promise<never>): Promise<{ code: number; stdout: string; stderr: string }> {
    this.#stdout = '';
    this.#stderr = '';
    this.#bash.stdin.write(`${command}\nprintf '\\n${SENTINEL} %s\\n' $?\n`);
    const done = new Promise<{ code: number; stdout: string; stderr: string }>((resolve, reject) => {
      const look = () => {
        const match = new RegExp(`\\n${SENTINEL} (\\d+)\\n`).exec(this.#stdout);
        if (match === null) return;
        this.#bash.stdout.off('data', look);
        this.#bash.off('exit', exited);
        resolve({ code: Number(match[1]), stdout: this.#stdout.slice(0, match.index), stderr: this.#stderr });
      };
      const exited = () => reject(new Error(`bash exited during '${command}': ${this.#stderr}`));
      this.#bash.stdout.on('data', look);
      this.#bash.once('exit', exited);
      look();
    });
    return Promise.race([done, abort]);
  }

  close(): void {
    this.#bash.stdin.end();
    this.#bash.kill('SIGTERM');
  }
}

t.test('the README install walkthrough, word for word, against the double with RBAC and the testbed', { skip: unavailable }, async (t) => {
  const commands = walkthroughCommands(await readFile(path.join(CHECKOUT_DIR, 'README.md'), 'utf8'));
  const expected = ['alias ambit=', 'ambit check --pre', 'kubectl apply -k manifests/', 'kubectl -n ambit-system rollout status', 'ambit check', 'ambit enroll shop', 'kubectl apply -f -', 'ambit status', 'ambit uninstall'];
  t.same(commands.map((command, i) => command.startsWith(expected[i] ?? '?')), expected.map(() => true), `the walkthrough is the sequence this test follows: ${commands.map((c) => c.split('\n')[0]).join(' | ')}`);

  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'], hostLink: true });
  t.teardown(() => tb.destroy());
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];
  const cluster = await KubeCluster.start(tb, { namespaces: { shop: {} }, install: 'kubectl' });
  t.teardown(() => cluster.close());
  const home = await mkdtemp(path.join(tmpdir(), 'ambit-readme-home-'));
  t.teardown(() => rm(home, { recursive: true, force: true }));
  const shell = new Shell({ PATH: process.env['PATH'], HOME: home, KUBECONFIG: cluster.kubeconfig }, CHECKOUT_DIR);
  t.teardown(() => shell.close());
  // the testbed's part (running what was applied) failing ends the wait of the command in progress
  let failInstall: (err: unknown) => void = () => undefined;
  const installFailed = new Promise<never>((_resolve, reject) => (failInstall = reject));
  installFailed.catch(() => undefined);
  const watchInstall = setInterval(() => void cluster.installed().catch(failInstall), 500);
  t.teardown(() => clearInterval(watchInstall));
  const step = async (index: number, test: (result: { code: number; stdout: string; stderr: string }) => void | Promise<void>) => {
    const command = commands[index]!;
    const result = await shell.run(command, installFailed);
    t.equal(result.code, 0, `\`${command.split('\n')[0]}\` exits 0${result.code === 0 ? '' : `: ${result.stderr}${result.stdout}`}`);
    await test(result);
  };
  const inIpset = async (node: TestbedNode, ip: string) => (await tb.exec(node.netns, 'ipset', ['test', 'ambit-pods-v4', ip], { reject: false })).exitCode === 0;
  const reaches = async (from: TestbedPod, to: TestbedPod) => {
    try {
      return (JSON.parse(await curlFrom(tb, from, `http://${to.ip}:${HTTP_PORT}/`, ['--max-time', '2'])) as { pod: string }).pod === to.name;
    } catch {
      return false;
    }
  };

  await step(0, () => undefined);
  await step(1, ({ stdout }) => {
    t.match(stdout, /all 4 checks passed/, '--pre: ready for the install');
  });
  await step(2, ({ stdout }) => {
    t.match(stdout, /daemonset\.apps\/ambit-agent created/);
  });
  await step(3, ({ stdout }) => {
    t.match(stdout, /successfully rolled out/);
  });
  await cluster.installed();
  await step(4, ({ stdout }) => {
    t.match(stdout, /all 12 checks passed/, 'every check passes, the per-node ones included');
  });

  // the team's pods, running before their namespace joins the mesh
  const frontend = await cluster.startPod('frontend', node1, { namespace: 'shop', serviceAccount: 'frontend' });
  const other = await cluster.startPod('other', node1, { namespace: 'shop', serviceAccount: 'other' });
  const web = await cluster.startPod('web', node2, { namespace: 'shop', serviceAccount: 'web', app: 'web' });
  t.notOk(await inIpset(node2, web.ip), 'not meshed before the enroll');
  await step(5, () => undefined);
  await within(5000, 'web is captured once shop is enrolled', () => inIpset(node2, web.ip));
  t.ok(await reaches(frontend, web), 'frontend reaches web through the mesh');
  t.ok(await reaches(other, web), 'and so does other, before the policy');
  await step(6, ({ stdout }) => {
    t.match(stdout, /authorizationpolicy\.security\.ambit\.dev\/web-from-frontend created/);
  });
  await within(5000, "the policy refuses other's connections", async () => !(await reaches(other, web)));
  t.ok(await reaches(frontend, web), 'frontend, which it allows, still reaches web');
  await step(7, ({ stdout }) => {
    t.match(stdout, /node2 .*ready/);
    t.match(stdout, /shop\/web {2}spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web {2}certificate expires/, "web's identity and certificate, on node2");
  });
  await step(8, ({ stdout }) => {
    t.match(stdout, /deleted Namespace\/ambit-system/);
  });
  // the namespace's pods go (the double deletes them after the namespace), and with them the processes
  await within(15_000, 'the agents stopped', async () => {
    await cluster.installed();
    return tb.nodes.every((node) => cluster.logs(node).some((record) => record.msg === 'agent stopped'));
  });
  for (const node of [node1, node2]) {
    const check = await tb.exec(node.netns, process.execPath, [
      CLI_PATH, 'uninstall', '--check',
      '--cni-conf-dir', cluster.nodePath(node, '/etc/cni/net.d'), '--cni-bin-dir', cluster.nodePath(node, '/opt/cni/bin'),
      '--run-dir', cluster.runDir(node), '--state-dir', cluster.stateDir(node),
    ], { reject: false });
    t.equal(check.exitCode, 0, `${node.name}: nothing of Ambit left (${String(check.stdout)})`);
  }
  t.ok(await reaches(other, web), 'plain networking: other reaches web again');
});
