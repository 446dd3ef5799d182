/**
 * What the agent says of itself on its metrics port, `GET /status` (`ambit status` and `ambit check` read it through
 * the API server's pods proxy): its version and node, readiness, the redirect rules and their iptables backend, and
 * the node's enrolled pods with their identities and certificate expiry. Names, identities and times only: never a
 * key, a token or a certificate.
 */
import { isIsoUtcInstant } from '../core/enrollment/index.js';
import { AmbitError } from '../core/errors/index.js';
import type { IptablesBackend } from './rules/index.js';

/** The version of this shape (`schema`), bumped when a field changes meaning; `version` is the agent's release. */
export const AGENT_STATUS_SCHEMA = 1;

export interface AgentStatus {
  readonly schema: typeof AGENT_STATUS_SCHEMA;
  readonly component: 'agent';
  /** The release (package version) the agent runs. */
  readonly version: string;
  readonly node: string;
  readonly mode: 'local' | 'kubernetes';
  readonly ready: boolean;
  /** Why not ready. */
  readonly reason?: string;
  readonly rules: RulesStatus;
  /**
   * The node's CNI configuration, as the installer sidecar last reported it over the CNI socket (every few seconds):
   * the file that chains ambit-cni (null: none), and when. Null fields: no installer has reported since the agent
   * started.
   */
  readonly cni: { readonly chainedIn: string | null; readonly reportedAt: string | null };
  /**
   * `ambit uninstall`: requested (its annotation is on the agents' ServiceAccount), the marker (the time it asked), done
   * (plugin unchained, every rule, ipset and file removed, for that marker).
   */
  readonly uninstall: { readonly requested: boolean; readonly marker: string | null; readonly done: boolean };
  readonly workloads: readonly WorkloadStatus[];
  /** The trust bundle's roots: SHA-256 fingerprint and expiry. */
  readonly roots: ReadonlyArray<{ readonly fingerprint: string; readonly notAfter: string }>;
}

export interface RulesStatus {
  /** False when the agent runs with --no-rules (it captures nothing). */
  readonly enabled: boolean;
  /** The backend the agent writes through (known once the rules were first installed). */
  readonly backend: IptablesBackend | null;
  /** The backend the node's other rules use, as last detected (a mismatch means the agent's rules are not the ones that apply). */
  readonly nodeBackend: IptablesBackend | null;
  /** The last install or repair: when, and whether it succeeded. */
  readonly checkedAt: string | null;
  readonly ok: boolean;
  readonly error?: string;
  /** `ambit cni uninstall` removed them: they stay gone. */
  readonly uninstalled: boolean;
}

export interface WorkloadStatus {
  readonly namespace: string;
  readonly name: string;
  readonly identity: string;
  readonly ips: readonly string[];
  /** The workload certificate's notAfter; null while none is held (being issued, or refused: see the log). */
  readonly certificateNotAfter: string | null;
}

/**
 * Reads what an agent's /status answered, strictly: every field of its type, every time an ISO 8601 instant. A
 * status of another schema is refused naming both (an agent and a CLI of different releases), a malformed one naming
 * the field, so that a check never passes on garbage (a date that does not parse compares false with everything).
 */
export function parseAgentStatus(value: unknown): AgentStatus {
  const fail = (field: string, what: string): never => {
    throw new AmbitError('AGENT_STATUS_INVALID', `the agent's /status has ${field} ${what}`);
  };
  const object = (v: unknown, field: string): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : fail(field, 'that is not an object'));
  const string = (v: unknown, field: string): string => (typeof v === 'string' ? v : fail(field, 'that is not a string'));
  const boolean = (v: unknown, field: string): boolean => (typeof v === 'boolean' ? v : fail(field, 'that is not true or false'));
  const instant = (v: unknown, field: string): string => {
    const text = string(v, field);
    return isIsoUtcInstant(text) ? text : fail(field, `${JSON.stringify(text)}, not an ISO 8601 UTC time`);
  };
  const nullable = <T>(v: unknown, read: (v: unknown) => T): T | null => (v === null ? null : read(v));
  const backend = (v: unknown, field: string): IptablesBackend | null => (v === null || v === 'nft' || v === 'legacy' ? v : fail(field, `${JSON.stringify(v)}, not nft, legacy or null`));
  const root = object(value, 'a body');
  if (root['component'] !== 'agent') fail('component', `${JSON.stringify(root['component'])}: it is not an agent's status`);
  if (root['schema'] !== AGENT_STATUS_SCHEMA) {
    throw new AmbitError('AGENT_STATUS_SCHEMA', `the agent answers /status in schema ${JSON.stringify(root['schema'])}, this CLI reads ${AGENT_STATUS_SCHEMA}: use the CLI of the agents' release`);
  }
  const rules = object(root['rules'], 'rules');
  const cni = object(root['cni'], 'cni');
  const uninstall = object(root['uninstall'], 'uninstall');
  const workloads = Array.isArray(root['workloads']) ? root['workloads'] : fail('workloads', 'that is not a list');
  const roots = Array.isArray(root['roots']) ? root['roots'] : fail('roots', 'that is not a list');
  const mode = root['mode'] === 'local' || root['mode'] === 'kubernetes' ? root['mode'] : fail('mode', 'that is neither local nor kubernetes');
  return {
    schema: AGENT_STATUS_SCHEMA,
    component: 'agent',
    version: string(root['version'], 'version'),
    node: string(root['node'], 'node'),
    mode,
    ready: boolean(root['ready'], 'ready'),
    ...(root['reason'] === undefined ? {} : { reason: string(root['reason'], 'reason') }),
    rules: {
      enabled: boolean(rules['enabled'], 'rules.enabled'),
      backend: backend(rules['backend'], 'rules.backend'),
      nodeBackend: backend(rules['nodeBackend'], 'rules.nodeBackend'),
      checkedAt: nullable(rules['checkedAt'], (v) => instant(v, 'rules.checkedAt')),
      ok: boolean(rules['ok'], 'rules.ok'),
      ...(rules['error'] === undefined ? {} : { error: string(rules['error'], 'rules.error') }),
      uninstalled: boolean(rules['uninstalled'], 'rules.uninstalled'),
    },
    cni: { chainedIn: nullable(cni['chainedIn'], (v) => string(v, 'cni.chainedIn')), reportedAt: nullable(cni['reportedAt'], (v) => instant(v, 'cni.reportedAt')) },
    uninstall: {
      requested: boolean(uninstall['requested'], 'uninstall.requested'),
      // absent from agents that predate it: none to match
      marker: uninstall['marker'] === undefined ? null : nullable(uninstall['marker'], (v) => instant(v, 'uninstall.marker')),
      done: boolean(uninstall['done'], 'uninstall.done'),
    },
    workloads: workloads.map((item, i) => {
      const w = object(item, `workloads[${i}]`);
      const ips = Array.isArray(w['ips']) ? w['ips'].map((ip, j) => string(ip, `workloads[${i}].ips[${j}]`)) : fail(`workloads[${i}].ips`, 'that is not a list');
      return {
        namespace: string(w['namespace'], `workloads[${i}].namespace`),
        name: string(w['name'], `workloads[${i}].name`),
        identity: string(w['identity'], `workloads[${i}].identity`),
        ips,
        certificateNotAfter: nullable(w['certificateNotAfter'], (v) => instant(v, `workloads[${i}].certificateNotAfter`)),
      };
    }),
    roots: roots.map((item, i) => {
      const r = object(item, `roots[${i}]`);
      return { fingerprint: string(r['fingerprint'], `roots[${i}].fingerprint`), notAfter: instant(r['notAfter'], `roots[${i}].notAfter`) };
    }),
  };
}
