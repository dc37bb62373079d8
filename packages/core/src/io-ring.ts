// Asynchronous file I/O through io_uring (io_uring(7); the ABI of
// include/uapi/linux/io_uring.h): requests go into the submission ring,
// all those queued in one turn of the event loop are handed to the kernel
// with a single io_uring_enter (several requests per hand-off), and
// completions come back on an eventfd the event loop watches. Page-cache
// reads complete inside the submit call; writes and misses run on the
// kernel's own workers, with no libuv thread-pool hop per request.
//
// Ring handshake (io_uring(7) "Submission queue"/"Completion queue"): we
// own the SQ tail and the CQ head, the kernel the SQ head and the CQ tail;
// each side publishes its index with a store after writing the entries it
// covers (Atomics: sequentially consistent, so at least release/acquire).

import {
  closeFd, EAGAIN, EINTR, eventfdCreate, eventfdRead, hostAddress, ioUringRegisterEventfd, ioUringSetup, ioUringSubmit, watchReadable, type FdWatch,
  SyscallError, type IoUringMaps,
} from './ffi.ts';
import { VmmError } from './errors.ts';

const IORING_OP_READV = 1;
const IORING_OP_WRITEV = 2;
const IOSQE_ASYNC = 1 << 4;
const EBUSY = 16;
const SQE_SIZE = 64;
const CQE_SIZE = 16;
/** iovecs per request: virtio-blk's seg_max is at most a ring size (256) minus header and status. */
export const IO_RING_MAX_IOV = 256;

export class IoRingError extends VmmError {
  readonly errno: number;
  constructor(op: string, errno: number) {
    super(`io_uring ${op} failed: errno ${errno}`, 'transient', 'ERR_IO_URING');
    this.errno = errno;
  }
}

interface Op {
  opcode: number;
  /** IOSQE_* flags of the SQE. */
  sqeFlags: number;
  fd: number;
  bufs: readonly Uint8Array[];
  offset: number;
  resolve: (res: number) => void;
  reject: (e: Error) => void;
}

let shared: IoRing | null | undefined;
let unavailable = '';

export class IoRing {
  readonly entries: number;
  private readonly m: IoUringMaps;
  private readonly sqTail: Uint32Array;
  private readonly sqArray: Uint32Array;
  private readonly sqMask: number;
  private readonly sqes: DataView;
  private readonly sqesBytes: Uint8Array;
  private readonly cqHead: Uint32Array;
  private readonly cqTail: Uint32Array;
  private readonly cqMask: number;
  private readonly cqes: DataView;
  private readonly eventFd: number;
  private readonly watch: FdWatch;
  /** One iovec area per slot (IO_RING_MAX_IOV × 16 bytes), off-heap so its address never moves; kept until completion. */
  private readonly iovecs: BigUint64Array;
  private readonly iovecBase: number;
  private readonly slots: (Op | null)[];
  private readonly free: number[];
  private readonly backlog: Op[] = [];
  private tail: number;
  private unsubmitted = 0;
  private flushScheduled = false;
  private closed = false;
  /** Requests handed to the kernel and io_uring_enter calls made (diagnostics, the bench's profile). */
  readonly stats = { requests: 0, submits: 0 };

  private constructor(m: IoUringMaps) {
    this.m = m;
    this.entries = m.sqEntries;
    this.sqTail = new Uint32Array(m.sq, m.sqOff.tail, 1);
    this.sqMask = new Uint32Array(m.sq, m.sqOff.mask, 1)[0]!;
    this.sqArray = new Uint32Array(m.sq, m.sqOff.array, m.sqEntries);
    this.sqes = new DataView(m.sqes);
    this.sqesBytes = new Uint8Array(m.sqes);
    this.cqHead = new Uint32Array(m.cq, m.cqOff.head, 1);
    this.cqTail = new Uint32Array(m.cq, m.cqOff.tail, 1);
    this.cqMask = new Uint32Array(m.cq, m.cqOff.mask, 1)[0]!;
    this.cqes = new DataView(m.cq, m.cqOff.cqes, m.cqEntries * CQE_SIZE);
    this.tail = Atomics.load(this.sqTail, 0);
    // At most sqEntries requests in flight: the CQ (twice as large by default) can never overflow.
    this.slots = new Array<Op | null>(m.sqEntries).fill(null);
    this.free = Array.from({ length: m.sqEntries }, (_, i) => m.sqEntries - 1 - i);
    this.iovecs = new BigUint64Array(new ArrayBuffer(m.sqEntries * IO_RING_MAX_IOV * 16));
    this.iovecBase = hostAddress(new Uint8Array(this.iovecs.buffer));
    this.eventFd = eventfdCreate();
    ioUringRegisterEventfd(m.fd, this.eventFd);
    this.watch = watchReadable(this.eventFd, () => {
      eventfdRead(this.eventFd);
      this.reap();
    });
    // Referenced only while requests are in the kernel: an idle ring must not keep the process alive, a busy one must
    // (otherwise a process awaiting its last read would exit under it, and koffi aborts on a watch firing at exit).
    this.watch.unref();
  }

  /** A new ring of `entries` (rounded up to a power of two by the kernel); throws where io_uring is unavailable. */
  static create(entries = 256): IoRing {
    return new IoRing(ioUringSetup(entries));
  }

  /**
   * The thread's shared ring, created on first use; null where io_uring is
   * unavailable (old kernel, disabled by sysctl or seccomp) or disabled with
   * VMM_IO_URING=0 — callers then use the thread pool. See unavailableReason.
   */
  static shared(): IoRing | null {
    if (shared !== undefined) return shared;
    if (process.env.VMM_IO_URING === '0') {
      unavailable = 'disabled by VMM_IO_URING=0';
      return (shared = null);
    }
    try {
      shared = IoRing.create();
    } catch (e) {
      unavailable = (e as Error).message;
      shared = null;
    }
    return shared;
  }

  static get unavailableReason(): string {
    return unavailable;
  }

  /**
   * Scatter read at `offset`; resolves with the bytes read (short at end of
   * file), rejects with IoRingError. `parallel` sends it straight to the
   * kernel's worker threads (IOSQE_ASYNC) instead of trying it inline in
   * io_uring_enter: for large page-cache copies, which then run side by
   * side instead of one after another on this thread.
   */
  readv(fd: number, bufs: readonly Uint8Array[], offset: number, parallel = false): Promise<number> {
    return this.queue(IORING_OP_READV, parallel ? IOSQE_ASYNC : 0, fd, bufs, offset);
  }

  /** Gather write at `offset`; resolves with the bytes written. */
  writev(fd: number, bufs: readonly Uint8Array[], offset: number): Promise<number> {
    return this.queue(IORING_OP_WRITEV, 0, fd, bufs, offset);
  }

  private queue(opcode: number, sqeFlags: number, fd: number, bufs: readonly Uint8Array[], offset: number): Promise<number> {
    if (this.closed) return Promise.reject(new VmmError('io_uring ring is closed', 'transient', 'ERR_IO_URING_CLOSED'));
    if (bufs.length === 0 || bufs.length > IO_RING_MAX_IOV) return Promise.reject(new RangeError(`io_uring request with ${bufs.length} buffers (1..${IO_RING_MAX_IOV})`));
    return new Promise<number>((resolve, reject) => {
      const op: Op = { opcode, sqeFlags, fd, bufs, offset, resolve, reject };
      if (this.free.length > 0) this.place(op);
      else this.backlog.push(op);
    });
  }

  /** Write the SQE for `op` into the next submission slot; submitted at the end of this turn. */
  private place(op: Op): void {
    if (this.free.length === this.entries) this.watch.ref();
    const slot = this.free.pop()!;
    this.slots[slot] = op;
    const iov = slot * IO_RING_MAX_IOV * 2;
    for (let i = 0; i < op.bufs.length; i++) {
      const b = op.bufs[i]!;
      this.iovecs[iov + 2 * i] = BigInt(hostAddress(b));
      this.iovecs[iov + 2 * i + 1] = BigInt(b.length);
    }
    const idx = this.tail & this.sqMask;
    const o = idx * SQE_SIZE;
    this.sqesBytes.fill(0, o, o + SQE_SIZE);
    // struct io_uring_sqe: opcode u8 @0, flags u8 @1, fd s32 @4, off u64 @8, addr u64 @16, len u32 @24, rw_flags @28, user_data u64 @32.
    this.sqes.setUint8(o, op.opcode);
    this.sqes.setUint8(o + 1, op.sqeFlags);
    this.sqes.setInt32(o + 4, op.fd, true);
    this.sqes.setBigUint64(o + 8, BigInt(op.offset), true);
    this.sqes.setBigUint64(o + 16, BigInt(this.iovecBase + iov * 8), true);
    this.sqes.setUint32(o + 24, op.bufs.length, true);
    this.sqes.setBigUint64(o + 32, BigInt(slot), true);
    this.sqArray[idx] = idx;
    this.tail = (this.tail + 1) >>> 0;
    // Publish the tail after the entry (release): the kernel reads the SQE only once it sees the new tail.
    Atomics.store(this.sqTail, 0, this.tail);
    this.unsubmitted++;
    this.stats.requests++;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.submit());
    }
  }

  private submit(): void {
    this.flushScheduled = false;
    if (this.unsubmitted === 0 || this.closed) return;
    try {
      const n = ioUringSubmit(this.m.fd, this.unsubmitted);
      this.stats.submits++;
      this.unsubmitted -= n;
    } catch (e) {
      // Nothing we queued reached the kernel (e.g. EBUSY/EINTR are retried on the next submit): fail only on a hard error.
      const errno = e instanceof SyscallError ? e.errno : 0;
      if (errno === EINTR || errno === EAGAIN || errno === EBUSY) setImmediate(() => this.submit());
      else this.failAll(e as Error);
      return;
    }
    // Page-cache reads are often complete already.
    this.reap();
  }

  private reap(): void {
    let head = Atomics.load(this.cqHead, 0);
    const tail = Atomics.load(this.cqTail, 0);
    const done: [Op, number][] = [];
    while (head !== tail) {
      const o = (head & this.cqMask) * CQE_SIZE;
      const slot = Number(this.cqes.getBigUint64(o, true));
      const res = this.cqes.getInt32(o + 8, true);
      head = (head + 1) >>> 0;
      const op = this.slots[slot];
      if (op) {
        this.slots[slot] = null;
        this.free.push(slot);
        done.push([op, res]);
      }
    }
    // Hand the CQ entries back before resolving (which may queue more requests).
    Atomics.store(this.cqHead, 0, head);
    while (this.backlog.length > 0 && this.free.length > 0) this.place(this.backlog.shift()!);
    if (done.length > 0 && this.free.length === this.entries) this.watch.unref();
    for (const [op, res] of done) {
      if (res >= 0) op.resolve(res);
      else op.reject(new IoRingError(op.opcode === IORING_OP_READV ? 'readv' : 'writev', -res));
    }
  }

  private failAll(e: Error): void {
    for (let s = 0; s < this.slots.length; s++) {
      const op = this.slots[s];
      if (op) {
        this.slots[s] = null;
        this.free.push(s);
        op.reject(e);
      }
    }
    for (const op of this.backlog.splice(0)) op.reject(e);
    this.watch.unref();
  }

  /** Requests queued or in the kernel. */
  get inFlight(): number {
    return this.entries - this.free.length + this.backlog.length;
  }

  /** Stop watching and close the ring; requests still in it are failed. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.failAll(new VmmError('io_uring ring closed', 'transient', 'ERR_IO_URING_CLOSED'));
    // The ring first: it holds a reference to the registered eventfd's file, so closing the eventfd (and its watch)
    // while the ring still lives left an epoll registration on a live file whose libuv handle was gone — the
    // process crashed at exit (SIGSEGV in the loop's cleanup).
    closeFd(this.m.fd);
    this.watch.close();
    closeFd(this.eventFd);
    if (shared === this) shared = undefined;
  }
}
