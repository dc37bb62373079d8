// A single-producer single-consumer frame ring in a memfd, shared by two
// processes (a NIC and its switch port), with eventfd doorbells both ways.
//
// The data area is a byte ring of records, so a 64-byte frame takes 128
// bytes and a 64 KiB GSO super-frame what it needs: a ring of a few MiB
// holds tens of thousands of small frames (what a burst between two
// wake-ups of a busy machine needs) or hundreds of super-frames, where
// fixed slots of the largest frame held 256 of either in 16 MiB.
//
// Layout (little-endian; each index on its own cache line so producer and
// consumer do not share one):
//     0  magic "VNR2"   4 data area bytes (a power of 2)   8 capacity (largest frame)
//    64  head   (producer: bytes published, free-running u32)
//   128  tail   (consumer: bytes released, free-running u32)
//   192  consumer asleep (1: wants a data doorbell)
//   256  producer asleep (1: wants a space doorbell)
//  4096  data area: records [u32 length][frame], each rounded up to 64
//        bytes; a record never wraps: where the largest frame would not fit
//        before the end, the producer writes the length WRAP and goes on at 0.
//
// Doorbells follow virtio's event-suppression idea (virtio 1.2 §2.7.10): a
// side that finds the ring empty (consumer) or full (producer) raises its
// "asleep" flag, then looks again; the other side, after publishing, rings
// the eventfd only if the flag was up. Sequentially consistent Atomics on
// the shared Int32Array make "publish, then read the flag" and "raise the
// flag, then re-read the index" impossible to interleave into a lost wake-up.
//
// The peer is another process and is not trusted: a length or an index that
// cannot be right is counted as corruption and everything published up to
// the head is skipped (a bad length leaves no way to find the next record),
// never followed outside the data area.

import { closeFd, fdSize, memfdCreate, mmapShared, munmapBuffer } from '@vmm/core';
import { VmmError } from '@vmm/core';

const MAGIC = 0x32524e56; // "VNR2"
const I_MAGIC = 0;
const I_SIZE = 1;
const I_CAP = 2;
const I_HEAD = 64 / 4;
const I_TAIL = 128 / 4;
const I_CONSUMER_ASLEEP = 192 / 4;
const I_PRODUCER_ASLEEP = 256 / 4;
const DATA_OFFSET = 4096;
const RECORD_HEADER = 4;
const RECORD_ALIGN = 64;
/** A record length meaning "the rest of the data area is unused: continue at 0". */
const WRAP = 0xffff_ffff;
const MAX_RING_BYTES = 1 << 30;

/**
 * Default data area of each ring direction: the bytes 256 slots of the
 * largest frame took, so as many GSO super-frames fit as before (the worst
 * case of shared memory a port touches is unchanged) and ~130,000 small
 * frames instead of 256.
 */
export const DEFAULT_RING_BYTES = 16 << 20;

export class FrameRingError extends VmmError {
  constructor(message: string) {
    super(message, 'protocol', 'ERR_FRAME_RING');
  }
}

/** Bytes a record of `len` frame bytes takes. */
const recordSize = (len: number): number => Math.ceil((RECORD_HEADER + len) / RECORD_ALIGN) * RECORD_ALIGN;

/** The smallest data area for `capacity`: two largest records, rounded up to a power of 2. */
export function minRingBytes(capacity: number): number {
  return 2 ** Math.ceil(Math.log2(2 * recordSize(capacity)));
}

function checkGeometry(bytes: number, capacity: number): string | null {
  if (!Number.isInteger(capacity) || capacity < 64 || capacity > 1 << 20) return `ring capacity ${capacity}: 64 B to 1 MiB per frame`;
  if (!Number.isInteger(bytes) || bytes < minRingBytes(capacity) || bytes > MAX_RING_BYTES || (bytes & (bytes - 1)) !== 0) {
    return `ring of ${bytes} bytes: a power of 2 from ${minRingBytes(capacity)} (two ${capacity}-byte frames) to ${MAX_RING_BYTES}`;
  }
  return null;
}

export class FrameRing {
  /** Bytes of the data area. */
  readonly bytes: number;
  /** Largest frame a record holds. */
  readonly capacity: number;
  private readonly idx: Int32Array;
  private readonly data: Uint8Array;
  private readonly view: DataView;
  private readonly mask: number;
  private readonly maxRecord: number;
  private readonly buf: ArrayBuffer;
  private unmapped = false;
  /** Producer: bytes skipped by the reserved record (the unused end of the data area), 0 when it starts where the head is. */
  private skip = 0;
  /** Consumer: size of the record peek() returned, for release(). */
  private peeked = 0;
  /** Frames the consumer found with an impossible length, or the ring with an impossible head. */
  corrupt = 0;

  private constructor(buf: ArrayBuffer) {
    this.buf = buf;
    this.idx = new Int32Array(buf, 0, 1024);
    this.bytes = this.idx[I_SIZE]!;
    this.capacity = this.idx[I_CAP]!;
    this.data = new Uint8Array(buf, DATA_OFFSET, this.bytes);
    this.view = new DataView(buf, DATA_OFFSET, this.bytes);
    this.mask = this.bytes - 1;
    this.maxRecord = recordSize(this.capacity);
  }

  /** A new ring in a fresh memfd; the caller owns the fd (it passes it to the peer, then may close it). */
  static create(bytes: number, capacity: number): { ring: FrameRing; fd: number } {
    const bad = checkGeometry(bytes, capacity);
    if (bad !== null) throw new RangeError(bad);
    const size = DATA_OFFSET + bytes;
    const fd = memfdCreate('vmm-net-ring', size);
    const buf = mmapShared(fd, size);
    const idx = new Int32Array(buf, 0, 1024);
    idx[I_SIZE] = bytes;
    idx[I_CAP] = capacity;
    Atomics.store(idx, I_MAGIC, MAGIC);
    return { ring: new FrameRing(buf), fd };
  }

  /** Map a ring a peer created; its header is checked against the memfd's size. The fd is closed. */
  static map(fd: number): FrameRing {
    try {
      const size = fdSize(fd);
      if (size < DATA_OFFSET) throw new FrameRingError(`frame ring memfd of ${size} bytes is smaller than its header`);
      const buf = mmapShared(fd, size);
      const idx = new Int32Array(buf, 0, 4);
      const bytes = idx[I_SIZE]!;
      const cap = idx[I_CAP]!;
      if (Atomics.load(idx, I_MAGIC) !== MAGIC) throw new FrameRingError(`frame ring magic 0x${(idx[I_MAGIC]! >>> 0).toString(16)} is not VNR2`);
      const bad = checkGeometry(bytes, cap);
      if (bad !== null || DATA_OFFSET + bytes > size) throw new FrameRingError(`frame ring header (${bytes} bytes for frames up to ${cap}) does not fit its ${size}-byte memfd${bad === null ? '' : `: ${bad}`}`);
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

  /** Bytes published and not released (0: empty). */
  get used(): number {
    return (this.head - this.tail) >>> 0;
  }

  // ---- producer side ----

  /** Where the next record goes and what it skips, or null when the largest frame would not fit. */
  private room(): number | null {
    const h = this.head;
    const off = h & this.mask;
    const skip = off + this.maxRecord > this.bytes ? this.bytes - off : 0;
    return this.used + skip + this.maxRecord <= this.bytes ? skip : null;
  }

  /**
   * Room for the next frame (capacity bytes), or null when the ring is
   * full; then the producer is marked asleep and the consumer will ring the
   * space doorbell when it releases, unless `sleep` is false (a producer
   * that drops rather than waits, as the switch does). Asking again before
   * commit() returns the same bytes.
   */
  reserve(sleep = true): Uint8Array | null {
    let skip = this.room();
    if (skip === null) {
      if (!sleep) return null;
      Atomics.store(this.idx, I_PRODUCER_ASLEEP, 1);
      skip = this.room();
      if (skip === null) return null;
      Atomics.store(this.idx, I_PRODUCER_ASLEEP, 0);
    }
    this.skip = skip;
    const o = skip > 0 ? 0 : this.head & this.mask;
    return this.data.subarray(o + RECORD_HEADER, o + RECORD_HEADER + this.capacity);
  }

  /** Publish the reserved record holding `len` bytes. */
  commit(len: number): void {
    if (len < 0 || len > this.capacity) throw new RangeError(`frame of ${len} bytes in a ring of ${this.capacity}-byte frames`);
    const h = this.head;
    let o = h & this.mask;
    if (this.skip > 0) {
      this.view.setUint32(o, WRAP, true);
      o = 0;
    }
    this.view.setUint32(o, len, true);
    Atomics.store(this.idx, I_HEAD, (h + this.skip + recordSize(len)) | 0);
    this.skip = 0;
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
      const t = this.tail;
      const off = t & this.mask;
      // Published bytes are whole records at 64-byte boundaries, no more than the data area.
      if (used > this.bytes || used % RECORD_ALIGN !== 0 || off % RECORD_ALIGN !== 0) {
        this.skipAll();
        continue;
      }
      const len = this.view.getUint32(off, true);
      if (len === WRAP) {
        const rest = this.bytes - off;
        if (rest > used || off + this.maxRecord <= this.bytes) {
          // A wrap where the largest frame would still have fit, or past what was published.
          this.skipAll();
          continue;
        }
        Atomics.store(this.idx, I_TAIL, (t + rest) | 0);
        continue;
      }
      const size = recordSize(len);
      if (len > this.capacity || size > used || off + size > this.bytes) {
        this.skipAll();
        continue;
      }
      this.peeked = size;
      return this.data.subarray(off + RECORD_HEADER, off + RECORD_HEADER + len);
    }
  }

  /** Drop everything published: after a bad length there is no next record to find. */
  private skipAll(): void {
    this.corrupt++;
    Atomics.store(this.idx, I_TAIL, this.head | 0);
  }

  release(): void {
    if (this.peeked === 0) return;
    Atomics.store(this.idx, I_TAIL, (this.tail + this.peeked) | 0);
    this.peeked = 0;
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
