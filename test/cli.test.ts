/** The `ambit` command's help and exit codes, as scripts see them. */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'main.js');

function ambit(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

t.test('help and version exit 0', async (t) => {
  t.match(await ambit(['--help']), { code: 0, stdout: /Usage: ambit <command>/ });
  t.match(await ambit(['agent', '--help']), { code: 0, stdout: /--cleanup/ });
  t.match(await ambit(['demo', '--help']), { code: 0, stdout: /Needs root/ });
  t.match(await ambit(['version']), { code: 0, stdout: /^ambit \d+\.\d+\.\d+/ });
});

t.test('usage errors exit 2 and say what is wrong', async (t) => {
  t.match(await ambit([]), { code: 2, stdout: /Usage/ });
  t.match(await ambit(['frobnicate']), { code: 2, stderr: /unknown command 'frobnicate'/ });
  t.match(await ambit(['agent']), { code: 2, stderr: /--node .* is required/ });
  t.match(await ambit(['agent', '--node', 'n', '--config', '/c', '--ca-dir', '/x', '--log-level', 'loud']), { code: 2, stderr: /--log-level loud/ });
});

t.test('a runtime failure exits 1 with the reason', async (t) => {
  const r = await ambit(['agent', '--node', 'n', '--config', '/nonexistent-ambit-config', '--ca-dir', '/nonexistent-ca', '--no-rules']);
  t.equal(r.code, 1);
  t.match(r.stderr, /nonexistent-ambit-config/);
  t.match(r.stderr, /CONFIG_DIR_NOT_FOUND/);
});
