// FrameRing: the shared-memory SPSC ring, producer and consumer each on
// their own mapping of the same real memfd (as two processes would have).
import { dupFd } from '@vmm/core';
import { describe, expect, it } from 'vitest';
import { FrameRing, FrameRingError } from './ring.ts';
import { closeFd, memfdCreate } from '@vmm/core';

function pair(slots: number, cap: number): { p: FrameRing; c: FrameRing; raw: DataView } {
  const { ring: p, fd } = FrameRing.create(slots, cap);
  const c = FrameRing.map(dupFd(fd));
  closeFd(fd);
  return { p, c, raw: new DataView((p as unknown as { buf: ArrayBuffer }).buf) };
}

describe('FrameRing', () => {
  it('a consumer that busy-polls finds the ring empty without asking for the doorbell', () => {
    const { p, c } = pair(4, 256);
    expect(c.peek(false)).toBeNull();
    p.reserve()!.fill(7, 0, 20);
    p.commit(20);
    expect(p.consumerNeedsKick()).toBe(false);
    expect(c.peek(false)!.length).toBe(20);
    c.release();
    expect(c.peek()).toBeNull(); // polling over: asleep again
    p.reserve();
    p.commit(1);
    expect(p.consumerNeedsKick()).toBe(true);
  });

  it('passes frames in order, says full when full, and raises the doorbell flags only for a sleeping side', () => {
    const { p, c } = pair(4, 256);
    expect(c.peek()).toBeNull(); // consumer now asleep
    for (let i = 0; i < 4; i++) {
      const b = p.reserve()!;
      b.fill(i + 1, 0, 10 + i);
      p.commit(10 + i);
    }
    expect(p.consumerNeedsKick()).toBe(true);
    expect(p.consumerNeedsKick()).toBe(false); // once per sleep
    expect(p.reserve()).toBeNull(); // full: producer asleep
    for (let i = 0; i < 4; i++) {
      const f = c.peek()!;
      expect(f.length).toBe(10 + i);
      expect(f.every((x) => x === i + 1)).toBe(true);
      c.release();
    }
    expect(c.producerNeedsKick()).toBe(true);
    expect(p.reserve()).not.toBeNull();
    expect(c.peek()).toBeNull();
    // Wraps around many times with the free-running indices.
    for (let i = 0; i < 1000; i++) {
      p.reserve()![0] = i & 0xff;
      p.commit(1);
      expect(c.peek()![0]).toBe(i & 0xff);
      c.release();
    }
  });

  it('skips and counts what a hostile producer wrote', () => {
    const { p, c, raw } = pair(4, 256);
    p.reserve();
    p.commit(5);
    raw.setUint32(4096, 100000, true); // slot 0 length beyond the capacity
    p.reserve();
    p.commit(7);
    expect(c.peek()!.length).toBe(7);
    expect(c.corrupt).toBe(1);
    c.release();
    raw.setInt32(64, 1000, true); // head far ahead of tail
    expect(c.peek()).toBeNull();
    expect(c.corrupt).toBe(2);
  });

  it('refuses a memfd that is not a ring', () => {
    expect(() => FrameRing.map(memfdCreate('x', 8192))).toThrow(FrameRingError);
    expect(() => FrameRing.map(memfdCreate('x', 100))).toThrow(/smaller than its header/);
    expect(() => FrameRing.create(3, 256)).toThrow(RangeError);
  });
});
