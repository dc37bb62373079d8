// The physical-address bus for MMIO: dispatches an access to the device
// whose window contains it. Anything unmapped, or an access that straddles a
// window's end, is an access fault (null / false), which the hart turns into
// a load/store access-fault exception (RISC-V privileged 1.12 §3.7.1).

import { VmmError } from '@vmm/core';
import type { AccessSize, MmioDevice, PhysBus } from '../bus.ts';

export class BusError extends VmmError {
  constructor(message: string) {
    super(message, 'config', 'ERR_BUS_OVERLAP');
  }
}

export class MmioBus implements PhysBus {
  private readonly devices: MmioDevice[];
  private last: MmioDevice | null = null;

  constructor(devices: MmioDevice[]) {
    this.devices = [...devices].sort((a, b) => a.base - b.base);
    for (let i = 1; i < this.devices.length; i++) {
      const prev = this.devices[i - 1]!;
      const cur = this.devices[i]!;
      if (prev.base + prev.size > cur.base) throw new BusError(`MMIO window ${cur.name}@0x${cur.base.toString(16)} overlaps ${prev.name}@0x${prev.base.toString(16)}+0x${prev.size.toString(16)}`);
    }
  }

  find(paddr: number, size: number): MmioDevice | null {
    // Consecutive accesses usually hit the same device (UART polling, PLIC claim/complete).
    const l = this.last;
    if (l !== null && paddr >= l.base && paddr + size <= l.base + l.size) return l;
    for (const d of this.devices) {
      if (paddr >= d.base && paddr + size <= d.base + d.size) {
        this.last = d;
        return d;
      }
    }
    return null;
  }

  load(paddr: number, size: AccessSize, hart: number): bigint | null {
    const d = this.find(paddr, size);
    return d ? d.read(paddr - d.base, size, hart) : null;
  }

  store(paddr: number, size: AccessSize, value: bigint, hart: number): boolean {
    const d = this.find(paddr, size);
    return d ? d.write(paddr - d.base, size, value, hart) : false;
  }
}
