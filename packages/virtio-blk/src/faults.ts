// Fault injection inside the vmm-blk process (the orchestrator's
// `inject-fault`): a BlockImage wrapper that fails requests on command.
// An image error becomes VIRTIO_BLK_S_IOERR for that request only (see
// request.ts), which is what a guest sees from real hardware that fails a
// command; nothing is written for a failed request, so no data is damaged.

import { VmmError } from '@vmm/core';
import { forEachSegment, type BlockImage } from './image.ts';

export class InjectedFaultError extends VmmError {
  readonly errno: string;
  constructor(message: string, errno: 'EIO' | 'ENOSPC') {
    super(message, 'transient', errno === 'ENOSPC' ? 'ERR_INJECTED_ENOSPC' : 'ERR_INJECTED_EIO');
    this.errno = errno;
  }
}

/** A control message from the orchestrator (DeviceProcess.send). */
export type FaultCommand = { fault: 'fail-requests'; count: number } | { fault: 'enospc'; on: boolean } | { fault: 'clear' };

/** The `count` of a fail-requests command, checked: an integer 0..1,000,000, else a RangeError naming the value. */
export function failRequestCount(count: unknown): number {
  const n = Number(count);
  if (!Number.isInteger(n) || n < 0 || n > 1_000_000) throw new RangeError(`fail-requests: count=${String(count)} must be 0..1000000`);
  return n;
}

export class FaultInjectingImage implements BlockImage {
  readonly inner: BlockImage;
  /** Requests still to fail with an I/O error. */
  failNext = 0;
  /** Writes fail as if the host file system were full (ENOSPC); reads keep working. */
  enospc = false;

  constructor(inner: BlockImage) {
    this.inner = inner;
  }

  get capacity(): number { return this.inner.capacity; }
  get readOnly(): boolean { return this.inner.readOnly; }

  /** Apply a command; returns a description for the log, or throws naming the bad value. */
  control(m: Record<string, unknown>): string {
    switch (m.fault) {
      case 'fail-requests': {
        const n = failRequestCount(m.count);
        this.failNext = n;
        return `failing the next ${n} requests`;
      }
      case 'enospc':
        this.enospc = m.on !== false;
        return this.enospc ? 'writes fail with ENOSPC' : 'ENOSPC cleared';
      case 'clear':
        this.failNext = 0;
        this.enospc = false;
        return 'faults cleared';
      default:
        throw new RangeError(`unknown fault ${JSON.stringify(m.fault)}`);
    }
  }

  private check(op: string, isWrite: boolean): void {
    if (this.failNext > 0) {
      this.failNext--;
      throw new InjectedFaultError(`${op}: injected I/O error`, 'EIO');
    }
    if (isWrite && this.enospc) throw new InjectedFaultError(`${op}: injected ENOSPC (no space left on the host)`, 'ENOSPC');
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.check('read', false);
    await this.inner.read(offset, into);
  }
  async write(offset: number, from: Uint8Array): Promise<void> {
    this.check('write', true);
    await this.inner.write(offset, from);
  }
  // The vectored calls are forwarded when the inner image has them (raw:
  // one preadv/pwritev per request); a request is one fault either way.
  // Without these, every multi-segment request took the per-segment path.
  async readv(offset: number, into: readonly Uint8Array[]): Promise<void> {
    this.check('read', false);
    if (this.inner.readv) await this.inner.readv(offset, into);
    else await forEachSegment(offset, into, (o, b) => this.inner.read(o, b));
  }
  async writev(offset: number, from: readonly Uint8Array[]): Promise<void> {
    this.check('write', true);
    if (this.inner.writev) await this.inner.writev(offset, from);
    else await forEachSegment(offset, from, (o, b) => this.inner.write(o, b));
  }
  async flush(): Promise<void> {
    this.check('flush', false);
    await this.inner.flush();
  }
  async discard(offset: number, length: number): Promise<void> {
    this.check('discard', true);
    await this.inner.discard(offset, length);
  }
  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    this.check('write-zeroes', true);
    await this.inner.writeZeroes(offset, length, mayUnmap);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
