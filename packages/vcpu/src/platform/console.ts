// The machine's console: bytes the guest writes (UART THR, SBI DBCN and the
// legacy console_putchar) go into one shared TX ring drained by the main
// thread; bytes typed on the host go into one RX ring that the UART and SBI
// console_read consume. One mutex orders producers across harts, so output
// from several harts interleaves at write boundaries and never reorders.

import { ByteRing, SharedMutex } from './sync.ts';

export interface ConsoleState {
  ctl: SharedArrayBuffer; // Int32 [0] TX producer lock, [1] RX consumer lock, [2] stop flag
  tx: SharedArrayBuffer;
  rx: SharedArrayBuffer;
}

const TX_BYTES = 1 << 16;
const RX_BYTES = 1 << 12;

export function createConsoleState(): ConsoleState {
  return { ctl: new SharedArrayBuffer(16), tx: ByteRing.create(TX_BYTES), rx: ByteRing.create(RX_BYTES) };
}

export class ConsoleChannel {
  readonly tx: ByteRing;
  readonly rx: ByteRing;
  private readonly ctl: Int32Array;
  private readonly txLock: SharedMutex;
  private readonly rxLock: SharedMutex;

  constructor(state: ConsoleState) {
    this.ctl = new Int32Array(state.ctl);
    this.txLock = new SharedMutex(this.ctl, 0);
    this.rxLock = new SharedMutex(this.ctl, 1);
    this.tx = new ByteRing(state.tx);
    this.rx = new ByteRing(state.rx);
  }

  /**
   * Guest → host. Blocks the calling hart while the ring is full (the main
   * thread drains it), as a real UART holds THRE low; gives up when the
   * console is closed so a stopping machine never hangs on output.
   */
  write(bytes: Uint8Array): void {
    this.txLock.with(() => {
      let off = 0;
      while (off < bytes.length) {
        off += this.tx.push(bytes.subarray(off));
        if (off < bytes.length) {
          if (Atomics.load(this.ctl, 2) !== 0) return;
          this.tx.waitForSpace(50);
        }
      }
    });
  }

  writeByte(b: number): void {
    this.write(Uint8Array.of(b & 0xff));
  }

  /** Host → guest: one byte or -1. */
  readByte(): number {
    return this.rxLock.with(() => this.rx.popByte());
  }

  read(max: number): Uint8Array {
    return this.rxLock.with(() => this.rx.pop(max));
  }

  rxReady(): boolean {
    return this.rx.length > 0;
  }

  /** After close, writers drop what does not fit instead of waiting for a reader that is gone. */
  close(): void {
    Atomics.store(this.ctl, 2, 1);
  }
}
