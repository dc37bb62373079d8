// Core-Local Interruptor, `sifive,clint0` layout (the ACLINT MSWI + MTIMER
// pair at QEMU virt's addresses, RISC-V ACLINT spec 1.0 §2–3):
//   0x0000 + 4h  msip[h]      bit 0 drives hart h's MSIP
//   0x4000 + 8h  mtimecmp[h]  MTIP is raised by the hart itself when mtime >= mtimecmp
//   0xbff8       mtime        TIMEBASE_HZ ticks from HartSignals.nowTicks()
// All of it lives in HartSignals, so the model itself keeps no state.
// OpenSBI accesses mtimecmp/mtime with 8-byte accesses on rv64 and 4-byte
// halves in some paths; both are accepted.

import type { AccessSize, MmioDevice } from '../bus.ts';
import { MMIO } from '../layout.ts';
import { MIP, type HartSignals } from '../signals.ts';

const MSIP_BASE = 0x0;
const MTIMECMP_BASE = 0x4000;
const MTIME = 0xbff8;

export class Clint implements MmioDevice {
  readonly name = 'clint';
  readonly base = MMIO.clint.base;
  readonly size = MMIO.clint.size;
  private readonly signals: HartSignals;

  constructor(signals: HartSignals) {
    this.signals = signals;
  }

  read(offset: number, size: AccessSize): bigint | null {
    if (size !== 4 && size !== 8) return null;
    if ((offset & (size - 1)) !== 0) return null;
    const h = this.signals.harts;
    if (offset >= MSIP_BASE && offset < MSIP_BASE + 4 * h) {
      if (size !== 4) return null;
      return (this.signals.irq((offset - MSIP_BASE) >> 2) & MIP.MSIP) !== 0 ? 1n : 0n;
    }
    if (offset >= MTIMECMP_BASE && offset < MTIMECMP_BASE + 8 * h) {
      return slice(this.signals.timecmp((offset - MTIMECMP_BASE) >> 3), offset & 7, size);
    }
    if (offset >= MTIME && offset < MTIME + 8) return slice(this.signals.nowTicks(), offset & 7, size);
    return 0n; // reserved space inside the window reads as zero (as QEMU's ACLINT)
  }

  write(offset: number, size: AccessSize, value: bigint): boolean {
    if (size !== 4 && size !== 8) return false;
    if ((offset & (size - 1)) !== 0) return false;
    const h = this.signals.harts;
    if (offset >= MSIP_BASE && offset < MSIP_BASE + 4 * h) {
      if (size !== 4) return false;
      this.signals.setLevel((offset - MSIP_BASE) >> 2, MIP.MSIP, (value & 1n) !== 0n);
      return true;
    }
    if (offset >= MTIMECMP_BASE && offset < MTIMECMP_BASE + 8 * h) {
      const hart = (offset - MTIMECMP_BASE) >> 3;
      const v = size === 8 ? value : merge(this.signals.timecmp(hart), offset & 7, value);
      this.signals.setTimecmp(hart, v);
      // A new compare value re-evaluates MTIP: lower it now; the hart raises it again when due.
      this.signals.lower(hart, MIP.MTIP);
      return true;
    }
    // mtime is read-only here: every hart derives time from the one host clock.
    return true;
  }
}

function slice(v: bigint, byteOffset: number, size: AccessSize): bigint {
  const shifted = v >> BigInt(byteOffset * 8);
  return size === 8 ? BigInt.asUintN(64, shifted) : shifted & 0xffff_ffffn;
}

function merge(old: bigint, byteOffset: number, value: bigint): bigint {
  const v = value & 0xffff_ffffn;
  return byteOffset === 0 ? (old & 0xffff_ffff_0000_0000n) | v : (old & 0xffff_ffffn) | (v << 32n);
}
