// vhost-user message framing and payload codec, apart from protocol state
// (STYLE.md §6). Every message is validated against its request type before
// anyone acts on it: exact payload size, fd count, inner counts. Anything
// else is a VhostUserProtocolError and the connection is dropped.

import { VmmError } from '../errors.ts';
import type { IotlbMsg } from './iotlb.ts';
import {
  BackendReq, FLAG_REPLY, FLAG_VERSION_MASK, HEADER_SIZE, MAX_CONFIG_SIZE, MAX_MEM_TABLE_REGIONS, MAX_PAYLOAD, Req, reqName, VERSION, VRING_NOFD_MASK,
} from './protocol.ts';

export class VhostUserProtocolError extends VmmError {
  constructor(message: string, code = 'ERR_VHOST_USER_PROTOCOL') {
    super(message, 'protocol', code);
  }
}

export interface Message {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

export interface MemRegion {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userAddr: bigint;
  mmapOffset: bigint;
}

export interface VringState {
  index: number;
  num: number;
}

export interface VringAddr {
  index: number;
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

export interface ConfigPayload {
  offset: number;
  size: number;
  flags: number;
  data: Uint8Array;
}

export interface InflightPayload {
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

export function encodeHeader(request: number, flags: number, size: number): Uint8Array {
  const h = new Uint8Array(HEADER_SIZE);
  const v = new DataView(h.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size, true);
  return h;
}

export function encodeMessage(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const m = new Uint8Array(HEADER_SIZE + payload.length);
  m.set(encodeHeader(request, flags, payload.length));
  m.set(payload, HEADER_SIZE);
  return m;
}

export interface Header {
  request: number;
  flags: number;
  size: number;
}

/** Decode and check a header: version 1 and a payload no larger than MAX_PAYLOAD. */
export function decodeHeader(h: Uint8Array): Header {
  const v = new DataView(h.buffer, h.byteOffset, HEADER_SIZE);
  const request = v.getUint32(0, true);
  const flags = v.getUint32(4, true);
  const size = v.getUint32(8, true);
  if ((flags & FLAG_VERSION_MASK) !== VERSION) throw new VhostUserProtocolError(`${reqName(request)}: header version ${flags & FLAG_VERSION_MASK}, expected ${VERSION}`, 'ERR_VHOST_USER_VERSION');
  if (size > MAX_PAYLOAD) throw new VhostUserProtocolError(`${reqName(request)}: payload of ${size} bytes exceeds ${MAX_PAYLOAD}`, 'ERR_VHOST_USER_SIZE');
  return { request, flags, size };
}

const dv = (p: Uint8Array) => new DataView(p.buffer, p.byteOffset, p.byteLength);

// --- payload codecs ---------------------------------------------------------

export const u64 = {
  encode(v: bigint): Uint8Array {
    const p = new Uint8Array(8);
    dv(p).setBigUint64(0, v, true);
    return p;
  },
  decode(p: Uint8Array): bigint {
    return dv(p).getBigUint64(0, true);
  },
};

/** struct vhost_iotlb_msg {u64 iova, size, uaddr; u8 perm, type} (32 bytes with its padding, as QEMU and DPDK send it). */
export const IOTLB_MSG_SIZE = 32;
export const iotlbMsg = {
  encode(m: IotlbMsg): Uint8Array {
    const p = new Uint8Array(IOTLB_MSG_SIZE);
    const v = dv(p);
    v.setBigUint64(0, m.iova, true);
    v.setBigUint64(8, m.size, true);
    v.setBigUint64(16, m.uaddr, true);
    p[24] = m.perm;
    p[25] = m.type;
    return p;
  },
  decode(p: Uint8Array): IotlbMsg {
    const v = dv(p);
    return { iova: v.getBigUint64(0, true), size: v.getBigUint64(8, true), uaddr: v.getBigUint64(16, true), perm: p[24]!, type: p[25]! };
  },
};
/** The fields end at byte 26; the rest is padding some senders leave out. */
const iotlbRule = { size: [26, IOTLB_MSG_SIZE] as [number, number], fds: [0, 0] as [number, number] };

export const vringState = {
  encode(s: VringState): Uint8Array {
    const p = new Uint8Array(8);
    dv(p).setUint32(0, s.index, true);
    dv(p).setUint32(4, s.num, true);
    return p;
  },
  decode(p: Uint8Array): VringState {
    return { index: dv(p).getUint32(0, true), num: dv(p).getUint32(4, true) };
  },
};

/** struct vhost_vring_addr: index, flags, then desc, used, avail, log user addresses. */
export const vringAddr = {
  encode(a: VringAddr): Uint8Array {
    const p = new Uint8Array(40);
    const v = dv(p);
    v.setUint32(0, a.index, true);
    v.setUint32(4, a.flags, true);
    v.setBigUint64(8, a.desc, true);
    v.setBigUint64(16, a.used, true);
    v.setBigUint64(24, a.avail, true);
    v.setBigUint64(32, a.log, true);
    return p;
  },
  decode(p: Uint8Array): VringAddr {
    const v = dv(p);
    return { index: v.getUint32(0, true), flags: v.getUint32(4, true), desc: v.getBigUint64(8, true), used: v.getBigUint64(16, true), avail: v.getBigUint64(24, true), log: v.getBigUint64(32, true) };
  },
};

function encodeRegion(v: DataView, o: number, r: MemRegion): void {
  v.setBigUint64(o, r.guestPhysAddr, true);
  v.setBigUint64(o + 8, r.memorySize, true);
  v.setBigUint64(o + 16, r.userAddr, true);
  v.setBigUint64(o + 24, r.mmapOffset, true);
}
function decodeRegion(v: DataView, o: number): MemRegion {
  return { guestPhysAddr: v.getBigUint64(o, true), memorySize: v.getBigUint64(o + 8, true), userAddr: v.getBigUint64(o + 16, true), mmapOffset: v.getBigUint64(o + 24, true) };
}

/** SET_MEM_TABLE: u32 nregions, u32 padding, then nregions × 32-byte region descriptions. */
export const memTable = {
  encode(regions: MemRegion[]): Uint8Array {
    const p = new Uint8Array(8 + 32 * regions.length);
    const v = dv(p);
    v.setUint32(0, regions.length, true);
    regions.forEach((r, i) => encodeRegion(v, 8 + 32 * i, r));
    return p;
  },
  decode(p: Uint8Array): MemRegion[] {
    const v = dv(p);
    const n = v.getUint32(0, true);
    return Array.from({ length: n }, (_, i) => decodeRegion(v, 8 + 32 * i));
  },
};

/** ADD_MEM_REG / REM_MEM_REG: u64 padding then one region description. */
export const singleRegion = {
  encode(r: MemRegion): Uint8Array {
    const p = new Uint8Array(40);
    encodeRegion(dv(p), 8, r);
    return p;
  },
  decode(p: Uint8Array): MemRegion {
    return decodeRegion(dv(p), 8);
  },
};

/** GET/SET_CONFIG: u32 offset, u32 size, u32 flags, then size bytes. */
export const configPayload = {
  encode(c: { offset: number; flags?: number; data: Uint8Array }): Uint8Array {
    const p = new Uint8Array(12 + c.data.length);
    const v = dv(p);
    v.setUint32(0, c.offset, true);
    v.setUint32(4, c.data.length, true);
    v.setUint32(8, c.flags ?? 0, true);
    p.set(c.data, 12);
    return p;
  },
  decode(p: Uint8Array): ConfigPayload {
    const v = dv(p);
    const size = v.getUint32(4, true);
    return { offset: v.getUint32(0, true), size, flags: v.getUint32(8, true), data: p.subarray(12, 12 + size) };
  },
};

/** GET/SET_INFLIGHT_FD: u64 mmap_size, u64 mmap_offset, u16 num_queues, u16 queue_size (24 bytes with C padding). */
export const inflightPayload = {
  encode(i: InflightPayload): Uint8Array {
    const p = new Uint8Array(24);
    const v = dv(p);
    v.setBigUint64(0, i.mmapSize, true);
    v.setBigUint64(8, i.mmapOffset, true);
    v.setUint16(16, i.numQueues, true);
    v.setUint16(18, i.queueSize, true);
    return p;
  },
  decode(p: Uint8Array): InflightPayload {
    const v = dv(p);
    return { mmapSize: v.getBigUint64(0, true), mmapOffset: v.getBigUint64(8, true), numQueues: v.getUint16(16, true), queueSize: v.getUint16(18, true) };
  },
};

/** SET_LOG_BASE (with LOG_SHMFD): u64 mmap_size, u64 mmap_offset; one fd. Decoded for completeness: we do not offer dirty logging (no live migration yet). */
export const logPayload = {
  encode(l: { mmapSize: bigint; mmapOffset: bigint }): Uint8Array {
    const p = new Uint8Array(16);
    dv(p).setBigUint64(0, l.mmapSize, true);
    dv(p).setBigUint64(8, l.mmapOffset, true);
    return p;
  },
  decode(p: Uint8Array): { mmapSize: bigint; mmapOffset: bigint } {
    return { mmapSize: dv(p).getBigUint64(0, true), mmapOffset: dv(p).getBigUint64(8, true) };
  },
};

// --- per-request validation --------------------------------------------------

type Rule = { size: number | ((p: Uint8Array) => string | null) | [number, number]; fds: [number, number] | ((p: Uint8Array) => number) };

const exact = (n: number): Rule['size'] => n;
const none: Rule = { size: 0, fds: [0, 0] };
const u64Rule: Rule = { size: 8, fds: [0, 0] };
const stateRule: Rule = { size: 8, fds: [0, 0] };
const vringFdRule: Rule = { size: 8, fds: (p) => ((u64.decode(p) & VRING_NOFD_MASK) !== 0n ? 0 : 1) };

function memTableSize(p: Uint8Array): string | null {
  if (p.length < 8) return `payload ${p.length} < 8`;
  const n = dv(p).getUint32(0, true);
  if (n === 0 || n > MAX_MEM_TABLE_REGIONS) return `${n} regions (1..${MAX_MEM_TABLE_REGIONS})`;
  if (p.length !== 8 + 32 * n && p.length !== 8 + 32 * MAX_MEM_TABLE_REGIONS) return `payload ${p.length} for ${n} regions (want ${8 + 32 * n})`;
  return null;
}
function configSize(p: Uint8Array): string | null {
  if (p.length < 12) return `payload ${p.length} < 12`;
  const size = dv(p).getUint32(4, true);
  if (size > MAX_CONFIG_SIZE) return `config size ${size} > ${MAX_CONFIG_SIZE}`;
  if (p.length !== 12 + size) return `payload ${p.length} for config size ${size} (want ${12 + size})`;
  return null;
}

/** Front-end → back-end requests we implement, with their payload size and fd count. */
const requestRules = new Map<number, Rule>([
  [Req.GET_FEATURES, none],
  [Req.SET_FEATURES, u64Rule],
  [Req.SET_OWNER, none],
  [Req.RESET_OWNER, none],
  [Req.SET_MEM_TABLE, { size: memTableSize, fds: (p) => dv(p).getUint32(0, true) }],
  [Req.SET_VRING_NUM, stateRule],
  [Req.SET_VRING_ADDR, { size: exact(40), fds: [0, 0] }],
  [Req.SET_VRING_BASE, stateRule],
  [Req.GET_VRING_BASE, stateRule],
  [Req.SET_VRING_KICK, vringFdRule],
  [Req.SET_VRING_CALL, vringFdRule],
  [Req.SET_VRING_ERR, vringFdRule],
  [Req.GET_PROTOCOL_FEATURES, none],
  [Req.SET_PROTOCOL_FEATURES, u64Rule],
  [Req.GET_QUEUE_NUM, none],
  [Req.SET_VRING_ENABLE, stateRule],
  [Req.GET_CONFIG, { size: configSize, fds: [0, 0] }],
  [Req.SET_CONFIG, { size: configSize, fds: [0, 0] }],
  [Req.GET_INFLIGHT_FD, { size: [20, 24], fds: [0, 0] }],
  [Req.SET_INFLIGHT_FD, { size: [20, 24], fds: [1, 1] }],
  [Req.RESET_DEVICE, none],
  [Req.GET_MAX_MEM_SLOTS, none],
  [Req.ADD_MEM_REG, { size: exact(40), fds: [1, 1] }],
  // The spec allows (and asks to close) one stray fd on REM_MEM_REG for compatibility.
  [Req.REM_MEM_REG, { size: exact(40), fds: [0, 1] }],
  [Req.SET_STATUS, u64Rule],
  [Req.SET_BACKEND_REQ_FD, { size: 0, fds: [1, 1] }],
  [Req.GET_STATUS, none],
  [Req.IOTLB_MSG, iotlbRule],
]);

/** Back-end → front-end requests on the back-end channel (validated by the front-end). */
const backendRequestRules = new Map<number, Rule>([
  [BackendReq.IOTLB_MSG, iotlbRule],
  [BackendReq.CONFIG_CHANGE_MSG, none],
]);

/** Back-end → front-end replies. Requests without a reply of their own answer with a u64 REPLY_ACK. */
const replyRules = new Map<number, Rule>([
  [Req.GET_FEATURES, u64Rule],
  [Req.GET_PROTOCOL_FEATURES, u64Rule],
  [Req.GET_VRING_BASE, stateRule],
  [Req.GET_QUEUE_NUM, u64Rule],
  [Req.GET_CONFIG, { size: configSize, fds: [0, 0] }],
  [Req.GET_INFLIGHT_FD, { size: [20, 24], fds: [1, 1] }],
  [Req.GET_MAX_MEM_SLOTS, u64Rule],
  [Req.GET_STATUS, u64Rule],
  // The front-end always waits for the u64 status of an IOTLB message (QEMU sets NEED_REPLY whatever was negotiated).
  [Req.IOTLB_MSG, u64Rule],
]);

/** Requests that always have a reply (whether or not NEED_REPLY is set). */
export const hasReply = (request: number): boolean => replyRules.has(request);

function check(rule: Rule | undefined, m: Message, what: string): void {
  const name = reqName(m.request);
  if (rule === undefined) throw new VhostUserProtocolError(`unsupported ${what} ${name}`, 'ERR_VHOST_USER_UNKNOWN_REQUEST');
  const s = rule.size;
  let bad: string | null;
  if (typeof s === 'number') bad = m.payload.length === s ? null : `payload ${m.payload.length} bytes, expected ${s}`;
  else if (Array.isArray(s)) bad = m.payload.length >= s[0] && m.payload.length <= s[1] ? null : `payload ${m.payload.length} bytes, expected ${s[0]}..${s[1]}`;
  else bad = s(m.payload);
  if (bad !== null) throw new VhostUserProtocolError(`${what} ${name}: ${bad}`, 'ERR_VHOST_USER_SIZE');
  const f = rule.fds;
  const [lo, hi] = typeof f === 'function' ? [f(m.payload), f(m.payload)] : f;
  if (m.fds.length < lo || m.fds.length > hi) throw new VhostUserProtocolError(`${what} ${name}: ${m.fds.length} fds, expected ${lo === hi ? lo : `${lo}..${hi}`}`, 'ERR_VHOST_USER_FDS');
}

/** Validate a request received by a back-end. */
export function validateRequest(m: Message): void {
  if (m.flags & FLAG_REPLY) throw new VhostUserProtocolError(`request ${reqName(m.request)} has the REPLY flag`, 'ERR_VHOST_USER_FLAGS');
  check(requestRules.get(m.request), m, 'request');
}

/** Validate a request a front-end received on the back-end channel (sizes and fds, as validateRequest). */
export function validateBackendRequest(m: Message): void {
  if (m.flags & FLAG_REPLY) throw new VhostUserProtocolError(`back-end request ${m.request} has the REPLY flag`, 'ERR_VHOST_USER_FLAGS');
  const rule = backendRequestRules.get(m.request);
  if (rule === undefined) throw new VhostUserProtocolError(`unsupported back-end request ${m.request}`, 'ERR_VHOST_USER_UNKNOWN_REQUEST');
  check(rule, m, 'back-end request');
}

/** Validate a reply received by a front-end for `request`; `ack` when it is a REPLY_ACK u64. */
export function validateReply(m: Message, request: number, ack: boolean): void {
  if (m.request !== request) throw new VhostUserProtocolError(`reply to ${reqName(m.request)} while waiting for ${reqName(request)}`, 'ERR_VHOST_USER_REPLY');
  if (!(m.flags & FLAG_REPLY)) throw new VhostUserProtocolError(`${reqName(m.request)} reply lacks the REPLY flag`, 'ERR_VHOST_USER_FLAGS');
  check(ack ? u64Rule : replyRules.get(request), m, 'reply to');
}
