// Which host interface each enrolled pod address is bound to.
/*
 * Source binding. The source agent takes a client's identity from its source address, so an enrolled pod's
 * address is bound to the interface CNI ADD reported for it (the host end of its veth): a TCP packet from a bound
 * address that arrives anywhere else is dropped, before it is captured. Two places see the two halves:
 * - raw PREROUTING, AMBIT_SOURCE_CHECK_CHAIN: a TCP packet whose source is in AMBIT_BOUND_SET and whose (source, in
 *   interface) pair is not in AMBIT_PORTS_SET is dropped. A routed pod (ptp, Calico) is bound to its veth; a bridge
 *   port's pod to its bridge, since iptables sees bridged packets arrive on the bridge. That also drops a bound
 *   address arriving from the wire.
 * - the bridge table's prerouting chain: the same test with the bridge port (`iifname` in the bridge family), from
 *   AMBIT_BRIDGE_BOUND_SET and AMBIT_BRIDGE_PORTS_SET. ipset's `physdev:` entries cannot do it: iptables' set match
 *   has no way to ask for the bridge port (measured on kernel 6.18: such entries never match).
 * Pods whose interface the agent does not know (they joined through the store, not CNI ADD) are in neither set and
 * are not checked. Packets the node sends (kubelet probes, the agent's own connections) leave through OUTPUT and
 * are not seen here, except those to the node's own addresses, which come back in through `lo`: the agent's
 * connection from a pod's address to a host-network workload is one, so `lo` is never checked (only the node's own
 * stack can send on it).
 */

/** What CNI ADD reported for an enrolled pod address: the interfaces outside the sandbox (see CniPod.hostInterfaces). */
export interface PodInterfaces {
  readonly ip: string;
  readonly hostInterfaces: readonly string[];
}

/** An address bound to its interface: the host end of its veth, and the bridge that veth is a port of, if any. */
export interface SourceBinding {
  readonly ip: string;
  readonly iface: string;
  readonly bridge?: string;
}

/** One link as `ip -j link show` prints it. */
export interface LinkEntry {
  ifname?: string;
  master?: string;
}

/**
 * The bindings of `pods` on a node with these links and bridges: the pod's interface is the one reported interface
 * that exists and is not a bridge. An address with none, or with several, is not bound (and returned apart): its
 * traffic is not checked, which is what it was before, rather than dropped by a guess.
 */
export function resolveSourceBindings(
  pods: readonly PodInterfaces[],
  links: readonly LinkEntry[],
  bridges: readonly string[],
): { bindings: SourceBinding[]; unresolved: string[] } {
  const masters = new Map(links.filter((link) => link.ifname !== undefined).map((link) => [link.ifname as string, link.master]));
  const bindings: SourceBinding[] = [];
  const unresolved: string[] = [];
  for (const pod of pods) {
    const candidates = [...new Set(pod.hostInterfaces)].filter((name) => masters.has(name) && !bridges.includes(name));
    const iface = candidates.length === 1 ? candidates[0] : undefined;
    if (iface === undefined) {
      unresolved.push(pod.ip);
      continue;
    }
    const master = masters.get(iface);
    bindings.push(master !== undefined && bridges.includes(master) ? { ip: pod.ip, iface, bridge: master } : { ip: pod.ip, iface });
  }
  return { bindings: bindings.sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : 0)), unresolved };
}

/** The distinct host interfaces of `bindings`, sorted, each with whether it is a bridge port. */
export function podInterfaces(bindings: readonly SourceBinding[]): Array<{ iface: string; bridged: boolean }> {
  const byName = new Map(bindings.map((binding) => [binding.iface, binding.bridge !== undefined]));
  return [...byName.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([iface, bridged]) => ({ iface, bridged }));
}
