// The serial console on the host terminal: raw mode so every key goes to
// the guest, and QEMU's escape (-serial mon:stdio / -nographic): Ctrl-A x
// quits, Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A h prints the keys.
import { PassThrough } from 'node:stream';

const CTRL_A = 0x01;

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
  /** Guest input (already filtered), for MachineConfig.console.input. */
  input: NodeJS.ReadableStream;
  /** Restores the terminal; idempotent, safe on every exit path. */
  restore(): void;
}

/** Puts stdin in raw mode (when it is a TTY) and pipes it through the escape filter. */
export function attachHostConsole(stdin: NodeJS.ReadStream, onQuit: () => void, writeHelp: (s: string) => void): HostConsole {
  const input = new PassThrough();
  const filter = new EscapeFilter({ quit: onQuit, help: () => writeHelp(ESCAPE_HELP) });
  const wasRaw = stdin.isTTY ? stdin.isRaw : false;
  if (stdin.isTTY) stdin.setRawMode(true);
  const onData = (chunk: Buffer): void => {
    const bytes = filter.feed(chunk);
    if (bytes.length) input.write(bytes);
  };
  stdin.on('data', onData);
  stdin.resume();
  let restored = false;
  const restore = (): void => {
    if (restored) return;
    restored = true;
    stdin.off('data', onData);
    if (stdin.isTTY) stdin.setRawMode(wasRaw);
    stdin.pause();
    input.end();
    process.off('exit', restore);
  };
  // Last resort: even an uncaught exception or process.exit() must not leave the terminal raw.
  process.on('exit', restore);
  return { input, restore };
}
