// What a NIC is plugged into: a switch port (shared-memory rings), a host
// tap, or in tests a loopback. Frames cross a port as the 12-byte
// virtio_net_hdr (virtio 1.2 §5.1.6, num_buffers 0) followed by the Ethernet
// frame — the layout of a tap with IFF_VNET_HDR — so offload state travels
// with the frame and is only acted on where a receiver cannot take it.

import type { OffloadCaps } from './header.ts';

export interface NetPort {
  /** Largest header + frame the port carries. */
  readonly maxFrame: number;
  /**
   * A buffer for the next outgoing frame (at least maxFrame bytes), or null
   * when the port is full; onWritable fires once there is room again. Asking
   * again before commit() returns the same buffer.
   */
  reserve(): Uint8Array | null;
  /** Send the first `len` bytes of the reserved buffer. */
  commit(len: number): void;
  /** The next incoming frame (a view valid until release()), or null; onReadable fires when frames arrive. */
  peek(): Uint8Array | null;
  release(): void;
  /** End of a batch: wake the far side if it sleeps. */
  flush(): void;
  onReadable: () => void;
  onWritable: () => void;
  /**
   * Busy-poll mode (NetDevice's busy-poll option): while on, finding the port
   * empty does not ask the far side for a doorbell; the poller looks again
   * itself. Turning it off and then peeking once arms the doorbell again.
   */
  setPolling?(on: boolean): void;
  /** The offloads the receiving driver takes, for ports that can act on it (a tap's TUNSETOFFLOAD). */
  setRxOffloads?(caps: OffloadCaps): void;
  close(): void;
}

/** Two ports joined back to back in one process (device unit tests): what one sends, the other receives. */
export class LoopbackPort implements NetPort {
  readonly maxFrame: number;
  peer: LoopbackPort | null = null;
  private readonly queue: Uint8Array[] = [];
  private reserved: Uint8Array | null = null;
  /** Frames the far side may hold before reserve() says full. */
  readonly capacity: number;
  onReadable: () => void = () => {};
  onWritable: () => void = () => {};

  constructor(maxFrame: number, capacity = 256) {
    this.maxFrame = maxFrame;
    this.capacity = capacity;
  }

  static pair(maxFrame: number, capacity?: number): [LoopbackPort, LoopbackPort] {
    const a = new LoopbackPort(maxFrame, capacity);
    const b = new LoopbackPort(maxFrame, capacity);
    a.peer = b;
    b.peer = a;
    return [a, b];
  }

  /** Frames waiting to be received. */
  get pending(): number {
    return this.queue.length;
  }

  /** Put a frame in as if the far side had sent it. */
  inject(frame: Uint8Array): void {
    this.queue.push(frame);
    this.onReadable();
  }

  reserve(): Uint8Array | null {
    if (this.peer === null || this.peer.queue.length >= this.peer.capacity) return null;
    this.reserved ??= new Uint8Array(this.maxFrame);
    return this.reserved;
  }

  commit(len: number): void {
    const b = this.reserved!.slice(0, len);
    this.reserved = null;
    this.peer!.queue.push(b);
  }

  peek(): Uint8Array | null {
    return this.queue[0] ?? null;
  }

  release(): void {
    this.queue.shift();
    this.peer?.onWritable();
  }

  flush(): void {
    if (this.peer && this.peer.queue.length > 0) this.peer.onReadable();
  }

  close(): void {
    this.peer = null;
  }
}
