// IOMMU fault injection inside vmm-blk (the orchestrator's `inject-fault
// kind=stray-dma | unmap-race` on a disk behind vmm-iommu). Both act on the
// next request that moves data, through the same translated GuestMemory
// every request uses, so what they show is what the real DMA path does:
//
// - stray-dma: that request's first data buffer is accessed at another
//   IOVA, outside the domain's mappings. The translator refuses it
//   (ERR_IOMMU_FAULT, recorded in the table: vmm-iommu reports it on the
//   event queue, virtio 1.2 §5.13.6.9), parseRequest turns the refused
//   buffer into VIRTIO_BLK_S_IOERR for that request only, and nothing is
//   read or written anywhere.
// - unmap-race: that request is held for `holdMs`, either after its
//   buffers were translated (phase after-translate: the views are taken)
//   or before (before-translate), while the orchestrator has vmm-iommu
//   UNMAP its first data buffer. Strict mode says how it ends: with the
//   views taken, the UNMAP waits for the request (the I/O completes into
//   memory that is still mapped, then the UNMAP completes); before
//   translation, the request finds the mapping gone and fails with IOERR.
//   The timestamps (CLOCK_MONOTONIC, comparable across processes) let the
//   caller check the order: no access after the UNMAP completed.

import type { ChainBuffers } from './request.ts';

export type RacePhase = 'after-translate' | 'before-translate';

/** The held request's first data buffer, as the guest gave it (an IOVA). */
export interface HeldRequest {
  iova: number;
  len: number;
  /** The device's access to it: 'write' for a read request (data into the guest). */
  access: 'read' | 'write';
  phase: RacePhase;
  heldNs: number;
}

export interface RaceResult {
  status: number;
  /** The request's last access to guest memory ended (its status byte written), or null when it never touched its buffers. */
  accessesEndedNs: number | null;
  /** The hold ended and the request went on. */
  resumedNs: number;
  error?: string;
}

/** CLOCK_MONOTONIC in ns (process.hrtime is system-wide on Linux), as a plain number for IPC. */
export const monotonicNs = (): number => Number(process.hrtime.bigint());

/** The first data buffer of a chain: a read's first device-writable one (before the status byte), else a write's first readable one after the header. */
function firstData(chain: ChainBuffers): { list: 'writable' | 'readable'; index: number } | null {
  if (chain.writable.length >= 2 && chain.writable[0]!.len > 0) return { list: 'writable', index: 0 };
  if (chain.readable.length >= 2 && chain.readable[1]!.len > 0) return { list: 'readable', index: 1 };
  return null;
}

export class DmaFaults {
  /** The IOVA the next data request's first buffer is accessed at instead (stray-dma), or null. */
  stray: number | null = null;
  #race: { holdMs: number; phase: RacePhase; held: (h: HeldRequest) => void } | null = null;
  #result: Promise<RaceResult> | null = null;
  #settle: ((r: RaceResult) => void) | null = null;

  /** Arms stray-dma: the next request that moves data reaches for `iova` instead of its first data buffer. */
  armStray(iova: number): string {
    if (!Number.isSafeInteger(iova) || iova < 0) throw new RangeError(`stray-dma: iova=${String(iova)} is not an address`);
    this.stray = iova;
    return `the next data request accesses IOVA 0x${iova.toString(16)} instead of its first buffer`;
  }

  /** Arms unmap-race; resolves once the next data request is held, with its first data buffer. */
  armRace(holdMs: number, phase: RacePhase): Promise<HeldRequest> {
    if (!Number.isInteger(holdMs) || holdMs < 1 || holdMs > 4000) throw new RangeError(`unmap-race: hold-ms=${String(holdMs)} must be 1..4000 (below vmm-iommu's grace timeout)`);
    if (this.#race || this.#settle) throw new RangeError('unmap-race: a race is already armed or running');
    return new Promise((resolve) => {
      this.#race = { holdMs, phase, held: resolve };
      this.#result = new Promise((r) => (this.#settle = r));
    });
  }

  /** How the raced request ended (resolves once it has). */
  raceResult(): Promise<RaceResult> {
    if (!this.#result) return Promise.reject(new RangeError('unmap-race: no race was armed'));
    return this.#result;
  }

  /** stray-dma: the chain to parse, with its first data buffer moved to the stray IOVA (once). */
  displace(chain: ChainBuffers): ChainBuffers {
    if (this.stray === null) return chain;
    const at = firstData(chain);
    if (!at) return chain;
    const iova = this.stray;
    this.stray = null;
    const list = chain[at.list].map((s, i) => (i === at.index ? { ...s, addr: iova as typeof s.addr } : s));
    return { ...chain, [at.list]: list };
  }

  /** unmap-race: whether this chain is the one to hold, and how. */
  takeRace(chain: ChainBuffers): { holdMs: number; phase: RacePhase; held: HeldRequest } | null {
    const r = this.#race;
    if (!r) return null;
    const at = firstData(chain);
    if (!at) return null;
    this.#race = null;
    const seg = chain[at.list][at.index]!;
    const held: HeldRequest = { iova: Number(seg.addr), len: seg.len, access: at.list === 'writable' ? 'write' : 'read', phase: r.phase, heldNs: monotonicNs() };
    r.held(held);
    return { holdMs: r.holdMs, phase: r.phase, held };
  }

  /** unmap-race: the held request is over. */
  finishRace(result: RaceResult): void {
    this.#settle?.(result);
    this.#settle = null;
  }
}
