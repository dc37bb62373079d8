// virtio-net's registration with the orchestrator (`@vmm/virtio-net/kind`):
// what differs for a NIC on the generic vhost-user device path. The
// orchestrator imports this entry only, never the package's internals.

import { fileURLToPath } from 'node:url';
import { type DeviceKind, type OptionDef } from '@vmm/core';
import { CONFIG_SIZE, MAX_QUEUE_PAIRS, VIRTIO_ID_NET } from './spec.ts';

/** vmm-net's options: the orchestrator's `--nic …` / `--device virtio-net,…` / `device_add`, and vmm-net's own argv. */
export const NET_OPTIONS: readonly OptionDef[] = [
  { name: 'switch', type: 'string', maxBytes: 107, help: 'attach to the vmm-switch NAME (started if none runs), or the switch socket at a PATH' },
  { name: 'tap', type: 'string', maxBytes: 15, help: 'use the host tap IFNAME (created if missing; needs CAP_NET_ADMIN)' },
  { name: 'mac', type: 'string', maxBytes: 17, help: 'the NIC\'s address (default 52:54:00 and 3 random octets)' },
  { name: 'queues', type: 'int', min: 1, max: MAX_QUEUE_PAIRS, default: 1, help: 'queue pairs; more than one offers VIRTIO_NET_F_MQ' },
  { name: 'mtu', type: 'int', min: 68, max: 65535, default: 1500, help: 'MTU offered in config space' },
];

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
  protocolFeatures: 0n,
  // A NIC keeps no state a crash could make stale: a spare can take over at once.
  warmSpare: () => true,
  fixedOnReplace: ['queues', 'mac'],
  faults: {
    'link-down': { help: 'the guest sees the carrier go (config STATUS without LINK_UP)', options: [], message: () => ({ fault: 'link-down' }) },
    'link-up': { help: 'the carrier comes back', options: [], message: () => ({ fault: 'link-up' }) },
  },
  query: {
    command: 'query-nics',
    row: (id, o) => ({ device: id, switch: o.switch ?? null, tap: o.tap ?? null, mac: o.mac ?? null, queues: o.queues }),
  },
};
