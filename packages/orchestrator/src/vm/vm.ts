// A running VM as the orchestrator sees it: the machine (harts, platform)
// plus one device process per disk, and the VmControl the management API
// drives. Disks sit in the DTB's virtio-mmio slots: the ones given at boot
// are plugged before the harts run; device_add plugs an empty slot at run
// time (the guest's helper rebinds the slot), device_del asks the guest to
// release the device first.

import { readFileSync } from 'node:fs';
import type { Logger } from '@vmm/core';
import { IRQ, MMIO, RAM_BASE, STOPPED_BY_HOST, VirtioMmioState, WASM_RAM_OFFSET, type Machine, type MachineExit } from '@vmm/vcpu';
import { QmpError, type BlockInfo, type ProcessInfo, type RunStatus, type VmControl } from '../api/control.ts';
import { failRequestCount } from '@vmm/virtio-blk';
import { parseDeviceAdd, type DiskSpec } from './disk-spec.ts';
import { VhostBlkDevice } from './vhost-blk.ts';

export interface VmOptions {
  runDir: string;
  log: Logger;
  logLevel: string;
  /** Where events go (the API hub). */
  emit: (event: string, data: Record<string, unknown>) => void;
}

interface Slot {
  index: number;
  transport: VirtioMmioState;
  device: VhostBlkDevice | null;
  removing: boolean;
}

function rssBytes(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

function shutdownEvent(exit: MachineExit): { guest: boolean; reason: string } {
  if (exit.reason === 'error') return { guest: false, reason: 'host-error' };
  if (exit.message === STOPPED_BY_HOST) return { guest: false, reason: 'host-signal' };
  return { guest: true, reason: exit.reason === 'reset' ? 'guest-reset' : 'guest-shutdown' };
}

export class Vm implements VmControl {
  readonly machine: Machine;
  private readonly opts: VmOptions;
  private readonly slots: Slot[];
  private paused = false;
  private shutdown = false;
  /** SHUTDOWN has gone out (quit sends its own, before the teardown). */
  private shutdownAnnounced = false;
  private readonly ram: DataView;

  constructor(machine: Machine, opts: VmOptions) {
    this.machine = machine;
    this.opts = opts;
    this.ram = new DataView(machine.memory.buffer as ArrayBuffer, WASM_RAM_OFFSET, machine.platformState.memBytes);
    this.slots = machine.platformState.virtio.map((buf, index) => ({ index, transport: new VirtioMmioState(buf), device: null, removing: false }));
    void machine.exited.then((exit) => {
      // QMP SHUTDOWN for every end but quit (which announces itself), with QEMU's reasons.
      if (!this.shutdownAnnounced) this.opts.emit('SHUTDOWN', shutdownEvent(exit));
      this.shutdownAnnounced = true;
      this.shutdown = true;
    });
    // A system reset (ours or the guest's) reset every transport; wait until each back-end has stopped its rings.
    machine.onReset(async (cause) => {
      await Promise.all(this.disks().map((d) => d.settle()));
      this.opts.emit('RESET', { guest: cause === 'guest', reason: cause === 'guest' ? 'guest-reset' : 'host-qmp-system-reset' });
    });
  }

  /** Plug the boot disks; call while the harts are paused so the guest finds them at probe time. */
  async addBootDisks(specs: DiskSpec[]): Promise<void> {
    if (specs.length > this.slots.length) throw new QmpError('GenericError', `${specs.length} disks, but the machine has ${this.slots.length} virtio-mmio slots`);
    // Linux probes the DTB's virtio_mmio nodes in the order QEMU lists them
    // (highest address first), so the first disk goes to the last slot: vda.
    for (const spec of specs) await this.plug(spec);
  }

  private freeSlot(): Slot {
    for (let i = this.slots.length - 1; i >= 0; i--) {
      const s = this.slots[i]!;
      if (!s.device && !s.transport.present) return s;
    }
    throw new QmpError('GenericError', `no free virtio-mmio slot (all ${this.slots.length} in use)`);
  }

  private findDisk(id: string): Slot {
    const s = this.slots.find((x) => x.device?.spec.id === id);
    if (!s) throw new QmpError('DeviceNotFound', `Device '${id}' not found`);
    return s;
  }

  private async plug(spec: DiskSpec): Promise<Slot> {
    if (this.slots.some((x) => x.device?.spec.id === spec.id)) throw new QmpError('GenericError', `Duplicate device ID '${spec.id}'`);
    const slot = this.freeSlot();
    const plic = this.machine.platform.plic;
    const source = IRQ.virtioFirst + slot.index;
    slot.device = await VhostBlkDevice.start(spec, {
      ramFd: this.machine.ramFd,
      ramBase: RAM_BASE,
      memBytes: this.machine.platformState.memBytes,
      transport: slot.transport,
      irq: (level) => plic.setLevel(source, level),
      readGuestU16: (gpa) => this.ram.getUint16(Number(gpa) - RAM_BASE, true),
      runDir: this.opts.runDir,
      log: this.opts.log,
      logLevel: this.opts.logLevel,
      emit: this.opts.emit,
    });
    this.watchRemoval(slot);
    this.opts.log.info({ device: spec.id, slot: slot.index, mmio: `0x${(MMIO.virtio.base + slot.index * MMIO.virtio.size).toString(16)}` }, 'disk plugged');
    return slot;
  }

  /** After device_del: once the guest has reset the device (driver unbound), take it out. */
  private watchRemoval(slot: Slot): void {
    const { array, index } = slot.transport.changeCell();
    const loop = async (): Promise<void> => {
      let seen = Atomics.load(array, index);
      const resets0 = slot.transport.resets;
      while (slot.device) {
        if (slot.removing && (slot.transport.resets !== resets0 || slot.transport.status === 0)) {
          const id = slot.device.spec.id;
          const dev = slot.device;
          slot.device = null;
          slot.removing = false;
          await dev.close();
          this.opts.emit('DEVICE_DELETED', { device: id, path: `/machine/peripheral/${id}` });
          return;
        }
        const w = Atomics.waitAsync(array, index, seen, 1000);
        if (w.async) await w.value;
        seen = Atomics.load(array, index);
      }
    };
    void loop();
  }

  status(): RunStatus {
    if (this.shutdown) return 'shutdown';
    return this.paused ? 'paused' : 'running';
  }

  async stop(): Promise<void> {
    if (this.shutdown) throw new QmpError('GenericError', 'the VM has shut down');
    this.machine.pause();
    if (!this.paused) this.opts.emit('STOP', {});
    this.paused = true;
  }

  async cont(): Promise<void> {
    if (this.shutdown) throw new QmpError('GenericError', 'the VM has shut down');
    this.machine.resume();
    if (this.paused) this.opts.emit('RESUME', {});
    this.paused = false;
  }

  async reset(): Promise<void> {
    if (this.shutdown) throw new QmpError('GenericError', 'the VM has shut down');
    await this.machine.reset();
  }

  /** Press the power button (QMP system_powerdown): the guest kit's agent powers the guest off; other guests may ignore it, as on QEMU. */
  async powerdown(): Promise<void> {
    if (this.shutdown) throw new QmpError('GenericError', 'the VM has shut down');
    this.machine.platform.power.press();
    this.opts.emit('POWERDOWN', {});
  }

  /**
   * QMP quit: as QEMU, the client gets its {"return": {}} first, then the
   * SHUTDOWN event and the teardown (which closes every QMP connection).
   */
  async quit(): Promise<void> {
    if (this.shutdown) return;
    this.shutdown = true;
    this.shutdownAnnounced = true;
    setImmediate(() => {
      this.opts.emit('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
      void this.close();
    });
  }

  /**
   * Tear the VM down, in this order: disarm every disk's supervision (an exit
   * from now on is the one we ask for), stop the harts, then stop each disk's
   * processes one disk at a time in the guest's order (vda first); each
   * process logs one info line as it goes. Idempotent: quit, a signal and
   * the machine's own exit may all ask for it.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.shutdown = true;
      const disks = this.disks();
      for (const d of disks) d.disarm();
      await this.machine.stop();
      for (const s of this.slots) s.device = null;
      for (const d of disks) await d.close();
    })();
    return this.closing;
  }
  private closing: Promise<void> | null = null;

  queryBlock(): BlockInfo[] {
    return this.disks().map((d) => ({ device: d.spec.id, file: d.spec.file, format: d.spec.format ?? 'raw', readOnly: d.spec.readOnly }));
  }

  /** Disks in the order the guest names them (slots fill from the top: vda is the highest slot). */
  disks(): VhostBlkDevice[] {
    return [...this.slots].reverse().flatMap((s) => (s.device ? [s.device] : []));
  }

  queryProcesses(): ProcessInfo[] {
    const me: ProcessInfo = { pid: process.pid, role: 'vmm', id: 'orchestrator+machine', restarts: 0, rssBytes: rssBytes(process.pid), state: this.shutdown ? 'stopped' : 'running' };
    return [me, ...this.disks().map((d): ProcessInfo => ({
      pid: d.pid ?? -1,
      role: 'blk',
      id: d.spec.id,
      restarts: d.restarts,
      rssBytes: rssBytes(d.pid),
      state: d.state === 'starting' ? 'running' : d.state,
    }))];
  }

  /**
   * device_add driver=virtio-blk id=ID file=F [format=…] [readonly=…]: a new
   * disk in a free slot. With replace=true and the id of an existing disk:
   * a new back-end process (same or new image) behind the same device.
   */
  async deviceAdd(args: Record<string, unknown>): Promise<void> {
    const spec = parseDeviceAdd(args);
    if (args.replace === true || args.replace === 'on' || args.replace === 'true') {
      await this.findDisk(spec.id).device!.replace(spec);
      return;
    }
    await this.plug(spec);
  }

  async deviceDel(id: string): Promise<void> {
    const slot = this.findDisk(id);
    if (slot.removing) throw new QmpError('GenericError', `Device '${id}' is already in the process of unplug`);
    slot.removing = true;
    // The guest releases it (its helper sees the capacity drop to 0 and
    // unbinds the driver, which resets the device); watchRemoval then completes.
    slot.device!.requestEject();
  }

  private control(dev: VhostBlkDevice, message: Record<string, unknown>): void {
    if (!dev.process.send(message)) throw new QmpError('GenericError', `disk ${dev.spec.id}: its back-end is not running`);
  }

  async injectFault(args: Record<string, unknown>): Promise<Record<string, unknown>> {
    const kind = String(args.kind);
    const id = String(args.device ?? args.id ?? '');
    const dev = this.findDisk(id).device!;
    switch (kind) {
      case 'kill': {
        const pid = dev.pid;
        dev.process.kill('SIGKILL');
        return { device: id, pid };
      }
      case 'pause': dev.process.kill('SIGSTOP'); return { device: id, pid: dev.pid };
      case 'resume': dev.process.kill('SIGCONT'); return { device: id, pid: dev.pid };
      case 'delay-calls': {
        const ms = Number(args.ms ?? 0);
        if (!Number.isFinite(ms) || ms < 0 || ms > 60_000) throw new QmpError('GenericError', `inject-fault delay-calls: ms=${String(args.ms)} must be 0..60000`);
        dev.delayCallsMs = ms;
        return { device: id, ms };
      }
      case 'fail-requests': {
        let count: number;
        try {
          count = failRequestCount(args.count ?? 1);
        } catch (e) {
          throw new QmpError('GenericError', `inject-fault ${(e as Error).message}`);
        }
        this.control(dev, { fault: 'fail-requests', count });
        return { device: id, count };
      }
      case 'enospc': {
        const on = !(args.on === false || args.on === 'off' || args.on === 'false');
        this.control(dev, { fault: 'enospc', on });
        return { device: id, on };
      }
      default:
        throw new QmpError('GenericError', `inject-fault: unknown kind '${kind}' (kill, pause, resume, delay-calls, fail-requests, enospc)`);
    }
  }
}
