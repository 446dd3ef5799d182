/**
 * One change of the cluster that relabels a workload and changes the policy that names it reaches an agent as two
 * updates (the policies, then the store). Open connections are judged again once, after both: judged in between
 * (new policy, old labels), a connection the change still allows would be closed by a rule that names a label the
 * workload no longer has.
 */
import type net from 'node:net';
import t from 'tap';
import { pod, startLoopbackMesh, type LoopbackMesh } from './mesh/loopback.js';

/** Writes `text` on an open connection and resolves with the echo, or rejects when the connection ends first. */
function roundTrip(socket: net.Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = '';
    const onData = (chunk: Buffer) => {
      received += chunk.toString();
      if (received.length >= text.length) done();
    };
    const onEnd = () => done(new Error(`the connection ended after ${JSON.stringify(received)}`));
    const done = (err?: Error) => {
      socket.off('data', onData);
      socket.off('close', onEnd);
      socket.off('end', onEnd);
      socket.off('error', onEnd);
      if (err) reject(err);
      else resolve(received);
    };
    socket.on('data', onData);
    socket.once('close', onEnd);
    socket.once('end', onEnd);
    socket.once('error', onEnd);
    socket.write(text);
  });
}

/** Resolves once the store of `agent` has c with `app`, and its policies have been replaced at least once since. */
function applied(mesh: LoopbackMesh, app: string): Promise<void> {
  const { store } = mesh.agents.node2;
  return new Promise((resolve) => {
    const check = () => {
      if (store.workloadByIp(pod('c').ip)?.labels.app !== app) return;
      store.off('change', check);
      resolve();
    };
    store.on('change', check);
  });
}

const denyApp = (app: string) => ({
  apiVersion: 'security.ambit.dev/v1',
  kind: 'AuthorizationPolicy',
  metadata: { name: 'deny-old-label', namespace: 'demo' },
  spec: { selector: { matchLabels: { app } }, action: 'DENY', rules: [{}] },
});

t.test('a relabel and a policy on the old label, in one change, leave an open connection open; a policy on the new label closes it', async (t) => {
  const mesh = await startLoopbackMesh();
  const sockets: net.Socket[] = [];
  t.teardown(async () => {
    // the echo servers wait for their connections to end before they close
    for (const socket of sockets) socket.destroy();
    await mesh.close();
  });
  const c = pod('c');
  const socket = await mesh.connect('a', { host: c.ip, port: mesh.appPort });
  sockets.push(socket);
  t.equal(await roundTrip(socket, 'before'), 'before', 'the connection works');

  // c moves to app=c-next, and in the same write a DENY for app=c arrives: c is not selected by it
  const moved = applied(mesh, 'c-next');
  await mesh.rewriteCluster({ labels: { c: { app: 'c-next' } }, extra: [denyApp('c')] });
  await moved;
  t.equal(await roundTrip(socket, 'after the change'), 'after the change', 'the open connection survives a change that still allows it');
  t.equal(mesh.agents.node2.store.workloadByIp(c.ip)?.labels.app, 'c-next', 'the relabel is applied');

  // the same DENY on the label c has now: the open connection is closed (the check above could fail)
  // the client's socket allows half-open: the agent ending it shows as 'end' (an abort as 'close')
  const closed = new Promise<void>((resolve) => {
    socket.once('end', resolve);
    socket.once('close', () => resolve());
  });
  const back = applied(mesh, 'c-next-2');
  await mesh.rewriteCluster({ labels: { c: { app: 'c-next-2' } }, extra: [denyApp('c-next-2')] });
  await back;
  await closed;
  t.pass('a DENY that selects the workload as it is now closes the open connection');
  // the client ends its half too, and the connection is gone on both nodes before the mesh closes
  await new Promise<void>((resolve) => socket.end(resolve));
  const outbound = await mesh.logs.node1.waitFor((r) => r.component === 'access' && r.direction === 'outbound');
  t.match(outbound, { path: 'hbone', outcome: 'error' }, 'the source agent closed its side too, with the reset');
  const record = await mesh.logs.node2.waitFor((r) => r.component === 'access' && r.outcome !== 'ok' && r.outcome !== undefined);
  t.match(record, { outcome: 'revoked', reason: 'denied_by_policy', policy: 'demo/deny-old-label' }, 'the closing is logged with its policy');
});
