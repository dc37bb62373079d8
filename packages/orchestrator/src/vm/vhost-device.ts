// One vhost-user device of a running VM, of any kind: its device process,
// our vhost-user front-end to it, and the virtio-mmio transport slot the
// guest sees. The orchestrator plays QEMU's part (vhost-user spec,
// "front-end"): it watches the transport's registers (a cold path) and, when
// the driver sets DRIVER_OK, hands the back-end the RAM memfd, the rings and
// the kick/call/error eventfds. After that the data path is vCPU thread →
// kick eventfd → device process → call eventfd → PLIC line, with no hop
// through here except the irqfd wake-up.
//
// A kind (virtio-blk, …) contributes only what differs, through its
// registration (DeviceKind in @vmm/core): device ID, config size, options and
// the process's argv, the protocol features it allows, whether a warm spare
// helps, its faults and its QMP query. This class is the rest, written once.
//
// Supervision: if the process dies (any signal, any exit), it is started
// again on the same socket (or a warm spare takes over) and the front-end
// replays memory, features, inflight region and rings; each ring restarts at
// the used index read from guest RAM, and a back-end with inflight tracking
// resubmits what the region says was in flight (vhost-user "Inflight I/O
// tracking"). The guest sees a delay, never an error. A back-end that keeps
// crashing without progress is given up: DEVICE_NEEDS_RESET with a
// configuration change interrupt (virtio 1.2 §2.1.2).

import { join } from 'node:path';
import {
  BASE_PROTOCOL_FEATURES, VIRTIO_F_ACCESS_PLATFORM, closeFd, DEVICE_SPECIFIC_FEATURES, DeviceProcess, eventfdCreate, eventfdRead, optionsToArgv, protocolFeatureBit, readyQueueSizes,
  VHOST_USER_F_PROTOCOL_FEATURES, VhostUserFrontend, VhostUserProtocolFeature, VIRTIO_STATUS_DEVICE_NEEDS_RESET, VIRTIO_STATUS_DRIVER, VIRTIO_STATUS_DRIVER_OK, VmmError,
  watchReadable, type DeviceKind, type FdWatch, type Logger, type OptionValue,
} from '@vmm/core';
import { TRANSPORT_FEATURES, VIRTIO_INT, type IrqFn, type VirtioMmioState } from '@vmm/vcpu';
import { describeRings, ringStates, watchForStall, type RingState } from './ring-diagnosis.ts';

/** Protocol features the front-end acks for every kind (inflight tracking is a kind's to allow: DeviceKind.protocolFeatures). */
const WANTED_PROTOCOL = [
  VhostUserProtocolFeature.MQ, VhostUserProtocolFeature.REPLY_ACK, VhostUserProtocolFeature.CONFIG,
  VhostUserProtocolFeature.RESET_DEVICE, VhostUserProtocolFeature.STATUS, VhostUserProtocolFeature.BACKEND_REQ,
].reduce((acc, b) => acc | protocolFeatureBit(b), 0n);

/** What the guest may see of the features a back-end offers: every device-specific bit (virtio 1.2 §6), and the transport-owned ones our transport carries. */
// ACCESS_PLATFORM reaches the guest only from a back-end behind the IOMMU (virtio 1.2 §6.1: DMA addresses are then I/O virtual).
const GUEST_FEATURES = DEVICE_SPECIFIC_FEATURES | TRANSPORT_FEATURES | VIRTIO_F_ACCESS_PLATFORM;

/**
 * Give up on a back-end after this many crashes in a row with no progress in
 * between (no request completed since the previous restart, or a start that
 * failed): it is crash-looping, and restarting it again will not help.
 */
const MAX_FRUITLESS_RESTARTS = 5;

/** After a restart, outstanding requests and no completion for this long is a stall: BACKEND_STALLED with the rings' state. */
const STALL_MS = 5000;

/** A device as the orchestrator plugs it: its kind, its id, and its options parsed by the kind's schema. */
export interface DeviceSpec {
  kind: DeviceKind;
  id: string;
  options: Record<string, OptionValue>;
}

function protocolFeatureNames(bits: bigint): string {
  const names = Object.entries(VhostUserProtocolFeature).filter(([, b]) => bits & protocolFeatureBit(b)).map(([n]) => n);
  const known = Object.values(VhostUserProtocolFeature).reduce((acc, b) => acc | protocolFeatureBit(b), 0n);
  if (bits & ~known) names.push(`0x${(bits & ~known).toString(16)}`);
  return names.join(', ');
}

export interface SlotContext {
  ramFd: number;
  ramBase: number;
  memBytes: number;
  transport: VirtioMmioState;
  irq: IrqFn;
  /** Read a little-endian u16 of guest RAM (the used ring's idx on restart). */
  readGuestU16(gpa: bigint): number;
  /**
   * Behind the IOMMU: the guest-physical address of one of this device's
   * I/O virtual addresses (its ring addresses, once it negotiated
   * VIRTIO_F_ACCESS_PLATFORM), or null when it is not mapped.
   */
  dmaToGuest?(spec: DeviceSpec, iova: bigint): bigint | null;
  runDir: string;
  log: Logger;
  logLevel: string;
  emit(event: string, data: Record<string, unknown>): void;
}

export type BackendState = 'starting' | 'running' | 'restarting' | 'failed' | 'stopped';

export class VhostDeviceError extends VmmError {
  constructor(message: string, code = 'ERR_VHOST_DEVICE') {
    super(message, 'config', code);
  }
}

export class VhostUserDevice {
  spec: DeviceSpec;
  readonly kind: DeviceKind;
  /** Virtqueues of the device (fixed for its life: a replacement keeps them). */
  readonly queues: number;
  /** The socket of the process currently serving the device. */
  socketPath: string;
  state: BackendState = 'starting';
  /** Fault injection: hold each used-buffer interrupt this long. */
  delayCallsMs = 0;
  private readonly ctx: SlotContext;
  private proc: DeviceProcess;
  private fe: VhostUserFrontend | null = null;
  private offered = 0n;
  private readonly kickFds: number[] = [];
  private readonly callFds: number[] = [];
  private readonly errFds: number[] = [];
  private readonly watches: FdWatch[] = [];
  private ringsRunning = false;
  /** The next startRings follows a back-end that died while starting them: rings resume at the used index. */
  private resuming = false;
  private lastResets = 0;
  private ops: Promise<void> = Promise.resolve();
  /** The serving process died on its own: recover, queued behind any other back-end operation. */
  private readonly onCrash = (info: { code: number | null; signal: string | null }): void => this.enqueue(() => this.recover(info));
  private fruitless = 0;
  private progressMark = 0;
  private closed = false;
  /**
   * A warm spare: a second device process, started and waiting on its own
   * socket, so that recovering from a crash costs a reconnect and a replay
   * rather than a Node start-up; when the kind says a spare helps
   * (DeviceKind.warmSpare: not a qcow2 disk, whose spare would hold
   * metadata read before the crashed process changed it).
   */
  private spare: { proc: DeviceProcess; socket: string; ready: boolean; started: Promise<void> } | null = null;
  private spareSeq = 0;
  private readonly spareAllowed: boolean;

  private constructor(spec: DeviceSpec, ctx: SlotContext) {
    this.spec = spec;
    this.kind = spec.kind;
    this.queues = spec.kind.queues(spec.options);
    this.ctx = ctx;
    this.socketPath = join(ctx.runDir, `${spec.id}.sock`);
    this.proc = this.makeProcess(spec, this.socketPath);
    this.spareAllowed = spec.kind.warmSpare(spec.options);
  }

  /** The device process: the kind's entry point with the same options, as flags (DeviceKind.options, parseDeviceArgv). */
  private makeProcess(spec: DeviceSpec, socketPath: string): DeviceProcess {
    const args = [spec.kind.main, '--socket', socketPath, '--id', spec.id, '--log-level', this.ctx.logLevel, ...optionsToArgv(spec.kind.options, spec.options)];
    const proc = new DeviceProcess({ name: spec.id, args, log: this.ctx.log, stdio: 'inherit' });
    proc.onUnexpectedExit = this.onCrash;
    return proc;
  }

  /**
   * Hot-swap the back-end behind the guest's device: stop the old process
   * (SIGTERM), start a new one (same or other options, e.g. another image of
   * the same size) and replay the session into it; if it cannot start, go
   * back to the old options. Requests in flight in the old process are
   * resubmitted from the inflight region, so the guest notices nothing.
   */
  replace(spec: DeviceSpec): Promise<void> {
    return new Promise((resolve, reject) => {
      this.enqueue(async () => {
        try {
          if (spec.kind !== this.kind) throw new VhostDeviceError(`device ${spec.id}: a replacement must keep driver=${this.kind.name}`);
          for (const name of this.kind.fixedOnReplace ?? []) {
            if (spec.options[name] !== this.spec.options[name]) throw new VhostDeviceError(`device ${spec.id}: a replacement must keep ${name}=${String(this.spec.options[name])}`);
          }
          const old = this.proc;
          this.state = 'restarting';
          this.fe?.disconnect();
          await old.stop();
          await this.dropSpare();
          const next = this.makeProcess(spec, this.socketPath);
          next.restarts = old.restarts;
          try {
            await next.start();
          } catch (e) {
            // Keep the guest's device: go back to the old options.
            this.proc = this.makeProcess(this.spec, this.socketPath);
            this.proc.restarts = old.restarts;
            await this.proc.start();
            await this.resume();
            throw e;
          }
          this.proc = next;
          this.spec = spec;
          await this.resume();
          this.startSpare();
          this.ctx.emit('BACKEND_REPLACED', { device: spec.id, driver: this.kind.name, pid: next.pid, ...spec.options });
          resolve();
        } catch (e) {
          reject(e as Error);
        }
      });
    });
  }

  /** Reconnect to the (new) process and bring back the session the guest had. */
  private async resume(): Promise<void> {
    if (this.ringsRunning && this.fe) {
      const bases = new Map<number, number>();
      for (let q = 0; q < this.queues; q++) {
        const qc = this.ctx.transport.queue(q);
        if (qc.ready) bases.set(q, this.readRingU16(qc.device + 2n));
      }
      await this.fe.reconnect({ bases, socketPath: this.socketPath });
    } else {
      // The old process died before the rings were all given to it (or before the driver was ready): a fresh
      // session, which keeps the inflight region if one was set up — that process may already have taken
      // requests from a ring it had started — and starts the rings at the used index (see startRings).
      const old = this.fe;
      this.resuming = old?.inflightFd != null;
      try {
        await this.connect();
        if (old) this.fe!.adoptInflight(old);
      } finally {
        old?.close();
      }
    }
    this.state = 'running';
    // Catch up with the transport: the driver may have set DRIVER_OK (or
    // reset the device) while the old process was dying, even in the middle
    // of starting its rings; nothing else would start them for the new one.
    await this.reconcile();
  }

  /** Start the process, connect, and put the device into its transport slot. Fails with the back-end's own message. */
  static async start(spec: DeviceSpec, ctx: SlotContext): Promise<VhostUserDevice> {
    const dev = new VhostUserDevice(spec, ctx);
    try {
      await dev.proc.start();
      await dev.connect();
      const config = await dev.fe!.getConfig(0, spec.kind.configSize);
      for (let q = 0; q < dev.queues; q++) {
        dev.kickFds.push(eventfdCreate());
        const call = eventfdCreate();
        dev.callFds.push(call);
        const w = watchReadable(call, () => dev.onCall(call));
        w.unref();
        dev.watches.push(w);
        const err = eventfdCreate();
        dev.errFds.push(err);
        const we = watchReadable(err, () => dev.onError(err));
        we.unref();
        dev.watches.push(we);
      }
      // Each queue's QueueNumMax (virtio 1.2 §4.2.2) is the device model's own maximum, which the process tells in its handshake.
      const sizes = readyQueueSizes(dev.proc.readyInfo, dev.queues, spec.kind.maxQueueSize);
      ctx.transport.plug(spec.kind.virtioId, dev.offered & GUEST_FEATURES, sizes, config, dev.kickFds);
      dev.lastResets = ctx.transport.resets;
      dev.state = 'running';
      void dev.watchTransport();
      dev.startSpare();
      return dev;
    } catch (e) {
      await dev.close();
      const file = typeof spec.options.file === 'string' ? ` (${spec.options.file})` : '';
      throw new VhostDeviceError(`${spec.kind.name} ${spec.id}${file}: ${(e as Error).message}`);
    }
  }

  get pid(): number | undefined { return this.proc.pid; }
  get restarts(): number { return this.proc.restarts; }
  get process(): DeviceProcess { return this.proc; }

  private async connect(): Promise<void> {
    const fe = VhostUserFrontend.connect(this.socketPath, { log: this.ctx.log });
    this.fe = fe;
    this.offered = await fe.getFeatures();
    if (this.offered & VHOST_USER_F_PROTOCOL_FEATURES) {
      const announced = await fe.getProtocolFeatures();
      // A back-end announcing what its kind does not allow is not the process we meant to start (or a broken one): refuse it.
      const extra = announced & ~(BASE_PROTOCOL_FEATURES | this.kind.protocolFeatures);
      if (extra !== 0n) {
        const names = protocolFeatureNames(extra);
        this.ctx.log.error({ device: this.spec.id, driver: this.kind.name, announced: `0x${announced.toString(16)}`, refused: names }, 'back-end announces vhost-user protocol features its kind does not allow; refusing it');
        fe.close();
        this.fe = null;
        throw new VhostDeviceError(`the back-end announces vhost-user protocol features ${names} that ${this.kind.name} does not allow`, 'ERR_VHOST_DEVICE_PROTOCOL');
      }
      await fe.setProtocolFeatures(announced & (WANTED_PROTOCOL | this.kind.protocolFeatures));
    }
    await fe.setOwner();
    if (this.hasProtocol(VhostUserProtocolFeature.BACKEND_REQ)) {
      fe.onConfigChange = () => this.enqueue(() => this.refreshConfig());
      await fe.openBackendChannel();
    }
  }

  private hasProtocol(bit: number): boolean {
    return ((this.fe?.protocolFeatures ?? 0n) & protocolFeatureBit(bit)) !== 0n;
  }

  /** Used-buffer notifications seen from the back-end (each may cover several requests). */
  completions = 0;
  private completionWaiters: ((at: number) => void)[] = [];

  private cancelStallWatch: () => void = () => {};
  /** Ring size the inflight region was laid out for (0: none set up). */
  private inflightQueueSize = 0;

  /**
   * A u16 of one of the guest's rings at `addr` as the driver gave it: a
   * guest-physical address, or an IOVA translated through the IOMMU once
   * the device negotiated VIRTIO_F_ACCESS_PLATFORM (virtio 1.2 §6.1).
   */
  private readRingU16(addr: bigint): number {
    if ((this.ctx.transport.driverFeatures() & VIRTIO_F_ACCESS_PLATFORM) === 0n || !this.ctx.dmaToGuest) return this.ctx.readGuestU16(addr);
    const gpa = this.ctx.dmaToGuest(this.spec, addr);
    if (gpa === null) throw new VhostDeviceError(`${this.spec.id}: ring address 0x${addr.toString(16)} is not mapped at the IOMMU`, 'ERR_VHOST_DEVICE_RING_UNMAPPED');
    return this.ctx.readGuestU16(gpa);
  }

  /** The guest's rings as the front-end sees them (indices in guest RAM, inflight heads): for stall reports. */
  diagnose(): RingState[] {
    const t = this.ctx.transport;
    const fd = this.fe?.inflightFd ?? null;
    return ringStates({
      queues: this.queues,
      ring: (q) => {
        const qc = t.queue(q);
        return qc.ready && this.ringsRunning ? { avail: qc.driver, used: qc.device } : null;
      },
      // A ring the IOMMU no longer maps reads as -1 here: a diagnosis must not fail.
      readGuestU16: (addr) => {
        try {
          return this.readRingU16(addr);
        } catch {
          return -1;
        }
      },
      inflight: fd === null || this.inflightQueueSize === 0 ? null : { fd, queueSize: this.inflightQueueSize },
    });
  }

  /** Resolves (with performance.now()) at the back-end's next used-buffer notification. */
  nextCompletion(): Promise<number> {
    return new Promise((resolve) => this.completionWaiters.push(resolve));
  }

  private onCall(fd: number): void {
    if (eventfdRead(fd) === null) return;
    this.completions++;
    if (this.completionWaiters.length) {
      const at = performance.now();
      for (const w of this.completionWaiters.splice(0)) w(at);
    }
    const raise = () => this.ctx.transport.raise(VIRTIO_INT.USED_BUFFER, this.ctx.irq);
    if (this.delayCallsMs > 0) setTimeout(raise, this.delayCallsMs);
    else raise();
  }

  /** The back-end signalled a ring's error eventfd (SET_VRING_ERR): ask its status; DEVICE_NEEDS_RESET goes to the guest. */
  private onError(fd: number): void {
    if (eventfdRead(fd) === null) return;
    this.enqueue(async () => {
      if (this.closed || !this.fe) return;
      if (!this.hasProtocol(VhostUserProtocolFeature.STATUS)) {
        this.needsReset('the back-end signalled a ring error');
        return;
      }
      const status = await this.fe.getStatus();
      if (status & VIRTIO_STATUS_DEVICE_NEEDS_RESET) this.needsReset('the back-end reports DEVICE_NEEDS_RESET');
      else this.ctx.log.warn({ device: this.spec.id, status }, 'back-end signalled a ring error without needing a reset');
    });
  }

  /** The back-end's configuration space changed (CONFIG_CHANGE_MSG): read it again and tell the driver (virtio 1.2 §2.5.1, §4.2.2 ConfigGeneration). */
  private async refreshConfig(): Promise<void> {
    if (this.closed || !this.fe) return;
    const config = await this.fe.getConfig(0, this.kind.configSize);
    this.ctx.transport.updateConfig(config, this.ctx.irq);
    this.ctx.log.info({ device: this.spec.id, driver: this.kind.name }, 'device configuration changed');
  }

  /** DEVICE_NEEDS_RESET with a configuration change interrupt (virtio 1.2 §2.1.2); the guest's agent releases the device. */
  private needsReset(reason: string): void {
    if (this.ctx.transport.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET) return;
    this.ctx.transport.needsReset(this.ctx.irq);
    this.ctx.log.error({ device: this.spec.id, driver: this.kind.name, reason }, 'device needs a reset');
    this.ctx.emit('DEVICE_NEEDS_RESET', { device: this.spec.id, driver: this.kind.name, reason });
  }

  /** Serialize everything that talks to the back-end. */
  private enqueue(op: () => Promise<void>): void {
    this.ops = this.ops.then(op).catch((e: unknown) => {
      this.ctx.log.error({ device: this.spec.id, err: (e as Error).message }, 'vhost-user front-end operation failed');
    });
  }

  /** Resolves once the back-end has caught up with the transport (after a system reset: its rings are stopped). */
  settle(): Promise<void> {
    this.enqueue(() => this.reconcile());
    return this.ops;
  }

  /** Wake on every register change the guest makes and reconcile the back-end with it. */
  private async watchTransport(): Promise<void> {
    const { array, index } = this.ctx.transport.changeCell();
    let seen = Atomics.load(array, index);
    this.enqueue(() => this.reconcile());
    while (!this.closed) {
      const w = Atomics.waitAsync(array, index, seen);
      if (w.async) await w.value;
      seen = Atomics.load(array, index);
      if (!this.closed) this.enqueue(() => this.reconcile());
    }
  }

  private async reconcile(): Promise<void> {
    const t = this.ctx.transport;
    if (this.closed || this.state !== 'running') return;
    const resets = t.resets;
    if (resets !== this.lastResets) {
      this.lastResets = resets;
      if (this.ringsRunning) await this.resetBackend();
    }
    if (!this.ringsRunning && (t.status & VIRTIO_STATUS_DRIVER_OK)) await this.startRings();
  }

  private async startRings(): Promise<void> {
    const t = this.ctx.transport;
    const fe = this.fe!;
    await fe.setFeatures(t.driverFeatures() | (this.offered & VHOST_USER_F_PROTOCOL_FEATURES));
    await fe.setMemTable([{
      guestPhysAddr: BigInt(this.ctx.ramBase), memorySize: BigInt(this.ctx.memBytes),
      // Our convention: the front-end's "user address" of guest RAM is its guest-physical address.
      userAddr: BigInt(this.ctx.ramBase), mmapOffset: 0n, fd: this.ctx.ramFd,
    }]);
    if (this.hasProtocol(VhostUserProtocolFeature.INFLIGHT_SHMFD)) {
      // One region for all queues, laid out for the ring size the driver chose (vhost-user "Inflight I/O tracking").
      const sizes = new Set(Array.from({ length: this.queues }, (_, q) => t.queue(q)).filter((qc) => qc.ready).map((qc) => qc.num));
      if (sizes.size === 1) {
        this.inflightQueueSize = [...sizes][0]!;
        await fe.setupInflight(this.queues, this.inflightQueueSize);
      }
      else this.ctx.log.warn({ device: this.spec.id, sizes: [...sizes] }, 'rings of different sizes: no inflight tracking for this session');
    }
    for (let q = 0; q < this.queues; q++) {
      const qc = t.queue(q);
      if (!qc.ready) continue;
      // The order QEMU's vhost_virtqueue_start uses.
      await fe.setVringNum(q, qc.num);
      // A ring a dead predecessor may have served resumes at the used index in guest RAM, as reconnect() does
      // (the inflight region covers what it had taken); a first start is at 0 (virtio 1.2 §2.7).
      await fe.setVringBase(q, this.resuming ? this.readRingU16(qc.device + 2n) : 0);
      await fe.setVringAddr({ index: q, flags: 0, desc: qc.desc, avail: qc.driver, used: qc.device, log: 0n });
      await fe.setVringKick(q, this.kickFds[q]!);
      await fe.setVringCall(q, this.callFds[q]!);
      await fe.setVringErr(q, this.errFds[q]!);
      if (this.offered & VHOST_USER_F_PROTOCOL_FEATURES) await fe.setVringEnable(q, true);
    }
    this.ringsRunning = true;
    this.resuming = false;
    this.ctx.log.info({ device: this.spec.id, features: `0x${t.driverFeatures().toString(16)}` }, 'rings started');
  }

  /** The driver reset the device: stop the rings and start a fresh vhost-user session (fresh inflight state). */
  private async resetBackend(): Promise<void> {
    const fe = this.fe!;
    for (let q = 0; q < this.queues; q++) {
      try { await fe.getVringBase(q); } catch { /* ring never started */ }
    }
    // Say it is the driver's reset, not a lost connection: a back-end whose
    // state outlives its process (vmm-iommu's domains) drops it only then.
    if (this.hasProtocol(VhostUserProtocolFeature.RESET_DEVICE)) await fe.resetDevice();
    fe.close();
    this.fe = null;
    this.ringsRunning = false;
    this.resuming = false;
    await this.connect();
  }

  private async recover(info: { code: number | null; signal: string | null; error?: string }): Promise<void> {
    // A process that dies during start() is start()'s failure to report, not a crash to recover from.
    if (this.closed || this.state === 'failed' || this.state === 'starting') return;
    if (this.completions > this.progressMark) this.fruitless = 0;
    this.fruitless++;
    if (this.fruitless > MAX_FRUITLESS_RESTARTS) {
      this.state = 'failed';
      this.ctx.log.error({ device: this.spec.id, ...info }, 'back-end keeps crashing without progress; giving up');
      this.ctx.emit('BACKEND_FAILED', { device: this.spec.id, driver: this.kind.name, restarts: this.proc.restarts, ...info });
      this.needsReset('the back-end keeps crashing without progress');
      return;
    }
    this.state = 'restarting';
    const t0 = performance.now();
    this.fe?.disconnect();
    try {
      const spare = this.spare;
      if (spare?.ready && spare.proc.running) {
        this.spare = null;
        spare.proc.restarts = this.proc.restarts + 1;
        spare.proc.onUnexpectedExit = this.onCrash;
        this.proc = spare.proc;
        this.socketPath = spare.socket;
      } else {
        this.proc.restarts++;
        await this.proc.start();
      }
      await this.resume();
    } catch (e) {
      // The new process failed to start or to take the session: try again, more slowly.
      const error = (e as Error).message;
      this.ctx.log.error({ device: this.spec.id, err: error }, 'back-end restart failed');
      setTimeout(() => this.enqueue(() => this.recover({ code: null, signal: null, error })), 200 * this.fruitless).unref();
      return;
    }
    this.progressMark = this.completions;
    this.cancelStallWatch();
    this.cancelStallWatch = watchForStall({
      ms: STALL_MS,
      completions: () => this.completions,
      // Queues the device holds buffers on by design (receive, events) are no sign of a stall.
      states: () => {
        const held = new Set(this.kind.heldQueues?.(this.spec.options) ?? []);
        return this.diagnose().filter((s) => !held.has(s.queue));
      },
      onStall: (rings) => {
        this.ctx.log.error({ device: this.spec.id, devicePid: this.proc.pid, restarts: this.proc.restarts, rings: describeRings(rings) }, `no request completed for ${STALL_MS} ms after the restart`);
        this.ctx.emit('BACKEND_STALLED', { device: this.spec.id, pid: this.proc.pid, restarts: this.proc.restarts, ms: STALL_MS, rings });
      },
    });
    this.startSpare();
    const ms = Math.round((performance.now() - t0) * 10) / 10;
    this.ctx.log.warn({ device: this.spec.id, devicePid: this.proc.pid, restarts: this.proc.restarts, ms, ...info }, 'back-end restarted');
    this.ctx.emit('BACKEND_RESTARTED', { device: this.spec.id, driver: this.kind.name, pid: this.proc.pid, restarts: this.proc.restarts, recovery_ms: ms });
    // Kicks that arrived while it was down are still counted in the kick eventfds.
  }

  /**
   * Ask the guest to let go (device_del), for any kind: the device reports
   * DEVICE_NEEDS_RESET with a configuration change interrupt (virtio 1.2
   * §2.1.2) and VendorID reads EJCT; the guest's hot-plug agent answers by
   * unbinding the driver, which resets the device (see guest-hotplug.ts).
   */
  requestEject(): void {
    const t = this.ctx.transport;
    t.requestEject();
    // A device no driver holds (never bound, or already released) has nobody to tell.
    if (t.status & VIRTIO_STATUS_DRIVER) t.needsReset(this.ctx.irq);
  }

  /**
   * The first step of every teardown: from here on an exit of the serving
   * process or of the spare is the end we asked for, not a crash to recover
   * from (no restart, no spare replacement, no error logged). Idempotent.
   */
  disarm(): void {
    if (this.closed) return;
    this.closed = true;
    this.state = 'stopped';
    this.cancelStallWatch();
    this.proc.onUnexpectedExit = undefined;
    if (this.spare) this.spare.proc.onUnexpectedExit = undefined;
    const { array, index } = this.ctx.transport.changeCell();
    Atomics.notify(array, index);
  }

  /** Disarm, remove from the slot, release every fd, then stop the processes in order: the spare, then the serving one. */
  async close(): Promise<void> {
    if (this.closing) return this.closing;
    this.disarm();
    this.closing = (async () => {
      await this.ops;
      this.ctx.transport.unplug();
      this.fe?.close();
      this.fe = null;
      for (const w of this.watches) w.close();
      for (const fd of [...this.kickFds, ...this.callFds, ...this.errFds]) closeFd(fd);
      await this.dropSpare();
      if (this.proc.running) await this.proc.stop();
    })();
    return this.closing;
  }
  private closing: Promise<void> | null = null;

  private startSpare(): void {
    if (!this.spareAllowed || this.closed || this.spare) return;
    const socket = join(this.ctx.runDir, `${this.spec.id}-${++this.spareSeq}.sock`);
    const proc = this.makeProcess(this.spec, socket);
    // An idle spare that dies is simply replaced; the guest never used it.
    proc.onUnexpectedExit = () => {
      if (this.spare !== entry) return;
      this.spare = null;
      setTimeout(() => this.startSpare(), 500).unref();
    };
    const started: Promise<void> = proc.start().then(
      () => { entry.ready = true; },
      (e: unknown) => {
        // A spare dropped while it was starting (teardown, replace) failing to start is no news.
        if (this.spare !== entry) return;
        this.ctx.log.warn({ device: this.spec.id, err: (e as Error).message }, 'warm spare did not start');
        this.spare = null;
      },
    );
    const entry = { proc, socket, ready: false, started };
    this.spare = entry;
  }

  /** Stop the spare (if any); resolves once it has exited. */
  private async dropSpare(): Promise<void> {
    const s = this.spare;
    this.spare = null;
    if (!s) return;
    s.proc.onUnexpectedExit = undefined;
    // A spare still starting is stopped once its start settles (stop() needs a started child).
    if (!s.ready) await s.started;
    if (s.proc.running) await s.proc.stop();
  }

  /** The warm spare's pid, if one is ready. */
  get sparePid(): number | undefined {
    return this.spare?.ready ? this.spare.proc.pid : undefined;
  }
}
