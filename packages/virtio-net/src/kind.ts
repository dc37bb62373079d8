// virtio-net's registration with the orchestrator (`@vmm/virtio-net/kind`):
// what differs for a NIC on the generic vhost-user device path. The
// orchestrator imports this entry only, never the package's internals.

import { fileURLToPath } from 'node:url';
import { IOMMU_ENDPOINT_OPTIONS } from '@vmm/iommu';
import { DeviceOptionError, protocolFeatureBit, VhostUserProtocolFeature, type DeviceKind, type OptionDef, type OptionValues } from '@vmm/core';
import { isMulticast, parseMac, type Mac } from './ctrl.ts';
import { SWITCH_NAME } from './names.ts';
import { CONFIG_SIZE, MAX_QUEUE_PAIRS, VIRTIO_ID_NET } from './spec.ts';

/** vmm-net's options: the orchestrator's `--nic …` / `--device virtio-net,…` / `device_add`, and vmm-net's own argv. */
/** The control message vmm-net answers with its NetStats. */
export const NETSTATS_QUERY = { query: 'net-stats' } as const;

export const NET_OPTIONS: readonly OptionDef[] = [
  { name: 'switch', type: 'string', maxBytes: 107, help: 'attach to the vmm-switch NAME (started if none runs), or the switch socket at a PATH' },
  { name: 'tap', type: 'string', maxBytes: 15, help: 'use the host tap IFNAME (created if missing; needs CAP_NET_ADMIN)' },
  { name: 'mac', type: 'string', maxBytes: 17, help: 'the NIC\'s address (default 52:54:00 and 3 random octets)' },
  { name: 'queues', type: 'int', min: 1, max: MAX_QUEUE_PAIRS, default: 1, help: 'queue pairs; more than one offers VIRTIO_NET_F_MQ' },
  { name: 'mtu', type: 'int', min: 68, max: 65535, default: 1500, help: 'MTU offered in config space' },
  { name: 'busy-poll', type: 'int', min: 0, max: 1_000_000, default: 0, help: 'µs to keep polling the queues and the port after work before sleeping on kicks (0: off; costs CPU)' },
  // Behind vmm-iommu (`vmm run --iommu` and device_add set these): every ring and buffer address translated through its table.
  ...IOMMU_ENDPOINT_OPTIONS,
];

const fail = (m: string): never => {
  throw new DeviceOptionError(`virtio-net: ${m}`);
};

/** What the schema cannot say: exactly one of switch/tap, their shapes, a unicast MAC. Returns the MAC when one is given. */
export function checkNetOptions(o: OptionValues): Mac | null {
  const sw = o.switch === undefined ? undefined : String(o.switch);
  const tap = o.tap === undefined ? undefined : String(o.tap);
  if ((sw === undefined) === (tap === undefined)) fail('exactly one of switch=NAME or tap=IFNAME is required');
  if (sw !== undefined && !sw.includes('/') && !SWITCH_NAME.test(sw)) fail(`switch=${sw}: not a switch name (up to 32 letters, digits, _ . -) nor a socket path`);
  if (tap !== undefined && !/^[A-Za-z0-9_.-]{1,15}$/.test(tap)) fail(`tap=${tap}: an interface name is 1 to 15 letters, digits, _ . -`);
  if (o.mac === undefined) return null;
  const m = parseMac(String(o.mac));
  if (m === null) fail(`mac=${String(o.mac)}: expected six hex octets like 52:54:00:12:34:56`);
  if (isMulticast(m!)) fail(`mac=${String(o.mac)}: a multicast address cannot be a NIC's address`);
  return m;
}

export const netKind: DeviceKind = {
  name: 'virtio-net',
  aliases: ['virtio-net-device'],
  role: 'net',
  virtioId: VIRTIO_ID_NET,
  configSize: CONFIG_SIZE,
  maxQueueSize: 256,
  options: NET_OPTIONS,
  main: fileURLToPath(new URL('./main.ts', import.meta.url)),
  // receiveq/transmitq per pair, then the control queue (virtio 1.2 §5.1.2).
  queues: (o) => 2 * Number(o.queues ?? 1) + 1,
  // The receive queues (even indices): buffers wait there for frames, however quiet the network.
  heldQueues: (o) => Array.from({ length: Number(o.queues ?? 1) }, (_, i) => 2 * i),
  // A restarted vmm-net gets back the receive buffers the crashed one held and resends unfinished transmits.
  protocolFeatures: protocolFeatureBit(VhostUserProtocolFeature.INFLIGHT_SHMFD),
  validate: (o) => void checkNetOptions(o),
  // A NIC keeps no state a crash could make stale: a spare can take over at once.
  warmSpare: () => true,
  fixedOnReplace: ['queues', 'mac'],
  faults: {
    'link-down': { help: 'the guest sees the carrier go (config STATUS without LINK_UP)', options: [], message: () => ({ fault: 'link-down' }) },
    'link-up': { help: 'the carrier comes back', options: [], message: () => ({ fault: 'link-up' }) },
    drop: {
      help: 'drop each received frame with probability rate (0 turns it off)',
      options: [{ name: 'rate', type: 'string', maxBytes: 12, default: '0.1', help: 'probability from 0 to 1' }],
      message: (o) => ({ fault: 'drop', rate: Number(o.rate) }),
    },
    corrupt: {
      help: 'flip a byte its TCP/UDP/ICMP checksum covers in each received frame with probability rate, without checksum offload, so the guest detects it',
      options: [{ name: 'rate', type: 'string', maxBytes: 12, default: '0.1', help: 'probability from 0 to 1' }],
      message: (o) => ({ fault: 'corrupt', rate: Number(o.rate) }),
    },
    delay: {
      help: 'hold each received frame ms milliseconds (0 turns it off; at most 1000 frames / 8 MiB held, the rest dropped and counted)',
      options: [{ name: 'ms', type: 'int', min: 0, max: 60_000, default: 100, help: 'milliseconds' }],
      message: (o) => ({ fault: 'delay', ms: Number(o.ms) }),
    },
  },
  query: {
    command: 'query-nics',
    row: (id, o) => ({ device: id, switch: o.switch ?? null, tap: o.tap ?? null, mac: o.mac ?? null, queues: o.queues }),
  },
  // Every counter of the NIC's process (NetStats: frames and drops by reason, control commands, faults).
  processQuery: { command: 'query-nic-stats', message: NETSTATS_QUERY },
};
