// A minimal virtio driver on top of VhostUserFrontend: owns a guest-RAM
// memfd, lays out split rings in it, and drives real I/O through any
// vhost-user back-end (ours or qemu-storage-daemon's) — for protocol tests
// and benchmarks; the orchestrator's guest does this job in a real VM.

import { bufferAddress, closeFd, eventfdCreate, eventfdRead, eventfdWrite, memfdCreate, mmapShared, watchReadable, type FdWatch } from '../ffi.ts';
import { GuestMemory, guestAddress, type GuestAddress } from '../memory.ts';
import { DriverQueue, splitQueueLayout, type DriverBuffer } from '../virtqueue.ts';
import { VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1 } from '../device.ts';
import { VmmError } from '../errors.ts';
import type { VhostUserFrontend } from './frontend.ts';
import { BACKEND_PROTOCOL_FEATURES } from './backend.ts';
import { IotlbPerm, IotlbType } from './iotlb.ts';

export interface DriverOptions {
  queues: number;
  queueSize: number;
  /** Negotiate VIRTIO_F_EVENT_IDX when the back-end offers it (default true). */
  eventIdx?: boolean;
  /** Device-specific feature bits to accept if offered. */
  deviceFeatures?: bigint;
  /** Protocol features to accept if offered (default: everything our back-end implements). */
  protocolFeatures?: bigint;
  /** Guest RAM size (default 64 MiB) and its guest-physical base (default 0x8000_0000). */
  ramSize?: number;
  ramBase?: number;
  /** Set up the inflight region (default: when INFLIGHT_SHMFD is negotiated). */
  inflight?: boolean;
  /** Max entries per indirect table (default 0: no indirect area). */
  indirectMax?: number;
  /**
   * Drive the back-end through a vIOMMU of this driver's own (DriverIommu):
   * negotiate VIRTIO_F_ACCESS_PLATFORM, open the back-end channel, give the
   * rings as IOVAs and answer the back-end's IOTLB misses (vhost-user IOTLB).
   */
  iotlb?: boolean;
}

/** Where DriverIommu hands out IOVAs: far from guest RAM, so an address used untranslated by mistake misses. */
const IOVA_BASE = 0x10_0000_0000;
const PAGE = 4096;

interface DriverMapping {
  iova: number;
  size: number;
  gpa: number;
  perm: number;
}

/**
 * The driver side of vhost-user IOTLB, what a front-end's vIOMMU is (QEMU's
 * intel-iommu or virtio-iommu): IOVA ranges mapped onto this driver's RAM.
 * Nothing is pushed ahead: the back-end asks with a miss and gets an
 * update; unmap() sends an invalidation and resolves once the back-end
 * acknowledged it (no request can use the old translation then).
 */
export class DriverIommu {
  private readonly d: VhostUserDriver;
  private readonly maps: DriverMapping[] = [];
  private next = IOVA_BASE;
  missesServed = 0;
  missesRefused = 0;

  constructor(d: VhostUserDriver) {
    this.d = d;
  }

  /** Map the pages holding [gpa, gpa+len) at fresh IOVAs (a guard page after each mapping); returns the IOVA of `gpa`. */
  map(gpa: number, len: number, perm: number = IotlbPerm.RW): number {
    const start = Math.floor(gpa / PAGE) * PAGE;
    const size = Math.ceil((gpa + len) / PAGE) * PAGE - start;
    const iova = this.next;
    this.next += size + PAGE;
    this.maps.push({ iova, size, gpa: start, perm });
    return iova + (gpa - start);
  }

  /** Remove the mapping holding `iova` and invalidate it in the back-end's IOTLB. */
  async unmap(iova: number): Promise<void> {
    const i = this.maps.findIndex((m) => iova >= m.iova && iova < m.iova + m.size);
    if (i < 0) throw new RangeError(`IOVA 0x${iova.toString(16)} is not mapped`);
    const [m] = this.maps.splice(i, 1);
    await this.d.frontend.iotlbMessage({ iova: BigInt(m!.iova), size: BigInt(m!.size), uaddr: 0n, perm: 0, type: IotlbType.INVALIDATE });
  }

  /** A miss from the back-end: the whole mapping holding `iova` goes back as one update, when the permission allows. */
  async serveMiss(iova: bigint, perm: number): Promise<boolean> {
    const a = Number(iova);
    const m = this.maps.find((x) => a >= x.iova && a < x.iova + x.size);
    if (m === undefined || (m.perm & perm) !== perm) {
      this.missesRefused++;
      return false;
    }
    const uaddr = this.d.userAddr + BigInt(m.gpa - this.d.ramBase);
    await this.d.frontend.iotlbMessage({ iova: BigInt(m.iova), size: BigInt(m.size), uaddr, perm: m.perm, type: IotlbType.UPDATE });
    this.missesServed++;
    return true;
  }
}

export interface Completion {
  head: number;
  len: number;
}

export class DriverQueueHandle {
  readonly index: number;
  readonly dq: DriverQueue;
  readonly kickFd: number;
  readonly callFd: number;
  kicks = 0;

  constructor(index: number, dq: DriverQueue, kickFd: number, callFd: number) {
    this.index = index;
    this.dq = dq;
    this.kickFd = kickFd;
    this.callFd = callFd;
  }

  /** Add a chain and publish it; kicks when the device asked for it. Returns the head, or null when the ring is full. */
  submit(bufs: DriverBuffer[], indirect = false): number | null {
    const head = this.dq.add(bufs, indirect);
    if (head === null) return null;
    this.dq.publish();
    if (this.dq.kickNeeded()) {
      eventfdWrite(this.kickFd);
      this.kicks++;
    }
    return head;
  }

  /** Used entries available now (no waiting). */
  poll(): Completion[] {
    const out: Completion[] = [];
    for (let u = this.dq.popUsed(); u !== null; u = this.dq.popUsed()) out.push(u);
    return out;
  }

  /** Wait for at least one used entry (the call eventfd), then return all available. */
  async wait(): Promise<Completion[]> {
    for (;;) {
      const got = this.poll();
      if (got.length > 0) return got;
      if (this.signalled) {
        this.signalled = false;
        continue;
      }
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        // One persistent watch per queue (not one per wait): it drains the eventfd on every signal.
        this.watch ??= watchReadable(this.callFd, () => {
          eventfdRead(this.callFd);
          const w = this.waiter;
          this.waiter = null;
          if (w) w();
          else this.signalled = true;
        });
      });
    }
  }

  private signalled = false;
  private waiter: (() => void) | null = null;
  private watch: FdWatch | null = null;

  /** Stop watching the call eventfd (the driver closes the fds). */
  close(): void {
    this.watch?.close();
    this.watch = null;
  }
}

export class VhostUserDriver {
  readonly frontend: VhostUserFrontend;
  readonly mem: GuestMemory;
  readonly memfd: number;
  readonly ramBase: number;
  readonly ramSize: number;
  /** Where this process mapped the RAM: the regions' user address, as QEMU reports its own mapping. */
  readonly userAddr: bigint;
  readonly queues: DriverQueueHandle[] = [];
  /** With `iotlb`: the vIOMMU buffers must be mapped through (their descriptors carry IOVAs). */
  readonly iommu: DriverIommu | null;
  features = 0n;
  private next: number;

  private constructor(frontend: VhostUserFrontend, memfd: number, mem: GuestMemory, ramBase: number, ramSize: number, userAddr: bigint, iotlb: boolean) {
    this.frontend = frontend;
    this.userAddr = userAddr;
    this.iommu = iotlb ? new DriverIommu(this) : null;
    this.memfd = memfd;
    this.mem = mem;
    this.ramBase = ramBase;
    this.ramSize = ramSize;
    this.next = ramBase;
  }

  /** Negotiate, send the memory table, set up inflight and `queues` rings, and enable them. */
  static async start(frontend: VhostUserFrontend, o: DriverOptions): Promise<VhostUserDriver> {
    const ramSize = o.ramSize ?? 64 << 20;
    const ramBase = o.ramBase ?? 0x8000_0000;
    const memfd = memfdCreate('vmm-driver-ram', ramSize);
    const buf = mmapShared(memfd, ramSize);
    // The region's "user address" is where this process mapped it, as QEMU reports its own mapping.
    const userAddr = BigInt(bufferAddress(buf));
    const mem = GuestMemory.fromBuffers([{ gpa: ramBase, buffer: buf, userAddr }]);
    const d = new VhostUserDriver(frontend, memfd, mem, ramBase, ramSize, userAddr, o.iotlb ?? false);
    const wanted = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | ((o.eventIdx ?? true) ? VIRTIO_F_EVENT_IDX : 0n) | (o.deviceFeatures ?? 0n) | (o.iotlb ? VIRTIO_F_ACCESS_PLATFORM : 0n);
    const neg = await frontend.negotiate(wanted, o.protocolFeatures ?? BACKEND_PROTOCOL_FEATURES);
    d.features = neg.features;
    const iommu = d.iommu;
    if (iommu) {
      if ((neg.features & VIRTIO_F_ACCESS_PLATFORM) === 0n) throw new VmmError('the back-end does not offer VIRTIO_F_ACCESS_PLATFORM: it cannot translate through IOTLB messages', 'config', 'ERR_VHOST_USER_FEATURES');
      frontend.onIotlbMiss = (iova, perm) => iommu.serveMiss(iova, perm);
      // Misses come over the back-end channel (BACKEND_REQ); without it the back-end could only wait for updates.
      await frontend.openBackendChannel();
    }
    await frontend.setMemTable([{ fd: memfd, guestPhysAddr: BigInt(ramBase), memorySize: BigInt(ramSize), userAddr, mmapOffset: 0n }]);
    if ((o.inflight ?? true) && (neg.protocolFeatures & (1n << 12n)) !== 0n) await frontend.setupInflight(o.queues, o.queueSize);
    const eventIdx = (neg.features & VIRTIO_F_EVENT_IDX) !== 0n;
    for (let i = 0; i < o.queues; i++) {
      const l = splitQueueLayout(d.alloc(splitQueueLayout(0, o.queueSize).end + 16, 4096), o.queueSize);
      const indirect = o.indirectMax ? { area: d.alloc(o.queueSize * 16 * o.indirectMax, 16), maxEntries: o.indirectMax } : undefined;
      const dq = new DriverQueue(mem, { size: o.queueSize, desc: l.desc, avail: l.avail, used: l.used, eventIdx }, indirect);
      const kick = eventfdCreate();
      const call = eventfdCreate();
      // Ring addresses are user addresses, or IOVAs behind the vIOMMU (vhost-user "IOMMU support").
      const ringIova = iommu ? iommu.map(l.desc, l.end - l.desc) : 0;
      const ua = (gpa: number) => (iommu ? BigInt(ringIova + (gpa - l.desc)) : userAddr + BigInt(gpa - ramBase));
      await frontend.setVringNum(i, o.queueSize);
      await frontend.setVringBase(i, 0);
      await frontend.setVringAddr({ index: i, flags: 0, desc: ua(l.desc), used: ua(l.used), avail: ua(l.avail), log: 0n });
      await frontend.setVringCall(i, call);
      await frontend.setVringKick(i, kick);
      if (neg.protocolFeatures !== 0n || (neg.features & (1n << 30n)) !== 0n) await frontend.setVringEnable(i, true);
      d.queues.push(new DriverQueueHandle(i, dq, kick, call));
    }
    return d;
  }

  /** Bump-allocate guest RAM (never freed; tests and benchmarks allocate their buffers once). */
  alloc(len: number, align = 8): GuestAddress {
    const a = Math.ceil(this.next / align) * align;
    if (a + len > this.ramBase + this.ramSize) throw new VmmError(`driver RAM exhausted allocating ${len} bytes`, 'config', 'ERR_DRIVER_RAM');
    this.next = a + len;
    return guestAddress(a);
  }

  queue(i: number): DriverQueueHandle {
    const q = this.queues[i];
    if (!q) throw new RangeError(`queue ${i} of ${this.queues.length}`);
    return q;
  }

  /** Reconnect the front-end (e.g. to a restarted back-end) and replay; ring bases come from the used rings. */
  async reconnect(socketPath?: string): Promise<void> {
    await this.frontend.reconnect({ socketPath, mem: this.mem });
  }

  close(): void {
    this.frontend.close();
    for (const q of this.queues) {
      q.close();
      closeFd(q.kickFd);
      closeFd(q.callFd);
    }
    closeFd(this.memfd);
  }
}
