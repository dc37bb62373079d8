// A guest-less virtio-net driver over vhost-user for protocol tests and
// benchmarks: core's VhostUserDriver with receive buffers kept posted, and
// frames sent with a 12-byte virtio_net_hdr. Like QEMU and DPDK it keeps no
// control queue on the back-end.

import { VhostUserDriver, VhostUserFrontend, type GuestAddress } from '@vmm/core';
import { decodeVnetHeader, encodeVnetHeader, type VnetHeader } from '../header.ts';
import { VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VNET_HDR_LEN } from '../spec.ts';

export const DRIVER_FEATURES = VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;

export interface Received {
  hdr: VnetHeader;
  frame: Uint8Array;
}

export class NicDriver {
  readonly d: VhostUserDriver;
  private readonly rxBufs = new Map<number, GuestAddress>();
  private readonly txFree: GuestAddress[] = [];
  private readonly txBusy = new Map<number, GuestAddress>();
  readonly bufSize: number;
  readonly received: Received[] = [];
  private waiters: (() => void)[] = [];
  private stopped = false;

  private constructor(d: VhostUserDriver, bufSize: number) {
    this.d = d;
    this.bufSize = bufSize;
  }

  static async connect(sock: string, o: { queueSize?: number; bufSize?: number; features?: bigint; /** Post receive buffers (default true); false: a guest that never takes frames. */ receive?: boolean } = {}): Promise<NicDriver> {
    const qs = o.queueSize ?? 256;
    const d = await VhostUserDriver.start(VhostUserFrontend.connect(sock), { queues: 2, queueSize: qs, deviceFeatures: o.features ?? DRIVER_FEATURES, ramSize: 32 << 20 });
    const n = new NicDriver(d, o.bufSize ?? 2048);
    for (let i = 0; i < qs; i++) n.txFree.push(d.alloc(n.bufSize, 64));
    if (o.receive !== false) {
      for (let i = 0; i < qs; i++) n.postRx(d.alloc(n.bufSize, 64));
      void n.rxLoop();
    }
    return n;
  }

  private postRx(a: GuestAddress): void {
    const head = this.d.queue(0).submit([{ addr: a, len: this.bufSize, write: true }]);
    if (head === null) throw new Error('rx ring full');
    this.rxBufs.set(head, a);
  }

  private async rxLoop(): Promise<void> {
    while (!this.stopped) {
      const done = await this.d.queue(0).wait();
      // Heads freed by this batch may be handed out again by postRx: take every address first.
      const addrs = done.map((u) => this.rxBufs.get(u.head)!);
      for (const u of done) this.rxBufs.delete(u.head);
      done.forEach((u, i) => {
        const b = this.d.mem.read(addrs[i]!, u.len);
        const hdr = decodeVnetHeader(b);
        if (hdr.numBuffers !== 1) throw new Error(`test driver got a frame in ${hdr.numBuffers} buffers`);
        this.received.push({ hdr, frame: b.slice(VNET_HDR_LEN) });
      });
      for (const a of addrs) this.postRx(a);
      for (const w of this.waiters.splice(0)) w();
    }
  }

  /** Wait until `n` frames have been received in total. */
  async until(n: number, timeoutMs = 20_000): Promise<void> {
    const t0 = Date.now();
    while (this.received.length < n) {
      if (Date.now() - t0 > timeoutMs) throw new Error(`received ${this.received.length} of ${n} frames within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }

  /** Send a frame; waits for a free transmit buffer when all are in flight. */
  async send(frame: Uint8Array, hdr: Partial<VnetHeader> = {}): Promise<void> {
    const tx = this.d.queue(1);
    for (;;) {
      for (const u of tx.poll()) {
        this.txFree.push(this.txBusy.get(u.head)!);
        this.txBusy.delete(u.head);
      }
      if (this.txFree.length > 0) break;
      await tx.wait().then((us) => us.forEach((u) => {
        this.txFree.push(this.txBusy.get(u.head)!);
        this.txBusy.delete(u.head);
      }));
    }
    const a = this.txFree.pop()!;
    const b = new Uint8Array(VNET_HDR_LEN + frame.length);
    encodeVnetHeader({ flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 0, ...hdr }, b);
    b.set(frame, VNET_HDR_LEN);
    this.d.mem.write(a, b);
    const head = tx.submit([{ addr: a, len: b.length, write: false }]);
    if (head === null) throw new Error('tx ring full');
    this.txBusy.set(head, a);
  }

  close(): void {
    this.stopped = true;
    this.d.close();
  }
}
