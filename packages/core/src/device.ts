// The transport-independent device interface (STYLE.md §4-5). A device model
// (blk, net, ...) implements VirtioDeviceBackend and knows nothing of
// vhost-user: the vhost-user server (vhost-user/backend.ts) or an in-process
// harness wraps it and hands it queues.

import type { Logger } from 'pino';
import type { GuestMemory } from './memory.ts';
import type { DescriptorChain } from './virtqueue.ts';

/** Virtio feature bits common to all devices (virtio 1.2 §6). */
export const VIRTIO_F_INDIRECT_DESC = 1n << 28n;
export const VIRTIO_F_EVENT_IDX = 1n << 29n;
export const VIRTIO_F_VERSION_1 = 1n << 32n;
export const VIRTIO_F_ACCESS_PLATFORM = 1n << 33n;
export const VIRTIO_F_RING_PACKED = 1n << 34n;

/** One virtqueue as a device sees it. */
export interface VirtqueueHandle {
  readonly index: number;
  readonly size: number;
  /** The memory the queue's buffers live in (behind the IOMMU when there is one). */
  readonly mem: GuestMemory;
  /**
   * The next request: chains left in flight by a previous back-end process
   * come first (inflight resubmission), then the avail ring. Null when empty.
   * Malformed chains are logged and returned to the driver with length 0.
   */
  pop(): DescriptorChain | null;
  /**
   * How many chains pop() could return now without waiting. When that is
   * fewer than `want`, the driver is also asked to kick on the next chain it
   * adds (avail_event with EVENT_IDX, virtio 1.2 §2.7.10), so a device that
   * needs several buffers for one request (virtio-net's mergeable receive
   * buffers, §5.1.6.3) can wait for them without popping any.
   */
  available(want?: number): number;
  /** Finish a chain with `writtenLen` bytes written to its writable part. The driver is notified (batched, EVENT_IDX-aware). */
  complete(head: number, writtenLen: number): void;
  /** Chains popped and not completed yet. */
  readonly inFlight: number;
}

export interface DeviceContext {
  mem: GuestMemory;
  /** Features the driver acknowledged. */
  features: bigint;
  log: Logger;
}

export interface VirtioDeviceBackend {
  /** Device feature bits offered (device-specific plus VIRTIO_F_* the device supports). */
  readonly features: bigint;
  /** Number of queues the device supports (GET_QUEUE_NUM). */
  readonly numQueues: number;
  /** The device's configuration space (virtio 1.2 §4.x "Device configuration layout"). */
  readConfig(): Uint8Array;
  /** A driver write into configuration space; devices without writable fields may omit it. */
  writeConfig?(offset: number, data: Uint8Array): void;
  /** Called once before the first processQueue() after a (re)connection or reset. */
  activate(ctx: DeviceContext): void;
  /** The driver kicked queue `q` (or the queue just started): pop and handle requests; may complete them later. */
  processQueue(q: VirtqueueHandle): void;
  /** Forget all driver state (connection lost, RESET_OWNER, RESET_DEVICE). In-flight completions after this are dropped. */
  reset(): void;
}
