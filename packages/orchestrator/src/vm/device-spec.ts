// `--device KIND,opt=…`, its `--disk FILE,opt=…` shorthand, and QMP
// `device_add driver=KIND opt=…`, all parsed into one DeviceSpec by the
// kind's own option schema (DeviceKind.options in @vmm/core): the same
// limits and the same error wording as the device process's argv.

import { DeviceOptionError, parseDeviceOptions, splitOptionList, type DeviceKind } from '@vmm/core';
import type { DeviceSpec } from './vhost-device.ts';
import type { DeviceRegistry } from './kinds.ts';

/** Keys of device_add that are the command's, not the kind's options. */
const DEVICE_ADD_KEYS = ['driver', 'id', 'replace'];

export function checkId(kind: string, id: string): string {
  if (!/^[A-Za-z0-9_.-]{1,32}$/.test(id)) throw new DeviceOptionError(`${kind}: id=${id}: expected 1 to 32 of [A-Za-z0-9_.-]`);
  return id;
}

function build(kind: DeviceKind, raw: Record<string, unknown>, defaultId: string | undefined): DeviceSpec {
  const id = raw.id === undefined ? defaultId : String(raw.id);
  if (id === undefined) throw new DeviceOptionError(`${kind.name}: option 'id' is required`);
  const options = parseDeviceOptions(kind.name, kind.options, raw, DEVICE_ADD_KEYS);
  kind.validate?.(options);
  return { kind, id: checkId(kind.name, id), options };
}

/** One `--device KIND,opt=…,id=…` value; `index` names the default id (dev0, dev1, …). */
export function parseDeviceFlag(registry: DeviceRegistry, value: string, index: number): DeviceSpec {
  const comma = value.indexOf(',');
  const kind = registry.get(comma < 0 ? value : value.slice(0, comma));
  return build(kind, splitOptionList(comma < 0 ? '' : value.slice(comma + 1)), `dev${index}`);
}

/** `--disk FILE[,opt=…]`: `--device virtio-blk,file=FILE,…` with the default id disk0, disk1, … */
export function parseDiskFlag(registry: DeviceRegistry, value: string, index: number): DeviceSpec {
  const comma = value.indexOf(',');
  const file = comma < 0 ? value : value.slice(0, comma);
  const opts = splitOptionList(comma < 0 ? '' : value.slice(comma + 1));
  // `ro` is the --disk shorthand's old spelling of readonly.
  if ('ro' in opts) {
    opts.readonly = opts.ro!;
    delete opts.ro;
  }
  return build(registry.get('virtio-blk'), { ...opts, file }, `disk${index}`);
}

/** `--nic switch=NAME[,opt=…]` or `--nic tap=IF[,…]`: `--device virtio-net,…` with the default id net0, net1, … */
export function parseNicFlag(registry: DeviceRegistry, value: string, index: number): DeviceSpec {
  return build(registry.get('virtio-net'), splitOptionList(value), `net${index}`);
}

/** QMP device_add { driver: KIND, id, …the kind's options, replace? }. */
export function parseDeviceAdd(registry: DeviceRegistry, args: Record<string, unknown>): DeviceSpec {
  const kind = registry.get(String(args.driver ?? ''));
  // QEMU's `drive` names a disk's backing; here it is the image file.
  const raw = { ...args };
  if (raw.drive !== undefined && raw.file === undefined && kind.options.some((o) => o.name === 'file')) {
    raw.file = raw.drive;
    delete raw.drive;
  }
  return build(kind, raw, undefined);
}
