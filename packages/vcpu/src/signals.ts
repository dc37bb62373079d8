// Cross-thread interrupt and run-state signals for the harts of one machine.
//
// Every device model (PLIC, ACLINT, UART, virtio-mmio irqfd poller) may run
// on any thread of the machine process; they all raise and lower interrupt
// lines through this SharedArrayBuffer. A hart polls its `irq` word between
// instruction batches and sleeps on it (Atomics.wait) in WFI, so an idle
// guest leaves the host CPU idle. Bits in `irq` use the `mip` bit positions
// of the RISC-V privileged spec (1.12 §3.1.9): SSIP=1, MSIP=3, STIP=5,
// MTIP=7, SEIP=9, MEIP=11.

import { MAX_HARTS } from './layout.ts';

export const MIP = { SSIP: 1 << 1, MSIP: 1 << 3, STIP: 1 << 5, MTIP: 1 << 7, SEIP: 1 << 9, MEIP: 1 << 11 } as const;

/**
 * Requests carried in the same word, above every mip bit: set by another
 * thread, handled and cleared by the hart at its next poll. REQ_TLB_FLUSH
 * implements SBI RFENCE remote sfence.vma / fence.i (SBI 2.0 §8); a remote
 * fence.i also sets FENCE_I, which drops the hart's translated code.
 */
export const REQ = { TLB_FLUSH: 1 << 30, FENCE_I: 1 << 29 } as const;

/** SBI HSM hart states (SBI 2.0 §9). */
export const HSM = { STARTED: 0, STOPPED: 1, START_PENDING: 2, STOP_PENDING: 3, SUSPENDED: 4 } as const;

/** Machine run state, shared by all harts. */
export const RUN = { RUNNING: 0, PAUSED: 1, STOPPING: 2 } as const;

const HEADER_BYTES = 64;
const HART_STRIDE = 64;
// Int32 slots within a hart's record
const I_IRQ = 0;
const I_WAKE = 1;
const I_HSM = 2;
const I_PARKED = 3; // 1 while the hart sleeps in a machine pause (it has finished its batch)
// BigInt64 slots within a hart's record (byte offsets / 8)
const Q_TIMECMP = 2; // byte 16: mtimecmp (ACLINT MTIMER) or SBI set_timer deadline
const Q_START_ADDR = 3; // byte 24: HSM hart_start address
const Q_START_OPAQUE = 4; // byte 32: HSM hart_start opaque (a1)
// Header: Int32 [0]=run state, [1]=run-state futex; BigInt64 [1]=epoch ns (byte 8)

export class HartSignals {
  readonly buffer: SharedArrayBuffer;
  readonly harts: number;
  private readonly i32: Int32Array;
  private readonly i64: BigInt64Array;

  constructor(harts: number, buffer?: SharedArrayBuffer) {
    if (!Number.isInteger(harts) || harts < 1 || harts > MAX_HARTS) throw new RangeError(`harts must be 1..${MAX_HARTS}, got ${harts}`);
    this.harts = harts;
    this.buffer = buffer ?? new SharedArrayBuffer(HEADER_BYTES + HART_STRIDE * harts);
    this.i32 = new Int32Array(this.buffer);
    this.i64 = new BigInt64Array(this.buffer);
    if (!buffer) {
      Atomics.store(this.i64, 1, process.hrtime.bigint());
      this.resetHarts();
    }
  }

  /**
   * Every hart's record back to its power-on state: no interrupt pending,
   * hart 0 STARTED and the others STOPPED, no timer deadline. The timebase
   * keeps counting (mtime is not reset, as on QEMU's ACLINT) and the run state is left to the caller.
   */
  resetHarts(): void {
    for (let h = 0; h < this.harts; h++) {
      Atomics.store(this.i32, this.base32(h) + I_IRQ, 0);
      Atomics.store(this.i32, this.base32(h) + I_HSM, h === 0 ? HSM.STARTED : HSM.STOPPED);
      Atomics.store(this.i64, this.base64(h) + Q_TIMECMP, -1n); // "never": all ones, unsigned
      this.setStart(h, 0n, 0n);
    }
  }

  private base32(h: number): number { return (HEADER_BYTES + h * HART_STRIDE) >> 2; }
  private base64(h: number): number { return (HEADER_BYTES + h * HART_STRIDE) >> 3; }

  /** The platform timer in TIMEBASE_HZ ticks since the machine was created (`time` CSR, ACLINT mtime). */
  nowTicks(): bigint {
    return ((process.hrtime.bigint() - Atomics.load(this.i64, 1)) * 10_000_000n) / 1_000_000_000n;
  }
  epochNs(): bigint { return Atomics.load(this.i64, 1); }

  irq(h: number): number { return Atomics.load(this.i32, this.base32(h) + I_IRQ); }
  /** The Int32Array and index of hart h's irq word, for a hart's fast poll and Atomics.wait. */
  irqCell(h: number): { array: Int32Array; index: number } { return { array: this.i32, index: this.base32(h) + I_IRQ }; }

  raise(h: number, bits: number): void {
    const old = Atomics.or(this.i32, this.base32(h) + I_IRQ, bits);
    if ((old & bits) !== bits) this.wake(h);
  }
  lower(h: number, bits: number): void { Atomics.and(this.i32, this.base32(h) + I_IRQ, ~bits); }
  setLevel(h: number, bits: number, on: boolean): void { if (on) this.raise(h, bits); else this.lower(h, bits); }

  /** Wake hart h from WFI or from a stopped HSM state. */
  wake(h: number): void {
    const i = this.base32(h) + I_IRQ;
    Atomics.add(this.i32, this.base32(h) + I_WAKE, 1);
    Atomics.notify(this.i32, i);
  }

  timecmp(h: number): bigint { return BigInt.asUintN(64, Atomics.load(this.i64, this.base64(h) + Q_TIMECMP)); }
  setTimecmp(h: number, v: bigint): void { Atomics.store(this.i64, this.base64(h) + Q_TIMECMP, BigInt.asIntN(64, v)); this.wake(h); }

  /** True while hart h is parked by a machine pause: it has left its batch and runs no instruction until resumed. */
  parked(h: number): boolean { return Atomics.load(this.i32, this.base32(h) + I_PARKED) === 1; }
  setParked(h: number, on: boolean): void { Atomics.store(this.i32, this.base32(h) + I_PARKED, on ? 1 : 0); }

  hsmState(h: number): number { return Atomics.load(this.i32, this.base32(h) + I_HSM); }
  setHsmState(h: number, s: number): void { Atomics.store(this.i32, this.base32(h) + I_HSM, s); }
  /** Atomically move hart h from `from` to `to`; false if it was not in `from`. */
  casHsmState(h: number, from: number, to: number): boolean {
    return Atomics.compareExchange(this.i32, this.base32(h) + I_HSM, from, to) === from;
  }
  setStart(h: number, addr: bigint, opaque: bigint): void {
    Atomics.store(this.i64, this.base64(h) + Q_START_ADDR, BigInt.asIntN(64, addr));
    Atomics.store(this.i64, this.base64(h) + Q_START_OPAQUE, BigInt.asIntN(64, opaque));
  }
  start(h: number): { addr: bigint; opaque: bigint } {
    return {
      addr: BigInt.asUintN(64, Atomics.load(this.i64, this.base64(h) + Q_START_ADDR)),
      opaque: BigInt.asUintN(64, Atomics.load(this.i64, this.base64(h) + Q_START_OPAQUE)),
    };
  }

  runState(): number { return Atomics.load(this.i32, 0); }
  setRunState(s: number): void {
    Atomics.store(this.i32, 0, s);
    Atomics.add(this.i32, 1, 1);
    Atomics.notify(this.i32, 1);
    for (let h = 0; h < this.harts; h++) this.wake(h);
  }
}
