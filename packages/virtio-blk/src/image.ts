// The storage interface the request layer executes against. Offsets and
// lengths are bytes; callers (the request layer) keep them inside
// `capacity` and sector-aligned, implementations check again and throw
// ImageRangeError rather than touch anything outside.

import { ImageRangeError, ImageReadOnlyError } from './errors.ts';

export interface BlockImage {
  /** Virtual size in bytes (a multiple of 512 for every format we open). */
  readonly capacity: number;
  readonly readOnly: boolean;
  /** Fill `into` with the bytes at [offset, offset + into.length). */
  read(offset: number, into: Uint8Array): Promise<void>;
  /** Store `from` at [offset, offset + from.length). Visible to later reads once the promise resolves. */
  write(offset: number, from: Uint8Array): Promise<void>;
  /**
   * Scatter read of consecutive bytes into several buffers with one system
   * call (preadv), for a request made of several guest segments. Optional:
   * without it the request layer reads segment by segment. A wrapper around
   * another image must forward it (faults.ts), or every request falls back
   * to the per-segment path.
   */
  readv?(offset: number, into: readonly Uint8Array[]): Promise<void>;
  /** Gather write (pwritev); optional like readv. */
  writev?(offset: number, from: readonly Uint8Array[]): Promise<void>;
  /** Make every completed write durable (fdatasync of every file written). */
  flush(): Promise<void>;
  /** Hint that [offset, offset+length) is unused; later reads return zeros or the old data. */
  discard(offset: number, length: number): Promise<void>;
  /** Make [offset, offset+length) read as zeros; `mayUnmap` allows deallocating it. */
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void>;
  close(): Promise<void>;
}

/** Shared argument checks for BlockImage implementations. */
export function checkRange(image: BlockImage, op: string, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > image.capacity) {
    throw new ImageRangeError(`${op} of ${length} bytes at offset ${offset} is outside the image's ${image.capacity} bytes`);
  }
}

export function checkWritable(image: BlockImage, op: string): void {
  if (image.readOnly) throw new ImageReadOnlyError(`${op} refused: the image is open read-only`);
}

/** Reusable zero-filled buffer for writing zeros in chunks. */
export const ZERO_CHUNK = new Uint8Array(1 << 20);

/** Run `fn` for each buffer at its offset, all at once: the per-segment path for an image without readv/writev. */
export async function forEachSegment(offset: number, bufs: readonly Uint8Array[], fn: (off: number, b: Uint8Array) => Promise<void>): Promise<void> {
  const ops: Promise<void>[] = [];
  let pos = offset;
  for (const b of bufs) {
    ops.push(fn(pos, b));
    pos += b.length;
  }
  await Promise.all(ops);
}
