// FrameRing: the shared-memory SPSC byte ring of frame records, producer and
// consumer each on their own mapping of the same real memfd (as two
// processes would have).
import { dupFd } from '@vmm/core';
import { describe, expect, it } from 'vitest';
import { FrameRing, FrameRingError, minRingBytes } from './ring.ts';
import { closeFd, memfdCreate } from '@vmm/core';

const DATA = 4096;

function pair(bytes: number, cap: number): { p: FrameRing; c: FrameRing; raw: DataView } {
  const { ring: p, fd } = FrameRing.create(bytes, cap);
  const c = FrameRing.map(dupFd(fd));
  closeFd(fd);
  return { p, c, raw: new DataView((p as unknown as { buf: ArrayBuffer }).buf) };
}

describe('FrameRing', () => {
  it('a consumer that busy-polls finds the ring empty without asking for the doorbell', () => {
    const { p, c } = pair(1024, 256);
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

  it('passes frames in order, says full when the largest frame would not fit, and raises the doorbell flags only for a sleeping side', () => {
    // 1024 bytes, frames up to 256 (a record of 320): the producer can always reserve while 320 bytes (plus a skipped end) are free.
    const { p, c } = pair(1024, 256);
    expect(c.peek()).toBeNull(); // consumer now asleep
    const sent: number[] = [];
    for (let i = 0; p.reserve() !== null; i++) {
      const b = p.reserve()!;
      b.fill(i + 1, 0, 10 + i);
      p.commit(10 + i);
      sent.push(10 + i);
    }
    // Records of 64 bytes: after 12 of them (768 bytes) the largest record (320) fits neither before the end nor after a wrap.
    expect(sent.length).toBe(12);
    expect(p.consumerNeedsKick()).toBe(true);
    expect(p.consumerNeedsKick()).toBe(false); // once per sleep
    for (const [i, n] of sent.entries()) {
      const f = c.peek()!;
      expect(f.length).toBe(n);
      expect(f.every((x) => x === i + 1)).toBe(true);
      c.release();
    }
    expect(c.producerNeedsKick()).toBe(true);
    expect(p.reserve()).not.toBeNull();
    expect(c.peek()).toBeNull();
  });

  it('wraps records of every size around the data area many times, never splitting one', () => {
    const { p, c } = pair(minRingBytes(1500), 1500);
    let seq = 0;
    let got = 0;
    for (let round = 0; round < 3000; round++) {
      // A few frames in, a few out, sizes from 1 to 1500 bytes.
      for (let k = 0; k < 3; k++) {
        const b = p.reserve();
        if (b === null) break;
        const len = 1 + ((seq * 389) % 1500);
        b.fill(seq & 0xff, 0, len);
        b[0] = seq & 0xff;
        p.commit(len);
        seq++;
      }
      for (let k = 0; k < 2; k++) {
        const f = c.peek();
        if (f === null) break;
        expect(f.length).toBe(1 + ((got * 389) % 1500));
        expect(f[0]).toBe(got & 0xff);
        expect(f[f.length - 1]).toBe(got & 0xff);
        c.release();
        got++;
      }
    }
    for (let f = c.peek(); f !== null; f = c.peek()) {
      expect(f.length).toBe(1 + ((got * 389) % 1500));
      c.release();
      got++;
    }
    expect(got).toBe(seq);
    expect(seq).toBeGreaterThan(5000);
    expect(c.corrupt).toBe(0);
  });

  it('skips and counts what a hostile producer wrote, never reading outside the data area', () => {
    const { p, c, raw } = pair(1024, 256);
    p.reserve();
    p.commit(5);
    raw.setUint32(DATA, 100000, true); // record 0's length beyond the capacity
    expect(c.peek()).toBeNull(); // everything published was skipped
    expect(c.corrupt).toBe(1);
    p.reserve();
    p.commit(7);
    expect(c.peek()!.length).toBe(7);
    c.release();
    raw.setInt32(64, 1 << 20, true); // head far ahead of tail
    expect(c.peek()).toBeNull();
    expect(c.corrupt).toBe(2);
    raw.setInt32(64, (raw.getInt32(128, true) + 64) | 0, true); // one record published ...
    raw.setUint32(DATA + (raw.getInt32(128, true) & 1023), 0xffff_ffff, true); // ... that claims a wrap where a frame still fits
    expect(c.peek()).toBeNull();
    expect(c.corrupt).toBe(3);
    raw.setInt32(64, (raw.getInt32(128, true) + 40) | 0, true); // a head that is not a whole record
    expect(c.peek()).toBeNull();
    expect(c.corrupt).toBe(4);
  });

  it('a hostile consumer can make the producer see a full ring, never write outside it', () => {
    const { p, raw } = pair(1024, 256);
    raw.setInt32(128, 12345, true); // tail ahead of head
    expect(p.reserve()).toBeNull();
    raw.setInt32(128, 0, true);
    raw.setInt32(64, 0, true);
    const b = p.reserve()!;
    expect(b.byteOffset + b.length).toBeLessThanOrEqual(DATA + 1024);
  });

  it('refuses a memfd that is not a ring, and geometry that cannot work', () => {
    expect(() => FrameRing.map(memfdCreate('x', 8192))).toThrow(FrameRingError);
    expect(() => FrameRing.map(memfdCreate('x', 100))).toThrow(/smaller than its header/);
    expect(() => FrameRing.create(3000, 256)).toThrow(/power of 2/);
    expect(() => FrameRing.create(512, 256)).toThrow(/from 1024/);
    expect(() => FrameRing.create(1 << 20, 10)).toThrow(/64 B to 1 MiB/);
  });
});
