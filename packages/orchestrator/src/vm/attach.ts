// Join a started machine with its devices and management API: what `vmm run`
// does between starting the machine and letting its harts run.

import { mkdtempSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '@vmm/core';
import type { Machine } from '@vmm/vcpu';
import { makeEvent } from '../api/qmp.ts';
import { ApiHub, createToken } from '../api/servers.ts';
import type { IommuPlan } from './iommu.ts';
import type { DeviceSpec } from './vhost-device.ts';
import { Vm } from './vm.ts';

export interface AttachOptions {
  /** Boot devices, any kind (`--disk`, `--device`). */
  devices: DeviceSpec[];
  /** WebSocket API port on 127.0.0.1 (0 = any free port), or null for none. */
  apiPort: number | null;
  /** QMP unix socket path, or null. */
  qmpPath: string | null;
  /** Where the API token is written (default ~/.cache/vmm/api-token, mode 0600). */
  tokenPath?: string;
  log: Logger;
  logLevel: string;
  /** Told the token and port, for the user (stderr). */
  announce: (line: string) => void;
  /** The VM's name (QMP query-name), or null. */
  name?: string | null;
  /** An IOMMU (`--iommu`): plugged first, in the top slot; every device after it is its endpoint. */
  iommu?: IommuPlan | null;
}

export interface AttachedVm {
  vm: Vm;
  hub: ApiHub;
  apiPort: number | null;
  close(): Promise<void>;
}

/** Plug the devices (harts paused meanwhile, so the guest finds them at probe time) and start the API servers. */
export async function attachVm(machine: Machine, o: AttachOptions): Promise<AttachedVm> {
  const runDir = mkdtempSync(join(tmpdir(), 'vmm-'));
  let hub: ApiHub | null = null;
  const vm = new Vm(machine, {
    runDir,
    log: o.log,
    logLevel: o.logLevel,
    name: o.name ?? null,
    iommu: o.iommu ?? null,
    emit: (event, data) => {
      // Nested: event data has keys of its own (device, pid) that must not repeat the logger's.
      o.log.info({ event, data }, 'event');
      hub?.emit(makeEvent(event, data));
    },
  });
  hub = new ApiHub(vm, o.log);
  const cleanup = async (): Promise<void> => {
    await hub.close();
    await vm.close();
    rmSync(runDir, { recursive: true, force: true });
  };
  try {
    machine.pause();
    await vm.addBootDevices(o.iommu ? [o.iommu.spec, ...o.devices] : o.devices);
    let apiPort: number | null = null;
    if (o.qmpPath !== null) {
      await hub.listenQmp(o.qmpPath);
      o.announce(`vmm: QMP on ${o.qmpPath}`);
    }
    if (o.apiPort !== null) {
      const tokenPath = o.tokenPath ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'vmm', 'api-token');
      const token = createToken(tokenPath);
      apiPort = await hub.listenWebSocket(o.apiPort, token);
      o.announce(`vmm: management API on ws://127.0.0.1:${apiPort}/ token ${token} (also in ${tokenPath})`);
    }
    machine.resume();
    return { vm, hub, apiPort, close: cleanup };
  } catch (e) {
    await cleanup().catch(() => {});
    throw e;
  }
}
