// The back-end's device IOTLB for a front-end with a vIOMMU (vhost-user
// spec, "IOMMU support"; QEMU docs/interop/vhost-user.rst): once
// VIRTIO_F_ACCESS_PLATFORM (bit 33, "IOMMU_PLATFORM" there) is negotiated,
// ring and buffer addresses are I/O virtual addresses. The front-end sends
// VHOST_USER_IOTLB_MSG updates (IOVA range → its own user address, with a
// permission) and invalidations; a translation the back-end lacks is a miss
// it reports with VHOST_USER_BACKEND_IOTLB_MSG over the back-end channel,
// and the front-end answers with an update. Translations here are a cache
// of the front-end's, so an invalidation drops every entry it touches.
//
// Strict invalidation: the REPLY to an INVALIDATE is sent only when no
// request that began before it is still running (begin/end per request, as
// DmaTranslator asks), so after the ack no device code can use the old
// translation through a view it took earlier.

import { GuestMemoryError, type Access, type DmaTranslator, type GuestMemory } from '../memory.ts';

/** struct vhost_iotlb_msg's type field (linux/vhost_types.h). */
export const IotlbType = { MISS: 1, UPDATE: 2, INVALIDATE: 3, ACCESS_FAIL: 4 } as const;
/** struct vhost_iotlb_msg's perm field. */
export const IotlbPerm = { RO: 1, WO: 2, RW: 3 } as const;

export interface IotlbMsg {
  iova: bigint;
  size: bigint;
  uaddr: bigint;
  perm: number;
  type: number;
}

/** A translation the back-end does not have yet: the request waits for the front-end's update (not a fault). */
export class IotlbMissError extends GuestMemoryError {
  readonly iova: number;
  readonly access: Access;
  constructor(iova: number, len: number, access: Access) {
    super(`IOTLB miss: ${access} of ${len} bytes at IOVA 0x${iova.toString(16)} (asked the front-end for it)`, iova, len, 'ERR_IOTLB_MISS');
    this.iova = iova;
    this.access = access;
  }
}

/** True when `e` or one of its causes is an IOTLB miss (VirtqueueError wraps the memory error). */
export function isIotlbMiss(e: unknown): boolean {
  for (let x = e, depth = 0; x instanceof Error && depth < 4; x = x.cause, depth++) if (x instanceof IotlbMissError) return true;
  return false;
}

interface Entry {
  iova: number;
  /** Inclusive. */
  last: number;
  uaddr: bigint;
  perm: number;
}

const PAGE = 4096;
/** Misses asked for and not answered, remembered by page so a retried request does not ask again. */
const MAX_PENDING_MISSES = 1024;

export class DeviceIotlb implements DmaTranslator {
  /** Sorted by iova, never overlapping. */
  private entries: Entry[] = [];
  private readonly mem: GuestMemory;
  private readonly sendMiss: (iova: number, perm: number) => void;
  private readonly pendingMisses = new Set<number>();
  /** Pages whose miss the front-end refused (no translation there): the next access faults instead of asking again. */
  private readonly refused = new Set<number>();
  /** Requests in flight per epoch; an INVALIDATE moves the epoch and waits for the older ones. */
  private epoch = 1;
  private readonly inflight = new Map<number, number>();
  private waiters: { epoch: number; resolve: () => void }[] = [];
  misses = 0;
  updates = 0;
  invalidations = 0;

  /** `mem` is the physical view (user address → guest-physical); `sendMiss` reports a miss to the front-end. */
  constructor(mem: GuestMemory, sendMiss: (iova: number, perm: number) => void) {
    this.mem = mem;
    this.sendMiss = sendMiss;
  }

  get size(): number {
    return this.entries.length;
  }

  /** First index whose entry ends at or after `a`. */
  private from(a: number): number {
    let lo = 0;
    let hi = this.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.entries[mid]!.last < a) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Apply VHOST_IOTLB_UPDATE; throws a RangeError naming the bad field (the front-end gets a non-zero reply). */
  update(m: IotlbMsg): void {
    if (m.size === 0n) throw new RangeError('IOTLB update of size 0');
    if (m.iova + m.size - 1n > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`IOTLB update IOVA 0x${m.iova.toString(16)}+0x${m.size.toString(16)} reaches beyond 2^53`);
    if (m.perm < IotlbPerm.RO || m.perm > IotlbPerm.RW) throw new RangeError(`IOTLB update permission ${m.perm} is not RO (1), WO (2) or RW (3)`);
    const iova = Number(m.iova);
    const last = Number(m.iova + m.size - 1n);
    // An update over cached entries replaces them (a cache: the front-end's table is the truth).
    this.drop(iova, last);
    this.entries.splice(this.from(iova), 0, { iova, last, uaddr: m.uaddr, perm: m.perm });
    for (let p = Math.floor(iova / PAGE); p <= Math.floor(last / PAGE) && this.pendingMisses.size > 0; p++) this.pendingMisses.delete(p);
    this.updates++;
  }

  private drop(iova: number, last: number): number {
    const i = this.from(iova);
    let n = 0;
    while (i < this.entries.length && this.entries[i]!.iova <= last) {
      this.entries.splice(i, 1);
      n++;
    }
    return n;
  }

  /**
   * Apply VHOST_IOTLB_INVALIDATE: entries touching [iova, iova+size) are
   * gone at once; resolves when every request begun before is over (or
   * after `timeoutMs`, returning false).
   */
  async invalidate(iovaBig: bigint, sizeBig: bigint, timeoutMs: number): Promise<boolean> {
    if (sizeBig === 0n) return true;
    const iova = iovaBig > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(iovaBig);
    const endBig = iovaBig + sizeBig - 1n;
    const last = endBig > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(endBig);
    this.drop(iova, last);
    this.invalidations++;
    const epoch = ++this.epoch;
    if (this.quiescent(epoch)) return true;
    let timer: NodeJS.Timeout | undefined;
    const done = await Promise.race([
      new Promise<boolean>((resolve) => this.waiters.push({ epoch, resolve: () => resolve(true) })),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
    ]);
    clearTimeout(timer);
    return done;
  }

  private quiescent(epoch: number): boolean {
    for (const [e, n] of this.inflight) if (e < epoch && n > 0) return false;
    return true;
  }

  /** Forget everything (the front-end's session ended; a new one sends its translations again). */
  clear(): void {
    this.entries = [];
    this.pendingMisses.clear();
    this.refused.clear();
    for (const w of this.waiters) w.resolve();
    this.waiters = [];
  }

  begin(): number {
    this.inflight.set(this.epoch, (this.inflight.get(this.epoch) ?? 0) + 1);
    return this.epoch;
  }

  end(token: number): void {
    const n = this.inflight.get(token);
    if (n === undefined) return;
    if (n > 1) this.inflight.set(token, n - 1);
    else this.inflight.delete(token);
    if (this.waiters.length === 0) return;
    const ready = this.waiters.filter((w) => this.quiescent(w.epoch));
    this.waiters = this.waiters.filter((w) => !ready.includes(w));
    for (const w of ready) w.resolve();
  }

  translate(iova: number, len: number, access: Access): { gpa: number; len: number } {
    const e = this.entries[this.from(iova)];
    if (e === undefined || e.iova > iova) {
      if (this.refused.delete(Math.floor(iova / PAGE))) {
        throw new GuestMemoryError(`IOTLB: ${access} of ${len} bytes at IOVA 0x${iova.toString(16)}: the front-end has no translation there`, iova, len, 'ERR_IOMMU_FAULT');
      }
      this.miss(iova, access);
      throw new IotlbMissError(iova, len, access);
    }
    const want = access === 'write' ? IotlbPerm.WO : IotlbPerm.RO;
    if ((e.perm & want) === 0) {
      throw new GuestMemoryError(`IOTLB: ${access} of ${len} bytes at IOVA 0x${iova.toString(16)} is not allowed (the entry [0x${e.iova.toString(16)}, 0x${e.last.toString(16)}] has permission ${e.perm})`, iova, len, 'ERR_IOMMU_FAULT');
    }
    const n = Math.min(len, e.last - iova + 1);
    const ua = e.uaddr + BigInt(iova - e.iova);
    // The front-end's user address of guest memory → guest-physical (its memory table); a range outside it is a fault.
    const gpa = this.mem.userToGuest(ua, 1);
    return { gpa, len: n };
  }

  /**
   * The front-end answered a miss with a failure (REPLY_ACK non-zero: its
   * IOMMU has no translation there). The request that asked is retried and
   * now fails with ERR_IOMMU_FAULT instead of waiting for an update that
   * will not come.
   */
  refuse(iova: number): void {
    const page = Math.floor(iova / PAGE);
    this.pendingMisses.delete(page);
    if (this.refused.size >= MAX_PENDING_MISSES) this.refused.clear();
    this.refused.add(page);
  }

  private miss(iova: number, access: Access): void {
    this.misses++;
    const page = Math.floor(iova / PAGE);
    if (this.pendingMisses.has(page)) return;
    if (this.pendingMisses.size >= MAX_PENDING_MISSES) this.pendingMisses.clear();
    this.pendingMisses.add(page);
    this.sendMiss(iova, access === 'write' ? IotlbPerm.WO : IotlbPerm.RO);
  }
}
