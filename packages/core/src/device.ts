// The transport-independent device model interface (STYLE.md §4-5, §8b). A
// device model (blk, net, iommu, ...) implements VirtioDeviceBackend and
// knows nothing of vhost-user: the vhost-user server (vhost-user/backend.ts)
// or the in-process harness (testing/harness.ts) wraps it and hands it its
// queues. Shaped after rust-vmm's VhostUserBackend trait (features,
// protocol_features, max_queue_size) and crosvm's VirtioDevice
// (activate, start_queue / stop_queue, reset).
//
// Lifecycle, as the wrapper drives it:
//
//   activate(ctx)                 once per driver session, before any queue starts
//   startQueue(q)  ─┐             per queue, when its ring is configured and enabled
//   processQueue(q) │ kicks       the driver notified the queue (or it just started)
//   stopQueue(i)  ─┘             the ring stops (GET_VRING_BASE, reconnection, reset)
//   reset()                       the driver session is over: forget everything
//
// Between startQueue and stopQueue the device owns the handle: it may pop and
// complete at any time, not only inside processQueue (a NIC fills its receive
// queue when a frame arrives). After stopQueue, or after reset, completions on
// the old handle are dropped, never thrown.

import type { Logger } from 'pino';
import type { GuestMemory } from './memory.ts';
import type { DescriptorChain } from './virtqueue.ts';

/** Virtio feature bits common to all devices (virtio 1.2 §6). */
export const VIRTIO_F_INDIRECT_DESC = 1n << 28n;
export const VIRTIO_F_EVENT_IDX = 1n << 29n;
export const VIRTIO_F_VERSION_1 = 1n << 32n;
export const VIRTIO_F_ACCESS_PLATFORM = 1n << 33n;
export const VIRTIO_F_RING_PACKED = 1n << 34n;

/**
 * The device-specific feature bits (virtio 1.2 §6 "Reserved Feature Bits":
 * 0 to 23 and 50 to 127 are the device type's; 24 to 49 belong to the queue
 * and feature negotiation mechanisms, i.e. to the transport). We carry 64
 * bits, so 50 to 63 here.
 */
export const DEVICE_SPECIFIC_FEATURES = ((1n << 24n) - 1n) | (((1n << 64n) - 1n) & ~((1n << 50n) - 1n));

/** One virtqueue as a device sees it. */
export interface VirtqueueHandle {
  readonly index: number;
  readonly size: number;
  /** The memory the queue's buffers live in (behind the IOMMU when there is one). */
  readonly mem: GuestMemory;
  /**
   * The next request: chains left in flight by a previous back-end process
   * come first (inflight resubmission), then the avail ring. Null when empty,
   * and always null once the queue was stopped.
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
  /** How many chains pop() could return now; unlike available() it never asks for a kick (for a device that polls). */
  pending(): number;
  /**
   * Turn the driver's kicks off while the device polls the ring (busy-poll,
   * vhost-net's busyloop), and on again after (virtio 1.2 §2.7.7.1 NO_NOTIFY,
   * §2.7.10 avail_event). After turning them on, check pending() once more:
   * a chain the driver added while kicks were off came without one.
   */
  setKicks(enabled: boolean): void;
  /** Signal the driver now for the chains completed so far, if it wants it (otherwise that happens at the end of the turn). */
  flush(): void;
  /**
   * Finish a chain with `writtenLen` bytes written to its writable part. The
   * driver is notified (batched, EVENT_IDX-aware). After the queue stopped
   * (or the device was reset) this does nothing: the ring belongs to a later
   * session now.
   */
  complete(head: number, writtenLen: number): void;
  /** Chains popped and not completed yet. */
  readonly inFlight: number;
  /** Malformed chains pop() refused (and gave back with length 0) since the queue started: a device counts them as its bad input. */
  readonly malformed: number;
  /** False once the queue was stopped or the device reset. */
  readonly live: boolean;
}

export interface DeviceContext {
  /** Guest memory as the device addresses it: translated through the IOMMU when VIRTIO_F_ACCESS_PLATFORM was negotiated (virtio 1.2 §6.1). */
  mem: GuestMemory;
  /** Features the driver acknowledged. */
  features: bigint;
  log: Logger;
  /**
   * The device hit an error it cannot recover from without a driver reset:
   * the transport sets DEVICE_NEEDS_RESET and sends a configuration change
   * notification (virtio 1.2 §2.1.2). `reason` is logged.
   */
  needsReset(reason: string): void;
  /** The device changed its configuration space on its own: the driver gets a configuration change notification (virtio 1.2 §2.5.1). */
  configChanged(): void;
}

export interface VirtioDeviceBackend {
  /** Device feature bits offered (device-specific plus VIRTIO_F_* the device supports). */
  readonly features: bigint;
  /** Number of queues the device supports (GET_QUEUE_NUM). */
  readonly numQueues: number;
  /** Largest ring the driver may configure for queue `index` (a power of 2); default MAX_QUEUE_SIZE. */
  maxQueueSize?(index: number): number;
  /**
   * vhost-user protocol features this device needs on top of the ones every
   * device gets (BASE_PROTOCOL_FEATURES in vhost-user/backend.ts): e.g.
   * INFLIGHT_SHMFD for a disk, whose requests must survive a crash. Bits
   * of vhost-user/protocol.ts's ProtocolFeature; default none.
   */
  readonly protocolFeatures?: bigint;
  /**
   * Behind an IOMMU (VIRTIO_F_ACCESS_PLATFORM), how long a translation may
   * be used in strict mode. 'request' (the default): a chain is one
   * request from pop until complete, so the device may hand views of its
   * buffers to asynchronous I/O (a disk's preadv). 'access': every
   * GuestMemory read or write is a request of its own and nothing is held
   * between calls — for a device that keeps chains popped for long (a
   * NIC's receive buffers waiting for frames), which would otherwise hold
   * back every UNMAP until those buffers fill. Such a device must copy
   * through ctx.mem / q.mem calls and keep no slice() views.
   */
  readonly dmaScope?: 'request' | 'access';
  /** The device's configuration space (virtio 1.2 §4.x "Device configuration layout"). */
  readConfig(): Uint8Array;
  /** A driver write into configuration space; devices without writable fields may omit it. */
  writeConfig?(offset: number, data: Uint8Array): void;
  /** Called once per driver session, before the first startQueue(). */
  activate(ctx: DeviceContext): void;
  /** Queue `q` started: the device may keep the handle and use it until stopQueue(q.index). */
  startQueue?(q: VirtqueueHandle): void;
  /** The driver kicked queue `q` (or the queue just started): pop and handle requests; may complete them later. */
  processQueue(q: VirtqueueHandle): void;
  /**
   * Queue `index` is stopping. Return the heads of chains the device holds
   * and will never complete on its own (receive buffers waiting for a
   * frame): the wrapper gives them back to the ring at once instead of
   * waiting for them. Requests being worked on (a disk read) are not
   * returned: the wrapper waits for those, bounded. Default: none held.
   */
  stopQueue?(index: number): number[];
  /** Forget all driver state (connection lost, RESET_OWNER, RESET_DEVICE). In-flight completions after this are dropped. */
  reset(): void;
  /**
   * The driver reset the device (the front-end sent RESET_DEVICE or
   * RESET_OWNER), as opposed to a lost connection, after which a restarted
   * back-end's session is replayed. Called before reset(). A device whose
   * state outlives its process (the IOMMU's domains) drops it here only;
   * default: nothing beyond reset().
   */
  deviceReset?(): void;
}
