// The virtio device status state machine, written once for every transport
// and device (STYLE.md §4; virtio 1.2 §2.1 "Device Status Field", §3.1.1
// "Driver Requirements: Device Initialization", §2.2 feature negotiation).
//
//   reset ─ACKNOWLEDGE→ acknowledged ─DRIVER→ driver ─FEATURES_OK→ features-ok ─DRIVER_OK→ running
//   any ─FAILED→ failed;   device error → needs-reset (DEVICE_NEEDS_RESET);   write 0 → reset
//
// The transport (vcpu's virtio-mmio register file, on every hart's thread)
// calls into it, keeping the state in its shared registers (LifecycleStore);
// the hooks connect it to whoever serves the device.

import { VmmError } from './errors.ts';
import { VIRTIO_F_VERSION_1 } from './device.ts';

export const VIRTIO_STATUS_ACKNOWLEDGE = 1;
export const VIRTIO_STATUS_DRIVER = 2;
export const VIRTIO_STATUS_DRIVER_OK = 4;
export const VIRTIO_STATUS_FEATURES_OK = 8;
export const VIRTIO_STATUS_DEVICE_NEEDS_RESET = 64;
export const VIRTIO_STATUS_FAILED = 128;

export type DeviceState = 'reset' | 'acknowledged' | 'driver' | 'features-ok' | 'running' | 'failed';

export interface LifecycleHooks {
  /** Features the device offers (may be a getter: the transport reads them from its registers). */
  readonly deviceFeatures: bigint;
  /** FEATURES_OK: may refuse a feature combination (return a reason) beyond the subset check. */
  checkFeatures?(driverFeatures: bigint): string | null;
  /** DRIVER_OK was set: start the device with the negotiated features (queues are configured by now). */
  activate(features: bigint): void;
  /** Status 0 was written (or reset() called) after activation: stop the device and forget its state. */
  reset(): void;
  /** The device entered DEVICE_NEEDS_RESET while running: the transport should raise a configuration change interrupt (§2.1.2). */
  configChanged?(): void;
}

/** Where the status and the driver's features live: plain fields by default, a transport's shared registers otherwise. */
export interface LifecycleStore {
  status: number;
  driverFeatures: bigint;
}

export class VirtioStatusError extends VmmError {
  constructor(message: string, code: string) {
    super(message, 'guest', code);
  }
}

export class VirtioDeviceLifecycle {
  private readonly hooks: LifecycleHooks;
  private readonly store: LifecycleStore;
  /** Why the last status write was refused (for logs), or null. */
  lastRefusal: string | null = null;

  constructor(hooks: LifecycleHooks, store: LifecycleStore = { status: 0, driverFeatures: 0n }) {
    this.hooks = hooks;
    this.store = store;
  }

  private get statusBits(): number {
    return this.store.status;
  }

  private set statusBits(v: number) {
    this.store.status = v;
  }

  get status(): number {
    return this.store.status;
  }

  get driverFeatures(): bigint {
    return this.store.driverFeatures;
  }

  get state(): DeviceState {
    const s = this.statusBits;
    if (s & VIRTIO_STATUS_FAILED) return 'failed';
    if (s & VIRTIO_STATUS_DRIVER_OK) return 'running';
    if (s & VIRTIO_STATUS_FEATURES_OK) return 'features-ok';
    if (s & VIRTIO_STATUS_DRIVER) return 'driver';
    if (s & VIRTIO_STATUS_ACKNOWLEDGE) return 'acknowledged';
    return 'reset';
  }

  /** 32-bit window of the device features (DeviceFeaturesSel semantics). */
  deviceFeaturesWord(select: number): number {
    return select > 1 ? 0 : Number((this.hooks.deviceFeatures >> BigInt(32 * select)) & 0xffff_ffffn);
  }

  /** Driver writes a 32-bit window of its features (DriverFeaturesSel). Ignored once FEATURES_OK is set (§2.2.2: the driver must not change them). */
  writeDriverFeaturesWord(select: number, value: number): void {
    if (this.statusBits & VIRTIO_STATUS_FEATURES_OK) {
      this.lastRefusal = 'driver features written after FEATURES_OK';
      return;
    }
    if (select > 1) return;
    const shift = BigInt(32 * select);
    this.store.driverFeatures = (this.store.driverFeatures & ~(0xffff_ffffn << shift)) | (BigInt(value >>> 0) << shift);
  }

  /**
   * A driver write to the status register. Returns true if the new value
   * was accepted; a refused FEATURES_OK simply does not stick (§3.1.1 step 6:
   * the driver re-reads it), other invalid transitions are refused and the
   * reason kept in lastRefusal.
   */
  writeStatus(value: number): boolean {
    value &= 0xff;
    this.lastRefusal = null;
    if (value === 0) {
      this.reset();
      return true;
    }
    const old = this.statusBits;
    const added = value & ~old;
    // The driver never clears bits except by writing 0 (§2.1.1); DEVICE_NEEDS_RESET is the device's to set.
    const driverOld = old & ~VIRTIO_STATUS_DEVICE_NEEDS_RESET;
    if ((value & driverOld) !== driverOld) return this.refuse(`status 0x${value.toString(16)} clears bits of 0x${old.toString(16)}`);
    if (added & VIRTIO_STATUS_FAILED) {
      this.statusBits = old | VIRTIO_STATUS_FAILED;
      return true;
    }
    if (old & VIRTIO_STATUS_FAILED) return this.refuse('device failed: only a reset is accepted');
    const order = [VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DRIVER, VIRTIO_STATUS_FEATURES_OK, VIRTIO_STATUS_DRIVER_OK];
    let next = old;
    for (let i = 0; i < order.length; i++) {
      const bit = order[i]!;
      if (!(added & bit)) continue;
      const missing = order.slice(0, i).filter((b) => !(next & b));
      if (missing.length > 0) return this.refuse(`status bit ${bit} before bits ${missing.join(',')} (§3.1.1 order)`);
      if (bit === VIRTIO_STATUS_FEATURES_OK) {
        const why = this.featuresProblem();
        if (why !== null) {
          // FEATURES_OK does not stick; accept any other bits of the write.
          this.lastRefusal = why;
          continue;
        }
      }
      next |= bit;
    }
    // DEVICE_NEEDS_RESET stays until a reset, whatever the driver writes back (§2.1.2).
    this.statusBits = next | (old & VIRTIO_STATUS_DEVICE_NEEDS_RESET);
    if (!(old & VIRTIO_STATUS_DRIVER_OK) && next & VIRTIO_STATUS_DRIVER_OK) this.hooks.activate(this.store.driverFeatures);
    return this.lastRefusal === null;
  }

  private featuresProblem(): string | null {
    const driver = this.store.driverFeatures;
    const extra = driver & ~this.hooks.deviceFeatures;
    if (extra !== 0n) return `driver accepted features 0x${extra.toString(16)} the device did not offer`;
    // A modern (non-legacy) transport requires VERSION_1 (§6.1, §4.2.2.2 for virtio-mmio version 2).
    if ((this.hooks.deviceFeatures & VIRTIO_F_VERSION_1) !== 0n && (driver & VIRTIO_F_VERSION_1) === 0n) return 'driver did not accept VIRTIO_F_VERSION_1';
    return this.hooks.checkFeatures?.(driver) ?? null;
  }

  private refuse(why: string): boolean {
    this.lastRefusal = why;
    return false;
  }

  /** The device hit an error it cannot recover from without a reset (§2.1.2). */
  needsReset(): void {
    if (this.statusBits & VIRTIO_STATUS_DEVICE_NEEDS_RESET) return;
    this.statusBits |= VIRTIO_STATUS_DEVICE_NEEDS_RESET;
    if (this.statusBits & VIRTIO_STATUS_DRIVER_OK) this.hooks.configChanged?.();
  }

  /** Device reset (status 0 written, or the transport reset). */
  reset(): void {
    const wasActive = (this.statusBits & VIRTIO_STATUS_DRIVER_OK) !== 0;
    this.statusBits = 0;
    this.store.driverFeatures = 0n;
    if (wasActive) this.hooks.reset();
  }
}
