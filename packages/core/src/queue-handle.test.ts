// QueueHandle against a hostile driver: a head made available twice while it
// is in flight is started once, and a completion for a head that is not in
// flight (a request of a ring generation that is gone) is dropped, never thrown.
import { describe, expect, it } from 'vitest';
import { createLogger } from './logger.ts';
import { GuestMemory } from './memory.ts';
import { QueueHandle } from './queue-handle.ts';
import { InflightQueue, inflightQueueStride } from './vhost-user/inflight.ts';
import { DriverQueue, SplitQueue, splitQueueLayout, type SplitQueueConfig } from './virtqueue.ts';

const BASE = 0x1000_0000;
const DATA = BASE + 0x2_0000;
const log = createLogger('queue-handle-test', undefined, 'silent');

function setup(size = 8) {
  const mem = GuestMemory.fromBuffers([{ gpa: BASE, buffer: new ArrayBuffer(0x4_0000) }]);
  const l = splitQueueLayout(BASE, size);
  const cfg: SplitQueueConfig = { size, desc: l.desc, avail: l.avail, used: l.used, eventIdx: false };
  const drv = new DriverQueue(mem, cfg);
  const region = new ArrayBuffer(inflightQueueStride(size));
  const inflight = new InflightQueue(region, 0, size);
  inflight.recover(0);
  let notified = 0;
  const h = new QueueHandle({ index: 0, mem, queue: new SplitQueue(mem, cfg), inflight, log, notify: () => notified++ });
  return { drv, h, inflight, notified: () => notified };
}

describe('QueueHandle', () => {
  it('starts a head made available again while in flight only once and returns the duplicate entry untouched', () => {
    const { drv, h, inflight } = setup();
    const head = drv.add([{ addr: DATA, len: 16, write: false }, { addr: DATA + 64, len: 1, write: true }])!;
    drv.publish();
    expect(h.pop()?.head).toBe(head);
    drv.pokeAvail(head);
    expect(h.pop()).toBeNull();
    expect(h.inFlight).toBe(1);
    // The duplicate came back with nothing written, and the running request is still marked in flight for recovery.
    expect(drv.popUsed()).toEqual({ head, len: 0 });
    expect(inflight.inflightHeads()).toEqual([head]);
    // After a crash here, recovery resumes after both avail entries and resubmits the one real request.
    expect(inflight.recover(1)).toEqual({ resubmit: [head], lastAvail: 2 });
  });

  it('drops a completion whose head is not in flight instead of throwing', () => {
    const { drv, h } = setup();
    const head = drv.add([{ addr: DATA, len: 16, write: false }])!;
    drv.publish();
    expect(h.pop()?.head).toBe(head);
    h.complete(head, 0);
    expect(() => h.complete(head, 0)).not.toThrow();
    expect(() => h.complete(5, 0)).not.toThrow();
    expect(h.strayCompletions).toBe(2);
    expect(drv.popUsed()).toEqual({ head, len: 0 });
    expect(drv.popUsed()).toBeNull();
  });

  it('keeps the inflight region consistent when a malformed chain is returned (no flag of a running request cleared)', () => {
    const { drv, h, inflight } = setup();
    const good = drv.add([{ addr: DATA, len: 16, write: false }])!;
    drv.publish();
    expect(h.pop()?.head).toBe(good);
    h.complete(good, 0);
    const running = drv.add([{ addr: DATA, len: 16, write: false }])!;
    drv.publish();
    expect(h.pop()?.head).toBe(running);
    const bad = drv.add([{ addr: 0x10, len: 16, write: false }])!; // outside guest RAM
    drv.publish();
    expect(h.pop()).toBeNull();
    expect([drv.popUsed(), drv.popUsed()]).toEqual([{ head: good, len: 0 }, { head: bad, len: 0 }]);
    // used.idx is 2, one request runs: a restart resumes at avail 3 and resubmits exactly that one.
    expect(inflight.recover(2)).toEqual({ resubmit: [running], lastAvail: 3 });
  });
});
