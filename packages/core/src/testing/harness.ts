// In-process transport for device models (STYLE.md §5): drives a
// VirtioDeviceBackend through real split rings in a RAM buffer, with no
// vhost-user, sockets or processes — the same QueueHandle the vhost-user
// back-end uses. For device unit tests; protocol tests use the real thing.

import type { Logger } from 'pino';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, type VirtioDeviceBackend } from '../device.ts';
import { createLogger } from '../logger.ts';
import { GuestMemory, guestAddress, type GuestAddress } from '../memory.ts';
import { QueueHandle } from '../queue-handle.ts';
import { DriverQueue, SplitQueue, splitQueueLayout, type DriverBuffer } from '../virtqueue.ts';
import { VmmError } from '../errors.ts';

export interface HarnessOptions {
  queueSize?: number;
  /** Negotiate EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Features the "driver" accepts (default: everything the device offers). */
  acceptFeatures?: bigint;
  ramSize?: number;
  ramBase?: number;
  /** Max entries per indirect table (default 16). */
  indirectMax?: number;
  log?: Logger;
}

export interface HarnessQueue {
  driver: DriverQueue;
  handle: QueueHandle;
}

export class InProcessDevice {
  readonly device: VirtioDeviceBackend;
  readonly mem: GuestMemory;
  readonly features: bigint;
  readonly queues: HarnessQueue[] = [];
  private next: number;
  private readonly end: number;
  private readonly waiters = new Map<number, () => void>();

  constructor(device: VirtioDeviceBackend, o: HarnessOptions = {}) {
    this.device = device;
    const ramSize = o.ramSize ?? 16 << 20;
    const ramBase = o.ramBase ?? 0x8000_0000;
    this.mem = GuestMemory.fromBuffers([{ gpa: ramBase, buffer: new ArrayBuffer(ramSize) }]);
    this.next = ramBase;
    this.end = ramBase + ramSize;
    const offered = device.features | VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX;
    let features = offered & (o.acceptFeatures ?? offered);
    if (o.eventIdx === false) features &= ~VIRTIO_F_EVENT_IDX;
    this.features = features;
    const log = o.log ?? createLogger('harness', undefined, 'warn');
    const size = o.queueSize ?? 128;
    const indirectMax = o.indirectMax ?? 16;
    const eventIdx = (features & VIRTIO_F_EVENT_IDX) !== 0n;
    device.activate({
      mem: this.mem,
      features,
      log,
      needsReset: (reason) => this.needsResetReasons.push(reason),
      configChanged: () => this.configChanges++,
    });
    for (let i = 0; i < device.numQueues; i++) {
      const l = splitQueueLayout(this.alloc(splitQueueLayout(0, size).end + 16, 4096), size);
      const cfg = { size, desc: l.desc, avail: l.avail, used: l.used, eventIdx };
      const driver = new DriverQueue(this.mem, cfg, { area: this.alloc(size * 16 * indirectMax, 16), maxEntries: indirectMax });
      const handle = new QueueHandle({
        index: i,
        mem: this.mem,
        queue: new SplitQueue(this.mem, cfg),
        log,
        notify: () => {
          const w = this.waiters.get(i);
          this.waiters.delete(i);
          w?.();
        },
      });
      this.queues.push({ driver, handle });
    }
    for (const q of this.queues) device.startQueue?.(q.handle);
  }

  /** Why the device asked for a reset (DeviceContext.needsReset), in order. */
  readonly needsResetReasons: string[] = [];
  /** Configuration change notifications the device sent. */
  configChanges = 0;

  /** Stop queue `queue` as a transport does: the device hands back the chains it holds; returns the ring's next avail index. */
  stopQueue(queue: number): number {
    const { handle } = this.q(queue);
    handle.giveBack(this.device.stopQueue?.(queue) ?? []);
    handle.flush();
    handle.dead = true;
    return handle.q.lastAvail;
  }

  /** Bump-allocate guest RAM. */
  alloc(len: number, align = 8): GuestAddress {
    const a = Math.ceil(this.next / align) * align;
    if (a + len > this.end) throw new VmmError(`harness RAM exhausted allocating ${len} bytes`, 'config', 'ERR_HARNESS_RAM');
    this.next = a + len;
    return guestAddress(a);
  }

  private q(i: number): HarnessQueue {
    const q = this.queues[i];
    if (!q) throw new RangeError(`queue ${i} of ${this.queues.length}`);
    return q;
  }

  /** Post a chain and "kick": the device's processQueue runs synchronously. Returns the head (null if the ring is full). */
  submit(queue: number, bufs: DriverBuffer[], indirect = false): number | null {
    const { driver, handle } = this.q(queue);
    const head = driver.add(bufs, indirect);
    if (head === null) return null;
    driver.publish();
    driver.kickNeeded();
    this.device.processQueue(handle);
    handle.flush();
    return head;
  }

  /** Completed chains now, without waiting. */
  poll(queue: number): { head: number; len: number }[] {
    const out: { head: number; len: number }[] = [];
    const d = this.q(queue).driver;
    for (let u = d.popUsed(); u !== null; u = d.popUsed()) out.push(u);
    return out;
  }

  /** Wait until at least one chain completed (the device may finish asynchronously). */
  async wait(queue: number): Promise<{ head: number; len: number }[]> {
    for (;;) {
      const got = this.poll(queue);
      if (got.length > 0) return got;
      await new Promise<void>((resolve) => this.waiters.set(queue, resolve));
    }
  }

  reset(): void {
    for (const q of this.queues) if (!q.handle.dead) this.stopQueue(q.handle.index);
    this.device.reset();
  }
}
