// virtio_net_hdr (virtio 1.2 §5.1.6): parse, encode, and validate what a
// driver hands us on transmit before the frame goes anywhere (STYLE.md §3).
// The same 12-byte header travels with each frame through the switch rings
// and to a tap with IFF_VNET_HDR, so offload state is never lost on the way.

import {
  ETH_HLEN, ETH_VLAN_HLEN, MAX_GSO_FRAME, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VNET_HDR_LEN,
} from './spec.ts';

export interface VnetHeader {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
  numBuffers: number;
}

/**
 * Decode the first 10 or 12 bytes of `b` (num_buffers is 0 for the 10-byte
 * legacy header). Little-endian fields (virtio 1.2 §5.1.6) read byte by byte:
 * this runs for every frame, and a DataView per call is garbage per frame.
 */
export function decodeVnetHeader(b: Uint8Array, len = VNET_HDR_LEN): VnetHeader {
  if (b.length < len) throw new RangeError(`vnet header of ${len} bytes in a ${b.length}-byte buffer`);
  return {
    flags: b[0]!,
    gsoType: b[1]!,
    hdrLen: b[2]! | (b[3]! << 8),
    gsoSize: b[4]! | (b[5]! << 8),
    csumStart: b[6]! | (b[7]! << 8),
    csumOffset: b[8]! | (b[9]! << 8),
    numBuffers: len >= 12 ? b[10]! | (b[11]! << 8) : 0,
  };
}

export function encodeVnetHeader(h: Readonly<VnetHeader>, into: Uint8Array, len = VNET_HDR_LEN): void {
  if (into.length < len) throw new RangeError(`vnet header of ${len} bytes in a ${into.length}-byte buffer`);
  into[0] = h.flags;
  into[1] = h.gsoType;
  into[2] = h.hdrLen;
  into[3] = h.hdrLen >>> 8;
  into[4] = h.gsoSize;
  into[5] = h.gsoSize >>> 8;
  into[6] = h.csumStart;
  into[7] = h.csumStart >>> 8;
  into[8] = h.csumOffset;
  into[9] = h.csumOffset >>> 8;
  if (len >= 12) {
    into[10] = h.numBuffers;
    into[11] = h.numBuffers >>> 8;
  }
}

/** Offloads one side of a link can take (negotiated features, or a tap's TUNSETOFFLOAD). */
export interface OffloadCaps {
  /** Partial checksums (NEEDS_CSUM) are accepted. */
  csum: boolean;
  tso4: boolean;
  tso6: boolean;
  /** TSO frames with the ECN bit (CWR set in the first segment). */
  ecn: boolean;
}

export const NO_OFFLOADS: Readonly<OffloadCaps> = { csum: false, tso4: false, tso6: false, ecn: false };
export const ALL_OFFLOADS: Readonly<OffloadCaps> = { csum: true, tso4: true, tso6: true, ecn: true };

/** Why a transmitted frame was dropped: also the key of its counter. */
export type TxDropReason = 'tx_bad_header' | 'tx_too_big' | 'tx_too_short' | 'tx_malformed';

/**
 * Check a transmit header against the frame it came with and what the driver
 * negotiated (virtio 1.2 §5.1.6.2: "the driver MUST NOT set gso_type unless
 * it negotiated the matching HOST_* feature", NEEDS_CSUM only with CSUM,
 * csum_start+csum_offset+2 within the packet). Returns the reason to drop it,
 * or null when it may go.
 */
export function checkTxHeader(h: Readonly<VnetHeader>, frameLen: number, caps: Readonly<OffloadCaps>, mtu: number): TxDropReason | null {
  if (frameLen < ETH_HLEN) return 'tx_too_short';
  if ((h.flags & ~(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) !== 0) return 'tx_bad_header';
  if (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
    if (!caps.csum) return 'tx_bad_header';
    if (h.csumStart + h.csumOffset + 2 > frameLen) return 'tx_bad_header';
  }
  const ecn = (h.gsoType & VIRTIO_NET_HDR_GSO_ECN) !== 0;
  const type = h.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
  if (type === VIRTIO_NET_HDR_GSO_NONE) {
    if (ecn) return 'tx_bad_header';
    return frameLen > mtu + ETH_HLEN + ETH_VLAN_HLEN ? 'tx_too_big' : null;
  }
  if (type === VIRTIO_NET_HDR_GSO_TCPV4 ? !caps.tso4 : type === VIRTIO_NET_HDR_GSO_TCPV6 ? !caps.tso6 : true) return 'tx_bad_header';
  if (ecn && !caps.ecn) return 'tx_bad_header';
  // A GSO frame carries a partial checksum to be finished per segment, and a non-zero segment size.
  if (!(h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) || h.gsoSize === 0) return 'tx_bad_header';
  return frameLen > MAX_GSO_FRAME ? 'tx_too_big' : null;
}

/** Can a receiver with `caps` take a frame with header `h` as it is? */
export function acceptsOffloads(h: Readonly<VnetHeader>, caps: Readonly<OffloadCaps>): boolean {
  const type = h.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
  if (type === VIRTIO_NET_HDR_GSO_TCPV4 && !caps.tso4) return false;
  if (type === VIRTIO_NET_HDR_GSO_TCPV6 && !caps.tso6) return false;
  if ((h.gsoType & VIRTIO_NET_HDR_GSO_ECN) !== 0 && !caps.ecn) return false;
  if ((h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0 && !caps.csum) return false;
  return true;
}
