// Platform-Level Interrupt Controller, `sifive,plic-1.0.0` (RISC-V PLIC
// specification 1.0.0), with QEMU virt's register layout and contexts:
// context 2h is hart h's M-mode, context 2h+1 its S-mode (hw/riscv/virt.c
// "MS" hart config). Sources are level-triggered through the gateway
// (§3): a source whose line is high becomes pending unless it is in service
// (claimed and not yet completed); completing a source whose line is still
// high makes it pending again.
//
// All state sits in one SharedArrayBuffer so every hart worker and any
// back-end thread (UART RX from the main thread, the virtio irqfd poller)
// can drive the same controller; a SharedMutex serializes register updates.

import { VmmError } from '@vmm/core';
import type { AccessSize, MmioDevice } from '../bus.ts';
import { MAX_HARTS, MMIO, PLIC_NUM_PRIORITIES, PLIC_NUM_SOURCES } from '../layout.ts';
import { MIP, type HartSignals } from '../signals.ts';
import { SharedMutex } from './sync.ts';

const WORDS = Math.ceil(PLIC_NUM_SOURCES / 32); // 32-bit words per source bitmap
const MAX_CONTEXTS = 2 * MAX_HARTS;
const PRIO_MASK = (1 << Math.ceil(Math.log2(PLIC_NUM_PRIORITIES + 1))) - 1; // WARL: 3 bits for 7 levels

// Register map (PLIC spec 1.0.0 §3, QEMU sifive_plic offsets).
const PRIORITY_BASE = 0x0;
const PENDING_BASE = 0x1000;
const ENABLE_BASE = 0x2000;
const ENABLE_STRIDE = 0x80;
const CONTEXT_BASE = 0x20_0000;
const CONTEXT_STRIDE = 0x1000;

// Int32 cell indices in the shared state.
const I_LOCK = 0;
const I_PRIO = 1;
const I_LEVEL = I_PRIO + PLIC_NUM_SOURCES;
const I_PENDING = I_LEVEL + WORDS;
const I_CLAIMED = I_PENDING + WORDS;
const I_ENABLE = I_CLAIMED + WORDS;
const I_THRESHOLD = I_ENABLE + MAX_CONTEXTS * WORDS;
const I_END = I_THRESHOLD + MAX_CONTEXTS;

export class PlicError extends VmmError {
  constructor(message: string) {
    super(message, 'config', 'ERR_PLIC_SOURCE');
  }
}

export function createPlicState(): SharedArrayBuffer {
  return new SharedArrayBuffer(I_END * 4);
}

export class Plic implements MmioDevice {
  readonly name = 'plic';
  readonly base = MMIO.plic.base;
  readonly size = MMIO.plic.size;
  private readonly s: Int32Array;
  private readonly lock: SharedMutex;
  private readonly signals: HartSignals;
  private readonly contexts: number;

  constructor(state: SharedArrayBuffer, signals: HartSignals) {
    this.s = new Int32Array(state);
    this.lock = new SharedMutex(this.s, I_LOCK);
    this.signals = signals;
    this.contexts = 2 * signals.harts;
  }

  /**
   * Drive the line of interrupt source `source` (1..95) high or low. Safe
   * from any thread; this is the API device back-ends use.
   */
  setLevel(source: number, high: boolean): void {
    if (!Number.isInteger(source) || source < 1 || source >= PLIC_NUM_SOURCES) throw new PlicError(`PLIC source must be 1..${PLIC_NUM_SOURCES - 1}, got ${source}`);
    const w = source >>> 5;
    const bit = 1 << (source & 31);
    // Lock-free fast path: nothing changes if the line is already at that level.
    if (((Atomics.load(this.s, I_LEVEL + w) & bit) !== 0) === high) return;
    this.lock.with(() => {
      if (high) Atomics.or(this.s, I_LEVEL + w, bit);
      else Atomics.and(this.s, I_LEVEL + w, ~bit);
      // Gateway: level high and not in service → pending; level low → not pending (as QEMU).
      if (high && (this.s[I_CLAIMED + w]! & bit) === 0) this.s[I_PENDING + w]! |= bit;
      else if (!high) this.s[I_PENDING + w]! &= ~bit;
      this.update();
    });
  }

  read(offset: number, size: AccessSize): bigint | null {
    if (size !== 4 || (offset & 3) !== 0) return null;
    return BigInt(this.lock.with(() => this.readReg(offset)) >>> 0);
  }

  write(offset: number, size: AccessSize, value: bigint): boolean {
    if (size !== 4 || (offset & 3) !== 0) return false;
    const v = Number(value & 0xffff_ffffn) | 0;
    return this.lock.with(() => this.writeReg(offset, v));
  }

  private readReg(offset: number): number {
    if (offset < PENDING_BASE) {
      const src = (offset - PRIORITY_BASE) >> 2;
      return src < PLIC_NUM_SOURCES ? this.s[I_PRIO + src]! : 0;
    }
    if (offset < ENABLE_BASE) {
      const w = (offset - PENDING_BASE) >> 2;
      return w < WORDS ? this.s[I_PENDING + w]! : 0;
    }
    if (offset < CONTEXT_BASE) {
      const ctx = Math.floor((offset - ENABLE_BASE) / ENABLE_STRIDE);
      const w = ((offset - ENABLE_BASE) % ENABLE_STRIDE) >> 2;
      return ctx < this.contexts && w < WORDS ? this.s[I_ENABLE + ctx * WORDS + w]! : 0;
    }
    const ctx = Math.floor((offset - CONTEXT_BASE) / CONTEXT_STRIDE);
    const reg = (offset - CONTEXT_BASE) % CONTEXT_STRIDE;
    if (ctx >= this.contexts) return 0;
    if (reg === 0) return this.s[I_THRESHOLD + ctx]!;
    if (reg === 4) return this.claim(ctx);
    return 0;
  }

  private writeReg(offset: number, v: number): boolean {
    if (offset < PENDING_BASE) {
      const src = (offset - PRIORITY_BASE) >> 2;
      if (src >= 1 && src < PLIC_NUM_SOURCES) {
        this.s[I_PRIO + src] = v & PRIO_MASK;
        this.update();
      }
      return true;
    }
    if (offset < ENABLE_BASE) return true; // pending bits are read-only (§3.4)
    if (offset < CONTEXT_BASE) {
      const ctx = Math.floor((offset - ENABLE_BASE) / ENABLE_STRIDE);
      const w = ((offset - ENABLE_BASE) % ENABLE_STRIDE) >> 2;
      if (ctx < this.contexts && w < WORDS) {
        // Source 0 does not exist: its enable bit is hardwired to zero.
        this.s[I_ENABLE + ctx * WORDS + w] = w === 0 ? v & ~1 : v;
        this.update();
      }
      return true;
    }
    const ctx = Math.floor((offset - CONTEXT_BASE) / CONTEXT_STRIDE);
    const reg = (offset - CONTEXT_BASE) % CONTEXT_STRIDE;
    if (ctx >= this.contexts) return true;
    if (reg === 0) {
      this.s[I_THRESHOLD + ctx] = v & PRIO_MASK;
      this.update();
    } else if (reg === 4) {
      this.complete(ctx, v >>> 0);
    }
    return true;
  }

  /** Highest-priority pending, enabled, not-in-service source of a context (ties: lowest id); 0 if none. */
  private best(ctx: number): { source: number; priority: number } {
    let source = 0;
    let priority = 0;
    for (let w = 0; w < WORDS; w++) {
      let bits = this.s[I_PENDING + w]! & ~this.s[I_CLAIMED + w]! & this.s[I_ENABLE + ctx * WORDS + w]!;
      while (bits !== 0) {
        const b = 31 - Math.clz32(bits & -bits);
        bits &= bits - 1;
        const src = w * 32 + b;
        const p = this.s[I_PRIO + src]!;
        if (p > priority) {
          priority = p;
          source = src;
        }
      }
    }
    return { source, priority };
  }

  /** §3.9 claim: returns the id and marks the source in service; 0 when nothing is pending. */
  private claim(ctx: number): number {
    const { source } = this.best(ctx);
    if (source !== 0) {
      const w = source >>> 5;
      const bit = 1 << (source & 31);
      this.s[I_PENDING + w]! &= ~bit;
      this.s[I_CLAIMED + w]! |= bit;
    }
    this.update();
    return source;
  }

  /** §3.10 completion: ignored unless the id is enabled for this context. */
  private complete(ctx: number, source: number): void {
    if (source < 1 || source >= PLIC_NUM_SOURCES) return;
    const w = source >>> 5;
    const bit = 1 << (source & 31);
    if ((this.s[I_ENABLE + ctx * WORDS + w]! & bit) === 0) return;
    this.s[I_CLAIMED + w]! &= ~bit;
    if ((this.s[I_LEVEL + w]! & bit) !== 0) this.s[I_PENDING + w]! |= bit;
    this.update();
  }

  /** Recompute every context's external-interrupt line into the harts' MEIP/SEIP. */
  private update(): void {
    for (let ctx = 0; ctx < this.contexts; ctx++) {
      const { priority } = this.best(ctx);
      const on = priority > this.s[I_THRESHOLD + ctx]!;
      const hart = ctx >> 1;
      const bit = (ctx & 1) === 0 ? MIP.MEIP : MIP.SEIP;
      if (((this.signals.irq(hart) & bit) !== 0) !== on) this.signals.setLevel(hart, bit, on);
    }
  }
}
