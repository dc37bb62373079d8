// The one module that talks to libc through koffi (STYLE.md §10). Every
// other package uses these typed wrappers; nothing else imports koffi.
// Each unsafe call says why it is sound.
//
// Readiness: fds are watched with koffi.node.poll, which registers a libuv
// uv_poll_t on the calling thread's own event loop (epoll underneath). A
// readable kick eventfd or socket therefore wakes the JavaScript thread
// directly, with no helper thread and no hop through libuv's thread pool
// (koffi `.async` calls would each pin one of UV_THREADPOOL_SIZE threads
// while blocked, and a worker_thread poller adds a postMessage hop per
// wake-up). Measured on the 2-core build machine, eventfd write → wake →
// write round trips: about 9 µs idle and 22 µs under load (load average 13)
// with koffi.node.poll, against 130-160 µs under the same load for a blocking
// read issued with koffi `.async` on the thread pool.

import koffi from 'koffi';
import { VmmError } from './errors.ts';

const libc = koffi.load('libc.so.6');

// Pointers that point into memory this module owns are passed as plain
// integers (`uintptr_t`): on x86-64 and aarch64 Linux a pointer argument and
// a 64-bit integer argument travel in the same register, and a user-space
// address (< 2^47) is exact in a JS number.
const memfd_create = libc.func('int memfd_create(const char *name, unsigned int flags)');
const ftruncate = libc.func('int ftruncate(int fd, long length)');
const mmap = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)');
const munmap_ = libc.func('int munmap(uintptr_t addr, size_t length)');
const close = libc.func('int close(int fd)');
const memmove = libc.func('void *memmove(void *dst, void *src, size_t n)');
const eventfd_ = libc.func('int eventfd(unsigned int initval, int flags)');
const read_ = libc.func('long read(int fd, uintptr_t buf, size_t n)');
const write_ = libc.func('long write(int fd, uintptr_t buf, size_t n)');
const socket_ = libc.func('int socket(int domain, int type, int protocol)');
const socketpair_ = libc.func('int socketpair(int domain, int type, int protocol, uintptr_t sv)');
const bind_ = libc.func('int bind(int fd, uintptr_t addr, uint32_t len)');
const listen_ = libc.func('int listen(int fd, int backlog)');
const accept4_ = libc.func('int accept4(int fd, uintptr_t addr, uintptr_t len, int flags)');
const connect_ = libc.func('int connect(int fd, uintptr_t addr, uint32_t len)');
const sendmsg_ = libc.func('long sendmsg(int fd, uintptr_t msg, int flags)');
const recvmsg_ = libc.func('long recvmsg(int fd, uintptr_t msg, int flags)');
const shutdown_ = libc.func('int shutdown(int fd, int how)');
const fcntl_ = libc.func('int fcntl(int fd, int cmd, ...)');
const dup_ = libc.func('int dup(int fd)');
const lseek_ = libc.func('long lseek(int fd, long offset, int whence)');
const poll_ = libc.func('int poll(uintptr_t fds, unsigned long nfds, int timeout)');
const epoll_create1 = libc.func('int epoll_create1(int flags)');
const epoll_ctl = libc.func('int epoll_ctl(int epfd, int op, int fd, uintptr_t event)');
const open_ = libc.func('int open(const char *path, int flags)');
const ioctl_ptr = libc.func('int ioctl(int fd, unsigned long req, uintptr_t arg)');
const syscall_ = libc.func('long syscall(long number, ...)');
const preadv2_ = libc.func('long preadv2(int fd, uintptr_t iov, int iovcnt, long offset, int flags)');
const pwritev2_ = libc.func('long pwritev2(int fd, uintptr_t iov, int iovcnt, long offset, int flags)');

const PROT_READ_WRITE = 0x1 | 0x2;
const MAP_SHARED = 0x01;
const MAP_PRIVATE = 0x02;
const MAP_FIXED = 0x10;
const MAP_ANONYMOUS = 0x20;
const MFD_CLOEXEC = 0x1;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;
const PAGE = 4096;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
const EFD_SEMAPHORE = 1;
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CTRUNC = 0x8;
const MSG_CMSG_CLOEXEC = 0x40000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const POLLIN = 0x1;
const POLLOUT = 0x4;
const SEEK_END = 2;

const RWF_NOWAIT = 0x8;
const EOPNOTSUPP = 95;

export const EAGAIN = 11;
export const EINTR = 4;

/** Most fds one message may carry (vhost-user needs 8 for SET_MEM_TABLE; 32 leaves headroom). */
export const MAX_FDS_PER_MESSAGE = 32;

export class SyscallError extends VmmError {
  override readonly code = 'ERR_SYSCALL';
  readonly errno: number;
  readonly call: string;
  constructor(call: string, errno: number) {
    super(`${call} failed: errno ${errno}`, 'transient');
    this.errno = errno;
    this.call = call;
  }
}

function errno(): number {
  return koffi.errno();
}

// ---------------------------------------------------------------------------
// Scratch memory for syscalls that take pointers to structures containing
// pointers (sendmsg/recvmsg, sockaddr, poll arrays). It is a private
// anonymous mapping made once per isolate: its address never changes, so the
// addresses written inside msghdr stay valid, and every call is synchronous
// on this thread, so no two calls share it at once.
// Layout: [0,64) msghdr, [64,80) iovec, [128,512) control, [512,640) sockaddr_un,
// [1024, 2048) pollfd array, [2048, 2060) epoll_event, [2304, 2368) termios,
// [2560, 2816) ptsname, [4096, SCRATCH) data.
// ---------------------------------------------------------------------------
const SCRATCH_SIZE = 4096 + 65536;
const SCRATCH_DATA = 4096;
const SCRATCH_DATA_MAX = SCRATCH_SIZE - SCRATCH_DATA;
const OFF_MSGHDR = 0;
const OFF_IOVEC = 64;
const OFF_CONTROL = 128;
const CONTROL_MAX = 16 + 4 * MAX_FDS_PER_MESSAGE; // CMSG_SPACE(4*32) = 144 ≤ 384
const OFF_SOCKADDR = 512;
const OFF_POLLFD = 1024;
const MAX_POLLFD = 128; // 8 bytes each

const scratchPtr = mmap(null, SCRATCH_SIZE, PROT_READ_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
if (koffi.address(scratchPtr) === MAP_FAILED) throw new SyscallError('mmap(scratch)', errno());
const scratchAddr = Number(koffi.address(scratchPtr));
const scratch = new Uint8Array(koffi.view(scratchPtr, SCRATCH_SIZE));
const scratchView = new DataView(scratch.buffer);

// ---------------------------------------------------------------------------
// memfd / mmap
// ---------------------------------------------------------------------------

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

/** mmap(MAP_SHARED) of `size` bytes of fd at `offset`, as an ArrayBuffer (lives until munmapBuffer, or the process's end). */
export function mmapShared(fd: number, size: number, offset = 0): ArrayBuffer {
  // Sound: the kernel picks the address; koffi.view spans exactly the mapped length.
  const p = mmap(null, size, PROT_READ_WRITE, MAP_SHARED, fd, offset);
  if (koffi.address(p) === MAP_FAILED) throw new SyscallError(`mmap(fd ${fd}, size ${size}, offset ${offset})`, errno());
  return koffi.view(p, size);
}

/** Host address of the first byte of a buffer whose backing store never moves (mmap'd views, shared and wasm memories). */
export function bufferAddress(target: ArrayBufferLike): number {
  // memmove(p, p, 0) copies nothing and returns p: a portable way to learn the buffer's address.
  return Number(koffi.address(memmove(new Uint8Array(target), new Uint8Array(target), 0)));
}

/**
 * munmap a buffer returned by mmapShared. The caller guarantees that no view
 * over it is used afterwards (touching it would fault): only call this once
 * every consumer of the mapping has been told it is gone.
 */
export function munmapBuffer(buffer: ArrayBuffer): void {
  const addr = bufferAddress(buffer);
  const len = Math.ceil(buffer.byteLength / PAGE) * PAGE;
  // Sound: addr/len are exactly one mapping made by mmapShared (page-aligned start, length rounded as the kernel did).
  if ((munmap_(addr, len) as number) !== 0) throw new SyscallError('munmap', errno());
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
  const base = BigInt(bufferAddress(target));
  // Sound: the range lies inside a mapping we own (checked above), is page-aligned,
  // and V8 never moves a shared/wasm backing store, so MAP_FIXED replaces only our pages.
  const want = base + BigInt(targetOffset);
  const p = mmap(koffi.as(Number(want), 'void *'), size, PROT_READ_WRITE, MAP_SHARED | MAP_FIXED, fd, fdOffset);
  if (koffi.address(p) !== want) throw new SyscallError('mmap(MAP_FIXED)', errno());
}

export function closeFd(fd: number): void {
  close(fd);
}

/** dup(2): a second, independent descriptor for the same open file (close-on-exec is not inherited). */
export function dupFd(fd: number): number {
  const r = dup_(fd) as number;
  if (r < 0) throw new SyscallError(`dup(${fd})`, errno());
  return r;
}

/** Size of a regular file or memfd (lseek to the end; the file offset of a memfd is unused by mmap). */
export function fdSize(fd: number): number {
  const r = lseek_(fd, 0, SEEK_END) as number;
  if (r < 0) throw new SyscallError(`lseek(${fd})`, errno());
  return r;
}

export function setNonBlocking(fd: number, on: boolean): void {
  const fl = fcntl_(fd, F_GETFL) as number;
  if (fl < 0) throw new SyscallError(`fcntl(${fd}, F_GETFL)`, errno());
  const want = on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
  if (want !== fl && (fcntl_(fd, F_SETFL, 'int', want) as number) < 0) throw new SyscallError(`fcntl(${fd}, F_SETFL)`, errno());
}

// ---------------------------------------------------------------------------
// eventfd
// ---------------------------------------------------------------------------

export interface EventFdOptions {
  /** O_NONBLOCK: reads return null instead of blocking when the counter is 0 (default true). */
  nonBlocking?: boolean;
  semaphore?: boolean;
}

export function eventfdCreate(initval = 0, opts: EventFdOptions = {}): number {
  let flags = EFD_CLOEXEC;
  if (opts.nonBlocking ?? true) flags |= EFD_NONBLOCK;
  if (opts.semaphore) flags |= EFD_SEMAPHORE;
  const fd = eventfd_(initval, flags) as number;
  if (fd < 0) throw new SyscallError('eventfd', errno());
  return fd;
}

const EV_BUF = SCRATCH_DATA; // 8 bytes of scratch used only by the eventfd calls

/** Add `value` to the eventfd counter (a signal). On a nonblocking fd at the counter's maximum, returns false. */
export function eventfdWrite(fd: number, value: bigint = 1n): boolean {
  scratchView.setBigUint64(EV_BUF, value, true);
  // Sound: 8 bytes at scratch+EV_BUF are ours.
  const r = write_(fd, scratchAddr + EV_BUF, 8) as number;
  if (r === 8) return true;
  const e = errno();
  if (e === EAGAIN) return false;
  throw new SyscallError(`eventfd write(${fd})`, e);
}

/**
 * Read and reset the eventfd counter. On a nonblocking fd returns null when
 * the counter is 0; on a blocking fd waits for a signal.
 */
export function eventfdRead(fd: number): bigint | null {
  for (;;) {
    // Sound: 8 bytes at scratch+EV_BUF are ours.
    const r = read_(fd, scratchAddr + EV_BUF, 8) as number;
    if (r === 8) return scratchView.getBigUint64(EV_BUF, true);
    const e = errno();
    if (e === EAGAIN) return null;
    if (e === EINTR) continue;
    throw new SyscallError(`eventfd read(${fd})`, e);
  }
}

/**
 * Blocking wait for an eventfd (any fd) to become readable, then read it.
 * For worker threads that may block (vCPU, I/O workers); never call on the
 * main thread of a process with other work. Returns null on timeout.
 */
export function eventfdWait(fd: number, timeoutMs = -1): bigint | null {
  for (;;) {
    const ready = pollFds([{ fd, events: 'in' }], timeoutMs);
    if (ready.length === 0) return null;
    const v = eventfdRead(fd);
    if (v !== null) return v;
  }
}

// ---------------------------------------------------------------------------
// poll(2) (blocking, for threads that may block) and event-loop readiness
// ---------------------------------------------------------------------------

export interface PollRequest {
  fd: number;
  events: 'in' | 'out' | 'inout';
}

export interface PollResult {
  fd: number;
  readable: boolean;
  writable: boolean;
  /** POLLHUP/POLLERR/POLLNVAL */
  hangup: boolean;
}

/** poll(2) over up to 128 fds; returns the ready ones (empty on timeout). Blocks the calling thread. */
export function pollFds(reqs: PollRequest[], timeoutMs: number): PollResult[] {
  if (reqs.length > MAX_POLLFD) throw new RangeError(`pollFds: ${reqs.length} fds exceed ${MAX_POLLFD}`);
  for (let i = 0; i < reqs.length; i++) {
    const r = reqs[i]!;
    const o = OFF_POLLFD + i * 8;
    scratchView.setInt32(o, r.fd, true);
    scratchView.setInt16(o + 4, (r.events === 'out' ? 0 : POLLIN) | (r.events === 'in' ? 0 : POLLOUT), true);
    scratchView.setInt16(o + 6, 0, true);
  }
  let n: number;
  for (;;) {
    // Sound: reqs.length pollfd structs (8 bytes each) lie inside scratch (checked above).
    n = poll_(scratchAddr + OFF_POLLFD, reqs.length, timeoutMs) as number;
    if (n >= 0) break;
    const e = errno();
    if (e !== EINTR) throw new SyscallError('poll', e);
  }
  const out: PollResult[] = [];
  if (n === 0) return out;
  for (let i = 0; i < reqs.length; i++) {
    const rev = scratchView.getInt16(OFF_POLLFD + i * 8 + 6, true);
    if (rev !== 0) out.push({ fd: reqs[i]!.fd, readable: (rev & POLLIN) !== 0, writable: (rev & POLLOUT) !== 0, hangup: (rev & 0x38) !== 0 });
  }
  return out;
}

const watched = new Set<number>();
let probeEpfd = -1;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const OFF_EPOLL_EVENT = 2048; // 12-byte packed struct epoll_event in scratch

/** Throws SyscallError unless epoll can watch `fd` (the check libuv's uv_poll_init makes). */
function checkPollable(fd: number): void {
  if (probeEpfd < 0) {
    probeEpfd = epoll_create1(O_CLOEXEC) as number;
    if (probeEpfd < 0) throw new SyscallError('epoll_create1', errno());
  }
  scratch.fill(0, OFF_EPOLL_EVENT, OFF_EPOLL_EVENT + 12);
  scratchView.setUint32(OFF_EPOLL_EVENT, POLLIN, true); // EPOLLIN == POLLIN
  // Sound: a 12-byte epoll_event in scratch; the probe epoll fd is ours and holds nothing else.
  if ((epoll_ctl(probeEpfd, EPOLL_CTL_ADD, fd, scratchAddr + OFF_EPOLL_EVENT) as number) !== 0) throw new SyscallError(`cannot watch fd ${fd} (epoll_ctl)`, errno());
  epoll_ctl(probeEpfd, EPOLL_CTL_DEL, fd, scratchAddr + OFF_EPOLL_EVENT);
}

export interface FdWatch {
  /** Stop watching (idempotent). The fd itself is not closed. */
  close(): void;
  /** Let the process exit even while this watch is active. */
  unref(): void;
  /** Undo unref(): the watch keeps the process alive again. */
  ref(): void;
}

/**
 * Call `onReadable` on this thread's event loop each time `fd` is readable
 * (level-triggered: the callback must drain the fd, or it fires again).
 * The fd must stay open until close() is called.
 */
export function watchReadable(fd: number, onReadable: () => void): FdWatch {
  // koffi.node.poll aborts the whole process (a fatal N-API error) when
  // uv_poll_init fails, so rule out every failure first: an fd epoll cannot
  // watch (a regular file or memfd: EPERM; a closed fd: EBADF), and an fd this
  // loop already watches (EEXIST).
  if (watched.has(fd)) throw new VmmError(`fd ${fd} is already watched on this thread`, 'transient', 'ERR_FD_WATCHED');
  checkPollable(fd);
  const h = koffi.node.poll(fd, { readable: true, disconnect: true }, () => onReadable());
  watched.add(fd);
  let closed = false;
  return {
    close() {
      if (closed) return;
      closed = true;
      h.close();
      watched.delete(fd);
    },
    unref() {
      h.unref();
    },
    ref() {
      h.ref();
    },
  };
}

/** Resolve once `fd` is readable (or hung up). */
export function waitReadable(fd: number): Promise<void> {
  return new Promise((resolve) => {
    const w = watchReadable(fd, () => {
      w.close();
      resolve();
    });
  });
}

// ---------------------------------------------------------------------------
// Unix stream sockets with SCM_RIGHTS
// ---------------------------------------------------------------------------

function writeSockaddrUn(path: string): number {
  const bytes = new TextEncoder().encode(path);
  // sun_path is 108 bytes including the terminating NUL (unix(7)).
  if (bytes.length === 0 || bytes.length > 107) throw new VmmError(`unix socket path of ${bytes.length} bytes (max 107): ${path}`, 'config', 'ERR_SOCKET_PATH');
  scratch.fill(0, OFF_SOCKADDR, OFF_SOCKADDR + 110);
  scratchView.setUint16(OFF_SOCKADDR, AF_UNIX, true);
  scratch.set(bytes, OFF_SOCKADDR + 2);
  return 2 + bytes.length + 1;
}

function unixSocket(nonBlocking: boolean): number {
  const fd = socket_(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0), 0) as number;
  if (fd < 0) throw new SyscallError('socket(AF_UNIX)', errno());
  return fd;
}

/** socket+bind+listen on a filesystem path (the path must not exist). Returns a nonblocking listening fd. */
export function unixListen(path: string, backlog = 16): number {
  const fd = unixSocket(true);
  const len = writeSockaddrUn(path);
  // Sound: sockaddr_un of `len` bytes written at scratch+OFF_SOCKADDR.
  if ((bind_(fd, scratchAddr + OFF_SOCKADDR, len) as number) !== 0) {
    const e = errno();
    close(fd);
    throw new SyscallError(`bind(${path})`, e);
  }
  if ((listen_(fd, backlog) as number) !== 0) {
    const e = errno();
    close(fd);
    throw new SyscallError(`listen(${path})`, e);
  }
  return fd;
}

/** accept4 on a listening fd: the new connection (nonblocking, close-on-exec), or null if none is pending. */
export function unixAccept(listenFd: number): number | null {
  for (;;) {
    const fd = accept4_(listenFd, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC) as number;
    if (fd >= 0) return fd;
    const e = errno();
    if (e === EAGAIN) return null;
    if (e === EINTR) continue;
    throw new SyscallError('accept4', e);
  }
}

/** Connect to a listening unix socket; the returned fd is nonblocking. Throws SyscallError (ENOENT, ECONNREFUSED...) if nobody listens. */
export function unixConnect(path: string): number {
  const fd = unixSocket(false);
  const len = writeSockaddrUn(path);
  // Sound: sockaddr_un of `len` bytes written at scratch+OFF_SOCKADDR.
  if ((connect_(fd, scratchAddr + OFF_SOCKADDR, len) as number) !== 0) {
    const e = errno();
    close(fd);
    throw new SyscallError(`connect(${path})`, e);
  }
  setNonBlocking(fd, true);
  return fd;
}

/** A connected pair of unix stream sockets (both nonblocking, close-on-exec). */
export function unixSocketPair(): [number, number] {
  // Sound: 8 bytes (int[2]) at scratch+OFF_SOCKADDR are ours.
  if ((socketpair_(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, scratchAddr + OFF_SOCKADDR) as number) !== 0) throw new SyscallError('socketpair', errno());
  return [scratchView.getInt32(OFF_SOCKADDR, true), scratchView.getInt32(OFF_SOCKADDR + 4, true)];
}

export function shutdownFd(fd: number): void {
  shutdown_(fd, 2);
}

function setupMsghdr(dataLen: number, controlLen: number): void {
  scratch.fill(0, OFF_MSGHDR, OFF_IOVEC + 16);
  // struct iovec { void *iov_base; size_t iov_len; }
  scratchView.setBigUint64(OFF_IOVEC, BigInt(scratchAddr + SCRATCH_DATA), true);
  scratchView.setBigUint64(OFF_IOVEC + 8, BigInt(dataLen), true);
  // struct msghdr { name, namelen, iov, iovlen, control, controllen, flags } (x86-64/aarch64 LP64 layout)
  scratchView.setBigUint64(OFF_MSGHDR + 16, BigInt(scratchAddr + OFF_IOVEC), true);
  scratchView.setBigUint64(OFF_MSGHDR + 24, 1n, true);
  scratchView.setBigUint64(OFF_MSGHDR + 32, controlLen > 0 ? BigInt(scratchAddr + OFF_CONTROL) : 0n, true);
  scratchView.setBigUint64(OFF_MSGHDR + 40, BigInt(controlLen), true);
}

/**
 * sendmsg(2) of `data` with `fds` attached as SCM_RIGHTS. Blocks only if the
 * socket is blocking; on a nonblocking socket whose buffer is full, waits
 * with poll (vhost-user messages are small; a full buffer means a stuck peer,
 * which the 5 s timeout turns into an error). Returns when all bytes are sent.
 */
export function sendWithFds(fd: number, data: Uint8Array, fds: readonly number[] = []): void {
  if (data.length > SCRATCH_DATA_MAX) throw new RangeError(`sendWithFds: ${data.length} bytes exceed ${SCRATCH_DATA_MAX}`);
  if (fds.length > MAX_FDS_PER_MESSAGE) throw new RangeError(`sendWithFds: ${fds.length} fds exceed ${MAX_FDS_PER_MESSAGE}`);
  let off = 0;
  let first = true;
  while (off < data.length || (first && data.length === 0)) {
    const chunk = data.subarray(off);
    scratch.set(chunk, SCRATCH_DATA);
    let controlLen = 0;
    if (first && fds.length > 0) {
      // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } + int fds[]
      controlLen = 16 + ((fds.length * 4 + 7) & ~7);
      scratch.fill(0, OFF_CONTROL, OFF_CONTROL + controlLen);
      scratchView.setBigUint64(OFF_CONTROL, BigInt(16 + fds.length * 4), true);
      scratchView.setInt32(OFF_CONTROL + 8, SOL_SOCKET, true);
      scratchView.setInt32(OFF_CONTROL + 12, SCM_RIGHTS, true);
      fds.forEach((f, i) => scratchView.setInt32(OFF_CONTROL + 16 + i * 4, f, true));
    }
    setupMsghdr(chunk.length, controlLen);
    // Sound: msghdr, iovec, control and data all lie in scratch, sized above.
    const r = sendmsg_(fd, scratchAddr + OFF_MSGHDR, MSG_NOSIGNAL) as number;
    if (r < 0) {
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) {
        if (pollFds([{ fd, events: 'out' }], 5000).length === 0) throw new SyscallError('sendmsg (peer not reading for 5 s)', e);
        continue;
      }
      throw new SyscallError(`sendmsg(${fd})`, e);
    }
    off += r;
    first = false;
    if (data.length === 0) break;
  }
}

export interface Received {
  /** Bytes read (0 = the peer closed the connection). */
  bytes: number;
  /** Descriptors received with these bytes (close-on-exec; the caller owns them). */
  fds: number[];
}

/**
 * recvmsg(2) of up to `into.length` bytes into `into`, collecting SCM_RIGHTS
 * fds. Nonblocking: returns null when nothing is available. Throws if the
 * fds were truncated (MSG_CTRUNC) after closing the ones that did arrive.
 */
export function recvWithFds(fd: number, into: Uint8Array): Received | null {
  const want = Math.min(into.length, SCRATCH_DATA_MAX);
  for (;;) {
    setupMsghdr(want, CONTROL_MAX);
    scratch.fill(0, OFF_CONTROL, OFF_CONTROL + CONTROL_MAX);
    // Sound: msghdr, iovec, control (CONTROL_MAX) and data (want) all lie in scratch.
    const r = recvmsg_(fd, scratchAddr + OFF_MSGHDR, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) as number;
    if (r < 0) {
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return null;
      throw new SyscallError(`recvmsg(${fd})`, e);
    }
    into.set(scratch.subarray(SCRATCH_DATA, SCRATCH_DATA + r));
    const fds: number[] = [];
    const controlLen = Number(scratchView.getBigUint64(OFF_MSGHDR + 40, true));
    let c = 0;
    while (c + 16 <= controlLen) {
      const len = Number(scratchView.getBigUint64(OFF_CONTROL + c, true));
      if (len < 16) break;
      const level = scratchView.getInt32(OFF_CONTROL + c + 8, true);
      const type = scratchView.getInt32(OFF_CONTROL + c + 12, true);
      if (level === SOL_SOCKET && type === SCM_RIGHTS) {
        for (let i = 0; i < (len - 16) / 4; i++) fds.push(scratchView.getInt32(OFF_CONTROL + c + 16 + i * 4, true));
      }
      c += (len + 7) & ~7;
    }
    const flags = scratchView.getInt32(OFF_MSGHDR + 48, true);
    if (flags & MSG_CTRUNC) {
      for (const f of fds) close(f);
      throw new SyscallError(`recvmsg(${fd}): more than ${MAX_FDS_PER_MESSAGE} fds (MSG_CTRUNC)`, 0);
    }
    return { bytes: r, fds };
  }
}

// ---------------------------------------------------------------------------
// Plain read/write into stable memory, and tap devices (/dev/net/tun)
// ---------------------------------------------------------------------------

/**
 * read(2) into `into`, which must lie in memory that never moves (an
 * mmapShared buffer): its address is passed to the kernel. Nonblocking fds:
 * null when nothing is there. Returns the byte count (0 = end of file).
 */
export function readStable(fd: number, into: Uint8Array): number | null {
  for (;;) {
    // Sound: the kernel writes at most into.length bytes at into's (stable) address.
    const r = read_(fd, hostAddress(into), into.length) as number;
    if (r >= 0) return r;
    const e = errno();
    if (e === EAGAIN) return null;
    if (e === EINTR) continue;
    throw new SyscallError(`read(${fd})`, e);
  }
}

/** write(2) of `data` (in stable memory, as for readStable) in one call; false when a nonblocking fd would block. */
export function writeStable(fd: number, data: Uint8Array): boolean {
  for (;;) {
    // Sound: the kernel reads data.length bytes at data's (stable) address.
    const r = write_(fd, hostAddress(data), data.length) as number;
    if (r >= 0) return true;
    const e = errno();
    if (e === EAGAIN) return false;
    if (e === EINTR) continue;
    throw new SyscallError(`write(${fd})`, e);
  }
}

const O_RDWR = 2;
const TUNSETIFF = 0x400454ca;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
const IFNAMSIZ = 16;
/** TUNSETOFFLOAD flags (linux/if_tun.h): what the reader of the tap accepts. */
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;

/**
 * Open (or create) the tap `name` with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
 * (Documentation/networking/tuntap.rst) and a `vnetHdrSize`-byte virtio
 * header before each frame. Nonblocking, close-on-exec. Needs CAP_NET_ADMIN
 * unless the tap was made for this user.
 */
export function tapOpen(name: string, vnetHdrSize: number): number {
  const bytes = new TextEncoder().encode(name);
  if (bytes.length === 0 || bytes.length >= IFNAMSIZ) throw new VmmError(`tap name "${name}" must be 1 to ${IFNAMSIZ - 1} bytes`, 'config', 'ERR_TAP_NAME');
  const fd = open_('/dev/net/tun', O_RDWR | O_NONBLOCK | O_CLOEXEC) as number;
  if (fd < 0) throw new SyscallError('open(/dev/net/tun)', errno());
  try {
    // struct ifreq { char ifr_name[16]; short ifr_flags; ... } (40 bytes), in scratch.
    scratch.fill(0, OFF_SOCKADDR, OFF_SOCKADDR + 40);
    scratch.set(bytes, OFF_SOCKADDR);
    scratchView.setInt16(OFF_SOCKADDR + IFNAMSIZ, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
    // Sound: a 40-byte ifreq at scratch+OFF_SOCKADDR; the kernel reads and may write it back.
    if ((ioctl_ptr(fd, TUNSETIFF, scratchAddr + OFF_SOCKADDR) as number) < 0) throw new SyscallError(`ioctl(TUNSETIFF ${name})`, errno());
    scratchView.setInt32(OFF_SOCKADDR, vnetHdrSize, true);
    // Sound: an int at scratch+OFF_SOCKADDR.
    if ((ioctl_ptr(fd, TUNSETVNETHDRSZ, scratchAddr + OFF_SOCKADDR) as number) < 0) throw new SyscallError(`ioctl(TUNSETVNETHDRSZ ${vnetHdrSize})`, errno());
  } catch (e) {
    close(fd);
    throw e;
  }
  return fd;
}

/** TUNSETOFFLOAD: the offloads (TUN_F_*) frames read from the tap may carry. */
export function tapSetOffload(fd: number, flags: number): void {
  // Sound: TUNSETOFFLOAD takes the flags by value, no memory is passed.
  if ((ioctl_ptr(fd, TUNSETOFFLOAD, flags) as number) < 0) throw new SyscallError(`ioctl(TUNSETOFFLOAD 0x${flags.toString(16)})`, errno());
}

// ---------------------------------------------------------------------------
// Non-blocking file I/O: preadv2/pwritev2 with RWF_NOWAIT (Linux 4.14+ for
// reads, buffered writes on recent ext4/xfs). Data already in the page cache
// is copied on this thread with one system call; anything that would block
// (a page-cache miss, writeback throttling) fails at once with EAGAIN and the
// caller takes the thread-pool path instead. A libuv thread-pool hop costs
// tens of microseconds per request; this path costs one koffi call.
// ---------------------------------------------------------------------------
const IOV_MAX = 1024;
const iovPtr = mmap(null, IOV_MAX * 16, PROT_READ_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
if (koffi.address(iovPtr) === MAP_FAILED) throw new SyscallError('mmap(iovec scratch)', errno());
const iovAddr = Number(koffi.address(iovPtr));
const iov = new BigUint64Array(koffi.view(iovPtr, IOV_MAX * 16));
/** Host addresses of the ArrayBuffers seen so far (their backing stores never move: mmap'd guest RAM, off-heap stores). */
const bufferAddresses = new WeakMap<ArrayBufferLike, number>();
let nowaitWrites = true;

function fillIovec(bufs: readonly Uint8Array[]): number {
  if (bufs.length > IOV_MAX) return -1;
  for (let i = 0; i < bufs.length; i++) {
    const b = bufs[i]!;
    iov[2 * i] = BigInt(hostAddress(b));
    iov[2 * i + 1] = BigInt(b.length);
  }
  return bufs.length;
}

/**
 * preadv2(fd, bufs, offset, RWF_NOWAIT): bytes read (possibly short: only
 * what the page cache had), or null when nothing could be read without
 * blocking (or the call is not possible here). Never blocks, never throws
 * for an I/O condition: the caller's ordinary path reports real errors.
 */
export function preadNoWait(fd: number, bufs: readonly Uint8Array[], offset: number): number | null {
  const n = fillIovec(bufs);
  if (n <= 0) return null;
  // Sound: iov holds n {address, length} pairs of buffers the caller keeps alive across this synchronous call; fd is the caller's.
  const r = preadv2_(fd, iovAddr, n, offset, RWF_NOWAIT) as number;
  return r >= 0 ? r : null;
}

/** pwritev2(fd, bufs, offset, RWF_NOWAIT): bytes written, or null as for preadNoWait (and for good once the file system refuses NOWAIT writes). */
export function pwriteNoWait(fd: number, bufs: readonly Uint8Array[], offset: number): number | null {
  if (!nowaitWrites) return null;
  const n = fillIovec(bufs);
  if (n <= 0) return null;
  // Sound: as in preadNoWait.
  const r = pwritev2_(fd, iovAddr, n, offset, RWF_NOWAIT) as number;
  if (r >= 0) return r;
  if (errno() === EOPNOTSUPP) nowaitWrites = false;
  return null;
}

// ---------------------------------------------------------------------------
// io_uring (Linux 5.1+; io_uring(7), include/uapi/linux/io_uring.h): the
// three system calls and the ring mappings. The ring protocol itself (SQE
// and CQE layout, head/tail handshakes) lives in io-ring.ts over the
// ArrayBuffers returned here.
// ---------------------------------------------------------------------------
const SYS_IO_URING_SETUP = 425;
const SYS_IO_URING_ENTER = 426;
const SYS_IO_URING_REGISTER = 427;
const IORING_OFF_SQ_RING = 0;
const IORING_OFF_CQ_RING = 0x8000000;
const IORING_OFF_SQES = 0x10000000;
const IORING_REGISTER_EVENTFD = 4;
const IORING_FEAT_SINGLE_MMAP = 1;
const PARAMS_SIZE = 120;

export interface IoUringMaps {
  fd: number;
  sqEntries: number;
  cqEntries: number;
  /** The SQ ring (head, tail, mask, array …) and the CQ ring (head, tail, mask, cqes …); the same buffer with SINGLE_MMAP. */
  sq: ArrayBuffer;
  cq: ArrayBuffer;
  sqes: ArrayBuffer;
  /** Byte offsets from struct io_sqring_offsets / io_cqring_offsets. */
  sqOff: { head: number; tail: number; mask: number; array: number };
  cqOff: { head: number; tail: number; mask: number; cqes: number };
}

/** io_uring_setup(entries) and the three mappings; throws SyscallError (ENOSYS, EPERM where disabled) for the caller to fall back. */
export function ioUringSetup(entries: number): IoUringMaps {
  scratch.fill(0, SCRATCH_DATA, SCRATCH_DATA + PARAMS_SIZE);
  // Sound: struct io_uring_params (120 bytes, zeroed) sits in our scratch data area.
  const fd = syscall_(SYS_IO_URING_SETUP, 'unsigned int', entries, 'uintptr_t', scratchAddr + SCRATCH_DATA) as number;
  if (fd < 0) throw new SyscallError(`io_uring_setup(${entries})`, errno());
  const p = (o: number) => scratchView.getUint32(SCRATCH_DATA + o, true);
  const sqEntries = p(0);
  const cqEntries = p(4);
  const features = p(20);
  const sqOff = { head: p(40), tail: p(44), mask: p(48), array: p(64) };
  const cqOff = { head: p(80), tail: p(84), mask: p(88), cqes: p(100) };
  try {
    const sqSize = sqOff.array + sqEntries * 4;
    const cqSize = cqOff.cqes + cqEntries * 16;
    let sq: ArrayBuffer;
    let cq: ArrayBuffer;
    if (features & IORING_FEAT_SINGLE_MMAP) {
      sq = mmapShared(fd, Math.max(sqSize, cqSize), IORING_OFF_SQ_RING);
      cq = sq;
    } else {
      sq = mmapShared(fd, sqSize, IORING_OFF_SQ_RING);
      cq = mmapShared(fd, cqSize, IORING_OFF_CQ_RING);
    }
    const sqes = mmapShared(fd, sqEntries * 64, IORING_OFF_SQES);
    return { fd, sqEntries, cqEntries, sq, cq, sqes, sqOff, cqOff };
  } catch (e) {
    close(fd);
    throw e;
  }
}

/** io_uring_enter(fd, toSubmit, 0, 0): submit without waiting; returns how many SQEs the kernel consumed. */
export function ioUringSubmit(fd: number, toSubmit: number): number {
  // Sound: no pointer arguments (sig = NULL, sz = 0).
  const r = syscall_(SYS_IO_URING_ENTER, 'int', fd, 'unsigned int', toSubmit, 'unsigned int', 0, 'unsigned int', 0, 'uintptr_t', 0, 'size_t', 0) as number;
  if (r < 0) throw new SyscallError(`io_uring_enter(${fd}, ${toSubmit})`, errno());
  return r;
}

/** IORING_REGISTER_EVENTFD: the kernel signals `eventFd` whenever it posts a completion. */
export function ioUringRegisterEventfd(fd: number, eventFd: number): void {
  scratchView.setInt32(SCRATCH_DATA, eventFd, true);
  // Sound: one int at scratch+SCRATCH_DATA.
  const r = syscall_(SYS_IO_URING_REGISTER, 'int', fd, 'unsigned int', IORING_REGISTER_EVENTFD, 'uintptr_t', scratchAddr + SCRATCH_DATA, 'unsigned int', 1) as number;
  if (r < 0) throw new SyscallError(`io_uring_register(${fd}, EVENTFD)`, errno());
}

/** Host address of a buffer's first byte, cached per backing store (stores never move: mmap'd memory, off-heap ArrayBuffers). */
export function hostAddress(b: Uint8Array): number {
  let base = bufferAddresses.get(b.buffer);
  if (base === undefined) {
    base = bufferAddress(b.buffer);
    bufferAddresses.set(b.buffer, base);
  }
  return base + b.byteOffset;
}

// ---------------------------------------------------------------------------
// Process lifetime and terminals: job control (who owns the terminal),
// parent-death signals for device processes, pseudo-terminals, dup2.
// ---------------------------------------------------------------------------

const getpgrp_ = libc.func('int getpgrp(void)');
const getppid_ = libc.func('int getppid(void)');
const tcgetpgrp_ = libc.func('int tcgetpgrp(int fd)');
const isatty_ = libc.func('int isatty(int fd)');
const prctl_ = libc.func('int prctl(int option, ...)');
const dup2_ = libc.func('int dup2(int oldfd, int newfd)');
const posix_openpt_ = libc.func('int posix_openpt(int flags)');
const grantpt_ = libc.func('int grantpt(int fd)');
const unlockpt_ = libc.func('int unlockpt(int fd)');
const ptsname_r_ = libc.func('int ptsname_r(int fd, uintptr_t buf, size_t len)');
const tcgetattr_ = libc.func('int tcgetattr(int fd, uintptr_t termios)');
const tcsetattr_ = libc.func('int tcsetattr(int fd, int actions, uintptr_t termios)');
const cfmakeraw_ = libc.func('void cfmakeraw(uintptr_t termios)');

const PR_SET_PDEATHSIG = 1; // prctl(2)
const ENOTTY = 25;
const O_NOCTTY = 0o400;
const TCSANOW = 0;
const OFF_TERMIOS = 2304; // struct termios (60 bytes on Linux glibc) in scratch, after the epoll event
const TERMIOS_BYTES = 64;
const OFF_PTSNAME = 2560; // ptsname_r buffer
const PTSNAME_MAX = 256;

/** getpgrp(2): this process's process group. */
export function processGroup(): number {
  return getpgrp_() as number;
}

/** getppid(2): the parent's pid now (1, or a subreaper's, once the parent has died). */
export function parentPid(): number {
  return getppid_() as number;
}

/**
 * Whether this process may read the terminal on `fd` and change its modes
 * without being stopped: fd is a terminal and either our process group is
 * its foreground group (tcgetpgrp(3)), or it is not our controlling
 * terminal at all (ENOTTY), where job control does not apply. A background
 * job that reads its controlling terminal gets SIGTTIN and one that changes
 * its modes gets SIGTTOU (POSIX "General Terminal Interface", job control),
 * which stops the whole job.
 */
export function ownsTerminal(fd: number): boolean {
  if ((isatty_(fd) as number) !== 1) return false;
  const fg = tcgetpgrp_(fd) as number;
  if (fg < 0) return errno() === ENOTTY;
  return fg === (getpgrp_() as number);
}

const ICANON = 0o2; // termios c_lflag bits (asm-generic/termbits.h)
const ECHO = 0o10;
const OFF_LFLAG = 12; // struct termios { c_iflag, c_oflag, c_cflag, c_lflag, … }

/**
 * Whether the terminal on `fd` is in raw mode now (no canonical line
 * editing, no echo), whoever set it: a shell that hands the terminal to a
 * job may still be restoring its own modes when the job takes it, so a
 * console that wants raw mode checks that it has it.
 */
export function terminalIsRaw(fd: number): boolean {
  scratch.fill(0, OFF_TERMIOS, OFF_TERMIOS + TERMIOS_BYTES);
  // Sound: struct termios is 60 bytes on Linux/glibc; the scratch slot has 64.
  if ((tcgetattr_(fd, scratchAddr + OFF_TERMIOS) as number) !== 0) throw new SyscallError(`tcgetattr(${fd})`, errno());
  return (scratchView.getUint32(OFF_TERMIOS + OFF_LFLAG, true) & (ICANON | ECHO)) === 0;
}

/** isatty(3). */
export function isTerminal(fd: number): boolean {
  return (isatty_(fd) as number) === 1;
}

const SIGNAL_NUMBERS: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/**
 * prctl(PR_SET_PDEATHSIG): the kernel sends `signal` to this process when
 * the thread that spawned it exits (for a Node parent: its main thread,
 * i.e. the parent process). A device process uses it so that it never
 * outlives its orchestrator, even one killed with SIGKILL.
 */
export function setParentDeathSignal(signal: NodeJS.Signals): void {
  const n = SIGNAL_NUMBERS[signal];
  if (n === undefined) throw new VmmError(`setParentDeathSignal: unsupported signal ${signal}`, 'config', 'ERR_SIGNAL');
  // Sound: PR_SET_PDEATHSIG takes one integer argument and no pointers.
  if ((prctl_(PR_SET_PDEATHSIG, 'unsigned long', n) as number) !== 0) throw new SyscallError('prctl(PR_SET_PDEATHSIG)', errno());
}

/** dup2(2): make `newFd` refer to what `oldFd` refers to (used to point a daemon's stdio at /dev/null or a log file). */
export function dup2Fd(oldFd: number, newFd: number): void {
  if ((dup2_(oldFd, newFd) as number) < 0) throw new SyscallError(`dup2(${oldFd}, ${newFd})`, errno());
}

export interface Pty {
  /** The master side, ours (close-on-exec, blocking; a Node tty stream can own it). */
  master: number;
  /** The slave's path (/dev/pts/N) a terminal program opens. */
  path: string;
}

/**
 * A new pseudo-terminal pair (posix_openpt(3), grantpt, unlockpt, ptsname_r)
 * with the line discipline in raw mode (cfmakeraw(3)): no echo, no line
 * editing, no signals, no CR/LF translation, so bytes pass through
 * unchanged both ways, as QEMU's pty chardev sets it up. Without raw mode
 * the slave's echo would send the guest's own output back as its input.
 */
export function openPty(): Pty {
  const master = posix_openpt_(O_RDWR | O_NOCTTY | O_CLOEXEC) as number;
  if (master < 0) throw new SyscallError('posix_openpt', errno());
  const fail = (call: string): never => {
    const e = errno();
    close(master);
    throw new SyscallError(call, e);
  };
  if ((grantpt_(master) as number) !== 0) fail('grantpt');
  if ((unlockpt_(master) as number) !== 0) fail('unlockpt');
  scratch.fill(0, OFF_PTSNAME, OFF_PTSNAME + PTSNAME_MAX);
  // Sound: ptsname_r writes at most PTSNAME_MAX bytes (NUL included) into scratch.
  if ((ptsname_r_(master, scratchAddr + OFF_PTSNAME, PTSNAME_MAX) as number) !== 0) fail('ptsname_r');
  const nameBytes = scratch.subarray(OFF_PTSNAME, OFF_PTSNAME + PTSNAME_MAX);
  const path = new TextDecoder().decode(nameBytes.subarray(0, nameBytes.indexOf(0)));
  scratch.fill(0, OFF_TERMIOS, OFF_TERMIOS + TERMIOS_BYTES);
  // Sound: struct termios is 60 bytes on Linux/glibc; the scratch slot has 64.
  if ((tcgetattr_(master, scratchAddr + OFF_TERMIOS) as number) !== 0) fail('tcgetattr');
  cfmakeraw_(scratchAddr + OFF_TERMIOS);
  if ((tcsetattr_(master, TCSANOW, scratchAddr + OFF_TERMIOS) as number) !== 0) fail('tcsetattr');
  return { master, path };
}
