// Where the IOMMU goes in the machine (`vmm run --iommu`, guest sessions):
// vmm-iommu in the top virtio-mmio slot — the first boot device goes there
// and Linux probes it first — and every other slot its endpoint, with the
// slot's index as endpoint id, so a disk plugged later, at boot or hot, is
// behind it too.

import { join } from 'node:path';
import { parseDeviceOptions } from '@vmm/core';
import { IOMMU_TABLE_OPTION, iommuKind } from '@vmm/iommu/kind';
import { MMIO, RAM_BASE, type DtbIommu } from '@vmm/vcpu';
import type { DeviceSpec } from './vhost-device.ts';

export interface IommuPlan {
  /** The boot device to plug first. */
  spec: DeviceSpec;
  /** The device tree wiring (MachineConfig.iommu). */
  dtb: DtbIommu;
}

/**
 * The canary page (reserved in the DTB, so the guest never touches it):
 * 1 MiB into RAM, below the kernel (0x8020_0000) and clear of OpenSBI's
 * own reservation. Its address doubles as the default stray-dma IOVA, so
 * a stray access that escaped translation would land exactly there.
 * Linux allocates IOVAs top-down below 4 GiB, so it is never mapped in
 * practice; inject-fault checks that it is not.
 */
export const IOMMU_CANARY = { gpa: RAM_BASE + 0x10_0000, size: 4096 } as const;

/** `tableDir` holds the table file; it outlives every restart of vmm-iommu and goes with the VM. */
export function iommuPlan(tableDir: string): IommuPlan {
  const slot = MMIO.virtio.count - 1;
  const endpoints = Array.from({ length: slot }, (_, i) => ({ slot: i, id: i }));
  const options = parseDeviceOptions(iommuKind.name, iommuKind.options, { endpoints: endpoints.map((e) => e.id).join(','), table: join(tableDir, 'iommu.table') });
  return { spec: { kind: iommuKind, id: 'iommu0', options }, dtb: { slot, endpoints, canary: IOMMU_CANARY } };
}

/**
 * A device plugged into `slot` (at boot or by device_add, also a replaced
 * back-end) behind the IOMMU: a kind that can translate its DMA (it has
 * the `iommu-table` option) is given the table, the slot's endpoint id and
 * a reader slot of its own — the slot index: one device per slot, and a
 * device's spare or successor takes over its slot only once it is gone.
 * Other kinds, and the IOMMU's own slot, are plugged as they are (their DMA
 * stays untranslated: they do not offer VIRTIO_F_ACCESS_PLATFORM, so the
 * guest driver uses guest-physical addresses).
 */
export function behindIommu(plan: IommuPlan, spec: DeviceSpec, slot: number): DeviceSpec {
  if (!spec.kind.options.some((o) => o.name === IOMMU_TABLE_OPTION)) return spec;
  const ep = plan.dtb.endpoints.find((e) => e.slot === slot);
  if (!ep) return spec;
  return { ...spec, options: { ...spec.options, [IOMMU_TABLE_OPTION]: plan.spec.options.table!, 'iommu-endpoint': ep.id, 'iommu-reader': slot } };
}

/** The endpoint id of a plugged device's options, or null when it does not translate through the IOMMU. */
export function endpointOf(spec: DeviceSpec): number | null {
  const e = spec.options['iommu-endpoint'];
  return spec.options[IOMMU_TABLE_OPTION] === undefined || e === undefined ? null : Number(e);
}
