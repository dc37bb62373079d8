// A paravirtual power button for QMP system_powerdown. QEMU's riscv virt
// machine has no ACPI and no gpio-keys, so system_powerdown reaches no
// stock driver there; here a one-register device that the guest kit's agent
// (orchestrator vm/guest-hotplug.ts) polls does the job, as an ACPI power
// button would on a PC:
//   +0x0  u32  reads 1 while a press is pending, 0 otherwise; any write clears it.
// It is not in the DTB (no kernel driver wants it), so the page stays
// unclaimed and busybox devmem may read it under STRICT_DEVMEM.

import type { AccessSize, MmioDevice } from '../bus.ts';
import { MMIO } from '../layout.ts';

export function createPowerButtonState(): SharedArrayBuffer {
  return new SharedArrayBuffer(4);
}

export class PowerButton implements MmioDevice {
  readonly name = 'power-button';
  readonly base = MMIO.power.base;
  readonly size = MMIO.power.size;
  private readonly cell: Int32Array;

  constructor(state: SharedArrayBuffer) {
    this.cell = new Int32Array(state);
  }

  /** The host presses the button (any thread). */
  press(): void { Atomics.store(this.cell, 0, 1); }
  get pressed(): boolean { return Atomics.load(this.cell, 0) !== 0; }

  read(offset: number, size: AccessSize): bigint | null {
    if (size !== 4 || (offset & 3) !== 0) return null;
    return offset === 0 ? BigInt(Atomics.load(this.cell, 0)) : 0n;
  }

  write(offset: number, size: AccessSize): boolean {
    if (size !== 4 || (offset & 3) !== 0) return false;
    if (offset === 0) Atomics.store(this.cell, 0, 0);
    return true;
  }
}
