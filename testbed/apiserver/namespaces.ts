/**
 * Namespace deletion as a client sees it: DELETE marks the namespace Terminating (deletionTimestamp, phase
 * Terminating), the store refuses new objects in it (403, as the NamespaceLifecycle admission does), and a while
 * later the namespace controller deletes every object in it, then the namespace itself. That delay is real: a
 * client that deletes a namespace and then its objects one by one, as `kubectl delete -k` does in the order of its
 * files, finds them still there. kubectl's `--wait` and a watch see the namespace go.
 */
import type { SetTimer } from '../../core/timer/index.js';
import type { ResourceRegistry } from './resources.js';
import type { ObjectStore } from './store.js';
import { child, str, type JsonObject, type ResourceType } from './types.js';

/** How long a deleted namespace stays Terminating before its objects and itself go; the real controller takes seconds too. */
export const DEFAULT_NAMESPACE_CLEANUP_MS = 2000;

export class NamespaceController {
  readonly #store: ObjectStore;
  readonly #registry: ResourceRegistry;
  readonly #namespaces: ResourceType;
  readonly #timer: SetTimer;
  readonly #delayMs: number;
  readonly #pending = new Map<string, () => void>();

  constructor(store: ObjectStore, registry: ResourceRegistry, timer: SetTimer, delayMs: number) {
    this.#store = store;
    this.#registry = registry;
    const namespaces = registry.get('', 'v1', 'namespaces');
    if (namespaces === undefined) throw new Error('the registry serves no namespaces');
    this.#namespaces = namespaces;
    this.#timer = timer;
    this.#delayMs = delayMs;
  }

  /** The answer to a DELETE of namespace `name`: the namespace, Terminating (a second DELETE changes nothing). */
  terminate(name: string): JsonObject {
    const current = this.#store.get(this.#namespaces, '', name);
    if (current === undefined) return this.#store.delete(this.#namespaces, '', name);
    if (this.#pending.has(name)) return current;
    const terminating = this.#store.update(this.#namespaces, '', name, {
      ...current,
      metadata: { ...child(current, 'metadata'), deletionTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z') },
      status: { ...child(current, 'status'), phase: 'Terminating' },
    });
    this.#pending.set(name, this.#timer(() => this.#finalize(name), this.#delayMs));
    return terminating;
  }

  stop(): void {
    for (const cancel of this.#pending.values()) cancel();
    this.#pending.clear();
  }

  #finalize(name: string): void {
    this.#pending.delete(name);
    for (const type of this.#registry.all().filter((t) => t.namespaced)) {
      for (const object of this.#store.list(type, name)) this.#store.delete(type, name, str(child(object, 'metadata').name) ?? '');
    }
    if (this.#store.get(this.#namespaces, '', name) !== undefined) this.#store.delete(this.#namespaces, '', name);
  }
}
