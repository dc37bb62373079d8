// The VM's virtio-mmio slots and the devices in them, of any kind: plug at
// boot, hot-add (device_add) and hot-remove (device_del), fault injection and
// the per-device QMP answers. Knows nothing of harts: the machine gives it
// the transports, the interrupt lines and guest RAM, so a protocol test can
// drive it with no guest at all (the test plays the driver on the registers).

import { DeviceOptionError, parseDeviceOptions, VIRTIO_STATUS_DRIVER, type Logger, type OptionDef } from '@vmm/core';
import type { IrqFn, VirtioMmioState } from '@vmm/vcpu';
import { QmpError, type ProcessInfo } from '../api/control.ts';
import { parseDeviceAdd } from './device-spec.ts';
import { behindIommu, endpointOf, type IommuPlan } from './iommu.ts';
import { injectIommuFault, isIommuFault } from './iommu-faults.ts';
import { tableLookup } from '@vmm/iommu/kind';
import type { DeviceRegistry } from './kinds.ts';
import { VhostUserDevice, type DeviceSpec, type SlotContext } from './vhost-device.ts';

export interface SlotsOptions {
  transports: VirtioMmioState[];
  /** The interrupt line of slot `index`. */
  irq(index: number): IrqFn;
  ramFd: number;
  ramBase: number;
  memBytes: number;
  readGuestU16(gpa: bigint): number;
  runDir: string;
  log: Logger;
  logLevel: string;
  emit(event: string, data: Record<string, unknown>): void;
  registry: DeviceRegistry;
  /** Where a slot's MMIO window is, for the logs. */
  describeSlot?(index: number): string;
  /** The VM's IOMMU (`--iommu`): its device goes first, in the top slot; every device plugged after it is its endpoint (vm/iommu.ts). */
  iommu?: IommuPlan | null;
}

interface Slot {
  index: number;
  transport: VirtioMmioState;
  device: VhostUserDevice | null;
  /** Taken by a plug still starting its process. */
  claimed: boolean;
  removing: boolean;
}

/** Faults every kind has; a kind adds its own (DeviceKind.faults). */
const GENERIC_FAULTS = ['kill', 'pause', 'resume', 'delay-calls'];
const DELAY_CALLS_OPTIONS: readonly OptionDef[] = [{ name: 'ms', type: 'int', min: 0, max: 60_000, default: 0, help: 'hold each used-buffer interrupt this long' }];
/** inject-fault's own keys, not the fault's options. */
const FAULT_KEYS = ['kind', 'device', 'id'];

export class DeviceSlots {
  private readonly o: SlotsOptions;
  private readonly slots: Slot[];
  private closed = false;
  private readonly starting = new Set<string>();

  /** Reads vmm-iommu's table (the front-end translates ring IOVAs with it on a restart). */
  private readonly lookup: ((endpoint: number, iova: number) => number | null) | null;

  constructor(o: SlotsOptions) {
    this.o = o;
    this.lookup = o.iommu ? tableLookup(String(o.iommu.spec.options.table)) : null;
    this.slots = o.transports.map((transport, index) => ({ index, transport, device: null, claimed: false, removing: false }));
  }

  get registry(): DeviceRegistry {
    return this.o.registry;
  }

  /** Plug the boot devices; call while the harts are paused so the guest finds them at probe time. */
  async addBootDevices(specs: DeviceSpec[]): Promise<void> {
    if (specs.length > this.slots.length) throw new QmpError('GenericError', `${specs.length} devices, but the machine has ${this.slots.length} virtio-mmio slots`);
    // Linux probes the DTB's virtio_mmio nodes in the order QEMU lists them
    // (highest address first), so the first disk goes to the last slot: vda.
    for (const spec of specs) await this.plug(spec);
  }

  private freeSlot(): Slot {
    for (let i = this.slots.length - 1; i >= 0; i--) {
      const s = this.slots[i]!;
      if (!s.device && !s.claimed && !s.transport.present) return s;
    }
    throw new QmpError('GenericError', `no free virtio-mmio slot (all ${this.slots.length} in use)`);
  }

  private find(id: string): Slot & { device: VhostUserDevice } {
    const s = this.slots.find((x) => x.device?.spec.id === id);
    if (!s) throw new QmpError('DeviceNotFound', `Device '${id}' not found`);
    return s as Slot & { device: VhostUserDevice };
  }

  async plug(asked: DeviceSpec): Promise<VhostUserDevice> {
    if (this.closed) throw new QmpError('GenericError', 'the VM has shut down');
    if (this.slots.some((x) => x.device?.spec.id === asked.id) || this.starting.has(asked.id)) throw new QmpError('GenericError', `Duplicate device ID '${asked.id}'`);
    const slot = this.freeSlot();
    const spec = this.o.iommu ? behindIommu(this.o.iommu, asked, slot.index) : asked;
    const ctx: SlotContext = {
      ramFd: this.o.ramFd,
      ramBase: this.o.ramBase,
      memBytes: this.o.memBytes,
      transport: slot.transport,
      irq: this.o.irq(slot.index),
      readGuestU16: this.o.readGuestU16,
      ...(this.lookup ? { dmaToGuest: (sp: DeviceSpec, iova: bigint) => this.dmaToGuest(sp, iova) } : {}),
      runDir: this.o.runDir,
      log: this.o.log,
      logLevel: this.o.logLevel,
      emit: this.o.emit,
    };
    // Claim the slot and the id before the await, so a concurrent plug takes another slot and cannot take the id.
    slot.claimed = true;
    this.starting.add(spec.id);
    try {
      slot.device = await VhostUserDevice.start(spec, ctx);
    } finally {
      slot.claimed = false;
      this.starting.delete(spec.id);
    }
    this.watchRemoval(slot);
    this.o.log.info({ device: spec.id, driver: spec.kind.name, slot: slot.index, mmio: this.o.describeSlot?.(slot.index) }, 'device plugged');
    return slot.device;
  }

  private dmaToGuest(spec: DeviceSpec, iova: bigint): bigint | null {
    const endpoint = endpointOf(spec);
    if (endpoint === null || this.lookup === null) return iova;
    const gpa = this.lookup(endpoint, Number(iova));
    return gpa === null ? null : BigInt(gpa);
  }

  /** After device_del: once the guest has reset the device (driver unbound), take it out. */
  private watchRemoval(slot: Slot): void {
    const { array, index } = slot.transport.changeCell();
    const loop = async (): Promise<void> => {
      let seen = Atomics.load(array, index);
      let resets0 = slot.transport.resets;
      while (slot.device) {
        if (!slot.removing) resets0 = slot.transport.resets;
        // Released: the driver reset the device since device_del, or no driver holds it (never bound, or let go
        // already, e.g. after a back-end was given up; Linux leaves ACKNOWLEDGE set after a driver's removal).
        else if (slot.transport.resets !== resets0 || !(slot.transport.status & VIRTIO_STATUS_DRIVER)) {
          const dev = slot.device;
          const id = dev.spec.id;
          slot.device = null;
          slot.removing = false;
          await dev.close();
          this.o.emit('DEVICE_DELETED', { device: id, path: `/machine/peripheral/${id}` });
          return;
        }
        const w = Atomics.waitAsync(array, index, seen, 1000);
        if (w.async) await w.value;
        seen = Atomics.load(array, index);
      }
    };
    void loop();
  }

  /** Devices in the order the guest names them (slots fill from the top: vda is the highest slot). */
  devices(): VhostUserDevice[] {
    return [...this.slots].reverse().flatMap((s) => (s.device ? [s.device] : []));
  }

  /** Rows of a kind's QMP query (DeviceKind.query), e.g. query-block. */
  query(command: string): Record<string, unknown>[] {
    return this.devices().flatMap((d) => (d.kind.query?.command === command ? [d.kind.query.row(d.spec.id, d.spec.options)] : []));
  }

  /**
   * Answers to a kind's process query (DeviceKind.processQuery), e.g.
   * query-blockstats: each device's own process is asked; one that cannot
   * answer (stopped, restarting) fails the query with its name.
   */
  async processQuery(command: string): Promise<{ id: string; answer: unknown }[]> {
    return Promise.all(this.devices().flatMap((d) => {
      const q = d.kind.processQuery;
      if (q?.command !== command) return [];
      return [d.process.request(q.message).then(
        (answer) => ({ id: d.spec.id, answer }),
        (e: unknown) => { throw new QmpError('GenericError', `${d.kind.name} ${d.spec.id}: no answer from its back-end: ${(e as Error).message}`); },
      )];
    }));
  }

  processes(memory: (pid: number | undefined) => Pick<ProcessInfo, 'rssBytes' | 'sharedMemfdBytes' | 'ownBytes'>): ProcessInfo[] {
    return this.devices().map((d): ProcessInfo => ({
      pid: d.pid ?? -1,
      role: d.kind.role,
      id: d.spec.id,
      restarts: d.restarts,
      ...memory(d.pid),
      state: d.state === 'starting' ? 'running' : d.state,
    }));
  }

  /** Resolves once every back-end has caught up with its transport (after a system reset). */
  async settle(): Promise<void> {
    await Promise.all(this.devices().map((d) => d.settle()));
  }

  /**
   * device_add driver=KIND id=ID opt=…: a new device in a free slot. With
   * replace=true and the id of an existing device: a new back-end process
   * (same or new options) behind the same device.
   */
  async deviceAdd(args: Record<string, unknown>): Promise<void> {
    const spec = parseDeviceAdd(this.o.registry, args);
    if (args.replace === true || args.replace === 'on' || args.replace === 'true') {
      const slot = this.find(spec.id);
      // The new back-end serves the same endpoint (and takes the reader slot once the old one is gone).
      await slot.device.replace(this.o.iommu ? behindIommu(this.o.iommu, spec, slot.index) : spec);
      return;
    }
    await this.plug(spec);
  }

  async deviceDel(id: string): Promise<void> {
    const slot = this.find(id);
    if (slot.removing) throw new QmpError('GenericError', `Device '${id}' is already in the process of unplug`);
    slot.removing = true;
    // The guest releases it (its agent sees DEVICE_NEEDS_RESET and unbinds
    // the driver, which resets the device); watchRemoval then completes.
    slot.device.requestEject();
  }

  async injectFault(args: Record<string, unknown>): Promise<Record<string, unknown>> {
    const kind = String(args.kind);
    const id = String(args.device ?? args.id ?? '');
    const slot = this.slots.find((x) => x.device?.spec.id === id);
    if (!slot?.device) throw new QmpError('GenericError', `inject-fault: device=${id}: no such device (devices: ${this.devices().map((d) => d.spec.id).join(', ') || 'none'})`);
    const dev = slot.device;
    const iommu = this.o.iommu ? (this.devices().find((d) => d.spec.id === this.o.iommu!.spec.id) ?? null) : null;
    if (isIommuFault(kind)) return injectIommuFault(kind, dev, iommu, args, FAULT_KEYS);
    switch (kind) {
      case 'iommu-kill': {
        // vmm-iommu killed with SIGKILL, named by its own id or by any device behind it; supervision restarts it over its table.
        if (!iommu) throw new QmpError('GenericError', `inject-fault: kind=iommu-kill: ${dev.kind.name} ${id} is not behind an IOMMU (the VM has no --iommu)`);
        if (dev !== iommu && endpointOf(dev.spec) === null) throw new QmpError('GenericError', `inject-fault: kind=iommu-kill: ${dev.kind.name} ${id} does not translate its DMA through ${iommu.spec.id}`);
        const pid = iommu.pid;
        iommu.process.kill('SIGKILL');
        return { device: iommu.spec.id, pid, for: id };
      }
      case 'kill': {
        const pid = dev.pid;
        dev.process.kill('SIGKILL');
        return { device: id, pid };
      }
      case 'pause': dev.process.kill('SIGSTOP'); return { device: id, pid: dev.pid };
      case 'resume': dev.process.kill('SIGCONT'); return { device: id, pid: dev.pid };
      case 'delay-calls': {
        const o = parseDeviceOptions('inject-fault delay-calls', DELAY_CALLS_OPTIONS, args, FAULT_KEYS);
        dev.delayCallsMs = Number(o.ms);
        return { device: id, ms: dev.delayCallsMs };
      }
    }
    const fault = dev.kind.faults?.[kind];
    if (!fault) {
      throw new DeviceOptionError(`inject-fault: kind=${kind}: unknown fault for ${dev.kind.name} (${[...GENERIC_FAULTS, ...(this.o.iommu ? ['iommu-kill'] : []), ...Object.keys(dev.kind.faults ?? {})].join(', ')})`);
    }
    const values = parseDeviceOptions(`inject-fault ${kind}`, fault.options, args, FAULT_KEYS);
    if (!dev.process.send(fault.message(values))) throw new QmpError('GenericError', `${dev.kind.name} ${id}: its back-end is not running`);
    return { device: id, ...values };
  }

  /** First step of a teardown: no more plugging, and every device's supervision off (VhostUserDevice.disarm). */
  disarm(): void {
    this.closed = true;
    for (const d of this.devices()) d.disarm();
  }

  /** Disarm, then close the devices one at a time in the guest's order (each stops its spare, then its serving process). */
  async close(): Promise<void> {
    this.disarm();
    const devices = this.devices();
    for (const s of this.slots) s.device = null;
    for (const d of devices) await d.close();
  }
}
