// A NIC on a host tap device (/dev/net/tun, IFF_TAP | IFF_NO_PI |
// IFF_VNET_HDR with a 12-byte header): the frames a guest sends are written
// to the tap with their virtio_net_hdr, so the host kernel takes the GSO
// super-frames and partial checksums as they are; TUNSETOFFLOAD tells the
// kernel which offloads the guest's driver takes on receive.

import { closeFd, memfdCreate, mmapShared, readStable, tapOpen, tapSetOffload, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, watchReadable, writeStable, type FdWatch, type Logger } from '@vmm/core';
import type { OffloadCaps } from './header.ts';
import type { NetPort } from './port.ts';
import { MAX_GSO_FRAME, VNET_HDR_LEN } from './spec.ts';

export class TapPort implements NetPort {
  readonly maxFrame = VNET_HDR_LEN + MAX_GSO_FRAME;
  readonly name: string;
  private readonly fd: number;
  private watch: FdWatch | null = null;
  private readonly txBuf: Uint8Array;
  private readonly rxBuf: Uint8Array;
  private current: Uint8Array | null = null;
  private readonly log: Logger;
  /** Frames the kernel would not take (tap queue full): dropped, as a full NIC queue drops. */
  txDropped = 0;
  onReadable: () => void = () => {};
  onWritable: () => void = () => {};

  constructor(name: string, log: Logger) {
    this.name = name;
    this.log = log;
    this.fd = tapOpen(name, VNET_HDR_LEN);
    // Buffers in a mapping that never moves: the kernel reads and writes them by address.
    const m = memfdCreate('vmm-net-tap', 2 * this.maxFrame);
    const buf = mmapShared(m, 2 * this.maxFrame);
    closeFd(m);
    this.txBuf = new Uint8Array(buf, 0, this.maxFrame);
    this.rxBuf = new Uint8Array(buf, this.maxFrame, this.maxFrame);
    // Until the guest says what it takes, the kernel finishes everything.
    tapSetOffload(this.fd, 0);
    this.resume();
  }

  // The tap fd is level-triggered: while a frame waits for guest buffers, stop watching (or the loop spins); release() resumes.
  private resume(): void {
    this.watch ??= watchReadable(this.fd, () => {
      this.onReadable();
      if (this.current !== null) {
        this.watch?.close();
        this.watch = null;
      }
    });
  }

  setRxOffloads(c: OffloadCaps): void {
    let f = 0;
    if (c.csum) {
      f |= TUN_F_CSUM;
      // TSO needs checksum offload too (the kernel refuses TSO flags without TUN_F_CSUM).
      if (c.tso4) f |= TUN_F_TSO4;
      if (c.tso6) f |= TUN_F_TSO6;
      if ((c.tso4 || c.tso6) && c.ecn) f |= TUN_F_TSO_ECN;
    }
    tapSetOffload(this.fd, f);
    this.log.debug({ tap: this.name, offloads: f }, 'tap offloads set');
  }

  reserve(): Uint8Array {
    return this.txBuf;
  }

  commit(len: number): void {
    if (!writeStable(this.fd, this.txBuf.subarray(0, len))) this.txDropped++;
  }

  peek(): Uint8Array | null {
    if (this.current) return this.current;
    const n = readStable(this.fd, this.rxBuf);
    if (n === null || n === 0) return null;
    this.current = this.rxBuf.subarray(0, n);
    return this.current;
  }

  release(): void {
    this.current = null;
    this.resume();
  }

  flush(): void {}

  close(): void {
    this.watch?.close();
    this.watch = null;
    closeFd(this.fd);
  }
}

export function openTapPort(name: string, log: Logger): TapPort {
  return new TapPort(name, log);
}
