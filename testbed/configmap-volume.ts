import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ApiServer, JsonObject } from './apiserver/index.js';

/**
 * A ConfigMap mounted as a volume, kept up to date as kubelet's atomic writer does it: the files of each version in a
 * new hidden folder, the `..data` symlink swapped to it in one rename, each key a symlink through `..data`. A reader
 * sees the old version or the new one, never half of each. It follows the double's changes to the ConfigMap (kubelet
 * takes up to a minute; here a change is written `lagMs` after it is stored, at once by default).
 */
export class ConfigMapVolume {
  readonly dir: string;
  readonly #api: ApiServer;
  readonly #namespace: string;
  readonly #name: string;
  #writing: Promise<void> = Promise.resolve();
  readonly #onChange: (event: { object: JsonObject }) => void;
  readonly #lagMs: number;

  private constructor(api: ApiServer, namespace: string, name: string, dir: string, lagMs: number) {
    this.#lagMs = lagMs;
    this.#api = api;
    this.#namespace = namespace;
    this.#name = name;
    this.dir = dir;
    this.#onChange = (event) => {
      const metadata = event.object.metadata as { namespace?: string; name?: string } | undefined;
      if (metadata?.namespace === this.#namespace && metadata.name === this.#name && event.object.data !== undefined) this.#write();
    };
  }

  /**
   * Writes the ConfigMap's current data into `dir` (none yet: an empty folder), then follows its changes, each
   * `lagMs` after it is stored (kubelet's sync period: nodes see a change at different moments).
   */
  static async mount(api: ApiServer, options: { namespace: string; name: string; dir: string; lagMs?: number }): Promise<ConfigMapVolume> {
    const volume = new ConfigMapVolume(api, options.namespace, options.name, options.dir, options.lagMs ?? 0);
    await mkdir(options.dir, { recursive: true });
    api.on('change', volume.#onChange);
    volume.#write();
    await volume.#writing;
    return volume;
  }

  /** Resolves once every change seen so far is on disk. */
  settled(): Promise<void> {
    return this.#writing;
  }

  close(): void {
    this.#api.off('change', this.#onChange);
  }

  #write(): void {
    const lag = this.#lagMs;
    this.#writing = this.#writing.then(async () => {
      if (lag > 0) await sleep(lag);
      await this.#writeNow();
    });
  }

  async #writeNow(): Promise<void> {
    const configMap = this.#api.objects('v1', 'configmaps').get(this.#name, this.#namespace);
    if (configMap === undefined) return;
    const data = (configMap.data ?? {}) as Record<string, string>;
    const version = `..${new Date().toISOString().replace(/[-:.]/g, '_')}.${randomBytes(4).toString('hex')}`;
    await mkdir(path.join(this.dir, version));
    for (const [key, value] of Object.entries(data)) await writeFile(path.join(this.dir, version, key), value);
    const temporary = path.join(this.dir, '..data_tmp');
    await rm(temporary, { force: true });
    await symlink(version, temporary);
    await rename(temporary, path.join(this.dir, '..data'));
    const entries = await readdir(this.dir);
    for (const key of Object.keys(data)) if (!entries.includes(key)) await symlink(path.join('..data', key), path.join(this.dir, key));
    for (const entry of entries) {
      if (entry.startsWith('..') && entry !== '..data' && entry !== version) await rm(path.join(this.dir, entry), { recursive: true, force: true });
      else if (!entry.startsWith('..') && !(entry in data)) await rm(path.join(this.dir, entry), { force: true });
    }
  }
}
