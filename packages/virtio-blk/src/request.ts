// virtio-blk requests, transport-independent (STYLE.md §3, §5): a
// descriptor chain (already bounded by the virtqueue's chain iterator) is
// parsed into a typed request, validating everything the guest wrote, and
// then executed against a BlockImage. Nothing is read from or written to
// guest memory outside the chain's own buffers.
//
// Layout (virtio 1.2 §5.2.6): struct virtio_blk_req { le32 type; le32
// reserved; le64 sector; u8 data[]; u8 status; }. With VIRTIO_F_VERSION_1
// the framing is free (§2.7.4, "message framing"): the header may be split
// over descriptors and the status byte is simply the last device-writable
// byte, so parsing works on the byte streams, not on descriptor counts.

import type { DescriptorChain, GuestMemory } from '@vmm/core';
import type { BlockImage } from './image.ts';
import type { BlkOp } from './stats.ts';
import {
  DWZ_SEGMENT_LEN,
  REQ_HEADER_LEN,
  SECTOR_SHIFT,
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from './spec.ts';

/** The accounting op of each request type that is accounted (QEMU's virtio-blk: write-zeroes are writes, discards unmaps). */
const ACCOUNTED_AS: Partial<Record<number, BlkOp>> = {
  [VIRTIO_BLK_T_IN]: 'read',
  [VIRTIO_BLK_T_OUT]: 'write',
  [VIRTIO_BLK_T_FLUSH]: 'flush',
  [VIRTIO_BLK_T_DISCARD]: 'unmap',
  [VIRTIO_BLK_T_WRITE_ZEROES]: 'write',
};

/**
 * The buffers of a chain as core's bounded iterator yields them: loops,
 * indices, lengths and the readable-before-writable order are already
 * checked there (SplitQueue.parse); this layer checks the blk protocol.
 */
export type ChainBuffers = Pick<DescriptorChain, 'readable' | 'writable'>;

/** Limits and switches the parser checks against (the device's config space and features). */
export interface BlkLimits {
  /** Capacity in 512-byte sectors. */
  capacitySectors: number;
  readOnly: boolean;
  discard: boolean;
  writeZeroes: boolean;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
}

/** A discard/write-zeroes range (struct virtio_blk_discard_write_zeroes). */
export interface DwzRange {
  sector: number;
  sectors: number;
  unmap: boolean;
}

interface Base {
  /** Zero-copy view of the status byte. */
  status: Uint8Array;
}

export type BlkRequest =
  | (Base & { type: 'in'; sector: number; segments: Uint8Array[]; bytes: number })
  | (Base & { type: 'out'; sector: number; segments: Uint8Array[]; bytes: number })
  | (Base & { type: 'flush' })
  | (Base & { type: 'get-id'; segments: Uint8Array[]; bytes: number })
  | (Base & { type: 'discard'; ranges: DwzRange[] })
  | (Base & { type: 'write-zeroes'; ranges: DwzRange[] })
  /** Invalid but answerable: the status byte gets `code`; `op` is what the header asked for, when it is an accounted one (stats.ts). */
  | (Base & { type: 'error'; code: typeof VIRTIO_BLK_S_IOERR | typeof VIRTIO_BLK_S_UNSUPP; reason: string; op?: BlkOp });

/** No status byte can be written: the chain goes back with used length 0. */
export interface RejectedChain {
  type: 'reject';
  reason: string;
}

/** Zero-copy views of a stream of buffers (checked against guest memory again: never trust a caller). */
function views(mem: GuestMemory, segs: ChainBuffers['readable'], writable: boolean): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const d of segs) if (d.len > 0) out.push(...mem.slices(d.addr, d.len, writable ? 'write' : 'read'));
  return out;
}

/** Split `bufs` into the first `n` bytes and the rest (subarrays, no copies). */
function splitAt(bufs: Uint8Array[], n: number): [Uint8Array[], Uint8Array[]] {
  const head: Uint8Array[] = [];
  const tail: Uint8Array[] = [];
  let left = n;
  for (const b of bufs) {
    if (left >= b.length) {
      head.push(b);
      left -= b.length;
    } else if (left > 0) {
      head.push(b.subarray(0, left));
      tail.push(b.subarray(left));
      left = 0;
    } else tail.push(b);
  }
  return [head, tail];
}

function total(bufs: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.length;
  return n;
}

function gather(bufs: readonly Uint8Array[], n: number): Uint8Array {
  const out = new Uint8Array(n);
  let o = 0;
  for (const b of bufs) {
    if (o >= n) break;
    const k = Math.min(b.length, n - o);
    out.set(b.subarray(0, k), o);
    o += k;
  }
  return out;
}

/**
 * Parse a chain. Validation order: the status byte first (without it
 * nothing can be reported), then every buffer against guest memory, then
 * the header, then the type-specific rules of virtio 1.2 §5.2.6.
 */
export function parseRequest(mem: GuestMemory, chain: ChainBuffers, limits: BlkLimits): BlkRequest | RejectedChain {
  let last = undefined as ChainBuffers['writable'][number] | undefined;
  for (const w of chain.writable) if (w.len > 0) last = w;
  if (last === undefined) return { type: 'reject', reason: 'the chain has no device-writable byte for the status' };
  let status: Uint8Array;
  try {
    status = mem.slice(last.addr + last.len - 1, 1, 'write');
  } catch (e) {
    return { type: 'reject', reason: `status byte outside guest memory: ${(e as Error).message}` };
  }
  let op: BlkOp | undefined = undefined; // known once the header is read
  const err = (reason: string, code: typeof VIRTIO_BLK_S_IOERR | typeof VIRTIO_BLK_S_UNSUPP = VIRTIO_BLK_S_IOERR): BlkRequest =>
    op === undefined ? { type: 'error', code, reason, status } : { type: 'error', code, reason, status, op };

  let readable: Uint8Array[];
  let writableBufs: Uint8Array[];
  try {
    readable = views(mem, chain.readable, false);
    writableBufs = views(mem, chain.writable, true);
  } catch (e) {
    return err(`buffer outside guest memory: ${(e as Error).message}`);
  }
  const [hdrBufs, outData] = splitAt(readable, REQ_HEADER_LEN);
  if (total(hdrBufs) < REQ_HEADER_LEN) return err(`request header is ${total(hdrBufs)} bytes, not ${REQ_HEADER_LEN}`);
  const [inData] = splitAt(writableBufs, total(writableBufs) - 1);
  const hdr = new DataView(gather(hdrBufs, REQ_HEADER_LEN).buffer);
  const type = hdr.getUint32(0, true);
  op = ACCOUNTED_AS[type];
  const sector64 = hdr.getBigUint64(8, true);
  const outBytes = total(outData);
  const inBytes = total(inData);

  switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
      const isIn = type === VIRTIO_BLK_T_IN;
      if (isIn && outBytes !== 0) return err(`read request carries ${outBytes} device-readable data bytes`);
      if (!isIn && inBytes !== 0) return err(`write request carries ${inBytes} device-writable data bytes`);
      if (!isIn && limits.readOnly) return err('write to a read-only device');
      const bytes = isIn ? inBytes : outBytes;
      if (bytes % SECTOR_SIZE !== 0) return err(`data length ${bytes} is not a multiple of ${SECTOR_SIZE}`);
      if (sector64 + BigInt(bytes >> SECTOR_SHIFT) > BigInt(limits.capacitySectors)) {
        return err(`sectors ${sector64}+${bytes >> SECTOR_SHIFT} are beyond the capacity of ${limits.capacitySectors}`);
      }
      const sector = Number(sector64);
      return isIn ? { type: 'in', sector, segments: inData, bytes, status } : { type: 'out', sector, segments: outData, bytes, status };
    }
    case VIRTIO_BLK_T_FLUSH:
      if (outBytes !== 0 || inBytes !== 0) return err(`flush request carries ${outBytes + inBytes} data bytes`);
      return { type: 'flush', status };
    case VIRTIO_BLK_T_GET_ID:
      if (outBytes !== 0) return err(`get-id request carries ${outBytes} device-readable data bytes`);
      if (inBytes === 0) return err('get-id request has no buffer for the id');
      return { type: 'get-id', segments: inData, bytes: Math.min(inBytes, VIRTIO_BLK_ID_BYTES), status };
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
      const isDiscard = type === VIRTIO_BLK_T_DISCARD;
      const name = isDiscard ? 'discard' : 'write-zeroes';
      if (isDiscard ? !limits.discard : !limits.writeZeroes) return err(`${name} was not offered`, VIRTIO_BLK_S_UNSUPP);
      if (inBytes !== 0) return err(`${name} request carries ${inBytes} device-writable data bytes`);
      if (limits.readOnly) return err(`${name} on a read-only device`);
      if (outBytes === 0 || outBytes % DWZ_SEGMENT_LEN !== 0) return err(`${name} payload of ${outBytes} bytes is not a non-empty multiple of ${DWZ_SEGMENT_LEN}`);
      const count = outBytes / DWZ_SEGMENT_LEN;
      const maxSeg = isDiscard ? limits.maxDiscardSeg : limits.maxWriteZeroesSeg;
      const maxSectors = isDiscard ? limits.maxDiscardSectors : limits.maxWriteZeroesSectors;
      if (count > maxSeg) return err(`${name} has ${count} segments, more than ${maxSeg}`);
      const payload = new DataView(gather(outData, outBytes).buffer);
      const ranges: DwzRange[] = [];
      for (let i = 0; i < count; i++) {
        const s = payload.getBigUint64(i * 16, true);
        const n = payload.getUint32(i * 16 + 8, true);
        const flags = payload.getUint32(i * 16 + 12, true);
        // §5.2.6.2: unknown flags, or unmap on a discard, are UNSUPP.
        if ((flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0 || (isDiscard && flags !== 0)) return err(`${name} segment ${i} has unsupported flags 0x${flags.toString(16)}`, VIRTIO_BLK_S_UNSUPP);
        if (n > maxSectors) return err(`${name} segment ${i} covers ${n} sectors, more than ${maxSectors}`);
        if (s + BigInt(n) > BigInt(limits.capacitySectors)) return err(`${name} segment ${i} (sectors ${s}+${n}) is beyond the capacity of ${limits.capacitySectors}`);
        ranges.push({ sector: Number(s), sectors: n, unmap: (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0 });
      }
      return isDiscard ? { type: 'discard', ranges, status } : { type: 'write-zeroes', ranges, status };
    }
    default:
      return err(`request type ${type} is not supported`, VIRTIO_BLK_S_UNSUPP);
  }
}

/** Block image as seen by execute; raw images add scatter/gather I/O. */
type ImageWithVectors = BlockImage & {
  readv?(offset: number, into: readonly Uint8Array[]): Promise<void>;
  writev?(offset: number, from: readonly Uint8Array[]): Promise<void>;
};

export interface ExecuteResult {
  /** Bytes written into the chain's device-writable buffers (the used length). */
  usedLen: number;
  status: number;
  /** Why the status is not OK, for the log. */
  error?: string;
}

async function forSegments(offset: number, segments: readonly Uint8Array[], fn: (off: number, seg: Uint8Array) => Promise<void>): Promise<void> {
  const ops: Promise<void>[] = [];
  let pos = offset;
  for (const s of segments) {
    ops.push(fn(pos, s));
    pos += s.length;
  }
  await Promise.all(ops);
}

/**
 * Execute a parsed request: do the I/O, write the status byte, return the
 * used length. Image errors become IOERR for this request only.
 */
export async function executeRequest(req: BlkRequest, image: BlockImage, serial: Uint8Array): Promise<ExecuteResult> {
  const img = image as ImageWithVectors;
  let usedLen = 1;
  let status: number = VIRTIO_BLK_S_OK;
  let error: string | undefined;
  try {
    switch (req.type) {
      case 'in': {
        const off = req.sector * SECTOR_SIZE;
        if (img.readv && req.segments.length > 1) await img.readv(off, req.segments);
        else await forSegments(off, req.segments, (o, s) => img.read(o, s));
        usedLen = req.bytes + 1;
        break;
      }
      case 'out': {
        const off = req.sector * SECTOR_SIZE;
        if (img.writev && req.segments.length > 1) await img.writev(off, req.segments);
        else await forSegments(off, req.segments, (o, s) => img.write(o, s));
        break;
      }
      case 'flush':
        await img.flush();
        break;
      case 'get-id': {
        // Up to 20 bytes; a shorter id is NUL-padded within the 20 (§5.2.6).
        const id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
        id.set(serial.subarray(0, VIRTIO_BLK_ID_BYTES));
        let o = 0;
        for (const s of req.segments) {
          if (o >= req.bytes) break;
          const k = Math.min(s.length, req.bytes - o);
          s.set(id.subarray(o, o + k));
          o += k;
        }
        usedLen = req.bytes + 1;
        break;
      }
      case 'discard':
        for (const r of req.ranges) await img.discard(r.sector * SECTOR_SIZE, r.sectors * SECTOR_SIZE);
        break;
      case 'write-zeroes':
        for (const r of req.ranges) await img.writeZeroes(r.sector * SECTOR_SIZE, r.sectors * SECTOR_SIZE, r.unmap);
        break;
      case 'error':
        status = req.code;
        error = req.reason;
        break;
    }
  } catch (e) {
    status = VIRTIO_BLK_S_IOERR;
    error = `${req.type} failed: ${(e as Error).message}`;
    // A failed read may have filled part of the buffers; report only the status as written.
    usedLen = 1;
  }
  req.status[0] = status;
  return error === undefined ? { usedLen, status } : { usedLen, status, error };
}
