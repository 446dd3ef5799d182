/** `ambit authz check`: the decision and what decided it, for people (text) and scripts (JSON), from a config folder. */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'main.js');

function ambit(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const CLUSTER = `
apiVersion: v1
kind: Namespace
metadata: { name: demo, labels: { ambit.dev/mode: enabled } }
---
apiVersion: v1
kind: Namespace
metadata: { name: legacy }
---
apiVersion: v1
kind: Pod
metadata: { name: backend, namespace: demo, labels: { app: backend } }
spec: { nodeName: node2, serviceAccountName: backend, containers: [{ name: app }] }
status: { phase: Running, podIP: 10.244.2.2 }
---
apiVersion: v1
kind: Pod
metadata: { name: frontend, namespace: demo, labels: { app: frontend } }
spec: { nodeName: node1, serviceAccountName: frontend, containers: [{ name: app }] }
status: { phase: Running, podIP: 10.244.1.2 }
---
apiVersion: v1
kind: Pod
metadata: { name: batch, namespace: legacy }
spec: { nodeName: node1, containers: [{ name: app }] }
status: { phase: Running, podIP: 10.244.1.3 }
`;

const POLICIES = `
apiVersion: security.ambit.dev/v1
kind: AuthorizationPolicy
metadata: { name: backend-allow-frontend, namespace: demo }
spec:
  selector: { matchLabels: { app: backend } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/demo/sa/frontend"] } }]
    to: [{ operation: { ports: ["8080"] } }]
---
apiVersion: security.ambit.dev/v1
kind: AuthorizationPolicy
metadata: { name: deny-admin-port, namespace: ambit-system }
spec:
  action: DENY
  rules:
  - to: [{ operation: { ports: ["9999"] } }]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: strict, namespace: demo }
spec: { mtls: { mode: STRICT } }
`;

t.test('decisions and what decided them', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-authz-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'cluster.yaml'), CLUSTER);
  await writeFile(path.join(dir, 'policies.yaml'), POLICIES);
  const check = (args: string[]) => ambit(['authz', 'check', '--config', dir, ...args]);
  const json = async (args: string[]) => {
    const r = await check([...args, '--output', 'json']);
    t.equal(r.code, 0, `exit 0: ${r.stderr}`);
    return JSON.parse(r.stdout) as unknown;
  };
  const frontend = ['--from-principal', 'spiffe://cluster.local/ns/demo/sa/frontend'];

  t.same(await json([...frontend, '--to-pod', 'demo/backend', '--port', '8080']), { decision: 'ALLOW', policy: 'demo/backend-allow-frontend', rule: 0, reason: 'allowed_by_policy' });
  t.same(await json([...frontend, '--to-pod', 'demo/backend', '--port', '9000']), { decision: 'DENY', policy: null, rule: null, reason: 'not_allowed_by_any_policy' });
  t.same(await json([...frontend, '--to-ip', '10.244.2.2', '--port', '9999']), { decision: 'DENY', policy: 'ambit-system/deny-admin-port', rule: 0, reason: 'denied_by_policy' }, 'mesh-wide DENY from the root namespace');
  t.same(await json([...frontend, '--to-ip', '10.244.2.2', '--port', '9999', '--root-namespace', 'istio-system']), { decision: 'DENY', policy: null, rule: null, reason: 'not_allowed_by_any_policy' }, 'another root namespace: that policy is only namespace-wide');
  t.same(await json(['--from-namespace', 'demo', '--to-pod', 'demo/frontend', '--port', '80']), { decision: 'ALLOW', policy: null, rule: null, reason: 'no_policy' }, 'default allow');
  t.same(await json(['--plaintext', '--from-ip', '10.244.1.3', '--to-pod', 'demo/backend', '--port', '8080']), { decision: 'DENY', policy: null, rule: null, reason: 'not_allowed_by_any_policy' }, 'Istio PeerAuthentication is not read without --istio-api');
  t.same(await json(['--plaintext', '--from-ip', '10.244.1.3', '--to-pod', 'demo/frontend', '--port', '8080', '--istio-api']), { decision: 'DENY', policy: 'demo/strict', rule: null, reason: 'mtls_strict' }, 'with --istio-api, STRICT refuses plaintext');

  const text = await check([...frontend, '--to-pod', 'demo/backend', '--port', '8080']);
  t.equal(
    text.stdout,
    'ALLOW by demo/backend-allow-frontend rule 0 (allowed_by_policy)\n' +
      '  source:      principal cluster.local/ns/demo/sa/frontend, ip 10.244.1.2\n' +
      '  destination: pod demo/backend 10.244.2.2:8080\n',
  );
});

t.test('bad input: usage errors exit 2, a config problem exits 1, each with the reason', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-authz-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'cluster.yaml'), CLUSTER);
  const base = ['authz', 'check', '--config', dir];
  t.match(await ambit(['authz']), { code: 2, stdout: /Usage: ambit authz check/ });
  t.match(await ambit(['authz', 'verify']), { code: 2, stderr: /unknown authz command 'verify'/ });
  t.match(await ambit([...base, '--to-pod', 'demo/backend', '--port', '80']), { code: 2, stderr: /exactly one source/ });
  t.match(await ambit([...base, '--plaintext', '--from-namespace', 'x', '--to-pod', 'demo/backend', '--port', '80']), { code: 2, stderr: /exactly one source/ });
  t.match(await ambit([...base, '--plaintext', '--port', '80']), { code: 2, stderr: /exactly one destination/ });
  t.match(await ambit([...base, '--plaintext', '--from-ip', '10.0.0.1', '--to-pod', 'demo/backend', '--port', '0']), { code: 2, stderr: /--port 0 must be a port number/ });
  t.match(await ambit([...base, '--from-principal', 'frontend', '--to-pod', 'demo/backend', '--port', '80']), { code: 2, stderr: /is not a SPIFFE ID/ });
  t.match(await ambit([...base, '--plaintext', '--from-ip', 'nope', '--to-pod', 'demo/backend', '--port', '80']), { code: 2, stderr: /--from-ip nope is not an IP/ });
  t.match(await ambit([...base, '--plaintext', '--to-pod', 'demo/backend', '--port', '80']), { code: 2, stderr: /give --from-ip/ });
  t.match(await ambit([...base, '--plaintext', '--from-ip', '10.0.0.1', '--to-pod', 'demo/nothing', '--port', '80']), { code: 1, stderr: /no pod demo\/nothing/ });
  t.match(await ambit(['authz', 'check', '--config', path.join(dir, 'missing'), '--plaintext', '--from-ip', '10.0.0.1', '--to-pod', 'a/b', '--port', '80']), { code: 1, stderr: /CONFIG_DIR_NOT_FOUND/ });
  await writeFile(path.join(dir, 'bad.yaml'), `apiVersion: security.ambit.dev/v1
kind: AuthorizationPolicy
metadata: { name: bad, namespace: demo }
spec: { action: MAYBE }
`);
  const invalid = await ambit([...base, '--from-namespace', 'demo', '--to-pod', 'demo/backend', '--port', '80']);
  t.equal(invalid.code, 0);
  t.match(invalid.stdout, /^DENY by demo\/bad rule 0 \(invalid_policy\)/, 'an invalid policy stands as deny-all');
  t.match(invalid.stdout, /warning: +demo\/bad is invalid \(spec.action/);
  t.match(invalid.stderr, /AuthorizationPolicy demo\/bad: field spec.action/, 'the rejection names the object and field');
});
