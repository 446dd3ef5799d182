/**
 * writeFileAtomic, the one write-then-rename of the project: the file and its folder are fsynced, in that order
 * around the rename, and a write that fails at any step leaves the previous file as it was and no temporary file.
 * The real file system does the work; a wrapper around it records the calls or makes one of them fail.
 */
import { mkdtemp, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { writeFileAtomic, type AtomicWriteFs } from '../core/fs/atomic-file.js';

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-atomic-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

type Step = 'open' | 'write' | 'chmod' | 'sync' | 'rename' | 'open-folder' | 'sync-folder';

/** The real calls, each logged as `step path`; `fail` makes one step throw as the kernel would (ENOSPC). */
function recordingFs(fail?: Step): AtomicWriteFs & { calls: string[] } {
  const calls: string[] = [];
  const enospc = (step: Step) => {
    if (step === fail) throw Object.assign(new Error(`ENOSPC: no space left on device (${step})`), { code: 'ENOSPC' });
  };
  const wrap = (handle: FileHandle, path: string, folder: boolean): FileHandle =>
    new Proxy(handle, {
      get(target, property) {
        const real = Reflect.get(target, property) as unknown;
        if (typeof real !== 'function') return real;
        const step = ({ writeFile: 'write', chmod: 'chmod', sync: folder ? 'sync-folder' : 'sync' } as Record<string, Step | undefined>)[String(property)];
        return async (...args: unknown[]) => {
          if (step !== undefined) {
            calls.push(`${step} ${path}`);
            enospc(step);
          }
          return (real as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
  return {
    calls,
    open: (async (path: string, flags: string, mode?: number) => {
      const folder = flags === 'r';
      calls.push(`${folder ? 'open-folder' : 'open'} ${path}`);
      enospc(folder ? 'open-folder' : 'open');
      return wrap(await open(path, flags, mode), path, folder);
    }) as AtomicWriteFs['open'],
    rename: async (from, to) => {
      calls.push(`rename ${String(from)} -> ${String(to)}`);
      enospc('rename');
      return rename(from, to);
    },
    rm: async (path, options) => {
      calls.push(`rm ${String(path)}`);
      return rm(path, options);
    },
  };
}

t.test('the data and the folder are fsynced: data before the rename, the folder after it', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'enrollment.json');
  const fs = recordingFs();
  await writeFileAtomic(file, '{"enrolledNamespaces":["mesh"]}', { mode: 0o644, fs });
  t.equal(await readFile(file, 'utf8'), '{"enrolledNamespaces":["mesh"]}');
  const tmp = /^open (.*\/\.enrollment\.json\.[0-9a-f]{12}\.tmp)$/.exec(fs.calls[0] ?? '')?.[1];
  t.ok(tmp, `a hidden temporary file beside the target: ${fs.calls[0]}`);
  t.same(fs.calls, [`open ${tmp}`, `write ${tmp}`, `chmod ${tmp}`, `sync ${tmp}`, `rename ${tmp} -> ${file}`, `open-folder ${dir}`, `sync-folder ${dir}`]);
  t.same(await readdir(dir), ['enrollment.json'], 'nothing else left in the folder');
});

t.test('the mode is exact whatever the umask, and a second write replaces the first', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'ca.key');
  const umask = process.umask(0o077);
  t.teardown(() => process.umask(umask));
  await writeFileAtomic(file, 'one', { mode: 0o644 });
  t.equal((await stat(file)).mode & 0o777, 0o644, 'not narrowed by the umask 077');
  await writeFileAtomic(file, Buffer.from('two'), { mode: 0o600 });
  t.equal(await readFile(file, 'utf8'), 'two');
  t.equal((await stat(file)).mode & 0o777, 0o600);
});

t.test('a write that fails before the rename leaves the previous file and no temporary file', async (t) => {
  for (const step of ['open', 'write', 'chmod', 'sync', 'rename'] as const) {
    const dir = await tempDir(t);
    const file = join(dir, 'enrollment.json');
    await writeFile(file, 'previous', { mode: 0o644 });
    const fs = recordingFs(step);
    await t.rejects(writeFileAtomic(file, 'next', { mode: 0o644, fs }), { code: 'FILE_WRITE_FAILED', message: new RegExp(`cannot write ${file}: ENOSPC.*\\(${step}\\); the previous file, if any, is unchanged`) }, `${step} fails`);
    t.equal(await readFile(file, 'utf8'), 'previous', `${step} fails: the previous file is intact`);
    t.same(await readdir(dir), ['enrollment.json'], `${step} fails: no temporary file left`);
    t.notOk(fs.calls.some((c) => c.startsWith('open-folder')), `${step} fails: the folder is not touched`);
  }
});

t.test('a folder that cannot be synced after the rename is an error that says the file was replaced', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'enrollment.json');
  await writeFile(file, 'previous');
  await t.rejects(writeFileAtomic(file, 'next', { mode: 0o644, fs: recordingFs('sync-folder') }), {
    code: 'FILE_WRITE_FAILED',
    message: new RegExp(`${file} was replaced but its folder ${dir} could not be synced to disk`),
  });
  t.equal(await readFile(file, 'utf8'), 'next');
  t.same(await readdir(dir), ['enrollment.json']);
});

t.test('a missing folder fails naming the file, creating nothing', async (t) => {
  const dir = await tempDir(t);
  await t.rejects(writeFileAtomic(join(dir, 'absent', 'enrollment.json'), 'x', { mode: 0o644 }), { code: 'FILE_WRITE_FAILED', message: /cannot write .*absent\/enrollment\.json: ENOENT/ });
  t.same(await readdir(dir), []);
});
