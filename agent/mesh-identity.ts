import { X509Certificate } from 'node:crypto';
import { LocalCaFolder, RemoteCaIssuer, TrustBundleFolder, type CertIssuer, type TrustBundle } from '../core/identity/index.js';
import type { Logger } from '../core/log/index.js';
import type { AgentConfig, KubernetesSettings } from './config.js';

/**
 * Where the node's trust and its workload certificates come from. Local mode: the CA folder, whose signer issues in
 * this process. Kubernetes mode: the trust bundle the controller publishes, and the controller's CA, which signs;
 * no CA key is on the node.
 */
export interface MeshIdentity {
  /** The roots peers (and, in kubernetes mode, the controller) are verified against. */
  readonly trustBundle: TrustBundle;
  readonly issuer: CertIssuer;
  /** The certificate that signs this node's leaves, for its expiry metric; undefined when it is not published. */
  signer(): X509Certificate | undefined;
  /** `listener` is called when the signer changes, with what to log of the new one: the leaves must be re-issued. */
  onSignerChange(listener: (facts: Record<string, string>) => void): void;
  close(): Promise<void>;
}

/** Local mode's CA folder (`--ca-dir`): CA_NOT_FOUND, CA_INVALID and the others of LocalCaFolder.open. */
export async function openLocalIdentity(config: AgentConfig, log: Logger): Promise<MeshIdentity> {
  const folder = await LocalCaFolder.open({ dir: config.caDir, trustDomain: config.trustDomain, log: log.child({ component: 'ca-folder' }) });
  return {
    trustBundle: folder.trustBundle,
    issuer: folder,
    signer: () => new X509Certificate(folder.ca.rootPem),
    onSignerChange: (listener) => folder.on('signer', (ca) => listener({ root: new X509Certificate(ca.rootPem).fingerprint256 })),
    close: () => folder.close(),
  };
}

/** Kubernetes mode's trust bundle folder (TRUST_BUNDLE_INVALID when it does not load) and the controller's CA. */
export async function openKubernetesIdentity(settings: KubernetesSettings, log: Logger): Promise<MeshIdentity> {
  const folder = await TrustBundleFolder.open({ dir: settings.trustBundleDir, log: log.child({ component: 'trust-bundle' }) });
  const issuer = new RemoteCaIssuer({
    url: settings.controllerUrl,
    controllerIdentity: settings.controllerIdentity,
    trustBundle: folder.trustBundle,
    tokenFile: settings.caTokenFile,
    log,
  });
  return {
    trustBundle: folder.trustBundle,
    issuer,
    signer: () => folder.issuer(),
    onSignerChange: (listener) => folder.on('issuer', (cert) => listener({ issuer: cert.fingerprint256 })),
    close: async () => {
      issuer.close();
      await folder.close();
    },
  };
}
