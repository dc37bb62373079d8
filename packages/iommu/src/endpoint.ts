// A device process behind vmm-iommu: the three options every translating
// kind takes (vmm-blk, vmm-net; `vmm run --iommu` and device_add set them
// from the slot the device lands in) and the translator they give. Defined
// once here, so every kind spells, checks and documents them the same way.

import { ConfigError, DeviceOptionError, type OptionDef, type OptionValues } from '@vmm/core';
import { mapTableFile } from './file.ts';
import { READER_SLOTS } from './table.ts';
import { EndpointTranslator } from './translator.ts';

/** The option that says a kind can translate its DMA (the orchestrator looks for it by this name). */
export const IOMMU_TABLE_OPTION = 'iommu-table';

export const IOMMU_ENDPOINT_OPTIONS: readonly OptionDef[] = [
  { name: IOMMU_TABLE_OPTION, type: 'string', help: "vmm-iommu's table file: offer VIRTIO_F_ACCESS_PLATFORM and translate every DMA address through it" },
  { name: 'iommu-endpoint', type: 'int', min: 0, max: 0xffff_ffff, help: "this device's endpoint id at the IOMMU (with iommu-table)" },
  { name: 'iommu-reader', type: 'int', min: 0, max: READER_SLOTS - 1, help: `reader slot in the table, one per device (0..${READER_SLOTS - 1}, with iommu-table)` },
];

export interface EndpointOptions {
  table: string;
  endpoint: number;
  reader: number;
}

/** The endpoint options of a parsed option set, checked together; null when the device is not behind an IOMMU. */
export function endpointOptions(kind: string, o: OptionValues): EndpointOptions | null {
  const table = o[IOMMU_TABLE_OPTION];
  const endpoint = o['iommu-endpoint'];
  const reader = o['iommu-reader'];
  if (table === undefined) {
    if (endpoint !== undefined || reader !== undefined) throw new DeviceOptionError(`${kind}: iommu-endpoint and iommu-reader need iommu-table`);
    return null;
  }
  if (endpoint === undefined || reader === undefined) throw new DeviceOptionError(`${kind}: iommu-table=${String(table)} needs iommu-endpoint and iommu-reader`);
  return { table: String(table), endpoint: Number(endpoint), reader: Number(reader) };
}

/**
 * The translator a device process hands its vhost-user back-end (`dma`):
 * the table mapped, the endpoint checked. A table that cannot be used is a
 * configuration error (the process refuses to start, exit 2).
 */
export function openEndpoint(o: EndpointOptions): EndpointTranslator {
  try {
    return new EndpointTranslator(mapTableFile(o.table), o.endpoint, o.reader);
  } catch (e) {
    throw new ConfigError(`cannot use the IOMMU table ${o.table}: ${(e as Error).message}`, 'ERR_IOMMU_TABLE');
  }
}
