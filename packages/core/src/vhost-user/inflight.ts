// Inflight I/O tracking for split rings (vhost-user spec, "Inflight I/O
// tracking"): a shared-memory region, allocated by the back-end on
// GET_INFLIGHT_FD and kept by the front-end, in which the back-end records
// every request from pop to completion. A restarted back-end gets the same
// region back with SET_INFLIGHT_FD and resubmits what was in flight, so a
// crash loses or duplicates nothing.
//
// Per queue (libvhost-user's VuVirtqInflight):
//   u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//   DescStateSplit desc[desc_num] = { u8 inflight; u8 pad[5]; u16 next; u64 counter }
// Queues follow each other every align_up(16 + 16·desc_num, 64) bytes.

import { VmmError } from '../errors.ts';

export const INFLIGHT_VERSION = 1;
const HDR = 16;
const DESC = 16;

export function inflightQueueStride(queueSize: number): number {
  return Math.ceil((HDR + DESC * queueSize) / 64) * 64;
}

export function inflightRegionSize(numQueues: number, queueSize: number): number {
  return numQueues * inflightQueueStride(queueSize);
}

/** One queue's slice of the inflight region. */
export class InflightQueue {
  private readonly v: DataView;
  private readonly bytes: Uint8Array;
  private readonly descNum: number;
  private counter = 0n;

  constructor(buffer: ArrayBuffer, offset: number, queueSize: number) {
    const stride = inflightQueueStride(queueSize);
    if (offset + stride > buffer.byteLength) throw new VmmError(`inflight queue at ${offset}+${stride} exceeds the ${buffer.byteLength}-byte region`, 'protocol', 'ERR_INFLIGHT_RANGE');
    this.v = new DataView(buffer, offset, stride);
    this.bytes = new Uint8Array(buffer, offset, stride);
    this.descNum = queueSize;
  }

  /**
   * Called when the ring starts: returns the heads to resubmit (in submission
   * order) and the last_avail_idx to resume from, or null when the region is
   * fresh (version 0: first start or a VM reset) and was just initialised.
   * Implements the spec's reconnect steps: fix up the last batch if used_idx
   * lags the used ring, then collect inflight descriptors by counter.
   */
  recover(usedRingIdx: number): { resubmit: number[]; lastAvail: number } | null {
    const v = this.v;
    if (v.getUint16(8, true) === 0) {
      new Uint8Array(v.buffer, v.byteOffset, v.byteLength).fill(0);
      v.setUint16(8, INFLIGHT_VERSION, true);
      v.setUint16(10, this.descNum, true);
      this.counter = 0n;
      return null;
    }
    v.setUint16(10, this.descNum, true);
    if (v.getUint16(14, true) !== usedRingIdx) {
      // The last completion published the used ring but died before clearing its inflight flag.
      const last = v.getUint16(12, true);
      if (last < this.descNum) v.setUint8(HDR + last * DESC, 0);
      v.setUint16(14, usedRingIdx, true);
    }
    const pending: { head: number; counter: bigint }[] = [];
    let max = 0n;
    for (let i = 0; i < this.descNum; i++) {
      const o = HDR + i * DESC;
      const c = v.getBigUint64(o + 8, true);
      if (c > max) max = c;
      if (v.getUint8(o) === 1) pending.push({ head: i, counter: c });
    }
    pending.sort((a, b) => (a.counter < b.counter ? -1 : a.counter > b.counter ? 1 : 0));
    this.counter = max + 1n;
    return { resubmit: pending.map((p) => p.head), lastAvail: (usedRingIdx + pending.length) & 0xffff };
  }

  /** A chain was popped: mark it inflight with the next counter. */
  begin(head: number): void {
    const o = HDR + head * DESC;
    this.v.setBigUint64(o + 8, this.counter++, true);
    this.v.setUint8(o, 1);
  }

  /** Before publishing the used entry for `head` (batch of one). */
  beforeUsed(head: number): void {
    this.v.setUint16(12, head, true);
  }

  /** After used.idx was published as `usedIdx`: clear the flag, then record the index. */
  afterUsed(head: number, usedIdx: number): void {
    Atomics.store(this.bytes, HDR + head * DESC, 0);
    this.v.setUint16(14, usedIdx, true);
  }

  /** A popped chain goes back to the avail ring untouched (the ring was rewound over it): no longer inflight. */
  forget(head: number): void {
    Atomics.store(this.bytes, HDR + head * DESC, 0);
  }

  inflightHeads(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.descNum; i++) if (this.v.getUint8(HDR + i * DESC) === 1) out.push(i);
    return out;
  }
}
