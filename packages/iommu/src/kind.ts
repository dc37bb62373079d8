// virtio-iommu's registration with the orchestrator (`@vmm/iommu/kind`):
// what differs for the IOMMU on the generic vhost-user device path.

import { closeSync, fstatSync, openSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { mmapShared, munmapBuffer, protocolFeatureBit, VhostUserProtocolFeature, type DeviceKind, type OptionDef } from '@vmm/core';
import { POLL_US } from './device.ts';
import { CFG, VIRTIO_ID_IOMMU } from './spec.ts';
import { IommuTableView, summarize } from './table.ts';

/** For the orchestrator, which imports this entry only: the option that marks a kind able to translate its DMA. */
export { IOMMU_TABLE_OPTION } from './endpoint.ts';

/**
 * query-iommu's row: read straight from the table file (the same memory
 * vmm-iommu writes), so it answers even while vmm-iommu is restarting.
 */
export function queryTable(id: string, table: string | undefined): Record<string, unknown> {
  if (table === undefined) return { device: id, error: 'no --table given: the table is SOCKET.table of the device process' };
  let buf: ArrayBuffer | null = null;
  try {
    const fd = openSync(table, 'r+');
    try {
      buf = mmapShared(fd, fstatSync(fd).size);
    } finally {
      closeSync(fd);
    }
    return { device: id, table, ...summarize(new IommuTableView(buf)) };
  } catch (e) {
    return { device: id, table, error: (e as Error).message };
  } finally {
    if (buf) munmapBuffer(buf);
  }
}

/**
 * Whether `endpoint` reaches `iova` through the table right now (attached
 * and mapped there, or in bypass): what inject-fault kind=stray-dma checks
 * its target against, so a "stray" access is really outside the mappings.
 */
export function reachable(table: string, endpoint: number, iova: number): boolean {
  const fd = openSync(table, 'r+');
  let buf: ArrayBuffer | null = null;
  try {
    buf = mmapShared(fd, fstatSync(fd).size);
    const t = new IommuTableView(buf);
    const i = t.endpointIndex(endpoint);
    if (i < 0) return false;
    const d = t.endpointDomain(i);
    if (d < 0) return t.bypass;
    return t.domainState(d).bypass || t.lookup(d, iova) !== null;
  } finally {
    closeSync(fd);
    if (buf) munmapBuffer(buf);
  }
}

/**
 * A reader of the table file for the orchestrator (mapped on first use and
 * kept): the guest-physical address an endpoint's IOVA translates to now,
 * or null when it has none. The front-end needs it for a device that
 * negotiated ACCESS_PLATFORM, whose ring addresses are IOVAs: on a
 * back-end restart it reads each used ring's index from guest RAM.
 * Pure lookups: nothing is recorded as a fault, no reader slot is taken.
 */
export function tableLookup(table: string): (endpoint: number, iova: number) => number | null {
  let view: IommuTableView | null = null;
  return (endpoint, iova) => {
    if (view === null) {
      const fd = openSync(table, 'r+');
      try {
        view = new IommuTableView(mmapShared(fd, fstatSync(fd).size));
      } finally {
        closeSync(fd);
      }
    }
    const i = view.endpointIndex(endpoint);
    if (i < 0) return null;
    const d = view.endpointDomain(i);
    if (d < 0) return view.bypass ? iova : null;
    if (view.domainState(d).bypass) return iova;
    const m = view.lookup(d, iova);
    return m ? m.physStart + (iova - m.virtStart) : null;
  };
}

/** vmm-iommu's options: the orchestrator's `--device virtio-iommu,…` and vmm-iommu's own argv. */
export const IOMMU_OPTIONS: readonly OptionDef[] = [
  { name: 'endpoints', type: 'string', required: true, maxBytes: 1024, help: 'endpoint ids the IOMMU manages, comma-separated (the ids in the device tree\'s iommus = <&viommu ID>)' },
  { name: 'table', type: 'string', help: 'file (on tmpfs) holding domains and mappings; kept across restarts (default: SOCKET.table)' },
  { name: 'bypass', type: 'bool', default: false, help: 'initial config bypass: endpoints not attached to a domain reach guest memory untranslated' },
  { name: 'max-domains', type: 'int', min: 1, max: 4096, default: 64, help: 'domains the table can hold' },
  { name: 'max-mappings', type: 'int', min: 16, max: 1 << 20, default: 65536, help: 'mappings the table can hold (32 bytes each)' },
  { name: 'poll-us', type: 'int', min: 0, max: 100_000, default: POLL_US, help: 'busy-poll the request queue this many µs after it ran empty, kicks suppressed (0: wait for kicks only)' },
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
  // The event queue (virtio 1.2 §5.13.2): the driver keeps it full; the device answers only with a fault.
  heldQueues: () => [1],
  // Requests in flight when the process dies are resubmitted; replaying one is harmless (execute.ts).
  protocolFeatures: protocolFeatureBit(VhostUserProtocolFeature.INFLIGHT_SHMFD),
  // A spare would take the table over (repair) while the live process still writes it.
  warmSpare: () => false,
  fixedOnReplace: ['endpoints', 'table'],
  query: { command: 'query-iommu', row: (id, o) => queryTable(id, o.table === undefined ? undefined : String(o.table)) },
};
