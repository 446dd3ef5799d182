/**
 * What a test needs from the machine (root, a tool, a kernel module, the testbed) and what happens when it is
 * missing: the one place every test file asks. Each function returns a test's `skip` option: false when the machine
 * has it, else the reason, which tap prints beside the skipped test.
 *
 * With AMBIT_REQUIRE_TESTBED=1 a missing prerequisite is a failure with the same reason (the test stays skipped,
 * since its body would only fail less clearly): CI runs as root with every tool installed, so there a skip means a
 * broken install, and a skip would hide it. Call these at the top of a test file, where tests take their options.
 */
import t from 'tap';
import { onPath, testbedUnavailableReason } from '../testbed/index.js';

export const REQUIRE_TESTBED_ENV = 'AMBIT_REQUIRE_TESTBED';

/** `reason` as a test's `skip` option; under AMBIT_REQUIRE_TESTBED=1, also a failure naming it. */
export function skipReason(reason: string | undefined): string | false {
  if (reason === undefined) return false;
  if (process.env[REQUIRE_TESTBED_ENV] === '1') t.fail(`missing test prerequisite, which ${REQUIRE_TESTBED_ENV}=1 requires: ${reason}`);
  return reason;
}

/** Nodes and pods as network namespaces (testbed/): root, iproute2, the CNI plugins, br_netfilter. */
export function needsTestbed(): string | false {
  return skipReason(testbedUnavailableReason());
}

/** `why` says what the test does as root. */
export function needsRoot(why: string): string | false {
  return skipReason(process.getuid?.() === 0 ? undefined : `needs root: ${why}`);
}

/** Executables on PATH; `why` says what the test uses them for. */
export function needsTools(tools: readonly string[], why?: string): string | false {
  const missing = tools.filter((tool) => !onPath(tool));
  return skipReason(missing.length === 0 ? undefined : `needs ${missing.join(', ')} on PATH${why === undefined ? '' : ` (${why})`}`);
}
