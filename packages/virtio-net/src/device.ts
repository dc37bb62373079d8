// The virtio-net device model (virtio 1.2 §5.1), transport-independent
// (STYLE.md §5): core's vhost-user server or the in-process harness hands it
// queues; a NetPort (switch, tap, loopback) carries its frames.
//
// Queues (§5.1.2): receiveq(k) = 2k, transmitq(k) = 2k+1, controlq = 2N
// with MQ (N = max_virtqueue_pairs), else 2. A vhost-user front-end such as
// QEMU or DPDK keeps the control queue to itself and hands us data queues
// only; our own transport may hand us the control queue as well.

import type { DeviceContext, GuestMemory, Logger, Segment, VirtqueueHandle, VirtioDeviceBackend } from '@vmm/core';
import { BusyPoll, GuestMemoryError, protocolFeatureBit, VhostUserProtocolFeature, VIRTIO_F_VERSION_1 } from '@vmm/core';
import { parseCtrlCommand, RxFilter, macFromBytes, macToBytes, formatMac, type Mac } from './ctrl.ts';
import { acceptsOffloads, checkTxHeader, decodeVnetHeader, encodeVnetHeader, type OffloadCaps, type VnetHeader } from './header.ts';
import { finishChecksum, needsChecksum, segmentTcp } from './offload.ts';
import type { NetPort } from './port.ts';
import { flowHash } from './flow.ts';
import { corruptCovered, DelayLine } from './faults.ts';
import {
  CONFIG_MAC, CONFIG_MAX_VQ_PAIRS, CONFIG_MTU, CONFIG_SIZE, CONFIG_STATUS, DEFAULT_MTU, ETH_HLEN, MAX_QUEUE_PAIRS, VIRTIO_NET_ERR,
  VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_RX_EXTRA,
  VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_OK, VIRTIO_NET_S_LINK_UP,
  VNET_HDR_LEN, VNET_HDR_LEN_LEGACY,
} from './spec.ts';

/** Every counter the device keeps; drops are counted by reason. */
export interface NetStats {
  tx_packets: number;
  tx_bytes: number;
  tx_bad_header: number;
  tx_too_big: number;
  tx_too_short: number;
  tx_malformed: number;
  tx_no_port: number;
  rx_packets: number;
  rx_bytes: number;
  rx_filtered: number;
  rx_too_big: number;
  rx_bad_gso: number;
  rx_segmented: number;
  rx_checksummed: number;
  rx_malformed: number;
  ctrl_ok: number;
  ctrl_err: number;
  /** Chains whose buffers the IOMMU refused (a miss or a permission fault): given back empty, the frame dropped. */
  tx_dma_fault: number;
  rx_dma_fault: number;
  /** Data queues stopped: SET_VRING_ENABLE 0, GET_VRING_BASE, a new kick fd, a lost connection. */
  queue_stops: number;
  /** Frames the drop / corrupt / delay faults acted on (fault injection). */
  fault_dropped: number;
  fault_corrupted: number;
  fault_delayed: number;
  /** Frames the delay fault could not hold (its budget of frames or bytes was spent): dropped. */
  fault_delay_overflow: number;
}

/**
 * Fault injection (the orchestrator's inject-fault), on frames towards the
 * driver: each is held `delay` ms, then dropped with probability `drop`,
 * else corrupted with probability `corrupt`.
 */
export interface NetFaults {
  drop: number;
  corrupt: number;
  delay: number;
}

const newStats = (): NetStats => ({
  tx_packets: 0, tx_bytes: 0, tx_bad_header: 0, tx_too_big: 0, tx_too_short: 0, tx_malformed: 0, tx_no_port: 0,
  rx_packets: 0, rx_bytes: 0, rx_filtered: 0, rx_too_big: 0, rx_bad_gso: 0, rx_segmented: 0, rx_checksummed: 0, rx_malformed: 0,
  ctrl_ok: 0, ctrl_err: 0, tx_dma_fault: 0, rx_dma_fault: 0, queue_stops: 0, fault_dropped: 0, fault_corrupted: 0, fault_delayed: 0, fault_delay_overflow: 0,
});

export interface NetDeviceOptions {
  mac: Mac;
  /** Queue pairs offered (1..8); more than one offers VIRTIO_NET_F_MQ. */
  queuePairs?: number;
  mtu?: number;
  /**
   * Busy-poll (0: off): after handling a kick or a doorbell, keep polling the
   * transmit queues and the port for up to this many µs with kicks off
   * before sleeping again (core's BusyPoll; vhost-net's busyloop_timeout).
   */
  busyPollUs?: number;
  log: Logger;
}

/** Offloads the device offers to drivers: all of TCP checksum/segmentation both ways. */
const OFFLOAD_FEATURES =
  VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6 | VIRTIO_NET_F_HOST_ECN |
  VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_GUEST_ECN;

/** A receive buffer popped from the ring, with room left to fill. */
interface RxBuffer {
  head: number;
  writable: Segment[];
  writableLen: number;
}

type Delivery = 'delivered' | 'dropped' | 'no-buffers';

export class NetDevice implements VirtioDeviceBackend {
  readonly features: bigint;
  readonly numQueues: number;
  /** Inflight tracking (vhost-user INFLIGHT_SHMFD): after a crash, the receive buffers we held and unfinished transmits come back. */
  readonly protocolFeatures = protocolFeatureBit(VhostUserProtocolFeature.INFLIGHT_SHMFD);
  /**
   * Behind an IOMMU each copy in or out of guest memory is its own strict
   * request: receive buffers wait in the device for frames for as long as
   * the line is quiet, and must not hold back the guest's UNMAPs meanwhile.
   */
  readonly dmaScope = 'access';
  readonly maxPairs: number;
  readonly mtu: number;
  readonly stats: NetStats = newStats();
  private readonly log: Logger;
  private readonly defaultMac: Mac;
  private mac: Mac;
  private linkUp = true;
  private port: NetPort | null = null;
  private mem: GuestMemory | null = null;
  private negotiated = 0n;
  private hdrLen = VNET_HDR_LEN;
  private rxCaps: OffloadCaps = { csum: false, tso4: false, tso6: false, ecn: false };
  private txCaps: OffloadCaps = { csum: false, tso4: false, tso6: false, ecn: false };
  private readonly filter: RxFilter;
  private activePairs = 1;
  /** Receive queues by pair, as last handed to processQueue (null until the ring started). */
  private rxQueues: (VirtqueueHandle | null)[];
  private txQueues: (VirtqueueHandle | null)[];
  /** Mergeable receive buffers popped for a frame that did not fit in what was available yet (§5.1.6.3.1). */
  private spare: RxBuffer[][];
  private readonly hdrScratch = new Uint8Array(VNET_HDR_LEN);
  private ctx: DeviceContext | null = null;
  /** Armed by inject-fault; inert at 0. */
  readonly faults: NetFaults = { drop: 0, corrupt: 0, delay: 0 };
  /** The randomness faults use (tests replace it). */
  random: () => number = Math.random;
  /** The clock the delay fault uses, in ms (tests replace it). */
  now: () => number = () => performance.now();
  /** Frames the delay fault holds, in arrival order (bounded: DelayLine's budget). */
  private readonly delayed = new DelayLine();
  /** What noteMalformed already counted of each queue's refused chains. */
  private readonly malformedSeen = new WeakMap<VirtqueueHandle, number>();
  private delayTimer: NodeJS.Timeout | null = null;
  /** Receive queues the driver has enabled (kicked at least once since they started): only those get frames. */
  private rxEnabled: boolean[];
  /** The busy-poll loop (inert with busyPollUs 0). */
  readonly poller: BusyPoll;
  /** Chains taken from transmit queues plus frames taken from the port: busy-poll's measure of progress. */
  private moved = 0;

  constructor(o: NetDeviceOptions) {
    const pairs = o.queuePairs ?? 1;
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > MAX_QUEUE_PAIRS) throw new RangeError(`queue pairs ${pairs}: expected 1..${MAX_QUEUE_PAIRS}`);
    this.maxPairs = pairs;
    this.mtu = o.mtu ?? DEFAULT_MTU;
    this.log = o.log;
    this.defaultMac = o.mac;
    this.mac = o.mac;
    this.filter = new RxFilter(o.mac);
    this.numQueues = 2 * pairs + 1;
    this.features =
      OFFLOAD_FEATURES | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_CTRL_VQ |
      VIRTIO_NET_F_CTRL_RX | VIRTIO_NET_F_CTRL_RX_EXTRA | VIRTIO_NET_F_CTRL_MAC_ADDR | VIRTIO_NET_F_CTRL_GUEST_OFFLOADS |
      (pairs > 1 ? VIRTIO_NET_F_MQ : 0n);
    this.rxQueues = new Array<VirtqueueHandle | null>(pairs).fill(null);
    this.txQueues = new Array<VirtqueueHandle | null>(pairs).fill(null);
    this.spare = Array.from({ length: pairs }, () => []);
    this.rxEnabled = new Array<boolean>(pairs).fill(false);
    this.queueStarts = new Array<number>(2 * pairs).fill(0);
    this.queueStops = new Array<number>(2 * pairs).fill(0);
    this.poller = new BusyPoll(o.busyPollUs ?? 0, { step: () => this.pollStep(), enter: () => this.setPolling(true), leave: () => this.setPolling(false) });
  }

  /** One busy-poll pass: transmit queues with chains waiting, then the port. */
  private pollStep(): boolean {
    const before = this.moved;
    for (const q of this.txQueues) if (q !== null && q.live && q.pending() > 0) this.transmit(q);
    this.receive();
    if (this.moved === before) return false;
    // Completions would otherwise be signalled only when this turn ends, after the whole polling session.
    for (const q of this.rxQueues) q?.flush();
    for (const q of this.txQueues) q?.flush();
    return true;
  }

  /** Kicks and the port's doorbell off while polling; back on after, with one more look at everything (what came meanwhile came silently). */
  private setPolling(on: boolean): void {
    for (const q of this.txQueues) if (q !== null && q.live) q.setKicks(!on);
    this.port?.setPolling?.(on);
    if (on) return;
    for (const q of this.txQueues) if (q !== null && q.live) this.transmit(q);
    this.receive();
  }

  /** Plug the device into a port (or unplug it with null): frames flow as soon as queues run. */
  attach(port: NetPort | null): void {
    this.port?.close();
    this.port = port;
    if (port === null) return;
    port.onReadable = () => {
      this.receive();
      this.poller.run();
    };
    port.onWritable = () => {
      for (const q of this.txQueues) if (q) this.transmit(q);
    };
    port.setRxOffloads?.(this.rxCaps);
    this.receive();
  }

  get link(): boolean {
    return this.linkUp;
  }

  /** Carrier on or off (config status LINK_UP, §5.1.4); frames are neither sent nor received while it is down. */
  setLink(up: boolean): void {
    if (up === this.linkUp) return;
    this.linkUp = up;
    this.log.info({ link: up ? 'up' : 'down' }, 'link state changed');
    // STATUS changed: the driver gets a configuration change notification (virtio 1.2 §5.1.4.2, §2.5.1).
    this.ctx?.configChanged();
    if (up) this.receive();
  }

  get currentMac(): Mac {
    return this.mac;
  }

  readConfig(): Uint8Array {
    const c = new Uint8Array(CONFIG_SIZE);
    const v = new DataView(c.buffer);
    macToBytes(this.mac, c, CONFIG_MAC);
    v.setUint16(CONFIG_STATUS, this.linkUp ? VIRTIO_NET_S_LINK_UP : 0, true);
    v.setUint16(CONFIG_MAX_VQ_PAIRS, this.maxPairs, true);
    v.setUint16(CONFIG_MTU, this.mtu, true);
    return c;
  }

  /** Legacy drivers without CTRL_MAC_ADDR set the MAC by writing config space (§5.1.4.2); nothing else there is writable. */
  writeConfig(offset: number, data: Uint8Array): void {
    if (offset < CONFIG_MAC || offset + data.length > CONFIG_MAC + 6) throw new RangeError(`config write at ${offset}+${data.length}: only mac (0..5) is writable`);
    const b = macToBytes(this.mac);
    b.set(data, offset - CONFIG_MAC);
    this.setMac(macFromBytes(b));
  }

  private setMac(m: Mac): void {
    this.mac = m;
    this.filter.mac = m;
    this.log.info({ mac: formatMac(m) }, 'MAC address set');
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.mem = ctx.mem;
    this.negotiated = ctx.features;
    const f = ctx.features;
    // The header carries num_buffers with VERSION_1 or MRG_RXBUF (§5.1.6.1).
    this.hdrLen = f & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) ? VNET_HDR_LEN : VNET_HDR_LEN_LEGACY;
    this.txCaps = { csum: !!(f & VIRTIO_NET_F_CSUM), tso4: !!(f & VIRTIO_NET_F_HOST_TSO4), tso6: !!(f & VIRTIO_NET_F_HOST_TSO6), ecn: !!(f & VIRTIO_NET_F_HOST_ECN) };
    this.setGuestOffloads(f);
    this.activePairs = 1;
    this.log.debug({ features: `0x${f.toString(16)}`, hdrLen: this.hdrLen }, 'activated');
  }

  private setGuestOffloads(f: bigint): void {
    this.rxCaps = { csum: !!(f & VIRTIO_NET_F_GUEST_CSUM), tso4: !!(f & VIRTIO_NET_F_GUEST_TSO4), tso6: !!(f & VIRTIO_NET_F_GUEST_TSO6), ecn: !!(f & VIRTIO_NET_F_GUEST_ECN) };
    this.port?.setRxOffloads?.(this.rxCaps);
  }

  reset(): void {
    this.ctx = null;
    this.mem = null;
    this.rxEnabled.fill(false);
    this.negotiated = 0n;
    this.rxQueues.fill(null);
    this.txQueues.fill(null);
    this.spare = Array.from({ length: this.maxPairs }, () => []);
    this.mac = this.defaultMac;
    this.filter.reset(this.defaultMac);
    this.activePairs = 1;
    this.delayed.clear();
    if (this.delayTimer !== null) clearTimeout(this.delayTimer);
    this.delayTimer = null;
  }

  /**
   * Set the delay fault (0 clears it). Frames already held keep their due
   * time; later ones queue behind them, so order is kept either way.
   */
  setDelay(ms: number): void {
    if (!(Number.isFinite(ms) && ms >= 0)) throw new RangeError(`delay ms=${ms}: expected a non-negative number`);
    this.faults.delay = ms;
    this.receive();
  }

  /** Queue pairs whose receive queue runs now, and the pairs flows are spread over. */
  get queueState(): { pairsRunning: number[]; activePairs: number; queueStarts: number[]; queueStops: number[] } {
    return { pairsRunning: this.rxQueues.flatMap((q, i) => (q?.live ? [i] : [])), activePairs: this.activePairs, queueStarts: [...this.queueStarts], queueStops: [...this.queueStops] };
  }

  /** startQueue / stopQueue calls per data queue index (a front-end enabling and disabling pairs shows here). */
  private readonly queueStarts: number[];
  private readonly queueStops: number[];

  /** Frames the delay fault holds now. */
  get delayedFrames(): number {
    return this.delayed.length;
  }

  private get ctrlIndex(): number {
    return this.negotiated & VIRTIO_NET_F_MQ ? 2 * this.maxPairs : 2;
  }

  /** The driver sets the pairs in use through our control queue (MQ_VQ_PAIRS_SET); else the front-end does it by enabling rings. */
  private get ctrlManagesPairs(): boolean {
    return (this.negotiated & VIRTIO_NET_F_CTRL_VQ) !== 0n && (this.negotiated & VIRTIO_NET_F_MQ) !== 0n;
  }

  private isCtrl(index: number): boolean {
    return (this.negotiated & VIRTIO_NET_F_CTRL_VQ) !== 0n && index === this.ctrlIndex;
  }

  startQueue(q: VirtqueueHandle): void {
    if (this.isCtrl(q.index) || q.index >> 1 >= this.maxPairs) return;
    const pair = q.index >> 1;
    // Kicks on: a predecessor killed while it polled, or while the port was empty, may have left them off in the ring.
    q.setKicks(true);
    this.queueStarts[q.index]!++;
    if (q.index % 2 === 0) {
      this.rxQueues[pair] = q;
      this.rxEnabled[pair] = false;
      this.spare[pair] = [];
    } else this.txQueues[pair] = q;
  }

  /** Give back the mergeable receive buffers held for a frame that had not fit yet (core rewinds the ring over them). */
  stopQueue(index: number): number[] {
    if (this.isCtrl(index) || index >> 1 >= this.maxPairs) return [];
    const pair = index >> 1;
    if ((index % 2 === 1 ? this.txQueues : this.rxQueues)[pair] !== null) {
      this.stats.queue_stops++;
      this.queueStops[index]!++;
    }
    if (index % 2 === 1) {
      this.txQueues[pair] = null;
      return [];
    }
    this.rxQueues[pair] = null;
    this.rxEnabled[pair] = false;
    // A front-end that keeps the control queue (QEMU, DPDK) disables the pairs a guest stops using (SET_VRING_ENABLE 0,
    // ethtool -L): flows are spread over the pairs still running.
    if (!this.ctrlManagesPairs) this.activePairs = Math.max(1, this.rxEnabled.lastIndexOf(true) + 1);
    const held = this.spare[pair]!.map((b) => b.head);
    this.spare[pair] = [];
    return held;
  }

  processQueue(q: VirtqueueHandle): void {
    if (this.isCtrl(q.index)) return this.control(q);
    const pair = q.index >> 1;
    if (pair >= this.maxPairs) return;
    if (q.index % 2 === 0) {
      this.rxQueues[pair] = q;
      this.rxEnabled[pair] = true;
      // A front-end that keeps the control queue (QEMU, DPDK) enables pairs by starting their rings.
      if (!this.ctrlManagesPairs) this.activePairs = Math.max(this.activePairs, pair + 1);
      this.receive();
    } else {
      this.txQueues[pair] = q;
      this.transmit(q);
    }
    this.poller.run();
  }

  // ---- transmit: guest → port ----

  private transmit(q: VirtqueueHandle): void {
    const mem = this.mem;
    if (mem === null) return;
    const port = this.port;
    let sent = 0;
    for (;;) {
      // Take a port buffer first: when the port is full the chain stays in the ring and onWritable resumes us.
      const buf = port && this.linkUp ? port.reserve() : null;
      if (port && this.linkUp && buf === null) break;
      const c = q.pop();
      if (c === null) break;
      this.moved++;
      const len = c.readableLen;
      if (len < this.hdrLen) {
        this.stats.tx_malformed++;
        q.complete(c.head, 0);
        continue;
      }
      if (buf === null) {
        // No port, or the link is down: the frame is consumed and dropped (a cable pulled).
        this.stats.tx_no_port++;
        q.complete(c.head, 0);
        continue;
      }
      const frameLen = len - this.hdrLen;
      if (this.hdrLen + frameLen > buf.length) {
        this.stats.tx_too_big++;
        q.complete(c.head, 0);
        continue;
      }
      // Copy the chain (header and frame) straight into the port buffer: the one copy on this side.
      if (!this.dmaOk('tx', c.head, () => gather(mem, c.readable, buf, this.hdrLen === VNET_HDR_LEN ? 0 : VNET_HDR_LEN - this.hdrLen))) {
        q.complete(c.head, 0);
        continue;
      }
      const h = decodeVnetHeader(buf.subarray(VNET_HDR_LEN - this.hdrLen), this.hdrLen);
      const why = checkTxHeader(h, frameLen, this.txCaps, this.mtu);
      q.complete(c.head, 0);
      if (why !== null) {
        this.stats[why]++;
        this.log.debug({ reason: why, gsoType: h.gsoType, flags: h.flags, frameLen }, 'transmit frame dropped');
        continue;
      }
      h.numBuffers = 0;
      encodeVnetHeader(h, buf);
      port!.commit(VNET_HDR_LEN + frameLen);
      this.stats.tx_packets++;
      this.stats.tx_bytes += frameLen;
      sent++;
    }
    if (sent > 0) port?.flush();
    this.noteMalformed(q, 'tx_malformed');
  }

  /** Chains core refused as malformed (a descriptor outside guest memory, a loop, …) count as this device's bad input. */
  private noteMalformed(q: VirtqueueHandle, stat: 'tx_malformed' | 'rx_malformed' | 'ctrl_err'): void {
    if (q.malformed === 0) return; // the common case, without a map lookup per batch
    const seen = this.malformedSeen.get(q) ?? 0;
    if (q.malformed === seen) return;
    this.stats[stat] += q.malformed - seen;
    this.malformedSeen.set(q, q.malformed);
  }

  // ---- receive: port → guest ----

  private receive(): void {
    const port = this.port;
    if (port === null || this.mem === null || !this.linkUp) return;
    // Frames the delay fault held come first, each once it is due; a frame that finds no buffer waits for the next kick.
    const now = this.now();
    for (let f = this.delayed.due(now); f !== null; f = this.delayed.due(now)) {
      if (this.deliverFrame(f) === 'no-buffers') break;
      this.delayed.shift();
    }
    let released = false;
    for (;;) {
      const f = port.peek();
      if (f === null) {
        // Nothing to deliver: buffers the driver adds need no kick (the port's doorbell wakes us for frames, and a frame
        // that then finds too few buffers asks for one through available()). Kicks per refill were most of the
        // receiving NIC's wake-ups under testpmd (virtio 1.2 §2.7.7.1 NO_NOTIFY, §2.7.10 avail_event). Frames the
        // delay fault holds still wait for buffers: their kicks stay on.
        if (this.delayed.length === 0) for (const q of this.rxQueues) if (q !== null && q.live) q.setKicks(false);
        break;
      }
      if (this.faults.delay > 0 || this.delayed.length > 0) {
        // Held in our own memory, so the port (and the switch's other ports) never waits for the delay.
        if (this.delayed.push(f, now + this.faults.delay)) this.stats.fault_delayed++;
        else this.stats.fault_delay_overflow++;
        port.release();
        released = true;
        this.moved++;
        continue;
      }
      const r = this.deliverFrame(f);
      if (r === 'no-buffers') break;
      port.release();
      released = true;
      this.moved++;
    }
    if (released) port.flush();
    this.armDelay();
    for (const q of this.rxQueues) if (q !== null) this.noteMalformed(q, 'rx_malformed');
  }

  /** One timer for the oldest held frame's due time. */
  private armDelay(): void {
    if (this.delayTimer !== null) return;
    const due = this.delayed.nextDue();
    if (due === null) return;
    this.delayTimer = setTimeout(() => {
      this.delayTimer = null;
      this.receive();
    }, Math.max(0, Math.ceil(due - this.now())));
  }

  private deliverFrame(f: Uint8Array): Delivery {
    if (f.length < VNET_HDR_LEN + ETH_HLEN) {
      this.stats.rx_malformed++;
      return 'dropped';
    }
    const h = decodeVnetHeader(f);
    const frame = f.subarray(VNET_HDR_LEN);
    if (!this.filter.accepts(macFromBytes(frame))) {
      this.stats.rx_filtered++;
      return 'dropped';
    }
    if (this.faults.drop > 0 && this.random() < this.faults.drop) {
      this.stats.fault_dropped++;
      return 'dropped';
    }
    let pair = this.activePairs > 1 ? flowHash(frame) % this.activePairs : 0;
    if (!this.rxEnabled[pair]) pair = 0;
    const q = this.rxQueues[pair];
    if (!q || !q.live || !this.rxEnabled[pair]) return 'no-buffers';
    if (this.faults.corrupt > 0 && this.random() < this.faults.corrupt) {
      const r = this.deliverCorrupted(q, pair, h, frame);
      if (r !== null) return r;
    }
    if (acceptsOffloads(h, this.rxCaps)) return this.deliver(q, pair, h, frame);
    // The driver cannot take this frame's offloads: finish them here, the only place they are done in software.
    if ((h.gsoType & 0x7f) !== VIRTIO_NET_HDR_GSO_NONE) {
      if (q.available(1) < 1 && this.spare[pair]!.length === 0) return 'no-buffers';
      const segs = segmentTcp(frame, h);
      if (segs === null) {
        this.stats.rx_bad_gso++;
        return 'dropped';
      }
      this.stats.rx_segmented++;
      const plain: VnetHeader = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 0 };
      // Segments that find no buffer are lost, as on a NIC whose ring ran dry in the middle of a burst.
      for (const s of segs) this.deliver(q, pair, plain, s);
      return 'delivered';
    }
    if (needsChecksum(h)) {
      if (h.csumStart + h.csumOffset + 2 > frame.length) {
        this.stats.rx_malformed++;
        return 'dropped';
      }
      finishChecksum(frame, h);
      this.stats.rx_checksummed++;
      return this.deliver(q, pair, { ...h, flags: h.flags & ~VIRTIO_NET_HDR_F_NEEDS_CSUM }, frame);
    }
    return this.deliver(q, pair, h, frame);
  }

  /**
   * The corrupt fault: the frame reaches the driver with one byte its
   * TCP/UDP/ICMP checksum covers flipped (faults.ts corruptCovered) and no
   * checksum offload claimed: a partial checksum is finished first, a GSO
   * frame is segmented (a driver does not verify what comes as GSO) and one
   * of its segments corrupted, DATA_VALID is never set. So the guest's own
   * checksum validation sees every corrupted frame; fault_corrupted counts
   * those that reached a buffer. Null for a frame no checksum covers (ARP,
   * fragments): it goes on as it is.
   */
  private deliverCorrupted(q: VirtqueueHandle, pair: number, h: VnetHeader, frame: Uint8Array): Delivery | null {
    const plain = (): VnetHeader => ({ flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 0 });
    if ((h.gsoType & 0x7f) === VIRTIO_NET_HDR_GSO_NONE) {
      const f = frame.slice();
      if (needsChecksum(h)) {
        if (h.csumStart + h.csumOffset + 2 > f.length) return null;
        finishChecksum(f, h);
      }
      if (!corruptCovered(f, this.random)) return null;
      const r = this.deliver(q, pair, plain(), f);
      if (r === 'delivered') this.stats.fault_corrupted++;
      return r;
    }
    if (q.available(1) < 1 && this.spare[pair]!.length === 0) return 'no-buffers';
    const segs = segmentTcp(frame, h);
    if (segs === null) return null;
    const bad = Math.floor(this.random() * segs.length);
    if (!corruptCovered(segs[bad]!, this.random)) return null;
    // Segments that find no buffer are lost, as on a NIC whose ring ran dry in the middle of a burst.
    segs.forEach((f, i) => {
      if (this.deliver(q, pair, plain(), f) === 'delivered' && i === bad) this.stats.fault_corrupted++;
    });
    this.stats.rx_segmented++;
    return 'delivered';
  }

  /** Write one frame into receive buffers (§5.1.6.3-4): one chain, or several with MRG_RXBUF and num_buffers in the first. */
  private deliver(q: VirtqueueHandle, pair: number, h: VnetHeader, frame: Uint8Array): Delivery {
    const mem = this.mem!;
    const need = this.hdrLen + frame.length;
    const mergeable = (this.negotiated & VIRTIO_NET_F_MRG_RXBUF) !== 0n;
    const bufs = this.spare[pair]!;
    if (!mergeable) {
      if (q.available(1) < 1) return 'no-buffers';
      const c = q.pop();
      if (c === null) return 'no-buffers';
      if (c.writableLen < need) {
        // A buffer too small for the frame (the driver posted less than it negotiated for): give it back empty, drop the frame.
        this.stats.rx_too_big++;
        q.complete(c.head, 0);
        return 'dropped';
      }
      bufs.push({ head: c.head, writable: c.writable, writableLen: c.writableLen });
    } else {
      let have = bufs.reduce((s, b) => s + b.writableLen, 0);
      while (have < need) {
        if (q.available(1) < 1) return 'no-buffers';
        const c = q.pop();
        if (c === null) return 'no-buffers';
        if (c.writableLen < this.hdrLen) {
          this.stats.rx_malformed++;
          q.complete(c.head, 0);
          continue;
        }
        bufs.push({ head: c.head, writable: c.writable, writableLen: c.writableLen });
        have += c.writableLen;
      }
    }
    // Enough room: header (num_buffers = chains used), then the frame across the chains in order.
    let used = 0;
    let rem = need;
    while (rem > 0) {
      rem -= Math.min(rem, bufs[used]!.writableLen);
      used++;
    }
    h.numBuffers = used;
    encodeVnetHeader(h, this.hdrScratch, this.hdrLen);
    let srcOff = 0;
    for (let i = 0; i < used; i++) {
      const b = bufs[i]!;
      const n = Math.min(b.writableLen, need - srcOff);
      if (!this.dmaOk('rx', b.head, () => scatterPair(mem, b.writable, this.hdrScratch.subarray(0, this.hdrLen), frame, srcOff, n))) {
        // The frame is lost: this chain and the rest it would have filled go back empty.
        for (let k = i; k < used; k++) q.complete(bufs[k]!.head, 0);
        bufs.splice(0, used);
        return 'dropped';
      }
      srcOff += n;
      q.complete(b.head, n);
    }
    bufs.splice(0, used);
    this.stats.rx_packets++;
    this.stats.rx_bytes += frame.length;
    return 'delivered';
  }

  // ---- control queue ----

  private control(q: VirtqueueHandle): void {
    const mem = this.mem;
    if (mem === null) return;
    for (let c = q.pop(); c !== null; c = q.pop()) {
      // Driver-readable: class, command, data; device-writable: the one-byte ack (§5.1.6.5).
      if (c.writableLen < 1 || c.readableLen > 4096) {
        this.stats.ctrl_err++;
        this.log.warn({ readable: c.readableLen, writable: c.writableLen }, 'malformed control command chain');
        q.complete(c.head, 0);
        continue;
      }
      const cmd = new Uint8Array(c.readableLen);
      if (!this.dmaOk('ctrl', c.head, () => gather(mem, c.readable, cmd, 0))) {
        q.complete(c.head, 0);
        continue;
      }
      const ack = this.runControl(cmd);
      q.complete(c.head, this.dmaOk('ctrl', c.head, () => mem.writeU8(c.writable[0]!.addr, ack)) ? 1 : 0);
    }
    this.noteMalformed(q, 'ctrl_err');
  }

  /**
   * Run one copy in or out of guest memory; false when the IOMMU refused it
   * (GuestMemoryError ERR_IOMMU_FAULT, already recorded for the guest's
   * fault event) or the address is outside guest memory: that chain is
   * given back empty, never a crash of the process.
   */
  private dmaOk(dir: 'tx' | 'rx' | 'ctrl', head: number, copy: () => void): boolean {
    try {
      copy();
      return true;
    } catch (e) {
      if (!(e instanceof GuestMemoryError)) throw e;
      if (dir === 'ctrl') this.stats.ctrl_err++;
      else this.stats[dir === 'tx' ? 'tx_dma_fault' : 'rx_dma_fault']++;
      this.log.warn({ dir, head, code: e.code, err: e.message }, 'guest memory access refused; chain returned empty');
      return false;
    }
  }

  private runControl(b: Uint8Array): number {
    const p = parseCtrlCommand(b, this.negotiated, this.maxPairs);
    if (!p.ok) {
      this.stats.ctrl_err++;
      this.log.warn({ reason: p.reason }, 'control command refused');
      return VIRTIO_NET_ERR;
    }
    const c = p.command;
    switch (c.kind) {
      case 'rx':
        this.filter.setRx(c.cmd, c.on);
        break;
      case 'mac-table':
        this.filter.setTable(c.unicast, c.multicast);
        break;
      case 'mac-addr':
        this.setMac(c.mac);
        break;
      case 'mq-pairs':
        this.activePairs = c.pairs;
        this.log.info({ pairs: c.pairs }, 'queue pairs set');
        break;
      case 'announce-ack':
        break;
      case 'guest-offloads': {
        // Only offloads negotiated may be enabled (§5.1.6.5.6.1).
        const allowed = this.negotiated & (VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_GUEST_ECN);
        if ((c.offloads & ~allowed) !== 0n) {
          this.stats.ctrl_err++;
          this.log.warn({ offloads: `0x${c.offloads.toString(16)}` }, 'guest offloads beyond the negotiated ones');
          return VIRTIO_NET_ERR;
        }
        this.setGuestOffloads(c.offloads);
        break;
      }
    }
    this.stats.ctrl_ok++;
    return VIRTIO_NET_OK;
  }
}

/** Copy a chain's readable segments into `dest` from offset `at`. */
function gather(mem: GuestMemory, segs: readonly Segment[], dest: Uint8Array, at: number): void {
  let o = at;
  for (const s of segs) {
    const n = Math.min(s.len, dest.length - o);
    if (n <= 0) break;
    mem.readInto(s.addr, dest.subarray(o, o + n));
    o += n;
  }
}

/**
 * Write bytes [off, off+n) of the stream `hdr ‖ frame` into writable
 * segments. Every segment was checked against guest memory when the chain
 * was parsed (core's SplitQueue), so the writes cannot fall outside it.
 */
function scatterPair(mem: GuestMemory, segs: readonly Segment[], hdr: Uint8Array, frame: Uint8Array, off: number, n: number): void {
  let left = n;
  let pos = off;
  for (const s of segs) {
    if (left === 0) break;
    let segOff = 0;
    while (segOff < s.len && left > 0) {
      const src = pos < hdr.length ? hdr.subarray(pos, Math.min(hdr.length, pos + left)) : frame.subarray(pos - hdr.length, pos - hdr.length + left);
      const m = Math.min(src.length, s.len - segOff);
      mem.write(s.addr + segOff, src.subarray(0, m));
      segOff += m;
      pos += m;
      left -= m;
    }
  }
}
