// The control conversation between a NIC process and vmm-switch over the
// switch's unix socket (core's msgpack typed messages, length-prefixed, fds
// by SCM_RIGHTS). Only control travels here; frames go through the rings.

import { MessageDeframer, closeFd, decodeMessage, frameMessage, recvWithFds, sendWithFds, type TypedMessage } from '@vmm/core';

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
  slots: number;
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
  tx_packets: number;
  tx_bytes: number;
  /** Frames for this port dropped because its ring was full. */
  tx_dropped: number;
  /** Frames from this port that were malformed or corrupt. */
  rx_errors: number;
}

export interface StatsReply extends TypedMessage {
  type: 'stats-reply';
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
  if (v.type === 'attached') return typeof v.port === 'number' && typeof v.slots === 'number' && typeof v.capacity === 'number';
  if (v.type === 'stats-reply') return Array.isArray(v.ports) && Array.isArray(v.macs);
  return v.type === 'error' && typeof v.message === 'string';
}

export function sendMessage(fd: number, m: SwitchRequest | SwitchReply, fds: number[] = []): void {
  sendWithFds(fd, frameMessage(m), fds);
}

/** Reads whatever a nonblocking socket has: message bodies with the fds that came along, and whether the peer closed. */
export class MessageReader {
  private readonly deframer = new MessageDeframer();
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

export const decodeRequest = (b: Uint8Array): SwitchRequest => decodeMessage(b, isSwitchRequest);
export const decodeReply = (b: Uint8Array): SwitchReply => decodeMessage(b, isSwitchReply);
