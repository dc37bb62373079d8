// Where the guest's serial console goes (`vmm run --console …`), with the
// choices QEMU's -serial/-chardev gives:
//
//   stdio       this terminal (the default; QEMU's -nographic / mon:stdio):
//               raw mode so every key goes to the guest, with QEMU's escape
//               Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A h
//               prints the keys. The terminal is only touched while vmm's
//               process group is its foreground group (tcgetpgrp): a job
//               started with `&` writes the guest's output but neither reads
//               the terminal nor changes its modes (which would get it
//               SIGTTIN/SIGTTOU and stop it), and takes the keyboard when
//               `fg` brings it to the foreground (the shell sends SIGCONT);
//               meanwhile the guest's output is held, not written (see below).
//               stdin that is not a terminal (a pipe, a file) is read as is;
//               its end does not end the VM.
//   none        no console (output dropped, no input); the default with
//               --daemonize.
//   pty         a new pseudo-terminal; its path is printed as QEMU prints it
//               ("char device redirected to /dev/pts/N (label serial0)").
//   unix:PATH   a listening unix socket (QEMU's unix:PATH,server=on,wait=off):
//               every client gets the output and may type; `vmm ctl console
//               PATH` or `socat -,raw,echo=0 UNIX-CONNECT:PATH` attach.
//   file:PATH   output written to PATH (truncated first), no input.
//
// A slow or absent reader never holds the guest up: past a bounded backlog,
// output for that reader is dropped, as a UART with nobody listening drops it.

import { closeSync, constants, lstatSync, openSync, unlinkSync, writeSync } from 'node:fs';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import tty from 'node:tty';
import { dupFd, openPty, ownsTerminal, terminalIsRaw } from '@vmm/core';

const CTRL_A = 0x01;
/** The stdio console reads process.stdin and writes process.stdout: fds 0 and 1. */
const STDIN_FD = 0;
const STDOUT_FD = 1;
/** Guest output kept while vmm is a background job, shown when it comes to the foreground. */
const HELD_BYTES = 64 * 1024;
/** How often the stdio console checks the terminal: foreground or background, still in raw mode. */
const FOREGROUND_POLL_MS = 200;
/** Output kept for a reader that is behind (a pty nobody reads, a slow socket client) before bytes are dropped. */
const MAX_BACKLOG_BYTES = 1 << 20;
/** The last console bytes a unix-socket client gets when it attaches, so it sees the current screen. */
const SCROLLBACK_BYTES = 16 * 1024;

export type ConsoleSpec =
  | { kind: 'stdio' }
  | { kind: 'none' }
  | { kind: 'pty' }
  | { kind: 'unix'; path: string }
  | { kind: 'file'; path: string };

export const CONSOLE_CHOICES = 'stdio, none, pty, unix:PATH, file:PATH';

/** `--console` values; null for anything else (the caller names the flag in its error). */
export function parseConsoleSpec(text: string): ConsoleSpec | null {
  if (text === 'stdio' || text === 'none' || text === 'pty') return { kind: text };
  const m = /^(unix|file):(.+)$/.exec(text);
  if (m) return { kind: m[1] as 'unix' | 'file', path: m[2]! };
  return null;
}

export function describeConsole(spec: ConsoleSpec): string {
  return spec.kind === 'unix' || spec.kind === 'file' ? `${spec.kind}:${spec.path}` : spec.kind;
}

export interface ConsoleActions {
  quit(): void;
  help(): void;
}

/** Turns host keystrokes into guest input, intercepting the Ctrl-A escape. */
export class EscapeFilter {
  #pendingEscape = false;
  #actions: ConsoleActions;

  constructor(actions: ConsoleActions) {
    this.#actions = actions;
  }

  /** Returns the bytes to forward to the guest. */
  feed(chunk: Uint8Array): Uint8Array {
    const out: number[] = [];
    for (const b of chunk) {
      if (this.#pendingEscape) {
        this.#pendingEscape = false;
        if (b === 0x78 /* x */ || b === 0x58) {
          this.#actions.quit();
          return Uint8Array.from(out);
        }
        if (b === 0x68 /* h */ || b === 0x48) this.#actions.help();
        else if (b === CTRL_A) out.push(CTRL_A);
        else out.push(CTRL_A, b); // not an escape we know: pass both on
      } else if (b === CTRL_A) {
        this.#pendingEscape = true;
      } else {
        out.push(b);
      }
    }
    return Uint8Array.from(out);
  }
}

export const ESCAPE_HELP = '\r\nC-a x    exit vmm\r\nC-a C-a  send C-a\r\nC-a h    this help\r\n';

export interface HostConsole {
  /** Guest input, for MachineConfig.console.input (null: the guest gets none). */
  input: NodeJS.ReadableStream | null;
  /** Guest output. Never throws, never blocks. */
  write(bytes: Uint8Array): void;
  /** Whether the console is this terminal in raw mode right now (lines to it then end in \r\n). */
  readonly raw: boolean;
  /** The terminal went away (SIGHUP): stop reading and writing it. */
  hangUp(): void;
  /** Restores the terminal, closes sockets and files; idempotent, safe on every exit path. */
  close(): void;
}

export interface ConsoleIo {
  stdin: NodeJS.ReadStream;
  stdout: NodeJS.WriteStream;
  /** Tell the user something (a pty's path); one line, no newline. */
  announce(line: string): void;
  /** Ctrl-A x on the stdio console. */
  onQuit(): void;
}

export async function openConsole(spec: ConsoleSpec, io: ConsoleIo): Promise<HostConsole> {
  switch (spec.kind) {
    case 'stdio':
      return stdioConsole(io);
    case 'none':
      return detachedConsole(null, () => {}, () => {});
    case 'file':
      return fileConsole(spec.path);
    case 'pty':
      return ptyConsole(io);
    case 'unix':
      return await unixConsole(spec.path);
  }
}

/** ConsoleError: a --console target that cannot be opened (the message names it). */
export class ConsoleError extends Error {
  readonly code = 'ERR_CONSOLE';
  constructor(message: string) {
    super(message);
    this.name = 'ConsoleError';
  }
}

function stdioConsole(io: ConsoleIo): HostConsole {
  const { stdin, stdout } = io;
  const input = new PassThrough();
  // Ctrl-A x says so on a line of its own, as QEMU's "QEMU: Terminated": the shell's prompt then starts a fresh line.
  const quit = (): void => {
    write(new TextEncoder().encode('\r\nvmm: terminated\r\n'));
    io.onQuit();
  };
  const filter = new EscapeFilter({ quit, help: () => write(new TextEncoder().encode(ESCAPE_HELP)) });
  let attached = false;
  let raw = false;
  let wasRaw = false;
  let gone = false;
  let closed = false;
  // After a hang-up the terminal answers EIO; that is expected, not a crash.
  const ignore = (): void => {};
  stdin.on('error', ignore);
  stdout.on('error', ignore);
  const onData = (chunk: Buffer): void => {
    const bytes = filter.feed(chunk);
    if (bytes.length) input.write(bytes);
  };
  const attach = (): void => {
    if (attached || gone || closed) return;
    if (stdin.isTTY) {
      // Only the terminal's foreground job may read it or change its modes.
      if (!ownsTerminal(STDIN_FD)) return;
      wasRaw = stdin.isRaw;
      stdin.setRawMode(true);
      raw = true;
    }
    stdin.on('data', onData);
    stdin.resume();
    attached = true;
  };
  /** Stop reading; restore the modes we changed unless the terminal is no longer ours to change. */
  const detach = (restore = true): void => {
    if (!attached) return;
    attached = false;
    stdin.off('data', onData);
    if (raw && !gone && restore) stdin.setRawMode(wasRaw);
    raw = false;
    stdin.pause();
  };
  // While vmm is a background job on this terminal, the guest's output is
  // held back (its last HELD_BYTES), not written: a shell prompt the guest
  // prints asks the terminal for the cursor position (ESC [6n), and the
  // terminal's answer would land in the user's shell as typed garbage; boot
  // messages would bury what the user types. `fg` shows the held output.
  let held: Buffer[] = [];
  let heldBytes = 0;
  const foreground = (): boolean => !stdout.isTTY || ownsTerminal(STDOUT_FD);
  const flushHeld = (): void => {
    if (heldBytes === 0 || gone || closed) return;
    const all = Buffer.concat(held);
    held = [];
    heldBytes = 0;
    stdout.write(all.subarray(Math.max(0, all.length - HELD_BYTES)));
  };
  // A slow poll (only when stdin is a terminal) keeps the console in step
  // with job control. `fg` makes us the foreground job: take the keyboard
  // and show the held output then (the shell sends SIGCONT only to a job
  // that was stopped, so a job running in the background is noticed by
  // polling tcgetpgrp). Raw mode is checked, not assumed: the shell that
  // hands over the terminal may restore its own modes just after we set
  // ours, and a console left cooked would swallow Ctrl-A x into a line.
  // Sent back to the background (SIGSTOP, `bg`), stop reading at once: a
  // background read would get SIGTTIN.
  const tick = (): void => {
    if (gone || closed) return;
    const fg = !stdin.isTTY || ownsTerminal(STDIN_FD);
    if (!attached) {
      if (fg) attach();
    } else if (!fg) {
      detach(false);
    } else if (raw && !rawNow()) {
      // libuv skips a mode it believes is set already: leave it, then set it again.
      stdin.setRawMode(false);
      stdin.setRawMode(true);
    }
    if (foreground()) flushHeld();
  };
  /** The terminal's modes now; a terminal that cannot say (hung up: EIO) counts as gone, and is left alone. */
  const rawNow = (): boolean => {
    try {
      return terminalIsRaw(STDIN_FD);
    } catch {
      gone = true;
      detach(false);
      return true;
    }
  };
  process.on('SIGCONT', tick);
  let poll: NodeJS.Timeout | undefined;
  const write = (bytes: Uint8Array): void => {
    if (gone || closed) return;
    if (!foreground()) {
      held.push(Buffer.from(bytes));
      heldBytes += bytes.length;
      if (heldBytes > 2 * HELD_BYTES) {
        const all = Buffer.concat(held).subarray(-HELD_BYTES);
        held = [all];
        heldBytes = all.length;
      }
      return;
    }
    flushHeld();
    if (stdout.writableLength > MAX_BACKLOG_BYTES) return;
    stdout.write(bytes);
  };
  const close = (): void => {
    if (closed) return;
    detach();
    closed = true;
    input.end();
    process.off('SIGCONT', tick);
    clearInterval(poll);
    process.off('exit', close);
  };
  // Last resort: even an uncaught exception or process.exit() must not leave the terminal raw.
  process.on('exit', close);
  attach();
  if (stdin.isTTY) {
    poll = setInterval(tick, FOREGROUND_POLL_MS);
    poll.unref();
  }
  if (stdin.isTTY && !attached) io.announce("vmm: in the background: the console is shown, and reads the keyboard, once this job is in the foreground ('fg')");
  return {
    input,
    write,
    get raw() { return raw; },
    hangUp() {
      gone = true;
      detach();
    },
    close,
  };
}

/**
 * A console that is not this terminal (none, a file, a pty, a unix socket):
 * never raw, no hang-up of its own. close() ends the guest's input and runs
 * `release` once; output after it is dropped.
 */
function detachedConsole(input: PassThrough | null, write: (bytes: Uint8Array) => void, release: () => void): HostConsole {
  let closed = false;
  return {
    input,
    write(bytes) {
      if (!closed) write(bytes);
    },
    raw: false,
    hangUp() {},
    close() {
      if (closed) return;
      closed = true;
      input?.end();
      release();
    },
  };
}

function fileConsole(path: string): HostConsole {
  let fd: number;
  try {
    fd = openSync(path, 'w');
  } catch (e) {
    throw new ConsoleError(`--console file:${path}: ${(e as Error).message}`);
  }
  return detachedConsole(null, (bytes) => {
    try {
      writeSync(fd, bytes);
    } catch {
      // A full disk must not stop the guest; the console file just ends there.
    }
  }, () => closeSync(fd));
}

function ptyConsole(io: ConsoleIo): HostConsole {
  const pty = openPty();
  // Hold the slave open ourselves: with no slave open, reads on the master
  // fail with EIO (a hang-up) each time the user's terminal program closes.
  // O_NOCTTY: a daemon (a session leader with no terminal) must not make it its controlling terminal.
  const slave = openSync(pty.path, constants.O_RDWR | constants.O_NOCTTY);
  const reader = new tty.ReadStream(pty.master);
  // A second descriptor for writing: one libuv handle per fd.
  const writer = new tty.WriteStream(dupFd(pty.master));
  const input = new PassThrough();
  reader.on('data', (d: Buffer) => input.write(d));
  reader.on('error', () => {});
  writer.on('error', () => {});
  io.announce(`char device redirected to ${pty.path} (label serial0)`);
  return detachedConsole(input, (bytes) => {
    if (writer.writableLength <= MAX_BACKLOG_BYTES) writer.write(bytes);
  }, () => {
    reader.destroy();
    writer.destroy();
    closeSync(slave);
  });
}

async function unixConsole(path: string): Promise<HostConsole> {
  // A stale socket (left by a vmm that was killed) is replaced; a socket
  // someone still serves, or anything else at PATH, is refused.
  let isSocket = false;
  try {
    isSocket = lstatSync(path).isSocket();
    if (!isSocket) throw new ConsoleError(`--console unix:${path}: the path exists and is not a socket`);
  } catch (e) {
    if (e instanceof ConsoleError) throw e;
  }
  if (isSocket) {
    const live = await new Promise<boolean>((resolve) => {
      const probe = net.connect(path, () => { probe.destroy(); resolve(true); });
      probe.on('error', () => resolve(false));
    });
    if (live) throw new ConsoleError(`--console unix:${path}: another process is serving that socket`);
    unlinkSync(path);
  }
  const input = new PassThrough();
  const clients = new Set<net.Socket>();
  let scrollback = Buffer.alloc(0);
  // allowHalfOpen: a client that is done typing (socat at the end of its
  // stdin shuts down its sending side) still gets the guest's answer.
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    clients.add(sock);
    sock.on('data', (d: Buffer) => input.write(d));
    sock.on('error', () => sock.destroy());
    sock.on('close', () => clients.delete(sock));
    if (scrollback.length) sock.write(scrollback);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new ConsoleError(`--console unix:${path}: ${e.message}`)));
    server.listen(path, () => resolve());
  });
  server.on('error', () => {});
  server.unref();
  return detachedConsole(input, (bytes) => {
    scrollback = Buffer.concat([scrollback, bytes]);
    if (scrollback.length > SCROLLBACK_BYTES) scrollback = scrollback.subarray(scrollback.length - SCROLLBACK_BYTES);
    for (const c of clients) if (c.writableLength <= MAX_BACKLOG_BYTES) c.write(bytes);
  }, () => {
    for (const c of clients) c.end();
    server.close();
    try { unlinkSync(path); } catch { /* already gone */ }
  });
}
