// Typed errors of the block backend (STYLE.md §7). Each has a stable `code`;
// the message names the bad value so a person can act on it.

/** A problem with an image file: corrupt or unsupported metadata, or an I/O failure on it. */
export class ImageError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'ImageError';
    this.code = code;
  }
}

/** Image metadata contradicts the format (bad magic, overlapping tables, refcount 0 for a used cluster…). */
export class ImageCorruptError extends ImageError {
  constructor(message: string) {
    super('ERR_IMAGE_CORRUPT', message);
    this.name = 'ImageCorruptError';
  }
}

/** Image uses a feature this backend does not implement (encryption, external data file, zstd…). */
export class ImageUnsupportedError extends ImageError {
  constructor(message: string) {
    super('ERR_IMAGE_UNSUPPORTED', message);
    this.name = 'ImageUnsupportedError';
  }
}

/** A write, discard or write-zeroes on an image opened read-only. */
export class ImageReadOnlyError extends ImageError {
  constructor(message: string) {
    super('ERR_IMAGE_READONLY', message);
    this.name = 'ImageReadOnlyError';
  }
}

/** An access outside the image's virtual size. */
export class ImageRangeError extends ImageError {
  constructor(message: string) {
    super('ERR_IMAGE_RANGE', message);
    this.name = 'ImageRangeError';
  }
}

/** A bad command line or option value for vmm-blk: refuse to start, say which. */
export class BlkConfigError extends Error {
  readonly code = 'ERR_BLK_CONFIG';
  constructor(message: string) {
    super(message);
    this.name = 'BlkConfigError';
  }
}
