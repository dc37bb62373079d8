// The control conversation between a NIC process and vmm-switch over the
// switch's unix socket: a few small JSON messages, each prefixed with its
// u32 length, fds by SCM_RIGHTS. Only control travels here; frames go
// through the rings.

import { closeFd, recvWithFds, sendWithFds, VmmError } from '@vmm/core';

interface TypedMessage {
  type: string;
}

/** Largest control message accepted: a bigger length prefix means a corrupt or hostile peer. */
const MAX_MESSAGE = 1 << 20;

export class SwitchProtocolError extends VmmError {
  constructor(message: string) {
    super(message, 'protocol', 'ERR_SWITCH_PROTOCOL');
  }
}

export interface AttachRequest extends TypedMessage {
  type: 'attach';
  /** The NIC's name in the switch's logs and counters. */
  name: string;
  mac: string;
}

/** Sent with the six link fds (ring-port.ts createLink order). */
export interface AttachReply extends TypedMessage {
  type: 'attached';
  port: number;
  /** Data area of each ring, bytes. */
  ringBytes: number;
  capacity: number;
}

export interface StatsRequest extends TypedMessage {
  type: 'stats';
}

export interface PortStats {
  port: number;
  name: string;
  mac: string;
  rx_packets: number;
  rx_bytes: number;
  /** The largest frame this port sent in (bytes, without the vnet header): above the MTU only for GSO super-frames. */
  rx_largest: number;
  tx_packets: number;
  tx_bytes: number;
  /** Frames for this port dropped because its ring was full. */
  tx_dropped: number;
  /** Frames from this port that were malformed or corrupt. */
  rx_errors: number;
}

export interface StatsReply extends TypedMessage {
  type: 'stats-reply';
  /** The switch process (it runs detached when started on demand). */
  pid: number;
  ports: PortStats[];
  macs: { mac: string; port: number; ageMs: number }[];
  flooded: number;
}

export interface ErrorReply extends TypedMessage {
  type: 'error';
  message: string;
}

export type SwitchRequest = AttachRequest | StatsRequest;
export type SwitchReply = AttachReply | StatsReply | ErrorReply;

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;

export function isSwitchRequest(v: unknown): v is SwitchRequest {
  if (!isObj(v)) return false;
  if (v.type === 'stats') return true;
  return v.type === 'attach' && typeof v.name === 'string' && v.name.length <= 64 && typeof v.mac === 'string';
}

export function isSwitchReply(v: unknown): v is SwitchReply {
  if (!isObj(v)) return false;
  if (v.type === 'attached') return typeof v.port === 'number' && typeof v.ringBytes === 'number' && typeof v.capacity === 'number';
  if (v.type === 'stats-reply') return Array.isArray(v.ports) && Array.isArray(v.macs);
  return v.type === 'error' && typeof v.message === 'string';
}

export function sendMessage(fd: number, m: SwitchRequest | SwitchReply, fds: number[] = []): void {
  const body = new TextEncoder().encode(JSON.stringify(m));
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length, true);
  out.set(body, 4);
  sendWithFds(fd, out, fds);
}

/** Reassembles length-prefixed messages from stream chunks. */
class Deframer {
  private buf = new Uint8Array(0);

  push(chunk: Uint8Array): Uint8Array[] {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    const out: Uint8Array[] = [];
    let o = 0;
    while (joined.length - o >= 4) {
      const len = new DataView(joined.buffer, o, 4).getUint32(0, true);
      if (len > MAX_MESSAGE) throw new SwitchProtocolError(`control message of ${len} bytes exceeds ${MAX_MESSAGE}`);
      if (joined.length - o - 4 < len) break;
      out.push(joined.slice(o + 4, o + 4 + len));
      o += 4 + len;
    }
    this.buf = joined.slice(o);
    return out;
  }
}

function decode<T extends TypedMessage>(b: Uint8Array, guard: (v: unknown) => v is T): T {
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder().decode(b));
  } catch (e) {
    throw new SwitchProtocolError(`undecodable control message of ${b.length} bytes: ${(e as Error).message}`);
  }
  if (!guard(v)) throw new SwitchProtocolError(`unexpected control message ${JSON.stringify(v).slice(0, 100)}`);
  return v;
}

/** Reads whatever a nonblocking socket has: message bodies with the fds that came along, and whether the peer closed. */
export class MessageReader {
  private readonly deframer = new Deframer();
  private readonly buf = new Uint8Array(65536);
  fds: number[] = [];

  read(fd: number): { bodies: Uint8Array[]; closed: boolean } {
    const bodies: Uint8Array[] = [];
    for (;;) {
      const r = recvWithFds(fd, this.buf);
      if (r === null) return { bodies, closed: false };
      this.fds.push(...r.fds);
      if (r.bytes === 0) return { bodies, closed: true };
      bodies.push(...this.deframer.push(this.buf.subarray(0, r.bytes)));
    }
  }

  /** Take the fds received so far (the caller owns them). */
  takeFds(): number[] {
    const f = this.fds;
    this.fds = [];
    return f;
  }

  closeFds(): void {
    for (const f of this.takeFds()) closeFd(f);
  }
}

export const decodeRequest = (b: Uint8Array): SwitchRequest => decode(b, isSwitchRequest);
export const decodeReply = (b: Uint8Array): SwitchReply => decode(b, isSwitchReply);
