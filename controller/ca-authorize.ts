import { parseSpiffeId, spiffeId } from '../core/identity/index.js';
import { BOUND_TOKEN_EXTRA } from '../core/k8s/index.js';
import type { PodPlacements } from './placements.js';

/** Who the TokenReview says the caller is. */
export interface CaCaller {
  readonly username: string;
  readonly extra?: Readonly<Record<string, readonly string[]>>;
}

/** The CA's answer to "may this caller have this identity": yes, or which check failed, with a stable code. */
export type CaDecision = { readonly allowed: true } | { readonly allowed: false; readonly reason: CaRefusalReason; readonly message: string };

export type CaRefusalReason =
  | 'foreign_trust_domain'
  | 'no_node_claim'
  | 'caller_pod_unknown'
  | 'caller_pod_mismatch'
  | 'identity_not_on_node'
  | 'not_a_service_account'
  | 'not_own_identity'
  | 'reserved_identity';

export interface CaAuthorizationContext {
  readonly trustDomain: string;
  /** The agents' users (`system:serviceaccount:ambit-system:ambit-agent`): they may ask for their node's pods' identities. */
  readonly agentUsers: ReadonlySet<string>;
  readonly placements: PodPlacements;
  /**
   * Identities the endpoint never signs, whoever asks: the controller's own, which agents take for the controller (a
   * node that got it could pose as the controller to every agent). The controller signs its own in process.
   */
  readonly reserved: ReadonlySet<string>;
}

const SERVICE_ACCOUNT_USER = /^system:serviceaccount:([^:]+):([^:]+)$/;

/**
 * Node authorization, as Istio's CA has it, and nothing wider. An agent may have identity X only when a pod with
 * service account X is scheduled on the agent's own node, and that node is the one its bound token names (the
 * TokenReview's `authentication.kubernetes.io/node-name`), never one the request names; its token's pod must be a pod
 * the controller knows, with that uid, on that node. Any other caller (a waypoint) may have only its own identity.
 * `identity` is the one the CSR asks for, already parsed as a SPIFFE ID.
 */
export function authorizeIdentity(caller: CaCaller, identity: string, context: CaAuthorizationContext): CaDecision {
  const { trustDomain, namespace, serviceAccount } = parseSpiffeId(identity);
  if (trustDomain !== context.trustDomain) {
    return refused('foreign_trust_domain', `${identity} is not of this mesh's trust domain ${context.trustDomain}`);
  }
  if (context.reserved.has(identity)) return refused('reserved_identity', `${identity} is the controller's own identity; the CA endpoint never signs it`);
  const account = SERVICE_ACCOUNT_USER.exec(caller.username);
  if (!context.agentUsers.has(caller.username)) {
    if (account === null) return refused('not_a_service_account', `${caller.username} is not a service account; only service accounts get mesh identities`);
    const own = spiffeId(context.trustDomain, account[1] ?? '', account[2] ?? '');
    return own === identity ? { allowed: true } : refused('not_own_identity', `${caller.username} may have only its own identity ${own}, not ${identity}`);
  }
  const node = single(caller.extra, BOUND_TOKEN_EXTRA.nodeName);
  const podName = single(caller.extra, BOUND_TOKEN_EXTRA.podName);
  const podUid = single(caller.extra, BOUND_TOKEN_EXTRA.podUid);
  if (node === undefined || podName === undefined || podUid === undefined || account === null) {
    return refused(
      'no_node_claim',
      `the token of ${caller.username} is not bound to a pod on a node (the TokenReview reports no single ${BOUND_TOKEN_EXTRA.nodeName}, ${BOUND_TOKEN_EXTRA.podName} and ${BOUND_TOKEN_EXTRA.podUid}); mount a projected service-account token (Kubernetes 1.30 or later)`,
    );
  }
  const callerPod = context.placements.pod(account[1] ?? '', podName);
  if (callerPod === undefined) return refused('caller_pod_unknown', `the token's pod ${account[1] ?? ''}/${podName} is not known to the controller`);
  // the API server binds a token to a pod of its own service account; checked again here, as the rest is
  if (callerPod.uid !== podUid || callerPod.node !== node || callerPod.terminated || callerPod.account !== `${account[1] ?? ''}/${account[2] ?? ''}`) {
    return refused(
      'caller_pod_mismatch',
      `the token's pod ${account[1] ?? ''}/${podName} (uid ${podUid}, node ${node}, service account ${account[2] ?? ''}) is not the one the controller knows (uid ${callerPod.uid}, node ${callerPod.node ?? 'none'}, service account ${callerPod.account.split('/')[1] ?? ''}${callerPod.terminated ? ', ended' : ''})`,
    );
  }
  if (context.placements.runsOn(node, namespace, serviceAccount)) return { allowed: true };
  const elsewhere = context.placements.nodesOf(namespace, serviceAccount);
  const where = elsewhere.length === 0 ? 'on no node' : `on ${elsewhere.slice(0, 5).join(', ')}${elsewhere.length > 5 ? ` and ${elsewhere.length - 5} more` : ''}`;
  return refused('identity_not_on_node', `no pod with service account ${namespace}/${serviceAccount} is scheduled on node ${node} (it runs ${where}); an agent gets only its node's identities`);
}

function single(extra: CaCaller['extra'], key: string): string | undefined {
  const values = extra?.[key];
  return values?.length === 1 && values[0] !== '' ? values[0] : undefined;
}

function refused(reason: CaRefusalReason, message: string): CaDecision {
  return { allowed: false, reason, message };
}
