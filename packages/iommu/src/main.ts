#!/usr/bin/env node
// vmm-iommu: the virtio-iommu back-end process (virtio 1.2 §5.13), one per
// VM. It keeps domains and mappings in a table file on tmpfs (table.ts)
// that device processes map to translate DMA, serves the device over
// vhost-user, and reports the faults device processes record in the table
// on the event queue. Killed and restarted over the same table file, it
// takes the state over as it was.

import { closeSync, existsSync, ftruncateSync, fstatSync, openSync } from 'node:fs';
import { deviceUsage, DeviceOptionError, isMainModule, mmapShared, onControlMessage, parseDeviceArgv, runDeviceMain, serveVhostUser, type DeviceMain, type Logger } from '@vmm/core';
import { IommuDevice } from './device.ts';
import { IOMMU_OPTIONS } from './kind.ts';
import { IommuTable, IommuTableError, tableBytes, type TableSizes } from './table.ts';

const USAGE = deviceUsage('vmm-iommu', 'Serves a virtio-iommu device over vhost-user (virtio 1.2 §5.13); domains and mappings live in --table.', IOMMU_OPTIONS);

/** How often the faults device processes recorded are collected for the event queue. */
const FAULT_POLL_MS = 10;
/** Endpoints a table has room for. */
const MAX_ENDPOINTS = 64;

export interface IommuOptions {
  socket: string;
  table: string;
  endpoints: number[];
  bypass: boolean;
  sizes: TableSizes;
  pollUs: number;
  id: string;
  logLevel: string;
}

/** "8,16,0x18" → [8, 16, 24]; each a u32, unique. */
export function parseEndpoints(list: string): number[] {
  const out: number[] = [];
  for (const part of list.split(',').map((s) => s.trim())) {
    const n = /^(0x[0-9a-f]+|\d+)$/i.test(part) ? Number(part) : NaN;
    if (!Number.isSafeInteger(n) || n < 0 || n > 0xffff_ffff) throw new DeviceOptionError(`virtio-iommu: endpoints=${list}: '${part}' is not an endpoint id (0 to 4294967295)`);
    if (out.includes(n)) throw new DeviceOptionError(`virtio-iommu: endpoints=${list}: endpoint ${n} is listed twice`);
    out.push(n);
  }
  if (out.length > MAX_ENDPOINTS) throw new DeviceOptionError(`virtio-iommu: endpoints=${list}: ${out.length} endpoints, at most ${MAX_ENDPOINTS}`);
  return out;
}

export function parseIommuArgs(argv: string[]): IommuOptions | null {
  const f = parseDeviceArgv('virtio-iommu', IOMMU_OPTIONS, argv);
  if (f === null) return null;
  const o = f.options;
  return {
    socket: f.socket,
    table: o.table !== undefined ? String(o.table) : `${f.socket}.table`,
    endpoints: parseEndpoints(String(o.endpoints)),
    bypass: o.bypass === true,
    sizes: { maxEndpoints: MAX_ENDPOINTS, maxDomains: Number(o['max-domains']), maxMappings: Number(o['max-mappings']) },
    pollUs: Number(o['poll-us']),
    id: f.id ?? 'iommu',
    logLevel: f.logLevel,
  };
}

/**
 * Opens the table file: takes over a table a previous vmm-iommu left (same
 * endpoints), or makes a fresh one. The mapping is MAP_SHARED, so every
 * store lands in the file at once and survives this process.
 */
export function openTable(o: IommuOptions, log: Logger): IommuTable {
  const bytes = tableBytes(o.sizes);
  const existed = existsSync(o.table) && fstatSizeOf(o.table) > 0;
  const fd = openSync(o.table, existed ? 'r+' : 'w+', 0o600);
  try {
    if (existed) {
      const size = fstatSync(fd).size;
      const { table, repaired } = IommuTable.attach(mmapShared(fd, size));
      const have = table.endpointIds();
      if (have.length !== o.endpoints.length || have.some((e, i) => e !== o.endpoints[i])) {
        throw new IommuTableError(`table ${o.table} belongs to endpoints ${have.join(',')}, not ${o.endpoints.join(',')}; remove it or give another --table`);
      }
      log.warn({ table: o.table, repaired, version: table.version, stats: table.stats }, 'took over the table a previous vmm-iommu left');
      return table;
    }
    ftruncateSync(fd, bytes);
    return IommuTable.create(mmapShared(fd, bytes), o.sizes, o.endpoints, o.bypass);
  } finally {
    // The mapping keeps the file open.
    closeSync(fd);
  }
}

function fstatSizeOf(path: string): number {
  const fd = openSync(path, 'r');
  try {
    return fstatSync(fd).size;
  } finally {
    closeSync(fd);
  }
}

const IOMMU_MAIN: DeviceMain<IommuOptions> = {
  command: 'vmm-iommu',
  role: 'iommu',
  usage: USAGE,
  parse: parseIommuArgs,
  id: (o) => o.id,
  // A table that belongs to other endpoints or is not one is the operator's to fix.
  exitCode: (e) => (e instanceof IommuTableError ? 2 : 1),
  start(opts, log) {
    const table = openTable(opts, log);
    table.setWriterPid(process.pid);
    const device = new IommuDevice(table, { log, pollUs: opts.pollUs });
    const backend = serveVhostUser(device, { socketPath: opts.socket, log });
    const poll = setInterval(() => device.pollFaults(), FAULT_POLL_MS);
    // The orchestrator's control channel: a host UNMAP for inject-fault kind=unmap-race (answered once complete).
    onControlMessage((m) => {
      if (m.fault === 'unmap') return device.unmapFor(Number(m.endpoint), Number(m.iova));
      throw new Error(`unknown control message ${JSON.stringify(m)}`);
    });
    return {
      serving: { table: opts.table, endpoints: opts.endpoints, sizes: opts.sizes },
      ready: { socket: opts.socket, table: opts.table },
      vhostUser: backend,
      stop: () => {
        clearInterval(poll);
        backend.close();
      },
    };
  },
};

if (isMainModule(import.meta)) await runDeviceMain(IOMMU_MAIN);
