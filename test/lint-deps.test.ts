/**
 * The folder rules of `.dependency-cruiser.cjs` catch what they claim to: the real config and the real
 * dependency-cruiser, run on a small tree of files that each break one rule (and one that breaks none).
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEPCRUISE = path.join(ROOT, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs');

/** Each file, what it imports, and the rule it must break (undefined: none). */
const TREE: Array<{ file: string; source: string; breaks: string | undefined }> = [
  { file: 'core/log/index.ts', source: "export const log = 1;\n", breaks: undefined },
  { file: 'core/log/log.ts', source: "export const inner = 1;\n", breaks: undefined },
  { file: 'core/loose.ts', source: "export const loose = 1;\n", breaks: undefined },
  { file: 'agent/index.ts', source: "export const agent = 1;\n", breaks: undefined },
  { file: 'agent/ok.ts', source: "import { log } from '../core/log/index.js';\nexport const ok = log;\n", breaks: undefined },
  { file: 'agent/uses-loose.ts', source: "import { loose } from '../core/loose.js';\nexport const a = loose;\n", breaks: 'core-has-no-loose-files' },
  { file: 'agent/around-index.ts', source: "import { inner } from '../core/log/log.js';\nexport const b = inner;\n", breaks: 'across-folders-through-index' },
  { file: 'agent/rules/index.ts', source: "export const rules = 1;\n", breaks: undefined },
  { file: 'agent/rules/iptables.ts', source: "export const chains = 1;\n", breaks: undefined },
  { file: 'agent/rules-user.ts', source: "import { chains } from './rules/iptables.js';\nexport const c = chains;\n", breaks: 'agent-rules-through-index' },
  { file: 'core/bad/index.ts', source: "import { agent } from '../../agent/index.js';\nexport const d = agent;\n", breaks: 'core-imports-no-other-folder' },
  { file: 'cni/index.ts', source: "import pino from 'pino';\nexport const e = pino;\n", breaks: 'cni-imports-no-heavy-package' },
  { file: 'test/helper.ts', source: "export const helper = 1;\n", breaks: undefined },
  { file: 'testbed/index.ts', source: "import { helper } from '../test/helper.js';\nexport const f = helper;\n", breaks: 'only-test-imports-test' },
  // a cycle is reported once, at the first of its files
  { file: 'agent/c1.ts', source: "import { c2 } from './c2.js';\nexport const c1 = () => c2;\n", breaks: 'no-circular' },
  { file: 'agent/c2.ts', source: "import { c1 } from './c1.js';\nexport const c2 = () => c1;\n", breaks: undefined },
];

t.test('each folder rule reports the file that breaks it, and nothing else', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-depcruise-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await copyFile(path.join(ROOT, '.dependency-cruiser.cjs'), path.join(dir, '.dependency-cruiser.cjs'));
  await writeFile(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2023', strict: true }, include: ['core', 'agent', 'cni', 'testbed', 'test'] }),
  );
  await symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  for (const { file, source } of TREE) {
    await mkdir(path.dirname(path.join(dir, file)), { recursive: true });
    await writeFile(path.join(dir, file), source);
  }
  const { stdout } = await promisify(execFile)(process.execPath, [DEPCRUISE, '--config', '.dependency-cruiser.cjs', '--output-type', 'json', 'core', 'agent', 'cni', 'testbed', 'test'], {
    cwd: dir,
    maxBuffer: 64 * 1024 * 1024,
  }).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? '' }));
  const violations = (JSON.parse(stdout) as { summary: { violations: Array<{ from: string; rule: { name: string } }> } }).summary.violations;
  const found = new Set(violations.map((v) => `${v.rule.name} ${v.from}`));
  for (const { file, breaks } of TREE.filter((entry) => entry.breaks !== undefined)) t.ok(found.has(`${breaks} ${file}`), `${file} breaks ${breaks}`);
  const clean = TREE.filter((entry) => entry.breaks === undefined).map((entry) => entry.file);
  t.same(violations.filter((v) => clean.includes(v.from)), [], 'files that break no rule are not reported');
});
