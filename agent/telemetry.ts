import { Counter, Gauge, type Registry } from 'prom-client';
import type { HboneSessionClose, HboneSessionCloseDetail } from '../core/hbone/index.js';
import type { Logger } from '../core/log/index.js';

/** Istio's TCP metric labels, so Kiali, Grafana dashboards and Flagger read Ambit's metrics unchanged. */
const TCP_LABELS = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'source_app',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'destination_service',
  'request_protocol',
  'response_flags',
  'connection_security_policy',
] as const;

export type TcpLabels = Record<(typeof TCP_LABELS)[number], string>;

/** One side of a connection as telemetry sees it. */
export interface Peer {
  ip: string;
  port: number;
  workload?: string;
  namespace?: string;
  identity?: string;
  app?: string;
}

export type ConnectionPath = 'hbone' | 'local' | 'passthrough' | 'plaintext';

/** Everything an access-log line and the metrics need about one proxied connection. */
export interface ConnectionRecord {
  reporter: 'source' | 'destination';
  path: ConnectionPath;
  source: Peer;
  destination: Peer;
  service?: string;
  /** The HBONE peer (the other node's 15008) when there is one. */
  hbone?: string;
  security: 'mutual_tls' | 'none';
  startedAt: number;
}

export interface ConnectionOutcome {
  /** Bytes from the client toward the server. */
  received: number;
  /** Bytes from the server back to the client. */
  sent: number;
  /** Set when the connection was refused or failed: a stable reason. */
  reason?: string;
  error?: string;
}

const UNKNOWN = 'unknown';

/**
 * One label set's counts since the last scrape. A connection only adds to these numbers; they reach prom-client
 * when metrics are collected, since a prom-client update, through a cached label child too, hashes and validates the
 * whole label set (twelve labels) every time: 4-6× the cost of this path per connection (bench/telemetry.ts).
 */
interface Series {
  readonly labels: TcpLabels;
  readonly direction: 'outbound' | 'inbound';
  opened: number;
  closed: number;
  sent: number;
  received: number;
  /** Opened minus closed since the last scrape. */
  active: number;
  /** Opened minus closed, ever: a series with an open connection is never pruned. */
  open: number;
  /** Since when a workload of this series has been gone (and nothing was open), for `prune`. */
  goneSince: number | undefined;
}

/**
 * How long the series of a workload that is gone stay: long past any scrape interval, so their last counts are read
 * before they go, and short enough that a node's churn of pods does not pile up series.
 */
export const SERIES_RETENTION_MS = 5 * 60_000;

/** Everything labelsOf reads, joined: equal keys give equal label sets. */
function seriesKey(r: ConnectionRecord): string {
  const s = r.source;
  const d = r.destination;
  return `${r.reporter}|${r.security}|${r.service ?? ''}|${s.workload ?? ''}|${s.namespace ?? ''}|${s.identity ?? ''}|${s.app ?? ''}|${d.workload ?? ''}|${d.namespace ?? ''}|${d.identity ?? ''}`;
}

export class AgentTelemetry {
  readonly #log: Logger;
  readonly #opened: Counter<(typeof TCP_LABELS)[number]>;
  readonly #closed: Counter<(typeof TCP_LABELS)[number]>;
  readonly #sentBytes: Counter<(typeof TCP_LABELS)[number]>;
  readonly #receivedBytes: Counter<(typeof TCP_LABELS)[number]>;
  readonly #refused: Counter<'direction' | 'reason'>;
  readonly #policyDenied: Counter<'policy' | 'reason'>;
  readonly #hboneSessionsClosed: Counter<'reason'>;
  readonly #active: Gauge<'direction'>;
  readonly #seriesCache = new Map<string, Series>();

  constructor(registry: Registry, accessLog: Logger) {
    this.#log = accessLog;
    const labelNames = [...TCP_LABELS];
    const collect = () => this.#flush();
    this.#opened = new Counter({ name: 'istio_tcp_connections_opened_total', help: 'TCP connections opened', labelNames, registers: [registry], collect });
    this.#closed = new Counter({ name: 'istio_tcp_connections_closed_total', help: 'TCP connections closed', labelNames, registers: [registry], collect });
    this.#sentBytes = new Counter({ name: 'istio_tcp_sent_bytes_total', help: 'Bytes sent toward the client (response direction)', labelNames, registers: [registry], collect });
    this.#receivedBytes = new Counter({ name: 'istio_tcp_received_bytes_total', help: 'Bytes received from the client (request direction)', labelNames, registers: [registry], collect });
    this.#refused = new Counter({
      name: 'ambit_connections_refused_total',
      help: 'Connections and HBONE streams the agent refused, by direction and reason',
      labelNames: ['direction', 'reason'],
      registers: [registry],
    });
    this.#policyDenied = new Counter({
      name: 'ambit_policy_denied_total',
      help: 'Connections refused by AuthorizationPolicy or PeerAuthentication, by deciding policy (ns/name, or "default") and reason',
      labelNames: ['policy', 'reason'],
      registers: [registry],
    });
    this.#hboneSessionsClosed = new Counter({
      name: 'ambit_hbone_sessions_closed_total',
      help: 'HBONE sessions the listener closed with their open streams (peer_unresponsive, trust_root_removed), by reason',
      labelNames: ['reason'],
      registers: [registry],
    });
    this.#active = new Gauge({ name: 'ambit_connections_active', help: 'Proxied connections open now', labelNames: ['direction'], registers: [registry], collect });
  }

  /** A connection was set up (the upstream answered): count it open. */
  opened(record: ConnectionRecord): void {
    const series = this.#series(record);
    series.opened++;
    series.active++;
    series.open++;
  }

  /** An opened connection ended: bytes, closed count, and its access-log line. */
  closed(record: ConnectionRecord, outcome: ConnectionOutcome): void {
    const series = this.#series(record);
    series.closed++;
    series.sent += outcome.sent;
    series.received += outcome.received;
    series.active--;
    series.open--;
    this.#access(record, outcome);
  }

  /** The counts of a connection's label set, found by one string key. Series are few (one per pair of workloads). */
  #series(record: ConnectionRecord): Series {
    const key = seriesKey(record);
    let series = this.#seriesCache.get(key);
    if (!series) {
      const direction = record.reporter === 'source' ? 'outbound' : 'inbound';
      series = { labels: labelsOf(record), direction, opened: 0, closed: 0, sent: 0, received: 0, active: 0, open: 0, goneSince: undefined };
      this.#seriesCache.set(key, series);
    }
    return series;
  }

  /** How many label sets the agent keeps counts for. */
  get seriesCount(): number {
    return this.#seriesCache.size;
  }

  /**
   * Drops the series (cached counts and exported metrics) of workloads that are gone: once `exists` has said no for
   * SERIES_RETENTION_MS, with no connection of the series open all that time. Workloads are named as the labels
   * name them (namespace, workload name); a side the mesh does not know (`unknown`) keeps nothing alive or dead.
   */
  prune(exists: (namespace: string, workload: string) => boolean, now = Date.now()): void {
    const known = (namespace: string, workload: string) => namespace === UNKNOWN || workload === UNKNOWN || exists(namespace, workload);
    for (const [key, series] of this.#seriesCache) {
      const { labels } = series;
      const alive = series.open > 0 || (known(labels.source_workload_namespace, labels.source_workload) && known(labels.destination_workload_namespace, labels.destination_workload));
      if (alive) {
        series.goneSince = undefined;
        continue;
      }
      series.goneSince ??= now;
      if (now - series.goneSince < SERIES_RETENTION_MS) continue;
      this.#seriesCache.delete(key);
      // The connections it counted are closed: what they still owe the gauge is paid before the series goes.
      if (series.active !== 0) this.#active.inc({ direction: series.direction }, series.active);
      for (const metric of [this.#opened, this.#closed, this.#sentBytes, this.#receivedBytes]) metric.remove(labels);
    }
  }

  /** Hands the counts gathered since the last scrape to prom-client (each metric's collect calls this; the first does the work). */
  #flush(): void {
    for (const series of this.#seriesCache.values()) {
      const { labels } = series;
      if (series.opened > 0) this.#opened.inc(labels, series.opened);
      if (series.closed > 0) this.#closed.inc(labels, series.closed);
      if (series.sent > 0) this.#sentBytes.inc(labels, series.sent);
      if (series.received > 0) this.#receivedBytes.inc(labels, series.received);
      if (series.active !== 0) this.#active.inc({ direction: series.direction }, series.active);
      series.opened = series.closed = series.sent = series.received = series.active = 0;
    }
  }

  /**
   * A connection or stream refused before it opened: counted by reason and logged once with that reason. A refusal
   * by policy names the policy (`ns/name`, or `default` for the default deny) and rule, and is also counted in
   * ambit_policy_denied_total.
   */
  refused(
    direction: 'outbound' | 'inbound' | 'hbone',
    reason: string,
    record: Partial<ConnectionRecord>,
    message: string,
    policy?: { policy: string; rule: number | null },
  ): void {
    this.#refused.inc({ direction, reason });
    if (policy !== undefined) this.#policyDenied.inc({ policy: policy.policy, reason });
    this.#log.warn(
      {
        direction,
        path: record.path,
        src: record.source,
        dst: record.destination,
        hbone: record.hbone,
        outcome: 'refused',
        reason,
        ...(policy === undefined ? {} : { policy: policy.policy, rule: policy.rule }),
        detail: message,
      },
      'connection refused',
    );
  }

  /** The HBONE listener closed a session, and the streams it still carried: counted by reason and logged once. */
  hboneSessionClosed(reason: HboneSessionClose, detail: HboneSessionCloseDetail): void {
    this.#hboneSessionsClosed.inc({ reason });
    this.#log.warn({ direction: 'inbound', hbone: detail.remoteAddress, src: { identity: detail.peerIdentity }, streams: detail.streams, reason, detail: detail.message }, 'HBONE connection closed');
  }

  /** An open connection closed because a policy change no longer allows it. */
  revoked(record: ConnectionRecord, reason: string, policy: { policy: string; rule: number | null }, message: string): void {
    this.#policyDenied.inc({ policy: policy.policy, reason });
    this.#log.warn(
      { direction: record.reporter === 'source' ? 'outbound' : 'inbound', path: record.path, src: record.source, dst: record.destination, outcome: 'revoked', reason, policy: policy.policy, rule: policy.rule, detail: message },
      'connection closed by policy',
    );
  }

  #access(record: ConnectionRecord, outcome: ConnectionOutcome): void {
    this.#log.info(
      {
        direction: record.reporter === 'source' ? 'outbound' : 'inbound',
        path: record.path,
        src: record.source,
        dst: record.destination,
        service: record.service,
        hbone: record.hbone,
        security: record.security,
        bytes_received: outcome.received,
        bytes_sent: outcome.sent,
        duration_ms: Date.now() - record.startedAt,
        outcome: outcome.error ? 'error' : 'ok',
        error: outcome.error,
      },
      'access',
    );
  }
}

function labelsOf(record: ConnectionRecord): TcpLabels {
  return {
    reporter: record.reporter,
    source_workload: record.source.workload ?? UNKNOWN,
    source_workload_namespace: record.source.namespace ?? UNKNOWN,
    source_principal: record.source.identity ?? UNKNOWN,
    source_app: record.source.app ?? UNKNOWN,
    destination_workload: record.destination.workload ?? UNKNOWN,
    destination_workload_namespace: record.destination.namespace ?? UNKNOWN,
    destination_principal: record.destination.identity ?? UNKNOWN,
    destination_service: record.service ?? UNKNOWN,
    request_protocol: 'tcp',
    response_flags: '-',
    connection_security_policy: record.security,
  };
}
