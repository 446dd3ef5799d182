#!/usr/bin/env node
import { AmbitError, CONFIGURATION_ERROR_CODES } from '../core/errors/index.js';
import { ambitVersion } from '../core/version/index.js';

/** Exit codes scripts can rely on. */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

const USAGE = `Usage: ambit <command> [options]

Commands:
  agent     run the node agent (capture, HBONE mTLS tunnel, redirect rules); ambit agent --help
  controller run the controller: watches the cluster, streams records to the agents; ambit controller --help
  cni       install or uninstall the chained CNI plugin on this node; ambit cni --help
  authz     check what the policies decide for a connection, without sending one; ambit authz --help
  status    per node: the agent's version, readiness, rules, enrolled pods, identities, cert expiry
  uninstall give every node plain networking back, then delete Ambit's objects; --check on a node: nothing left
  enroll    label a namespace into the mesh (unenroll: take it out); ambit enroll --help
  unenroll  remove a namespace's enrollment label; ambit unenroll --help
  check     check that Ambit is installed and working (--pre: that it can be installed); ambit check --help
  demo      build a two-node network-namespace testbed and show the mesh at work (root, Linux)
  version   print the version

Run 'ambit <command> --help' for a command's options.
Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return command === undefined ? EXIT_USAGE : EXIT_OK;
    case 'version':
    case '--version':
      process.stdout.write(`ambit ${ambitVersion()}\n`);
      return EXIT_OK;
    case 'agent': {
      const { runAgentCommand } = await import('../agent/index.js');
      return runAgentCommand(rest);
    }
    case 'controller': {
      const { runControllerCommand } = await import('../controller/index.js');
      return runControllerCommand(rest);
    }
    case 'cni': {
      const { runCniCommand } = await import('./cni.js');
      return runCniCommand(rest);
    }
    case 'authz': {
      const { runAuthzCommand } = await import('./authz.js');
      return runAuthzCommand(rest);
    }
    case 'status': {
      const { runStatusCommand } = await import('./status.js');
      return runStatusCommand(rest);
    }
    case 'uninstall': {
      const { runUninstallCommand } = await import('./uninstall.js');
      return runUninstallCommand(rest);
    }
    case 'enroll':
    case 'unenroll': {
      const { runEnrollCommand } = await import('./enroll.js');
      return runEnrollCommand(command, rest);
    }
    case 'check': {
      const { runCheckCommand } = await import('./check.js');
      return runCheckCommand(rest);
    }
    case 'demo': {
      const { runDemo } = await import('./demo.js');
      return runDemo(rest);
    }
    default:
      process.stderr.write(`ambit: unknown command '${command}'\n\n${USAGE}`);
      return EXIT_USAGE;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof AmbitError && err.code === 'USAGE') {
      process.stderr.write(`ambit: ${err.message}\n`);
      process.exitCode = EXIT_USAGE;
      return;
    }
    process.stderr.write(`ambit: ${err instanceof AmbitError ? `${err.message} [${err.code}]` : err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = err instanceof AmbitError && CONFIGURATION_ERROR_CODES.has(err.code) ? EXIT_USAGE : EXIT_FAILURE;
  },
);
