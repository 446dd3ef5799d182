/**
 * `ambit demo` (`npm run demo`, root): a two-node cluster as network namespaces wired by the real CNI plugins, an
 * agent per node, namespace `demo` enrolled; traffic between pods; what a newcomer should see; then teardown.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { metricValue, MeshCluster, HTTP_PORT, removeStaleTestbeds, startCapture, Testbed, testbedUnavailableReason } from '../testbed/index.js';

const TOOLS: Array<[string, string]> = [
  ['ip', 'iproute2'],
  ['iptables', 'iptables'],
  ['ipset', 'ipset'],
  ['tcpdump', 'tcpdump'],
  ['curl', 'curl'],
];

function missingPrerequisites(): string[] {
  const missing: string[] = [];
  for (const [tool, pkg] of TOOLS) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) missing.push(pkg);
  }
  if (!existsSync('/usr/lib/cni/bridge')) missing.push('containernetworking-plugins');
  return [...new Set(missing)];
}

const say = (text = '') => process.stdout.write(`${text}\n`);
const heading = (text: string) => say(`\n== ${text}`);

export async function runDemo(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    say('Usage: ambit demo\n\nBuilds a two-node testbed (network namespaces, real CNI plugins, an agent per node), enrolls namespace\n`demo`, sends traffic between pods and shows identities, bytes, metrics and the TLS on the wire. Needs root.');
    return 0;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('ambit demo needs root: it creates network namespaces and iptables rules. Run: sudo npm run demo\n');
    return 1;
  }
  const missing = missingPrerequisites();
  if (missing.length > 0) {
    process.stderr.write(`ambit demo needs: ${missing.join(', ')}. On Debian: apt-get install -y ${missing.join(' ')}\n`);
    return 1;
  }
  const unavailable = testbedUnavailableReason();
  if (unavailable) {
    process.stderr.write(`ambit demo cannot build its testbed: ${unavailable}\n`);
    return 1;
  }

  // A demo or bench killed with SIGKILL cannot clean up; its namespaces are removed by the next run.
  await removeStaleTestbeds();
  const started = Date.now();
  heading('Building a two-node cluster: network namespaces, bridge CNI, host-local IPAM');
  const tb = await Testbed.create({ nodes: 2, podsPerNode: 2 });
  try {
    const cluster = await MeshCluster.start(tb, {
      namespaces: { demo: { 'ambit.dev/mode': 'enabled' }, legacy: {} },
      pods: {
        'pod-1-1': { namespace: 'demo', serviceAccount: 'frontend', app: 'frontend' },
        'pod-1-2': { namespace: 'legacy', app: 'legacy' },
        'pod-2-1': { namespace: 'demo', serviceAccount: 'backend', app: 'backend' },
        'pod-2-2': { namespace: 'demo', serviceAccount: 'backend', app: 'backend' },
      },
      services: [{ namespace: 'demo', name: 'backend', clusterIP: '10.96.0.10', selector: { app: 'backend' }, ports: [{ port: 80, targetPort: HTTP_PORT }] }],
    });
    const [node1, node2] = tb.nodes as [(typeof tb.nodes)[0], (typeof tb.nodes)[0]];
    const frontend = tb.pod('pod-1-1');
    const legacy = tb.pod('pod-1-2');
    const backend = tb.pod('pod-2-1');
    for (const node of tb.nodes) say(`  ${node.name}  ${node.ip}  pods ${node.podCidr}  agent pid ${cluster.agentPid(node)}`);
    for (const pod of tb.pods) {
      const spec = cluster.spec(pod);
      say(`  ${pod.name.padEnd(8)} ${pod.ip.padEnd(12)} on ${pod.node.name}  namespace ${spec.namespace}${spec.namespace === 'demo' ? ' (enrolled)' : ''}`);
    }

    heading(`frontend (${frontend.ip}, node1) -> backend (${backend.ip}, node2), captured on the wire between the nodes`);
    const marker = `ambit-demo-secret-${process.pid}-${Date.now()}`;
    const capture = await startCapture(node1.netns, node1.uplink, 'tcp');
    const reply = await cluster.curl(frontend, `http://${backend.ip}:${HTTP_PORT}/`, ['-H', `x-marker: ${marker}`]);
    const pcap = await capture.stop();
    say(`  curl says: ${reply.trim()}`);
    const pcapFile = path.join(tb.tmpDir, 'wire.pcap');
    await writeFile(pcapFile, pcap);
    const lines = spawnSync('tcpdump', ['-nn', '-r', pcapFile, 'tcp port 15008'], { encoding: 'utf8' }).stdout.trim().split('\n');
    say(`  ${lines.length} packets to/from port 15008 (HBONE), e.g.:`);
    for (const line of lines.slice(0, 3)) say(`    ${line}`);
    say(`  plaintext marker on the wire: ${pcap.includes(Buffer.from(marker)) ? 'FOUND (this is a bug!)' : 'not found: everything between the nodes is TLS'}`);

    const src = await cluster.waitForLog(node1, (r) => r.msg === 'access' && r.path === 'hbone');
    const dst = await cluster.waitForLog(node2, (r) => r.msg === 'access' && r.path === 'hbone');
    heading('Identities and bytes, from the agents\' access logs');
    const show = (label: string, r: Record<string, unknown>) => {
      const s = r.src as Record<string, string>;
      const d = r.dst as Record<string, string>;
      say(`  ${label}: ${s.identity} -> ${d.identity}  sent ${String(r.bytes_received)} B, got back ${String(r.bytes_sent)} B, ${String(r.duration_ms)} ms`);
    };
    show('node1 agent (source)     ', src);
    show('node2 agent (destination)', dst);

    heading('Through the Service ClusterIP 10.96.0.10:80 (resolved by the agent to a ready backend)');
    for (let i = 0; i < 4; i++) say(`  ${(await cluster.curl(frontend, 'http://10.96.0.10/')).trim()}`);

    heading('A pod outside the mesh (namespace legacy) calling an enrolled pod: plaintext inbound, allowed and counted');
    say(`  ${(await cluster.curl(legacy, `http://${backend.ip}:${HTTP_PORT}/`)).trim()}`);

    heading('Metrics (node2 agent, :15020/metrics), excerpt');
    const text = await cluster.metrics(node2);
    for (const line of text.split('\n').filter((l) => l.startsWith('istio_tcp_connections_opened_total')).slice(0, 4)) say(`  ${line}`);
    say(`  plaintext connections into the mesh: ${metricValue(text, 'istio_tcp_connections_opened_total', { connection_security_policy: 'none' })}`);
    say(`  mTLS connections into node2: ${metricValue(text, 'istio_tcp_connections_opened_total', { connection_security_policy: 'mutual_tls', reporter: 'destination' })}`);

    heading('Tearing down');
    await cluster.stopAgent(node1);
    await cluster.stopAgent(node2);
  } finally {
    await tb.destroy();
  }
  say(`  done in ${((Date.now() - started) / 1000).toFixed(1)} s; nothing left behind (namespaces, rules, processes).`);
  return 0;
}
