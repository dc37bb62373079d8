// A small virtio-blk driver over core's VhostUserDriver: the guest side of
// virtio 1.2 §5.2.6 for tests and benchmarks. It can drive any
// vhost-user-blk back-end (vmm-blk or qemu-storage-daemon) with many
// requests in flight per queue.

import { eventfdRead, VhostUserDriver, VhostUserFrontend, waitReadable, type DriverQueueHandle, type GuestAddress, type Logger } from '@vmm/core';
import { CFG, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, bit } from './spec.ts';

export interface BlkClientOptions {
  queues?: number;
  queueSize?: number;
  ramSize?: number;
  log?: Logger;
}

export interface BlkBuffer {
  addr: GuestAddress | number;
  len: number;
  write: boolean;
}

interface QueueState {
  h: DriverQueueHandle;
  /** 17-byte request slots (16-byte header + status), free list. */
  free: number[];
  slotAddr: number;
  pending: Map<number, { slot: number; resolve: (status: number) => void }>;
  waiting: (() => void)[];
  pumping: boolean;
}

export class BlkClient {
  readonly driver: VhostUserDriver;
  readonly capacitySectors: number;
  readonly #queues: QueueState[];

  private constructor(driver: VhostUserDriver, capacitySectors: number, queues: QueueState[]) {
    this.driver = driver;
    this.capacitySectors = capacitySectors;
    this.#queues = queues;
  }

  static async connect(socketPath: string, o: BlkClientOptions = {}): Promise<BlkClient> {
    const queues = o.queues ?? 1;
    const queueSize = o.queueSize ?? 128;
    const fe = VhostUserFrontend.connect(socketPath, o.log ? { log: o.log } : {});
    const driver = await VhostUserDriver.start(fe, {
      queues,
      queueSize,
      ramSize: o.ramSize ?? 64 << 20,
      deviceFeatures: bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_MQ) | bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES),
    });
    const cfg = await fe.getConfig(0, CFG.size);
    const capacity = Number(new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength).getBigUint64(CFG.capacity, true));
    const qs: QueueState[] = driver.queues.map((h) => {
      const slots = queueSize;
      const slotAddr = driver.alloc(slots * 32, 16);
      return { h, free: Array.from({ length: slots }, (_, i) => i), slotAddr, pending: new Map(), waiting: [], pumping: false };
    });
    return new BlkClient(driver, capacity, qs);
  }

  /** Guest RAM for data buffers (bump-allocated, never freed). */
  alloc(len: number, align = 4096): GuestAddress {
    return this.driver.alloc(len, align);
  }

  get mem() {
    return this.driver.mem;
  }

  /** Submit one request (header, `data` buffers, status) on `queue`; resolves with the status byte. */
  async request(queue: number, type: number, sector: number | bigint, data: BlkBuffer[] = []): Promise<number> {
    const q = this.#queues[queue];
    if (!q) throw new RangeError(`queue ${queue} of ${this.#queues.length}`);
    for (;;) {
      const slot = q.free.pop();
      if (slot !== undefined) {
        const hdr = q.slotAddr + slot * 32;
        const mem = this.driver.mem;
        mem.writeU32(hdr, type);
        mem.writeU32(hdr + 4, 0);
        mem.writeU64(hdr + 8, BigInt(sector));
        mem.writeU8(hdr + 16, 0xff);
        const head = q.h.submit([{ addr: hdr, len: 16, write: false }, ...data, { addr: hdr + 16, len: 1, write: true }]);
        if (head !== null) {
          const p = new Promise<number>((resolve) => q.pending.set(head, { slot, resolve }));
          if (!q.pumping) void this.#pump(q);
          return p;
        }
        q.free.push(slot);
      }
      await new Promise<void>((r) => q.waiting.push(r));
    }
  }

  /** Collect used entries while requests are pending; one pump per queue at a time. */
  async #pump(q: QueueState): Promise<void> {
    q.pumping = true;
    try {
      while (q.pending.size > 0) {
        // Poll and settle in the same synchronous stretch: poll() frees the
        // heads it returns, and a request submitted in between (after an
        // await) could reuse a head before its old completion is settled.
        // The second poll follows the first one's used_event store: an entry
        // the device pushed in between may not have been signalled
        // (virtio 1.2 §2.7.10; Linux's virtqueue_enable_cb re-checks alike).
        let batch = q.h.poll();
        if (batch.length === 0) batch = q.h.poll();
        if (batch.length === 0) {
          await waitReadable(q.h.callFd);
          eventfdRead(q.h.callFd);
          continue;
        }
        for (const c of batch) {
          const p = q.pending.get(c.head);
          if (!p) throw new Error(`queue ${q.h.index}: the device completed head ${c.head}, which is not in flight`);
          q.pending.delete(c.head);
          const status = this.driver.mem.readU8(q.slotAddr + p.slot * 32 + 16);
          q.free.push(p.slot);
          p.resolve(status);
        }
        for (let n = batch.length; n > 0 && q.waiting.length > 0; n--) q.waiting.shift()!();
      }
    } finally {
      q.pumping = false;
    }
  }

  /** Read `into.length` bytes at `sector` (copying through guest RAM). */
  async read(sector: number, into: Uint8Array, queue = 0): Promise<number> {
    const a = this.alloc(into.length);
    const st = await this.request(queue, VIRTIO_BLK_T_IN, sector, [{ addr: a, len: into.length, write: true }]);
    this.driver.mem.readInto(a, into);
    return st;
  }

  async write(sector: number, from: Uint8Array, queue = 0): Promise<number> {
    const a = this.alloc(from.length);
    this.driver.mem.write(a, from);
    return this.request(queue, VIRTIO_BLK_T_OUT, sector, [{ addr: a, len: from.length, write: false }]);
  }

  close(): void {
    this.driver.close();
  }
}
