// Where the IOMMU goes in the machine (`vmm run --iommu`, guest sessions):
// vmm-iommu in the top virtio-mmio slot — the first boot device goes there
// and Linux probes it first — and every other slot its endpoint, with the
// slot's index as endpoint id, so a disk plugged later, at boot or hot, is
// behind it too.

import { join } from 'node:path';
import { parseDeviceOptions } from '@vmm/core';
import { iommuKind } from '@vmm/iommu/kind';
import { MMIO, type DtbIommu } from '@vmm/vcpu';
import type { DeviceSpec } from './vhost-device.ts';

export interface IommuPlan {
  /** The boot device to plug first. */
  spec: DeviceSpec;
  /** The device tree wiring (MachineConfig.iommu). */
  dtb: DtbIommu;
}

/** `tableDir` holds the table file; it outlives every restart of vmm-iommu and goes with the VM. */
export function iommuPlan(tableDir: string): IommuPlan {
  const slot = MMIO.virtio.count - 1;
  const endpoints = Array.from({ length: slot }, (_, i) => ({ slot: i, id: i }));
  const options = parseDeviceOptions(iommuKind.name, iommuKind.options, { endpoints: endpoints.map((e) => e.id).join(','), table: join(tableDir, 'iommu.table') });
  return { spec: { kind: iommuKind, id: 'iommu0', options }, dtb: { slot, endpoints } };
}
