/**
 * What the agent says of itself on its metrics port, `GET /status` (`ambit status` and `ambit check` read it through
 * the API server's pods proxy): its version and node, readiness, the redirect rules and their iptables backend, and
 * the node's enrolled pods with their identities and certificate expiry. Names, identities and times only: never a
 * key, a token or a certificate.
 */
import type { IptablesBackend } from './rules/index.js';

/** The shape `ambit status` reads; `version` is the schema's, bumped when a field changes meaning. */
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
  /** `ambit uninstall`: requested (its ConfigMap exists), done (plugin unchained, every rule, ipset and file removed). */
  readonly uninstall: { readonly requested: boolean; readonly done: boolean };
  readonly workloads: readonly WorkloadStatus[];
  /** The trust bundle's roots: subject and expiry. */
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
