// Split virtqueue, device side and driver side (virtio 1.2 §2.7).
//
// The guest (or a frontend acting as driver) is hostile: every descriptor
// field is validated once, when the chain is parsed in pop(), before any I/O
// (STYLE.md §2-3). The ring index words are shared with another process or
// thread, so they are read and published with Atomics (sequentially
// consistent, which also gives the full barriers virtio asks for between
// publishing an index and reading the other side's event index, §2.7.7.2,
// §2.7.10).

import { VmmError } from './errors.ts';
import { GuestMemoryError, guestAddress, type GuestAddress, type GuestMemory, type RangeViews } from './memory.ts';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** Split rings have at most 32768 entries (§2.7). */
export const MAX_QUEUE_SIZE = 32768;
const DESC_SIZE = 16;

export class VirtqueueError extends VmmError {
  /** The chain head that was consumed from the avail ring, when known (so the device can still return it as used with length 0). */
  readonly head: number | undefined;
  constructor(message: string, code: string, head?: number, cause?: unknown) {
    super(message, 'guest', code, cause === undefined ? undefined : { cause });
    this.head = head;
  }
}

/** Ring addresses and parameters as the driver configured them (§4.2.2 QueueDesc/QueueDriver/QueueDevice). */
export interface SplitQueueConfig {
  size: number;
  desc: GuestAddress | number;
  avail: GuestAddress | number;
  used: GuestAddress | number;
  /** VIRTIO_F_EVENT_IDX negotiated (§2.7.10). */
  eventIdx: boolean;
}

/** Byte sizes of the three parts (§2.7: desc 16·n, avail 6+2·n, used 6+8·n with the event fields). */
export function splitQueueSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: DESC_SIZE * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

/** Lay out a queue contiguously from `base` honouring the alignments of §2.7 (16, 2, 4). */
export function splitQueueLayout(base: number, size: number): { desc: number; avail: number; used: number; end: number } {
  const s = splitQueueSizes(size);
  const desc = Math.ceil(base / 16) * 16;
  const avail = desc + s.desc;
  const used = Math.ceil((avail + s.avail) / 4) * 4;
  return { desc, avail, used, end: used + s.used };
}

export interface Segment {
  addr: GuestAddress;
  len: number;
}

/** A parsed, validated descriptor chain: device-readable segments first, then device-writable ones (§2.7.4.2). */
export interface DescriptorChain {
  head: number;
  readable: Segment[];
  writable: Segment[];
  readableLen: number;
  writableLen: number;
}

export interface RawDescriptor {
  addr: bigint;
  len: number;
  flags: number;
  next: number;
}

function validateSize(size: number): void {
  if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
    throw new VirtqueueError(`queue size ${size} is not a power of 2 in [1, ${MAX_QUEUE_SIZE}]`, 'ERR_VIRTQ_SIZE');
  }
}

/**
 * Walk a descriptor chain starting at `head` (STYLE.md §2) and return its
 * data descriptors (indirect tables followed transparently); a plain loop
 * into an array rather than a generator, as it runs for every chain of
 * every queue. Typed errors on:
 * an index out of range, a loop, more descriptors than the table holds, a
 * device-readable descriptor after a device-writable one, total length above
 * 2^32-1, an indirect table inside an indirect table, an indirect length that
 * is 0 or not a multiple of 16, or INDIRECT together with NEXT (§2.7.5.3).
 */
export function walkChain(mem: GuestMemory, table: DataView, size: number, head: number, visited: Uint32Array, stamp: number): RawDescriptor[] {
  const out: RawDescriptor[] = [];
  let tbl = table;
  let n = size;
  let idx = head;
  let count = 0;
  let indirect = false;
  let sawWrite = false;
  let total = 0;
  let visitedIndirect: Uint8Array | null = null;
  for (;;) {
    if (idx >= n) throw new VirtqueueError(`descriptor index ${idx} out of range (table of ${n})${indirect ? ' in indirect table' : ''}`, 'ERR_VIRTQ_DESC_INDEX', head);
    if (indirect) {
      if (visitedIndirect![idx]) throw new VirtqueueError(`descriptor loop at indirect index ${idx}`, 'ERR_VIRTQ_LOOP', head);
      visitedIndirect![idx] = 1;
    } else {
      if (visited[idx] === stamp) throw new VirtqueueError(`descriptor loop at index ${idx}`, 'ERR_VIRTQ_LOOP', head);
      visited[idx] = stamp;
    }
    if (++count > n) throw new VirtqueueError(`chain longer than ${n} descriptors`, 'ERR_VIRTQ_CHAIN_TOO_LONG', head);
    const o = idx * DESC_SIZE;
    const addr = tbl.getBigUint64(o, true);
    const len = tbl.getUint32(o + 8, true);
    const flags = tbl.getUint16(o + 12, true);
    const next = tbl.getUint16(o + 14, true);
    if (flags & VIRTQ_DESC_F_INDIRECT) {
      if (indirect) throw new VirtqueueError('indirect descriptor inside an indirect table', 'ERR_VIRTQ_INDIRECT', head);
      if (flags & VIRTQ_DESC_F_NEXT) throw new VirtqueueError(`descriptor ${idx} has both INDIRECT and NEXT`, 'ERR_VIRTQ_INDIRECT', head);
      if (len === 0 || len % DESC_SIZE !== 0 || len / DESC_SIZE > MAX_QUEUE_SIZE) throw new VirtqueueError(`indirect table length ${len} is not a non-zero multiple of 16 up to ${MAX_QUEUE_SIZE} entries`, 'ERR_VIRTQ_INDIRECT', head);
      let pieces: Uint8Array[];
      try {
        pieces = mem.slices(guestAddress(addr), len, 'read');
      } catch (e) {
        throw new VirtqueueError(`indirect table at 0x${addr.toString(16)}+${len} is outside guest memory`, 'ERR_VIRTQ_BUFFER_RANGE', head, e);
      }
      // One contiguous piece: read in place; otherwise (rare, IOMMU page split) copy.
      const bytes = pieces.length === 1 ? pieces[0]! : concat(pieces, len);
      tbl = new DataView(bytes.buffer, bytes.byteOffset, len);
      n = len / DESC_SIZE;
      idx = 0;
      count = 0;
      indirect = true;
      visitedIndirect = new Uint8Array(n);
      continue;
    }
    const write = (flags & VIRTQ_DESC_F_WRITE) !== 0;
    if (!write && sawWrite) throw new VirtqueueError(`device-readable descriptor ${idx} after a device-writable one`, 'ERR_VIRTQ_READ_AFTER_WRITE', head);
    sawWrite ||= write;
    total += len;
    if (total > 0xffff_ffff) throw new VirtqueueError(`chain total length ${total} exceeds 2^32-1`, 'ERR_VIRTQ_LENGTH', head);
    out.push({ addr, len, flags, next });
    if (!(flags & VIRTQ_DESC_F_NEXT)) return out;
    idx = next;
  }
}

function concat(pieces: Uint8Array[], len: number): Uint8Array {
  const out = new Uint8Array(len);
  let o = 0;
  for (const p of pieces) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Device side of a split virtqueue: pop available chains, push used ones, decide when to notify. */
export class SplitQueue {
  readonly size: number;
  readonly eventIdx: boolean;
  private readonly mem: GuestMemory;
  private readonly desc: RangeViews;
  private readonly avail: RangeViews;
  private readonly used: RangeViews;
  private readonly visited: Uint32Array;
  private stamp = 0;
  /** Next avail ring slot to consume (free-running 16-bit). */
  lastAvail: number;
  /** Next used ring slot to fill (free-running 16-bit). */
  usedIdx: number;
  /** used.idx when the driver was last notified (or considered), for §2.7.10's wrap arithmetic. */
  private signalledUsed: number;
  /** setNotification(false): the device polls the ring and does not ask for kicks (pop() leaves avail_event alone). */
  private kicksOff = false;

  constructor(mem: GuestMemory, cfg: SplitQueueConfig, lastAvail = 0) {
    validateSize(cfg.size);
    this.size = cfg.size;
    this.eventIdx = cfg.eventIdx;
    this.mem = mem;
    const s = splitQueueSizes(cfg.size);
    try {
      this.desc = mem.rangeViews(cfg.desc, s.desc, 16, 'read');
      this.avail = mem.rangeViews(cfg.avail, s.avail, 2, 'read');
      this.used = mem.rangeViews(cfg.used, s.used, 4, 'write');
    } catch (e) {
      throw new VirtqueueError(`rings desc 0x${cfg.desc.toString(16)} avail 0x${cfg.avail.toString(16)} used 0x${cfg.used.toString(16)} (size ${cfg.size}) are not valid guest memory: ${(e as Error).message}`, 'ERR_VIRTQ_RING_ADDR', undefined, e);
    }
    this.visited = new Uint32Array(cfg.size);
    this.lastAvail = lastAvail & 0xffff;
    // After a (re)start the used ring is the driver's record of what completed.
    this.usedIdx = Atomics.load(this.used.u16, 1);
    this.signalledUsed = this.usedIdx;
  }

  /** avail.idx as the driver last published it. */
  availIdx(): number {
    return Atomics.load(this.avail.u16, 1);
  }

  /** Number of chains the driver made available that were not popped yet. */
  pending(): number {
    return (this.availIdx() - this.lastAvail) & 0xffff;
  }

  /**
   * Pop the next available chain, parsed and validated; null if none. A bad
   * chain throws VirtqueueError (with `head` when it was read); its avail
   * entry is consumed either way so the queue keeps moving.
   * With EVENT_IDX, when the ring is found empty avail_event is set to the
   * next slot and the index re-checked, so a kick cannot be missed (§2.7.10).
   */
  pop(): DescriptorChain | null {
    let avail = this.availIdx();
    if (avail === this.lastAvail) {
      if (!this.eventIdx || this.kicksOff) return null;
      this.setAvailEvent(this.lastAvail);
      avail = this.availIdx();
      if (avail === this.lastAvail) return null;
    }
    if (((avail - this.lastAvail) & 0xffff) > this.size) {
      throw new VirtqueueError(`avail.idx ${avail} is more than ${this.size} ahead of ${this.lastAvail}`, 'ERR_VIRTQ_AVAIL_IDX');
    }
    const head = this.avail.u16[2 + (this.lastAvail % this.size)]!;
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (this.eventIdx && !this.kicksOff) this.setAvailEvent(this.lastAvail);
    return this.parse(head);
  }

  /** Parse the chain at `head` (also used to resubmit inflight requests after a reconnect). */
  parse(head: number): DescriptorChain {
    if (head >= this.size) throw new VirtqueueError(`avail ring head ${head} out of range (size ${this.size})`, 'ERR_VIRTQ_DESC_INDEX');
    this.stamp = (this.stamp + 1) >>> 0;
    if (this.stamp === 0) {
      this.visited.fill(0);
      this.stamp = 1;
    }
    const chain: DescriptorChain = { head, readable: [], writable: [], readableLen: 0, writableLen: 0 };
    // Walk the whole chain first (structure, loops, lengths), then check every buffer against guest memory.
    const descs = walkChain(this.mem, this.desc.view, this.size, head, this.visited, this.stamp);
    for (const d of descs) {
      if (d.len === 0) continue;
      const write = (d.flags & VIRTQ_DESC_F_WRITE) !== 0;
      let addr: GuestAddress;
      try {
        addr = guestAddress(d.addr);
        // Validate the whole buffer now, before any I/O (STYLE.md §2).
        this.mem.check(addr, d.len, write ? 'write' : 'read');
      } catch (e) {
        if (!(e instanceof GuestMemoryError)) throw e;
        throw new VirtqueueError(`buffer 0x${d.addr.toString(16)}+${d.len} is outside guest memory`, 'ERR_VIRTQ_BUFFER_RANGE', head, e);
      }
      if (write) {
        chain.writable.push({ addr, len: d.len });
        chain.writableLen += d.len;
      } else {
        chain.readable.push({ addr, len: d.len });
        chain.readableLen += d.len;
      }
    }
    return chain;
  }

  /** Return a chain to the driver with `len` bytes written (§2.7.8), publishing used.idx. */
  pushUsed(head: number, len: number): void {
    const slot = this.usedIdx % this.size;
    // used ring: flags u16, idx u16, then {id u32, len u32}[size]: element i at u32 index 1 + 2i.
    this.used.u32[1 + 2 * slot] = head;
    this.used.u32[2 + 2 * slot] = len >>> 0;
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    Atomics.store(this.used.u16, 1, this.usedIdx);
  }

  /**
   * Should the device notify the driver now (§2.7.7.2, §2.7.10)? With
   * EVENT_IDX: vring_need_event(used_event, new, old) =
   * (u16)(new - used_event - 1) < (u16)(new - old), where old is used.idx at
   * the previous call. Without: unless the driver set NO_INTERRUPT.
   * Call once after a batch of pushUsed().
   */
  needsNotification(): boolean {
    const now = this.usedIdx;
    const old = this.signalledUsed;
    this.signalledUsed = now;
    if (now === old) return false;
    if (this.eventIdx) {
      const usedEvent = Atomics.load(this.avail.u16, 2 + this.size);
      return ((now - usedEvent - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    return (Atomics.load(this.avail.u16, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Ask for a kick when the driver adds the next chain beyond what is
   * available now (§2.7.10: avail_event = avail.idx), without popping. The
   * caller re-reads pending() afterwards, as a kick cannot be missed then.
   */
  armKick(): void {
    if (this.eventIdx) this.setAvailEvent(this.availIdx());
    else Atomics.store(this.used.u16, 0, 0);
  }

  /**
   * Ask the driver not to kick (NO_NOTIFY, §2.7.7.1) or to kick again. With
   * EVENT_IDX (§2.7.10) "off" leaves avail_event where it is, so the driver
   * kicks at most once more (vhost's vhost_disable_notify does the same), and
   * "on" sets it to the next slot; either way the caller re-reads pending()
   * after turning kicks back on, so a chain added meanwhile is not missed.
   */
  setNotification(enabled: boolean): void {
    this.kicksOff = !enabled;
    if (this.eventIdx) {
      if (enabled) this.setAvailEvent(this.lastAvail);
      return;
    }
    Atomics.store(this.used.u16, 0, enabled ? 0 : VIRTQ_USED_F_NO_NOTIFY);
  }

  private setAvailEvent(v: number): void {
    // avail_event follows the used ring elements: byte 4 + 8·size, u16 index 2 + 4·size.
    Atomics.store(this.used.u16, 2 + 4 * this.size, v);
  }
}

export interface DriverBuffer {
  addr: GuestAddress | number;
  len: number;
  /** Device-writable (VIRTQ_DESC_F_WRITE). */
  write: boolean;
}

/**
 * Driver side of a split virtqueue, for a vhost-user frontend that drives
 * real I/O itself (tests, benchmarks): places descriptors in its own guest
 * RAM, makes them available, and collects used entries.
 */
export class DriverQueue {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly cfg: SplitQueueConfig;
  private readonly mem: GuestMemory;
  private readonly desc: RangeViews;
  private readonly avail: RangeViews;
  private readonly used: RangeViews;
  private freeHead: number;
  private numFree: number;
  private readonly chainLen: Uint16Array;
  private readonly chainTail: Uint16Array;
  private availIdx = 0;
  private kickedAvail = 0;
  private lastUsed = 0;
  /** Indirect tables: where they live (guest address per descriptor slot). */
  private readonly indirectArea: number | undefined;
  private readonly indirectMax: number;

  /**
   * `indirect` optionally reserves guest memory for indirect tables: one
   * table of `maxEntries` descriptors per ring slot at `area + slot·16·maxEntries`.
   */
  constructor(mem: GuestMemory, cfg: SplitQueueConfig, indirect?: { area: GuestAddress | number; maxEntries: number }) {
    validateSize(cfg.size);
    this.cfg = cfg;
    this.size = cfg.size;
    this.eventIdx = cfg.eventIdx;
    this.mem = mem;
    const s = splitQueueSizes(cfg.size);
    this.desc = mem.rangeViews(cfg.desc, s.desc, 16);
    this.avail = mem.rangeViews(cfg.avail, s.avail, 2);
    this.used = mem.rangeViews(cfg.used, s.used, 4);
    this.desc.bytes.fill(0);
    this.avail.bytes.fill(0);
    this.used.bytes.fill(0);
    for (let i = 0; i < this.size; i++) this.desc.view.setUint16(i * DESC_SIZE + 14, (i + 1) % this.size, true);
    this.freeHead = 0;
    this.numFree = this.size;
    this.chainLen = new Uint16Array(this.size);
    this.chainTail = new Uint16Array(this.size);
    this.indirectArea = indirect?.area;
    this.indirectMax = indirect?.maxEntries ?? 0;
  }

  get freeDescriptors(): number {
    return this.numFree;
  }

  /** Indices of the next avail slots, for tests that corrupt rings on purpose. */
  get nextAvailIdx(): number {
    return this.availIdx;
  }

  /**
   * Write a chain for `bufs` (readable ones first) and put its head in the
   * avail ring (not yet published: call publish()). Uses an indirect table
   * when asked and configured. Returns the head, or null when the ring is full.
   */
  add(bufs: DriverBuffer[], useIndirect = false): number | null {
    if (bufs.length === 0) throw new VirtqueueError('a chain needs at least one buffer', 'ERR_VIRTQ_EMPTY_CHAIN');
    if (useIndirect) {
      if (this.indirectArea === undefined || bufs.length > this.indirectMax) throw new VirtqueueError(`no indirect area for ${bufs.length} entries`, 'ERR_VIRTQ_INDIRECT');
      if (this.numFree < 1) return null;
      const head = this.takeFree(1);
      const table = this.indirectArea + head * DESC_SIZE * this.indirectMax;
      bufs.forEach((b, i) => {
        const o = table + i * DESC_SIZE;
        this.mem.writeU64(o, BigInt(b.addr));
        this.mem.writeU32(o + 8, b.len);
        this.mem.writeU16(o + 12, (b.write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < bufs.length ? VIRTQ_DESC_F_NEXT : 0));
        this.mem.writeU16(o + 14, i + 1);
      });
      this.writeDesc(head, BigInt(table), bufs.length * DESC_SIZE, VIRTQ_DESC_F_INDIRECT);
      this.chainLen[head] = 1;
      this.chainTail[head] = head;
      this.offer(head);
      return head;
    }
    if (this.numFree < bufs.length) return null;
    const head = this.freeHead;
    let idx = head;
    let last = head;
    for (let i = 0; i < bufs.length; i++) {
      const b = bufs[i]!;
      const next = this.desc.view.getUint16(idx * DESC_SIZE + 14, true);
      const more = i + 1 < bufs.length;
      this.writeDesc(idx, BigInt(b.addr), b.len, (b.write ? VIRTQ_DESC_F_WRITE : 0) | (more ? VIRTQ_DESC_F_NEXT : 0), more ? next : undefined);
      last = idx;
      idx = next;
    }
    this.freeHead = idx;
    this.numFree -= bufs.length;
    this.chainLen[head] = bufs.length;
    this.chainTail[head] = last;
    this.offer(head);
    return head;
  }

  private takeFree(n: number): number {
    const head = this.freeHead;
    let idx = head;
    for (let i = 0; i < n; i++) idx = this.desc.view.getUint16(idx * DESC_SIZE + 14, true);
    this.freeHead = idx;
    this.numFree -= n;
    return head;
  }

  private writeDesc(i: number, addr: bigint, len: number, flags: number, next?: number): void {
    const o = i * DESC_SIZE;
    this.desc.view.setBigUint64(o, addr, true);
    this.desc.view.setUint32(o + 8, len, true);
    this.desc.view.setUint16(o + 12, flags, true);
    if (next !== undefined) this.desc.view.setUint16(o + 14, next, true);
  }

  private offer(head: number): void {
    this.avail.u16[2 + (this.availIdx % this.size)] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  /** Publish everything added so far (avail.idx store, §2.7.13.3). */
  publish(): void {
    Atomics.store(this.avail.u16, 1, this.availIdx);
  }

  /** After publish(): must the driver kick? (§2.7.10 with avail_event, else !NO_NOTIFY). */
  kickNeeded(): boolean {
    const now = this.availIdx;
    const old = this.kickedAvail;
    this.kickedAvail = now;
    if (now === old) return false;
    if (this.eventIdx) {
      const availEvent = Atomics.load(this.used.u16, 2 + 4 * this.size);
      return ((now - availEvent - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    return (Atomics.load(this.used.u16, 0) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /** Collect one used entry and free its descriptors; null if none. With EVENT_IDX, asks for an interrupt at the next entry. */
  popUsed(): { head: number; len: number } | null {
    const idx = Atomics.load(this.used.u16, 1);
    if (idx === this.lastUsed) {
      if (!this.eventIdx) return null;
      // Ask for an interrupt at the next entry, then look again: one the
      // device published between our load and this store may have been
      // judged against the old used_event and not signalled (§2.7.10).
      Atomics.store(this.avail.u16, 2 + this.size, this.lastUsed);
      if (Atomics.load(this.used.u16, 1) === this.lastUsed) return null;
    }
    const slot = this.lastUsed % this.size;
    const head = this.used.u32[1 + 2 * slot]!;
    const len = this.used.u32[2 + 2 * slot]!;
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    if (this.eventIdx) Atomics.store(this.avail.u16, 2 + this.size, this.lastUsed);
    if (head >= this.size || this.chainLen[head] === 0) throw new VirtqueueError(`device returned head ${head} that is not in flight`, 'ERR_VIRTQ_USED_HEAD');
    // Put the chain back on the free list.
    this.desc.view.setUint16(this.chainTail[head]! * DESC_SIZE + 14, this.freeHead, true);
    this.freeHead = head;
    this.numFree += this.chainLen[head]!;
    this.chainLen[head] = 0;
    return { head, len };
  }

  /** Used entries the device published that popUsed() has not collected. */
  usedPending(): number {
    return (Atomics.load(this.used.u16, 1) - this.lastUsed) & 0xffff;
  }

  /** Suppress (false) or request (true) used-buffer notifications without EVENT_IDX (VIRTQ_AVAIL_F_NO_INTERRUPT). */
  setInterrupts(enabled: boolean): void {
    if (!this.eventIdx) Atomics.store(this.avail.u16, 0, enabled ? 0 : VIRTQ_AVAIL_F_NO_INTERRUPT);
  }

  /** Raw descriptor write for adversarial tests. */
  pokeDescriptor(i: number, d: RawDescriptor): void {
    this.writeDesc(i, d.addr, d.len, d.flags, d.next);
  }

  /** Raw avail entry write (and publish) for adversarial tests. */
  pokeAvail(head: number): void {
    this.offer(head);
    this.publish();
  }
}
