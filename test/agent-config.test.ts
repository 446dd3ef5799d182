import t from 'tap';
import { DEFAULT_PORTS, loadAgentConfig } from '../agent/config.js';

const required = ['--node', 'n1', '--config', '/c', '--ca-dir', '/ca'];

t.test('flags, environment and defaults', async (t) => {
  const { config } = loadAgentConfig({}, required);
  t.match(config, { nodeName: 'n1', configDir: '/c', caDir: '/ca', trustDomain: 'cluster.local', listenHost: '0.0.0.0', manageRules: true, iptablesBackend: 'auto', logLevel: 'info', nodeIp: undefined });
  t.same(config?.ports, DEFAULT_PORTS);
  t.ok(Object.isFrozen(config), 'the config is frozen');
  const fromEnv = loadAgentConfig({ AMBIT_NODE_NAME: 'e1', AMBIT_CONFIG_DIR: '/e', AMBIT_CA_DIR: '/eca', AMBIT_NODE_IP: '10.0.0.1', AMBIT_NO_RULES: '1' }, []).config;
  t.match(fromEnv, { nodeName: 'e1', configDir: '/e', caDir: '/eca', nodeIp: '10.0.0.1', manageRules: false });
  t.equal(loadAgentConfig({ AMBIT_NODE_NAME: 'env' }, required).config?.nodeName, 'n1', 'a flag wins over the environment');
  t.equal(loadAgentConfig({}, [...required, '--port-offset', '100']).config?.ports.hbone, 15108);
  t.equal(config?.rulesResyncSeconds, 30);
  t.equal(loadAgentConfig({ AMBIT_RULES_RESYNC_INTERVAL: '0' }, required).config?.rulesResyncSeconds, 0);
});

t.test('how HBONE notices a dead peer: the defaults of core/hbone, flags and environment in seconds', async (t) => {
  t.same(loadAgentConfig({}, required).config?.hbone, { keepaliveIntervalMs: 10_000, keepaliveTimeoutMs: 5_000, responseTimeoutMs: 10_000, maxConnections: 10_000, maxConnectionsPerSource: 1_000 });
  const set = loadAgentConfig({ AMBIT_HBONE_KEEPALIVE_TIMEOUT: '2' }, [...required, '--hbone-keepalive-interval', '3', '--hbone-response-timeout', '4', '--hbone-max-connections', '5000', '--hbone-max-connections-per-source', '50']).config;
  t.same(set?.hbone, { keepaliveIntervalMs: 3_000, keepaliveTimeoutMs: 2_000, responseTimeoutMs: 4_000, maxConnections: 5_000, maxConnectionsPerSource: 50 });
});

t.test("the listener's per-source cap: its own default, never above the listener's cap", async (t) => {
  t.equal(loadAgentConfig({ AMBIT_HBONE_MAX_CONNECTIONS_PER_SOURCE: '20' }, required).config?.hbone.maxConnectionsPerSource, 20, 'from the environment');
  t.equal(loadAgentConfig({ AMBIT_HBONE_MAX_CONNECTIONS_PER_SOURCE: '20' }, [...required, '--hbone-max-connections-per-source', '30']).config?.hbone.maxConnectionsPerSource, 30, 'the flag wins');
  t.match(loadAgentConfig({}, [...required, '--hbone-max-connections', '300']).config?.hbone, { maxConnections: 300, maxConnectionsPerSource: 300 }, 'a listener cap below the default one lowers it');
  t.equal(loadAgentConfig({}, [...required, '--hbone-max-connections', '300', '--hbone-max-connections-per-source', '300']).config?.hbone.maxConnectionsPerSource, 300, 'equal is allowed');
});

t.test('CNI, state, restart and policy settings', async (t) => {
  const { config } = loadAgentConfig({}, required);
  t.match(config, { runDir: '/var/run/ambit', stateDir: '/var/lib/ambit', removeRulesOnExit: false, rootNamespace: 'ambit-system', istioApi: false });
  const set = loadAgentConfig({}, [...required, '--run-dir', '/r', '--state-dir', '/s', '--remove-rules-on-exit', '--root-namespace', 'istio-system', '--istio-api']).config;
  t.match(set, { runDir: '/r', stateDir: '/s', removeRulesOnExit: true, rootNamespace: 'istio-system', istioApi: true });
  const env = loadAgentConfig({ AMBIT_RUN_DIR: '/er', AMBIT_STATE_DIR: '/es', AMBIT_REMOVE_RULES_ON_EXIT: '1', AMBIT_ROOT_NAMESPACE: 'mesh', AMBIT_ISTIO_API: '1' }, required).config;
  t.match(env, { runDir: '/er', stateDir: '/es', removeRulesOnExit: true, rootNamespace: 'mesh', istioApi: true });
  t.match(loadAgentConfig({}, [...required, '--no-cni']).config, { runDir: undefined, stateDir: undefined }, '--no-cni: no socket');
  t.match(loadAgentConfig({}, [...required, '--no-rules']).config, { runDir: undefined, manageRules: false }, 'no rules, nothing for a CNI socket to promise');
});

t.test('where connections to pods come from: transparent unless asked otherwise', async (t) => {
  t.equal(loadAgentConfig({}, required).config?.upstreamSource, 'transparent', 'the default: the client\'s address');
  t.equal(loadAgentConfig({}, [...required, '--upstream-source', 'node']).config?.upstreamSource, 'node');
  t.equal(loadAgentConfig({ AMBIT_UPSTREAM_SOURCE: 'node' }, required).config?.upstreamSource, 'node', 'from the environment');
  t.equal(loadAgentConfig({ AMBIT_UPSTREAM_SOURCE: 'node' }, [...required, '--upstream-source', 'transparent']).config?.upstreamSource, 'transparent', 'the flag wins');
  t.match(loadAgentConfig({}, [...required, '--no-rules']).config, { manageRules: false, upstreamSource: 'transparent' }, '--no-rules does not choose for the operator');
});

t.test('bad input is a usage error that names the flag', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['--node', 'n1', '--config', '/c'], /--ca-dir \(or AMBIT_CA_DIR\) is required in local mode/],
    [[...required, '--trust-bundle-dir', '/tb'], /--trust-bundle-dir is for kubernetes mode/],
    [[...required, '--ca-token-file', '/t'], /--ca-token-file is for kubernetes mode/],
    [['--config', '/c', '--ca-dir', '/ca'], /--node/],
    [[...required, '--bogus'], /bogus/],
    [[...required, '--node-ip', 'not-an-ip'], /--node-ip not-an-ip/],
    [[...required, '--log-level', 'loud'], /--log-level loud/],
    [[...required, '--iptables-backend', 'ebpf'], /--iptables-backend ebpf/],
    [[...required, '--port-offset', '-5'], /--port-offset/],
    [[...required, '--trust-domain', 'Bad_Domain'], /--trust-domain/],
    [[...required, 'positional'], /positional/],
    [[...required, '--rules-resync-interval', '1.5'], /--rules-resync-interval/],
    [[...required, '--state-dir', 'var/lib'], /--state-dir var\/lib is not an absolute path/],
    [[...required, '--root-namespace', 'Not_A_Namespace'], /--root-namespace Not_A_Namespace/],
    [[...required, '--upstream-source', 'pod'], /--upstream-source pod is not one of transparent, node/],
    [[...required, '--hbone-keepalive-interval', '0'], /--hbone-keepalive-interval 0 is not a whole number from 1/],
    [[...required, '--hbone-response-timeout', '2.5'], /--hbone-response-timeout 2.5/],
    [[...required, '--hbone-max-connections', 'many'], /--hbone-max-connections many/],
    [[...required, '--hbone-max-connections-per-source', '0'], /--hbone-max-connections-per-source 0 is not a whole number from 1 to 1000000/],
    [[...required, '--hbone-max-connections-per-source', '2.5'], /--hbone-max-connections-per-source 2\.5 is not a whole number/],
    [[...required, '--hbone-max-connections', '100', '--hbone-max-connections-per-source', '101'], /--hbone-max-connections-per-source 101 is more than --hbone-max-connections 100: one source cannot hold more than the whole listener/],
  ];
  for (const [argv, message] of cases) t.throws(() => loadAgentConfig({}, argv), { code: 'USAGE', message }, argv.join(' '));
});

t.test('kubernetes mode: the controller, its identity and the token; no config folder, and the node IP given', async (t) => {
  const k8s = ['--node', 'node1', '--mode', 'kubernetes', '--node-ip', '10.0.0.5'];
  const config = loadAgentConfig({}, k8s).config!;
  t.match(config, {
    mode: 'kubernetes',
    caDir: '',
    kubernetes: {
      controllerUrl: 'https://ambit-controller.ambit-system.svc:15012',
      controllerIdentity: 'spiffe://cluster.local/ns/ambit-system/sa/ambit-controller',
      tokenFile: '/var/run/secrets/ambit/controller/token',
      trustBundleDir: '/var/run/secrets/ambit/trust-bundle',
      caTokenFile: '/var/run/secrets/ambit/ca-token/token',
      kubeconfig: undefined,
    },
  });
  t.ok(Object.isFrozen(config.kubernetes), 'the kubernetes settings are frozen');
  t.match(loadAgentConfig({}, [...k8s, '--trust-bundle-dir', '/tb', '--ca-token-file', '/ct/token']).config!.kubernetes, { trustBundleDir: '/tb', caTokenFile: '/ct/token' }, 'from flags');
  t.match(loadAgentConfig({ AMBIT_TRUST_BUNDLE_DIR: '/etb', AMBIT_CA_TOKEN_FILE: '/ect' }, k8s).config!.kubernetes, { trustBundleDir: '/etb', caTokenFile: '/ect' }, 'from the environment');
  t.match(loadAgentConfig({ AMBIT_TRUST_BUNDLE_DIR: '/etb' }, [...k8s, '--trust-bundle-dir', '/ftb']).config!.kubernetes, { trustBundleDir: '/ftb' }, 'the flag wins');
  t.equal(loadAgentConfig({}, [...k8s, '--trust-domain', 'example.org', '--root-namespace', 'mesh']).config!.kubernetes?.controllerIdentity, 'spiffe://example.org/ns/mesh/sa/ambit-controller', 'the identity follows the trust domain and root namespace');
  t.equal(loadAgentConfig({}, required).config!.kubernetes, undefined, 'local mode has no kubernetes settings');
  const cases: Array<[string[], RegExp]> = [
    [['--node', 'node1', '--mode', 'kubernetes'], /--node-ip .* is required in kubernetes mode/],
    [[...k8s, '--ca-dir', '/ca'], /in kubernetes mode agents hold no CA key; the controller signs \(remove --ca-dir/],
    [[...k8s, '--trust-bundle-dir', 'bundle'], /--trust-bundle-dir bundle is not an absolute path/],
    [[...k8s, '--ca-token-file', 'token'], /--ca-token-file token is not an absolute path/],
    [[...k8s, '--config', '/cluster'], /--config is for local mode/],
    [[...k8s, '--controller', 'http://ctl:15012'], /must be https:\/\/host:port/],
    [[...k8s, '--controller', 'https://ctl:15012/path'], /must be https:\/\/host:port/],
    [[...k8s, '--controller', 'not a url'], /is not a URL/],
    [[...k8s, '--controller-identity', 'spiffe://other.org/ns/a/sa/b'], /is not of the trust domain cluster.local/],
    [[...k8s, '--controller-identity', 'ambit-controller'], /is not a SPIFFE ID/],
    [[...k8s, '--token-file', 'token'], /--token-file token is not an absolute path/],
    [[...k8s, '--mode', 'cloud'], /--mode cloud is not one of local, kubernetes/],
  ];
  for (const [argv, message] of cases) t.throws(() => loadAgentConfig({}, argv), { code: 'USAGE', message }, argv.join(' '));
  t.throws(() => loadAgentConfig({ AMBIT_CA_DIR: '/ca' }, k8s), { code: 'USAGE', message: /agents hold no CA key.*AMBIT_CA_DIR/ }, 'a CA folder from the environment too');
});

t.test('--help and --cleanup need no other flags', async (t) => {
  t.match(loadAgentConfig({}, ['--help']), { help: true });
  t.match(loadAgentConfig({}, ['--cleanup']), { cleanup: true });
});
