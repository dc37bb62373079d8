// The NIC's fault injection (QMP inject-fault, docs/net.md "Faults"), apart
// from the device model so each half is tested alone: a bounded delay line
// (netem's idea: frames held N ms, at most a budget of frames and bytes, the
// rest dropped and counted) and the corruption of one byte that the frame's
// own checksum covers, so the receiving stack's validation must catch it.

import { etherPayload } from './offload.ts';
import { ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP } from './spec.ts';

/** Frames the delay fault may hold at once, as netem's default `limit 1000`. */
export const DELAY_MAX_FRAMES = 1000;
/** Bytes it may hold at once (GSO frames are up to 64 KiB each). */
export const DELAY_MAX_BYTES = 8 << 20;

interface Held {
  due: number;
  frame: Uint8Array;
}

/** A FIFO of frames, each released at its due time; order is kept even when the delay changes. */
export class DelayLine {
  private items: Held[] = [];
  private head = 0;
  private heldBytes = 0;

  readonly maxFrames: number;
  readonly maxBytes: number;

  constructor(maxFrames = DELAY_MAX_FRAMES, maxBytes = DELAY_MAX_BYTES) {
    this.maxFrames = maxFrames;
    this.maxBytes = maxBytes;
  }

  get length(): number {
    return this.items.length - this.head;
  }

  get bytes(): number {
    return this.heldBytes;
  }

  /** Hold a copy of `frame` until `due`; false (nothing held) when the budget is spent. */
  push(frame: Uint8Array, due: number): boolean {
    if (this.length >= this.maxFrames || this.heldBytes + frame.length > this.maxBytes) return false;
    // A later frame never overtakes an earlier one: its due time is at least the one before it.
    const last = this.length > 0 ? this.items[this.items.length - 1]!.due : -Infinity;
    this.items.push({ due: Math.max(due, last), frame: frame.slice() });
    this.heldBytes += frame.length;
    return true;
  }

  /** The oldest frame if it is due at `now`, else null. */
  due(now: number): Uint8Array | null {
    const h = this.items[this.head];
    return h !== undefined && h.due <= now ? h.frame : null;
  }

  /** Forget the oldest frame (delivered or dropped). */
  shift(): void {
    const h = this.items[this.head];
    if (h === undefined) return;
    this.heldBytes -= h.frame.length;
    this.head++;
    if (this.head > 64 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }

  /** When the oldest frame is due, or null when nothing is held. */
  nextDue(): number | null {
    return this.items[this.head]?.due ?? null;
  }

  clear(): void {
    this.items = [];
    this.head = 0;
    this.heldBytes = 0;
  }
}

/** Where a frame's transport checksum starts and what it covers, for IPv4/IPv6 TCP, UDP and ICMP (no fragments). */
interface Covered {
  /** First byte of the L4 header. */
  l4: number;
  /** First payload byte after the L4 header. */
  payload: number;
  /** End of the IP packet (Ethernet padding excluded: no checksum covers it). */
  end: number;
  /** Offset of the 16-bit checksum field. */
  csum: number;
  /** UDP over IPv4, where a zero checksum means "none" (RFC 768). */
  udp4: boolean;
}

function covered(f: Uint8Array): Covered | null {
  const eth = etherPayload(f);
  if (eth === null) return null;
  const { l3, type } = eth;
  let l4: number;
  let end: number;
  let proto: number;
  if (type === ETHERTYPE_IPV4) {
    if (f.length < l3 + 20 || f[l3]! >> 4 !== 4) return null;
    const ihl = (f[l3]! & 0xf) * 4;
    // A fragment's checksum covers the reassembled datagram: leave fragments alone (RFC 791 §3.1 flags, fragment offset).
    if (ihl < 20 || (((f[l3 + 6]! << 8) | f[l3 + 7]!) & 0x3fff) !== 0) return null;
    end = l3 + ((f[l3 + 2]! << 8) | f[l3 + 3]!);
    l4 = l3 + ihl;
    proto = f[l3 + 9]!;
    if (proto === IPPROTO_ICMPV6) return null;
  } else if (type === ETHERTYPE_IPV6) {
    // Extension headers are not walked: such a packet is left alone.
    if (f.length < l3 + 40 || f[l3]! >> 4 !== 6) return null;
    end = l3 + 40 + ((f[l3 + 4]! << 8) | f[l3 + 5]!);
    l4 = l3 + 40;
    proto = f[l3 + 6]!;
    if (proto === IPPROTO_ICMP) return null;
  } else return null;
  if (end > f.length || end < l4) return null;
  let hl: number;
  let csum: number;
  switch (proto) {
    case IPPROTO_TCP:
      if (end < l4 + 20) return null;
      hl = (f[l4 + 12]! >> 4) * 4;
      if (hl < 20) return null;
      csum = l4 + 16;
      break;
    case IPPROTO_UDP:
      hl = 8;
      csum = l4 + 6;
      break;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6:
      hl = 8;
      csum = l4 + 2;
      break;
    default:
      return null;
  }
  if (hl < 8 || end < l4 + hl) return null;
  const udp4 = proto === IPPROTO_UDP && type === ETHERTYPE_IPV4;
  // UDP over IPv4 with checksum 0 carries none: nothing would catch the corruption.
  if (udp4 && f[csum] === 0 && f[csum + 1] === 0) return null;
  return { l4, payload: l4 + hl, end, csum, udp4 };
}

/**
 * Flip one byte that the frame's TCP/UDP/ICMP checksum covers (RFC 9293
 * §3.1, RFC 768, RFC 792, RFC 4443 §2.3), in place: a payload byte when
 * there is one, else the checksum field itself. The headers the stack reads
 * before it validates (IP, the L4 lengths and offsets) stay intact, so the
 * receiver's checksum validation, not an earlier sanity check, rejects the
 * frame: it counts as InCsumErrors in the guest's /proc/net/snmp(6). A
 * one-byte change of a ones'-complement sum is always detected. Returns
 * false, changing nothing, for a frame no checksum covers that way (ARP,
 * fragments, UDPv4 without checksum, IPv6 extension headers).
 */
export function corruptCovered(f: Uint8Array, random: () => number): boolean {
  const c = covered(f);
  if (c === null) return false;
  if (c.end > c.payload) {
    f[c.payload + Math.floor(random() * (c.end - c.payload))]! ^= 0xff;
    return true;
  }
  const old = (f[c.csum]! << 8) | f[c.csum + 1]!;
  let v = old ^ 0xff00;
  // A UDPv4 checksum turned into 0 would read as "no checksum": change the other byte instead.
  if (c.udp4 && v === 0) v = old ^ 0x00ff;
  f[c.csum] = v >> 8;
  f[c.csum + 1] = v & 0xff;
  return true;
}
