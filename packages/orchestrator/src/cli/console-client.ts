// `vmm ctl console PATH`: attach this terminal to a VM started with
// `--console unix:PATH`. Keys go to the guest as typed (raw mode, only when
// this process is the terminal's foreground job); Ctrl-] detaches, as in
// telnet and `virsh console`, and leaves the VM running. Without a terminal
// (a pipe), stdin is sent as is and the command ends once the guest has
// been quiet for a moment after stdin's end.

import net from 'node:net';
import { ownsTerminal } from '@vmm/core';

const CTRL_RIGHT_BRACKET = 0x1d;
/** With piped input: after stdin ended, the command ends once the guest has been quiet this long. */
const LINGER_MS = 2000;

export const CONSOLE_USAGE = `usage: vmm ctl console PATH
  Attach to the serial console of a VM started with --console unix:PATH.
  Ctrl-] detaches (the VM keeps running). socat works too:
  socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:PATH`;

export interface ConsoleClientIo {
  stdin: NodeJS.ReadStream;
  stdout: NodeJS.WriteStream;
  stderr: NodeJS.WriteStream;
}

/** Runs `vmm ctl console …`; resolves with the exit status. */
export function runConsoleClient(argv: string[], io: ConsoleClientIo): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    io.stdout.write(CONSOLE_USAGE + '\n');
    return Promise.resolve(0);
  }
  if (argv.length !== 1 || argv[0]!.startsWith('-')) {
    io.stderr.write(`vmm ctl console: expected one socket path\n${CONSOLE_USAGE}\n`);
    return Promise.resolve(2);
  }
  const path = argv[0]!;
  const { stdin, stdout, stderr } = io;
  return new Promise<number>((resolve) => {
    const sock = net.connect(path);
    let raw = false;
    let done = false;
    let lingerTimer: NodeJS.Timeout | undefined;
    const finish = (status: number, message?: string): void => {
      if (done) return;
      done = true;
      clearTimeout(lingerTimer);
      stdin.off('data', onKeys);
      if (raw) stdin.setRawMode(false);
      stdin.pause();
      if (message) stderr.write(`${raw ? '\r\n' : ''}${message}\n`);
      sock.destroy();
      resolve(status);
    };
    const onKeys = (chunk: Buffer): void => {
      const stop = raw ? chunk.indexOf(CTRL_RIGHT_BRACKET) : -1;
      if (stop >= 0) {
        if (stop > 0) sock.write(chunk.subarray(0, stop));
        finish(0, 'vmm: detached from the console');
        return;
      }
      sock.write(chunk);
    };
    let connected = false;
    sock.on('connect', () => {
      connected = true;
      // Only the terminal's foreground job may change its modes (else SIGTTOU).
      if (stdin.isTTY && ownsTerminal(0)) {
        stdin.setRawMode(true);
        raw = true;
        stderr.write(`vmm: attached to the console on ${path}; Ctrl-] detaches\r\n`);
      }
      if (stdin.isTTY && !raw) {
        finish(1, 'vmm ctl console: this terminal belongs to another job (run it in the foreground)');
        return;
      }
      stdin.on('data', onKeys);
      stdin.on('end', () => {
        const linger = (): void => {
          clearTimeout(lingerTimer);
          lingerTimer = setTimeout(() => finish(0), LINGER_MS);
        };
        sock.on('data', linger);
        linger();
      });
      stdin.resume();
    });
    sock.on('data', (d: Buffer) => stdout.write(d));
    sock.on('error', (e) => finish(1, `vmm ctl console: ${connected ? 'lost' : 'cannot connect to'} ${path}: ${e.message}`));
    sock.on('close', () => finish(0, raw ? 'vmm: the console closed (the VM has shut down)' : undefined));
  });
}
