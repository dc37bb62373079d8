#!/usr/bin/env node
// vmm-switch: one process per network. NIC processes (vmm-net) attach to
// its unix socket and get a shared-memory link; the switch outlives any VM.

import { existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { closeFd, ConfigError, isMainModule, LOG_LEVELS, runDeviceMain, unixConnect, type DeviceMain } from '@vmm/core';
import { SWITCH_NAME, switchSocketPath } from './names.ts';
import { DEFAULT_RING_BYTES, minRingBytes } from './ring.ts';
import { Switch, SWITCH_FRAME_CAPACITY } from './switch.ts';

const USAGE = `usage: vmm-switch --name NAME [options]

An L2 learning switch for vmm-net NICs (MAC learning with ageing, flooding of
unknown and broadcast frames, per-port counters). Frames move through
shared-memory rings; the socket carries only attach requests.

  --name NAME        network name (letters, digits, _ . -); NICs use --switch NAME
  --socket PATH      socket to listen on (default: $VMM_RUN_DIR or $TMPDIR/vmm-UID, switch-NAME.sock)
  --ageing-time S    seconds before a silent address is forgotten (default 300)
  --ring-kib N       each port's ring per direction, KiB, a power of 2 (default ${DEFAULT_RING_BYTES >> 10};
                     a 64-byte frame takes 128 bytes, a 64 KiB GSO frame 64 KiB)
  --busy-poll US     after forwarding, keep polling the rings for up to US µs
                     before sleeping on doorbells (default 0: off; costs CPU)
  --log-level L      ${LOG_LEVELS.join('|')} (default info)
  --help             show this text
`;

export interface SwitchArgs {
  name: string;
  socket: string;
  ageingMs: number;
  ringBytes: number;
  busyPollUs: number;
  logLevel: string;
}

export function parseSwitchArgs(argv: string[]): SwitchArgs | null {
  let v;
  try {
    v = parseArgs({
      args: argv, strict: true, allowPositionals: false,
      options: { name: { type: 'string' }, socket: { type: 'string' }, 'ageing-time': { type: 'string' }, 'ring-kib': { type: 'string' }, 'busy-poll': { type: 'string' }, 'log-level': { type: 'string' }, help: { type: 'boolean' } },
    }).values;
  } catch (e) {
    throw new ConfigError((e as Error).message, 'ERR_SWITCH_ARGS');
  }
  if (v.help) return null;
  if (!v.name) throw new ConfigError('--name NAME is required', 'ERR_SWITCH_ARGS');
  if (!SWITCH_NAME.test(v.name)) throw new ConfigError(`--name ${v.name}: use up to 32 letters, digits, _ . -`, 'ERR_SWITCH_ARGS');
  const ageing = v['ageing-time'] === undefined ? 300 : Number(v['ageing-time']);
  if (!Number.isFinite(ageing) || ageing <= 0) throw new ConfigError(`--ageing-time ${v['ageing-time']}: expected seconds > 0`, 'ERR_SWITCH_ARGS');
  const minKib = minRingBytes(SWITCH_FRAME_CAPACITY) >> 10;
  const ringKib = v['ring-kib'] === undefined ? DEFAULT_RING_BYTES >> 10 : Number(v['ring-kib']);
  if (!Number.isInteger(ringKib) || ringKib < minKib || ringKib > 1 << 20 || (ringKib & (ringKib - 1)) !== 0) {
    throw new ConfigError(`--ring-kib ${v['ring-kib']}: expected a power of 2 from ${minKib} (two of the largest frames) to ${1 << 20}`, 'ERR_SWITCH_ARGS');
  }
  const busyPollUs = v['busy-poll'] === undefined ? 0 : Number(v['busy-poll']);
  if (!Number.isInteger(busyPollUs) || busyPollUs < 0 || busyPollUs > 1_000_000) throw new ConfigError(`--busy-poll ${v['busy-poll']}: expected µs from 0 (off) to 1000000`, 'ERR_SWITCH_ARGS');
  const logLevel = v['log-level'] ?? process.env.VMM_LOG_LEVEL ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) throw new ConfigError(`--log-level ${logLevel}: expected one of ${LOG_LEVELS.join(', ')}`, 'ERR_SWITCH_ARGS');
  return { name: v.name, socket: v.socket ?? switchSocketPath(v.name), ageingMs: ageing * 1000, ringBytes: ringKib << 10, busyPollUs, logLevel };
}

const SWITCH_MAIN: DeviceMain<SwitchArgs> = {
  command: 'vmm-switch',
  role: 'switch',
  usage: USAGE,
  parse: parseSwitchArgs,
  id: (a) => a.name,
  start(a, log) {
    mkdirSync(dirname(a.socket), { recursive: true, mode: 0o700 });
    // Starting a switch that already answers is not an error: it is the one network (NICs start switches on demand).
    if (existsSync(a.socket)) {
      try {
        closeFd(unixConnect(a.socket));
        log.info({ socket: a.socket }, 'a vmm-switch already serves this network; leaving it be');
        return null;
      } catch {
        // a stale socket: replaced below
      }
    }
    const sw = new Switch({ socketPath: a.socket, name: a.name, ageingMs: a.ageingMs, ringBytes: a.ringBytes, busyPollUs: a.busyPollUs, log });
    try {
      sw.listen();
    } catch (e) {
      throw new Error(`cannot listen on ${a.socket}: ${(e as Error).message}`, { cause: e });
    }
    sw.onTakenOver = () => {
      log.warn({ socket: a.socket }, 'another vmm-switch took over this socket; exiting');
      sw.close();
      process.exit(0);
    };
    return { serving: { socket: a.socket, ringBytes: a.ringBytes, busyPollUs: a.busyPollUs }, ready: { socket: a.socket }, stop: () => sw.close() };
  },
};

if (isMainModule(import.meta)) await runDeviceMain(SWITCH_MAIN);
