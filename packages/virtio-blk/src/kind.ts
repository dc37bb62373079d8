// virtio-blk's registration with the orchestrator (`@vmm/virtio-blk/kind`):
// what differs for a disk on the generic vhost-user device path. The
// orchestrator imports this entry only, never the package's internals.

import { fileURLToPath } from 'node:url';
import { IOMMU_ENDPOINT_OPTIONS } from '@vmm/iommu';
import { protocolFeatureBit, VhostUserProtocolFeature, type DeviceKind, type OptionDef } from '@vmm/core';
import { CFG } from './spec.ts';
import type { FaultCommand } from './faults.ts';
import { probeImageFormat, type ImageFormat } from './qcow2.ts';
import { BLOCKSTATS_QUERY } from './stats.ts';

export type { BlockDeviceStats } from './stats.ts';

/** vmm-blk's options: the orchestrator's `--device virtio-blk,…` / `device_add`, and vmm-blk's own argv. */
export const BLK_OPTIONS: readonly OptionDef[] = [
  { name: 'file', type: 'string', required: true, argvAliases: ['image'], help: 'disk image (raw or qcow2)' },
  { name: 'format', type: 'enum', values: ['raw', 'qcow2'], help: 'image format (default: probe the qcow2 magic)' },
  { name: 'readonly', type: 'bool', default: false, help: 'open the image read-only and offer VIRTIO_BLK_F_RO' },
  // At most 16: what a virtio-mmio slot carries (vcpu's transport MAX_QUEUES).
  { name: 'queues', type: 'int', min: 1, max: 16, default: 1, help: 'number of virtqueues' },
  { name: 'serial', type: 'string', maxBytes: 20, help: 'answer to GET_ID (virtio 1.2 §5.2.6)' },
  // Behind vmm-iommu (`vmm run --iommu` and device_add set these): DMA translated through its table.
  ...IOMMU_ENDPOINT_OPTIONS,
  // Behind a front-end's own vIOMMU (QEMU with an IOMMU, or our VhostUserDriver): vhost-user IOTLB messages.
  { name: 'iotlb', type: 'bool', default: false, help: "offer VIRTIO_F_ACCESS_PLATFORM and translate through the front-end's vhost-user IOTLB messages (its vIOMMU)" },
];

/** The format given, else the one vmm-blk probes (the qcow2 magic); undefined when the file cannot be read now. */
function imageFormat(file: string, format: unknown): ImageFormat | undefined {
  if (format !== undefined) return format as ImageFormat;
  try {
    return probeImageFormat(file);
  } catch {
    return undefined;
  }
}

export const blkKind: DeviceKind = {
  name: 'virtio-blk',
  aliases: ['virtio-blk-device'],
  role: 'blk',
  virtioId: 2, // virtio 1.2 §5
  configSize: CFG.size,
  maxQueueSize: 256,
  options: BLK_OPTIONS,
  main: fileURLToPath(new URL('./main.ts', import.meta.url)),
  queues: (o) => Number(o.queues ?? 1),
  // Requests in flight when the process dies are resubmitted from the inflight region.
  protocolFeatures: protocolFeatureBit(VhostUserProtocolFeature.INFLIGHT_SHMFD),
  // A qcow2 spare would hold metadata read before the crashed process changed it.
  // A file unreadable now gets no spare either.
  warmSpare: (o) => imageFormat(String(o.file), o.format) === 'raw',
  fixedOnReplace: ['queues'],
  faults: {
    'fail-requests': {
      help: 'the next count requests fail with VIRTIO_BLK_S_IOERR',
      options: [{ name: 'count', type: 'int', min: 0, max: 1_000_000, default: 1, help: 'requests to fail' }],
      message: (o): FaultCommand => ({ fault: 'fail-requests', count: Number(o.count) }),
    },
    enospc: {
      help: 'writes fail as if the host file system were full',
      options: [{ name: 'on', type: 'bool', default: true, help: 'on or off' }],
      message: (o): FaultCommand => ({ fault: 'enospc', on: o.on === true }),
    },
    // Behind the IOMMU only (the orchestrator drives these, with vmm-iommu; dma-faults.ts).
    'stray-dma': {
      help: 'the next data request accesses an IOVA outside its mappings: refused by the IOMMU, the request fails with VIRTIO_BLK_S_IOERR, the guest gets a fault event',
      options: [{ name: 'iova', type: 'int', min: 0, max: Number.MAX_SAFE_INTEGER, help: 'the address to reach for (default: the VM\'s canary page, which the guest never maps)' }],
      message: (o) => ({ fault: 'stray-dma', iova: Number(o.iova) }),
    },
    'unmap-race': {
      help: "vmm-iommu UNMAPs the next data request's buffer while the request is held in flight: it completes before the UNMAP does, or fails if not yet translated",
      options: [
        { name: 'hold-ms', type: 'int', min: 1, max: 4000, default: 500, help: 'how long the request is held' },
        { name: 'phase', type: 'enum', values: ['after-translate', 'before-translate'], default: 'after-translate', help: 'hold the request after its buffers were translated, or before' },
      ],
      message: (o) => ({ fault: 'unmap-race', holdMs: Number(o['hold-ms']), phase: String(o.phase) }),
    },
  },
  // QMP query-block (qapi/block-core.json BlockInfo, the fields a client reads).
  query: {
    command: 'query-block',
    row: (id, o) => ({
      device: id,
      qdev: id, // QEMU names a device that has an id by its id
      locked: false,
      removable: false,
      // With no format= QEMU names the driver it probed (QEMU 7.2: `drv: "qcow2"`); vmm-blk probes the same
      // magic. A file no longer readable (removed since it was opened) is reported as raw.
      inserted: { file: o.file, ro: o.readonly === true, drv: imageFormat(String(o.file), o.format) ?? 'raw', encrypted: false },
      type: 'unknown',
    }),
  },
  // The I/O counters vmm-blk keeps (stats.ts), answered in QMP's BlockDeviceStats shape.
  processQuery: { command: 'query-blockstats', message: BLOCKSTATS_QUERY },
};
