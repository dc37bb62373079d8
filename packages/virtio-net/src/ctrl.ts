// Control virtqueue (virtio 1.2 §5.1.6.5): command parsing and the receive
// filter it drives (§5.1.6.5.1-2). Parsing is pure: a chain's readable bytes
// in, a typed command or a reason out; the device answers VIRTIO_NET_ERR for
// anything that does not parse and counts it.

import {
  VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK, VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
  VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN,
  VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOBCAST, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
  VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_RX_EXTRA, VIRTIO_NET_F_MQ,
} from './spec.ts';

/** A MAC address as a 48-bit number (exact in a JS number). */
export type Mac = number;

export function macFromBytes(b: Uint8Array, off = 0): Mac {
  return b[off]! * 2 ** 40 + b[off + 1]! * 2 ** 32 + ((b[off + 2]! << 24) >>> 0) + (b[off + 3]! << 16) + (b[off + 4]! << 8) + b[off + 5]!;
}

export function macToBytes(m: Mac, into = new Uint8Array(6), off = 0): Uint8Array {
  let v = m;
  for (let i = 5; i >= 0; i--) {
    into[off + i] = v % 256;
    v = Math.floor(v / 256);
  }
  return into;
}

export function formatMac(m: Mac): string {
  return [...macToBytes(m)].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** Parse "52:54:00:12:34:56"; null when it is not six hex octets. */
export function parseMac(s: string): Mac | null {
  const parts = s.split(':');
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) return null;
  return macFromBytes(Uint8Array.from(parts.map((p) => parseInt(p, 16))));
}

export const BROADCAST: Mac = 0xffff_ffff_ffff;
/** The group bit: the least significant bit of the first octet. */
export const isMulticast = (m: Mac): boolean => Math.floor(m / 2 ** 40) % 2 === 1;

/** Entries the MAC filter table holds per kind; beyond it the kind is accepted wholesale (as a NIC's hash filter would). */
export const MAC_TABLE_ENTRIES = 64;

export type CtrlCommand =
  | { kind: 'rx'; cmd: number; on: boolean }
  | { kind: 'mac-table'; unicast: Mac[]; multicast: Mac[] }
  | { kind: 'mac-addr'; mac: Mac }
  | { kind: 'mq-pairs'; pairs: number }
  | { kind: 'announce-ack' }
  | { kind: 'guest-offloads'; offloads: bigint };

export type CtrlParse = { ok: true; command: CtrlCommand } | { ok: false; reason: string };

const bad = (reason: string): CtrlParse => ({ ok: false, reason });

/** Parse a control command (class, command, data) against the negotiated features and the device's queue pairs. */
export function parseCtrlCommand(b: Uint8Array, features: bigint, maxPairs: number): CtrlParse {
  if (b.length < 2) return bad(`control command of ${b.length} bytes (class and command need 2)`);
  const cls = b[0]!;
  const cmd = b[1]!;
  const data = b.subarray(2);
  const dv = new DataView(data.buffer, data.byteOffset, data.length);
  switch (cls) {
    case VIRTIO_NET_CTRL_RX: {
      if (!(features & VIRTIO_NET_F_CTRL_RX)) return bad('VIRTIO_NET_CTRL_RX without VIRTIO_NET_F_CTRL_RX');
      if (cmd > VIRTIO_NET_CTRL_RX_NOBCAST) return bad(`VIRTIO_NET_CTRL_RX command ${cmd}`);
      if (cmd > 1 && !(features & VIRTIO_NET_F_CTRL_RX_EXTRA)) return bad(`VIRTIO_NET_CTRL_RX command ${cmd} without VIRTIO_NET_F_CTRL_RX_EXTRA`);
      if (data.length !== 1) return bad(`VIRTIO_NET_CTRL_RX data of ${data.length} bytes (expected 1)`);
      return { ok: true, command: { kind: 'rx', cmd, on: data[0] !== 0 } };
    }
    case VIRTIO_NET_CTRL_MAC: {
      if (cmd === VIRTIO_NET_CTRL_MAC_ADDR_SET) {
        if (!(features & VIRTIO_NET_F_CTRL_MAC_ADDR)) return bad('VIRTIO_NET_CTRL_MAC_ADDR_SET without VIRTIO_NET_F_CTRL_MAC_ADDR');
        if (data.length !== 6) return bad(`VIRTIO_NET_CTRL_MAC_ADDR_SET data of ${data.length} bytes (expected 6)`);
        const mac = macFromBytes(data);
        if (isMulticast(mac)) return bad(`VIRTIO_NET_CTRL_MAC_ADDR_SET to multicast address ${formatMac(mac)}`);
        return { ok: true, command: { kind: 'mac-addr', mac } };
      }
      if (cmd !== VIRTIO_NET_CTRL_MAC_TABLE_SET) return bad(`VIRTIO_NET_CTRL_MAC command ${cmd}`);
      if (!(features & VIRTIO_NET_F_CTRL_RX)) return bad('VIRTIO_NET_CTRL_MAC_TABLE_SET without VIRTIO_NET_F_CTRL_RX');
      // Two struct virtio_net_ctrl_mac { le32 entries; u8 macs[entries][6]; }: unicast, then multicast.
      const tables: Mac[][] = [];
      let off = 0;
      for (let t = 0; t < 2; t++) {
        if (off + 4 > data.length) return bad(`VIRTIO_NET_CTRL_MAC_TABLE_SET truncated at byte ${off} of ${data.length}`);
        const n = dv.getUint32(off, true);
        off += 4;
        if (n > (data.length - off) / 6) return bad(`VIRTIO_NET_CTRL_MAC_TABLE_SET claims ${n} entries in ${data.length - off} bytes`);
        const macs: Mac[] = [];
        for (let i = 0; i < n; i++, off += 6) macs.push(macFromBytes(data, off));
        tables.push(macs);
      }
      if (off !== data.length) return bad(`VIRTIO_NET_CTRL_MAC_TABLE_SET has ${data.length - off} trailing bytes`);
      return { ok: true, command: { kind: 'mac-table', unicast: tables[0]!, multicast: tables[1]! } };
    }
    case VIRTIO_NET_CTRL_ANNOUNCE:
      if (cmd !== VIRTIO_NET_CTRL_ANNOUNCE_ACK || data.length !== 0) return bad(`VIRTIO_NET_CTRL_ANNOUNCE command ${cmd} with ${data.length} bytes`);
      return { ok: true, command: { kind: 'announce-ack' } };
    case VIRTIO_NET_CTRL_MQ: {
      if (!(features & VIRTIO_NET_F_MQ)) return bad('VIRTIO_NET_CTRL_MQ without VIRTIO_NET_F_MQ');
      if (cmd !== VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) return bad(`VIRTIO_NET_CTRL_MQ command ${cmd} (RSS and hash reporting are not offered)`);
      if (data.length !== 2) return bad(`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET data of ${data.length} bytes (expected 2)`);
      const pairs = dv.getUint16(0, true);
      if (pairs < VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN || pairs > maxPairs) return bad(`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET ${pairs} outside 1..${maxPairs}`);
      return { ok: true, command: { kind: 'mq-pairs', pairs } };
    }
    case VIRTIO_NET_CTRL_GUEST_OFFLOADS: {
      if (!(features & VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)) return bad('VIRTIO_NET_CTRL_GUEST_OFFLOADS without VIRTIO_NET_F_CTRL_GUEST_OFFLOADS');
      if (cmd !== VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET || data.length !== 8) return bad(`VIRTIO_NET_CTRL_GUEST_OFFLOADS command ${cmd} with ${data.length} bytes`);
      return { ok: true, command: { kind: 'guest-offloads', offloads: dv.getBigUint64(0, true) } };
    }
    default:
      return bad(`control class ${cls}`);
  }
}

/**
 * The receive filter (§5.1.6.5.1): promiscuous until the driver says
 * otherwise (a driver without CTRL_RX never does, and then gets every frame,
 * as QEMU's device behaves), broadcast unless NOBCAST, the device's own MAC
 * and the unicast table unless NOUNI, multicast from the table or all with
 * ALLMULTI unless NOMULTI.
 */
export class RxFilter {
  mac: Mac;
  promisc = true;
  allMulti = false;
  allUni = false;
  noMulti = false;
  noUni = false;
  noBcast = false;
  private unicast = new Set<Mac>();
  private multicast = new Set<Mac>();
  private uniOverflow = false;
  private multiOverflow = false;

  constructor(mac: Mac) {
    this.mac = mac;
  }

  setRx(cmd: number, on: boolean): void {
    const keys = ['promisc', 'allMulti', 'allUni', 'noMulti', 'noUni', 'noBcast'] as const;
    const k = keys[cmd - VIRTIO_NET_CTRL_RX_PROMISC];
    if (k !== undefined) this[k] = on;
  }

  setTable(unicast: Mac[], multicast: Mac[]): void {
    this.uniOverflow = unicast.length > MAC_TABLE_ENTRIES;
    this.multiOverflow = multicast.length > MAC_TABLE_ENTRIES;
    this.unicast = new Set(this.uniOverflow ? [] : unicast);
    this.multicast = new Set(this.multiOverflow ? [] : multicast);
  }

  /** Does a frame for destination `dst` reach the driver? */
  accepts(dst: Mac): boolean {
    if (this.promisc) return true;
    if (dst === BROADCAST) return !this.noBcast;
    if (isMulticast(dst)) return !this.noMulti && (this.allMulti || this.multiOverflow || this.multicast.has(dst));
    if (this.noUni) return false;
    return dst === this.mac || this.allUni || this.uniOverflow || this.unicast.has(dst);
  }

  reset(mac: Mac): void {
    Object.assign(this, new RxFilter(mac));
  }
}
