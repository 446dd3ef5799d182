/**
 * Deciding an open connection again (agent/inbound.ts `reauthorizer`) against the real store and policy store: on
 * the workloads as the store has them at that moment, not as they were when the connection opened.
 */
import { PassThrough } from 'node:stream';
import t from 'tap';
import { authorize, refusalMessage } from '../agent/authorize.js';
import { ConnectionRegistry } from '../agent/connections.js';
import { reauthorizer } from '../agent/inbound.js';
import type { ProxyInputs } from '../agent/inputs.js';
import { convertObject, type WorkloadStore } from '../core/discovery/index.js';
import type { ConnectionFacts } from '../core/policy/index.js';
import { PolicyStore } from '../core/policy/index.js';
import { storeWith } from './mesh/store.js';

const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';
const pod = (name: string, uid: string, ip: string, labels: Record<string, string>) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: 'demo', uid, labels },
  spec: { nodeName: 'node2', serviceAccountName: name, containers: [{ name: 'c' }] },
  status: { phase: 'Running', podIP: ip },
});

/** Upserts pods into the store as a source would, in one batch, deleting `gone` first. */
function apply(store: WorkloadStore, pods: object[], gone: string[] = []): void {
  store.applyBatch([
    ...gone.map((name) => ({ op: 'delete' as const, kind: 'Pod' as const, namespace: 'demo', name })),
    ...pods.map((object) => {
      const converted = convertObject(object, 'cluster.local');
      if (converted.kind !== 'Pod') throw new Error('not a pod');
      return { op: 'upsert' as const, ...converted };
    }),
  ]);
}

function setup() {
  const store = storeWith(
    [
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'ambit.dev/mode': 'enabled' } } },
      pod('server', 'uid-server', '10.1.2.1', { app: 'server' }),
      pod('client', 'uid-client', '10.1.2.5', { app: 'client' }),
    ],
    'node2',
  );
  const policies = new PolicyStore();
  const collection = policies.collection();
  const claimed = collection.convert({
    apiVersion: 'security.ambit.dev/v1',
    kind: 'AuthorizationPolicy',
    metadata: { name: 'moved-allow-other', namespace: 'demo' },
    spec: { selector: { matchLabels: { app: 'moved' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/other'] } }] }] },
  });
  if (claimed === undefined) throw new Error('policy not claimed');
  collection.replaceAll([claimed.object]);
  // Only what deciding again reads: the store, the policies and the node's name.
  const inputs = { store, policies, config: { nodeName: 'node2' } } as unknown as ProxyInputs;
  const server = store.workloadByIp('10.1.2.1')!;
  const client = store.workloadByIp('10.1.2.5')!;
  const facts = (destination: ConnectionFacts['destination']): ConnectionFacts => ({
    sourceIp: '10.1.2.5',
    sourceIdentity: CLIENT,
    plaintext: false,
    destination,
    target: { host: '10.1.2.1', port: 8080 },
  });
  const again = reauthorizer(inputs, { workload: server, ip: '10.1.2.1' }, facts, { workload: client, ip: '10.1.2.5' });
  return { store, again };
}

t.test('a relabelled destination is decided on its labels of now', async (t) => {
  const { store, again } = setup();
  t.match(again(), { kind: 'decided', decision: { decision: 'ALLOW', reason: 'no_policy' } }, 'no ALLOW selects app=server');
  apply(store, [pod('server', 'uid-server', '10.1.2.1', { app: 'moved' })]);
  t.match(again(), { kind: 'decided', decision: { decision: 'DENY', reason: 'not_allowed_by_any_policy' } }, 'relabelled into an ALLOW that does not name the client');
});

t.test("a pod that is gone, its address now another pod's, is decided as gone", async (t) => {
  const { store, again } = setup();
  apply(store, [pod('server-2', 'uid-server-2', '10.1.2.1', { app: 'server' })], ['server']);
  t.match(again(), { kind: 'gone', message: 'pod demo/server is gone; 10.1.2.1 is pod demo/server-2 now' }, 'the destination');
  const other = setup();
  apply(other.store, [pod('client', 'uid-client-2', '10.1.2.5', { app: 'client' })]);
  t.match(other.again(), { kind: 'gone', message: /pod demo\/client is gone/ }, 'the source of a same-node connection');
});

t.test('an end that left the mesh is left to the reconcile, which closes it cleanly', async (t) => {
  const { store, again } = setup();
  apply(store, [pod('server', 'uid-server', '10.1.2.1', { app: 'moved', 'ambit.dev/mode': 'disabled' })]);
  t.equal(again(), undefined, 'opted out');
  apply(store, [], ['server']);
  t.equal(again(), undefined, 'deleted');
});

t.test('before the first full sync every connection is refused, whatever the policies that did load say', async (t) => {
  const store = storeWith(
    [
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'ambit.dev/mode': 'enabled' } } },
      pod('server', 'uid-server', '10.1.2.1', { app: 'server' }),
    ],
    'node2',
    { synced: false },
  );
  const inputs = { store, policies: new PolicyStore(), config: { nodeName: 'node2' } } as unknown as ProxyInputs;
  const facts: ConnectionFacts = { sourceIp: '10.1.2.5', sourceIdentity: CLIENT, plaintext: false, destination: store.workloadByIp('10.1.2.1')!, target: { host: '10.1.2.1', port: 8080 } };
  const refused = authorize(inputs, facts);
  t.match(refused, { decision: 'DENY', reason: 'not_synced', policy: 'default' }, 'no policy loaded, and still refused: one may be in a file not read yet');
  t.match(refusalMessage(refused), /first full sync/, 'the refusal says why');
  store.markSynced();
  t.match(authorize(inputs, facts), { decision: 'ALLOW', reason: 'no_policy' }, 'after the sync the policies decide');
});

t.test('a connection decided before a revalidation it missed while connecting is asked again when it is tracked', async (t) => {
  const revoked: string[] = [];
  const registry = new ConnectionRegistry<string>({ isDenied: (answer) => answer === 'deny', onRevoked: (answers) => revoked.push(...answers) });
  let answer: string | undefined = 'allow';
  const decidedAt = registry.epoch;
  registry.revalidate();
  answer = 'deny';
  const ends = [new PassThrough(), new PassThrough()];
  registry.track(['10.1.2.1'], ends, () => answer, decidedAt);
  t.ok(ends.every((end) => end.destroyed), 'both ends are aborted at once');
  t.same(revoked, ['deny'], 'and the revocation is reported');

  const current = [new PassThrough(), new PassThrough()];
  registry.track(['10.1.2.1'], current, () => answer, registry.epoch);
  t.notOk(current.some((end) => end.destroyed), 'decided since the last revalidation: not asked again');

  const leftEnds = [new PassThrough(), new PassThrough()];
  const beforeClose = registry.epoch;
  registry.closeFor(['10.9.9.9']);
  registry.track(['10.1.2.1'], leftEnds, () => undefined, beforeClose);
  t.ok(leftEnds.every((end) => end.writableEnded), 'an end that left the mesh while it connected: both ends are ended cleanly');
});
