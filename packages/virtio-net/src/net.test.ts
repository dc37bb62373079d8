// Unit tests of the parse halves (vnet header, control commands, offload
// fallbacks) and of the device model driven through real split rings by
// core's in-process harness, two devices joined back to back.
import { createLogger, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1 } from '@vmm/core';
import { InProcessDevice } from '@vmm/core/testing';
import { describe, expect, it, vi } from 'vitest';
import { MAC_TABLE_ENTRIES, parseCtrlCommand, parseMac, RxFilter, formatMac, BROADCAST } from './ctrl.ts';
import { NetDevice } from './device.ts';
import { ALL_OFFLOADS, checkTxHeader, decodeVnetHeader, encodeVnetHeader, NO_OFFLOADS, type VnetHeader } from './header.ts';
import { finishChecksum, segmentTcp } from './offload.ts';
import { LoopbackPort } from './port.ts';
import * as S from './spec.ts';
import { ipv4ChecksumsOk, rawFrame, tcp4Frame } from './testing/frames.ts';

const log = createLogger('net-test', undefined, 'silent');
const MAC_A = parseMac('52:54:00:00:00:0a')!;
const MAC_B = parseMac('52:54:00:00:00:0b')!;
const hdr = (o: Partial<VnetHeader> = {}): VnetHeader => ({ flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 0, ...o });

describe('virtio_net_hdr', () => {
  it('round-trips and validates against negotiated offloads', () => {
    const h = hdr({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16, numBuffers: 3 });
    const b = new Uint8Array(12);
    encodeVnetHeader(h, b);
    expect(decodeVnetHeader(b)).toEqual(h);
    expect(checkTxHeader(hdr(), 60, NO_OFFLOADS, 1500)).toBeNull();
    expect(checkTxHeader(hdr(), 10, NO_OFFLOADS, 1500)).toBe('tx_too_short');
    expect(checkTxHeader(hdr(), 1500 + 14 + 4 + 1, ALL_OFFLOADS, 1500)).toBe('tx_too_big');
    expect(checkTxHeader(hdr({ flags: 0x80 }), 60, ALL_OFFLOADS, 1500)).toBe('tx_bad_header');
    // NEEDS_CSUM without CSUM negotiated, or pointing past the frame.
    expect(checkTxHeader(hdr({ flags: 1, csumStart: 34, csumOffset: 16 }), 60, NO_OFFLOADS, 1500)).toBe('tx_bad_header');
    expect(checkTxHeader(hdr({ flags: 1, csumStart: 34, csumOffset: 16 }), 51, ALL_OFFLOADS, 1500)).toBe('tx_bad_header');
    expect(checkTxHeader(hdr({ flags: 1, csumStart: 34, csumOffset: 16 }), 52, ALL_OFFLOADS, 1500)).toBeNull();
    // GSO: needs the HOST_TSO feature, NEEDS_CSUM and a segment size; UDP (UFO) is never offered.
    const gso = hdr({ flags: 1, gsoType: S.VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, csumStart: 34, csumOffset: 16 });
    expect(checkTxHeader(gso, 30000, ALL_OFFLOADS, 1500)).toBeNull();
    expect(checkTxHeader(gso, 30000, { ...ALL_OFFLOADS, tso4: false }, 1500)).toBe('tx_bad_header');
    expect(checkTxHeader({ ...gso, gsoSize: 0 }, 30000, ALL_OFFLOADS, 1500)).toBe('tx_bad_header');
    expect(checkTxHeader({ ...gso, flags: 0 }, 30000, ALL_OFFLOADS, 1500)).toBe('tx_bad_header');
    expect(checkTxHeader({ ...gso, gsoType: S.VIRTIO_NET_HDR_GSO_UDP }, 30000, ALL_OFFLOADS, 1500)).toBe('tx_bad_header');
    expect(checkTxHeader({ ...gso, gsoType: 1 | S.VIRTIO_NET_HDR_GSO_ECN }, 30000, { ...ALL_OFFLOADS, ecn: false }, 1500)).toBe('tx_bad_header');
    expect(checkTxHeader(gso, 70000, ALL_OFFLOADS, 1500)).toBe('tx_too_big');
  });
});

describe('control commands', () => {
  const all = (1n << 64n) - 1n;
  const table = (uni: number[], multi: number[]): Uint8Array => {
    const b = new Uint8Array(2 + 8 + 6 * (uni.length + multi.length));
    b[0] = S.VIRTIO_NET_CTRL_MAC;
    b[1] = S.VIRTIO_NET_CTRL_MAC_TABLE_SET;
    const v = new DataView(b.buffer);
    let o = 2;
    for (const t of [uni, multi]) {
      v.setUint32(o, t.length, true);
      o += 4;
      for (const m of t) {
        b.set(Uint8Array.from(formatMac(m).split(':').map((x) => parseInt(x, 16))), o);
        o += 6;
      }
    }
    return b;
  };

  it('parses each class and refuses malformed ones with a reason', () => {
    expect(parseCtrlCommand(Uint8Array.of(0, 0, 1), all, 4)).toEqual({ ok: true, command: { kind: 'rx', cmd: 0, on: true } });
    expect(parseCtrlCommand(Uint8Array.of(0, 0, 1), 0n, 4)).toMatchObject({ ok: false, reason: expect.stringContaining('CTRL_RX') });
    expect(parseCtrlCommand(Uint8Array.of(0, 9, 1), all, 4).ok).toBe(false);
    expect(parseCtrlCommand(Uint8Array.of(0, 0), all, 4).ok).toBe(false);
    expect(parseCtrlCommand(Uint8Array.of(4, 0, 3, 0), all, 4)).toEqual({ ok: true, command: { kind: 'mq-pairs', pairs: 3 } });
    expect(parseCtrlCommand(Uint8Array.of(4, 0, 5, 0), all, 4)).toMatchObject({ ok: false, reason: expect.stringContaining('outside 1..4') });
    expect(parseCtrlCommand(Uint8Array.of(4, 0, 0, 0), all, 4).ok).toBe(false);
    expect(parseCtrlCommand(Uint8Array.of(4, 1), all, 4).ok).toBe(false);
    expect(parseCtrlCommand(Uint8Array.of(77, 0), all, 4)).toMatchObject({ ok: false, reason: 'control class 77' });
    const t = parseCtrlCommand(table([MAC_B], [parseMac('01:00:5e:00:00:01')!]), all, 1);
    expect(t).toEqual({ ok: true, command: { kind: 'mac-table', unicast: [MAC_B], multicast: [parseMac('01:00:5e:00:00:01')] } });
    // A table whose entry count runs past the data, or with bytes left over.
    const lying = table([MAC_B], []);
    new DataView(lying.buffer).setUint32(2, 1000, true);
    expect(parseCtrlCommand(lying, all, 1)).toMatchObject({ ok: false, reason: expect.stringContaining('claims 1000 entries') });
    expect(parseCtrlCommand(Uint8Array.of(...table([], []), 0), all, 1)).toMatchObject({ ok: false, reason: expect.stringContaining('trailing') });
    const addr = Uint8Array.of(1, 1, 0x53, 0, 0, 0, 0, 1);
    expect(parseCtrlCommand(addr, all, 1).ok).toBe(false); // multicast address as the station address
  });

  it('filters as the driver asked (§5.1.6.5.1)', () => {
    const f = new RxFilter(MAC_A);
    expect(f.accepts(MAC_B)).toBe(true); // promiscuous until told otherwise
    f.setRx(S.VIRTIO_NET_CTRL_RX_PROMISC, false);
    expect(f.accepts(MAC_A)).toBe(true);
    expect(f.accepts(MAC_B)).toBe(false);
    expect(f.accepts(BROADCAST)).toBe(true);
    const mc = parseMac('33:33:00:00:00:01')!;
    expect(f.accepts(mc)).toBe(false);
    f.setTable([MAC_B], [mc]);
    expect(f.accepts(MAC_B)).toBe(true);
    expect(f.accepts(mc)).toBe(true);
    f.setRx(S.VIRTIO_NET_CTRL_RX_NOBCAST, true);
    expect(f.accepts(BROADCAST)).toBe(false);
    f.setTable(Array.from({ length: MAC_TABLE_ENTRIES + 1 }, (_, i) => MAC_B + 100 + i), []);
    expect(f.accepts(MAC_B + 5000)).toBe(true); // overflowed table: all unicast
    expect(f.accepts(mc)).toBe(false);
  });
});

describe('offload fallbacks', () => {
  it('finishes a partial checksum', () => {
    const t = tcp4Frame({ dst: MAC_B, src: MAC_A, payload: new Uint8Array(333).fill(7), partial: true });
    expect(ipv4ChecksumsOk(t.frame)).toBe(false);
    finishChecksum(t.frame, hdr({ flags: 1, csumStart: t.csumStart, csumOffset: t.csumOffset }));
    expect(ipv4ChecksumsOk(t.frame)).toBe(true);
  });

  it('segments a TCPv4 GSO frame into valid MSS-sized segments carrying the same bytes', () => {
    const payload = Uint8Array.from({ length: 10000 }, (_, i) => (i * 31) & 0xff);
    const t = tcp4Frame({ dst: MAC_B, src: MAC_A, payload, partial: true, seq: 0xffff_f000, tcpFlags: 0x19 | 0x80 });
    const segs = segmentTcp(t.frame, hdr({ flags: 1, gsoType: 1, gsoSize: 1448, csumStart: t.csumStart, csumOffset: 16, hdrLen: t.hdrLen }))!;
    expect(segs.length).toBe(Math.ceil(10000 / 1448));
    const joined: number[] = [];
    segs.forEach((s, i) => {
      expect(ipv4ChecksumsOk(s)).toBe(true);
      const v = new DataView(s.buffer);
      expect(v.getUint32(34 + 4)).toBe((0xffff_f000 + i * 1448) >>> 0); // sequence wraps modulo 2^32
      expect(v.getUint16(14 + 4)).toBe(0x1234 + i);
      const flags = s[34 + 13]!;
      expect(flags & 0x09).toBe(i === segs.length - 1 ? 0x09 : 0);
      expect(flags & 0x80).toBe(i === 0 ? 0x80 : 0);
      joined.push(...s.subarray(54));
    });
    expect(Uint8Array.from(joined)).toEqual(payload);
    // A header claiming TCPv6 over an IPv4 packet, or a non-TCP frame, is refused.
    expect(segmentTcp(t.frame, hdr({ flags: 1, gsoType: 4, gsoSize: 1448 }))).toBeNull();
    expect(segmentTcp(rawFrame(MAC_B, MAC_A, 2000), hdr({ flags: 1, gsoType: 1, gsoSize: 1448 }))).toBeNull();
  });
});

/** A device in a harness, with helpers to transmit and to post receive buffers. */
function nic(mac: number, o: { accept?: bigint; pairs?: number } = {}) {
  const dev = new NetDevice({ mac, log, queuePairs: o.pairs ?? 1 });
  const base = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX;
  const h = new InProcessDevice(dev, { acceptFeatures: o.accept === undefined ? undefined : o.accept | base, ramSize: 8 << 20 });
  const send = (frame: Uint8Array, vh: VnetHeader = hdr(), q = 1): number => {
    const a = h.alloc(12 + frame.length);
    const b = new Uint8Array(12 + frame.length);
    encodeVnetHeader(vh, b);
    b.set(frame, 12);
    h.mem.write(a, b);
    return h.submit(q, [{ addr: a, len: b.length, write: false }])!;
  };
  const post = (n: number, size: number, q = 0): number[] => {
    const addrs: number[] = [];
    for (let i = 0; i < n; i++) {
      const a = h.alloc(size);
      addrs.push(a);
      h.submit(q, [{ addr: a, len: size, write: true }]);
    }
    return addrs;
  };
  return { dev, h, send, post };
}

describe('NetDevice', () => {
  it('carries frames between two devices, mergeable buffers on one side and one buffer per frame on the other', () => {
    const a = nic(MAC_A);
    const b = nic(MAC_B, { accept: (1n << 64n) - 1n & ~S.VIRTIO_NET_F_MRG_RXBUF });
    const [pa, pb] = LoopbackPort.pair(12 + S.MAX_GSO_FRAME);
    a.dev.attach(pa);
    b.dev.attach(pb);
    // b: one big buffer per frame (no MRG_RXBUF); a: 1 KiB mergeable buffers.
    const bAddrs = b.post(2, 1526);
    const f1 = rawFrame(MAC_B, MAC_A, 1000, 1);
    a.send(f1);
    expect(a.h.poll(1).length).toBe(1);
    const got = b.h.poll(0);
    expect(got).toEqual([{ head: expect.any(Number), len: 12 + 1000 }]);
    expect(b.h.mem.read(bAddrs[0]! + 12, 1000)).toEqual(f1);
    expect(decodeVnetHeader(b.h.mem.read(bAddrs[0]!, 12)).numBuffers).toBe(1);

    const aAddrs = a.post(4, 1024);
    const f2 = rawFrame(MAC_A, MAC_B, 1500, 2);
    b.send(f2);
    const used = a.h.poll(0);
    expect(used.map((u) => u.len)).toEqual([1024, 12 + 1500 - 1024]);
    expect(decodeVnetHeader(a.h.mem.read(aAddrs[0]!, 12)).numBuffers).toBe(2);
    const back = new Uint8Array([...a.h.mem.read(aAddrs[0]! + 12, 1012), ...a.h.mem.read(aAddrs[1]!, 488)]);
    expect(back).toEqual(f2);
    expect(a.dev.stats).toMatchObject({ tx_packets: 1, tx_bytes: 1000, rx_packets: 1, rx_bytes: 1500 });
  });

  it('waits for receive buffers without losing frames, then delivers them in order', () => {
    const a = nic(MAC_A);
    const b = nic(MAC_B);
    const [pa, pb] = LoopbackPort.pair(12 + S.MAX_GSO_FRAME);
    a.dev.attach(pa);
    b.dev.attach(pb);
    for (let i = 0; i < 3; i++) a.send(rawFrame(MAC_B, MAC_A, 200 + i, i));
    expect(pb.pending).toBe(3);
    // A 1500-byte frame in 512-byte mergeable buffers needs 3: with 1 left after the small frame it waits; 2 more and it goes.
    const addrs = b.post(2, 1024);
    expect(b.h.poll(0).map((u) => u.len)).toEqual([212, 213]);
    expect(pb.pending).toBe(1);
    a.send(rawFrame(MAC_B, MAC_A, 1500, 9));
    expect(pb.pending).toBe(2);
    b.post(2, 512);
    expect(b.h.poll(0).map((u) => u.len)).toEqual([214]);
    expect(pb.pending).toBe(1);
    b.post(2, 512);
    expect(b.h.poll(0).map((u) => u.len)).toEqual([512, 512, 488]);
    expect(pb.pending).toBe(0);
    expect(b.h.mem.read(addrs[0]! + 12, 200)).toEqual(rawFrame(MAC_B, MAC_A, 200, 0));
  });

  it('drops and counts bad transmit frames, returning every chain', () => {
    const a = nic(MAC_A, { accept: (1n << 64n) - 1n & ~S.VIRTIO_NET_F_HOST_TSO4 });
    const [pa, pb] = LoopbackPort.pair(12 + S.MAX_GSO_FRAME);
    a.dev.attach(pa);
    a.send(rawFrame(MAC_B, MAC_A, 1600)); // above MTU without GSO
    a.send(rawFrame(MAC_B, MAC_A, 60), hdr({ gsoType: 1, flags: 1, gsoSize: 100, csumStart: 34, csumOffset: 16 })); // TSO4 not negotiated
    a.send(rawFrame(MAC_B, MAC_A, 60), hdr({ flags: 1, csumStart: 50, csumOffset: 16 })); // checksum beyond the frame
    a.send(new Uint8Array(4)); // shorter than an Ethernet header
    const short = a.h.alloc(6);
    a.h.submit(1, [{ addr: short, len: 6, write: false }]); // shorter than the vnet header
    a.send(rawFrame(MAC_B, MAC_A, 60));
    expect(a.h.poll(1).length).toBe(6);
    expect(pb.pending).toBe(1);
    expect(a.dev.stats).toMatchObject({ tx_too_big: 1, tx_bad_header: 2, tx_too_short: 1, tx_malformed: 1, tx_packets: 1 });
  });

  it('answers control commands with the spec status and applies the filter', () => {
    const b = nic(MAC_B);
    const [pa, pb] = LoopbackPort.pair(12 + S.MAX_GSO_FRAME);
    b.dev.attach(pb);
    const ctrl = (bytes: number[]): number => {
      const a = b.h.alloc(bytes.length);
      const ack = b.h.alloc(1);
      b.h.mem.write(a, Uint8Array.from(bytes));
      b.h.mem.writeU8(ack, 0xee);
      b.h.submit(2, [{ addr: a, len: bytes.length, write: false }, { addr: ack, len: 1, write: true }]);
      expect(b.h.poll(2)).toEqual([{ head: expect.any(Number), len: 1 }]);
      return b.h.mem.readU8(ack);
    };
    expect(ctrl([S.VIRTIO_NET_CTRL_RX, S.VIRTIO_NET_CTRL_RX_PROMISC, 0])).toBe(S.VIRTIO_NET_OK);
    expect(ctrl([S.VIRTIO_NET_CTRL_MQ, 0, 2, 0])).toBe(S.VIRTIO_NET_ERR); // MQ not offered with one pair
    expect(ctrl([200, 1])).toBe(S.VIRTIO_NET_ERR);
    expect(ctrl([S.VIRTIO_NET_CTRL_GUEST_OFFLOADS, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0])).toBe(S.VIRTIO_NET_ERR); // beyond negotiated
    expect(b.dev.stats).toMatchObject({ ctrl_ok: 1, ctrl_err: 3 });
    b.post(4, 2048);
    pb.inject(Uint8Array.of(...new Uint8Array(12), ...rawFrame(MAC_A, MAC_A, 100))); // not for us: filtered now
    pb.inject(Uint8Array.of(...new Uint8Array(12), ...rawFrame(BROADCAST, MAC_A, 100)));
    pb.inject(Uint8Array.of(...new Uint8Array(12), ...rawFrame(MAC_B, MAC_A, 100)));
    expect(b.h.poll(0).length).toBe(2);
    expect(b.dev.stats).toMatchObject({ rx_filtered: 1, rx_packets: 2 });
    // Changing the MAC through the control queue moves the filter with it.
    expect(ctrl([S.VIRTIO_NET_CTRL_MAC, S.VIRTIO_NET_CTRL_MAC_ADDR_SET, 0x52, 0x54, 0, 0, 0, 0x0c])).toBe(S.VIRTIO_NET_OK);
    expect(formatMac(b.dev.currentMac)).toBe('52:54:00:00:00:0c');
    pb.inject(Uint8Array.of(...new Uint8Array(12), ...rawFrame(MAC_B, MAC_A, 100)));
    expect(b.dev.stats.rx_filtered).toBe(2);
    void pa;
  });

  it('keeps GSO frames whole for a driver that takes them and segments them for one that does not', () => {
    const payload = Uint8Array.from({ length: 20000 }, (_, i) => i & 0xff);
    const t = tcp4Frame({ dst: MAC_B, src: MAC_A, payload, partial: true });
    const gso = hdr({ flags: 1, gsoType: 1, gsoSize: 1448, csumStart: t.csumStart, csumOffset: 16, hdrLen: t.hdrLen });
    for (const takesTso of [true, false]) {
      const a = nic(MAC_A);
      const b = nic(MAC_B, { accept: takesTso ? undefined : (1n << 64n) - 1n & ~(S.VIRTIO_NET_F_GUEST_TSO4 | S.VIRTIO_NET_F_GUEST_CSUM) });
      const [pa, pb] = LoopbackPort.pair(12 + S.MAX_GSO_FRAME);
      a.dev.attach(pa);
      b.dev.attach(pb);
      const addrs = b.post(64, 4096);
      a.send(t.frame, gso);
      const used = b.h.poll(0);
      if (takesTso) {
        const first = decodeVnetHeader(b.h.mem.read(addrs[0]!, 12));
        expect(first).toMatchObject({ gsoType: 1, gsoSize: 1448, flags: 1, numBuffers: used.length });
        expect(used.reduce((s, u) => s + u.len, 0)).toBe(12 + t.frame.length);
      } else {
        expect(used.length).toBe(Math.ceil(20000 / 1448));
        for (const [i, u] of used.entries()) {
          const seg = b.h.mem.read(addrs[i]! + 12, u.len - 12);
          expect(ipv4ChecksumsOk(seg)).toBe(true);
          expect(decodeVnetHeader(b.h.mem.read(addrs[i]!, 12))).toMatchObject({ gsoType: 0, flags: 0, numBuffers: 1 });
        }
        expect(b.dev.stats.rx_segmented).toBe(1);
      }
    }
  });

  it('spreads flows over the active queue pairs and keeps each flow on one', () => {
    const b = nic(MAC_B, { pairs: 4 });
    const [pa, pb] = LoopbackPort.pair(12 + S.MAX_GSO_FRAME);
    b.dev.attach(pb);
    const ctrlIdx = 8;
    const a = b.h.alloc(4);
    const ack = b.h.alloc(1);
    b.h.mem.write(a, Uint8Array.of(S.VIRTIO_NET_CTRL_MQ, 0, 4, 0));
    b.h.submit(ctrlIdx, [{ addr: a, len: 4, write: false }, { addr: ack, len: 1, write: true }]);
    expect(b.h.mem.readU8(ack)).toBe(S.VIRTIO_NET_OK);
    for (let q = 0; q < 4; q++) b.post(32, 2048, 2 * q);
    const queueOf = new Map<number, Set<number>>();
    for (let port = 0; port < 16; port++) {
      for (let k = 0; k < 2; k++) {
        pb.inject(Uint8Array.of(...new Uint8Array(12), ...tcp4Frame({ dst: MAC_B, src: MAC_A, srcPort: 1000 + port, payload: new Uint8Array(10) }).frame));
        for (let q = 0; q < 4; q++) {
          if (b.h.poll(2 * q).length > 0) queueOf.set(port, (queueOf.get(port) ?? new Set()).add(q));
        }
      }
    }
    expect([...queueOf.values()].every((s) => s.size === 1)).toBe(true);
    expect(new Set([...queueOf.values()].map((s) => [...s][0])).size).toBeGreaterThan(1);
    void pa;
  });

  it('link down: STATUS loses LINK_UP with a configuration change, frames are neither sent nor received until it is up', () => {
    const a = nic(MAC_A);
    const b = nic(MAC_B);
    const [pa, pb] = LoopbackPort.pair(12 + S.MAX_GSO_FRAME);
    a.dev.attach(pa);
    b.dev.attach(pb);
    const status = () => new DataView(b.dev.readConfig().buffer).getUint16(S.CONFIG_STATUS, true);
    expect(status()).toBe(S.VIRTIO_NET_S_LINK_UP);
    const changes = b.h.configChanges;
    b.dev.setLink(false);
    expect(status()).toBe(0);
    expect(b.h.configChanges).toBe(changes + 1);
    b.post(4, 2048);
    a.send(rawFrame(MAC_B, MAC_A, 100, 1)); // waits in the port: b's carrier is down
    b.send(rawFrame(MAC_A, MAC_B, 100, 2)); // dropped: nothing leaves a NIC without carrier
    expect(b.h.poll(0)).toEqual([]);
    expect(b.dev.stats.tx_no_port).toBe(1);
    b.dev.setLink(true);
    expect(b.h.configChanges).toBe(changes + 2);
    expect(b.h.poll(0).length).toBe(1);
    void pa;
  });

  it('drop and corrupt faults: dropped frames are counted, a corrupted one reaches the driver without checksum offload and fails its check', () => {
    const a = nic(MAC_A);
    const b = nic(MAC_B);
    const [pa, pb] = LoopbackPort.pair(12 + S.MAX_GSO_FRAME);
    a.dev.attach(pa);
    b.dev.attach(pb);
    const addrs = b.post(64, 4096);
    const t = tcp4Frame({ dst: MAC_B, src: MAC_A, payload: new Uint8Array(5000).fill(3), partial: true });
    const gso = hdr({ flags: 1, gsoType: 1, gsoSize: 1448, csumStart: t.csumStart, csumOffset: 16, hdrLen: t.hdrLen });
    b.dev.faults.drop = 1;
    a.send(t.frame, gso);
    expect(b.h.poll(0)).toEqual([]);
    expect(b.dev.stats.fault_dropped).toBe(1);
    b.dev.faults.drop = 0;
    b.dev.faults.corrupt = 1;
    a.send(t.frame, gso);
    let used = b.h.poll(0);
    expect(used.length).toBe(4); // segmented: the driver checks each segment itself; one of them is corrupted
    const ok = used.map((u, i) => {
      expect(decodeVnetHeader(b.h.mem.read(addrs[i]!, 12))).toMatchObject({ flags: 0, gsoType: 0 });
      return ipv4ChecksumsOk(b.h.mem.read(addrs[i]! + 12, u.len - 12));
    });
    expect(ok.filter((x) => !x).length).toBe(1);
    expect(b.dev.stats.fault_corrupted).toBe(1);
    // A partial checksum is finished before the byte is flipped, and the header claims nothing (no NEEDS_CSUM, no DATA_VALID).
    const small = tcp4Frame({ dst: MAC_B, src: MAC_A, payload: new Uint8Array(100).fill(7), partial: true });
    a.send(small.frame, hdr({ flags: 1, csumStart: small.csumStart, csumOffset: 16 }));
    used = b.h.poll(0);
    expect(used.length).toBe(1);
    expect(decodeVnetHeader(b.h.mem.read(addrs[4]!, 12)).flags).toBe(0);
    const got = b.h.mem.read(addrs[4]! + 12, used[0]!.len - 12);
    expect(ipv4ChecksumsOk(got)).toBe(false);
    expect([...got].filter((x, i) => x !== small.frame[i] && i !== 50 && i !== 51).length).toBe(1); // one payload byte (50-51: the finished checksum)
    expect(b.dev.stats.fault_corrupted).toBe(2);
    // A frame no checksum covers (not IP) goes on untouched and is not counted.
    a.send(rawFrame(MAC_B, MAC_A, 300, 5));
    used = b.h.poll(0);
    expect(b.h.mem.read(addrs[5]! + 12, used[0]!.len - 12)).toEqual(rawFrame(MAC_B, MAC_A, 300, 5));
    expect(b.dev.stats.fault_corrupted).toBe(2);
    void pa;
  });

  it('delay fault: frames leave the port at once, reach the driver only once due, in order, within a bounded hold', () => {
    vi.useFakeTimers();
    try {
      const a = nic(MAC_A);
      const b = nic(MAC_B);
      const [pa, pb] = LoopbackPort.pair(12 + S.MAX_GSO_FRAME);
      a.dev.attach(pa);
      b.dev.attach(pb);
      b.dev.now = () => Date.now();
      const addrs = b.post(8, 2048);
      b.dev.setDelay(200);
      for (let i = 0; i < 3; i++) a.send(rawFrame(MAC_B, MAC_A, 100 + i, i));
      // Taken off the port (the switch never waits for the delay), held by the device.
      expect(pb.pending).toBe(0);
      expect(b.dev.delayedFrames).toBe(3);
      expect(b.h.poll(0)).toEqual([]);
      vi.advanceTimersByTime(150);
      a.send(rawFrame(MAC_B, MAC_A, 200, 9));
      expect(b.h.poll(0)).toEqual([]);
      vi.advanceTimersByTime(60);
      expect(b.h.poll(0).map((u) => u.len)).toEqual([112, 113, 114]);
      // Cleared while one is still held: the next frame queues behind it, order is kept.
      b.dev.setDelay(0);
      a.send(rawFrame(MAC_B, MAC_A, 300, 8));
      expect(b.h.poll(0)).toEqual([]);
      vi.advanceTimersByTime(200);
      expect(b.h.poll(0).map((u) => u.len)).toEqual([212, 312]);
      expect(b.h.mem.read(addrs[3]! + 12, 200)).toEqual(rawFrame(MAC_B, MAC_A, 200, 9));
      // Nothing held any more: frames go straight through again.
      a.send(rawFrame(MAC_B, MAC_A, 64, 1));
      expect(b.h.poll(0).map((u) => u.len)).toEqual([76]);
      expect(b.dev.stats).toMatchObject({ fault_delayed: 5, fault_delay_overflow: 0, rx_packets: 6 });
      expect(() => b.dev.setDelay(-1)).toThrow(/delay ms=-1/);
      void pa;
    } finally {
      vi.useRealTimers();
    }
  });
});
