#!/usr/bin/env node
// vmm-net: the vhost-user-net back-end process, one per NIC. It serves the
// NetDevice model over a vhost-user socket (our orchestrator, QEMU's
// -netdev vhost-user, DPDK's virtio_user) and plugs it into a vmm-switch
// network or a host tap.

import { parseArgs } from 'node:util';
import { ConfigError, createLogger, installDeviceProcessSignals, onControlMessage, reportReady, VhostUserBackend, type Logger } from '@vmm/core';
import { formatMac, isMulticast, parseMac, type Mac } from './ctrl.ts';
import { NetDevice } from './device.ts';
import { LOG_LEVELS, SWITCH_NAME, switchSocketPath } from './names.ts';
import { MAX_QUEUE_PAIRS } from './spec.ts';
import { SwitchAttachment } from './switch-client.ts';
import { openTapPort } from './tap.ts';

const USAGE = `usage: vmm-net --socket PATH (--switch NAME | --tap IFNAME) [options]

Serves a virtio-net device (virtio 1.2 §5.1) as a vhost-user back-end
(QEMU: -netdev vhost-user,chardev=…,queues=N) and connects it to a vmm-switch
network or to a host tap device.

  --socket PATH      vhost-user unix socket to listen on (replaced if stale)
  --switch NAME      attach to the vmm-switch NAME (or the switch socket at a PATH); reconnects if it restarts
  --tap IFNAME       use the host tap IFNAME (created if missing; needs CAP_NET_ADMIN)
  --mac MAC          the NIC's address (default 52:54:00 and 3 random octets)
  --queues N         queue pairs, 1..${MAX_QUEUE_PAIRS} (default 1; more offers VIRTIO_NET_F_MQ)
  --mtu N            MTU offered in config space, 68..65535 (default 1500)
  --id ID            device id in the logs (default net0)
  --log-level L      ${LOG_LEVELS.join('|')} (default info)
  --help             show this text
`;

export interface NetArgs {
  socket: string;
  switch: string | undefined;
  tap: string | undefined;
  mac: Mac;
  queues: number;
  mtu: number;
  id: string;
  logLevel: string;
}

const fail = (m: string): never => {
  throw new ConfigError(m, 'ERR_NET_ARGS');
};

export function randomMac(): Mac {
  const b = crypto.getRandomValues(new Uint8Array(3));
  return 0x52_54_00 * 2 ** 24 + b[0]! * 65536 + b[1]! * 256 + b[2]!;
}

/** Parse the command line; throws ConfigError naming the bad flag or value. Returns null for --help. */
export function parseNetArgs(argv: string[]): NetArgs | null {
  let v;
  try {
    v = parseArgs({
      args: argv, strict: true, allowPositionals: false,
      options: {
        socket: { type: 'string' }, switch: { type: 'string' }, tap: { type: 'string' }, mac: { type: 'string' }, queues: { type: 'string' },
        mtu: { type: 'string' }, id: { type: 'string' }, 'log-level': { type: 'string' }, help: { type: 'boolean' },
      },
    }).values;
  } catch (e) {
    return fail((e as Error).message);
  }
  if (v.help) return null;
  if (!v.socket) fail('--socket PATH is required');
  if ((v.switch === undefined) === (v.tap === undefined)) fail('exactly one of --switch NAME or --tap IFNAME is required');
  if (v.switch !== undefined && !v.switch.includes('/') && !SWITCH_NAME.test(v.switch)) fail(`--switch ${v.switch}: not a switch name (letters, digits, _ . -) nor a socket path`);
  if (v.tap !== undefined && !/^[A-Za-z0-9_.-]{1,15}$/.test(v.tap)) fail(`--tap ${v.tap}: an interface name is 1 to 15 letters, digits, _ . -`);
  let mac = randomMac();
  if (v.mac !== undefined) {
    const m = parseMac(v.mac);
    if (m === null) fail(`--mac ${v.mac}: expected six hex octets like 52:54:00:12:34:56`);
    if (isMulticast(m!)) fail(`--mac ${v.mac}: a multicast address cannot be a NIC's address`);
    mac = m!;
  }
  const queues = v.queues === undefined ? 1 : Number(v.queues);
  if (!Number.isInteger(queues) || queues < 1 || queues > MAX_QUEUE_PAIRS) fail(`--queues ${v.queues}: expected an integer from 1 to ${MAX_QUEUE_PAIRS}`);
  const mtu = v.mtu === undefined ? 1500 : Number(v.mtu);
  if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) fail(`--mtu ${v.mtu}: expected an integer from 68 to 65535`);
  const logLevel = v['log-level'] ?? process.env.VMM_LOG_LEVEL ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) fail(`--log-level ${logLevel}: expected one of ${LOG_LEVELS.join(', ')}`);
  return { socket: v.socket!, switch: v.switch, tap: v.tap, mac, queues, mtu, id: v.id ?? 'net0', logLevel };
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
  const att = new SwitchAttachment({ socketPath: sock, name: a.id, mac: formatMac(a.mac), log, onPort: (p) => device.attach(p) });
  await att.start();
  return () => att.close();
}

async function main(): Promise<void> {
  let a: NetArgs | null;
  try {
    a = parseNetArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`vmm-net: ${(e as Error).message}\n${USAGE.split('\n')[0]}\n`);
    process.exit(2);
  }
  if (a === null) {
    process.stdout.write(USAGE);
    return;
  }
  const log = createLogger('net', a.id, a.logLevel);
  const device = new NetDevice({ mac: a.mac, queuePairs: a.queues, mtu: a.mtu, log });
  let disconnect: () => void;
  try {
    disconnect = await connect(a, device, log);
  } catch (e) {
    process.stderr.write(`vmm-net: ${(e as Error).message}\n`);
    process.exit(1);
  }
  onControlMessage((m) => {
    try {
      log.warn({ fault: m }, control(device, m));
    } catch (e) {
      log.error({ fault: m, err: (e as Error).message }, 'bad fault-injection command');
    }
  });
  const backend = new VhostUserBackend(device, { socketPath: a.socket, log });
  backend.onDisconnect = (err) => log.info({ connections: backend.connections, error: err?.message }, 'ready for the next front-end');
  backend.listen();
  installDeviceProcessSignals(() => {
    log.info({ stats: device.stats }, 'SIGTERM: shutting down');
    backend.close();
    disconnect();
  });
  log.info({ mac: formatMac(a.mac), queues: a.queues, mtu: a.mtu, switch: a.switch, tap: a.tap }, 'serving');
  reportReady({ socket: a.socket, mac: formatMac(a.mac) });
}

if (process.argv[1] !== undefined && import.meta.filename === (await import('node:fs')).realpathSync(process.argv[1])) {
  await main();
}
