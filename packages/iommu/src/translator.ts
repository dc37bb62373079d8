// DMA translation for a device process behind the IOMMU: core's
// AddressTranslator over the shared table (read-only use), so a device's
// GuestMemory translates every ring and buffer address without the device
// code knowing (STYLE.md §1). A miss or a permission fault throws the
// typed ERR_IOMMU_FAULT error — the request fails, nothing outside the
// domain's mappings is touched — and is recorded in the table for
// vmm-iommu to report on the event queue (virtio 1.2 §5.13.6.9).

import { GuestMemoryError, type Access, type AddressTranslator } from '@vmm/core';
import {
  VIRTIO_IOMMU_FAULT_F_ADDRESS,
  VIRTIO_IOMMU_FAULT_F_READ,
  VIRTIO_IOMMU_FAULT_F_WRITE,
  VIRTIO_IOMMU_FAULT_R_DOMAIN,
  VIRTIO_IOMMU_FAULT_R_MAPPING,
} from './spec.ts';
import { M_READ, M_WRITE, READER_SLOTS, type IommuTableView } from './table.ts';

export class EndpointTranslator implements AddressTranslator {
  readonly table: IommuTableView;
  readonly endpoint: number;
  readonly #index: number;
  readonly #readerSlot: number;
  #hint = -1;
  /** Versions of the requests in flight → how many; in insertion order, which is version order (versions only grow). */
  readonly #inflight = new Map<number, number>();
  faults = 0;

  /**
   * `readerSlot` (0 … READER_SLOTS-1) is this device process's slot for
   * strict invalidation; each device process behind the IOMMU needs its own.
   */
  constructor(table: IommuTableView, endpoint: number, readerSlot: number) {
    const index = table.endpointIndex(endpoint);
    if (index < 0) throw new RangeError(`endpoint ${endpoint} is not managed by this IOMMU (it manages ${JSON.stringify(table.endpointIds())})`);
    if (!Number.isInteger(readerSlot) || readerSlot < 0 || readerSlot >= READER_SLOTS) throw new RangeError(`reader slot ${readerSlot} is outside 0..${READER_SLOTS - 1}`);
    this.table = table;
    this.endpoint = endpoint;
    this.#index = index;
    this.#readerSlot = readerSlot;
  }

  /**
   * A request starts using translations; returns the token to end() it
   * with. vmm-iommu holds back the completion of an UNMAP made after this
   * point until the request ends (strict mode). Each request counts on its
   * own: the reader slot holds the version of the oldest request still in
   * flight, so a device that is never idle does not hold every UNMAP back,
   * only those made while one of its requests was already running.
   */
  begin(): number {
    const v = this.#inflight.size === 0 ? this.table.enter(this.#readerSlot) : this.table.version;
    this.#inflight.set(v, (this.#inflight.get(v) ?? 0) + 1);
    return v;
  }

  end(token: number): void {
    const n = this.#inflight.get(token);
    if (n === undefined) return;
    if (n > 1) this.#inflight.set(token, n - 1);
    else this.#inflight.delete(token);
    const oldest = this.#inflight.keys().next();
    if (oldest.done) this.table.leave(this.#readerSlot);
    else this.table.hold(this.#readerSlot, oldest.value);
  }

  /** Requests begun and not ended. */
  get inFlight(): number {
    let n = 0;
    for (const c of this.#inflight.values()) n += c;
    return n;
  }

  translate(iova: number, len: number, access: Access): { gpa: number; len: number } {
    const d = this.table.endpointDomain(this.#index);
    if (d < 0) {
      if (this.table.bypass) return { gpa: iova, len };
      throw this.#fault(VIRTIO_IOMMU_FAULT_R_DOMAIN, iova, len, access, 'is not attached to a domain');
    }
    if (this.table.domainState(d).bypass) return { gpa: iova, len };
    const m = this.table.lookup(d, iova, this.#hint);
    if (!m) throw this.#fault(VIRTIO_IOMMU_FAULT_R_MAPPING, iova, len, access, 'has no mapping there');
    if ((m.flags & (access === 'write' ? M_WRITE : M_READ)) === 0) {
      throw this.#fault(VIRTIO_IOMMU_FAULT_R_MAPPING, iova, len, access, `may not ${access} there (mapping [0x${m.virtStart.toString(16)}, 0x${m.virtEnd.toString(16)}] is ${m.flags & M_READ ? 'r' : ''}${m.flags & M_WRITE ? 'w' : ''})`);
    }
    this.#hint = m.slot;
    return { gpa: m.physStart + (iova - m.virtStart), len: Math.min(len, m.virtEnd - iova + 1) };
  }

  #fault(reason: number, iova: number, len: number, access: Access, what: string): GuestMemoryError {
    this.faults++;
    const flags = VIRTIO_IOMMU_FAULT_F_ADDRESS | (access === 'write' ? VIRTIO_IOMMU_FAULT_F_WRITE : VIRTIO_IOMMU_FAULT_F_READ);
    this.table.recordFault({ endpoint: this.endpoint, reason, flags, address: iova });
    return new GuestMemoryError(`IOMMU fault: endpoint ${this.endpoint} ${what}: ${access} of ${len} bytes at IOVA 0x${iova.toString(16)}`, iova, len, 'ERR_IOMMU_FAULT');
  }
}
