// The echo device as an orchestrator device kind: a test-only third kind
// (after disks and NICs) that proves a kind needs only its own package and
// one registry line. Virtio device ID 0xffff is reserved/unused by the spec
// (virtio 1.2 §5 lists none there), so no guest driver ever binds it.

import type { DeviceKind, OptionDef } from '../device-kind.ts';
import { pf, ProtocolFeature } from '../vhost-user/protocol.ts';

export const ECHO_OPTIONS: readonly OptionDef[] = [
  { name: 'queues', type: 'int', min: 1, max: 16, default: 2, help: 'number of virtqueues' },
  // A queue smaller than the others, as a control queue often is: the transport's per-queue QueueNumMax (virtio 1.2 §4.2.2).
  { name: 'last-queue-size', type: 'int', min: 1, max: 32768, help: 'largest ring of the last queue (a power of 2; default: as the others)' },
];

export const echoKind: DeviceKind = {
  name: 'echo',
  role: 'echo',
  virtioId: 0xffff,
  configSize: 16,
  maxQueueSize: 256,
  options: ECHO_OPTIONS,
  main: new URL('./echo-backend.ts', import.meta.url).pathname,
  queues: (o) => Number(o.queues ?? 2),
  protocolFeatures: pf(ProtocolFeature.INFLIGHT_SHMFD),
  // Stateless: a warm spare can always take over.
  warmSpare: () => true,
};
