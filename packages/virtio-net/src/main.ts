#!/usr/bin/env node
// vmm-net: the vhost-user-net back-end process, one per NIC. It serves the
// NetDevice model over a vhost-user socket (our orchestrator, QEMU's
// -netdev vhost-user, DPDK's virtio_user) and plugs it into a vmm-switch
// network or a host tap.

import { endpointOptions, openEndpoint, type EndpointOptions } from '@vmm/iommu';
import { DEVICE_LAUNCHER, deviceUsage, isMainModule, onControlMessage, parseDeviceArgv, runDeviceMain, serveVhostUser, type DeviceMain, type Logger } from '@vmm/core';
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatMac, type Mac } from './ctrl.ts';
import { NetDevice } from './device.ts';
import { checkNetOptions, NET_OPTIONS, NETSTATS_QUERY } from './kind.ts';
import { switchSocketPath } from './names.ts';
import { SwitchAttachment } from './switch-client.ts';
import { openTapPort } from './tap.ts';

const USAGE = deviceUsage(
  'vmm-net',
  'Serves a virtio-net device (virtio 1.2 §5.1) as a vhost-user back-end (QEMU: -netdev vhost-user,chardev=…,queues=N)\nand connects it to a vmm-switch network (--switch) or to a host tap device (--tap).',
  NET_OPTIONS,
);

export interface NetArgs {
  socket: string;
  switch: string | undefined;
  tap: string | undefined;
  mac: Mac;
  queues: number;
  mtu: number;
  /** Busy-poll window in µs (0: off). */
  busyPollUs: number;
  id: string;
  logLevel: string;
  /** Behind vmm-iommu: its table file, this NIC's endpoint id and reader slot. */
  iommu: EndpointOptions | null;
}

export function randomMac(): Mac {
  const b = crypto.getRandomValues(new Uint8Array(3));
  return 0x52_54_00 * 2 ** 24 + b[0]! * 65536 + b[1]! * 256 + b[2]!;
}

/**
 * Parse the command line with the kind's option schema (the orchestrator's
 * `--nic`, `--device virtio-net,…` and QMP device_add use the same one);
 * throws DeviceOptionError naming the bad option and value. Null for --help.
 */
export function parseNetArgs(argv: string[]): NetArgs | null {
  const f = parseDeviceArgv('virtio-net', NET_OPTIONS, argv);
  if (f === null) return null;
  const o = f.options;
  const mac = checkNetOptions(o) ?? randomMac();
  const sw = o.switch === undefined ? undefined : String(o.switch);
  const tap = o.tap === undefined ? undefined : String(o.tap);
  return { socket: f.socket, switch: sw, tap, mac, queues: Number(o.queues), mtu: Number(o.mtu), busyPollUs: Number(o['busy-poll']), id: f.id ?? 'net0', logLevel: f.logLevel, iommu: endpointOptions('virtio-net', o) };
}

const SWITCH_MAIN = fileURLToPath(new URL('./switch-main.ts', import.meta.url));

/** Start `vmm-switch --name NAME` detached from this process (its own session; logs to a file next to its socket). */
function startSwitch(name: string, log: Logger): void {
  const logFile = switchSocketPath(name).replace(/\.sock$/, '.log');
  mkdirSync(dirname(logFile), { recursive: true, mode: 0o700 });
  const fd = openSync(logFile, 'a');
  // Not this NIC's child in lifetime: no VMM_PARENT_PID (that would tie it to the orchestrator that started this NIC).
  const { VMM_PARENT_PID: _ours, ...env } = process.env;
  // Through core's launcher, as every device process: the same Node flags, malloc arena and compile cache.
  const child = spawn(DEVICE_LAUNCHER, [SWITCH_MAIN, '--name', name], { detached: true, stdio: ['ignore', fd, fd], env: { ...env, VMM_BIN_NAME: 'vmm-switch' } });
  child.unref();
  closeSync(fd);
  log.info({ switch: name, switchPid: child.pid, log: logFile }, 'started vmm-switch on demand');
}

/** Faults the orchestrator can arm over the IPC channel. */
function control(device: NetDevice, m: Record<string, unknown>): string {
  switch (m.fault) {
    case 'link-down':
      device.setLink(false);
      return 'link down';
    case 'link-up':
      device.setLink(true);
      return 'link up';
    case 'delay': {
      const ms = Number(m.ms);
      if (!(Number.isInteger(ms) && ms >= 0 && ms <= 60_000)) throw new RangeError(`delay ms=${String(m.ms)}: expected an integer from 0 to 60000`);
      device.setDelay(ms);
      return `delay ${ms} ms`;
    }
    case 'drop':
    case 'corrupt': {
      const rate = Number(m.rate);
      if (!(rate >= 0 && rate <= 1)) throw new RangeError(`${m.fault} rate=${String(m.rate)}: expected a probability from 0 to 1`);
      device.faults[m.fault] = rate;
      return `${m.fault} rate ${rate}`;
    }
    default:
      throw new RangeError(`unknown fault ${JSON.stringify(m.fault)}`);
  }
}

async function connect(a: NetArgs, device: NetDevice, log: Logger): Promise<() => void> {
  if (a.tap !== undefined) {
    const port = openTapPort(a.tap, log);
    device.attach(port);
    return () => device.attach(null);
  }
  const sock = switchSocketPath(a.switch!);
  // A named switch that dies is started again (at most every 2 s, after a random pause so NICs of one network rarely race).
  let lastStart = 0;
  const restart = (): void => {
    if (a.switch!.includes('/') || Date.now() - lastStart < 2000) return;
    lastStart = Date.now();
    setTimeout(() => startSwitch(a.switch!, log), Math.floor(Math.random() * 300)).unref();
  };
  const attach = async (): Promise<SwitchAttachment> => {
    const att = new SwitchAttachment({ socketPath: sock, name: a.id, mac: formatMac(a.mac), log, onPort: (p) => device.attach(p), onUnreachable: restart });
    await att.start();
    return att;
  };
  let att: SwitchAttachment;
  try {
    att = await attach();
  } catch (e) {
    // A switch named but not running is started on demand, on its own (it outlives this NIC and its VM).
    if (a.switch!.includes('/')) throw e;
    startSwitch(a.switch!, log);
    const t0 = Date.now();
    for (;;) {
      await new Promise((r) => setTimeout(r, 100));
      try {
        att = await attach();
        break;
      } catch (e2) {
        if (Date.now() - t0 > 10_000) throw new Error(`started vmm-switch ${a.switch} but it did not answer within 10 s: ${(e2 as Error).message}`, { cause: e2 });
      }
    }
  }
  return () => att.close();
}

const NET_MAIN: DeviceMain<NetArgs> = {
  command: 'vmm-net',
  role: 'net',
  usage: USAGE,
  parse: parseNetArgs,
  id: (a) => a.id,
  async start(a, log) {
    // First: a table that cannot be used is a configuration error before anything is connected.
    const dma = a.iommu ? openEndpoint(a.iommu) : undefined;
    const device = new NetDevice({ mac: a.mac, queuePairs: a.queues, mtu: a.mtu, busyPollUs: a.busyPollUs, log });
    const disconnect = await connect(a, device, log);
    // The orchestrator's control channel: the counters (query-nic-stats) and fault injection.
    onControlMessage((m) => {
      if (m.query === NETSTATS_QUERY.query) return { ...device.stats, link: device.link, delayedFrames: device.delayedFrames, ...device.queueState };
      try {
        log.warn({ fault: m }, control(device, m));
      } catch (e) {
        log.error({ fault: m, err: (e as Error).message }, 'bad fault-injection command');
      }
      return undefined;
    });
    const backend = serveVhostUser(device, { socketPath: a.socket, log, ...(dma ? { dma } : {}) });
    return {
      serving: { mac: formatMac(a.mac), queues: a.queues, mtu: a.mtu, busyPollUs: a.busyPollUs, switch: a.switch, tap: a.tap, iommuEndpoint: a.iommu?.endpoint },
      ready: { socket: a.socket, mac: formatMac(a.mac) },
      vhostUser: backend,
      stopping: () => ({ stats: device.stats }),
      stop: () => {
        backend.close();
        disconnect();
      },
    };
  },
};

if (isMainModule(import.meta)) await runDeviceMain(NET_MAIN);
