// virtio-mmio transport, version 2 (virtio 1.2 §4.2), for one slot.
//
// The register file lives in a SharedArrayBuffer so that every hart's
// worker handles MMIO on its own thread against one device, like an
// in-kernel transport. The hot path never leaves the vCPU thread: a write
// to QueueNotify becomes a write to that queue's kick eventfd (ioeventfd).
// Everything else the device backend must hear about — status changes,
// features, queue addresses, config writes — is a cold path: the transport
// bumps a change counter and the orchestrator (main thread, woken with
// Atomics.waitAsync) reconciles its vhost-user frontend against the
// registers. Kicks written before the backend is set up are not lost: an
// eventfd keeps its count until the backend reads it.

import {
  VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_STATUS_DEVICE_NEEDS_RESET, VIRTIO_STATUS_DRIVER_OK,
  VirtioDeviceLifecycle,
} from '@vmm/core';

/** virtio 1.2 §4.2.2 register offsets. */
export const REG = {
  MagicValue: 0x000, Version: 0x004, DeviceID: 0x008, VendorID: 0x00c,
  DeviceFeatures: 0x010, DeviceFeaturesSel: 0x014, DriverFeatures: 0x020, DriverFeaturesSel: 0x024,
  QueueSel: 0x030, QueueNumMax: 0x034, QueueNum: 0x038, QueueReady: 0x044, QueueNotify: 0x050,
  InterruptStatus: 0x060, InterruptACK: 0x064, Status: 0x070,
  QueueDescLow: 0x080, QueueDescHigh: 0x084, QueueDriverLow: 0x090, QueueDriverHigh: 0x094,
  QueueDeviceLow: 0x0a0, QueueDeviceHigh: 0x0a4, ShmSel: 0x0ac, ShmLenLow: 0x0b0, ShmLenHigh: 0x0b4,
  ShmBaseLow: 0x0b8, ShmBaseHigh: 0x0bc, QueueReset: 0x0c0, ConfigGeneration: 0x0fc, Config: 0x100,
} as const;

export const MAGIC = 0x7472_6976; // "virt"
export const VENDOR_ID = 0x554d_4551; // "QEMU", as QEMU's virtio-mmio reports; drivers do not care
/**
 * VendorID while the host asks the guest to release the device (device_del).
 * virtio-mmio has no hot-unplug signal of its own; the guest helper in our
 * initramfs polls VendorID of bound slots and unbinds the driver when it
 * reads this, which resets the device (status 0): the host then removes it.
 */
export const VENDOR_ID_EJECT = 0x5443_4a45; // "EJCT"
/**
 * The transport-owned feature bits (virtio 1.2 §6: 24 to 49) this transport
 * carries between a device and the driver: the ring layouts core's
 * virtqueue implements. Every device-specific bit passes through untouched.
 */
export const TRANSPORT_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX;
export const INT = { USED_BUFFER: 1, CONFIG_CHANGE: 2 } as const;

export const MAX_QUEUES = 16;
export const CONFIG_BYTES = 256;

// Int32 word indices of the shared register file.
const W = {
  present: 0, deviceId: 1, devFeatLo: 2, devFeatHi: 3, devFeatSel: 4, drvFeatLo: 5, drvFeatHi: 6, drvFeatSel: 7,
  queueSel: 8, status: 9, intStatus: 10, configGen: 11, numQueues: 12, changes: 14, resets: 15,
  configWrites: 16, eject: 17,
} as const;
const Q_BASE = 32; // per-queue records start here
const Q_STRIDE = 12; // num, ready, descLo, descHi, drvLo, drvHi, devLo, devHi, kickFd, numMax, (pad)
const QW = { num: 0, ready: 1, descLo: 2, descHi: 3, drvLo: 4, drvHi: 5, devLo: 6, devHi: 7, kickFd: 8, numMax: 9 } as const;
const CONFIG_WORD = Q_BASE + MAX_QUEUES * Q_STRIDE;
const WORDS = CONFIG_WORD + CONFIG_BYTES / 4;

export interface QueueConfig {
  num: number;
  ready: boolean;
  desc: bigint;
  driver: bigint;
  device: bigint;
}

/** Writes a u64 eventfd counter increment; provided by the machine (koffi lives in @vmm/core). */
export type KickFn = (fd: number) => void;
/** Sets the slot's interrupt line level (PLIC source), from any thread. */
export type IrqFn = (level: boolean) => void;

export class VirtioMmioState {
  readonly buffer: SharedArrayBuffer;
  private readonly w: Int32Array;
  private readonly cfg: Uint8Array;
  /**
   * The device status state machine, written once in @vmm/core (virtio 1.2
   * §2.1, §3.1.1), over this slot's shared registers: every hart thread's
   * instance sees the same status and driver features.
   */
  private readonly lifecycle: VirtioDeviceLifecycle;

  constructor(buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(WORDS * 4);
    const w = (this.w = new Int32Array(this.buffer));
    this.cfg = new Uint8Array(this.buffer, CONFIG_WORD * 4, CONFIG_BYTES);
    if (!buffer) for (let q = 0; q < MAX_QUEUES; q++) this.w[this.q(q) + QW.kickFd] = -1;
    const u64 = (lo: number, hi: number): bigint => (BigInt(w[hi]! >>> 0) << 32n) | BigInt(w[lo]! >>> 0);
    this.lifecycle = new VirtioDeviceLifecycle(
      {
        get deviceFeatures() { return u64(W.devFeatLo, W.devFeatHi); },
        // The orchestrator sees DRIVER_OK and resets through the change counter and reconciles its back-end.
        activate: () => {},
        reset: () => {},
      },
      {
        get status() { return Atomics.load(w, W.status); },
        set status(v: number) { Atomics.store(w, W.status, v); },
        get driverFeatures() { return u64(W.drvFeatLo, W.drvFeatHi); },
        set driverFeatures(v: bigint) {
          w[W.drvFeatLo] = Number(v & 0xffff_ffffn) | 0;
          w[W.drvFeatHi] = Number((v >> 32n) & 0xffff_ffffn) | 0;
        },
      },
    );
  }

  private q(i: number): number { return Q_BASE + i * Q_STRIDE; }

  // ---- orchestrator side -------------------------------------------------

  /**
   * Put a device into the slot (hot-plug: before the guest probes or rescans
   * it). `queueNumMax[q]` is queue q's largest size, QueueNumMax for that
   * QueueSel (virtio 1.2 §4.2.2: the register is per queue); their count is
   * the number of queues.
   */
  plug(deviceId: number, features: bigint, queueNumMax: readonly number[], config: Uint8Array, kickFds: number[]): void {
    const numQueues = queueNumMax.length;
    if (numQueues < 1 || numQueues > MAX_QUEUES) throw new RangeError(`virtio-mmio: ${numQueues} queues (1..${MAX_QUEUES})`);
    // virtio 1.2 §2.7: a split ring's size is a power of 2, at most 32768.
    const bad = queueNumMax.findIndex((n) => !(Number.isInteger(n) && n >= 1 && n <= 32768 && (n & (n - 1)) === 0));
    if (bad >= 0) throw new RangeError(`virtio-mmio: queue ${bad} size ${queueNumMax[bad]} is not a power of 2 from 1 to 32768`);
    if (config.length > CONFIG_BYTES) throw new RangeError(`virtio-mmio: config space of ${config.length} bytes (max ${CONFIG_BYTES})`);
    this.resetRegisters();
    const w = this.w;
    w[W.deviceId] = deviceId;
    w[W.devFeatLo] = Number(features & 0xffff_ffffn) | 0;
    w[W.devFeatHi] = Number((features >> 32n) & 0xffff_ffffn) | 0;
    w[W.numQueues] = numQueues;
    for (let q = 0; q < MAX_QUEUES; q++) {
      w[this.q(q) + QW.kickFd] = q < kickFds.length ? kickFds[q]! : -1;
      w[this.q(q) + QW.numMax] = q < numQueues ? queueNumMax[q]! : 0;
    }
    this.cfg.fill(0);
    this.cfg.set(config);
    Atomics.store(w, W.present, 1);
  }

  /**
   * A reset of the whole machine (QMP system_reset, a guest reboot): the
   * device goes back to its initial state as if the driver had written 0 to
   * Status (§4.2.2.1), so whoever serves it sees the reset counter move.
   */
  systemReset(): void {
    if (Atomics.load(this.w, W.present)) this.writeStatus(0, () => {});
  }

  /** Ask the guest to let go of the device (see VENDOR_ID_EJECT). */
  requestEject(): void { Atomics.store(this.w, W.eject, 1); }

  unplug(): void {
    Atomics.store(this.w, W.present, 0);
    Atomics.store(this.w, W.eject, 0);
    this.resetRegisters();
  }

  /** Replace the config space contents and tell the driver (virtio 1.2 §4.2.2: ConfigGeneration, §2.5.1). */
  updateConfig(config: Uint8Array, irq: IrqFn): void {
    this.cfg.set(config.subarray(0, CONFIG_BYTES));
    Atomics.add(this.w, W.configGen, 1);
    this.raise(INT.CONFIG_CHANGE, irq);
  }

  setKickFd(queue: number, fd: number): void { Atomics.store(this.w, this.q(queue) + QW.kickFd, fd); }

  get present(): boolean { return Atomics.load(this.w, W.present) === 1; }
  get status(): number { return Atomics.load(this.w, W.status); }
  get resets(): number { return Atomics.load(this.w, W.resets); }
  get changes(): number { return Atomics.load(this.w, W.changes); }
  get numQueues(): number { return this.w[W.numQueues]!; }
  driverFeatures(): bigint {
    return this.lifecycle.driverFeatures;
  }
  configBytes(): Uint8Array { return this.cfg.slice(); }
  queue(i: number): QueueConfig {
    const b = this.q(i);
    const w = this.w;
    const u64 = (lo: number, hi: number) => (BigInt(w[b + hi]! >>> 0) << 32n) | BigInt(w[b + lo]! >>> 0);
    return { num: w[b + QW.num]!, ready: w[b + QW.ready] === 1, desc: u64(QW.descLo, QW.descHi), driver: u64(QW.drvLo, QW.drvHi), device: u64(QW.devLo, QW.devHi) };
  }

  /** Backend used-buffer notification (the irqfd path): InterruptStatus bit 0 and the line up. */
  raise(bits: number, irq: IrqFn): void {
    Atomics.or(this.w, W.intStatus, bits);
    irq(true);
  }

  /**
   * Mark the device broken (virtio 1.2 §2.1.2: DEVICE_NEEDS_RESET, and a
   * configuration change notification when the driver is running), e.g.
   * when its back-end was given up, or to ask the guest to let go of it.
   */
  needsReset(irq: IrqFn): void {
    const before = this.lifecycle.status;
    this.lifecycle.needsReset();
    if (!(before & VIRTIO_STATUS_DEVICE_NEEDS_RESET) && before & VIRTIO_STATUS_DRIVER_OK) this.raise(INT.CONFIG_CHANGE, irq);
  }

  /** An Int32Array and index the orchestrator can Atomics.waitAsync on for register changes. */
  changeCell(): { array: Int32Array; index: number } { return { array: this.w, index: W.changes }; }

  private resetRegisters(): void {
    const w = this.w;
    for (const k of [W.devFeatSel, W.drvFeatLo, W.drvFeatHi, W.drvFeatSel, W.queueSel, W.status, W.intStatus]) Atomics.store(w, k, 0);
    for (let q = 0; q < MAX_QUEUES; q++) {
      const b = this.q(q);
      for (let k = 0; k < QW.kickFd; k++) w[b + k] = 0;
    }
  }

  private changed(): void {
    Atomics.add(this.w, W.changes, 1);
    Atomics.notify(this.w, W.changes);
  }

  // ---- vCPU side ----------------------------------------------------------

  /** A 32-bit register read (virtio-mmio requires 32-bit accesses except for config space). */
  read(offset: number, size: number): number {
    const w = this.w;
    if (offset >= REG.Config) {
      const o = offset - REG.Config;
      if (o + size > CONFIG_BYTES || !this.present) return 0;
      const dv = new DataView(this.buffer, CONFIG_WORD * 4);
      return size === 1 ? dv.getUint8(o) : size === 2 ? dv.getUint16(o, true) : dv.getUint32(o, true);
    }
    if (size !== 4) return 0;
    const present = Atomics.load(w, W.present) === 1;
    switch (offset) {
      case REG.MagicValue: return MAGIC;
      case REG.Version: return 2;
      case REG.DeviceID: return present ? w[W.deviceId]! : 0; // 0: an empty slot (§4.2.3.1.1)
      case REG.VendorID: return Atomics.load(w, W.eject) ? VENDOR_ID_EJECT : VENDOR_ID;
      case REG.DeviceFeatures: return this.lifecycle.deviceFeaturesWord(w[W.devFeatSel]!);
      case REG.QueueNumMax: return this.selQueue() >= 0 ? w[this.q(this.selQueue()) + QW.numMax]! : 0;
      case REG.QueueReady: return this.selQueue() >= 0 ? w[this.q(this.selQueue()) + QW.ready]! : 0;
      case REG.InterruptStatus: return Atomics.load(w, W.intStatus);
      case REG.Status: return Atomics.load(w, W.status);
      case REG.ConfigGeneration: return Atomics.load(w, W.configGen);
      case REG.ShmLenLow: case REG.ShmLenHigh: return 0xffff_ffff; // no shared memory regions (§4.2.2)
      default: return 0;
    }
  }

  private selQueue(): number {
    const s = this.w[W.queueSel]!;
    return s >= 0 && s < this.w[W.numQueues]! ? s : -1;
  }

  write(offset: number, size: number, value: number, kick: KickFn, irq: IrqFn): void {
    const w = this.w;
    if (!this.present) return;
    if (offset >= REG.Config) {
      const o = offset - REG.Config;
      if (o + size > CONFIG_BYTES) return;
      const dv = new DataView(this.buffer, CONFIG_WORD * 4);
      if (size === 1) dv.setUint8(o, value); else if (size === 2) dv.setUint16(o, value, true); else dv.setUint32(o, value, true);
      Atomics.add(w, W.configWrites, 1);
      this.changed();
      return;
    }
    if (size !== 4) return;
    switch (offset) {
      case REG.QueueNotify: {
        // The data path (ioeventfd): straight to the backend's kick eventfd.
        const q = value & 0xffff;
        if (q < w[W.numQueues]!) {
          const fd = Atomics.load(w, this.q(q) + QW.kickFd);
          if (fd >= 0) kick(fd);
        }
        return;
      }
      case REG.DeviceFeaturesSel: w[W.devFeatSel] = value; return;
      case REG.DriverFeaturesSel: w[W.drvFeatSel] = value; return;
      // Only while negotiating (§3.1.1 step 4): the lifecycle ignores it after FEATURES_OK.
      case REG.DriverFeatures: this.lifecycle.writeDriverFeaturesWord(w[W.drvFeatSel]!, value); return;
      case REG.QueueSel: w[W.queueSel] = value; return;
      case REG.InterruptACK: {
        const left = Atomics.and(w, W.intStatus, ~value) & ~value;
        if (left === 0) irq(false);
        return;
      }
      case REG.Status: this.writeStatus(value, irq); return;
    }
    const q = this.selQueue();
    if (q < 0) return;
    const b = this.q(q);
    // Queue registers may only change while the queue is not ready (§4.2.2.2).
    if (offset === REG.QueueReady) {
      w[b + QW.ready] = value & 1;
      this.changed();
      return;
    }
    if (w[b + QW.ready] === 1) return;
    switch (offset) {
      case REG.QueueNum: if (value > 0 && value <= w[b + QW.numMax]! && (value & (value - 1)) === 0) w[b + QW.num] = value; return;
      case REG.QueueDescLow: w[b + QW.descLo] = value; return;
      case REG.QueueDescHigh: w[b + QW.descHi] = value; return;
      case REG.QueueDriverLow: w[b + QW.drvLo] = value; return;
      case REG.QueueDriverHigh: w[b + QW.drvHi] = value; return;
      case REG.QueueDeviceLow: w[b + QW.devLo] = value; return;
      case REG.QueueDeviceHigh: w[b + QW.devHi] = value; return;
    }
  }

  private writeStatus(value: number, irq: IrqFn): void {
    const w = this.w;
    if (value === 0) {
      // Device reset (§4.2.2.1): registers back to their initial values; the
      // orchestrator sees the reset counter move and stops the backend's rings.
      this.lifecycle.reset();
      this.resetRegisters();
      Atomics.add(w, W.resets, 1);
      irq(false);
      this.changed();
      return;
    }
    // Bits in order, FEATURES_OK only for a subset of the offered features
    // with VERSION_1 (§3.1.1, §6.1; otherwise it does not stick and the
    // driver gives up), DEVICE_NEEDS_RESET kept: the core lifecycle decides.
    this.lifecycle.writeStatus(value);
    this.changed();
  }

}
