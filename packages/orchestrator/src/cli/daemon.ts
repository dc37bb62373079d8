// `vmm run --daemonize`, as QEMU's -daemonize: the command started from a
// shell starts the real vmm as a child in a session of its own (setsid: no
// controlling terminal, so no SIGHUP, SIGINT or SIGTTOU from the shell's
// terminal ever reaches it), relays the child's stderr while the VM comes up
// (so the kit download and any start-up error still show), and exits 0 once
// the child says it is up: the QMP socket listening and the harts running.
// If the child fails first, the parent exits with the child's status. The
// daemon then points its stdout and stderr at /dev/null (QEMU does the same
// in os_setup_post), so nothing it writes later can fail on a closed pipe.

import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { dup2Fd } from '@vmm/core';

/** Set in the daemon's environment by the parent, so `vmm run` knows it is the detached child. */
const DAEMON_ENV = 'VMM_DAEMON_CHILD';
const READY = 'vmm-daemon-ready';
/** After the ready message, how long the parent waits for the last stderr bytes the child wrote before. */
const DRAIN_MS = 2000;

export function isDaemonChild(): boolean {
  return process.env[DAEMON_ENV] === '1';
}

/**
 * The parent's side: start `vmm run ARGV` detached and wait until it is up.
 * Resolves with the status for the parent to exit with.
 */
export function daemonize(runArgv: string[], stderr: NodeJS.WritableStream): Promise<number> {
  const cli = process.argv[1]!;
  const child = spawn(process.execPath, [...process.execArgv, cli, 'run', ...runArgv], {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    env: { ...process.env, [DAEMON_ENV]: '1' },
  });
  const drained = new Promise<void>((resolve) => {
    child.stderr!.on('end', resolve);
    child.stderr!.on('error', () => resolve());
  });
  child.stderr!.on('data', (d: Buffer) => stderr.write(d));
  return new Promise<number>((resolve) => {
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      void drained.then(() => {
        if (signal) stderr.write(`vmm: the daemon was killed by ${signal} before the VM was up\n`);
        resolve(code ?? 1);
      });
    };
    child.once('exit', onExit);
    child.on('message', (m: unknown) => {
      if (typeof m !== 'object' || m === null || (m as { type?: unknown }).type !== READY) return;
      child.off('exit', onExit);
      const timer = setTimeout(() => child.stderr!.destroy(), DRAIN_MS);
      void drained.then(() => {
        clearTimeout(timer);
        child.disconnect();
        child.unref();
        resolve(0);
      });
    });
  });
}

/** The daemon's side, once the VM is up: stdout and stderr to /dev/null, then tell the parent it may exit. */
export function daemonReady(): void {
  const devNull = openSync('/dev/null', 'r+');
  // Sound: both descriptors are ours; dup2 closes the pipe ends the parent reads.
  dup2Fd(devNull, 1);
  dup2Fd(devNull, 2);
  closeSync(devNull);
  process.send?.({ type: READY, pid: process.pid });
  process.disconnect?.();
}
