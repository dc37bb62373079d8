import { describe, expect, it } from 'vitest';
import { InProcessDevice } from './harness.ts';
import { EchoDevice } from './testing/echo-device.ts';

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
});
