/**
 * The one way Ambit replaces a file that must survive a crash or a power loss: the enrollment file, the CA folder,
 * the node's CNI configuration and plugin. Readers see the old file or the new one, never half of either, and once
 * the call resolves the new one is on disk.
 *
 * This file imports only Node built-ins and core/errors/: the CNI plugin's single executable is bundled from files like it.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { AmbitError } from '../errors/index.js';

/** The file-system calls the write makes; tests pass wrappers to watch or break them. */
export interface AtomicWriteFs {
  open: typeof open;
  rename: typeof rename;
  rm: typeof rm;
}

const NODE_FS: AtomicWriteFs = { open, rename, rm };

/**
 * Writes `data` to a temporary file beside `file` (same folder, so the rename cannot cross file systems), fsyncs
 * it, renames it over `file` and fsyncs the folder. Without the first fsync a power loss after the rename can leave
 * an empty file under the new name (ext4 and xfs may write the rename before the data); without the second, the
 * rename itself may be lost. The temporary name starts with a dot and ends in `.tmp`, so the container runtime
 * (*.conf, *.conflist, *.json) and the config-folder watcher (*.yaml, *.json) skip it.
 *
 * `mode` is set exactly, whatever the umask. On failure before the rename, `file` is untouched and the temporary
 * file removed; the error is AmbitError `FILE_WRITE_FAILED` naming `file`.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, options: { mode: number; fs?: AtomicWriteFs }): Promise<void> {
  const fs = options.fs ?? NODE_FS;
  const folder = dirname(file);
  const temporary = join(folder, `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const handle = await fs.open(temporary, 'wx', options.mode);
    try {
      await handle.writeFile(data);
      await handle.chmod(options.mode);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temporary, file);
  } catch (err) {
    await fs.rm(temporary, { force: true });
    throw new AmbitError('FILE_WRITE_FAILED', `cannot write ${file}: ${(err as Error).message}; the previous file, if any, is unchanged`, { cause: err });
  }
  try {
    const handle = await fs.open(folder, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (err) {
    throw new AmbitError('FILE_WRITE_FAILED', `${file} was replaced but its folder ${folder} could not be synced to disk (${(err as Error).message}): a crash now may bring back the previous file`, {
      cause: err,
    });
  }
}
