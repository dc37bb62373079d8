// A writer for the "newc" cpio format the kernel unpacks as initramfs
// (Linux Documentation/driver-api/early-userspace/buffer-format.rst):
// each entry is a 110-byte ASCII header "070701" + 13 eight-digit hex
// fields, the NUL-terminated name padded to a multiple of 4 bytes
// (counting the header), then the data padded to a multiple of 4; the
// archive ends with an entry named "TRAILER!!!". Several archives may be
// concatenated; the kernel unpacks them in order, later files replacing
// earlier ones — which is how `--exec` adds its command to a cached base.
import { GuestKitError } from './errors.ts';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Uint8Array; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'chardev'; path: string; major: number; minor: number; mode?: number };

const TRAILER = 'TRAILER!!!';
const encoder = new TextEncoder();

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffff_ffff) {
    throw new GuestKitError('ERR_GUEST_CPIO', `cpio: header field ${n} does not fit 32 bits`);
  }
  return n.toString(16).padStart(8, '0');
}

function checkPath(path: string): void {
  // Names are relative to the archive root ("bin/sh", not "/bin/sh"), as
  // the kernel's unpacker and `cpio -i` expect; ".." would escape it.
  if (path === '' || path.startsWith('/') || path.includes('\0') || path.split('/').some((c) => c === '..' || c === '')) {
    throw new GuestKitError('ERR_GUEST_CPIO', `cpio: invalid entry path ${JSON.stringify(path)}`);
  }
}

/** Accumulates entries and produces one newc archive. Output is deterministic (mtime 0, inode numbers in order). */
export class CpioWriter {
  #chunks: Uint8Array[] = [];
  #size = 0;
  #ino = 1;
  #finished = false;
  #paths = new Set<string>();

  add(entry: CpioEntry): this {
    if (this.#finished) throw new GuestKitError('ERR_GUEST_CPIO', 'cpio: add() after finish()');
    checkPath(entry.path);
    if (this.#paths.has(entry.path)) throw new GuestKitError('ERR_GUEST_CPIO', `cpio: duplicate entry ${entry.path}`);
    this.#paths.add(entry.path);
    switch (entry.type) {
      case 'dir':
        this.#emit(entry.path, S_IFDIR | (entry.mode ?? 0o755), 2, new Uint8Array(0), 0, 0);
        break;
      case 'file':
        this.#emit(entry.path, S_IFREG | (entry.mode ?? 0o644), 1, entry.data, 0, 0);
        break;
      case 'symlink':
        // A symlink's data is its target, without a terminating NUL.
        this.#emit(entry.path, S_IFLNK | 0o777, 1, encoder.encode(entry.target), 0, 0);
        break;
      case 'chardev':
        this.#emit(entry.path, S_IFCHR | (entry.mode ?? 0o600), 1, new Uint8Array(0), entry.major, entry.minor);
        break;
    }
    return this;
  }

  /** Appends the trailer and returns the archive, padded to 512 bytes as GNU cpio does. */
  finish(): Uint8Array {
    if (!this.#finished) {
      this.#emitRaw(TRAILER, 0, 1, new Uint8Array(0), 0, 0, 0);
      this.#finished = true;
      const padded = Math.ceil(this.#size / 512) * 512;
      if (padded > this.#size) this.#push(new Uint8Array(padded - this.#size));
    }
    const out = new Uint8Array(this.#size);
    let off = 0;
    for (const c of this.#chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }

  #emit(path: string, mode: number, nlink: number, data: Uint8Array, rmaj: number, rmin: number): void {
    this.#emitRaw(path, mode, nlink, data, rmaj, rmin, this.#ino++);
  }

  #emitRaw(name: string, mode: number, nlink: number, data: Uint8Array, rmaj: number, rmin: number, ino: number): void {
    const nameBytes = encoder.encode(name);
    const header =
      '070701' +
      hex8(ino) +
      hex8(mode) +
      hex8(0) + // uid: root
      hex8(0) + // gid
      hex8(nlink) +
      hex8(0) + // mtime: 0 for reproducible archives
      hex8(data.length) +
      hex8(0) + // devmajor
      hex8(0) + // devminor
      hex8(rmaj) +
      hex8(rmin) +
      hex8(nameBytes.length + 1) + // namesize counts the NUL
      hex8(0); // check: only used by the "070702" crc format
    this.#push(encoder.encode(header));
    this.#push(nameBytes);
    this.#push(new Uint8Array(1));
    this.#pad();
    if (data.length > 0) {
      this.#push(data);
      this.#pad();
    }
  }

  #pad(): void {
    const rem = this.#size % 4;
    if (rem !== 0) this.#push(new Uint8Array(4 - rem));
  }

  #push(b: Uint8Array): void {
    this.#chunks.push(b);
    this.#size += b.length;
  }
}

/** Convenience: one archive from a list of entries. */
export function writeCpio(entries: Iterable<CpioEntry>): Uint8Array {
  const w = new CpioWriter();
  for (const e of entries) w.add(e);
  return w.finish();
}
