/**
 * `npm run apiserver -- --dir DIR`: the API server double as a program, for the README's Kubernetes walkthrough and
 * for trying the controller and an agent by hand. It serves on 127.0.0.1 (an ephemeral port) with Ambit's CRDs and a
 * node `node1` at 127.0.0.1, and writes into DIR what a cluster would give each component:
 *   kubeconfig             an admin's, for kubectl
 *   controller/kubeconfig  the controller's service account (it creates the mesh's root in the Secret ambit-system/ambit-ca)
 *   agent/kubeconfig       the agent's bound token (node1); agent/token its projected token for the controller's
 *                          stream, agent/ca-token the one for its CA; agent/trust-bundle/ the ConfigMap
 *                          ambit-system/ambit-trust-bundle, mounted as kubelet would (filled once the controller runs)
 * It runs until SIGINT or SIGTERM, then removes nothing: DIR is the caller's. RBAC is off (see server.ts for what is served).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CA_TOKEN_AUDIENCE, TRUST_BUNDLE_CONFIGMAP_NAME } from '../../core/identity/index.js';
import { ConfigMapVolume } from '../configmap-volume.js';
import { createLogger } from '../../core/log/index.js';
import { untilStopSignal } from '../../core/process/index.js';
import { MESH_CUSTOM_RESOURCES } from './resources.js';
import { ApiServer } from './server.js';
import { boundServiceAccountUser } from './tokens.js';

const CONTROLLER_USER = 'system:serviceaccount:ambit-system:ambit-controller';
const USAGE = 'usage: npm run apiserver -- --dir DIR   (DIR: where the kubeconfigs, tokens and certificates go; created if missing)';

async function main(argv: string[]): Promise<number> {
  let dir: string;
  try {
    const { values } = parseArgs({ args: argv, options: { dir: { type: 'string' }, help: { type: 'boolean' } }, strict: true });
    if (values.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    if (values.dir === undefined || values.dir === '') throw new Error('--dir is required');
    dir = path.resolve(values.dir);
  } catch (err) {
    process.stderr.write(`apiserver: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const log = createLogger({ level: 'info', name: 'apiserver-double' });
  const api = await ApiServer.start();
  for (const type of MESH_CUSTOM_RESOURCES) api.registerResource(type);
  api.objects('v1', 'namespaces').create({ metadata: { name: 'ambit-system' } });
  api.objects('v1', 'nodes').create({ metadata: { name: 'node1' }, status: { addresses: [{ type: 'InternalIP', address: '127.0.0.1' }] } });

  // tokens made in this process, never printed: the files are the only copies (mode 0600)
  const token = () => crypto.randomUUID();
  const admin = token();
  const controller = token();
  const agentApi = token();
  const agentStream = token();
  const agentCa = token();
  // the agent's own pod: its tokens are bound to it, and the CA signs only for an agent pod it knows on that node
  const agentPod = api.objects('v1', 'pods').create({
    metadata: { name: 'ambit-agent-node1', namespace: 'ambit-system' },
    spec: { nodeName: 'node1', serviceAccountName: 'ambit-agent', hostNetwork: true, containers: [{ name: 'agent' }] },
    status: { phase: 'Running' },
  });
  const agent = { namespace: 'ambit-system', serviceAccount: 'ambit-agent', podName: 'ambit-agent-node1', podUid: String((agentPod.metadata as { uid: string }).uid), nodeName: 'node1' };
  api.addToken(admin, { username: 'admin', groups: ['system:masters'] });
  api.addToken(controller, { username: CONTROLLER_USER });
  api.addToken(agentApi, boundServiceAccountUser(agent));
  api.addToken(agentStream, boundServiceAccountUser({ ...agent, audiences: ['ambit-controller'] }));
  api.addToken(agentCa, boundServiceAccountUser({ ...agent, audiences: [CA_TOKEN_AUDIENCE] }));

  for (const folder of ['controller', 'agent']) await mkdir(path.join(dir, folder), { recursive: true, mode: 0o700 });
  await api.writeKubeconfig(path.join(dir, 'kubeconfig'), admin);
  await api.writeKubeconfig(path.join(dir, 'controller', 'kubeconfig'), controller);
  await api.writeKubeconfig(path.join(dir, 'agent', 'kubeconfig'), agentApi);
  await writeFile(path.join(dir, 'agent', 'token'), `${agentStream}\n`, { mode: 0o600 });
  await writeFile(path.join(dir, 'agent', 'ca-token'), `${agentCa}\n`, { mode: 0o600 });
  const bundle = await ConfigMapVolume.mount(api, { namespace: 'ambit-system', name: TRUST_BUNDLE_CONFIGMAP_NAME, dir: path.join(dir, 'agent', 'trust-bundle') });

  log.info({ url: api.url, dir }, 'API server double serving; kubectl --kubeconfig <dir>/kubeconfig');
  await untilStopSignal(log);
  bundle.close();
  await api.close();
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`apiserver: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
