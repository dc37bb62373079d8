// Goldfish RTC (`google,goldfish-rtc`, Android emulator goldfish docs and
// Linux drivers/rtc/rtc-goldfish.c), at 0x101000 with PLIC source 11:
//   0x00 TIME_LOW   reading it latches the high half for TIME_HIGH
//   0x04 TIME_HIGH
//   0x08 ALARM_LOW  writing it arms the alarm (with ALARM_HIGH written first)
//   0x0c ALARM_HIGH
//   0x10 IRQ_ENABLED
//   0x14 CLEAR_ALARM
//   0x18 ALARM_STATUS
//   0x1c CLEAR_INTERRUPT
// Time is host wall-clock time in nanoseconds since the Unix epoch plus an
// offset the guest sets by writing TIME_HIGH then TIME_LOW (as `hwclock -w`
// does), so guest `date` is right. The alarm is stored and reported but never
// fires (no guest we run uses it); documented as a limitation.

import type { AccessSize, MmioDevice } from '../bus.ts';
import { MAX_HARTS, MMIO } from '../layout.ts';

// BigInt64 cells
const Q_OFFSET = 0; // guest time - host time, ns
const Q_ALARM = 1;
const Q_LATCH = 2; // + hart: the high half latched by each hart's TIME_LOW read
const Q_WRITE_HIGH = Q_LATCH + MAX_HARTS; // + hart: TIME_HIGH / ALARM_HIGH staged by a write
// Int32 cells after the BigInt64 area
const I_BASE = (Q_WRITE_HIGH + MAX_HARTS) * 2;
const I_IRQ_ENABLED = I_BASE;
const I_ALARM_RUNNING = I_BASE + 1;

export function createRtcState(): SharedArrayBuffer {
  return new SharedArrayBuffer((I_BASE + 2) * 4);
}

// Wall-clock epoch ns at an instant of the monotonic clock, so reads have ns resolution and never go backwards.
const EPOCH_AT_HRTIME0 = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();

/** Host wall-clock time in ns since the Unix epoch. */
function hostNs(): bigint {
  return EPOCH_AT_HRTIME0 + process.hrtime.bigint();
}

export class GoldfishRtc implements MmioDevice {
  readonly name = 'rtc';
  readonly base = MMIO.rtc.base;
  readonly size = MMIO.rtc.size;
  private readonly q: BigInt64Array;
  private readonly i: Int32Array;

  constructor(state: SharedArrayBuffer) {
    this.q = new BigInt64Array(state, 0, Q_WRITE_HIGH + MAX_HARTS);
    this.i = new Int32Array(state);
  }

  now(): bigint {
    return hostNs() + Atomics.load(this.q, Q_OFFSET);
  }

  read(offset: number, size: AccessSize, hart: number): bigint | null {
    if (size !== 4 || (offset & 3) !== 0) return null;
    switch (offset) {
      case 0x00: {
        const t = BigInt.asUintN(64, this.now());
        Atomics.store(this.q, Q_LATCH + hart, t >> 32n);
        return t & 0xffff_ffffn;
      }
      case 0x04:
        return BigInt.asUintN(32, Atomics.load(this.q, Q_LATCH + hart));
      case 0x08:
        return BigInt.asUintN(32, Atomics.load(this.q, Q_ALARM));
      case 0x0c:
        return BigInt.asUintN(32, Atomics.load(this.q, Q_ALARM) >> 32n);
      case 0x10:
        return BigInt(Atomics.load(this.i, I_IRQ_ENABLED));
      case 0x18:
        return BigInt(Atomics.load(this.i, I_ALARM_RUNNING));
      default:
        return 0n;
    }
  }

  write(offset: number, size: AccessSize, value: bigint, hart: number): boolean {
    if (size !== 4 || (offset & 3) !== 0) return false;
    const v = value & 0xffff_ffffn;
    switch (offset) {
      case 0x00: {
        const want = (BigInt.asUintN(32, Atomics.load(this.q, Q_WRITE_HIGH + hart)) << 32n) | v;
        Atomics.store(this.q, Q_OFFSET, BigInt.asIntN(64, want - hostNs()));
        break;
      }
      case 0x04:
      case 0x0c:
        Atomics.store(this.q, Q_WRITE_HIGH + hart, v);
        break;
      case 0x08:
        Atomics.store(this.q, Q_ALARM, BigInt.asIntN(64, (BigInt.asUintN(32, Atomics.load(this.q, Q_WRITE_HIGH + hart)) << 32n) | v));
        Atomics.store(this.i, I_ALARM_RUNNING, 1);
        break;
      case 0x10:
        Atomics.store(this.i, I_IRQ_ENABLED, Number(v & 1n));
        break;
      case 0x14:
        Atomics.store(this.i, I_ALARM_RUNNING, 0);
        break;
      default:
        break;
    }
    return true;
  }
}
