// The `vmm` command (`pnpm vmm …`): `run` boots a VM, `ctl` drives a running one.
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isVmmError } from '@vmm/core';
import { RUN_HELP, UsageError, parseRunArgs } from './cli/args.ts';
import { RunError, runVm } from './cli/run.ts';
import { daemonize, isDaemonChild } from './cli/daemon.ts';
import { runConsoleClient } from './cli/console-client.ts';
import { runCtl } from './api/client.ts';

const HELP = `usage: pnpm vmm <command> [options]

commands:
  run      boot a virtual machine (pnpm vmm run --help)
  ctl      send a management command to a running one (pnpm vmm ctl --help),
           or attach to its console: pnpm vmm ctl console PATH (--console unix:PATH)

The guest kit (Debian riscv64 kernel, busybox, OpenSBI): pnpm guest --help
`;

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  // `pnpm vmm …` runs this script from the workspace root; relative paths the
  // user typed (--disk a.img, --qmp, --pidfile) mean the directory they typed
  // them in, which pnpm passes as INIT_CWD.
  if (process.env.npm_lifecycle_event === 'vmm' && process.env.INIT_CWD) process.chdir(process.env.INIT_CWD);
  try {
    if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
      (cmd === undefined ? process.stderr : process.stdout).write(HELP);
      return cmd === undefined ? 2 : 0;
    }
    if (cmd === 'ctl' && rest[0] === 'console') return await runConsoleClient(rest.slice(1), { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr });
    if (cmd === 'ctl') return await runCtl(rest, (s) => process.stdout.write(s + '\n'), (s) => process.stderr.write(s + '\n'));
    if (cmd !== 'run') throw new UsageError(`unknown command ${JSON.stringify(cmd)} (try: pnpm vmm run --help)`);
    const opts = parseRunArgs(rest);
    if (opts.help) {
      process.stdout.write(RUN_HELP);
      return 0;
    }
    if (opts.daemonize && !isDaemonChild()) return await daemonize(rest, process.stderr);
    return await runVm(opts, { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr });
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`vmm: ${e.message}\n`);
      return 2;
    }
    if (e instanceof RunError || isVmmError(e)) {
      process.stderr.write(`vmm: ${(e as Error).message}\n`);
      return 1;
    }
    // The machine layer's typed errors (kernel, initrd, memory) carry a code and a message meant for people.
    const err = e as Error & { code?: unknown };
    if (typeof err.code === 'string' && err.code.startsWith('ERR_')) {
      process.stderr.write(`vmm: ${err.message}\n`);
      return 1;
    }
    process.stderr.write(`vmm: internal error: ${err.stack ?? String(e)}\n`);
    return 70;
  }
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
    // Worker threads or a stray handle must not keep a finished vmm alive.
    setImmediate(() => process.exit(code));
  });
}
