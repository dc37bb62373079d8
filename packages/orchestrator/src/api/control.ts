// What the management API can ask of a running VM. The orchestrator's VM
// object implements it; the QMP and WebSocket servers only translate.

import type { HartEngineInfo } from '@vmm/vcpu';

export type RunStatus = 'prelaunch' | 'running' | 'paused' | 'shutdown';

export interface BlockInfo {
  device: string;
  file: string;
  format: 'raw' | 'qcow2';
  readOnly: boolean;
}

export interface ProcessInfo {
  pid: number;
  role: string;
  id: string;
  restarts: number;
  rssBytes: number | null;
  state: 'running' | 'restarting' | 'stopped' | 'failed';
  /** The vmm process: each hart's engine and its translator's code cache. */
  harts?: HartEngineInfo[];
}

export interface VmControl {
  status(): RunStatus;
  stop(): Promise<void>;
  cont(): Promise<void>;
  reset(): Promise<void>;
  powerdown(): Promise<void>;
  quit(): Promise<void>;
  queryBlock(): BlockInfo[];
  queryProcesses(): ProcessInfo[];
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
