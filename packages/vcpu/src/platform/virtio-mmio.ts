// virtio-mmio transport slots (virtio 1.2 §4.2.2), 8 × 0x1000 from
// 0x1000_1000 with PLIC sources 1..8, as QEMU virt declares them. Until a
// device is attached, a slot reads as an empty one: MagicValue "virt",
// Version 2, DeviceID 0 ("no device": the driver skips it, §4.2.3.1.1) and
// zero elsewhere; writes are ignored. The transport attaches a
// `VirtioMmioDeviceHook` to a slot to take over its register window.

import type { AccessSize, MmioDevice } from '../bus.ts';
import { MMIO } from '../layout.ts';
import type { IrqFn, KickFn, VirtioMmioState } from '../virtio-mmio/transport.ts';

export const VIRTIO_MMIO_MAGIC = 0x7472_6976; // "virt" little-endian
export const VIRTIO_MMIO_VERSION = 2;
const VENDOR_ID_QEMU = 0x554d_4551; // "QEMU", what QEMU's empty slots report too

/** What the virtio-mmio transport implements for one slot's register window. */
export interface VirtioMmioDeviceHook {
  read(offset: number, size: AccessSize, hart: number): bigint | null;
  write(offset: number, size: AccessSize, value: bigint, hart: number): boolean;
}

export class VirtioMmioSlot implements MmioDevice {
  readonly name: string;
  readonly base: number;
  readonly size = MMIO.virtio.size;
  readonly index: number;
  private hook: VirtioMmioDeviceHook | null = null;

  constructor(index: number) {
    if (!Number.isInteger(index) || index < 0 || index >= MMIO.virtio.count) throw new RangeError(`virtio-mmio slot must be 0..${MMIO.virtio.count - 1}, got ${index}`);
    this.index = index;
    this.base = MMIO.virtio.base + index * MMIO.virtio.size;
    this.name = `virtio-mmio@${this.base.toString(16)}`;
  }

  /** Route this slot's registers to a device transport (null: back to an empty slot). */
  attach(hook: VirtioMmioDeviceHook | null): void {
    this.hook = hook;
  }

  get attached(): boolean {
    return this.hook !== null;
  }

  read(offset: number, size: AccessSize, hart: number): bigint | null {
    if (this.hook) return this.hook.read(offset, size, hart);
    // Registers below the config space are 32-bit only (§4.2.2.2).
    if (offset < 0x100 && (size !== 4 || (offset & 3) !== 0)) return null;
    switch (offset) {
      case 0x000: return BigInt(VIRTIO_MMIO_MAGIC);
      case 0x004: return BigInt(VIRTIO_MMIO_VERSION);
      case 0x008: return 0n; // DeviceID 0: no device
      case 0x00c: return BigInt(VENDOR_ID_QEMU);
      default: return 0n;
    }
  }

  write(offset: number, size: AccessSize, value: bigint, hart: number): boolean {
    if (this.hook) return this.hook.write(offset, size, value, hart);
    if (offset < 0x100 && (size !== 4 || (offset & 3) !== 0)) return false;
    return true;
  }
}

/**
 * Adapts the shared virtio-mmio v2 register file (../virtio-mmio/transport.ts)
 * to a slot. Registers below the config space take 32-bit accesses only
 * (§4.2.2.2: anything else is an access fault here); the config space takes
 * 1-, 2-, 4- and 8-byte accesses, an 8-byte one as two 4-byte halves (§4.2.2.2
 * allows the driver to split it).
 */
export function transportHook(t: VirtioMmioState, kick: KickFn, irq: IrqFn): VirtioMmioDeviceHook {
  return {
    read(offset, size) {
      if (offset < 0x100) return size === 4 && (offset & 3) === 0 ? BigInt(t.read(offset, 4) >>> 0) : null;
      if (size === 8) return (BigInt(t.read(offset + 4, 4) >>> 0) << 32n) | BigInt(t.read(offset, 4) >>> 0);
      return BigInt(t.read(offset, size) >>> 0);
    },
    write(offset, size, value) {
      if (offset < 0x100) {
        if (size !== 4 || (offset & 3) !== 0) return false;
        t.write(offset, 4, Number(value & 0xffff_ffffn), kick, irq);
        return true;
      }
      if (size === 8) {
        t.write(offset, 4, Number(value & 0xffff_ffffn), kick, irq);
        t.write(offset + 4, 4, Number((value >> 32n) & 0xffff_ffffn), kick, irq);
        return true;
      }
      t.write(offset, size, Number(value & ((1n << BigInt(size * 8)) - 1n)), kick, irq);
      return true;
    },
  };
}
