// `--disk FILE[,format=raw|qcow2][,readonly][,id=NAME][,queues=N][,serial=S]`
// and the equivalent device_add arguments, parsed into one typed spec.

import { ConfigError } from '@vmm/core';

export interface DiskSpec {
  id: string;
  file: string;
  format: 'raw' | 'qcow2' | undefined;
  readOnly: boolean;
  queues: number;
  serial: string | undefined;
}

export class DiskSpecError extends ConfigError {
  constructor(message: string) {
    super(message, 'ERR_DISK_SPEC');
  }
}

function checkId(id: string, what: string): string {
  if (!/^[A-Za-z0-9_.-]{1,32}$/.test(id)) throw new DiskSpecError(`${what}: id '${id}' must be 1-32 of [A-Za-z0-9_.-]`);
  return id;
}

function parseQueues(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new DiskSpecError(`${what}: queues=${v} must be 1..16`);
  return n;
}

function parseFormat(v: string, what: string): 'raw' | 'qcow2' {
  if (v !== 'raw' && v !== 'qcow2') throw new DiskSpecError(`${what}: format=${v} must be raw or qcow2`);
  return v;
}

/** Parse one --disk value; `index` names the default id (vda, vdb, …). */
export function parseDiskFlag(value: string, index: number): DiskSpec {
  const what = `--disk ${value}`;
  const [file, ...opts] = value.split(',');
  if (!file) throw new DiskSpecError(`${what}: no image file given`);
  const spec: DiskSpec = { id: `disk${index}`, file, format: undefined, readOnly: false, queues: 1, serial: undefined };
  for (const o of opts) {
    const eq = o.indexOf('=');
    const key = eq < 0 ? o : o.slice(0, eq);
    const val = eq < 0 ? '' : o.slice(eq + 1);
    switch (key) {
      case 'format': spec.format = parseFormat(val, what); break;
      case 'readonly': case 'ro': spec.readOnly = val === '' || val === 'on' || val === 'true'; break;
      case 'id': spec.id = checkId(val, what); break;
      case 'queues': spec.queues = parseQueues(val, what); break;
      case 'serial': spec.serial = val; break;
      default: throw new DiskSpecError(`${what}: unknown option '${key}' (format, readonly, id, queues, serial)`);
    }
  }
  return spec;
}

/** device_add { driver: 'virtio-blk', id, file, format?, readonly?, queues?, serial? } */
export function parseDeviceAdd(args: Record<string, unknown>): DiskSpec {
  const what = 'device_add';
  if (args.driver !== 'virtio-blk' && args.driver !== 'virtio-blk-device') {
    throw new DiskSpecError(`${what}: driver '${String(args.driver)}' is not supported (virtio-blk)`);
  }
  const file = args.file ?? args.drive;
  if (typeof file !== 'string' || file === '') throw new DiskSpecError(`${what}: 'file' (the image path) is required`);
  return {
    id: checkId(String(args.id ?? ''), what),
    file,
    format: args.format === undefined ? undefined : parseFormat(String(args.format), what),
    readOnly: args.readonly === true || args.readonly === 'on' || args.readonly === 'true',
    queues: args.queues === undefined ? 1 : parseQueues(String(args.queues), what),
    serial: args.serial === undefined ? undefined : String(args.serial),
  };
}
