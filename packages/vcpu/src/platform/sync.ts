// Cross-thread primitives over SharedArrayBuffers for the device models.
//
// Every hart worker instantiates its own copy of each device model over the
// same shared state (like an in-kernel irqchip in KVM, where any vCPU thread
// handles the MMIO exit itself). Register updates that read-modify-write
// several words (PLIC claim, UART FIFO + IIR) take a short mutex so that two
// harts never interleave inside one register access.

/** A futex-style mutex in one Int32 cell: 0 = free, 1 = held, 2 = held with waiters. */
export class SharedMutex {
  private readonly cell: Int32Array;
  private readonly index: number;

  constructor(cell: Int32Array, index: number) {
    this.cell = cell;
    this.index = index;
  }

  lock(): void {
    // Fast path: uncontended.
    let c = Atomics.compareExchange(this.cell, this.index, 0, 1);
    if (c === 0) return;
    // Spin briefly: critical sections are a few register updates long.
    for (let i = 0; i < 100; i++) {
      c = Atomics.compareExchange(this.cell, this.index, 0, 1);
      if (c === 0) return;
    }
    // Slow path (Drepper, "Futexes Are Tricky", mutex #2).
    if (c !== 2) c = Atomics.exchange(this.cell, this.index, 2);
    while (c !== 0) {
      Atomics.wait(this.cell, this.index, 2);
      c = Atomics.exchange(this.cell, this.index, 2);
    }
  }

  unlock(): void {
    if (Atomics.sub(this.cell, this.index, 1) !== 1) {
      Atomics.store(this.cell, this.index, 0);
      Atomics.notify(this.cell, this.index, 1);
    }
  }

  with<T>(fn: () => T): T {
    this.lock();
    try {
      return fn();
    } finally {
      this.unlock();
    }
  }
}

const R_HEAD = 0; // consumer index (free-running u32)
const R_TAIL = 1; // producer index (free-running u32)
const R_HEADER = 8; // bytes; data follows

/**
 * A byte ring in a SharedArrayBuffer: one producer and one consumer at a
 * time (callers serialize multiple producers or consumers with a
 * SharedMutex). Indices run free and wrap at 2^32; capacity is a power of two.
 * The producer notifies waiters on the tail cell, the consumer on the head
 * cell, so either side can sleep (Atomics.wait / waitAsync) until the other moves.
 */
export class ByteRing {
  readonly buffer: SharedArrayBuffer;
  readonly capacity: number;
  private readonly idx: Int32Array;
  private readonly data: Uint8Array;

  static create(capacity: number): SharedArrayBuffer {
    if (!Number.isInteger(capacity) || capacity < 16 || (capacity & (capacity - 1)) !== 0) throw new RangeError(`ring capacity must be a power of two >= 16, got ${capacity}`);
    return new SharedArrayBuffer(R_HEADER + capacity);
  }

  constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.capacity = buffer.byteLength - R_HEADER;
    this.idx = new Int32Array(buffer, 0, 2);
    this.data = new Uint8Array(buffer, R_HEADER);
  }

  get length(): number { return (Atomics.load(this.idx, R_TAIL) - Atomics.load(this.idx, R_HEAD)) >>> 0; }
  get free(): number { return this.capacity - this.length; }

  /** Append as many bytes as fit; returns how many were written. */
  push(bytes: Uint8Array): number {
    const tail = Atomics.load(this.idx, R_TAIL);
    const n = Math.min(bytes.length, this.capacity - ((tail - Atomics.load(this.idx, R_HEAD)) >>> 0));
    const mask = this.capacity - 1;
    for (let i = 0; i < n; i++) this.data[(tail + i) & mask] = bytes[i]!;
    if (n > 0) {
      Atomics.store(this.idx, R_TAIL, (tail + n) | 0);
      Atomics.notify(this.idx, R_TAIL);
    }
    return n;
  }

  pushByte(b: number): boolean {
    const tail = Atomics.load(this.idx, R_TAIL);
    if (((tail - Atomics.load(this.idx, R_HEAD)) >>> 0) >= this.capacity) return false;
    this.data[tail & (this.capacity - 1)] = b;
    Atomics.store(this.idx, R_TAIL, (tail + 1) | 0);
    Atomics.notify(this.idx, R_TAIL);
    return true;
  }

  /** Next byte without consuming it, or -1 when empty. */
  peek(): number {
    const head = Atomics.load(this.idx, R_HEAD);
    if (head === Atomics.load(this.idx, R_TAIL)) return -1;
    return this.data[head & (this.capacity - 1)]!;
  }

  /** Remove and return one byte, or -1 when empty. */
  popByte(): number {
    const head = Atomics.load(this.idx, R_HEAD);
    if (head === Atomics.load(this.idx, R_TAIL)) return -1;
    const b = this.data[head & (this.capacity - 1)]!;
    Atomics.store(this.idx, R_HEAD, (head + 1) | 0);
    Atomics.notify(this.idx, R_HEAD);
    return b;
  }

  /** Remove up to `max` bytes. */
  pop(max = this.capacity): Uint8Array {
    const head = Atomics.load(this.idx, R_HEAD);
    const n = Math.min(max, (Atomics.load(this.idx, R_TAIL) - head) >>> 0);
    const out = new Uint8Array(n);
    const mask = this.capacity - 1;
    for (let i = 0; i < n; i++) out[i] = this.data[(head + i) & mask]!;
    if (n > 0) {
      Atomics.store(this.idx, R_HEAD, (head + n) | 0);
      Atomics.notify(this.idx, R_HEAD);
    }
    return out;
  }

  /** The tail cell, for a consumer's Atomics.waitAsync until data arrives. */
  tailCell(): { array: Int32Array; index: number; value: number } {
    return { array: this.idx, index: R_TAIL, value: Atomics.load(this.idx, R_TAIL) };
  }

  /** Block the calling thread until the consumer frees space or `timeoutMs` passes (producer side). */
  waitForSpace(timeoutMs: number): void {
    const head = Atomics.load(this.idx, R_HEAD);
    if (this.free > 0) return;
    Atomics.wait(this.idx, R_HEAD, head, timeoutMs);
  }
}
