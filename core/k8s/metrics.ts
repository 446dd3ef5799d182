import { Counter, Gauge, type Registry } from 'prom-client';
import { AmbitError } from '../errors/index.js';

/** Why a reflector listed: its first list, a 410 (history gone), a failed or stalled list retried, a consumer's failure. */
export type RelistReason = 'initial' | 'expired' | 'error' | 'stalled' | 'consumer';
/** Why a watch was opened again from the last position, without a list. */
export type RewatchReason = 'closed' | 'error' | 'stalled';
/** A watch event's type, as a label. */
export type EventType = 'added' | 'modified' | 'deleted' | 'bookmark' | 'error';

/** One registry's reflector metrics, shared by every reflector registered in it (a label `kind` each). */
class SharedMetrics {
  readonly events: Counter<'kind' | 'type'>;
  readonly relists: Counter<'kind' | 'reason'>;
  readonly rewatches: Counter<'kind' | 'reason'>;
  /** The time of the last thing heard, by kind, read when the registry is scraped. */
  readonly lastHeard = new Map<string, () => number>();
  /** How long each kind's list or watch has failed (0 while healthy), read when the registry is scraped. */
  readonly failing = new Map<string, () => number>();

  constructor(registry: Registry) {
    const registers = [registry];
    this.events = new Counter({
      name: 'ambit_k8s_watch_events_total',
      help: 'Watch events received from the API server, by kind and event type',
      labelNames: ['kind', 'type'],
      registers,
    });
    this.relists = new Counter({
      name: 'ambit_k8s_relists_total',
      help: 'Full lists of a kind, by reason (initial, expired, error, stalled, consumer)',
      labelNames: ['kind', 'reason'],
      registers,
    });
    this.rewatches = new Counter({
      name: 'ambit_k8s_rewatches_total',
      help: 'Watches opened again from the last resourceVersion without a list, by reason (closed, error, stalled)',
      labelNames: ['kind', 'reason'],
      registers,
    });
    const lastHeard = this.lastHeard;
    new Gauge({
      name: 'ambit_k8s_last_event_age_seconds',
      help: 'Seconds since the last list, watch event or bookmark of a kind (since its start, before the first one)',
      labelNames: ['kind'],
      registers,
      collect() {
        this.reset();
        for (const [kind, age] of lastHeard) this.set({ kind }, age());
      },
    });
    const failing = this.failing;
    new Gauge({
      name: 'ambit_k8s_watch_failing_seconds',
      help: 'Seconds the list or watch of a kind has failed with no success since (0 while it works)',
      labelNames: ['kind'],
      registers,
      collect() {
        this.reset();
        for (const [kind, seconds] of failing) this.set({ kind }, seconds());
      },
    });
  }
}

const shared = new WeakMap<Registry, SharedMetrics>();

/** One reflector's view of the metrics: its `kind` label bound, its age function in the shared gauge. */
export class ReflectorMetrics {
  readonly #shared: SharedMetrics;
  readonly #kind: string;

  constructor(registry: Registry, kind: string, ageSeconds: () => number, failingSeconds: () => number) {
    let metrics = shared.get(registry);
    if (metrics === undefined) {
      metrics = new SharedMetrics(registry);
      shared.set(registry, metrics);
    }
    if (metrics.lastHeard.has(kind)) {
      throw new AmbitError('K8S_REFLECTOR_DUPLICATE', `a reflector of kind ${kind} is already registered in this registry`);
    }
    metrics.lastHeard.set(kind, ageSeconds);
    metrics.failing.set(kind, failingSeconds);
    this.#shared = metrics;
    this.#kind = kind;
  }

  event(type: EventType): void {
    this.#shared.events.inc({ kind: this.#kind, type });
  }

  relist(reason: RelistReason): void {
    this.#shared.relists.inc({ kind: this.#kind, reason });
  }

  rewatch(reason: RewatchReason): void {
    this.#shared.rewatches.inc({ kind: this.#kind, reason });
  }

  /** Takes this kind out of the gauges (a stopped reflector has no age); its counters stay. */
  close(): void {
    this.#shared.lastHeard.delete(this.#kind);
    this.#shared.failing.delete(this.#kind);
  }
}
