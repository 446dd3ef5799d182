/**
 * L4 authorization end to end on network namespaces (root): AuthorizationPolicy and PeerAuthentication objects in
 * the local config folder, enforced by the destination agent for HBONE, same-node and plaintext traffic, with real
 * clients (curl, Node) and real rules.
 */
import { rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { ECHO_PORT, HTTP_PORT, MeshCluster, metricValue, parsePcap, startCapture, Testbed, type TestbedPod } from '../testbed/index.js';
import { holdConnection, within } from './mesh/hold.js';
import { needsTestbed } from './prerequisites.js';

const unavailable = needsTestbed();

t.test('L4 authorization at the destination agent', { skip: unavailable }, async (t) => {
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 0, cni: ['bridge', 'ptp'] });
  t.teardown(() => tb.destroy());
  const client = await tb.addPod('node1', 'client');
  const other = await tb.addPod('node1', 'other');
  const teamB = await tb.addPod('node1', 'team-b');
  const plain = await tb.addPod('node1', 'plain');
  const server = await tb.addPod('node2', 'server');
  const neighbour = await tb.addPod('node2', 'neighbour');
  const cluster = await MeshCluster.start(tb, {
    namespaces: { demo: { 'ambit.dev/mode': 'enabled' }, 'team-b': { 'ambit.dev/mode': 'enabled' }, plain: {} },
    pods: {
      client: { namespace: 'demo', serviceAccount: 'client' },
      other: { namespace: 'demo', serviceAccount: 'other' },
      'team-b': { namespace: 'team-b', serviceAccount: 'default' },
      plain: { namespace: 'plain' },
      server: { namespace: 'demo', serviceAccount: 'server', app: 'server' },
      neighbour: { namespace: 'demo', serviceAccount: 'other', app: 'neighbour' },
    },
  });
  const [node1, node2] = [tb.node('node1'), tb.node('node2')];
  const policyFile = path.join(cluster.configDir, 'policies.yaml');
  /** Replaces the policies (write-then-rename, as a config management tool would), or removes them, and waits for both agents. */
  const applyPolicies = async (yaml: string | undefined) => {
    const since = Date.now();
    if (yaml === undefined) {
      await rm(policyFile, { force: true });
    } else {
      await writeFile(`${policyFile}.tmp`, yaml);
      await rename(`${policyFile}.tmp`, policyFile);
    }
    for (const node of [node1, node2]) await cluster.waitForLog(node, (r) => r.msg === 'policies updated' && Number(r.time) >= since, 3000);
  };
  const clearPolicies = () => applyPolicies(undefined);
  const reaches = async (from: TestbedPod, to: TestbedPod): Promise<boolean> => {
    const result = await tb.exec(from.netns, 'curl', ['-sS', '--max-time', '3', `http://${to.ip}:${HTTP_PORT}/`], { reject: false });
    return result.exitCode === 0 && String(result.stdout).includes(`"pod":"${to.name}"`);
  };

  t.test('no policy: default allow', async (t) => {
    t.ok(await reaches(client, server), 'mesh client → server');
    t.ok(await reaches(other, server), 'another mesh client → server');
    t.ok(await reaches(plain, server), 'plaintext client → server (PERMISSIVE)');
  });

  t.test('a namespace ALLOW of one principal: that principal passes, every other is refused, also on the same node', async (t) => {
    await applyPolicies(`
apiVersion: security.ambit.dev/v1
kind: AuthorizationPolicy
metadata: { name: server-allow-client, namespace: demo }
spec:
  selector: { matchLabels: { app: server } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/demo/sa/client"] } }]
`);
    t.ok(await reaches(client, server), 'the allowed principal passes');
    // The source agent sends a client's first bytes right behind the CONNECT; refused, they must go nowhere.
    const marker = `ambit-refused-${process.pid}-${Date.now()}`;
    const capture = await startCapture(server.netns, 'eth0', 'tcp');
    const refused = await tb.exec(other.netns, 'curl', ['-sS', '--max-time', '3', '--data', marker, `http://${server.ip}:${HTTP_PORT}/`], { reject: false });
    const pcap = await capture.stop();
    t.not(refused.exitCode, 0, 'another principal is refused');
    t.notOk(pcap.includes(Buffer.from(marker)), "the refused client's bytes never reached the pod");
    t.same(parsePcap(pcap).filter((p) => p.src === other.ip), [], 'nor did any connection on its behalf');
    t.notOk(await reaches(plain, server), 'plaintext has no principal: refused');
    t.ok(await reaches(client, neighbour), 'the policy selects app=server only');
    const dst = await cluster.waitForLog(node2, (r) => r.msg === 'connection refused' && r.reason === 'not_allowed_by_any_policy' && (r.src as { identity?: string }).identity === 'spiffe://cluster.local/ns/demo/sa/other');
    t.match(dst, { policy: 'default', rule: null, path: 'hbone' }, 'the destination names the default deny');
    const src = await cluster.waitForLog(node1, (r) => r.msg === 'connection refused' && r.reason === 'not_allowed_by_any_policy');
    t.match(src.detail, /403 not_allowed_by_any_policy \(policy default\)/, 'the source agent logs the 403 and its reason header');
    t.ok(metricValue(await cluster.metrics(node2), 'ambit_policy_denied_total', { policy: 'default', reason: 'not_allowed_by_any_policy' }) >= 2);
    // Same node: the destination agent is the source agent; same policy.
    t.notOk(await reaches(neighbour, server), 'a same-node client with another principal is refused');
    await cluster.waitForLog(node2, (r) => r.msg === 'connection refused' && r.path === 'local' && r.reason === 'not_allowed_by_any_policy');
  });

  t.test('a DENY by namespace names its policy and rule', async (t) => {
    await applyPolicies(`
apiVersion: security.ambit.dev/v1
kind: AuthorizationPolicy
metadata: { name: deny-team-b, namespace: demo }
spec:
  action: DENY
  rules:
  - from: [{ source: { namespaces: ["nobody"] } }]
  - from: [{ source: { namespaces: ["team-*"] } }]
    to: [{ operation: { ports: ["${HTTP_PORT}"] } }]
`);
    t.notOk(await reaches(teamB, server), 'team-b is denied');
    t.ok(await reaches(client, server), 'demo is not');
    const rec = await cluster.waitForLog(node2, (r) => r.msg === 'connection refused' && r.reason === 'denied_by_policy');
    t.match(rec, { policy: 'demo/deny-team-b', rule: 1 });
    t.equal(metricValue(await cluster.metrics(node2), 'ambit_policy_denied_total', { policy: 'demo/deny-team-b', reason: 'denied_by_policy' }), 1);
  });

  t.test('STRICT refuses plaintext while mesh clients pass', async (t) => {
    await applyPolicies(`
apiVersion: security.ambit.dev/v1
kind: PeerAuthentication
metadata: { name: strict, namespace: demo }
spec: { mtls: { mode: STRICT } }
`);
    t.notOk(await reaches(plain, server), 'a client outside the mesh is refused');
    t.ok(await reaches(client, server), 'a mesh client passes');
    const rec = await cluster.waitForLog(node2, (r) => r.msg === 'connection refused' && r.reason === 'mtls_strict');
    t.match(rec, { policy: 'demo/strict', path: 'plaintext' });
  });

  t.test('a policy change closes the open connections it no longer allows', async (t) => {
    await clearPolicies();
    const denied = await holdConnection(tb, other, server.ip, ECHO_PORT);
    const kept = await holdConnection(tb, client, server.ip, ECHO_PORT);
    const started = Date.now();
    await applyPolicies(`
apiVersion: security.ambit.dev/v1
kind: AuthorizationPolicy
metadata: { name: deny-other, namespace: demo }
spec:
  action: DENY
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/demo/sa/other"] } }]
`);
    await within(2000, 'the denied connection is closed', () => denied.lines.includes('closed'));
    t.ok(Date.now() - started < 2000, `closed ${Date.now() - started} ms after the change was written`);
    t.notOk(kept.lines.includes('closed'), 'the connection the policy still allows stays open');
    const rec = await cluster.waitForLog(node2, (r) => r.msg === 'connection closed by policy');
    t.match(rec, { policy: 'demo/deny-other', rule: 0, reason: 'denied_by_policy' });
    denied.stop();
    kept.stop();
  });

  t.test('an ALLOW that needs L7 never matches at the agent, and the agent says why once', async (t) => {
    await applyPolicies(`
apiVersion: security.ambit.dev/v1
kind: AuthorizationPolicy
metadata: { name: allow-get, namespace: demo }
spec:
  selector: { matchLabels: { app: server } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/demo/sa/client"] } }]
    to: [{ operation: { methods: ["GET"] } }]
`);
    const since = Date.now();
    t.notOk(await reaches(client, server), 'even the named principal is refused: the method is invisible at L4');
    t.notOk(await reaches(client, server), 'again');
    const explains = (r: Record<string, unknown>) => r.policy === 'demo/allow-get' && typeof r.msg === 'string' && r.msg.includes('only a waypoint sees');
    // A second explanation would be written while the second connection is decided, before its refusal line (one
    // process, one ordered log stream): once both refusals are in, every explanation they caused is too.
    const refusal = (r: Record<string, unknown>) => r.msg === 'connection refused' && r.reason === 'not_allowed_by_any_policy' && Number(r.time) >= since;
    await within(5000, 'both refusals are logged at the destination', () => cluster.logs(node2).filter(refusal).length >= 2);
    const explained = cluster.logs(node2).filter(explains);
    t.equal(explained.length, 1, 'one explanation for the policy, not one per connection');
    t.match(explained[0], { rule: 0, action: 'ALLOW', fields: ['to[0].operation.methods'] });
  });

  t.test('an invalid policy is rejected by name and field, and fails closed', async (t) => {
    await applyPolicies(`
apiVersion: security.ambit.dev/v1
kind: AuthorizationPolicy
metadata: { name: typo, namespace: demo }
spec:
  selector: { matchLabels: { app: server } }
  action: ALLOW
  rules:
  - to: [{ operation: { ports: ["http"] } }]
`);
    const rejected = await cluster.waitForLog(node2, (r) => typeof r.msg === 'string' && r.msg.includes('AuthorizationPolicy demo/typo') && r.msg.includes('object rejected'));
    t.match(rejected.msg, /field spec\.rules\[0\]\.to\[0\]\.operation\.ports\[0\]/, 'the message names object and field');
    t.notOk(await reaches(client, server), 'the workload it selects is refused until it is fixed');
    t.ok(await reaches(client, neighbour), 'other workloads are not');
    const rec = await cluster.waitForLog(node2, (r) => r.msg === 'connection refused' && r.reason === 'invalid_policy');
    t.match(rec, { policy: 'demo/typo' });
    await clearPolicies();
    t.ok(await reaches(client, server), 'fixed (here: removed), traffic flows again');
  });

  t.test('a relabelled pod is decided again on its new labels: moved out of an ALLOW, its open connection closes', async (t) => {
    await applyPolicies(`
apiVersion: security.ambit.dev/v1
kind: AuthorizationPolicy
metadata: { name: server-allow-other, namespace: demo }
spec:
  selector: { matchLabels: { app: server } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/demo/sa/other"] } }]
---
apiVersion: security.ambit.dev/v1
kind: AuthorizationPolicy
metadata: { name: allow-client, namespace: demo }
spec:
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/demo/sa/client"] } }]
`);
    const moved = await holdConnection(tb, other, server.ip, ECHO_PORT);
    const kept = await holdConnection(tb, client, server.ip, ECHO_PORT);
    t.teardown(async () => {
      moved.stop();
      kept.stop();
      await cluster.setPodLabels('server', {});
      // Written after the labels: once both agents have the policies cleared, they have the labels back too.
      await clearPolicies();
    });
    const since = Date.now();
    // Out of server-allow-other's selector: only the namespace-wide ALLOW applies now, and it does not name `other`.
    await cluster.setPodLabels('server', { app: 'moved' });
    const revoked = await cluster.waitForLog(
      node2,
      (r) => r.msg === 'connection closed by policy' && Number(r.time) >= since && (r.src as { identity?: string }).identity === 'spiffe://cluster.local/ns/demo/sa/other',
    );
    t.match(revoked, { reason: 'not_allowed_by_any_policy', policy: 'default', dst: { ip: server.ip } }, 'decided on the labels the pod has now');
    await within(2000, 'the connection the pod no longer allows is closed', () => moved.lines.includes('closed'));
    t.notOk(kept.lines.includes('closed'), 'the connection the namespace-wide ALLOW still allows stays open');
  });
});
