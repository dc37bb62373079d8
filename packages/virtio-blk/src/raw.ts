// A raw image: the file's bytes are the disk's bytes. Each read or write
// first tries a non-blocking preadv2/pwritev2 (RWF_NOWAIT) on this thread,
// which serves page-cache hits with one system call; what would block goes
// to io_uring (core's IoRing: every request of one event-loop turn in one
// io_uring_enter) or, where io_uring is unavailable, to node:fs file
// handles on libuv's thread pool (vmm-blk sizes the pool). Many requests
// are in flight at once either way.

import { open, type FileHandle } from 'node:fs/promises';
import { IoRing, preadNoWait, pwriteNoWait } from '@vmm/core';
import { ImageError, ImageRangeError } from './errors.ts';
import { checkRange, checkWritable, ZERO_CHUNK, type BlockImage } from './image.ts';
import { SECTOR_SIZE } from './spec.ts';

export interface RawOpenOptions {
  readOnly?: boolean;
}

export class RawImage implements BlockImage {
  readonly capacity: number;
  readonly readOnly: boolean;
  readonly path: string;
  #fh: FileHandle;
  /** System calls issued per kind, for tests and benchmarks: a wrapper that hides readv/writev shows up as vectored = 0. */
  readonly ioStats = { vectored: 0, single: 0 };
  /** Bytes of the file that actually exist; reads past it (a file shorter than a sector multiple) see zeros. */
  #fileSize: number;

  private constructor(path: string, fh: FileHandle, size: number, readOnly: boolean) {
    this.path = path;
    this.#fh = fh;
    this.#fileSize = size;
    // The protocol counts 512-byte sectors; a trailing partial sector is not addressable.
    this.capacity = Math.floor(size / SECTOR_SIZE) * SECTOR_SIZE;
    this.readOnly = readOnly;
  }

  static async open(path: string, options: RawOpenOptions = {}): Promise<RawImage> {
    const readOnly = options.readOnly ?? false;
    let fh: FileHandle;
    try {
      fh = await open(path, readOnly ? 'r' : 'r+');
    } catch (e) {
      throw new ImageError('ERR_IMAGE_OPEN', `cannot open raw image ${path}: ${(e as Error).message}`);
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw new ImageError('ERR_IMAGE_OPEN', `raw image ${path} is not a regular file`);
    }
    return new RawImage(path, fh, st.size, readOnly);
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this, 'read', offset, into.length);
    this.ioStats.single++;
    await preadFull(this.#fh, into, offset);
  }

  /** Scatter read: one preadv for a request made of several guest buffers. */
  async readv(offset: number, into: readonly Uint8Array[]): Promise<void> {
    const total = into.reduce((n, b) => n + b.length, 0);
    checkRange(this, 'read', offset, total);
    this.ioStats.vectored++;
    // Page-cache hit: done on this thread (see core's preadNoWait); otherwise one preadv through io_uring or the thread pool.
    if (total <= INLINE_MAX && preadNoWait(this.#fh.fd, into, offset) === total) return;
    const ring = ringFor(total, false);
    const got = ring ? await ring.readv(this.#fh.fd, into, offset, total > INLINE_MAX) : (await this.#fh.readv(into as Uint8Array[], offset)).bytesRead;
    if (got === total) return;
    // Short read: fall back to one buffer at a time (zero-fills past end of file).
    let pos = offset;
    for (const b of into) {
      await preadFull(this.#fh, b, pos);
      pos += b.length;
    }
  }

  async write(offset: number, from: Uint8Array): Promise<void> {
    checkWritable(this, 'write');
    checkRange(this, 'write', offset, from.length);
    this.ioStats.single++;
    await pwriteFull(this.#fh, from, offset);
  }

  /** Gather write: one pwritev for several guest buffers. */
  async writev(offset: number, from: readonly Uint8Array[]): Promise<void> {
    checkWritable(this, 'write');
    const total = from.reduce((n, b) => n + b.length, 0);
    checkRange(this, 'write', offset, total);
    this.ioStats.vectored++;
    const quick = total <= INLINE_MAX ? (pwriteNoWait(this.#fh.fd, from, offset) ?? 0) : 0;
    if (quick === total) return;
    const ring = ringFor(total, true);
    const done = quick > 0 ? quick : ring ? await ring.writev(this.#fh.fd, from, offset) : (await this.#fh.writev(from as Uint8Array[], offset)).bytesWritten;
    if (done === total) return;
    let skip = done;
    let pos = offset;
    for (const b of from) {
      if (skip >= b.length) {
        skip -= b.length;
      } else {
        await pwriteFull(this.#fh, b.subarray(skip), pos + skip);
        skip = 0;
      }
      pos += b.length;
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.#fh.datasync();
  }

  /**
   * Node has no fallocate(PUNCH_HOLE), so a discard writes zeros: the
   * virtio spec lets a discarded range read back as anything, and zeros
   * keep the result deterministic.
   */
  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length, true);
  }

  async writeZeroes(offset: number, length: number, _mayUnmap: boolean): Promise<void> {
    checkWritable(this, 'write-zeroes');
    checkRange(this, 'write-zeroes', offset, length);
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const n = Math.min(ZERO_CHUNK.length, end - pos);
      await pwriteFull(this.#fh, ZERO_CHUNK.subarray(0, n), pos);
      pos += n;
    }
  }

  async close(): Promise<void> {
    await this.#fh.close();
  }

  get fileSize(): number {
    return this.#fileSize;
  }
}

/**
 * Requests up to this size are copied on the event loop when the page cache
 * has them (one preadv2 with RWF_NOWAIT) and otherwise go to io_uring.
 * Larger ones would serialise big memory copies on this one thread: reads
 * go to io_uring's kernel workers (IOSQE_ASYNC), writes to libuv's thread
 * pool (buffered io_uring writes to one file are run one at a time by the
 * kernel). Chosen from `pnpm bench blk` (bench/README.md).
 */
const INLINE_MAX = 64 * 1024;

/** The io_uring ring to use for a transfer of `bytes`, or null for the thread pool. */
function ringFor(bytes: number, write: boolean): IoRing | null {
  if (write && bytes > INLINE_MAX) return null;
  return IoRing.shared();
}

/** pread until `into` is full; bytes past end of file read as zeros. */
export async function preadFull(fh: FileHandle, into: Uint8Array, offset: number): Promise<void> {
  // Page-cache hit: copied on this thread with one system call, no thread-pool hop (core's preadNoWait).
  const big = into.length > INLINE_MAX;
  let done = big ? 0 : (preadNoWait(fh.fd, [into], offset) ?? 0);
  if (done === into.length) return;
  const ring = ringFor(into.length, false);
  if (ring && done === 0) {
    done = await ring.readv(fh.fd, [into], offset, big);
    if (done === into.length) return;
  }
  while (done < into.length) {
    const { bytesRead } = await fh.read(into, done, into.length - done, offset + done);
    if (bytesRead === 0) {
      into.fill(0, done);
      return;
    }
    done += bytesRead;
  }
}

export async function pwriteFull(fh: FileHandle, from: Uint8Array, offset: number): Promise<void> {
  let done = from.length > INLINE_MAX ? 0 : (pwriteNoWait(fh.fd, [from], offset) ?? 0);
  if (done === from.length) return;
  const ring = ringFor(from.length, true);
  if (ring && done === 0) {
    done = await ring.writev(fh.fd, [from], offset);
    if (done === from.length) return;
  }
  while (done < from.length) {
    const { bytesWritten } = await fh.write(from, done, from.length - done, offset + done);
    if (bytesWritten === 0) throw new ImageRangeError(`write of ${from.length} bytes at offset ${offset} made no progress (disk full?)`);
    done += bytesWritten;
  }
}
