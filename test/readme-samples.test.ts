/**
 * Every sample object in the README (and docs/*.md) of a kind Ambit owns validates against its CRD's schema, as
 * the API server would check it, and converts as the agent and the controller read it (issue 15). The schemas are
 * the rendered manifests' (`kubectl kustomize manifests/`), checked by ajv, a JSON-schema validator: a structural
 * openAPIV3Schema is JSON Schema but for `nullable` (which ajv knows) and the `x-kubernetes-*` extensions. Samples
 * of other kinds (the Namespace and Pod of the API-server example) are left alone.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Ajv, type ValidateFunction } from 'ajv';
import yaml from 'js-yaml';
import t from 'tap';
import { convertPolicyObject } from '../core/policy/index.js';
import { MANIFESTS_DIR, renderManifests } from '../testbed/index.js';
import { needsTools } from './prerequisites.js';

const REPO = path.dirname(MANIFESTS_DIR);
const OWN_KINDS = ['AuthorizationPolicy', 'PeerAuthentication'];
const unavailable = needsTools(['kubectl'], "renders the manifests with kubectl kustomize to read the CRDs' schemas");

interface Sample {
  /** file:line of the fence or heredoc it came from */
  readonly where: string;
  readonly object: unknown;
}

/**
 * The YAML in a markdown text: ```yaml (```yml) blocks whole, and in ```bash (```sh, ```shell) blocks the heredocs
 * whose delimiter is YAML (YML), or whose command writes a .yaml file or feeds kubectl.
 */
function yamlSamples(markdown: string, file: string): Sample[] {
  const lines = markdown.split('\n');
  const samples: Sample[] = [];
  const parse = (text: string, line: number) => {
    const where = `${file}:${line}`;
    for (const object of yaml.loadAll(text, undefined, { filename: where })) {
      if (object !== null && object !== undefined) samples.push({ where, object });
    }
  };
  for (let i = 0; i < lines.length; i++) {
    const language = /^\s*```\s*([\w-]*)/.exec(lines[i]!)?.[1];
    if (language === undefined) continue;
    const open = i;
    let end = i + 1;
    while (end < lines.length && !/^\s*```\s*$/.test(lines[end]!)) end++;
    if (end === lines.length) throw new Error(`${file}:${open + 1}: a code fence that is never closed`);
    const body = lines.slice(open + 1, end);
    if (language === 'yaml' || language === 'yml') parse(body.join('\n'), open + 2);
    if (language === 'bash' || language === 'sh' || language === 'shell') {
      for (let j = 0; j < body.length; j++) {
        const heredoc = /<<(-?)\s*(['"]?)([A-Za-z_]\w*)\2/.exec(body[j]!);
        if (heredoc === null) continue;
        const [, dash, , delimiter] = heredoc;
        if (!/^ya?ml$/i.test(delimiter!) && !/\.ya?ml\b|\bkubectl\b/.test(body[j]!)) continue;
        const start = j + 1;
        const stop = body.findIndex((line, k) => k >= start && (dash === '-' ? line.replace(/^\t+/, '') : line) === delimiter);
        if (stop === -1) throw new Error(`${file}:${open + 2 + j}: heredoc ${delimiter} is not closed within its code block`);
        parse(body.slice(start, stop).join('\n'), open + 2 + start);
        j = stop;
      }
    }
    i = end;
  }
  return samples;
}

async function documentationSamples(): Promise<Sample[]> {
  const docs = path.join(REPO, 'docs');
  const pages = ['README.md', ...(existsSync(docs) ? (await readdir(docs)).filter((f) => f.endsWith('.md')).sort().map((f) => path.join('docs', f)) : [])];
  const samples = await Promise.all(pages.map(async (page) => yamlSamples(await readFile(path.join(REPO, page), 'utf8'), page)));
  return samples.flat();
}

interface CustomResourceDefinition {
  kind: 'CustomResourceDefinition';
  spec: { group: string; names: { kind: string }; versions: Array<{ name: string; schema: { openAPIV3Schema: object } }> };
}

interface SchemaCheck {
  /** The groups of the rendered CRDs: the objects they validate. */
  readonly groups: ReadonlySet<string>;
  /** The schema's errors for an object of one of those groups ([] when it is valid), as ajv words them. */
  readonly errorsOf: (object: { apiVersion?: unknown; kind?: unknown }) => string[];
}

/** One ajv validator per CRD version, compiled from the rendered manifests. */
async function crdSchemaCheck(): Promise<SchemaCheck> {
  // strict: a keyword ajv does not know is a compile error, so a schema is never half checked without a word.
  const ajv = new Ajv({ allErrors: true, strict: true });
  // Kubernetes' structural-schema extensions: what the API server does with them (keep unknown fields, list and
  // map semantics for server-side apply, CEL rules) is not a JSON-schema check. Accepted here as annotations.
  for (const keyword of [
    'x-kubernetes-preserve-unknown-fields',
    'x-kubernetes-embedded-resource',
    'x-kubernetes-int-or-string',
    'x-kubernetes-list-type',
    'x-kubernetes-list-map-keys',
    'x-kubernetes-map-type',
    'x-kubernetes-validations',
  ]) {
    ajv.addKeyword(keyword);
  }
  const crds = ((await renderManifests()) as Array<{ kind?: string }>).filter((o): o is CustomResourceDefinition => o.kind === 'CustomResourceDefinition');
  const validators = new Map<string, ValidateFunction>();
  for (const crd of crds) {
    for (const version of crd.spec.versions) {
      validators.set(`${crd.spec.group}/${version.name} ${crd.spec.names.kind}`, ajv.compile(version.schema.openAPIV3Schema));
    }
  }
  return {
    groups: new Set(crds.map((crd) => crd.spec.group)),
    errorsOf: (object) => {
      const key = `${String(object.apiVersion)} ${String(object.kind)}`;
      const validate = validators.get(key);
      if (validate === undefined) return [`no CRD serves ${key} (served: ${[...validators.keys()].join(', ')})`];
      if (validate(object)) return [];
      return (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? e.keyword}${e.keyword === 'enum' ? ` (${JSON.stringify(e.params)})` : ''}`);
    },
  };
}

function groupOf(object: unknown): string | undefined {
  const apiVersion = (object as { apiVersion?: unknown } | null)?.apiVersion;
  return typeof apiVersion === 'string' && apiVersion.includes('/') ? apiVersion.slice(0, apiVersion.indexOf('/')) : undefined;
}

t.test('the extraction reads ```yaml blocks and YAML heredocs in shell blocks, and nothing else', async (t) => {
  const markdown = [
    '```yaml',
    'kind: A',
    '---',
    'kind: B',
    '```',
    '```sh',
    "cat > /tmp/x.yaml <<'EOF'",
    'kind: C',
    'EOF',
    'cat <<YAML | kubectl apply -f -',
    'kind: D',
    'YAML',
    "cat > /tmp/x.json <<'EOF'",
    'not: [yaml',
    'EOF',
    '```',
    '```',
    'kind: E',
    '```',
  ].join('\n');
  t.same(yamlSamples(markdown, 'x.md'), [
    { where: 'x.md:2', object: { kind: 'A' } },
    { where: 'x.md:2', object: { kind: 'B' } },
    { where: 'x.md:8', object: { kind: 'C' } },
    { where: 'x.md:11', object: { kind: 'D' } },
  ]);
  t.throws(() => yamlSamples('```bash\ncat <<YAML\nkind: A\n```', 'y.md'), /y\.md:2: heredoc YAML is not closed/);
});

t.test("every README sample of Ambit's kinds validates against its CRD's schema and converts", { skip: unavailable }, async (t) => {
  const check = await crdSchemaCheck();
  t.same([...check.groups], ['security.ambit.dev'], 'the CRDs are of one group');
  const samples = await documentationSamples();
  const own = samples.filter((s) => check.groups.has(groupOf(s.object) ?? ''));
  for (const kind of OWN_KINDS) {
    t.ok(own.some((s) => (s.object as { kind?: unknown }).kind === kind), `the README has a sample ${kind}`);
  }
  for (const { where, object } of own) {
    const { kind, metadata } = object as { kind?: string; metadata?: { name?: string } };
    const what = `${where}: ${kind}/${metadata?.name}`;
    t.same(check.errorsOf(object as object), [], `${what} validates against its CRD's schema`);
    const converted = (() => {
      try {
        return convertPolicyObject(object, { istioApi: false }).kind;
      } catch (err) {
        return err instanceof Error ? err.message : String(err);
      }
    })();
    t.equal(converted, kind, `${what} converts as the agent and the controller read it`);
  }
  t.ok(samples.length > own.length, 'samples of kinds Ambit does not own are read and left alone');
});

t.test('the same check refuses a broken sample', { skip: unavailable }, async (t) => {
  const check = await crdSchemaCheck();
  const own = (await documentationSamples()).filter((s) => check.groups.has(groupOf(s.object) ?? ''));
  const sampleOf = (kind: string) => structuredClone(own.find((s) => (s.object as { kind?: unknown }).kind === kind)?.object) as Record<string, Record<string, unknown>>;

  const badAction = sampleOf('AuthorizationPolicy');
  badAction.spec!.action = 'PERMIT';
  t.match(check.errorsOf(badAction), [/^\/spec\/action must be equal to one of the allowed values/], 'an action outside the enum');

  const noName = sampleOf('AuthorizationPolicy');
  delete noName.spec!.selector;
  noName.spec!.targetRefs = [{ kind: 'Service' }];
  t.match(check.errorsOf(noName), [/^\/spec\/targetRefs\/0 must have required property 'name'/], 'a targetRef without its required name');

  const badMode = sampleOf('PeerAuthentication');
  badMode.spec!.mtls = { mode: 'strict' };
  t.match(check.errorsOf(badMode), [/^\/spec\/mtls\/mode must be equal to one of the allowed values/], 'a mode in the wrong case');

  const badVersion = sampleOf('PeerAuthentication');
  badVersion.apiVersion = 'security.ambit.dev/v1beta1' as never;
  t.match(check.errorsOf(badVersion), [/^no CRD serves security\.ambit\.dev\/v1beta1 PeerAuthentication/], 'a version no CRD serves');
});
