/**
 * A realistic AuthorizationPolicy population for the testbed bench: most policies belong to other teams'
 * namespaces, some to the destination's namespace for other workloads, a few mesh-wide DENYs on ports nobody uses,
 * and one ALLOW that lets the bench's client reach its server. Every decision for the bench connection has to look
 * at the mesh-wide and namespace policies, as in a real cluster.
 */
export interface PolicyLoadTarget {
  /** The destination's namespace and `app` label. */
  namespace: string;
  app: string;
  /** The client's principal (`cluster.local/ns/x/sa/y`). */
  clientPrincipal: string;
  rootNamespace: string;
}

export function policyManifests(count: number, target: PolicyLoadTarget): string {
  // JSON is YAML: one document per line.
  return policyObjects(count, target).map((d) => `---\n${JSON.stringify(d)}\n`).join('');
}

/** The same policies as objects, for the API server double (the scale bench). */
export function policyObjects(count: number, target: PolicyLoadTarget): object[] {
  const docs: object[] = [];
  const policy = (namespace: string, name: string, spec: object) => ({ apiVersion: 'security.ambit.dev/v1', kind: 'AuthorizationPolicy', metadata: { namespace, name }, spec });
  docs.push(
    policy(target.namespace, 'bench-allow-client', {
      selector: { matchLabels: { app: target.app } },
      action: 'ALLOW',
      rules: [{ from: [{ source: { principals: [target.clientPrincipal] } }] }],
    }),
  );
  for (let i = 1; i < count; i++) {
    if (i % 100 === 0) {
      docs.push(policy(target.rootNamespace, `mesh-deny-${i}`, { action: 'DENY', rules: [{ to: [{ operation: { ports: [String(20000 + i)] } }] }] }));
    } else if (i % 10 === 0) {
      docs.push(
        policy(target.namespace, `other-app-${i}`, {
          selector: { matchLabels: { app: `other-${i}` } },
          action: 'ALLOW',
          rules: [{ from: [{ source: { namespaces: [`team-${i % 37}`], ipBlocks: ['10.0.0.0/8'] } }], to: [{ operation: { ports: ['8080', '9090'] } }] }],
        }),
      );
    } else {
      docs.push(
        policy(`team-${i % 50}`, `policy-${i}`, {
          selector: { matchLabels: { app: `svc-${i}` } },
          action: i % 3 === 0 ? 'DENY' : 'ALLOW',
          rules: [{ from: [{ source: { principals: [`cluster.local/ns/team-${(i + 1) % 50}/sa/caller-${i}`] } }], when: [{ key: 'destination.port', values: ['8080'] }] }],
        }),
      );
    }
  }
  return docs;
}
