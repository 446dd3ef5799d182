/**
 * The install as `kubectl apply -k manifests/` sends it: the kustomize base rendered by kubectl, parsed. The tests of
 * the manifests and of the README's samples read the objects (the CRDs' schemas among them) from here, not from the
 * source files, so what they check is what a cluster gets.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import yaml from 'js-yaml';

/** The repository's manifests/ (this file runs from dist/testbed/). */
export const MANIFESTS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'manifests');

/** `kubectl kustomize manifests/`, one parsed object per rendered document. Needs kubectl on PATH. */
export async function renderManifests(): Promise<unknown[]> {
  const { stdout } = await promisify(execFile)('kubectl', ['kustomize', MANIFESTS_DIR], { maxBuffer: 16 * 1024 * 1024 });
  return yaml.loadAll(stdout);
}
