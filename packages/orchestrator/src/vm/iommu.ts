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

/**
 * The boot devices behind the IOMMU: slots fill from the top, so the k-th
 * device after vmm-iommu lands in slot (IOMMU slot − 1 − k), whose endpoint
 * id that is. A kind that can translate its DMA (an `iommu-table` option)
 * is given the table, its endpoint id and a reader slot of its own; others
 * are plugged as they are (their DMA stays untranslated: they do not offer
 * VIRTIO_F_ACCESS_PLATFORM, so the guest driver uses guest-physical addresses).
 */
export function behindIommu(plan: IommuPlan, specs: readonly DeviceSpec[]): DeviceSpec[] {
  return specs.map((spec, k) => {
    if (!spec.kind.options.some((o) => o.name === 'iommu-table')) return spec;
    const endpoint = plan.dtb.slot - 1 - k;
    if (!plan.dtb.endpoints.some((e) => e.id === endpoint)) return spec;
    return { ...spec, options: { ...spec.options, 'iommu-table': plan.spec.options.table!, 'iommu-endpoint': endpoint, 'iommu-reader': k } };
  });
}
