// A running VM as the orchestrator sees it: the machine (harts, platform)
// plus one device process per device (any registered kind) in the DTB's
// virtio-mmio slots (slots.ts), and the VmControl the management API drives.
// Devices given at boot are plugged before the harts run; device_add plugs
// an empty slot at run time (the guest's helper rebinds the slot), device_del
// asks the guest to release the device first.

import { processMemory, type Logger } from '@vmm/core';
import { IRQ, MMIO, RAM_BASE, STOPPED_BY_HOST, VirtioMmioState, WASM_RAM_OFFSET, type Machine, type MachineExit } from '@vmm/vcpu';
import { QmpError, type BlockStatsInfo, type CpuInfo, type ProcessInfo, type RunStatus, type VmControl } from '../api/control.ts';
import type { QmpEventName } from '../api/qmp.ts';
import type { BlockDeviceStats } from '@vmm/virtio-blk/kind';
import { hartThreads } from './cpus.ts';
import type { IommuPlan } from './iommu.ts';
import { DeviceRegistry } from './kinds.ts';
import { DeviceSlots } from './slots.ts';
import type { DeviceSpec, VhostUserDevice } from './vhost-device.ts';

export interface VmOptions {
  runDir: string;
  log: Logger;
  logLevel: string;
  /** Where events go (the API hub). */
  emit: (event: QmpEventName, data: Record<string, unknown>) => void;
  /** The VM's name (`--name`), or null. */
  name?: string | null;
  /** The device kinds device_add accepts (default: every registered kind). */
  registry?: DeviceRegistry;
  /** The VM's IOMMU (`--iommu`), whose endpoints every later device joins. */
  iommu?: IommuPlan | null;
}

/** RSS of a process with guest-RAM (memfd) pages counted apart (ProcessInfo's three memory fields). */
function memoryInfo(pid: number | undefined): Pick<ProcessInfo, 'rssBytes' | 'sharedMemfdBytes' | 'ownBytes'> {
  const m = processMemory(pid);
  return { rssBytes: m?.rssBytes ?? null, sharedMemfdBytes: m?.sharedMemfdBytes ?? null, ownBytes: m?.ownBytes ?? null };
}

function shutdownEvent(exit: MachineExit): { guest: boolean; reason: string } {
  if (exit.reason === 'error') return { guest: false, reason: 'host-error' };
  if (exit.message === STOPPED_BY_HOST) return { guest: false, reason: 'host-signal' };
  return { guest: true, reason: exit.reason === 'reset' ? 'guest-reset' : 'guest-shutdown' };
}

export class Vm implements VmControl {
  readonly machine: Machine;
  private readonly opts: VmOptions;
  private readonly slots: DeviceSlots;
  private paused = false;
  private shutdown = false;
  /** SHUTDOWN has gone out (quit sends its own, before the teardown). */
  private shutdownAnnounced = false;
  private readonly ram: DataView;

  constructor(machine: Machine, opts: VmOptions) {
    this.machine = machine;
    this.opts = opts;
    this.ram = new DataView(machine.memory.buffer as ArrayBuffer, WASM_RAM_OFFSET, machine.platformState.memBytes);
    const plic = machine.platform.plic;
    this.slots = new DeviceSlots({
      transports: machine.platformState.virtio.map((buf) => new VirtioMmioState(buf)),
      irq: (index) => (level) => plic.setLevel(IRQ.virtioFirst + index, level),
      ramFd: machine.ramFd,
      ramBase: RAM_BASE,
      memBytes: machine.platformState.memBytes,
      readGuestU16: (gpa) => this.ram.getUint16(Number(gpa) - RAM_BASE, true),
      runDir: opts.runDir,
      log: opts.log,
      logLevel: opts.logLevel,
      emit: opts.emit,
      registry: opts.registry ?? new DeviceRegistry(),
      describeSlot: (index) => `0x${(MMIO.virtio.base + index * MMIO.virtio.size).toString(16)}`,
      iommu: opts.iommu ?? null,
    });
    void machine.exited.then((exit) => {
      // QMP SHUTDOWN for every end but quit (which announces itself), with QEMU's reasons.
      if (!this.shutdownAnnounced) this.opts.emit('SHUTDOWN', shutdownEvent(exit));
      this.shutdownAnnounced = true;
      this.shutdown = true;
    });
    // A system reset (ours or the guest's) reset every transport; wait until each back-end has stopped its rings.
    machine.onReset(async (cause) => {
      await this.slots.settle();
      this.opts.emit('RESET', { guest: cause === 'guest', reason: cause === 'guest' ? 'guest-reset' : 'host-qmp-system-reset' });
    });
  }

  /** Plug the boot devices; call while the harts are paused so the guest finds them at probe time. */
  async addBootDevices(specs: DeviceSpec[]): Promise<void> {
    await this.slots.addBootDevices(specs);
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
   * Tear the VM down, in this order: disarm every device's supervision (an
   * exit from now on is the one we ask for), stop the harts, then stop each
   * device's processes one device at a time in the guest's order (vda
   * first); each process logs one info line as it goes. Idempotent: quit, a
   * signal and the machine's own exit may all ask for it.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.shutdown = true;
      this.slots.disarm();
      await this.machine.stop();
      await this.slots.close();
    })();
    return this.closing;
  }
  private closing: Promise<void> | null = null;

  deviceQueries(): readonly string[] {
    return [...new Set(this.slots.registry.kinds.flatMap((k) => [k.query?.command ?? [], k.processQuery?.command ?? []].flat()))];
  }

  /** A kind's query (rows from the options) or its process query (`{device, stats}` rows, each from the device's process). */
  queryDevices(command: string): Record<string, unknown>[] | Promise<Record<string, unknown>[]> {
    if (!this.slots.registry.kinds.some((k) => k.processQuery?.command === command)) return this.slots.query(command);
    return this.slots.processQuery(command).then((rows) => rows.map((r) => ({ device: r.id, stats: r.answer })));
  }

  /** Every device, of any kind, in the order the guest names them (slots fill from the top: vda is the highest slot). */
  devices(): VhostUserDevice[] {
    return this.slots.devices();
  }

  name(): string | null {
    return this.opts.name ?? null;
  }

  /** The harts run in this process's worker threads (the machine process is the vmm process today). */
  queryCpus(): CpuInfo[] {
    const engines = this.machine.engineInfo();
    return hartThreads(process.pid, this.machine.platformState.harts).map((c) => ({ ...c, engine: engines[c.index]!.engine }));
  }

  /** Each disk's I/O counters, asked of its vmm-blk process (blkKind.processQuery). */
  async queryBlockstats(): Promise<BlockStatsInfo[]> {
    return (await this.slots.processQuery('query-blockstats')).map((r) => ({ device: r.id, stats: r.answer as BlockDeviceStats }));
  }

  queryProcesses(): ProcessInfo[] {
    const me: ProcessInfo = { pid: process.pid, role: 'vmm', id: 'orchestrator+machine', restarts: 0, ...memoryInfo(process.pid), state: this.shutdown ? 'stopped' : 'running', harts: this.machine.engineInfo() };
    return [me, ...this.slots.processes(memoryInfo)];
  }

  /** device_add driver=KIND id=ID opt=… (any registered kind); replace=true swaps an existing device's back-end. */
  async deviceAdd(args: Record<string, unknown>): Promise<void> {
    if (this.shutdown) throw new QmpError('GenericError', 'the VM has shut down');
    await this.slots.deviceAdd(args);
  }

  async deviceDel(id: string): Promise<void> {
    await this.slots.deviceDel(id);
  }

  async injectFault(args: Record<string, unknown>): Promise<Record<string, unknown>> {
    return this.slots.injectFault(args);
  }
}
