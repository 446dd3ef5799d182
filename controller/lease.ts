import { ApiStatusError, type KubeApi } from '../core/k8s/index.js';

export interface LeaseOptions {
  readonly namespace: string;
  readonly name: string;
  /** Who holds it: this replica's pod name. */
  readonly holder: string;
  readonly durationSeconds: number;
  readonly now?: () => number;
}

/**
 * Takes or renews a coordination.k8s.io Lease, as client-go's leader election does it, once: true when this replica
 * holds it afterwards. Absent, it is created; held by another whose renewTime is older than its duration, taken over;
 * held by another and fresh, left alone. Every write is conditional (create, or update at the resourceVersion read),
 * so two replicas that try at the same moment cannot both win: the loser gets 409 and false. client-node 1.4 has no
 * leader election, and the controller needs only "one of the replicas does this".
 */
export async function acquireLease(api: Pick<KubeApi, 'read' | 'post' | 'put'>, options: LeaseOptions): Promise<boolean> {
  const now = (options.now ?? Date.now)();
  const collection = `/apis/coordination.k8s.io/v1/namespaces/${options.namespace}/leases`;
  const spec = { holderIdentity: options.holder, leaseDurationSeconds: options.durationSeconds, renewTime: microTime(now) };
  let lease: { metadata?: { resourceVersion?: string }; spec?: { holderIdentity?: string; renewTime?: string; leaseDurationSeconds?: number; acquireTime?: string; leaseTransitions?: number } };
  try {
    lease = (await api.read(`${collection}/${options.name}`)) as typeof lease;
  } catch (err) {
    if (!(err instanceof ApiStatusError) || err.status !== 404) throw err;
    try {
      await api.post(collection, { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: options.name, namespace: options.namespace }, spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 } });
      return true;
    } catch (createErr) {
      if (createErr instanceof ApiStatusError && createErr.status === 409) return false;
      throw createErr;
    }
  }
  const held = lease.spec ?? {};
  const mine = held.holderIdentity === options.holder;
  const renewed = Date.parse(held.renewTime ?? '');
  const expired = !Number.isFinite(renewed) || renewed + (held.leaseDurationSeconds ?? options.durationSeconds) * 1000 < now;
  if (!mine && !expired && held.holderIdentity) return false;
  try {
    await api.put(`${collection}/${options.name}`, {
      ...lease,
      spec: {
        ...held,
        ...spec,
        acquireTime: mine ? (held.acquireTime ?? microTime(now)) : microTime(now),
        leaseTransitions: (held.leaseTransitions ?? 0) + (mine ? 0 : 1),
      },
    });
    return true;
  } catch (err) {
    if (err instanceof ApiStatusError && err.status === 409) return false;
    throw err;
  }
}

/** A Kubernetes MicroTime: RFC 3339 with six fractional digits. */
function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}
