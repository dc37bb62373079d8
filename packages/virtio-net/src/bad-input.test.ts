// Protocol test: a hostile driver on one port of a real vmm-switch, against a
// real vmm-net process over vhost-user (its own guest-RAM memfd, real
// eventfds), while two well-behaved NICs talk through the same switch. Every
// bad chain, frame, header and control command is dropped and counted by
// reason (the counters query-nic-stats shows), each chain comes back to the
// driver, a control command gets the spec's VIRTIO_NET_ERR (virtio 1.2
// §5.1.6.5), the NIC keeps working, and the other ports get every frame.
import { join } from 'node:path';
import { VhostUserDriver, VhostUserFrontend, type Completion, type DriverQueueHandle } from '@vmm/core';
import { describe, expect, it } from 'vitest';
import { BROADCAST, formatMac, parseMac } from './ctrl.ts';
import type { NetStats } from './device.ts';
import { encodeVnetHeader, type VnetHeader } from './header.ts';
import { NETSTATS_QUERY } from './kind.ts';
import * as S from './spec.ts';
import { querySwitch } from './switch-client.ts';
import { rawFrame, tcp4Frame } from './testing/frames.ts';
import { NicDriver } from './testing/nic-driver.ts';
import { NET_MAIN, netProcesses, SWITCH_MAIN } from './testing/processes.ts';

const { dir, start, closers } = netProcesses('net-bad', 'error');

const [MA, MB, MC] = ['52:54:00:00:0b:0a', '52:54:00:00:0b:0b', '52:54:00:00:0b:0c'].map((m) => parseMac(m)!) as [number, number, number];
const hdr = (o: Partial<VnetHeader> = {}): VnetHeader => ({ flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 0, ...o });

async function completions(q: DriverQueueHandle, n: number): Promise<Map<number, number>> {
  const got = new Map<number, number>();
  while (got.size < n) for (const c of await q.wait()) got.set(c.head, c.len);
  return got;
}

describe('vmm-net with a hostile driver', () => {
  it('drops and counts malformed chains, oversized frames, inconsistent vnet headers and bogus control commands; the other ports are undisturbed', async () => {
    await start('switch', [SWITCH_MAIN, '--name', 'bad0']);
    const sockA = join(dir, 'a.sock');
    const a = await start('nic-a', [NET_MAIN, '--socket', sockA, '--switch', 'bad0', '--mac', formatMac(MA), '--id', 'a']);
    for (const [n, m] of [['b', MB], ['c', MC]] as const) await start(`nic-${n}`, [NET_MAIN, '--socket', join(dir, `${n}.sock`), '--switch', 'bad0', '--mac', formatMac(m), '--id', n]);
    const b = await NicDriver.connect(join(dir, 'b.sock'));
    const c = await NicDriver.connect(join(dir, 'c.sock'));
    closers.push(() => b.close(), () => c.close());
    // The hostile driver: receiveq, transmitq and the control queue (CTRL_VQ, no MQ: controlq is 2, §5.1.2), no mergeable buffers.
    const d = await VhostUserDriver.start(VhostUserFrontend.connect(sockA), {
      queues: 3, queueSize: 64, ramSize: 8 << 20,
      deviceFeatures: S.VIRTIO_NET_F_CSUM | S.VIRTIO_NET_F_HOST_TSO4 | S.VIRTIO_NET_F_MAC | S.VIRTIO_NET_F_STATUS | S.VIRTIO_NET_F_CTRL_VQ | S.VIRTIO_NET_F_CTRL_RX,
    });
    closers.push(() => d.close());
    const [rx, tx, ctrl] = [d.queue(0), d.queue(1), d.queue(2)];
    const stats = async () => (await a.request(NETSTATS_QUERY)) as NetStats;

    // Receive: a buffer too small for the frame that comes (no MRG_RXBUF: one buffer per frame, §5.1.6.3.1) comes back empty.
    const small = rx.submit([{ addr: d.alloc(32), len: 32, write: true }])!;
    await c.send(rawFrame(BROADCAST, MC, 60, 1));
    expect((await completions(rx, 1)).get(small)).toBe(0);
    const rxBufs = Array.from({ length: 4 }, () => d.alloc(2048));
    for (const addr of rxBufs) rx.submit([{ addr, len: 2048, write: true }]);
    await b.send(rawFrame(BROADCAST, MB, 100, 2));
    const got: Completion[] = await rx.wait();
    expect(got.map((u) => u.len)).toEqual([12 + 100]);
    expect(d.mem.read(rxBufs[0]! + 12, 100)).toEqual(rawFrame(BROADCAST, MB, 100, 2));

    // Traffic between the good ports, before, during and after the bad input.
    for (let i = 0; i < 50; i++) await b.send(rawFrame(MC, MB, 64 + i, i));

    // Transmit: every chain comes back (length 0), the bad ones dropped and counted by reason.
    const frame = (f: Uint8Array, h: VnetHeader): DriverBufferLike => {
      const buf = new Uint8Array(12 + f.length);
      encodeVnetHeader(h, buf);
      buf.set(f, 12);
      const addr = d.alloc(buf.length);
      d.mem.write(addr, buf);
      return { addr, len: buf.length, write: false };
    };
    type DriverBufferLike = { addr: number; len: number; write: boolean };
    const tcp = tcp4Frame({ dst: MB, src: MA, payload: new Uint8Array(3000).fill(9), partial: true });
    const heads = [
      // A descriptor outside guest memory: core refuses the chain (malformed).
      tx.submit([{ addr: 0x1000 as never, len: 64, write: false }])!,
      // Shorter than the vnet header.
      tx.submit([frame(new Uint8Array(0), hdr()).addr].map((addr) => ({ addr, len: 6, write: false })))!,
      // Larger than the MTU (1500 + Ethernet + a VLAN tag) without GSO.
      tx.submit([frame(rawFrame(MB, MA, 1600), hdr())])!,
      // GSO without NEEDS_CSUM; NEEDS_CSUM pointing past the frame; a flag the spec does not define; GSO UDP (UFO, never offered).
      tx.submit([frame(tcp.frame, hdr({ gsoType: S.VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, hdrLen: tcp.hdrLen }))])!,
      tx.submit([frame(rawFrame(MB, MA, 100), hdr({ flags: S.VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 90, csumOffset: 16 }))])!,
      tx.submit([frame(rawFrame(MB, MA, 100), hdr({ flags: 0x80 }))])!,
      tx.submit([frame(tcp.frame, hdr({ flags: 1, gsoType: S.VIRTIO_NET_HDR_GSO_UDP, gsoSize: 1448, csumStart: tcp.csumStart, csumOffset: 16 }))])!,
      // And one good frame: the NIC still works.
      tx.submit([frame(rawFrame(MB, MA, 90, 3), hdr())])!,
    ];
    const done = await completions(tx, heads.length);
    expect(heads.map((h) => done.get(h))).toEqual(heads.map(() => 0));

    // Control queue: the spec's ack byte, VIRTIO_NET_ERR for what the device cannot do (§5.1.6.5).
    const command = (bytes: number[], writable = true): { head: number; ack: number } => {
      const at = d.alloc(bytes.length);
      d.mem.write(at, Uint8Array.from(bytes));
      const ack = d.alloc(1);
      d.mem.write(ack, Uint8Array.of(0xee));
      const bufs = [{ addr: at, len: bytes.length, write: false }, ...(writable ? [{ addr: ack, len: 1, write: true }] : [])];
      return { head: ctrl.submit(bufs)!, ack };
    };
    const cmds = [
      command([77, 0]), // no such class
      command([S.VIRTIO_NET_CTRL_MQ, S.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0]), // MQ was not negotiated
      command([S.VIRTIO_NET_CTRL_RX, S.VIRTIO_NET_CTRL_RX_PROMISC], true), // data byte missing
      command([S.VIRTIO_NET_CTRL_RX, S.VIRTIO_NET_CTRL_RX_PROMISC, 1], false), // no room for the ack
      command([S.VIRTIO_NET_CTRL_RX, S.VIRTIO_NET_CTRL_RX_PROMISC, 1]), // a good one
    ];
    const acks = await completions(ctrl, cmds.length);
    expect(cmds.map((x) => acks.get(x.head))).toEqual([1, 1, 1, 0, 1]);
    expect(cmds.map((x) => d.mem.read(x.ack, 1)[0])).toEqual([S.VIRTIO_NET_ERR, S.VIRTIO_NET_ERR, S.VIRTIO_NET_ERR, 0xee, S.VIRTIO_NET_OK]);

    for (let i = 50; i < 100; i++) await b.send(rawFrame(MC, MB, 64 + i, i));
    await c.until(1 + 100);
    c.received.slice(1).forEach((r, i) => expect(r.frame).toEqual(rawFrame(MC, MB, 64 + i, i)));
    await b.until(2);
    expect(b.received.map((r) => r.frame)).toEqual([rawFrame(BROADCAST, MC, 60, 1), rawFrame(MB, MA, 90, 3)]);

    expect(await stats()).toMatchObject({
      tx_malformed: 2, tx_too_big: 1, tx_bad_header: 4, tx_packets: 1, rx_too_big: 1, rx_packets: 1, ctrl_err: 4, ctrl_ok: 1,
    });
    const ports = new Map((await querySwitch(join(dir, 'switch-bad0.sock'))).ports.map((p) => [p.name, p]));
    expect(ports.get('c')).toMatchObject({ tx_dropped: 0, rx_errors: 0 });
    expect(ports.get('a')).toMatchObject({ rx_packets: 1, rx_errors: 0 });
  });
});
