// `sifive,test1` finisher at 0x100000 (QEMU hw/misc/sifive_test.c), also the
// regmap of the DTB's syscon-poweroff/syscon-reboot nodes. A 32-bit write of
//   0x5555              → poweroff, exit status 0
//   0x7777              → reset
//   0x3333 | code << 16 → fail with exit status `code`
// ends the machine. The guest's init reports a `--exec` command's status this
// way, so the code is passed through exactly. Anything else is ignored, as
// QEMU does. The exit is recorded in a shared slot: the first request wins.

import type { AccessSize, MmioDevice } from '../bus.ts';
import { MMIO } from '../layout.ts';
import { RUN, type HartSignals } from '../signals.ts';

export const EXIT_REASON = { NONE: 0, POWEROFF: 1, RESET: 2, FAIL: 3, ERROR: 4 } as const;
export type ExitReasonName = 'poweroff' | 'reset' | 'fail' | 'error';

const I_REASON = 0;
const I_CODE = 1;
const CLAIMING = -1;

export function createExitState(): SharedArrayBuffer {
  return new SharedArrayBuffer(8);
}

/** The machine-exit slot shared by the finisher, SBI SRST and the machine's main thread. */
export class ExitSlot {
  private readonly i: Int32Array;
  private readonly signals: HartSignals;

  constructor(state: SharedArrayBuffer, signals: HartSignals) {
    this.i = new Int32Array(state);
    this.signals = signals;
  }

  /** Record an exit (first one wins) and tell every hart to stop. Returns whether this call won. */
  request(reason: number, code: number): boolean {
    // Claim the slot first, then publish code and reason, so a reader never sees a reason with a stale code.
    if (Atomics.compareExchange(this.i, I_REASON, EXIT_REASON.NONE, CLAIMING) !== EXIT_REASON.NONE) return false;
    Atomics.store(this.i, I_CODE, code | 0);
    Atomics.store(this.i, I_REASON, reason);
    Atomics.notify(this.i, I_REASON);
    this.signals.setRunState(RUN.STOPPING);
    return true;
  }

  get(): { reason: ExitReasonName; code: number } | null {
    const r = Atomics.load(this.i, I_REASON);
    const code = Atomics.load(this.i, I_CODE);
    switch (r) {
      case EXIT_REASON.POWEROFF: return { reason: 'poweroff', code };
      case EXIT_REASON.RESET: return { reason: 'reset', code };
      case EXIT_REASON.FAIL: return { reason: 'fail', code };
      case EXIT_REASON.ERROR: return { reason: 'error', code };
      default: return null;
    }
  }

  /** Resolves when an exit has been requested (main thread). */
  async wait(): Promise<{ reason: ExitReasonName; code: number }> {
    for (;;) {
      const e = this.get();
      if (e) return e;
      const r = Atomics.load(this.i, I_REASON);
      if (r !== EXIT_REASON.NONE && r !== CLAIMING) continue;
      const w = Atomics.waitAsync(this.i, I_REASON, r);
      if (w.async) await w.value;
    }
  }
}

export class SifiveTest implements MmioDevice {
  readonly name = 'test';
  readonly base = MMIO.test.base;
  readonly size = MMIO.test.size;
  private readonly exit: ExitSlot;

  constructor(exit: ExitSlot) {
    this.exit = exit;
  }

  read(_offset: number, size: AccessSize): bigint | null {
    return size === 2 || size === 4 ? 0n : null;
  }

  write(offset: number, size: AccessSize, value: bigint): boolean {
    if (size !== 2 && size !== 4) return false;
    if (offset !== 0) return true;
    const v = Number(value & 0xffff_ffffn);
    const status = v & 0xffff;
    const code = v >>> 16;
    if (status === 0x5555) this.exit.request(EXIT_REASON.POWEROFF, 0);
    else if (status === 0x7777) this.exit.request(EXIT_REASON.RESET, 0);
    else if (status === 0x3333) this.exit.request(EXIT_REASON.FAIL, code);
    return true;
  }
}
