import t from 'tap';
import { CNI_PROTOCOL_VERSION, CniProtocolError, parseCniRequest, parseCniResponse, parseEnrollmentSnapshot } from '../core/cni/index.js';
import { AmbitError, isAmbitError } from '../core/errors/errors.js';

t.test('a protocol error is an AmbitError whose code is the one the agent answers with', async (t) => {
  const cases: Array<[string, () => unknown, string]> = [
    ['not JSON', () => parseCniRequest('{'), 'bad-request'],
    ['another version', () => parseCniRequest(JSON.stringify({ version: CNI_PROTOCOL_VERSION + 1, op: 'status' })), 'unsupported-version'],
    ['an unknown op', () => parseCniRequest(JSON.stringify({ version: CNI_PROTOCOL_VERSION, op: 'reboot' })), 'bad-request'],
    ['a response without ok', () => parseCniResponse(JSON.stringify({ version: CNI_PROTOCOL_VERSION })), 'bad-request'],
    ['an installer report without a file', () => parseCniRequest(JSON.stringify({ version: CNI_PROTOCOL_VERSION, op: 'status', installer: { chainedIn: 3 } })), 'bad-request'],
    ['an uninstall that is not a boolean', () => parseCniResponse(JSON.stringify({ version: CNI_PROTOCOL_VERSION, ok: true, uninstall: 'yes' })), 'bad-request'],
    ['an enrollment file without namespaces', () => parseEnrollmentSnapshot('{}'), 'bad-request'],
  ];
  for (const [what, parse, code] of cases) {
    let thrown: unknown;
    try {
      parse();
    } catch (err) {
      thrown = err;
    }
    t.ok(thrown instanceof CniProtocolError, `${what}: a CniProtocolError`);
    t.ok(thrown instanceof AmbitError, `${what}: an AmbitError`);
    t.ok(isAmbitError(thrown, code), `${what}: code ${code}`);
    t.equal((thrown as Error).name, 'CniProtocolError');
  }
  const unsupported = (() => {
    try {
      parseCniRequest(JSON.stringify({ version: 99, op: 'status' }));
    } catch (err) {
      return err as CniProtocolError;
    }
    return undefined;
  })();
  t.same(unsupported?.supportedVersions, [CNI_PROTOCOL_VERSION], 'a version refusal names the versions the agent speaks');
});

t.test("a status answer says whether the mesh is being uninstalled; an older agent's, without the field, reads as no", async (t) => {
  t.equal(parseCniResponse(JSON.stringify({ version: CNI_PROTOCOL_VERSION, ok: true, reason: 'the mesh is being uninstalled', uninstall: true })).ok, true);
  const older = parseCniResponse(JSON.stringify({ version: CNI_PROTOCOL_VERSION, ok: true, reason: 'agent ready' }));
  t.equal(older.ok && older.uninstall, undefined);
});

t.test("the installer's report rides on status; an older installer's status has none", async (t) => {
  t.same(parseCniRequest(JSON.stringify({ version: CNI_PROTOCOL_VERSION, op: 'status', installer: { chainedIn: '/etc/cni/net.d/10-x.conflist' } })), {
    version: CNI_PROTOCOL_VERSION,
    op: 'status',
    installer: { chainedIn: '/etc/cni/net.d/10-x.conflist' },
  });
  t.same(parseCniRequest(JSON.stringify({ version: CNI_PROTOCOL_VERSION, op: 'status', installer: { chainedIn: null } })), { version: CNI_PROTOCOL_VERSION, op: 'status', installer: { chainedIn: null } });
  t.same(parseCniRequest(JSON.stringify({ version: CNI_PROTOCOL_VERSION, op: 'status' })), { version: CNI_PROTOCOL_VERSION, op: 'status' });
});
