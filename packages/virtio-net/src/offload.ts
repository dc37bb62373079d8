// Software fallbacks for the offloads a receiver did not negotiate: finish a
// partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM, virtio 1.2 §5.1.6.2.1) and
// split a TCP GSO super-frame into MSS-sized segments (what Linux's
// skb_gso_segment does for a device without TSO; RFC 9293 §3.1 header,
// RFC 791 §3.1 / RFC 8200 §3 for the IP fields rewritten per segment).
// Frames stay large between peers that take them; these run only on the
// receiving side when its driver cannot.

import type { VnetHeader } from './header.ts';
import {
  ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, IPPROTO_TCP, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
} from './spec.ts';

/** 16-bit ones'-complement sum of b[start, end) added to `sum` (RFC 1071), not folded. */
function sum16(b: Uint8Array, start: number, end: number, sum = 0): number {
  let i = start;
  for (; i + 1 < end; i += 2) sum += (b[i]! << 8) | b[i + 1]!;
  if (i < end) sum += b[i]! << 8;
  return sum;
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** Internet checksum of b[start, end) plus `initial`, complemented, ready to store. */
export function internetChecksum(b: Uint8Array, start: number, end: number, initial = 0): number {
  return ~fold(sum16(b, start, end, initial)) & 0xffff;
}

/**
 * Finish a partial checksum in place: the field at csum_start+csum_offset
 * holds the pseudo-header sum the sender put there; the checksum over
 * [csum_start, end) including it, complemented, replaces it.
 */
export function finishChecksum(frame: Uint8Array, h: Readonly<VnetHeader>): void {
  const at = h.csumStart + h.csumOffset;
  const c = internetChecksum(frame, h.csumStart, frame.length);
  frame[at] = c >> 8;
  frame[at + 1] = c & 0xff;
}

interface Layers {
  l3: number;
  l4: number;
  payload: number;
  v4: boolean;
}

/** Where an Ethernet frame's L3 packet starts and its EtherType, past one 802.1Q tag (IEEE 802.3 §3.2.6, 802.1Q §9.3); null when too short. */
export function etherPayload(f: Uint8Array): { l3: number; type: number } | null {
  if (f.length < ETH_HLEN) return null;
  const type = (f[12]! << 8) | f[13]!;
  if (type !== ETHERTYPE_VLAN) return { l3: ETH_HLEN, type };
  if (f.length < ETH_HLEN + 4) return null;
  return { l3: ETH_HLEN + 4, type: (f[16]! << 8) | f[17]! };
}

function layers(f: Uint8Array): Layers | null {
  const eth = etherPayload(f);
  if (eth === null) return null;
  const { l3, type } = eth;
  let l4: number;
  let v4: boolean;
  if (type === ETHERTYPE_IPV4) {
    if (f.length < l3 + 20) return null;
    const ihl = (f[l3]! & 0xf) * 4;
    if (ihl < 20 || f[l3 + 9] !== IPPROTO_TCP) return null;
    l4 = l3 + ihl;
    v4 = true;
  } else if (type === ETHERTYPE_IPV6) {
    // Extension headers before TCP are not handled: such a frame is dropped by the caller.
    if (f.length < l3 + 40 || f[l3 + 6] !== IPPROTO_TCP) return null;
    l4 = l3 + 40;
    v4 = false;
  } else return null;
  if (f.length < l4 + 20) return null;
  const doff = (f[l4 + 12]! >> 4) * 4;
  if (doff < 20 || f.length < l4 + doff) return null;
  return { l3, l4, payload: l4 + doff, v4 };
}

/** Sum of the TCP pseudo-header (RFC 9293 §3.1, RFC 8200 §8.1) for a TCP segment of `tcpLen` bytes. */
function pseudoHeaderSum(f: Uint8Array, l: Layers, tcpLen: number): number {
  if (l.v4) return sum16(f, l.l3 + 12, l.l3 + 20, IPPROTO_TCP + tcpLen);
  return sum16(f, l.l3 + 8, l.l3 + 40, IPPROTO_TCP + tcpLen);
}

/**
 * Split a TCPv4/TCPv6 GSO frame into segments of at most gso_size payload
 * bytes, each with its IP length, IPv4 id and header checksum, TCP sequence
 * number, flags (FIN/PSH only on the last, CWR only on the first) and a full
 * TCP checksum. Returns null when the frame is not the TCP packet its header
 * claims (the caller drops and counts it).
 */
export function segmentTcp(frame: Uint8Array, h: Readonly<VnetHeader>): Uint8Array[] | null {
  const type = h.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
  if (type !== VIRTIO_NET_HDR_GSO_TCPV4 && type !== VIRTIO_NET_HDR_GSO_TCPV6) return null;
  const l = layers(frame);
  if (l === null || l.v4 !== (type === VIRTIO_NET_HDR_GSO_TCPV4) || h.gsoSize === 0) return null;
  const mss = h.gsoSize;
  const total = frame.length - l.payload;
  const n = Math.max(1, Math.ceil(total / mss));
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.length);
  const seq0 = dv.getUint32(l.l4 + 4);
  const id0 = l.v4 ? dv.getUint16(l.l3 + 4) : 0;
  const tcpFlags = frame[l.l4 + 13]!;
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const off = i * mss;
    const len = Math.min(mss, total - off);
    const seg = new Uint8Array(l.payload + len);
    seg.set(frame.subarray(0, l.payload));
    seg.set(frame.subarray(l.payload + off, l.payload + off + len), l.payload);
    const sv = new DataView(seg.buffer);
    const tcpLen = seg.length - l.l4;
    if (l.v4) {
      sv.setUint16(l.l3 + 2, seg.length - l.l3);
      sv.setUint16(l.l3 + 4, (id0 + i) & 0xffff);
      sv.setUint16(l.l3 + 10, 0);
      sv.setUint16(l.l3 + 10, internetChecksum(seg, l.l3, l.l4));
    } else {
      sv.setUint16(l.l3 + 4, seg.length - l.l3 - 40);
    }
    sv.setUint32(l.l4 + 4, (seq0 + off) >>> 0);
    let f = tcpFlags;
    if (i < n - 1) f &= ~0x09; // FIN, PSH only on the last segment
    if (i > 0) f &= ~0x80; // CWR only on the first
    seg[l.l4 + 13] = f;
    sv.setUint16(l.l4 + 16, 0);
    sv.setUint16(l.l4 + 16, internetChecksum(seg, l.l4, seg.length, pseudoHeaderSum(seg, l, tcpLen)));
    out.push(seg);
  }
  return out;
}

/** Give a frame to a receiver that takes no checksum offload: finish its checksum if it has a partial one. */
export function needsChecksum(h: Readonly<VnetHeader>): boolean {
  return (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
}
