// virtio-iommu requests, transport-independent (STYLE.md §3): a chain of
// the request queue is parsed into a typed request, every field the
// driver wrote checked once, before anything is executed (execute.ts).
//
// Framing (virtio 1.2 §5.13.6): a device-readable part (head + the
// request's fields) and a device-writable part ending with the 4-byte
// tail { u8 status; u8 reserved[3] }; PROBE's writable part starts with
// probe_size bytes of properties. A chain whose writable part cannot hold
// a tail, or whose type is unknown, is returned unwritten with used
// length 0 ("the device SHOULD NOT write the buffer").

import type { GuestMemory, Segment } from '@vmm/core';
import {
  ATTACH_LEN,
  DETACH_LEN,
  MAP_LEN,
  PROBE_LEN,
  REQ_TAIL_LEN,
  UNMAP_LEN,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_T_ATTACH,
  VIRTIO_IOMMU_T_DETACH,
  VIRTIO_IOMMU_T_MAP,
  VIRTIO_IOMMU_T_PROBE,
  VIRTIO_IOMMU_T_UNMAP,
} from './spec.ts';

/** The writable place the answer goes to: the tail, and (PROBE) the properties before it. */
export interface Reply {
  /** Zero-copy views of the whole device-writable part, in order. */
  writable: Uint8Array[];
  /** Bytes in the writable part (the tail is its last 4). */
  writableLen: number;
}

/** Field values above 2^53 stay bigints: they are out of every range we accept and are rejected by value. */
export type IommuRequest =
  | { type: 'attach'; domain: number; endpoint: number; flags: number; reservedNonZero: boolean }
  | { type: 'detach'; domain: number; endpoint: number }
  | { type: 'map'; domain: number; virtStart: bigint; virtEnd: bigint; physStart: bigint; flags: number }
  | { type: 'unmap'; domain: number; virtStart: bigint; virtEnd: bigint; reservedNonZero: boolean }
  | { type: 'probe'; endpoint: number; propertiesLen: number }
  /** Answerable but malformed: the tail gets `status`. */
  | { type: 'error'; status: typeof VIRTIO_IOMMU_S_INVAL; reason: string };

export type Parsed = { req: IommuRequest; reply: Reply } | { reject: string };

const NAMES: Record<number, { name: IommuRequest['type']; len: number }> = {
  [VIRTIO_IOMMU_T_ATTACH]: { name: 'attach', len: ATTACH_LEN },
  [VIRTIO_IOMMU_T_DETACH]: { name: 'detach', len: DETACH_LEN },
  [VIRTIO_IOMMU_T_MAP]: { name: 'map', len: MAP_LEN },
  [VIRTIO_IOMMU_T_UNMAP]: { name: 'unmap', len: UNMAP_LEN },
  [VIRTIO_IOMMU_T_PROBE]: { name: 'probe', len: PROBE_LEN },
};

/** The largest device-readable part accepted: no request is near this; more is a malformed chain. */
export const MAX_READABLE = 4096;

function gather(mem: GuestMemory, segs: readonly Segment[], max: number): Uint8Array {
  const out = new Uint8Array(max);
  let n = 0;
  for (const s of segs) {
    if (n >= max) break;
    for (const part of mem.slices(s.addr, Math.min(s.len, max - n), 'read')) {
      out.set(part, n);
      n += part.length;
    }
  }
  return out.subarray(0, n);
}

/**
 * Parses one request chain. `probeSize` is the config space's probe_size
 * (the properties a PROBE reply must have room for).
 */
export function parseRequest(mem: GuestMemory, chain: { readable: readonly Segment[]; writable: readonly Segment[]; readableLen: number; writableLen: number }, probeSize: number): Parsed {
  if (chain.writableLen < REQ_TAIL_LEN) return { reject: `the chain has ${chain.writableLen} device-writable bytes, no room for the 4-byte tail` };
  if (chain.readableLen < 1) return { reject: 'the chain has no device-readable head' };
  let writable: Uint8Array[];
  let bytes: Uint8Array;
  try {
    writable = [];
    for (const s of chain.writable) if (s.len > 0) writable.push(...mem.slices(s.addr, s.len, 'write'));
    bytes = gather(mem, chain.readable, Math.min(chain.readableLen, MAX_READABLE + 1));
  } catch (e) {
    return { reject: `request buffers are not in guest memory: ${(e as Error).message}` };
  }
  const reply: Reply = { writable, writableLen: chain.writableLen };
  const type = bytes[0]!;
  const known = NAMES[type];
  if (!known) return { reject: `unknown request type ${type}` };
  const err = (reason: string): Parsed => ({ req: { type: 'error', status: VIRTIO_IOMMU_S_INVAL, reason }, reply });
  // Head reserved bytes are ignored (§5.13.6.2: "The device MUST ignore field reserved of struct virtio_iommu_req_head").
  if (chain.readableLen !== known.len) {
    return err(`${known.name} request has ${chain.readableLen} device-readable bytes, expected ${known.len}`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u32 = (o: number): number => v.getUint32(o, true);
  const u64 = (o: number): bigint => v.getBigUint64(o, true);
  const zero = (from: number, to: number): boolean => bytes.subarray(from, to).every((b) => b === 0);
  switch (known.name) {
    case 'attach':
      return { req: { type: 'attach', domain: u32(4), endpoint: u32(8), flags: u32(12), reservedNonZero: !zero(16, 20) }, reply };
    case 'detach':
      // DETACH reserved is ignored (§5.13.6.4 "The device MUST ignore reserved").
      return { req: { type: 'detach', domain: u32(4), endpoint: u32(8) }, reply };
    case 'map':
      return { req: { type: 'map', domain: u32(4), virtStart: u64(8), virtEnd: u64(16), physStart: u64(24), flags: u32(32) }, reply };
    case 'unmap':
      return { req: { type: 'unmap', domain: u32(4), virtStart: u64(8), virtEnd: u64(16), reservedNonZero: !zero(24, 28) }, reply };
    case 'probe': {
      // PROBE reserved is ignored (§5.13.6.7 "The device MUST ignore field reserved").
      const propertiesLen = chain.writableLen - REQ_TAIL_LEN;
      if (propertiesLen < probeSize) return err(`probe request has room for ${propertiesLen} bytes of properties, probe_size is ${probeSize}`);
      return { req: { type: 'probe', endpoint: u32(4), propertiesLen }, reply };
    }
    default:
      return { reject: `unknown request type ${type}` };
  }
}

/** Writes `data` at `offset` of the writable part (scattered over its views). */
export function writeReply(reply: Reply, offset: number, data: Uint8Array): void {
  let pos = 0;
  for (const w of reply.writable) {
    const end = pos + w.length;
    const a = Math.max(offset, pos);
    const b = Math.min(offset + data.length, end);
    if (a < b) w.set(data.subarray(a - offset, b - offset), a - pos);
    pos = end;
  }
}

/** Writes the tail { status, reserved[3] = 0 } into the last 4 writable bytes. */
export function writeStatus(reply: Reply, status: number): void {
  writeReply(reply, reply.writableLen - REQ_TAIL_LEN, Uint8Array.of(status, 0, 0, 0));
}
