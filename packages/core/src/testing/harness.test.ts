import { describe, expect, it } from 'vitest';
import { InProcessDevice } from './harness.ts';
import { ECHO_PARK, ECHO_RELEASE, EchoDevice } from './echo-device.ts';

describe('InProcessDevice harness', () => {
  it('drives a device through real rings without vhost-user', async () => {
    const dev = new EchoDevice(1);
    const h = new InProcessDevice(dev, { queueSize: 8 });
    expect(dev.activations).toBe(1);
    const src = h.alloc(3);
    h.mem.write(src, new Uint8Array([1, 2, 3]));
    const dst = h.alloc(8);
    const head = h.submit(0, [{ addr: src, len: 3, write: false }, { addr: dst, len: 8, write: true }], true);
    expect(await h.wait(0)).toEqual([{ head, len: 3 }]);
    expect([...h.mem.read(dst, 3)]).toEqual([1, 2, 3]);
    // A malformed chain (a readable buffer outside RAM) comes back with length 0, and the queue keeps working.
    const bad = h.submit(0, [{ addr: 0x10, len: 4, write: false }]);
    expect(await h.wait(0)).toEqual([{ head: bad, len: 0 }]);
    h.reset();
    expect(dev.resets).toBe(1);
  });

  it('a stop takes back chains the device parks (receive buffers) without waiting, and the ring is rewound over them', async () => {
    const dev = new EchoDevice(1);
    const h = new InProcessDevice(dev, { queueSize: 8 });
    const req = (first: number) => {
      const src = h.alloc(1);
      h.mem.write(src, new Uint8Array([first]));
      return h.submit(0, [{ addr: src, len: 1, write: false }, { addr: h.alloc(4), len: 4, write: true }])!;
    };
    const done = req(7);
    expect(await h.wait(0)).toEqual([{ head: done, len: 1 }]);
    req(ECHO_PARK);
    req(ECHO_PARK);
    expect(h.queues[0]!.handle.inFlight).toBe(2);
    // Both parked chains were the last ones taken: the next avail index goes back over them (3 popped, 1 used).
    expect(h.stopQueue(0)).toBe(1);
    expect(h.queues[0]!.handle.inFlight).toBe(0);
    expect(h.poll(0)).toEqual([]);
    // A release after the stop completes nothing on the stopped ring.
    req(ECHO_RELEASE);
    expect(h.poll(0)).toEqual([]);
  });

  it('parked chains that are not the last ones taken come back used with length 0', async () => {
    const dev = new EchoDevice(1);
    const h = new InProcessDevice(dev, { queueSize: 8 });
    const src = h.alloc(1);
    h.mem.write(src, new Uint8Array([ECHO_PARK]));
    const parked = h.submit(0, [{ addr: src, len: 1, write: false }, { addr: h.alloc(4), len: 4, write: true }])!;
    const plain = h.alloc(1);
    const after = h.submit(0, [{ addr: plain, len: 1, write: false }, { addr: h.alloc(4), len: 4, write: true }])!;
    expect(await h.wait(0)).toEqual([{ head: after, len: 1 }]);
    expect(h.stopQueue(0)).toBe(2);
    expect(h.poll(0)).toEqual([{ head: parked, len: 0 }]);
  });
});
