// What the management API can ask of a running VM. The orchestrator's VM
// object implements it; the QMP and WebSocket servers only translate.

import type { EngineKind, HartEngineInfo } from '@vmm/vcpu';
import type { BlockDeviceStats } from '@vmm/virtio-blk/kind';

export type RunStatus = 'prelaunch' | 'running' | 'paused' | 'shutdown';

export interface ProcessInfo {
  pid: number;
  role: string;
  id: string;
  restarts: number;
  /** VmRSS, guest RAM touched through the shared memfd mapping included. */
  rssBytes: number | null;
  /** Resident pages of memfd mappings (guest RAM, inflight region): the guest's memory, not the process's. */
  sharedMemfdBytes: number | null;
  /** rssBytes − sharedMemfdBytes: what the process itself costs. */
  ownBytes: number | null;
  state: 'running' | 'restarting' | 'stopped' | 'failed';
  /** The vmm process: each hart's engine and its translator's code cache. */
  harts?: HartEngineInfo[];
}

/** One hart as query-cpus-fast describes it. */
export interface CpuInfo {
  /** The hart id (QEMU's cpu-index and core-id on riscv virt). */
  index: number;
  /** The OS thread that runs it (the Linux tid of its worker thread). */
  threadId: number;
  /** What executes its guest code (QMP: x-engine, an extension of QEMU's reply). */
  engine: EngineKind;
}

/** One disk's I/O counters, read from its vmm-blk process. */
export interface BlockStatsInfo {
  device: string;
  stats: BlockDeviceStats;
}

export interface VmControl {
  /** The VM's name (`vmm run --name`, QEMU's -name), or null. */
  name(): string | null;
  status(): RunStatus;
  stop(): Promise<void>;
  cont(): Promise<void>;
  reset(): Promise<void>;
  powerdown(): Promise<void>;
  quit(): Promise<void>;
  /**
   * QMP queries the device kinds add, answered by queryDevices: DeviceKind.query
   * (`query-block` for disks, from the options) and DeviceKind.processQuery
   * (`query-nic-stats`, asked of each device's process).
   */
  deviceQueries(): readonly string[];
  /** One row per device of the kinds whose query `command` is. */
  queryDevices(command: string): Record<string, unknown>[] | Promise<Record<string, unknown>[]>;
  queryProcesses(): ProcessInfo[];
  queryCpus(): CpuInfo[];
  queryBlockstats(): Promise<BlockStatsInfo[]>;
  deviceAdd(args: Record<string, unknown>): Promise<void>;
  deviceDel(id: string): Promise<void>;
  injectFault(args: Record<string, unknown>): Promise<Record<string, unknown>>;
}

/** A QMP error: `class` as QEMU names them (qapi/error.json). */
export class QmpError extends Error {
  readonly code = 'ERR_QMP';
  readonly errorClass: 'GenericError' | 'CommandNotFound' | 'DeviceNotFound';
  constructor(errorClass: QmpError['errorClass'], desc: string) {
    super(desc);
    this.errorClass = errorClass;
  }
}
