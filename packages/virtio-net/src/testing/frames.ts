// Frame builders for tests and benchmarks: Ethernet + IPv4/IPv6 + TCP/UDP
// with correct checksums, or with a partial (pseudo-header) checksum as a
// driver using checksum offload leaves it.

import { macToBytes, type Mac } from '../ctrl.ts';
import { internetChecksum } from '../offload.ts';
import { ETH_HLEN, ETHERTYPE_IPV4, IPPROTO_TCP, IPPROTO_UDP } from '../spec.ts';

export interface TcpFrameOptions {
  dst: Mac;
  src: Mac;
  srcIp?: number;
  dstIp?: number;
  srcPort?: number;
  dstPort?: number;
  seq?: number;
  payload: Uint8Array;
  /** Leave the TCP checksum partial (pseudo-header sum only), as for VIRTIO_NET_HDR_F_NEEDS_CSUM. */
  partial?: boolean;
  tcpFlags?: number;
}

/** An IPv4 TCP frame; returns it and the offsets a virtio_net_hdr needs. */
export function tcp4Frame(o: TcpFrameOptions): { frame: Uint8Array; csumStart: number; csumOffset: number; hdrLen: number } {
  const l3 = ETH_HLEN;
  const l4 = l3 + 20;
  const f = new Uint8Array(l4 + 20 + o.payload.length);
  const v = new DataView(f.buffer);
  macToBytes(o.dst, f, 0);
  macToBytes(o.src, f, 6);
  v.setUint16(12, ETHERTYPE_IPV4);
  f[l3] = 0x45;
  v.setUint16(l3 + 2, f.length - l3);
  v.setUint16(l3 + 4, 0x1234);
  f[l3 + 8] = 64;
  f[l3 + 9] = IPPROTO_TCP;
  v.setUint32(l3 + 12, o.srcIp ?? 0x0a000002);
  v.setUint32(l3 + 16, o.dstIp ?? 0x0a000001);
  v.setUint16(l3 + 10, internetChecksum(f, l3, l4));
  v.setUint16(l4, o.srcPort ?? 40000);
  v.setUint16(l4 + 2, o.dstPort ?? 5201);
  v.setUint32(l4 + 4, o.seq ?? 1000);
  f[l4 + 12] = 5 << 4;
  f[l4 + 13] = o.tcpFlags ?? 0x18;
  v.setUint16(l4 + 14, 65535);
  f.set(o.payload, l4 + 20);
  const tcpLen = f.length - l4;
  let pseudo = IPPROTO_TCP + tcpLen;
  for (let i = l3 + 12; i < l3 + 20; i += 2) pseudo += v.getUint16(i);
  if (o.partial) {
    let s = pseudo;
    while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
    v.setUint16(l4 + 16, s);
  } else v.setUint16(l4 + 16, internetChecksum(f, l4, f.length, pseudo));
  return { frame: f, csumStart: l4, csumOffset: 16, hdrLen: l4 + 20 };
}

/** Is the TCP (or UDP) checksum of an IPv4 frame right, and the IPv4 header checksum? */
export function ipv4ChecksumsOk(f: Uint8Array): boolean {
  const l3 = ETH_HLEN;
  const v = new DataView(f.buffer, f.byteOffset, f.length);
  const ihl = (f[l3]! & 0xf) * 4;
  if (internetChecksum(f, l3, l3 + ihl) !== 0) return false;
  const proto = f[l3 + 9]!;
  const l4 = l3 + ihl;
  const end = l3 + v.getUint16(l3 + 2);
  let pseudo = proto + (end - l4);
  for (let i = l3 + 12; i < l3 + 20; i += 2) pseudo += v.getUint16(i);
  if (proto !== IPPROTO_TCP && proto !== IPPROTO_UDP) return true;
  return internetChecksum(f, l4, end, pseudo) === 0;
}

/** A minimal Ethernet frame of `len` bytes (ethertype 0x88b5, local experimental) with a counter pattern. */
export function rawFrame(dst: Mac, src: Mac, len: number, seed = 0): Uint8Array {
  const f = new Uint8Array(len);
  macToBytes(dst, f, 0);
  macToBytes(src, f, 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  for (let i = ETH_HLEN; i < len; i++) f[i] = (i + seed) & 0xff;
  return f;
}
