import type { PodInfo } from '../core/discovery/index.js';
import type { ChangeSink, StreamChange } from '../core/stream/index.js';

/** Where a pod runs, and as whom: what the CA's node authorization reads. */
export interface Placement {
  readonly uid: string;
  readonly node: string | undefined;
  /** `namespace/serviceAccount` */
  readonly account: string;
  readonly terminated: boolean;
}

/**
 * The controller's pods by (node, service account), kept from the same changes that go to the change log: the CA
 * signs identity X for an agent only when a pod with service account X is scheduled on the agent's node (Istio's
 * node authorization). A pod counts from the moment it is scheduled (spec.nodeName set, before it has an IP), so that
 * its node's agent can hold its certificate before its first connection; it stops counting when it ends (Succeeded,
 * Failed) or is deleted.
 */
export class PodPlacements implements ChangeSink {
  readonly #pods = new Map<string, Placement>();
  /** node → account → pods of that account running there */
  readonly #byNode = new Map<string, Map<string, number>>();

  apply(changes: readonly StreamChange[]): void {
    for (const change of changes) {
      if (change.kind !== 'Pod') continue;
      const key = change.op === 'upsert' ? `${change.object.namespace}/${change.object.name}` : `${change.namespace ?? 'default'}/${change.name}`;
      const held = this.#pods.get(key);
      if (held !== undefined) this.#count(held, -1);
      if (change.op === 'delete') {
        this.#pods.delete(key);
        continue;
      }
      const pod: PodInfo = change.object;
      const placement: Placement = { uid: pod.uid, node: pod.node, account: `${pod.namespace}/${pod.serviceAccount}`, terminated: pod.terminated };
      this.#pods.set(key, placement);
      this.#count(placement, 1);
    }
  }

  /** Whether a pod of `namespace/serviceAccount` that has not ended is scheduled on `node`. */
  runsOn(node: string, namespace: string, serviceAccount: string): boolean {
    return (this.#byNode.get(node)?.get(`${namespace}/${serviceAccount}`) ?? 0) > 0;
  }

  /** The nodes where pods of `namespace/serviceAccount` run, sorted: for a refusal that says where they are. */
  nodesOf(namespace: string, serviceAccount: string): string[] {
    const account = `${namespace}/${serviceAccount}`;
    return [...this.#byNode].filter(([, accounts]) => (accounts.get(account) ?? 0) > 0).map(([node]) => node).sort();
  }

  /** The pod `namespace/name` as the controller last saw it. */
  pod(namespace: string, name: string): Placement | undefined {
    return this.#pods.get(`${namespace}/${name}`);
  }

  #count(placement: Placement, delta: 1 | -1): void {
    if (placement.node === undefined || placement.terminated) return;
    let accounts = this.#byNode.get(placement.node);
    if (accounts === undefined) this.#byNode.set(placement.node, (accounts = new Map()));
    const count = (accounts.get(placement.account) ?? 0) + delta;
    if (count > 0) accounts.set(placement.account, count);
    else accounts.delete(placement.account);
    if (accounts.size === 0) this.#byNode.delete(placement.node);
  }
}
