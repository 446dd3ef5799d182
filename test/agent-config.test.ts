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

t.test('bad input is a usage error that names the flag', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['--node', 'n1', '--config', '/c'], /--ca-dir/],
    [['--config', '/c', '--ca-dir', '/ca'], /--node/],
    [[...required, '--bogus'], /bogus/],
    [[...required, '--node-ip', 'not-an-ip'], /--node-ip not-an-ip/],
    [[...required, '--log-level', 'loud'], /--log-level loud/],
    [[...required, '--iptables-backend', 'ebpf'], /--iptables-backend ebpf/],
    [[...required, '--port-offset', '-5'], /--port-offset/],
    [[...required, '--trust-domain', 'Bad_Domain'], /--trust-domain/],
    [[...required, 'positional'], /positional/],
    [[...required, '--rules-resync-interval', '1.5'], /--rules-resync-interval/],
  ];
  for (const [argv, message] of cases) t.throws(() => loadAgentConfig({}, argv), { code: 'USAGE', message }, argv.join(' '));
});

t.test('--help and --cleanup need no other flags', async (t) => {
  t.match(loadAgentConfig({}, ['--help']), { help: true });
  t.match(loadAgentConfig({}, ['--cleanup']), { cleanup: true });
});
