// virtio-iommu's registration with the orchestrator (`@vmm/iommu/kind`):
// what differs for the IOMMU on the generic vhost-user device path.

import { fileURLToPath } from 'node:url';
import { protocolFeatureBit, VhostUserProtocolFeature, type DeviceKind, type OptionDef } from '@vmm/core';
import { CFG, VIRTIO_ID_IOMMU } from './spec.ts';

/** vmm-iommu's options: the orchestrator's `--device virtio-iommu,…` and vmm-iommu's own argv. */
export const IOMMU_OPTIONS: readonly OptionDef[] = [
  { name: 'endpoints', type: 'string', required: true, maxBytes: 1024, help: 'endpoint ids the IOMMU manages, comma-separated (the ids in the device tree\'s iommus = <&viommu ID>)' },
  { name: 'table', type: 'string', help: 'file (on tmpfs) holding domains and mappings; kept across restarts (default: SOCKET.table)' },
  { name: 'bypass', type: 'bool', default: false, help: 'initial config bypass: endpoints not attached to a domain reach guest memory untranslated' },
  { name: 'max-domains', type: 'int', min: 1, max: 4096, default: 64, help: 'domains the table can hold' },
  { name: 'max-mappings', type: 'int', min: 16, max: 1 << 20, default: 65536, help: 'mappings the table can hold (32 bytes each)' },
];

export const iommuKind: DeviceKind = {
  name: 'virtio-iommu',
  aliases: ['virtio-iommu-device'],
  role: 'iommu',
  virtioId: VIRTIO_ID_IOMMU,
  configSize: CFG.size,
  maxQueueSize: 256,
  options: IOMMU_OPTIONS,
  main: fileURLToPath(new URL('./main.ts', import.meta.url)),
  queues: () => 2,
  // Requests in flight when the process dies are resubmitted; replaying one is harmless (execute.ts).
  protocolFeatures: protocolFeatureBit(VhostUserProtocolFeature.INFLIGHT_SHMFD),
  // A spare would take the table over (repair) while the live process still writes it.
  warmSpare: () => false,
  fixedOnReplace: ['endpoints', 'table'],
};
