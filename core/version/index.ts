/**
 * The release every program of the image reports (`ambit version`, the agent's and controller's /status): the
 * package's version, read once from the package.json the image ships beside dist/.
 */
import { readFileSync } from 'node:fs';

let cached: string | undefined;

export function ambitVersion(): string {
  cached ??= (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  return cached;
}
