/**
 * The mesh CA in the controller, end to end on network namespaces (root; issue 14): the controller (a process in the
 * host's namespace) creates the mesh's root in the double's Secret and publishes the trust bundle, which each agent
 * mounts as kubelet mounts a ConfigMap; the agents hold no CA key and get their pods' certificates from the
 * controller. The controller going away past a renewal stops nothing, an identity the controller does not see on the
 * node is refused with its reason in the agent's log, and a root rotation through the Secret refuses no connection.
 */
import { X509Certificate } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { CA_SECRET_KEYS, CA_SECRET_NAME, CertificateAuthority, chainLeadsTo, parseTrustBundle, sniForIdentity, TRUST_BUNDLE_CONFIGMAP_NAME, TRUST_BUNDLE_KEYS } from '../core/identity/index.js';
import { curlFrom, HTTP_PORT, KubeCluster, meshCaSecret, Testbed, type TestbedPod } from '../testbed/index.js';
import { within } from './mesh/hold.js';
import { tlsProbe } from './mesh/tls-probe.js';
import { needsTestbed } from './prerequisites.js';

const unavailable = needsTestbed();
const NAMESPACE = 'shop';
const TD = 'cluster.local';
const id = (sa: string) => `spiffe://${TD}/ns/${NAMESPACE}/sa/${sa}`;
/** Leaves of 20 s, renewed at 10 s: a test can wait past a renewal. */
const CERT_TTL_SECONDS = 20;
/** A new root is published this long before it signs (kubelet's minute is instant here: the volume follows at once). */
const CA_PROPAGATION_SECONDS = 3;
const BUNDLE_LAG_MS = 2_000;
const CONTROLLER_USER = 'system:serviceaccount:ambit-system:ambit-controller';

async function filesUnder(dir: string): Promise<string[]> {
  if ((await stat(dir)).isFile()) return [dir];
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((entry) => entry.isFile()).map((entry) => join(entry.parentPath, entry.name));
}

t.test('the mesh CA on the testbed: controller-signed certificates, outages, refusals, rotation', { skip: unavailable }, async (t) => {
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'], hostLink: true });
  t.teardown(() => tb.destroy());
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];
  const cluster = await KubeCluster.start(tb, {
    namespaces: { [NAMESPACE]: { 'ambit.dev/mode': 'enabled' } },
    certTtlSeconds: CERT_TTL_SECONDS,
    caPropagationSeconds: CA_PROPAGATION_SECONDS,
    // node1 sees a new bundle 2 s after node2: a key taken before both have its root would refuse client -> server
    trustBundleLagMs: { node1: BUNDLE_LAG_MS },
  });
  t.teardown(() => cluster.close());
  // the DaemonSet's CNI installer (a native sidecar) chained the plugin on each node before its agent started
  const client = await cluster.startPod('client', node1, { namespace: NAMESPACE, serviceAccount: 'client' });
  const server = await cluster.startPod('server', node2, { namespace: NAMESPACE, serviceAccount: 'server' });
  const secrets = cluster.api.objects('v1', 'secrets');
  const bundle = () => (cluster.api.objects('v1', 'configmaps').get(TRUST_BUNDLE_CONFIGMAP_NAME, 'ambit-system')?.data ?? {}) as Record<string, string>;
  const request = async (from: TestbedPod, to: TestbedPod): Promise<string | undefined> => {
    try {
      return (JSON.parse(await curlFrom(tb, from, `http://${to.ip}:${HTTP_PORT}/`, ['--max-time', '3'])) as { pod: string }).pod;
    } catch {
      return undefined;
    }
  };
  /** The certificate node2's agent presents for `identity` on 15008. */
  const presented = async (identity: string, node = node2): Promise<X509Certificate | undefined> => {
    // the probe looks at what is presented; the test verifies it against the root it expects
    const probe = await tlsProbe({ host: node.ip, port: 15008, servername: sniForIdentity(identity), rejectUnauthorized: false });
    if (probe.peerCertificate === undefined) t.comment(`probe of ${identity}: ${probe.error ?? 'no certificate'}`);
    return probe.peerCertificate;
  };
  /** The roots a node's agent trusts now: its mounted bundle, as the agent reads it. */
  const mountedRoots = async (node: typeof node1) => parseTrustBundle(await readFile(join(cluster.mountDir(`agent-${node.name}`, 'trust-bundle'), TRUST_BUNDLE_KEYS.roots), 'utf8'), node.name);
  /**
   * client -> server requests, one after the other, until stop(); which of them failed. Beside them, what a new
   * handshake would meet (pooled HBONE sessions outlive a change, so requests alone could miss it): the leaf each
   * agent presents must chain to a root the other node's mounted bundle holds at that moment.
   */
  const trafficAllAlong = () => {
    let running = true;
    let sent = 0;
    const failures: number[] = [];
    const untrusted: string[] = [];
    const loop = (async () => {
      while (running) {
        sent++;
        if ((await request(client, server)) !== 'server') failures.push(sent);
      }
    })();
    const handshakes = (async () => {
      while (running) {
        for (const [from, identity, to] of [[node2, id('server'), node1], [node1, id('client'), node2]] as const) {
          const leaf = await presented(identity, from);
          const roots = await mountedRoots(to);
          if (leaf === undefined || !chainLeadsTo([leaf], roots)) untrusted.push(`${from.name}'s ${identity} leaf is not trusted by ${to.name}'s bundle`);
        }
      }
    })();
    return {
      failures,
      untrusted,
      sent: () => sent,
      more: async (count: number) => {
        const target = sent + count;
        await within(20_000, `${count} more requests`, async () => sent >= target);
      },
      stop: async () => {
        running = false;
        await Promise.all([loop, handshakes]);
      },
    };
  };

  await t.test('the agents hold no CA key; their pods\' certificates are signed by the controller', async (t) => {
    await within(10_000, 'client reaches server through the mesh', async () => (await request(client, server)) === 'server');
    for (const node of [node1, node2]) {
      const spec = cluster.agentProcess(node);
      t.notOk([...spec.args, ...Object.keys(spec.env)].some((arg) => /ca-dir|AMBIT_CA_DIR/.test(arg)), `the agent on ${node.name} is given no CA folder`);
      for (const [mount, folder] of Object.entries(cluster.agentMounts(node))) {
        for (const file of await filesUnder(folder)) {
          t.notMatch(await readFile(file, 'utf8'), /PRIVATE KEY/, `no private key in ${mount}/${file.split('/').pop() ?? ''}`);
        }
      }
    }
    const secret = secrets.get(CA_SECRET_NAME, 'ambit-system');
    t.ok(secret, 'the controller created the mesh root in its Secret');
    const root = new X509Certificate(bundle()[TRUST_BUNDLE_KEYS.roots] ?? '');
    const leaf = await presented(id('server'));
    t.ok(leaf?.verify(root.publicKey), "node2's agent presents a certificate for shop/server signed by the published root");
    t.equal(leaf?.subjectAltName, `URI:${id('server')}`);
    // the controller's lines may still be in its pipe when the agents' certificates are in use
    for (const identity of [id('server'), id('client')]) {
      await cluster.waitForLog('controller', (r) => r.msg === 'certificate signed' && r.identity === identity && String(r.user).endsWith(':ambit-agent'));
    }
    t.pass('the controller logged signing both identities for the agents');
  });

  await t.test('an identity the controller does not see on the node is refused, with the reason in the agent\'s log; signed once it does', async (t) => {
    // the controller's view of the cluster falls behind; the agent's own watch of its node's pods does not
    const after = cluster.logs(node1).length;
    cluster.api.holdWatchesOf(CONTROLLER_USER);
    await cluster.startPod('ghost', node1, { namespace: NAMESPACE, serviceAccount: 'ghost' });
    const refused = await cluster.waitForLog(node1, (r) => r.spiffeId === id('ghost') && JSON.stringify(r.err ?? '').includes('identity_not_on_node'), 15_000, after);
    t.match(JSON.stringify(refused.err), /no pod with service account shop\/ghost is scheduled on node node1/, 'the agent logs which check failed');
    // its log line may still be in the pipe when the agent's arrives
    await cluster.waitForLog('controller', (r) => r.msg === 'certificate request refused' && r.reason === 'identity_not_on_node' && r.identity === id('ghost'));
    t.pass('and so does the controller');
    cluster.api.releaseWatchesOf(CONTROLLER_USER);
    await cluster.waitForLog(node1, (r) => r.msg === 'certificate rotated' && r.spiffeId === id('ghost'), 30_000, after);
    t.pass('the agent retried with backoff and got it once the controller saw the pod');
  });

  await t.test('with the controller stopped past a renewal, traffic goes on; renewals retry and succeed when it is back', async (t) => {
    const before = { node1: cluster.logs(node1).length, node2: cluster.logs(node2).length };
    const exitCode = await cluster.stopController();
    t.equal(exitCode, 0, 'the controller stopped cleanly');
    if (exitCode !== 0) t.comment(JSON.stringify(cluster.logs('controller').slice(-5)));
    const failed = await cluster.waitForLog(node2, (r) => r.spiffeId === id('server') && String(r.msg).includes('renewal failed'), CERT_TTL_SECONDS * 1000, before.node2);
    t.ok(failed, 'a renewal of shop/server failed while the controller is away');
    const heldCert = await presented(id('server'));
    t.ok(heldCert !== undefined && Date.parse(heldCert.validTo) > Date.now(), 'the agent still presents its valid certificate');
    t.equal(await request(client, server), 'server', 'and traffic goes on with it');
    const restarted = cluster.logs(node2).length;
    await cluster.startController();
    const renewed = await cluster.waitForLog(node2, (r) => r.msg === 'certificate rotated' && r.spiffeId === id('server'), 30_000, restarted);
    t.ok(renewed, 'the renewal succeeds once the controller is back');
    t.equal(await request(client, server), 'server');
  });

  await t.test('a root rotation through the Secret, [old] -> [old, new] -> [new], refuses no connection', async (t) => {
    const secret = secrets.get(CA_SECRET_NAME, 'ambit-system')!;
    const data = secret.data as Record<string, string>;
    const decode = (key: string) => Buffer.from(data[key] ?? '', 'base64').toString('utf8');
    const oldRoot = decode(CA_SECRET_KEYS.roots);
    const next = await CertificateAuthority.create({ trustDomain: TD });
    const write = (values: Record<string, string>) => {
      const current = secrets.get(CA_SECRET_NAME, 'ambit-system')!;
      const merged = { ...(current.data as Record<string, string>) };
      for (const [key, value] of Object.entries(values)) merged[key] = Buffer.from(value).toString('base64');
      secrets.update({ ...current, data: merged });
    };
    const rootsSeen = (node: typeof node1, count: number, after: number) =>
      // [new] alone only once the old key's leaves (20 s) have expired
      cluster.waitForLog(node, (r) => r.msg === 'trust bundle changed' && Array.isArray(r.roots) && r.roots.length === count, 45_000, after);

    const traffic = trafficAllAlong();
    try {
      let mark = { node1: cluster.logs(node1).length, node2: cluster.logs(node2).length };
      write({ [CA_SECRET_KEYS.roots]: oldRoot + next.rootPem });
      await Promise.all([rootsSeen(node1, 2, mark.node1), rootsSeen(node2, 2, mark.node2)]);
      t.pass('1. both agents trust [old, new]');

      mark = { node1: cluster.logs(node1).length, node2: cluster.logs(node2).length };
      write({ [CA_SECRET_KEYS.issuerCert]: next.rootPem, [CA_SECRET_KEYS.issuerKey]: next.keyPem });
      const reissued = (node: typeof node1, identity: string, after: number) =>
        cluster.waitForLog(node, (r) => r.msg === 'certificate rotated' && r.spiffeId === identity, 15_000, after);
      await Promise.all([reissued(node1, id('client'), mark.node1), reissued(node2, id('server'), mark.node2)]);
      // at once on the issuer's change, not at the next half-life renewal
      const renewedAll = (node: typeof node1, after: number) => cluster.waitForLog(node, (r) => r.msg === 'workload certificates re-issued by the new signer', 15_000, after);
      await Promise.all([renewedAll(node1, mark.node1), renewedAll(node2, mark.node2)]);
      await within(10_000, 'node2 presents a leaf of the new root', async () => (await presented(id('server')))?.verify(new X509Certificate(next.rootPem).publicKey) === true);
      t.pass('2. the signer is the new root, and the agents re-issued their leaves from it');

      mark = { node1: cluster.logs(node1).length, node2: cluster.logs(node2).length };
      write({ [CA_SECRET_KEYS.roots]: next.rootPem });
      await Promise.all([rootsSeen(node1, 1, mark.node1), rootsSeen(node2, 1, mark.node2)]);
      t.equal(bundle()[TRUST_BUNDLE_KEYS.roots], new X509Certificate(next.rootPem).toString(), '3. the published bundle is [new] alone');
      await traffic.more(5);
    } finally {
      await traffic.stop();
    }
    t.ok(traffic.sent() > 10, `${traffic.sent()} requests during the rotation`);
    t.same(traffic.failures, [], 'not one refused');
    t.same([...new Set(traffic.untrusted)], [], 'and at no moment did a node present a leaf the other node\'s bundle did not trust');
    t.equal(await request(client, server), 'server', 'and the mesh works on the new root');
  });

  await t.test('a root and key replaced in one write (a cert-manager renewal) refuses no connection either', async (t) => {
    const next = await CertificateAuthority.create({ trustDomain: TD });
    const nextRoot = new X509Certificate(next.rootPem);
    const traffic = trafficAllAlong();
    try {
      const mark = { node1: cluster.logs(node1).length, node2: cluster.logs(node2).length };
      const current = secrets.get(CA_SECRET_NAME, 'ambit-system')!;
      secrets.update({ ...current, data: meshCaSecret(next).data ?? {} });
      // the controller publishes [new, old], signs with the old key until the new root has been out for its delay,
      // then with the new one, and drops the old root one delay later
      await within(10_000, 'the bundle holds both roots', async () => bundle()[TRUST_BUNDLE_KEYS.roots]?.match(/BEGIN CERTIFICATE/g)?.length === 2);
      t.pass('both roots published at once');
      t.not(bundle()[TRUST_BUNDLE_KEYS.issuerChain], nextRoot.toString(), 'the issuer is still the old key then');
      const renewedAll = (node: typeof node1, after: number) => cluster.waitForLog(node, (r) => r.msg === 'workload certificates re-issued by the new signer', 20_000, after);
      await Promise.all([renewedAll(node1, mark.node1), renewedAll(node2, mark.node2)]);
      await within(45_000, 'the bundle is [new] alone (once the old key\'s leaves have expired)', async () => bundle()[TRUST_BUNDLE_KEYS.roots] === nextRoot.toString());
      await Promise.all([node1, node2].map((node) => cluster.waitForLog(node, (r) => r.msg === 'trust bundle changed' && Array.isArray(r.roots) && r.roots.length === 1, 15_000, mark[node.name as 'node1' | 'node2'])));
      await traffic.more(5);
    } finally {
      await traffic.stop();
    }
    t.ok(traffic.sent() > 10, `${traffic.sent()} requests during the change`);
    t.same(traffic.failures, [], 'not one refused');
    t.same([...new Set(traffic.untrusted)], [], 'and at no moment did a node present a leaf the other node\'s bundle did not trust');
    t.ok((await presented(id('server')))?.verify(nextRoot.publicKey), 'node2 presents a leaf of the new root');
  });
});
