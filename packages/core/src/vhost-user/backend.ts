// vhost-user back-end server (QEMU docs/interop/vhost-user.rst): listens on
// a unix socket, serves one front-end at a time, keeps the protocol state
// (features, memory regions, vrings with their eventfds, inflight region) and
// drives a transport-independent VirtioDeviceBackend (STYLE.md §4-6).
//
// A malformed or unknown message is logged, the connection is closed and the
// server accepts the next front-end: the process never dies of a peer's bug.

import { existsSync, unlinkSync } from 'node:fs';
import type { Logger } from 'pino';
import {
  VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, type DeviceContext, type VirtioDeviceBackend,
} from '../device.ts';
import { ConfigError, VmmError } from '../errors.ts';
import { VIRTIO_STATUS_DEVICE_NEEDS_RESET } from '../virtio-device.ts';
import { closeFd, eventfdRead, eventfdWrite, fdSize, memfdCreate, mmapShared, unixAccept, unixListen, watchReadable, type FdWatch } from '../ffi.ts';
import { createLogger } from '../logger.ts';
import { GuestMemory, guestAddress, type DmaTranslator, type GuestAddress } from '../memory.ts';
import { SplitQueue, MAX_QUEUE_SIZE } from '../virtqueue.ts';
import { QueueHandle } from '../queue-handle.ts';
import {
  configPayload, hasReply, inflightPayload, iotlbMsg, memTable, singleRegion, u64, validateRequest, vringAddr, vringState, VhostUserProtocolError,
  type Message, type VringAddr,
} from './codec.ts';
import { DeviceIotlb, IotlbType, isIotlbMiss } from './iotlb.ts';
import { VhostUserConnection } from './connection.ts';
import { InflightQueue, inflightQueueStride, inflightRegionSize } from './inflight.ts';
import {
  BackendReq, FLAG_NEED_REPLY, FLAG_REPLY, MAX_MEM_SLOTS, pf, ProtocolFeature, Req, reqName, VERSION, VHOST_USER_F_PROTOCOL_FEATURES,
  VRING_IDX_MASK, VRING_NOFD_MASK,
} from './protocol.ts';

/** Protocol features every device gets from this server. */
export const BASE_PROTOCOL_FEATURES =
  pf(ProtocolFeature.MQ) | pf(ProtocolFeature.REPLY_ACK) | pf(ProtocolFeature.CONFIG) |
  pf(ProtocolFeature.RESET_DEVICE) | pf(ProtocolFeature.CONFIGURE_MEM_SLOTS) | pf(ProtocolFeature.STATUS) |
  pf(ProtocolFeature.BACKEND_REQ);

/** Protocol features a device may ask for on top (VirtioDeviceBackend.protocolFeatures): inflight tracking is a disk's, not every device's. */
export const OPTIONAL_PROTOCOL_FEATURES = pf(ProtocolFeature.INFLIGHT_SHMFD);

/** Every protocol feature this server implements. */
export const BACKEND_PROTOCOL_FEATURES = BASE_PROTOCOL_FEATURES | OPTIONAL_PROTOCOL_FEATURES;

/** Ring-layout features implemented by core's virtqueue, offered on top of the device's own. */
const RING_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX;

export interface VhostUserBackendOptions {
  socketPath: string;
  log?: Logger;
  /** Restrict the protocol features offered (tests, compatibility); default BASE_PROTOCOL_FEATURES plus the device's own. */
  protocolFeatures?: bigint;
  /** How long GET_VRING_BASE waits for the device to finish a ring's requests (default 5 s). */
  drainTimeoutMs?: number;
  /**
   * The device sits behind an IOMMU: VIRTIO_F_ACCESS_PLATFORM is offered,
   * and once negotiated every ring and buffer address is an I/O virtual
   * address translated through this (virtio 1.2 §6.1; the ring addresses of
   * SET_VRING_ADDR are IOVAs then, as with vhost-user's IOTLB).
   */
  dma?: DmaTranslator;
  /**
   * Serve a front-end that has a vIOMMU (vhost-user "IOMMU support"):
   * VIRTIO_F_ACCESS_PLATFORM is offered, and once negotiated addresses are
   * IOVAs translated through the device IOTLB the front-end fills with
   * VHOST_USER_IOTLB_MSG; a miss is asked for with BACKEND_IOTLB_MSG on the
   * back-end channel (BACKEND_REQ, with NEED_REPLY under REPLY_ACK) and the
   * request waits for the update. Not together with `dma`.
   */
  iotlb?: boolean;
}

interface Vring {
  index: number;
  num: number;
  addr: VringAddr | null;
  base: number;
  kickFd: number;
  callFd: number;
  errFd: number;
  kickWatch: FdWatch | null;
  enabled: boolean;
  started: boolean;
  /** Its ring addresses missed in the IOTLB: it starts once the front-end's updates cover them. */
  awaitingIotlb: boolean;
  handle: QueueHandle | null;
}

function newVring(index: number): Vring {
  return { index, num: 0, addr: null, base: 0, kickFd: -1, callFd: -1, errFd: -1, kickWatch: null, enabled: false, started: false, awaitingIotlb: false, handle: null };
}

const regionKey = (gpa: bigint, size: bigint, userAddr: bigint): string => `${gpa}:${size}:${userAddr}`;

interface Waiter {
  handle: QueueHandle;
  resolve: () => void;
}

export class VhostUserBackend {
  readonly log: Logger;
  readonly socketPath: string;
  private readonly device: VirtioDeviceBackend;
  private readonly protocolFeaturesOffered: bigint;
  private readonly drainTimeoutMs: number;
  private readonly dma: DmaTranslator | null;
  private readonly iotlbWanted: boolean;
  /** The device IOTLB of this connection, when the front-end negotiated ACCESS_PLATFORM with `iotlb` on. */
  private iotlb: DeviceIotlb | null = null;
  private listenFd = -1;
  private listenWatch: FdWatch | null = null;
  private conn: VhostUserConnection | null = null;
  private chain: Promise<void> = Promise.resolve();
  // Protocol state of the current connection.
  private features = 0n;
  private protocolFeatures = 0n;
  private featuresSet = false;
  private readonly mem = new GuestMemory();
  /** ADD_MEM_REG of a region already mapped: how many times each such region was added (absent: once). */
  private readonly regionRefs = new Map<string, number>();
  private vrings: Vring[] = [];
  private inflightBuf: ArrayBuffer | null = null;
  private inflightQueueSize = 0;
  private status = 0;
  private activated = false;
  /** The back-end channel (SET_BACKEND_REQ_FD): we send on it and read the front-end's replies. */
  private backendChannel: VhostUserConnection | null = null;
  private idleWaiters: Waiter[] = [];
  /** Connections served so far (for tests and logs). */
  connections = 0;
  /** Called after each connection ends, with the error that ended it if any. */
  onDisconnect: ((error?: Error) => void) | undefined;
  /** Called after each request was handled (diagnostics, tests): its name and whether it succeeded. */
  onRequest: ((name: string, ok: boolean) => void) | undefined;

  constructor(device: VirtioDeviceBackend, opts: VhostUserBackendOptions) {
    this.device = device;
    this.socketPath = opts.socketPath;
    this.log = opts.log ?? createLogger('vhost-user-backend', opts.socketPath);
    const wanted = device.protocolFeatures ?? 0n;
    if (wanted & ~OPTIONAL_PROTOCOL_FEATURES) throw new ConfigError(`the device asks for vhost-user protocol features 0x${(wanted & ~OPTIONAL_PROTOCOL_FEATURES).toString(16)} this server does not implement`, 'ERR_VHOST_USER_PROTOCOL_FEATURES');
    this.protocolFeaturesOffered = (opts.protocolFeatures ?? BASE_PROTOCOL_FEATURES | wanted) & BACKEND_PROTOCOL_FEATURES;
    this.drainTimeoutMs = opts.drainTimeoutMs ?? 5000;
    this.dma = opts.dma ?? null;
    this.iotlbWanted = opts.iotlb ?? false;
    if (this.dma && this.iotlbWanted) throw new ConfigError('a back-end translates either through an IOMMU table (dma) or through the front-end\'s IOTLB messages (iotlb), not both', 'ERR_VHOST_USER_IOTLB');
    this.vrings = Array.from({ length: device.numQueues }, (_, i) => newVring(i));
  }

  /**
   * Behind an IOMMU, INDIRECT_DESC is not offered: Linux's virtio ring maps
   * each indirect table with its own dma_map (virtqueue_add_split →
   * vring_map_single) and unmaps it at completion, and in strict mode each
   * is a synchronous MAP or UNMAP request to the IOMMU — two round trips
   * more per request (a 4 KiB read: 6 instead of 8). The ring itself stays
   * mapped, so chained descriptors cost nothing extra.
   */
  get offeredFeatures(): bigint {
    const f = this.device.features | RING_FEATURES | VHOST_USER_F_PROTOCOL_FEATURES;
    return this.dma || this.iotlbWanted ? (f & ~VIRTIO_F_INDIRECT_DESC) | VIRTIO_F_ACCESS_PLATFORM : f;
  }

  /** The translation in force for this connection: none until ACCESS_PLATFORM is negotiated. */
  private activeDma(): DmaTranslator | null {
    if ((this.features & VIRTIO_F_ACCESS_PLATFORM) === 0n) return null;
    return this.dma ?? this.iotlb;
  }

  /** IOTLB counters of the current connection (tests, diagnostics), or null without an IOTLB. */
  get iotlbStats(): { entries: number; misses: number; updates: number; invalidations: number } | null {
    const t = this.iotlb;
    return t ? { entries: t.size, misses: t.misses, updates: t.updates, invalidations: t.invalidations } : null;
  }

  /**
   * Each queue's largest ring (the device model's maxQueueSize, at most
   * MAX_QUEUE_SIZE): what SET_VRING_NUM accepts, and what a front-end's
   * transport should offer the driver as that queue's QueueNumMax (virtio 1.2
   * §4.2.2; vhost-user has no message for it, so the orchestrator learns it
   * from the ready handshake).
   */
  queueMaxSizes(): number[] {
    return Array.from({ length: this.device.numQueues }, (_, i) => this.queueMaxSize(i));
  }

  private queueMaxSize(index: number): number {
    return Math.min(MAX_QUEUE_SIZE, this.device.maxQueueSize?.(index) ?? MAX_QUEUE_SIZE);
  }

  /** Bind the socket (replacing a stale one) and start accepting front-ends. */
  listen(): void {
    if (existsSync(this.socketPath)) unlinkSync(this.socketPath);
    this.listenFd = unixListen(this.socketPath);
    this.listenWatch = watchReadable(this.listenFd, () => this.onAcceptable());
    this.log.info({ socket: this.socketPath }, 'listening');
  }

  /** Stop serving: drop the connection, close and unlink the socket. */
  close(): void {
    this.listenWatch?.close();
    this.listenWatch = null;
    // Forget the listening fd before dropping the connection, so onClose does not re-arm a watch on it.
    const lfd = this.listenFd;
    this.listenFd = -1;
    this.conn?.close();
    if (lfd >= 0) closeFd(lfd);
    if (existsSync(this.socketPath)) unlinkSync(this.socketPath);
  }

  private onAcceptable(): void {
    if (this.conn !== null) return;
    const fd = unixAccept(this.listenFd);
    if (fd === null) return;
    this.connections++;
    this.log.info({ connection: this.connections }, 'front-end connected');
    // One front-end at a time: stop watching the listening socket until this one leaves.
    this.listenWatch?.close();
    this.listenWatch = null;
    const conn: VhostUserConnection = new VhostUserConnection(fd, {
      // Messages are handled one at a time, in order, each bound to the connection it came from:
      // a message still queued when its connection drops must never be answered on the next one.
      onMessage: (m) => {
        this.chain = this.chain.then(() => this.handle(conn, m));
      },
      onClose: (error) => this.onClose(error),
    });
    this.conn = conn;
  }

  private onClose(error?: Error): void {
    if (error) this.log.error({ err: error, code: (error as VmmError).code }, 'connection closed on error');
    else this.log.info('front-end disconnected');
    this.conn = null;
    this.resetState();
    this.chain = Promise.resolve();
    if (this.listenFd >= 0) {
      this.listenWatch = watchReadable(this.listenFd, () => this.onAcceptable());
      // A front-end may already be waiting in the backlog.
      this.onAcceptable();
    }
    this.onDisconnect?.(error);
  }

  private resetState(): void {
    for (const v of this.vrings) this.stopRing(v, true);
    this.vrings = Array.from({ length: this.device.numQueues }, (_, i) => newVring(i));
    if (this.activated) {
      // A device bug must not stop the server from accepting the next front-end.
      try {
        this.device.reset();
      } catch (e) {
        this.log.error({ err: e }, 'device reset failed');
      }
    }
    this.activated = false;
    this.features = 0n;
    this.protocolFeatures = 0n;
    this.featuresSet = false;
    this.mem.clear();
    this.regionRefs.clear();
    this.inflightBuf = null;
    this.status = 0;
    this.dropBackendChannel();
    this.iotlb?.clear();
    this.iotlb = null;
    for (const w of this.idleWaiters) w.resolve();
    this.idleWaiters = [];
  }

  /**
   * The device cannot go on without a driver reset (virtio 1.2 §2.1.2): the
   * status the front-end reads with GET_STATUS gets DEVICE_NEEDS_RESET, and
   * every ring's error eventfd is signalled (SET_VRING_ERR) so the
   * front-end hears of it without polling.
   */
  markNeedsReset(reason: string): void {
    if (this.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET) return;
    this.status |= VIRTIO_STATUS_DEVICE_NEEDS_RESET;
    this.log.error({ reason }, 'device needs a reset');
    for (const v of this.vrings) if (v.errFd >= 0) eventfdWrite(v.errFd);
  }

  /** Guest memory as the driver's addresses mean it: I/O virtual addresses through the IOMMU once VIRTIO_F_ACCESS_PLATFORM is negotiated. */
  private dmaView(): { mem: GuestMemory; dma: DmaTranslator | null } {
    const dma = this.activeDma();
    if (!dma) return { mem: this.mem, dma: null };
    return { mem: this.mem.withTranslator(dma, this.device.dmaScope === 'access'), dma };
  }

  private deviceContext(): DeviceContext {
    return {
      mem: this.dmaView().mem,
      features: this.features,
      log: this.log,
      needsReset: (reason) => this.markNeedsReset(reason),
      configChanged: () => this.sendConfigChange(),
    };
  }

  /** Tell the front-end the configuration space changed: CONFIG_CHANGE_MSG on the back-end channel (no reply asked). */
  private sendConfigChange(): void {
    // A front-end that did not take VHOST_USER_PROTOCOL_F_CONFIG keeps the configuration space itself (QEMU's
    // virtio-net: its MAC, status and MQ come from its own options, and QEMU 7.2 drops CONFIG for it with the warning
    // "vhost-user backend supports VHOST_USER_PROTOCOL_F_CONFIG but QEMU does not"). CONFIG_CHANGE_MSG is part of
    // that feature (vhost-user spec, "Back-end message types"): not sent to a front-end that did not take it.
    if ((this.protocolFeatures & pf(ProtocolFeature.CONFIG)) === 0n) {
      this.log.info('device configuration changed; the front-end keeps its own configuration space (CONFIG not negotiated), nothing sent');
      return;
    }
    if (!this.sendBackend(BackendReq.CONFIG_CHANGE_MSG, VERSION)) this.log.warn('device configuration changed, but the front-end opened no back-end channel (BACKEND_REQ) to hear it');
  }

  /** Send on the back-end channel; false when there is none (or it just closed). */
  private sendBackend(request: number, flags: number, payload?: Uint8Array): boolean {
    const ch = this.backendChannel;
    if (ch === null || ch.isClosed) return false;
    try {
      ch.send(request, flags, payload);
      return true;
    } catch (e) {
      // The front-end closed its end: it will reconnect (and read the config, send its IOTLB, again).
      this.log.warn({ err: e, request }, 'back-end channel closed; message not sent');
      this.dropBackendChannel();
      return false;
    }
  }

  /** VHOST_USER_BACKEND_IOTLB_MSG, type MISS: ask the front-end to translate `iova` (it answers with an IOTLB update). */
  private sendIotlbMiss(iova: number, perm: number): void {
    const ack = (this.protocolFeatures & pf(ProtocolFeature.REPLY_ACK)) !== 0n;
    const sent = this.sendBackend(BackendReq.IOTLB_MSG, VERSION | (ack ? FLAG_NEED_REPLY : 0), iotlbMsg.encode({ iova: BigInt(iova), size: 0n, uaddr: 0n, perm, type: IotlbType.MISS }));
    if (sent && ack) this.missesAwaitingReply.push(iova);
    if (!sent) this.log.warn({ iova: `0x${iova.toString(16)}` }, 'IOTLB miss, but the front-end opened no back-end channel (BACKEND_REQ) to ask it; waiting for its updates');
  }

  /** Replies on the back-end channel: the front-end's REPLY_ACK to our misses. */
  private onBackendReply(m: Message): void {
    for (const f of m.fds) closeFd(f);
    if (!(m.flags & FLAG_REPLY) || m.payload.length !== 8) {
      this.log.warn({ request: m.request, flags: m.flags, size: m.payload.length }, 'unexpected message on the back-end channel ignored');
      return;
    }
    const status = u64.decode(m.payload);
    // Replies come in the order of the requests that asked for one: only misses do.
    const iova = m.request === BackendReq.IOTLB_MSG ? this.missesAwaitingReply.shift() : undefined;
    if (status === 0n) return;
    this.log.warn({ request: m.request, status: Number(status), ...(iova !== undefined ? { iova: `0x${iova.toString(16)}` } : {}) }, 'the front-end refused a back-end channel request');
    if (iova !== undefined && this.iotlb) {
      // No translation will come: the request that missed fails now instead of waiting.
      this.iotlb.refuse(iova);
      this.iotlbChanged();
    }
  }

  /** IOVAs of the misses sent with NEED_REPLY, oldest first. */
  private missesAwaitingReply: number[] = [];

  private dropBackendChannel(): void {
    const ch = this.backendChannel;
    this.backendChannel = null;
    this.missesAwaitingReply = [];
    ch?.close();
  }

  /** New translations: rings waiting for theirs start, started rings retry the chains that missed. */
  private iotlbChanged(): void {
    for (const v of this.vrings) {
      if (v.awaitingIotlb) {
        try {
          this.startRing(v);
        } catch (e) {
          // The front-end refused the ring's translation: the rings cannot be used until the driver sets them up again.
          v.awaitingIotlb = false;
          this.markNeedsReset(`vring ${v.index} cannot start: ${(e as Error).message}`);
        }
      } else if (v.started) this.kick(v);
    }
  }

  queueIdle(h: QueueHandle): void {
    const [ready, rest] = [this.idleWaiters.filter((w) => w.handle === h), this.idleWaiters.filter((w) => w.handle !== h)];
    this.idleWaiters = rest;
    for (const w of ready) w.resolve();
  }

  private async handle(conn: VhostUserConnection, m: Message): Promise<void> {
    if (conn !== this.conn || conn.isClosed) {
      for (const f of m.fds) closeFd(f);
      return;
    }
    try {
      validateRequest(m);
    } catch (e) {
      for (const f of m.fds) closeFd(f);
      conn.close(e as Error);
      return;
    }
    const needAck = (m.flags & FLAG_NEED_REPLY) !== 0 && (this.protocolFeatures & pf(ProtocolFeature.REPLY_ACK)) !== 0n && !hasReply(m.request);
    try {
      this.log.debug({ req: reqName(m.request), size: m.payload.length, fds: m.fds.length }, 'request');
      const reply = await this.dispatch(m);
      this.onRequest?.(reqName(m.request), true);
      if (conn.isClosed) return;
      if (reply !== undefined) {
        try {
          conn.send(m.request, VERSION | FLAG_REPLY, reply.payload, reply.fds);
        } finally {
          if (reply.closeFds) for (const f of reply.fds ?? []) closeFd(f);
        }
      } else if (needAck) conn.send(m.request, VERSION | FLAG_REPLY, u64.encode(0n));
    } catch (e) {
      const err = e as VmmError;
      this.onRequest?.(reqName(m.request), false);
      if (needAck && !(e instanceof VhostUserProtocolError) && !conn.isClosed) {
        this.log.warn({ err, req: reqName(m.request) }, 'request failed; reporting it with REPLY_ACK');
        conn.send(m.request, VERSION | FLAG_REPLY, u64.encode(1n));
        return;
      }
      conn.close(err);
    }
  }

  private vring(indexField: number | bigint): Vring {
    const i = Number(indexField);
    const v = this.vrings[i];
    if (v === undefined) throw new VhostUserProtocolError(`vring index ${i} out of range (device has ${this.vrings.length})`, 'ERR_VHOST_USER_VRING_INDEX');
    return v;
  }

  private async dispatch(m: Message): Promise<{ payload: Uint8Array; fds?: number[]; closeFds?: boolean } | undefined> {
    const p = m.payload;
    switch (m.request) {
      case Req.GET_FEATURES:
        return { payload: u64.encode(this.offeredFeatures) };
      case Req.SET_FEATURES: {
        const f = u64.decode(p);
        const extra = f & ~this.offeredFeatures;
        if (extra !== 0n) throw new VhostUserProtocolError(`SET_FEATURES acks features 0x${extra.toString(16)} that were not offered`, 'ERR_VHOST_USER_FEATURES');
        this.features = f;
        this.featuresSet = true;
        this.iotlb?.clear();
        this.iotlb = this.iotlbWanted && (f & VIRTIO_F_ACCESS_PLATFORM) !== 0n ? new DeviceIotlb(this.mem, (iova, perm) => this.sendIotlbMiss(iova, perm)) : null;
        // Without VHOST_USER_F_PROTOCOL_FEATURES rings start enabled (spec "Ring states").
        if ((f & VHOST_USER_F_PROTOCOL_FEATURES) === 0n) for (const v of this.vrings) v.enabled = true;
        return undefined;
      }
      case Req.GET_PROTOCOL_FEATURES:
        return { payload: u64.encode(this.protocolFeaturesOffered) };
      case Req.SET_PROTOCOL_FEATURES: {
        const f = u64.decode(p);
        const extra = f & ~this.protocolFeaturesOffered;
        if (extra !== 0n) throw new VhostUserProtocolError(`SET_PROTOCOL_FEATURES acks 0x${extra.toString(16)} that were not offered`, 'ERR_VHOST_USER_FEATURES');
        this.protocolFeatures = f;
        return undefined;
      }
      case Req.SET_OWNER:
        return undefined;
      case Req.RESET_OWNER:
      case Req.RESET_DEVICE: {
        for (const v of this.vrings) this.stopRing(v, true);
        this.device.deviceReset?.();
        if (this.activated) this.device.reset();
        this.activated = false;
        this.features = 0n;
        this.featuresSet = false;
        this.status = 0;
        this.vrings = Array.from({ length: this.device.numQueues }, (_, i) => newVring(i));
        return undefined;
      }
      case Req.GET_QUEUE_NUM:
        return { payload: u64.encode(BigInt(this.device.numQueues)) };
      case Req.GET_MAX_MEM_SLOTS:
        return { payload: u64.encode(BigInt(MAX_MEM_SLOTS)) };
      case Req.SET_MEM_TABLE: {
        const regions = memTable.decode(p);
        const mem = new GuestMemory();
        try {
          regions.forEach((r, i) => mem.addRegion(GuestMemory.mapVhostUserRegion({ ...r, fd: m.fds[i]! })));
        } finally {
          // mapVhostUserRegion closes the fds it used; close any left if it threw part-way.
          for (let i = mem.regionList.length + 1; i < m.fds.length; i++) closeFd(m.fds[i]!);
        }
        // Replace the regions inside the same GuestMemory object, which devices and started rings hold.
        // Old mappings are not unmapped: a device may still be finishing I/O into them, and started
        // rings keep views of them (the same memfd pages when the front-end re-sends its table).
        this.mem.replaceRegions(mem.regionList);
        this.regionRefs.clear();
        return undefined;
      }
      case Req.ADD_MEM_REG: {
        const r = singleRegion.decode(p);
        // QEMU (7.2) with several queue pairs drives one vhost device per pair over the same connection, and each
        // adds the guest's memory: a region exactly like one already mapped is the same memory, mapped once and
        // counted, so that it stays mapped until each of them removed it (REM_MEM_REG).
        const key = regionKey(r.guestPhysAddr, r.memorySize, r.userAddr);
        if (this.mem.regionList.some((x) => regionKey(BigInt(x.gpa), BigInt(x.size), x.userAddr) === key)) {
          closeFd(m.fds[0]!);
          this.regionRefs.set(key, (this.regionRefs.get(key) ?? 1) + 1);
          this.log.debug({ gpa: `0x${r.guestPhysAddr.toString(16)}`, size: `0x${r.memorySize.toString(16)}` }, 'ADD_MEM_REG of a region already mapped');
          return undefined;
        }
        if (this.mem.regionList.length >= MAX_MEM_SLOTS) {
          closeFd(m.fds[0]!);
          throw new VhostUserProtocolError(`ADD_MEM_REG beyond ${MAX_MEM_SLOTS} slots`, 'ERR_VHOST_USER_MEM_SLOTS');
        }
        this.mem.addRegion(GuestMemory.mapVhostUserRegion({ ...r, fd: m.fds[0]! }));
        return undefined;
      }
      case Req.REM_MEM_REG: {
        for (const f of m.fds) closeFd(f);
        const r = singleRegion.decode(p);
        const gpa = Number(r.guestPhysAddr);
        const found = this.mem.regionList.find((x) => x.gpa === gpa && BigInt(x.size) === r.memorySize && x.userAddr === r.userAddr);
        if (!found) throw new VmmError(`REM_MEM_REG: no region at gpa 0x${r.guestPhysAddr.toString(16)} size 0x${r.memorySize.toString(16)}`, 'protocol', 'ERR_VHOST_USER_NO_REGION');
        const key = regionKey(r.guestPhysAddr, r.memorySize, r.userAddr);
        const refs = this.regionRefs.get(key) ?? 1;
        if (refs > 1) {
          this.regionRefs.set(key, refs - 1);
          return undefined;
        }
        this.regionRefs.delete(key);
        this.mem.removeRegion(found.gpa, found.size);
        return undefined;
      }
      case Req.SET_VRING_NUM: {
        const s = vringState.decode(p);
        const v = this.vring(s.index);
        const max = this.queueMaxSize(v.index);
        if (s.num === 0 || s.num > max || (s.num & (s.num - 1)) !== 0) throw new VhostUserProtocolError(`SET_VRING_NUM ${s.num} for vring ${s.index} is not a power of 2 ≤ ${max}`, 'ERR_VHOST_USER_VRING_NUM');
        v.num = s.num;
        return undefined;
      }
      case Req.SET_VRING_ADDR: {
        const a = vringAddr.decode(p);
        this.vring(a.index).addr = a;
        return undefined;
      }
      case Req.SET_VRING_BASE: {
        const s = vringState.decode(p);
        this.vring(s.index).base = s.num & 0xffff;
        return undefined;
      }
      case Req.GET_VRING_BASE: {
        const s = vringState.decode(p);
        const v = this.vring(s.index);
        // Stop the ring (spec "Starting and stopping rings"), waiting for requests still in the device so the index returned covers them.
        // Chains the device holds without working on them (receive buffers) come back at once instead.
        const h = v.handle;
        if (h && !h.dead) h.giveBack(this.stopQueue(v));
        await this.drain(v);
        const base = h ? h.q.lastAvail : v.base;
        this.stopRing(v, false);
        v.base = base;
        return { payload: vringState.encode({ index: v.index, num: base }) };
      }
      case Req.SET_VRING_KICK:
      case Req.SET_VRING_CALL:
      case Req.SET_VRING_ERR: {
        const val = u64.decode(p);
        const v = this.vring(val & VRING_IDX_MASK);
        const fd = (val & VRING_NOFD_MASK) !== 0n ? -1 : m.fds[0]!;
        if (m.request === Req.SET_VRING_CALL) {
          if (v.callFd >= 0) closeFd(v.callFd);
          v.callFd = fd;
          // QEMU sends the call fd after the kick fd: a completion may have been signalled on the old one, or on none.
          this.announce(v);
        } else if (m.request === Req.SET_VRING_ERR) {
          if (v.errFd >= 0) closeFd(v.errFd);
          v.errFd = fd;
        } else {
          // A new kick fd for a running ring restarts it. Requests of the old ring still running would write their data
          // and status into buffers the driver may have reused by then: let them finish first, as GET_VRING_BASE does
          // (chains the device merely holds, receive buffers, come back at once).
          if (v.handle && !v.handle.dead) v.handle.giveBack(this.stopQueue(v));
          await this.drain(v);
          this.stopRing(v, false);
          v.kickFd = fd;
          // NOFD asks the back-end to poll the ring instead; we only serve kicks (the ring stays stopped).
          if (fd < 0) this.log.warn({ vring: v.index }, 'SET_VRING_KICK without an fd (polling mode) is not supported; ring stays stopped');
          this.startRing(v);
        }
        return undefined;
      }
      case Req.SET_VRING_ENABLE: {
        // vhost-user "Ring states": a disabled ring is not processed. The device sees it as stopped (stopQueue,
        // its held buffers given back, requests in flight drained) and started again (startQueue) when enabled, at
        // the same position: QEMU disables the pairs a guest stops using (ethtool -L) this way.
        const s = vringState.decode(p);
        const v = this.vring(s.index);
        const on = s.num !== 0;
        const was = v.enabled;
        v.enabled = on;
        if (on && !v.started) this.startRing(v);
        else if (on && v.started) this.kick(v);
        else if (!on && was && v.started) await this.pauseRing(v);
        return undefined;
      }
      case Req.GET_CONFIG: {
        const c = configPayload.decode(p);
        const cfg = this.device.readConfig();
        if (c.offset + c.size > cfg.length) throw new VmmError(`GET_CONFIG ${c.offset}+${c.size} beyond the ${cfg.length}-byte config space`, 'protocol', 'ERR_VHOST_USER_CONFIG_RANGE');
        return { payload: configPayload.encode({ offset: c.offset, flags: c.flags, data: cfg.subarray(c.offset, c.offset + c.size) }) };
      }
      case Req.SET_CONFIG: {
        const c = configPayload.decode(p);
        if (!this.device.writeConfig) throw new VmmError('SET_CONFIG: this device has no writable configuration', 'protocol', 'ERR_VHOST_USER_CONFIG_RO');
        this.device.writeConfig(c.offset, c.data);
        return undefined;
      }
      case Req.GET_INFLIGHT_FD: {
        if (!(this.protocolFeaturesOffered & pf(ProtocolFeature.INFLIGHT_SHMFD))) throw new VhostUserProtocolError('GET_INFLIGHT_FD: this device does not track inflight requests (INFLIGHT_SHMFD not offered)', 'ERR_VHOST_USER_INFLIGHT');
        const i = inflightPayload.decode(p);
        if (i.numQueues === 0 || i.numQueues > this.device.numQueues || i.queueSize === 0 || i.queueSize > MAX_QUEUE_SIZE) {
          throw new VmmError(`GET_INFLIGHT_FD for ${i.numQueues} queues of ${i.queueSize}`, 'protocol', 'ERR_VHOST_USER_INFLIGHT');
        }
        const size = inflightRegionSize(i.numQueues, i.queueSize);
        // A fresh memfd reads as zeros: every queue's version is 0 until its ring starts. The front-end keeps it; we close ours once sent.
        const fd = memfdCreate('vhost-user-inflight', size);
        return { payload: inflightPayload.encode({ mmapSize: BigInt(size), mmapOffset: 0n, numQueues: i.numQueues, queueSize: i.queueSize }), fds: [fd], closeFds: true };
      }
      case Req.SET_INFLIGHT_FD: {
        const i = inflightPayload.decode(p);
        const fd = m.fds[0]!;
        try {
          const need = inflightRegionSize(i.numQueues, i.queueSize);
          if (i.queueSize === 0 || i.numQueues === 0 || Number(i.mmapSize) < need || Number(i.mmapOffset) + Number(i.mmapSize) > fdSize(fd)) {
            throw new VmmError(`SET_INFLIGHT_FD: ${i.numQueues} queues of ${i.queueSize} need ${need} bytes, region is ${i.mmapSize} at ${i.mmapOffset}`, 'protocol', 'ERR_VHOST_USER_INFLIGHT');
          }
          this.inflightBuf = mmapShared(fd, Number(i.mmapOffset) + Number(i.mmapSize));
          this.inflightOffset = Number(i.mmapOffset);
          this.inflightQueueSize = i.queueSize;
        } finally {
          closeFd(fd);
        }
        return undefined;
      }
      case Req.SET_BACKEND_REQ_FD: {
        this.dropBackendChannel();
        const ch: VhostUserConnection = new VhostUserConnection(m.fds[0]!, {
          onMessage: (r) => this.onBackendReply(r),
          onClose: (error) => {
            if (error) this.log.warn({ err: error }, 'back-end channel closed on error');
            if (this.backendChannel === ch) this.backendChannel = null;
          },
        });
        this.backendChannel = ch;
        return undefined;
      }
      case Req.IOTLB_MSG: {
        // Always answered with a u64 status (vhost-user: "The back-end has to acknowledge the request").
        const msg = iotlbMsg.decode(p);
        const iotlb = this.iotlb;
        const hex = (v: bigint): string => `0x${v.toString(16)}`;
        if (iotlb === null) {
          this.log.warn({ type: msg.type }, `IOTLB message without a device IOTLB (${this.iotlbWanted ? 'VIRTIO_F_ACCESS_PLATFORM not negotiated' : 'this back-end was not started to serve a front-end with a vIOMMU'}); refused`);
          return { payload: u64.encode(1n) };
        }
        if (msg.type === IotlbType.UPDATE) {
          try {
            iotlb.update(msg);
          } catch (e) {
            this.log.warn({ err: e, iova: hex(msg.iova), size: hex(msg.size), perm: msg.perm }, 'IOTLB update refused');
            return { payload: u64.encode(1n) };
          }
          this.iotlbChanged();
          return { payload: u64.encode(0n) };
        }
        if (msg.type === IotlbType.INVALIDATE) {
          // Strict: the ack goes only once no request that could hold the old translation is running.
          if (!(await iotlb.invalidate(msg.iova, msg.size, this.drainTimeoutMs))) {
            this.log.warn({ iova: hex(msg.iova), size: hex(msg.size), timeoutMs: this.drainTimeoutMs }, 'requests begun before an IOTLB invalidation still run after the drain timeout; acknowledging it anyway');
          }
          return { payload: u64.encode(0n) };
        }
        this.log.warn({ type: msg.type }, `IOTLB message type ${msg.type} is not UPDATE (${IotlbType.UPDATE}) or INVALIDATE (${IotlbType.INVALIDATE}); refused`);
        return { payload: u64.encode(1n) };
      }
      case Req.SET_STATUS: {
        // DEVICE_NEEDS_RESET is the device's to set and survives the driver's status writes until a reset (status 0).
        const value = Number(u64.decode(p) & 0xffn);
        this.status = value === 0 ? 0 : value | (this.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET);
        return undefined;
      }
      case Req.GET_STATUS:
        return { payload: u64.encode(BigInt(this.status)) };
      default:
        throw new VhostUserProtocolError(`unsupported request ${reqName(m.request)}`, 'ERR_VHOST_USER_UNKNOWN_REQUEST');
    }
  }

  private inflightOffset = 0;

  /**
   * Wait until the ring's device holds none of its requests. Bounded: a
   * device that never completes (a hung disk) must not hang the front-end's
   * stop forever; its requests stay in the inflight region.
   */
  private async drain(v: Vring): Promise<void> {
    const h = v.handle;
    if (!h || h.inFlight === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      new Promise<boolean>((resolve) => this.idleWaiters.push({ handle: h, resolve: () => resolve(true) })),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), this.drainTimeoutMs))),
    ]);
    clearTimeout(timer);
    if (!drained) this.log.warn({ vring: v.index, inFlight: h.inFlight }, 'requests still in the device after the drain timeout; stopping the ring anyway');
  }

  /**
   * Stop a running ring that the front-end disabled, keeping its kick fd and
   * its position (the next start resumes at the last avail index taken).
   */
  private async pauseRing(v: Vring): Promise<void> {
    const h = v.handle;
    if (h && !h.dead) h.giveBack(this.stopQueue(v));
    await this.drain(v);
    const base = h ? h.q.lastAvail : v.base;
    this.stopRing(v, false, true);
    v.base = base;
    this.log.debug({ vring: v.index, base }, 'ring disabled');
  }

  /**
   * Start a ring once it has a size, addresses, memory and a kick fd, and is
   * enabled ("Starting and stopping rings", "Ring states": with
   * VHOST_USER_F_PROTOCOL_FEATURES a ring starts disabled until
   * SET_VRING_ENABLE 1).
   */
  private startRing(v: Vring): void {
    if (v.kickFd < 0 || v.addr === null || v.num === 0 || this.mem.regionList.length === 0) {
      if (v.kickFd >= 0) this.log.warn({ vring: v.index }, 'kick fd set before the ring was configured; waiting');
      return;
    }
    if (!v.enabled) return;
    const eventIdx = (this.features & VIRTIO_F_EVENT_IDX) !== 0n;
    // Behind the IOMMU the rings and buffers are at I/O virtual addresses.
    const { mem, dma } = this.dmaView();
    const at = (a: bigint, len: number): GuestAddress => (dma ? guestAddress(a) : this.mem.userToGuest(a, len));
    const desc = at(v.addr.desc, 16 * v.num);
    const avail = at(v.addr.avail, 6 + 2 * v.num);
    const used = at(v.addr.used, 6 + 8 * v.num);
    let q: SplitQueue;
    try {
      q = new SplitQueue(mem, { size: v.num, desc, avail, used, eventIdx }, v.base);
    } catch (e) {
      if (!isIotlbMiss(e)) throw e;
      // The ring's IOVAs are not in the IOTLB yet: the miss went to the front-end, the ring starts with its update.
      v.awaitingIotlb = true;
      this.log.debug({ vring: v.index }, 'ring addresses missed in the IOTLB; waiting for the update');
      return;
    }
    v.awaitingIotlb = false;
    let inflight: InflightQueue | null = null;
    let resubmit: number[] = [];
    const stride = inflightQueueStride(this.inflightQueueSize);
    if (this.inflightBuf && this.inflightOffset + (v.index + 1) * stride <= this.inflightBuf.byteLength) {
      if (this.inflightQueueSize !== v.num) throw new VmmError(`inflight region is for queues of ${this.inflightQueueSize}, vring ${v.index} has ${v.num}`, 'protocol', 'ERR_VHOST_USER_INFLIGHT');
      inflight = new InflightQueue(this.inflightBuf, this.inflightOffset + v.index * inflightQueueStride(v.num), v.num);
      let rec = inflight.recover(q.usedIdx);
      // The region must describe this ring: at most `num` requests in flight and a resume point no further than avail.idx.
      // A region kept across a driver's ring reset (new rings at index 0) fails this; its heads belong to rings that are gone.
      if (rec !== null && (rec.resubmit.length > v.num || ((q.availIdx() - rec.lastAvail) & 0xffff) > v.num)) {
        this.log.warn({ vring: v.index, resubmit: rec.resubmit.length, lastAvail: rec.lastAvail, availIdx: q.availIdx(), usedIdx: q.usedIdx, base: v.base }, 'inflight region does not match the ring; starting it fresh at the base');
        inflight.discard();
        rec = null;
      }
      if (rec !== null) {
        resubmit = rec.resubmit;
        if (resubmit.length > 0 || rec.lastAvail !== v.base) {
          this.log.info({ vring: v.index, resubmit: resubmit.length, lastAvail: rec.lastAvail, base: v.base }, 'resuming from the inflight region');
          q = new SplitQueue(mem, { size: v.num, desc, avail, used, eventIdx }, rec.lastAvail);
        }
      }
    }
    if (!this.activated) {
      this.device.activate(this.deviceContext());
      this.activated = true;
    }
    v.handle = new QueueHandle({
      index: v.index,
      mem,
      queue: q,
      // Per-access devices hold no translation across a chain's life; each access is its own request (DeviceBackend.dmaScope).
      ...(dma && this.device.dmaScope !== 'access' ? { dma } : {}),
      inflight,
      resubmit,
      log: this.log,
      notify: () => {
        if (v.callFd >= 0) eventfdWrite(v.callFd);
      },
      onIdle: (h) => this.queueIdle(h),
      onBroken: () => this.markNeedsReset(`vring ${v.index}: the avail ring is inconsistent`),
    });
    v.started = true;
    this.device.startQueue?.(v.handle);
    const kickFd = v.kickFd;
    v.kickWatch = watchReadable(kickFd, () => {
      eventfdRead(kickFd);
      this.kick(v);
    });
    // A restarted ring may hold work already (resubmissions, or kicks sent while we were away): treat the start as a kick.
    queueMicrotask(() => {
      this.kick(v);
      // A predecessor killed between publishing used entries and writing the call eventfd left the driver waiting
      // for an interrupt nobody will send (the stall of `pnpm bench recover`): signal once on every ring start.
      // A spurious notification is harmless, the driver just finds nothing new (virtio 1.2 §2.7.7).
      this.announce(v);
    });
  }

  /** One unconditional used-buffer notification for a (re)started ring. */
  private announce(v: Vring): void {
    if (!v.started || v.handle === null || v.callFd < 0) return;
    v.handle.notifications++;
    eventfdWrite(v.callFd);
  }

  private kick(v: Vring): void {
    const h = v.handle;
    if (!v.started || !v.enabled || h === null || h.dead) return;
    try {
      this.device.processQueue(h);
    } catch (e) {
      this.log.error({ err: e, vring: v.index }, 'device failed processing a queue');
      if (v.errFd >= 0) eventfdWrite(v.errFd);
    }
    h.flush();
  }

  /** Ask the device for its queue back; a device bug here must not keep the ring running. */
  private stopQueue(v: Vring): number[] {
    try {
      return this.device.stopQueue?.(v.index) ?? [];
    } catch (e) {
      this.log.error({ err: e, vring: v.index }, 'device failed stopping a queue');
      return [];
    }
  }

  private stopRing(v: Vring, closeCall: boolean, keepKick = false): void {
    v.kickWatch?.close();
    v.kickWatch = null;
    if (v.handle && !v.handle.dead) {
      v.handle.giveBack(this.stopQueue(v));
      v.handle.flush();
      v.handle.dead = true;
    }
    v.handle = null;
    v.started = false;
    if (v.kickFd >= 0 && !keepKick) {
      closeFd(v.kickFd);
      v.kickFd = -1;
    }
    if (closeCall) {
      if (v.callFd >= 0) closeFd(v.callFd);
      if (v.errFd >= 0) closeFd(v.errFd);
      v.callFd = -1;
      v.errFd = -1;
    }
  }

  /** Negotiated state, for tests and diagnostics. */
  get state(): { features: bigint; protocolFeatures: bigint; featuresSet: boolean; regions: number; status: number } {
    return { features: this.features, protocolFeatures: this.protocolFeatures, featuresSet: this.featuresSet, regions: this.mem.regionList.length, status: this.status };
  }
}
