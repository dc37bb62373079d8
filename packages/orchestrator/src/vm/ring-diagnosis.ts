// What a vhost-user device's rings look like from the front-end, for a
// stall report: the guest's avail.idx and used.idx (read from guest RAM,
// virtio 1.2 §2.7.6 and §2.7.8: both at byte 2 of their ring) and the
// requests the back-end's inflight region says it holds (vhost-user
// "Inflight I/O tracking"). Pure reads; nothing here changes a ring.
// A stall watchdog uses it after a back-end restart: outstanding work
// (avail ≠ used) with no completion for a few seconds is a lost request or
// a lost notification, reported with these figures instead of a silent hang.

import { fdSize, InflightQueue, inflightQueueStride, mmapShared, munmapBuffer } from '@vmm/core';

export interface RingState {
  queue: number;
  /** Chains the driver made available (free-running u16). */
  availIdx: number;
  /** Chains the device returned (free-running u16). */
  usedIdx: number;
  /** avail − used: requests the guest is waiting for. */
  outstanding: number;
  /** Heads the inflight region marks in flight (empty without a region). */
  inflight: number[];
}

export interface RingSource {
  queues: number;
  /** Ring addresses of queue q, or null when the driver has not set it up. */
  ring(q: number): { avail: bigint; used: bigint } | null;
  readGuestU16(gpa: bigint): number;
  /** The inflight region's fd (kept by the front-end) and its queue size, if one was set up. */
  inflight: { fd: number; queueSize: number } | null;
}

export function ringStates(src: RingSource): RingState[] {
  let region: ArrayBuffer | null = null;
  if (src.inflight) {
    try {
      region = mmapShared(src.inflight.fd, fdSize(src.inflight.fd));
    } catch {
      region = null; // a diagnosis must not fail; the rings' indices still say a lot
    }
  }
  const out: RingState[] = [];
  for (let q = 0; q < src.queues; q++) {
    const r = src.ring(q);
    if (r === null) continue;
    const availIdx = src.readGuestU16(r.avail + 2n);
    const usedIdx = src.readGuestU16(r.used + 2n);
    let inflight: number[] = [];
    const size = src.inflight?.queueSize ?? 0;
    if (region && size > 0 && (q + 1) * inflightQueueStride(size) <= region.byteLength) {
      inflight = new InflightQueue(region, q * inflightQueueStride(size), size).inflightHeads();
    }
    out.push({ queue: q, availIdx, usedIdx, outstanding: (availIdx - usedIdx) & 0xffff, inflight });
  }
  // Sound: the views made above are gone (inflightHeads copied the heads out).
  if (region) munmapBuffer(region);
  return out;
}

/** One line for an error message: "queue 0: avail 812 used 811 (1 outstanding), inflight [17]". */
export function describeRings(states: RingState[]): string {
  if (states.length === 0) return 'no ring is set up';
  return states.map((s) => `queue ${s.queue}: avail ${s.availIdx} used ${s.usedIdx} (${s.outstanding} outstanding), inflight [${s.inflight.join(',')}]`).join('; ');
}

/**
 * After a restart: if requests are outstanding and no completion arrives
 * within `ms`, call `onStall` once with the rings' state. A completion is a
 * used-buffer notification, or a ring's used index that moved: a driver
 * that polls a queue with its interrupts suppressed (Linux's virtio-iommu
 * request queue) gets no notification, and would otherwise be reported
 * stalled whenever a request happens to be outstanding at the deadline.
 * Returns a cancel function; call it at the next completion (or when the
 * device goes away).
 */
export function watchForStall(opts: { ms: number; completions: () => number; states: () => RingState[]; onStall: (states: RingState[]) => void }): () => void {
  const start = opts.completions();
  const used0 = new Map(opts.states().map((s) => [s.queue, s.usedIdx]));
  const timer = setTimeout(() => {
    if (opts.completions() !== start) return;
    const states = opts.states();
    if (states.some((s) => s.outstanding > 0 && used0.get(s.queue) === s.usedIdx)) opts.onStall(states);
  }, opts.ms);
  timer.unref();
  return () => clearTimeout(timer);
}
