// vhost-user front-end (the side QEMU plays): connects to a back-end's
// socket, negotiates, sends the memory table with the RAM memfd, sets up
// vrings with eventfds, reads config, manages the inflight region, and can
// reconnect to a restarted back-end and replay everything it set.

import type { Logger } from 'pino';
import { VmmError } from '../errors.ts';
import { closeFd, dupFd, unixConnect, unixSocketPair } from '../ffi.ts';
import { createLogger } from '../logger.ts';
import type { GuestMemory } from '../memory.ts';
import {
  configPayload, hasReply, inflightPayload, iotlbMsg, memTable, singleRegion, u64, validateBackendRequest, validateReply, vringAddr, vringState, VhostUserProtocolError,
  type InflightPayload, type MemRegion, type Message, type VringAddr,
} from './codec.ts';
import { IotlbType, type IotlbMsg } from './iotlb.ts';
import { VhostUserConnection } from './connection.ts';
import {
  BackendReq, FLAG_NEED_REPLY, FLAG_REPLY, MAX_MEM_TABLE_REGIONS, pf, ProtocolFeature, Req, reqName, VERSION, VHOST_USER_F_PROTOCOL_FEATURES, VRING_NOFD_MASK,
} from './protocol.ts';

export interface FrontendRegion extends MemRegion {
  /** The memfd (or other fd) backing the region; the front-end keeps its own dup. */
  fd: number;
}

export interface FrontendOptions {
  log?: Logger;
  /** Reply timeout (default 10 s): a back-end that stops answering is treated as gone. */
  timeoutMs?: number;
}

interface Pending {
  request: number;
  ack: boolean;
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

interface VringRecord {
  num?: number;
  addr?: VringAddr;
  base?: number;
  kickFd?: number;
  callFd?: number;
  errFd?: number;
  enabled?: boolean;
}

export class VhostUserClosedError extends VmmError {
  constructor(message: string) {
    super(message, 'transient', 'ERR_VHOST_USER_CLOSED');
  }
}

export class VhostUserFrontend {
  readonly log: Logger;
  socketPath: string;
  private conn: VhostUserConnection | null = null;
  private pending: Pending[] = [];
  private readonly timeoutMs: number;
  private closeError: Error | undefined;
  /** Negotiated with the current back-end. */
  features = 0n;
  protocolFeatures = 0n;
  /** Recorded for replay on reconnect (fds are our own dups). */
  private regions: FrontendRegion[] = [];
  private inflight: { fd: number; info: InflightPayload } | null = null;
  private vrings = new Map<number, VringRecord>();
  private ownerSet = false;
  onClose: ((error?: Error) => void) | undefined;
  /** The back-end channel (BACKEND_REQ), while open; reopened by reconnect() once asked for. */
  private backendChannel: VhostUserConnection | null = null;
  private backendChannelWanted = false;
  /** The back-end told us its configuration space changed (CONFIG_CHANGE_MSG on the back-end channel). */
  onConfigChange: (() => void) | undefined;
  /**
   * The back-end missed `iova` in its IOTLB (BACKEND_IOTLB_MSG, type MISS;
   * perm RO/WO): send it an update with iotlbUpdate() and resolve true, or
   * resolve false when this front-end's IOMMU has no translation there (the
   * back-end gets a non-zero REPLY_ACK). Without a handler misses are refused.
   */
  onIotlbMiss: ((iova: bigint, perm: number) => Promise<boolean>) | undefined;

  private constructor(socketPath: string, opts: FrontendOptions) {
    this.socketPath = socketPath;
    this.log = opts.log ?? createLogger('vhost-user-frontend', socketPath);
    this.timeoutMs = opts.timeoutMs ?? 10_000;
  }

  static connect(socketPath: string, opts: FrontendOptions = {}): VhostUserFrontend {
    const f = new VhostUserFrontend(socketPath, opts);
    f.open();
    return f;
  }

  get connected(): boolean {
    return this.conn !== null && !this.conn.isClosed;
  }

  private open(): void {
    const fd = unixConnect(this.socketPath);
    this.closeError = undefined;
    this.conn = new VhostUserConnection(fd, {
      onMessage: (m) => this.onMessage(m),
      onClose: (error) => {
        this.closeError = error;
        const e = new VhostUserClosedError(`vhost-user back-end at ${this.socketPath} closed the connection${error ? `: ${error.message}` : ''}`);
        for (const p of this.pending) {
          clearTimeout(p.timer);
          p.reject(e);
        }
        this.pending = [];
        this.onClose?.(error);
      },
    });
  }

  private onMessage(m: Message): void {
    const p = this.pending.shift();
    if (p === undefined) {
      for (const f of m.fds) closeFd(f);
      this.conn?.close(new VhostUserProtocolError(`unexpected ${reqName(m.request)} message from the back-end`, 'ERR_VHOST_USER_UNEXPECTED'));
      return;
    }
    clearTimeout(p.timer);
    try {
      validateReply(m, p.request, p.ack);
    } catch (e) {
      for (const f of m.fds) closeFd(f);
      p.reject(e as Error);
      this.conn?.close(e as Error);
      return;
    }
    p.resolve(m);
  }

  /**
   * Send one request. Resolves with the reply for requests that have one, or
   * after the REPLY_ACK when it was negotiated (a non-zero ack rejects), or
   * right away otherwise.
   */
  async request(request: number, payload?: Uint8Array, fds: readonly number[] = [], opts: { ack?: boolean } = {}): Promise<Message | undefined> {
    const conn = this.conn;
    if (conn === null || conn.isClosed) throw new VhostUserClosedError(`not connected to ${this.socketPath}${this.closeError ? ` (${this.closeError.message})` : ''}`);
    const replies = hasReply(request);
    const ack = !replies && (opts.ack ?? true) && (this.protocolFeatures & pf(ProtocolFeature.REPLY_ACK)) !== 0n;
    const flags = VERSION | (ack ? FLAG_NEED_REPLY : 0);
    if (!replies && !ack) {
      this.sendOrClose(conn, request, flags, payload, fds);
      return undefined;
    }
    // Send first: no reply can arrive before this function yields, and a failed send leaves nothing pending.
    this.sendOrClose(conn, request, flags, payload, fds);
    const reply = new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        const e = new VmmError(`no reply to ${reqName(request)} from ${this.socketPath} within ${this.timeoutMs} ms`, 'transient', 'ERR_VHOST_USER_TIMEOUT');
        this.pending = this.pending.filter((p) => p.timer !== timer);
        reject(e);
        this.conn?.close(e);
      }, this.timeoutMs);
      this.pending.push({ request, ack, resolve, reject, timer });
    });
    const m = await reply;
    if (ack) {
      const status = u64.decode(m.payload);
      if (status !== 0n) throw new VmmError(`back-end refused ${reqName(request)} (status ${status})`, 'transient', 'ERR_VHOST_USER_NACK');
      return undefined;
    }
    return m;
  }

  private sendOrClose(conn: VhostUserConnection, request: number, flags: number, payload: Uint8Array | undefined, fds: readonly number[]): void {
    try {
      conn.send(request, flags, payload, fds);
    } catch (e) {
      // EPIPE/ECONNRESET: the back-end went away; report it like any other close.
      conn.close(e as Error);
      throw new VhostUserClosedError(`sending ${reqName(request)} to ${this.socketPath} failed: ${(e as Error).message}`);
    }
  }

  private async u64Reply(request: number): Promise<bigint> {
    return u64.decode((await this.request(request))!.payload);
  }

  getFeatures(): Promise<bigint> {
    return this.u64Reply(Req.GET_FEATURES);
  }
  async setFeatures(f: bigint): Promise<void> {
    await this.request(Req.SET_FEATURES, u64.encode(f));
    this.features = f;
  }
  getProtocolFeatures(): Promise<bigint> {
    return this.u64Reply(Req.GET_PROTOCOL_FEATURES);
  }
  async setProtocolFeatures(f: bigint): Promise<void> {
    await this.request(Req.SET_PROTOCOL_FEATURES, u64.encode(f));
    this.protocolFeatures = f;
  }
  async setOwner(): Promise<void> {
    await this.request(Req.SET_OWNER);
    this.ownerSet = true;
  }
  async resetOwner(): Promise<void> {
    await this.request(Req.RESET_OWNER);
  }
  async resetDevice(): Promise<void> {
    await this.request(Req.RESET_DEVICE);
  }
  async getQueueNum(): Promise<number> {
    return Number(await this.u64Reply(Req.GET_QUEUE_NUM));
  }
  async getMaxMemSlots(): Promise<number> {
    return Number(await this.u64Reply(Req.GET_MAX_MEM_SLOTS));
  }
  async setStatus(s: number): Promise<void> {
    await this.request(Req.SET_STATUS, u64.encode(BigInt(s)));
  }
  async getStatus(): Promise<number> {
    return Number(await this.u64Reply(Req.GET_STATUS));
  }

  /**
   * Negotiate: take the back-end's features ∩ `wanted` (plus PROTOCOL_FEATURES
   * when offered), protocol features ∩ `wantedProtocol`, then SET_OWNER.
   */
  async negotiate(wanted: bigint, wantedProtocol: bigint = 0n): Promise<{ features: bigint; protocolFeatures: bigint }> {
    const offered = await this.getFeatures();
    let protocol = 0n;
    if (offered & VHOST_USER_F_PROTOCOL_FEATURES) {
      protocol = (await this.getProtocolFeatures()) & wantedProtocol;
      await this.setProtocolFeatures(protocol);
    }
    await this.setOwner();
    const features = offered & (wanted | VHOST_USER_F_PROTOCOL_FEATURES);
    await this.setFeatures(features);
    return { features, protocolFeatures: protocol };
  }

  private hasProtocol(bit: number): boolean {
    return (this.protocolFeatures & pf(bit)) !== 0n;
  }

  /**
   * Open the back-end channel (SET_BACKEND_REQ_FD, needs BACKEND_REQ): a
   * socket pair whose other end the back-end keeps to send us requests.
   * We serve CONFIG_CHANGE_MSG (→ onConfigChange); anything else is
   * answered with a failure when it asks for a reply, and logged.
   */
  async openBackendChannel(): Promise<void> {
    if (!this.hasProtocol(ProtocolFeature.BACKEND_REQ)) throw new VmmError('the back-end channel needs the BACKEND_REQ protocol feature', 'config', 'ERR_VHOST_USER_FEATURES');
    this.backendChannelWanted = true;
    this.backendChannel?.close();
    const [mine, theirs] = unixSocketPair();
    const ch: VhostUserConnection = new VhostUserConnection(mine, {
      onMessage: (m) => this.onBackendMessage(ch, m),
      onClose: (error) => {
        if (error) this.log.warn({ err: error }, 'back-end channel closed on error');
      },
    });
    this.backendChannel = ch;
    try {
      await this.request(Req.SET_BACKEND_REQ_FD, undefined, [theirs]);
    } finally {
      closeFd(theirs);
    }
  }

  private onBackendMessage(ch: VhostUserConnection, m: Message): void {
    for (const f of m.fds) closeFd(f);
    const reply = (ok: boolean): void => {
      if (m.flags & FLAG_NEED_REPLY && !ch.isClosed) ch.send(m.request, VERSION | FLAG_REPLY, u64.encode(ok ? 0n : 1n));
    };
    try {
      validateBackendRequest(m);
    } catch (e) {
      this.log.warn({ err: e, request: m.request, size: m.payload.length, flags: m.flags }, 'unsupported back-end channel message ignored');
      reply(false);
      return;
    }
    if (m.request === BackendReq.CONFIG_CHANGE_MSG) {
      reply(true);
      this.onConfigChange?.();
      return;
    }
    // BACKEND_IOTLB_MSG: a miss (the only type a back-end sends us that we act on; ACCESS_FAIL is logged).
    const msg = iotlbMsg.decode(m.payload);
    if (msg.type !== IotlbType.MISS || this.onIotlbMiss === undefined) {
      this.log.warn({ type: msg.type, iova: `0x${msg.iova.toString(16)}`, perm: msg.perm }, this.onIotlbMiss ? 'back-end IOTLB message other than a miss ignored' : 'IOTLB miss, but this front-end has no IOMMU to answer it');
      reply(false);
      return;
    }
    // The update goes out on the main channel before this reply, as QEMU does (vhost_device_iotlb_miss, then the ack).
    this.onIotlbMiss(msg.iova, msg.perm).then(
      (ok) => reply(ok),
      (e: unknown) => {
        this.log.warn({ err: e, iova: `0x${msg.iova.toString(16)}` }, 'answering an IOTLB miss failed');
        reply(false);
      },
    );
  }

  /** VHOST_USER_IOTLB_MSG: resolves once the back-end acknowledged it with status 0 (an INVALIDATE: once no request can use the old entry). */
  async iotlbMessage(m: IotlbMsg): Promise<void> {
    const r = await this.request(Req.IOTLB_MSG, iotlbMsg.encode(m));
    const status = u64.decode(r!.payload);
    if (status !== 0n) throw new VmmError(`back-end refused IOTLB ${m.type === IotlbType.UPDATE ? 'update' : m.type === IotlbType.INVALIDATE ? 'invalidation' : `message type ${m.type}`} of 0x${m.iova.toString(16)}+0x${m.size.toString(16)} (status ${status})`, 'transient', 'ERR_VHOST_USER_NACK');
  }

  /** SET_MEM_TABLE (≤ 8 regions), or ADD_MEM_REG per region when CONFIGURE_MEM_SLOTS was negotiated. Fds are dup'd and kept for replay. */
  async setMemTable(regions: FrontendRegion[]): Promise<void> {
    for (const r of this.regions) closeFd(r.fd);
    this.regions = regions.map((r) => ({ ...r, fd: dupFd(r.fd) }));
    await this.sendMemTable();
  }

  private async sendMemTable(): Promise<void> {
    if (this.hasProtocol(ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
      for (const r of this.regions) await this.request(Req.ADD_MEM_REG, singleRegion.encode(r), [r.fd]);
      return;
    }
    if (this.regions.length === 0 || this.regions.length > MAX_MEM_TABLE_REGIONS) throw new VmmError(`${this.regions.length} memory regions (1..${MAX_MEM_TABLE_REGIONS})`, 'config', 'ERR_VHOST_USER_REGIONS');
    await this.request(Req.SET_MEM_TABLE, memTable.encode(this.regions), this.regions.map((r) => r.fd));
  }

  async addMemReg(r: FrontendRegion): Promise<void> {
    const own = { ...r, fd: dupFd(r.fd) };
    this.regions.push(own);
    await this.request(Req.ADD_MEM_REG, singleRegion.encode(own), [own.fd]);
  }

  async remMemReg(r: MemRegion): Promise<void> {
    const i = this.regions.findIndex((x) => x.guestPhysAddr === r.guestPhysAddr && x.memorySize === r.memorySize);
    if (i >= 0) closeFd(this.regions.splice(i, 1)[0]!.fd);
    await this.request(Req.REM_MEM_REG, singleRegion.encode(r));
  }

  private rec(index: number): VringRecord {
    let r = this.vrings.get(index);
    if (!r) {
      r = {};
      this.vrings.set(index, r);
    }
    return r;
  }

  async setVringNum(index: number, num: number): Promise<void> {
    this.rec(index).num = num;
    await this.request(Req.SET_VRING_NUM, vringState.encode({ index, num }));
  }
  async setVringAddr(a: VringAddr): Promise<void> {
    this.rec(a.index).addr = a;
    await this.request(Req.SET_VRING_ADDR, vringAddr.encode(a));
  }
  async setVringBase(index: number, base: number): Promise<void> {
    this.rec(index).base = base;
    await this.request(Req.SET_VRING_BASE, vringState.encode({ index, num: base }));
  }
  /** Stops the ring in the back-end and returns the next avail index it would have processed. */
  async getVringBase(index: number): Promise<number> {
    const m = await this.request(Req.GET_VRING_BASE, vringState.encode({ index, num: 0 }));
    const base = vringState.decode(m!.payload).num;
    this.rec(index).base = base;
    return base;
  }
  private async setVringFd(request: number, index: number, fd: number | null): Promise<void> {
    const r = this.rec(index);
    const field = request === Req.SET_VRING_KICK ? 'kickFd' : request === Req.SET_VRING_CALL ? 'callFd' : 'errFd';
    const old = r[field];
    if (old !== undefined) closeFd(old);
    r[field] = fd === null ? undefined : dupFd(fd);
    const v = BigInt(index) | (fd === null ? VRING_NOFD_MASK : 0n);
    await this.request(request, u64.encode(v), fd === null ? [] : [r[field]!]);
  }
  setVringKick(index: number, fd: number | null): Promise<void> {
    return this.setVringFd(Req.SET_VRING_KICK, index, fd);
  }
  setVringCall(index: number, fd: number | null): Promise<void> {
    return this.setVringFd(Req.SET_VRING_CALL, index, fd);
  }
  setVringErr(index: number, fd: number | null): Promise<void> {
    return this.setVringFd(Req.SET_VRING_ERR, index, fd);
  }
  async setVringEnable(index: number, enable: boolean): Promise<void> {
    this.rec(index).enabled = enable;
    await this.request(Req.SET_VRING_ENABLE, vringState.encode({ index, num: enable ? 1 : 0 }));
  }

  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    const m = await this.request(Req.GET_CONFIG, configPayload.encode({ offset, data: new Uint8Array(size) }));
    return configPayload.decode(m!.payload).data.slice();
  }
  async setConfig(offset: number, data: Uint8Array): Promise<void> {
    await this.request(Req.SET_CONFIG, configPayload.encode({ offset, data }));
  }

  /** GET_INFLIGHT_FD then SET_INFLIGHT_FD: the back-end allocates, we keep the fd for later back-ends. */
  async setupInflight(numQueues: number, queueSize: number): Promise<void> {
    if (this.inflight === null) {
      const m = await this.request(Req.GET_INFLIGHT_FD, inflightPayload.encode({ mmapSize: 0n, mmapOffset: 0n, numQueues, queueSize }));
      this.inflight = { fd: m!.fds[0]!, info: inflightPayload.decode(m!.payload) };
    }
    await this.request(Req.SET_INFLIGHT_FD, inflightPayload.encode(this.inflight.info), [this.inflight.fd]);
  }

  /**
   * Take over another front-end's inflight region (it no longer owns the fd):
   * a session started afresh after its back-end died mid-setup keeps the
   * requests that back-end had in flight (vhost-user "Inflight I/O tracking").
   */
  adoptInflight(from: VhostUserFrontend): void {
    if (this.inflight) closeFd(this.inflight.fd);
    this.inflight = from.inflight;
    from.inflight = null;
  }

  /** The inflight fd the back-end gave us (null until setupInflight). */
  get inflightFd(): number | null {
    return this.inflight?.fd ?? null;
  }

  /**
   * Connect again (to the same or a new socket path) and replay the recorded
   * state: protocol features, owner, features, memory, inflight, rings.
   * `bases` gives each ring's next avail index; by default the used index
   * read from `mem` (what QEMU does when the back-end died and could not
   * answer GET_VRING_BASE; the inflight region covers the requests between).
   */
  async reconnect(opts: { socketPath?: string; mem?: GuestMemory; bases?: Map<number, number> } = {}): Promise<void> {
    if (this.connected) this.conn!.close();
    if (opts.socketPath) this.socketPath = opts.socketPath;
    this.open();
    const features = this.features;
    const protocol = this.protocolFeatures;
    this.protocolFeatures = 0n;
    const offered = await this.getFeatures();
    if ((features & ~offered) !== 0n) throw new VmmError(`the new back-end lacks features 0x${(features & ~offered).toString(16)}`, 'config', 'ERR_VHOST_USER_FEATURES');
    if (offered & VHOST_USER_F_PROTOCOL_FEATURES) await this.setProtocolFeatures(protocol & (await this.getProtocolFeatures()));
    if (this.ownerSet) await this.setOwner();
    if (this.backendChannelWanted && this.hasProtocol(ProtocolFeature.BACKEND_REQ)) await this.openBackendChannel();
    await this.setFeatures(features);
    if (this.regions.length > 0) await this.sendMemTable();
    if (this.inflight) await this.request(Req.SET_INFLIGHT_FD, inflightPayload.encode(this.inflight.info), [this.inflight.fd]);
    for (const [index, r] of [...this.vrings.entries()].sort((a, b) => a[0] - b[0])) {
      if (r.num !== undefined) await this.request(Req.SET_VRING_NUM, vringState.encode({ index, num: r.num }));
      let base = opts.bases?.get(index);
      if (base === undefined && opts.mem && r.addr) base = opts.mem.readU16(opts.mem.userToGuest(r.addr.used + 2n, 2));
      base ??= r.base ?? 0;
      r.base = base;
      await this.request(Req.SET_VRING_BASE, vringState.encode({ index, num: base }));
      if (r.addr) await this.request(Req.SET_VRING_ADDR, vringAddr.encode(r.addr));
      if (r.callFd !== undefined) await this.request(Req.SET_VRING_CALL, u64.encode(BigInt(index)), [r.callFd]);
      if (r.errFd !== undefined) await this.request(Req.SET_VRING_ERR, u64.encode(BigInt(index)), [r.errFd]);
      if (r.kickFd !== undefined) await this.request(Req.SET_VRING_KICK, u64.encode(BigInt(index)), [r.kickFd]);
      if (r.enabled !== undefined && (this.protocolFeatures !== 0n || (features & VHOST_USER_F_PROTOCOL_FEATURES) !== 0n)) {
        await this.request(Req.SET_VRING_ENABLE, vringState.encode({ index, num: r.enabled ? 1 : 0 }));
      }
    }
  }

  /** Close the connection and every fd kept for replay. */
  close(): void {
    this.conn?.close();
    this.conn = null;
    this.backendChannel?.close();
    this.backendChannel = null;
    this.backendChannelWanted = false;
    for (const r of this.regions) closeFd(r.fd);
    this.regions = [];
    for (const r of this.vrings.values()) for (const f of [r.kickFd, r.callFd, r.errFd]) if (f !== undefined) closeFd(f);
    this.vrings.clear();
    if (this.inflight) closeFd(this.inflight.fd);
    this.inflight = null;
  }

  /** Drop only the connection (keep the recorded state for reconnect()). */
  disconnect(): void {
    this.conn?.close();
    this.conn = null;
    this.backendChannel?.close();
    this.backendChannel = null;
  }
}
