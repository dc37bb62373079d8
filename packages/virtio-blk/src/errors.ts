// Typed errors of the block backend (STYLE.md §7). Each has a stable `code`;
// the message names the bad value so a person can act on it. Image errors
// are 'config' errors at open (refuse to start) and become an IOERR status
// for the one request when met during I/O.

import { VmmError } from '@vmm/core';

/** A problem with an image file: corrupt or unsupported metadata, or an I/O failure on it. */
export class ImageError extends VmmError {
  constructor(code: string, message: string) {
    super(message, 'config', code);
  }
}

/** Image metadata contradicts the format (bad magic, overlapping tables, refcount 0 for a used cluster…). */
export class ImageCorruptError extends ImageError {
  constructor(message: string) {
    super('ERR_IMAGE_CORRUPT', message);
  }
}

/** Image uses a feature this backend does not implement (encryption, external data file, zstd…). */
export class ImageUnsupportedError extends ImageError {
  constructor(message: string) {
    super('ERR_IMAGE_UNSUPPORTED', message);
  }
}

/** A write, discard or write-zeroes on an image opened read-only. */
export class ImageReadOnlyError extends ImageError {
  constructor(message: string) {
    super('ERR_IMAGE_READONLY', message);
  }
}

/** An access outside the image's virtual size. */
export class ImageRangeError extends ImageError {
  constructor(message: string) {
    super('ERR_IMAGE_RANGE', message);
  }
}
