// A single-producer single-consumer frame ring in a memfd, shared by two
// processes (a NIC and its switch port), with eventfd doorbells both ways.
//
// Layout (little-endian; each index on its own cache line so producer and
// consumer do not share one):
//     0  magic "VNR1"   4 slots   8 slot capacity (bytes of frame per slot)
//    64  head   (producer: frames published, free-running u32)
//   128  tail   (consumer: frames released, free-running u32)
//   192  consumer asleep (1: wants a data doorbell)
//   256  producer asleep (1: wants a space doorbell)
//  4096  slots, each [u32 length][frame], stride rounded up to 64 bytes
//
// Doorbells follow virtio's event-suppression idea (virtio 1.2 §2.7.10): a
// side that finds the ring empty (consumer) or full (producer) raises its
// "asleep" flag, then looks again; the other side, after publishing, rings
// the eventfd only if the flag was up. Sequentially consistent Atomics on
// the shared Int32Array make "publish, then read the flag" and "raise the
// flag, then re-read the index" impossible to interleave into a lost wake-up.
//
// The peer is another process and is not trusted: a length or an index that
// cannot be right is counted as corruption and skipped, never followed.

import { closeFd, fdSize, memfdCreate, mmapShared, munmapBuffer } from '@vmm/core';
import { VmmError } from '@vmm/core';

const MAGIC = 0x31524e56; // "VNR1"
const I_MAGIC = 0;
const I_SLOTS = 1;
const I_CAP = 2;
const I_HEAD = 64 / 4;
const I_TAIL = 128 / 4;
const I_CONSUMER_ASLEEP = 192 / 4;
const I_PRODUCER_ASLEEP = 256 / 4;
const SLOTS_OFFSET = 4096;
const SLOT_HEADER = 4;

export const DEFAULT_RING_SLOTS = 256;

export class FrameRingError extends VmmError {
  constructor(message: string) {
    super(message, 'protocol', 'ERR_FRAME_RING');
  }
}

const stride = (cap: number): number => Math.ceil((SLOT_HEADER + cap) / 64) * 64;

export function frameRingSize(slots: number, capacity: number): number {
  return SLOTS_OFFSET + slots * stride(capacity);
}

export class FrameRing {
  readonly slots: number;
  readonly capacity: number;
  private readonly idx: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly view: DataView;
  private readonly stride: number;
  private readonly buf: ArrayBuffer;
  private unmapped = false;
  /** Frames the consumer found with an impossible length, or the ring with an impossible head. */
  corrupt = 0;

  private constructor(buf: ArrayBuffer) {
    this.buf = buf;
    this.idx = new Int32Array(buf, 0, 1024);
    this.bytes = new Uint8Array(buf);
    this.view = new DataView(buf);
    this.slots = this.idx[I_SLOTS]!;
    this.capacity = this.idx[I_CAP]!;
    this.stride = stride(this.capacity);
  }

  /** A new ring in a fresh memfd; the caller owns the fd (it passes it to the peer, then may close it). */
  static create(slots: number, capacity: number): { ring: FrameRing; fd: number } {
    if (!Number.isInteger(slots) || slots < 2 || (slots & (slots - 1)) !== 0 || slots > 65536) throw new RangeError(`ring slots ${slots}: a power of 2 from 2 to 65536`);
    if (!Number.isInteger(capacity) || capacity < 64 || capacity > 1 << 20) throw new RangeError(`ring slot capacity ${capacity}: 64 B to 1 MiB`);
    const size = frameRingSize(slots, capacity);
    const fd = memfdCreate('vmm-net-ring', size);
    const buf = mmapShared(fd, size);
    const idx = new Int32Array(buf, 0, 1024);
    idx[I_SLOTS] = slots;
    idx[I_CAP] = capacity;
    Atomics.store(idx, I_MAGIC, MAGIC);
    return { ring: new FrameRing(buf), fd };
  }

  /** Map a ring a peer created; its header is checked against the memfd's size. The fd is closed. */
  static map(fd: number): FrameRing {
    try {
      const size = fdSize(fd);
      if (size < SLOTS_OFFSET) throw new FrameRingError(`frame ring memfd of ${size} bytes is smaller than its header`);
      const buf = mmapShared(fd, size);
      const idx = new Int32Array(buf, 0, 4);
      const slots = idx[I_SLOTS]!;
      const cap = idx[I_CAP]!;
      if (Atomics.load(idx, I_MAGIC) !== MAGIC) throw new FrameRingError(`frame ring magic 0x${(idx[I_MAGIC]! >>> 0).toString(16)} is not VNR1`);
      if (slots < 2 || (slots & (slots - 1)) !== 0 || cap < 64 || cap > 1 << 20 || frameRingSize(slots, cap) > size) {
        throw new FrameRingError(`frame ring header (${slots} slots of ${cap} bytes) does not fit its ${size}-byte memfd`);
      }
      return new FrameRing(buf);
    } finally {
      closeFd(fd);
    }
  }

  private get head(): number {
    return Atomics.load(this.idx, I_HEAD) >>> 0;
  }

  private get tail(): number {
    return Atomics.load(this.idx, I_TAIL) >>> 0;
  }

  /** Frames published and not released. */
  get used(): number {
    return (this.head - this.tail) >>> 0;
  }

  // ---- producer side ----

  /**
   * The slot for the next frame (capacity bytes), or null when the ring is
   * full; then the producer is marked asleep and the consumer will ring the
   * space doorbell when it releases a slot.
   */
  reserve(): Uint8Array | null {
    if (this.used >= this.slots) {
      Atomics.store(this.idx, I_PRODUCER_ASLEEP, 1);
      if (this.used >= this.slots) return null;
      Atomics.store(this.idx, I_PRODUCER_ASLEEP, 0);
    }
    const o = SLOTS_OFFSET + (this.head % this.slots) * this.stride;
    return this.bytes.subarray(o + SLOT_HEADER, o + SLOT_HEADER + this.capacity);
  }

  /** Publish the reserved slot holding `len` bytes. */
  commit(len: number): void {
    const h = this.head;
    if (len < 0 || len > this.capacity) throw new RangeError(`frame of ${len} bytes in a ${this.capacity}-byte slot`);
    this.view.setUint32(SLOTS_OFFSET + (h % this.slots) * this.stride, len, true);
    Atomics.store(this.idx, I_HEAD, (h + 1) | 0);
  }

  /** After a batch of commits: does the consumer sleep and need the data doorbell? (Clears its flag.) */
  consumerNeedsKick(): boolean {
    return Atomics.load(this.idx, I_CONSUMER_ASLEEP) === 1 && Atomics.exchange(this.idx, I_CONSUMER_ASLEEP, 0) === 1;
  }

  // ---- consumer side ----

  /**
   * The oldest published frame, a view into the ring valid until release();
   * null when empty, and then the consumer is marked asleep (it wants the
   * data doorbell) unless `sleep` is false (a consumer that busy-polls).
   */
  peek(sleep = true): Uint8Array | null {
    for (;;) {
      let used = this.used;
      if (used === 0) {
        if (!sleep) return null;
        Atomics.store(this.idx, I_CONSUMER_ASLEEP, 1);
        used = this.used;
        if (used === 0) return null;
        Atomics.store(this.idx, I_CONSUMER_ASLEEP, 0);
      }
      if (used > this.slots) {
        // The producer wrote an index that cannot be: skip to it rather than read slots it never filled.
        this.corrupt++;
        Atomics.store(this.idx, I_TAIL, this.head | 0);
        continue;
      }
      const o = SLOTS_OFFSET + (this.tail % this.slots) * this.stride;
      const len = this.view.getUint32(o, true);
      if (len > this.capacity) {
        this.corrupt++;
        this.release();
        continue;
      }
      return this.bytes.subarray(o + SLOT_HEADER, o + SLOT_HEADER + len);
    }
  }

  release(): void {
    Atomics.store(this.idx, I_TAIL, (this.tail + 1) | 0);
  }

  /**
   * Unmap the ring. The owner guarantees nothing touches it afterwards (a
   * view handed out by reserve/peek would fault): RingPort calls it a turn
   * after closing, once every caller has seen the port closed.
   */
  unmap(): void {
    if (this.unmapped) return;
    this.unmapped = true;
    munmapBuffer(this.buf);
  }

  /** After a batch of releases: does the producer sleep and need the space doorbell? (Clears its flag.) */
  producerNeedsKick(): boolean {
    return Atomics.load(this.idx, I_PRODUCER_ASLEEP) === 1 && Atomics.exchange(this.idx, I_PRODUCER_ASLEEP, 0) === 1;
  }
}
