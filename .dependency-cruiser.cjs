// The folder rules of DESIGN.md and issue 12, checked by `npm run lint` (which `npm test` runs).
// A folder is a top-level folder, except in core/, where each concern (core/hbone/, core/log/, ...) is one.
const PROGRAMS = 'agent|cni|controller|waypoint';
const PROJECT = `core|${PROGRAMS}|cli|bench|testbed|test`;
// The public surface of a folder: its index.ts.
const INDEX = `^(core/[^/]+|${PROGRAMS}|cli|bench|testbed)/index\\.ts$`;
// What the CNI plugin's single executable must never bundle (cni/main.ts is its entry, see cni/sea-build.ts).
const HEAVY = '(^|/)node_modules/(pino|prom-client|node-forge|@kubernetes/client-node|execa|js-yaml|undici)/';

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'core-has-no-loose-files',
      severity: 'error',
      comment: 'Each concern of core/ is a folder with its own index.ts; a file directly in core/ would be reachable around every index.',
      from: {},
      to: { path: '^core/[^/]+$' },
    },
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'No import cycles.',
      from: {},
      to: { circular: true },
    },
    {
      name: 'core-imports-no-other-folder',
      severity: 'error',
      comment: 'core/ is what the programs share; it knows nothing of them, of the CLI, the testbed or the tests.',
      from: { path: '^core/' },
      to: { path: `^(${PROJECT})/`, pathNot: '^core/' },
    },
    {
      name: 'programs-import-core-only',
      severity: 'error',
      comment: 'A program folder imports only its own files and core/.',
      from: { path: `^(${PROGRAMS})/` },
      to: { path: `^(${PROJECT})/`, pathNot: ['^core/', '^$1/'] },
    },
    {
      name: 'cni-plugin-takes-little-of-core',
      severity: 'error',
      comment:
        'cni/ takes from core/ only the CNI socket protocol, errors and logging, the one IP parser (core/ip: the ' +
        "pod's CIDR is security-relevant, and ipaddr.js is small and dependency-free) and the enrollment rule, which " +
        'the plugin must decide as the agent does, so that its single executable stays small.',
      from: { path: '^cni/', pathNot: '^cni/installer\\.ts$' },
      to: { path: '^core/', pathNot: '^core/(cni|errors|log|ip|enrollment)/index\\.ts$' },
    },
    {
      name: 'enrollment-imports-nothing',
      severity: 'error',
      comment: 'core/enrollment/ is bundled whole into the CNI plugin: it imports no other folder and no package.',
      from: { path: '^core/enrollment/' },
      to: { pathNot: '^core/enrollment/' },
    },
    {
      name: 'cni-installer-takes-little-of-core',
      severity: 'error',
      comment:
        'The installer (run by `ambit cni install`, not bundled into the plugin) also writes through the one ' +
        'atomic file write of core/fs/.',
      from: { path: '^cni/installer\\.ts$' },
      to: { path: '^core/', pathNot: '^core/(cni|errors|log|fs)/index\\.ts$' },
    },
    {
      name: 'cni-plugin-bundle-stays-small',
      severity: 'error',
      comment: "Nothing the plugin's entry reaches may load pino, prom-client, node-forge or another heavy package.",
      from: { path: '^cni/main\\.ts$' },
      to: { path: HEAVY, reachable: true },
    },
    {
      name: 'cni-imports-no-heavy-package',
      severity: 'error',
      comment: 'No file of cni/ but the installer and the build script imports a heavy package, reached from the entry or not (yet).',
      from: { path: '^cni/', pathNot: '^cni/(installer|sea-build)\\.ts$' },
      to: { path: HEAVY },
    },
    {
      name: 'cli-imports-public-surfaces',
      severity: 'error',
      comment: 'cli/ imports the programs and core/ (and the testbed, which `ambit demo` runs), never bench/ or test/.',
      from: { path: '^cli/' },
      to: { path: '^(bench|test)/' },
    },
    {
      name: 'testbed-and-bench-import-core-and-programs',
      severity: 'error',
      comment: 'The testbed and the bench import core/ and the programs (the bench also the testbed), never cli/ or test/.',
      from: { path: '^(testbed|bench)/' },
      to: { path: '^(cli|test)/' },
    },
    {
      name: 'testbed-imports-no-bench',
      severity: 'error',
      comment: 'The bench runs on the testbed, not the other way round.',
      from: { path: '^testbed/' },
      to: { path: '^bench/' },
    },
    {
      name: 'only-test-imports-test',
      severity: 'error',
      comment: 'Nothing but test/ imports test/.',
      from: { pathNot: '^test/' },
      to: { path: '^test/' },
    },
    {
      name: 'across-folders-through-index',
      severity: 'error',
      comment:
        "An import into another folder goes through that folder's index.ts. Tests may reach a module's insides " +
        '(they test them).',
      from: { path: `^(core/[^/]+|${PROGRAMS}|cli|bench|testbed)/` },
      to: { path: `^(core/[^/]+|${PROGRAMS}|cli|bench|testbed)/`, pathNot: ['^$1/', INDEX] },
    },
    {
      name: 'agent-rules-through-index',
      severity: 'error',
      comment: "The rest of the agent takes the traffic capture through agent/rules/index.ts, not its builders.",
      from: { path: '^agent/', pathNot: '^agent/rules/' },
      to: { path: '^agent/rules/', pathNot: '^agent/rules/index\\.ts$' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|build)/' },
    // Type-only imports count too: a folder's types are part of its surface.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
