// One virtio-blk disk of a running VM: a `vmm-blk` device process, our
// vhost-user front-end to it, and the virtio-mmio transport slot the guest
// sees. The orchestrator plays QEMU's part (vhost-user spec, "front-end"):
// it watches the transport's registers (a cold path) and, when the driver
// sets DRIVER_OK, hands the back-end the RAM memfd, the rings and the
// kick/call eventfds. After that the data path is vCPU thread → kick
// eventfd → vmm-blk → call eventfd → PLIC line, with no hop through here
// except the irqfd wake-up.
//
// Supervision: if the process dies (any signal, any exit), it is started
// again on the same socket and the front-end replays memory, features,
// inflight region and rings; each ring restarts at the used index read
// from guest RAM, and the back-end resubmits what the inflight region says
// was in flight (vhost-user "Inflight I/O tracking"). The guest sees a
// delay, never an error.

import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import {
  closeFd, DeviceProcess, eventfdCreate, eventfdRead, protocolFeatureBit, VHOST_USER_F_PROTOCOL_FEATURES, VhostUserFrontend,
  VhostUserProtocolFeature, VmmError, watchReadable, type FdWatch, type Logger,
} from '@vmm/core';
import { VIRTIO_INT, VIRTIO_STATUS, type IrqFn, type VirtioMmioState } from '@vmm/vcpu';
import type { DiskSpec } from './disk-spec.ts';
import { probeImageFormat } from '@vmm/virtio-blk';

const VIRTIO_ID_BLOCK = 2; // virtio 1.2 §5
const QUEUE_SIZE_MAX = 256;
const BLK_CONFIG_BYTES = 60; // struct virtio_blk_config up to write_zeroes_may_unmap + padding (§5.2.4)
/** What our virtio-mmio transport can carry: device-specific bits, INDIRECT_DESC, EVENT_IDX, VERSION_1. */
const TRANSPORT_FEATURES = ((1n << 24n) - 1n) | (1n << 28n) | (1n << 29n) | (1n << 32n);
const WANTED_PROTOCOL = [
  VhostUserProtocolFeature.MQ, VhostUserProtocolFeature.REPLY_ACK, VhostUserProtocolFeature.CONFIG,
  VhostUserProtocolFeature.INFLIGHT_SHMFD, VhostUserProtocolFeature.RESET_DEVICE,
].reduce((acc, b) => acc | protocolFeatureBit(b), 0n);

/**
 * Give up on a back-end after this many crashes in a row with no progress in
 * between (no request completed since the previous restart, or a start that
 * failed): it is crash-looping, and restarting it again will not help.
 */
const MAX_FRUITLESS_RESTARTS = 5;

// The vmm-blk entry point sits beside the package's index (its `bin`).
const BLK_MAIN = fileURLToPath(new URL('./main.ts', import.meta.resolve('@vmm/virtio-blk')));

export interface VhostBlkContext {
  ramFd: number;
  ramBase: number;
  memBytes: number;
  transport: VirtioMmioState;
  irq: IrqFn;
  /** Read a little-endian u16 of guest RAM (the used ring's idx on restart). */
  readGuestU16(gpa: bigint): number;
  runDir: string;
  log: Logger;
  logLevel: string;
  emit(event: string, data: Record<string, unknown>): void;
}

function isQcow2(spec: DiskSpec): boolean {
  try {
    return (spec.format ?? probeImageFormat(spec.file)) === 'qcow2';
  } catch {
    return true; // unknown: no spare
  }
}

export type BackendState = 'starting' | 'running' | 'restarting' | 'failed' | 'stopped';

export class VhostBlkError extends VmmError {
  constructor(message: string, code = 'ERR_VHOST_BLK') {
    super(message, 'config', code);
  }
}

export class VhostBlkDevice {
  spec: DiskSpec;
  /** The socket of the process currently serving the disk. */
  socketPath: string;
  state: BackendState = 'starting';
  /** Fault injection: hold each used-buffer interrupt this long. */
  delayCallsMs = 0;
  private readonly ctx: VhostBlkContext;
  private proc: DeviceProcess;
  private fe: VhostUserFrontend | null = null;
  private offered = 0n;
  private readonly kickFds: number[] = [];
  private readonly callFds: number[] = [];
  private readonly watches: FdWatch[] = [];
  private ringsRunning = false;
  private lastResets = 0;
  private ops: Promise<void> = Promise.resolve();
  /** The serving process died on its own: recover, queued behind any other back-end operation. */
  private readonly onCrash = (info: { code: number | null; signal: string | null }): void => this.enqueue(() => this.recover(info));
  private fruitless = 0;
  private progressMark = 0;
  private closed = false;
  /**
   * A warm spare: a second vmm-blk process, started and waiting on its own
   * socket, so that recovering from a crash costs a reconnect and a replay
   * rather than a Node start-up. Only for raw images: a qcow2 spare would
   * hold metadata read before the crashed process changed it.
   */
  private spare: { proc: DeviceProcess; socket: string; ready: boolean; started: Promise<void> } | null = null;
  private spareSeq = 0;
  private readonly spareAllowed: boolean;

  private constructor(spec: DiskSpec, ctx: VhostBlkContext) {
    this.spec = spec;
    this.ctx = ctx;
    this.socketPath = join(ctx.runDir, `${spec.id}.sock`);
    this.proc = this.makeProcess(spec, this.socketPath);
    this.spareAllowed = !isQcow2(spec);
  }

  private makeProcess(spec: DiskSpec, socketPath: string): DeviceProcess {
    const args = [BLK_MAIN, '--socket', socketPath, '--image', spec.file, '--queues', String(spec.queues), '--id', spec.id, '--log-level', this.ctx.logLevel];
    if (spec.format) args.push('--format', spec.format);
    if (spec.readOnly) args.push('--readonly');
    if (spec.serial) args.push('--serial', spec.serial);
    const proc = new DeviceProcess({ name: spec.id, args, log: this.ctx.log, stdio: 'inherit' });
    proc.onUnexpectedExit = this.onCrash;
    return proc;
  }

  /**
   * Hot-swap the back-end behind the guest's device: stop the old process
   * (SIGTERM), start a new one (same or another image of the same size) and
   * replay the session into it; if it cannot start, go back to the old image. Requests in flight in the old process are
   * resubmitted from the inflight region, so the guest notices nothing.
   */
  replace(spec: DiskSpec): Promise<void> {
    return new Promise((resolve, reject) => {
      this.enqueue(async () => {
        try {
          if (spec.queues !== this.spec.queues) throw new VhostBlkError(`disk ${spec.id}: a replacement must keep queues=${this.spec.queues}`);
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
            // Keep the guest's disk: go back to the old image.
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
          this.ctx.emit('BACKEND_REPLACED', { device: spec.id, pid: next.pid, file: spec.file });
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
      for (let q = 0; q < this.spec.queues; q++) {
        const qc = this.ctx.transport.queue(q);
        if (qc.ready) bases.set(q, this.ctx.readGuestU16(qc.device + 2n));
      }
      await this.fe.reconnect({ bases, socketPath: this.socketPath });
    } else {
      this.fe?.close();
      await this.connect();
    }
    this.state = 'running';
    // Catch up with the transport: the driver may have set DRIVER_OK (or
    // reset the device) while the old process was dying, even in the middle
    // of starting its rings; nothing else would start them for the new one.
    await this.reconcile();
  }

  /** Start the process, connect, and put the device into its transport slot. Fails with the back-end's own message. */
  static async start(spec: DiskSpec, ctx: VhostBlkContext): Promise<VhostBlkDevice> {
    const dev = new VhostBlkDevice(spec, ctx);
    try {
      await dev.proc.start();
      await dev.connect();
      const config = await dev.fe!.getConfig(0, BLK_CONFIG_BYTES);
      for (let q = 0; q < spec.queues; q++) {
        dev.kickFds.push(eventfdCreate());
        const call = eventfdCreate();
        dev.callFds.push(call);
        const w = watchReadable(call, () => dev.onCall(call));
        w.unref();
        dev.watches.push(w);
      }
      ctx.transport.plug(VIRTIO_ID_BLOCK, dev.offered & TRANSPORT_FEATURES, spec.queues, QUEUE_SIZE_MAX, config, dev.kickFds);
      dev.lastResets = ctx.transport.resets;
      dev.state = 'running';
      void dev.watchTransport();
      dev.startSpare();
      return dev;
    } catch (e) {
      await dev.close();
      throw new VhostBlkError(`disk ${spec.id} (${spec.file}): ${(e as Error).message}`);
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
      await fe.setProtocolFeatures((await fe.getProtocolFeatures()) & WANTED_PROTOCOL);
    }
    await fe.setOwner();
  }

  private hasProtocol(bit: number): boolean {
    return ((this.fe?.protocolFeatures ?? 0n) & protocolFeatureBit(bit)) !== 0n;
  }

  /** Used-buffer notifications seen from the back-end (each may cover several requests). */
  completions = 0;
  private completionWaiters: ((at: number) => void)[] = [];

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
    if (!this.ringsRunning && (t.status & VIRTIO_STATUS.DRIVER_OK)) await this.startRings();
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
    if (this.hasProtocol(VhostUserProtocolFeature.INFLIGHT_SHMFD)) await fe.setupInflight(this.spec.queues, QUEUE_SIZE_MAX);
    for (let q = 0; q < this.spec.queues; q++) {
      const qc = t.queue(q);
      if (!qc.ready) continue;
      // The order QEMU's vhost_virtqueue_start uses.
      await fe.setVringNum(q, qc.num);
      await fe.setVringBase(q, 0);
      await fe.setVringAddr({ index: q, flags: 0, desc: qc.desc, avail: qc.driver, used: qc.device, log: 0n });
      await fe.setVringKick(q, this.kickFds[q]!);
      await fe.setVringCall(q, this.callFds[q]!);
      if (this.offered & VHOST_USER_F_PROTOCOL_FEATURES) await fe.setVringEnable(q, true);
    }
    this.ringsRunning = true;
    this.ctx.log.info({ device: this.spec.id, features: `0x${t.driverFeatures().toString(16)}` }, 'rings started');
  }

  /** The driver reset the device: stop the rings and start a fresh vhost-user session (fresh inflight state). */
  private async resetBackend(): Promise<void> {
    const fe = this.fe!;
    for (let q = 0; q < this.spec.queues; q++) {
      try { await fe.getVringBase(q); } catch { /* ring never started */ }
    }
    fe.close();
    this.fe = null;
    this.ringsRunning = false;
    await this.connect();
  }

  private async recover(info: { code: number | null; signal: string | null; error?: string }): Promise<void> {
    // A process that dies during start() is start()'s failure to report, not a crash to recover from.
    if (this.closed || this.state === 'failed' || this.state === 'starting') return;
    if (this.completions > this.progressMark) this.fruitless = 0;
    this.fruitless++;
    if (this.fruitless > MAX_FRUITLESS_RESTARTS) {
      this.state = 'failed';
      this.ctx.transport.needsReset(this.ctx.irq);
      this.ctx.log.error({ device: this.spec.id, ...info }, 'back-end keeps crashing without progress; giving up');
      this.ctx.emit('BACKEND_FAILED', { device: this.spec.id, restarts: this.proc.restarts, ...info });
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
    this.startSpare();
    const ms = Math.round((performance.now() - t0) * 10) / 10;
    this.ctx.log.warn({ device: this.spec.id, devicePid: this.proc.pid, restarts: this.proc.restarts, ms, ...info }, 'back-end restarted');
    this.ctx.emit('BACKEND_RESTARTED', { device: this.spec.id, pid: this.proc.pid, restarts: this.proc.restarts, recovery_ms: ms });
    // Kicks that arrived while it was down are still counted in the kick eventfds.
  }

  /**
   * Ask the guest to let go (device_del): the disk reports 0 sectors through
   * a config change, which the guest's hot-plug helper answers by unbinding
   * the driver (see guest-hotplug.ts).
   */
  requestEject(): void {
    const t = this.ctx.transport;
    t.requestEject();
    const config = t.configBytes();
    new DataView(config.buffer, config.byteOffset).setBigUint64(0, 0n, true); // capacity (§5.2.4)
    t.updateConfig(config, this.ctx.irq);
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
      for (const fd of [...this.kickFds, ...this.callFds]) closeFd(fd);
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
