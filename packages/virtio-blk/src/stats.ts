// I/O accounting of one disk, kept where the requests are served (the
// vmm-blk process) and read by the orchestrator's query-blockstats over the
// control channel. The counters and their meaning are QEMU's
// (block/accounting.c; QMP's BlockDeviceStats in qapi/block-core.json), so
// the answer has QEMU's shape and tools that read QEMU's numbers read ours:
//
// - an operation is done (its bytes and operations counted) or failed (an
//   I/O error while executing it); both add their latency to the total time;
// - an invalid one was refused before any I/O (out of range, misaligned,
//   malformed for its type): VIRTIO_BLK_S_IOERR/UNSUPP, counted apart;
// - write-zeroes count as writes and discards as unmaps, as QEMU's
//   virtio-blk accounts them; get-id and unknown types are not accounted;
// - wr_highest_offset is the byte after the highest byte a successful write
//   or write-zeroes reached; idle_time_ns the time since the last accounted
//   operation, present once there was one.
//
// Requests are never merged here, so the *_merged counters stay 0, and no
// averaging intervals are configured (timed_stats is empty), as in a QEMU
// drive without `stats-intervals`. The counters live as long as the vmm-blk
// process: a back-end restarted by supervision starts again from zero.

import type { BlkRequest } from './request.ts';

/** QEMU's accounting types (BlockAcctType): the op an accounted request is. */
export type BlkOp = 'read' | 'write' | 'flush' | 'unmap';

/** The control message the orchestrator sends (DeviceProcess.request) to read the counters. */
export const BLOCKSTATS_QUERY = { query: 'blockstats' } as const;

/** QMP BlockDeviceStats (qapi/block-core.json) as QEMU 7.2 reports it, key for key. */
export interface BlockDeviceStats {
  rd_bytes: number;
  wr_bytes: number;
  unmap_bytes: number;
  rd_operations: number;
  wr_operations: number;
  flush_operations: number;
  unmap_operations: number;
  rd_total_time_ns: number;
  wr_total_time_ns: number;
  flush_total_time_ns: number;
  unmap_total_time_ns: number;
  wr_highest_offset: number;
  rd_merged: number;
  wr_merged: number;
  unmap_merged: number;
  idle_time_ns?: number;
  failed_rd_operations: number;
  failed_wr_operations: number;
  failed_flush_operations: number;
  failed_unmap_operations: number;
  invalid_rd_operations: number;
  invalid_wr_operations: number;
  invalid_flush_operations: number;
  invalid_unmap_operations: number;
  account_invalid: boolean;
  account_failed: boolean;
  timed_stats: never[];
}

interface OpCounters {
  bytes: number;
  ops: number;
  failed: number;
  invalid: number;
  totalNs: bigint;
}

const OPS: readonly BlkOp[] = ['read', 'write', 'flush', 'unmap'];
const SECTOR = 512;

/** The op and the bytes an executable request accounts for, or null (get-id). */
function accounted(req: BlkRequest): { op: BlkOp; bytes: number; end: number } | null {
  switch (req.type) {
    case 'in': return { op: 'read', bytes: req.bytes, end: 0 };
    case 'out': return { op: 'write', bytes: req.bytes, end: req.sector * SECTOR + req.bytes };
    case 'flush': return { op: 'flush', bytes: 0, end: 0 };
    case 'discard':
    case 'write-zeroes': {
      let bytes = 0;
      let end = 0;
      for (const r of req.ranges) {
        bytes += r.sectors * SECTOR;
        end = Math.max(end, (r.sector + r.sectors) * SECTOR);
      }
      return req.type === 'discard' ? { op: 'unmap', bytes, end: 0 } : { op: 'write', bytes, end };
    }
    default: return null;
  }
}

export class BlkStats {
  private readonly counters = new Map<BlkOp, OpCounters>(OPS.map((op) => [op, { bytes: 0, ops: 0, failed: 0, invalid: 0, totalNs: 0n }]));
  private highestOffset = 0;
  /** process.hrtime of the last accounted operation, or null before the first. */
  private lastAccess: bigint | null = null;
  private readonly now: () => bigint;

  /** `now` (monotonic nanoseconds) is for tests; the default is process.hrtime.bigint. */
  constructor(now: () => bigint = process.hrtime.bigint) {
    this.now = now;
  }

  /** A request was refused before any I/O (block_acct_invalid). `op` is undefined when its type is not accounted. */
  invalid(op: BlkOp | undefined): void {
    if (op === undefined) return;
    this.counters.get(op)!.invalid++;
    this.lastAccess = this.now();
  }

  /** Start timing a parsed request; the returned function accounts it when it has completed, successfully or not. */
  start(req: BlkRequest): (ok: boolean) => void {
    const a = accounted(req);
    if (a === null) return () => {};
    const t0 = this.now();
    return (ok) => {
      const t1 = this.now();
      const c = this.counters.get(a.op)!;
      if (ok) {
        c.ops++;
        c.bytes += a.bytes;
        if (a.end > this.highestOffset) this.highestOffset = a.end;
      } else c.failed++;
      c.totalNs += t1 - t0;
      this.lastAccess = t1;
    };
  }

  /** The counters in QMP's shape. */
  snapshot(): BlockDeviceStats {
    const c = (op: BlkOp): OpCounters => this.counters.get(op)!;
    const [rd, wr, fl, un] = [c('read'), c('write'), c('flush'), c('unmap')];
    return {
      rd_bytes: rd.bytes,
      wr_bytes: wr.bytes,
      unmap_bytes: un.bytes,
      rd_operations: rd.ops,
      wr_operations: wr.ops,
      flush_operations: fl.ops,
      unmap_operations: un.ops,
      rd_total_time_ns: Number(rd.totalNs),
      wr_total_time_ns: Number(wr.totalNs),
      flush_total_time_ns: Number(fl.totalNs),
      unmap_total_time_ns: Number(un.totalNs),
      wr_highest_offset: this.highestOffset,
      rd_merged: 0,
      wr_merged: 0,
      unmap_merged: 0,
      ...(this.lastAccess === null ? {} : { idle_time_ns: Number(this.now() - this.lastAccess) }),
      failed_rd_operations: rd.failed,
      failed_wr_operations: wr.failed,
      failed_flush_operations: fl.failed,
      failed_unmap_operations: un.failed,
      invalid_rd_operations: rd.invalid,
      invalid_wr_operations: wr.invalid,
      invalid_flush_operations: fl.invalid,
      invalid_unmap_operations: un.invalid,
      account_invalid: true,
      account_failed: true,
      timed_stats: [],
    };
  }
}
