/**
 * `ambit enroll NS` and `ambit unenroll NS`: set or remove the namespace label that enrolls a namespace
 * (core/enrollment's ENROLL_LABEL), through the API, with a merge patch of that one label. `--dry-run` reads the
 * namespace and prints what would be applied, changing nothing.
 */
import yaml from 'js-yaml';
import { AmbitError } from '../core/errors/index.js';
import { DEFAULT_ROOT_NAMESPACE, ENROLL_LABEL, enrollmentLabel, ISTIO_DATAPLANE_LABEL } from '../core/enrollment/index.js';
import { isDnsLabel } from '../core/names/index.js';
import { parseCommandLine, usageError } from './args.js';
import { connectCluster, KUBE_FLAGS, KUBE_FLAGS_USAGE, NAMESPACES, type ApiObject } from './kube.js';

export type EnrollAction = 'enroll' | 'unenroll';

const ENROLLED_VALUE = 'enabled';

/** Namespaces enroll refuses, and why: enrolling them would capture what the mesh or the cluster needs to run. */
const NEVER_ENROLLED: ReadonlyMap<string, string> = new Map([
  [DEFAULT_ROOT_NAMESPACE, "is the mesh's own namespace: its pods (the controller, waypoints) are never enrolled, so that the mesh can always start itself"],
  ['kube-system', "holds the cluster's own components (DNS, kube-proxy, the network plugin); capturing their traffic could cut the cluster off"],
]);

export const ENROLL_USAGE = `Usage: ambit enroll NAMESPACE [options]
       ambit unenroll NAMESPACE [options]

enroll     labels the namespace ${ENROLL_LABEL}=${ENROLLED_VALUE}: its pods join the mesh. The namespace must exist;
           ${DEFAULT_ROOT_NAMESPACE} (the mesh's own) and kube-system are refused.
unenroll   removes that label. A namespace labelled ${ISTIO_DATAPLANE_LABEL}=ambient stays enrolled through it (Ambit
           honours Istio's label): unenroll says so, and exits 1.

Options:
  --dry-run              change nothing; print what would be applied
  -o, --output FORMAT    text (default); yaml or json: the Namespace as applied (with --dry-run: as it would be,
                         for a GitOps repository)
${KUBE_FLAGS_USAGE}
  -h, --help             show this help

Exit codes: 0 done, or nothing to do; 1 not done (no such namespace, a permission the API server refused, the API
server unreachable), or unenrolled but still enrolled through Istio's label; 2 bad usage, or a kubeconfig that
cannot be read (nothing is sent then).
`;

/** What one command does to a namespace's labels: the patch (none when there is nothing to do) and what to say. */
export interface EnrollmentPlan {
  readonly patch: { metadata: { labels: Record<string, string | null> } } | undefined;
  readonly labels: Record<string, string>;
  /** Still enrolled after an unenroll: through this label (Istio's). */
  readonly stillEnrolledBy: string | undefined;
  /** `enrolled (ambit.dev/mode=enabled)`, or, with nothing to change, why. */
  readonly change: string;
  readonly notes: readonly string[];
}

/** The change `action` makes to namespace `name` whose labels are `labels`: pure, so a dry run says what a run does. */
export function planEnrollment(action: EnrollAction, name: string, labels: Readonly<Record<string, string>>): EnrollmentPlan {
  const current = labels[ENROLL_LABEL];
  if (action === 'enroll') {
    if (current === ENROLLED_VALUE) {
      return { patch: undefined, labels: { ...labels }, stillEnrolledBy: undefined, change: `is already enrolled (${ENROLL_LABEL}=${ENROLLED_VALUE}); nothing to change`, notes: [] };
    }
    const by = enrollmentLabel(labels);
    return {
      patch: { metadata: { labels: { [ENROLL_LABEL]: ENROLLED_VALUE } } },
      labels: { ...labels, [ENROLL_LABEL]: ENROLLED_VALUE },
      stillEnrolledBy: undefined,
      change: `enrolled (${ENROLL_LABEL}=${ENROLLED_VALUE})`,
      notes: [
        ...(current === undefined ? [] : [`replacing ${ENROLL_LABEL}=${current}`]),
        ...(by === undefined ? [] : [`it was already enrolled through ${by}; with ${ENROLL_LABEL} it stays enrolled without that label`]),
      ],
    };
  }
  const { [ENROLL_LABEL]: _removed, ...rest } = labels;
  const stillEnrolledBy = enrollmentLabel(rest);
  const notes =
    stillEnrolledBy === undefined ? [] : [`it stays enrolled through ${stillEnrolledBy}: remove that label too, unless Istio manages it (kubectl label namespace ${name} ${ISTIO_DATAPLANE_LABEL}-)`];
  if (current === undefined) return { patch: undefined, labels: { ...labels }, stillEnrolledBy, change: `has no ${ENROLL_LABEL} label; nothing to change`, notes };
  return { patch: { metadata: { labels: { [ENROLL_LABEL]: null } } }, labels: rest, stillEnrolledBy, change: `unenrolled (${ENROLL_LABEL}=${current} removed)`, notes };
}

/** What the command says it did, or, in a dry run, would do. */
function describePlan(name: string, plan: EnrollmentPlan, dryRun: boolean): string {
  const change = plan.patch !== undefined && dryRun ? `dry run, nothing changed: namespace ${name} would be ${plan.change}` : `namespace ${name} ${plan.change}`;
  return [change, ...plan.notes].join('; ');
}

/** The Namespace as a manifest: what GitOps keeps, without the server's fields. */
function namespaceManifest(name: string, labels: Record<string, string>): ApiObject {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } };
}

export async function runEnrollCommand(action: EnrollAction, argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine(action, argv, {
    'dry-run': { type: 'boolean' },
    output: { type: 'string', short: 'o' },
    ...KUBE_FLAGS,
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    process.stdout.write(ENROLL_USAGE);
    return 0;
  }
  const output = values.output ?? 'text';
  if (output !== 'text' && output !== 'yaml' && output !== 'json') throw usageError(action, `--output ${output} is not text, yaml or json`);
  if (positionals.length !== 1) throw usageError(action, `give one namespace: ambit ${action} NAMESPACE${positionals.length === 0 ? '' : ` (got ${positionals.join(' ')})`}`);
  const name = positionals[0] as string;
  if (!isDnsLabel(name)) throw usageError(action, `${JSON.stringify(name)} is not a namespace name (lowercase letters, digits and '-', at most 63)`);
  const refusal = NEVER_ENROLLED.get(name);
  if (action === 'enroll' && refusal !== undefined) throw usageError(action, `namespace ${name} ${refusal}; it is never enrolled`);
  const dryRun = values['dry-run'] ?? false;

  const cluster = await connectCluster(action, values);
  const ref = NAMESPACES.named(name);
  const namespace = await cluster.get(ref);
  if (namespace === undefined) {
    throw new AmbitError('ENROLL_NO_NAMESPACE', `namespace ${name} does not exist on ${cluster.server}; nothing was changed (create it first: kubectl create namespace ${name})`);
  }
  const plan = planEnrollment(action, name, namespace.metadata?.labels ?? {});
  let labels = plan.labels;
  if (plan.patch !== undefined && !dryRun) labels = (await cluster.mergePatch(ref, plan.patch)).metadata?.labels ?? {};

  const message = describePlan(name, plan, dryRun);
  if (output === 'text') {
    process.stdout.write(`${message}\n`);
  } else {
    const manifest = namespaceManifest(name, labels);
    process.stdout.write(output === 'json' ? `${JSON.stringify(manifest, null, 2)}\n` : yaml.dump(manifest));
    process.stderr.write(`${message}\n`);
  }
  return plan.stillEnrolledBy === undefined ? 0 : 1;
}
