// The device kinds the orchestrator can plug: one registration line per kind.
// Each registration comes from its package's `./kind` entry (never its
// internals); everything else is the generic vhost-user device (vhost-device.ts).

import { DeviceOptionError, type DeviceKind } from '@vmm/core';
import { iommuKind } from '@vmm/iommu/kind';
import { blkKind } from '@vmm/virtio-blk/kind';
import { netKind } from '@vmm/virtio-net/kind';

export const DEVICE_KINDS: readonly DeviceKind[] = [
  blkKind,
  iommuKind,
  netKind,
];

export class DeviceRegistry {
  readonly kinds: readonly DeviceKind[];

  constructor(kinds: readonly DeviceKind[] = DEVICE_KINDS) {
    this.kinds = kinds;
  }

  /** The kind for a driver name; an unknown one is a DeviceOptionError naming it and the known ones. */
  get(driver: string): DeviceKind {
    const k = this.kinds.find((x) => x.name === driver || x.aliases?.includes(driver));
    if (!k) throw new DeviceOptionError(`driver=${driver}: unknown device kind (${this.kinds.map((x) => x.name).join(', ')})`);
    return k;
  }
}
