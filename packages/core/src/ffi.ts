// The one module that talks to libc through koffi (STYLE.md §10). Every
// other package uses these typed wrappers; nothing else imports koffi.
// Each unsafe call says why it is sound.

import koffi from 'koffi';

const libc = koffi.load('libc.so.6');

const memfd_create = libc.func('int memfd_create(const char *name, unsigned int flags)');
const ftruncate = libc.func('int ftruncate(int fd, long length)');
const mmap = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)');
const close = libc.func('int close(int fd)');
const memmove = libc.func('void *memmove(void *dst, void *src, size_t n)');
const errnoLocation = libc.func('int *__errno_location(void)');

const PROT_READ_WRITE = 0x1 | 0x2;
const MAP_SHARED = 0x01;
const MAP_FIXED = 0x10;
const MFD_CLOEXEC = 0x1;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;
const PAGE = 4096;

export class SyscallError extends Error {
  readonly code = 'ERR_SYSCALL';
  readonly errno: number;
  constructor(call: string, errno: number) {
    super(`${call} failed: errno ${errno}`);
    this.errno = errno;
  }
}

function errno(): number {
  return koffi.decode(errnoLocation(), 'int') as number;
}

/** memfd_create + ftruncate: an anonymous file of `size` bytes, owned by the caller. */
export function memfdCreate(name: string, size: number): number {
  const fd = memfd_create(name, MFD_CLOEXEC) as number;
  if (fd < 0) throw new SyscallError('memfd_create', errno());
  if ((ftruncate(fd, size) as number) !== 0) {
    const e = errno();
    close(fd);
    throw new SyscallError(`ftruncate(${size})`, e);
  }
  return fd;
}

/** mmap(MAP_SHARED) of `size` bytes of fd at `offset`, as an ArrayBuffer (never unmapped: lives as long as the process). */
export function mmapShared(fd: number, size: number, offset = 0): ArrayBuffer {
  // Sound: the kernel picks the address; koffi.view spans exactly the mapped length.
  const p = mmap(null, size, PROT_READ_WRITE, MAP_SHARED, fd, offset);
  if (koffi.address(p) === MAP_FAILED) throw new SyscallError('mmap', errno());
  return koffi.view(p, size);
}

/**
 * Replace bytes [targetOffset, targetOffset+size) of an existing mapping
 * (for example a shared WebAssembly.Memory's buffer) with a MAP_SHARED
 * mapping of fd. Used to make guest RAM inside the hart's wasm memory the
 * same pages as the VM's RAM memfd.
 */
export function mmapFixedOver(target: SharedArrayBuffer | ArrayBuffer, targetOffset: number, fd: number, size: number, fdOffset = 0): void {
  if (targetOffset % PAGE !== 0 || size % PAGE !== 0) throw new RangeError(`mmapFixedOver: offset ${targetOffset} and size ${size} must be page-aligned`);
  if (targetOffset + size > target.byteLength) throw new RangeError(`mmapFixedOver: ${targetOffset}+${size} exceeds the target's ${target.byteLength} bytes`);
  // memmove(p, p, 0) copies nothing and returns p: a portable way to learn the buffer's address.
  const base = koffi.address(memmove(new Uint8Array(target), new Uint8Array(target), 0));
  // Sound: the range lies inside a mapping we own (checked above), is page-aligned,
  // and V8 never moves a shared/wasm backing store, so MAP_FIXED replaces only our pages.
  const want = base + BigInt(targetOffset);
  const p = mmap(koffi.as(Number(want), 'void *'), size, PROT_READ_WRITE, MAP_SHARED | MAP_FIXED, fd, fdOffset);
  if (koffi.address(p) !== want) throw new SyscallError('mmap(MAP_FIXED)', errno());
}

export function closeFd(fd: number): void {
  close(fd);
}
