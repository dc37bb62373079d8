import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VmmError } from './errors.ts';
import { GuestMemory, GuestMemoryError } from './memory.ts';
import {
  DriverQueue, SplitQueue, splitQueueLayout, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VirtqueueError,
  type DescriptorChain, type SplitQueueConfig,
} from './virtqueue.ts';

const RAM = 0x4_0000;
const BASE = 0x1000_0000;

function setup(size = 8, eventIdx = false) {
  const mem = GuestMemory.fromBuffers([{ gpa: BASE, buffer: new ArrayBuffer(RAM) }]);
  const l = splitQueueLayout(BASE, size);
  const cfg: SplitQueueConfig = { size, desc: l.desc, avail: l.avail, used: l.used, eventIdx };
  const drv = new DriverQueue(mem, cfg, { area: BASE + 0x1_0000, maxEntries: 16 });
  const dev = new SplitQueue(mem, cfg);
  return { mem, cfg, drv, dev };
}
const DATA = BASE + 0x2_0000;

function codeOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return (e as VmmError).code;
  }
  return 'none';
}

describe('split virtqueue', () => {
  it('passes a chain from driver to device and back', () => {
    const { drv, dev, mem } = setup();
    expect(dev.pop()).toBeNull();
    const head = drv.add([{ addr: DATA, len: 16, write: false }, { addr: DATA + 16, len: 32, write: false }, { addr: DATA + 64, len: 8, write: true }])!;
    drv.publish();
    expect(drv.kickNeeded()).toBe(true);
    const c = dev.pop()!;
    expect(c).toEqual<DescriptorChain>({ head, readable: [{ addr: DATA as never, len: 16 }, { addr: (DATA + 16) as never, len: 32 }], writable: [{ addr: (DATA + 64) as never, len: 8 }], readableLen: 48, writableLen: 8 });
    expect(dev.pop()).toBeNull();
    mem.writeU32(DATA + 64, 42);
    dev.pushUsed(c.head, 4);
    expect(dev.needsNotification()).toBe(true);
    expect(dev.needsNotification()).toBe(false);
    expect(drv.popUsed()).toEqual({ head, len: 4 });
    expect(drv.popUsed()).toBeNull();
    expect(drv.freeDescriptors).toBe(8);
  });

  it('follows indirect tables', () => {
    const { drv, dev } = setup();
    drv.add([{ addr: DATA, len: 4, write: false }, { addr: DATA + 8, len: 4, write: true }, { addr: DATA + 16, len: 4, write: true }], true);
    drv.publish();
    const c = dev.pop()!;
    expect(c.readable.length).toBe(1);
    expect(c.writable.length).toBe(2);
    expect(c.writableLen).toBe(8);
  });

  it('rejects malformed chains with typed errors and keeps going', () => {
    const { drv, dev } = setup(8);
    const cases: [string, () => void][] = [
      ['ERR_VIRTQ_DESC_INDEX', () => drv.pokeDescriptor(0, { addr: BigInt(DATA), len: 1, flags: VIRTQ_DESC_F_NEXT, next: 8 })],
      ['ERR_VIRTQ_LOOP', () => {
        drv.pokeDescriptor(0, { addr: BigInt(DATA), len: 1, flags: VIRTQ_DESC_F_NEXT, next: 1 });
        drv.pokeDescriptor(1, { addr: BigInt(DATA), len: 1, flags: VIRTQ_DESC_F_NEXT, next: 0 });
      }],
      ['ERR_VIRTQ_READ_AFTER_WRITE', () => {
        drv.pokeDescriptor(0, { addr: BigInt(DATA), len: 1, flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, next: 1 });
        drv.pokeDescriptor(1, { addr: BigInt(DATA), len: 1, flags: 0, next: 0 });
      }],
      ['ERR_VIRTQ_LENGTH', () => {
        drv.pokeDescriptor(0, { addr: BigInt(DATA), len: 0xffff_ffff, flags: VIRTQ_DESC_F_NEXT, next: 1 });
        drv.pokeDescriptor(1, { addr: BigInt(DATA), len: 2, flags: 0, next: 0 });
      }],
      ['ERR_VIRTQ_BUFFER_RANGE', () => drv.pokeDescriptor(0, { addr: BigInt(BASE + RAM - 2), len: 4, flags: 0, next: 0 })],
      ['ERR_VIRTQ_BUFFER_RANGE', () => drv.pokeDescriptor(0, { addr: 1n << 63n, len: 4, flags: 0, next: 0 })],
      ['ERR_VIRTQ_INDIRECT', () => drv.pokeDescriptor(0, { addr: BigInt(DATA), len: 24, flags: VIRTQ_DESC_F_INDIRECT, next: 0 })],
      ['ERR_VIRTQ_INDIRECT', () => drv.pokeDescriptor(0, { addr: BigInt(DATA), len: 16, flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, next: 1 })],
      ['ERR_VIRTQ_INDIRECT', () => {
        // An indirect table whose only entry is itself indirect.
        drv.pokeDescriptor(0, { addr: BigInt(DATA), len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
        const mem = (drv as unknown as { mem: GuestMemory }).mem;
        mem.writeU64(DATA, BigInt(DATA + 0x100));
        mem.writeU32(DATA + 8, 16);
        mem.writeU16(DATA + 12, VIRTQ_DESC_F_INDIRECT);
      }],
    ];
    for (const [code, poke] of cases) {
      poke();
      drv.pokeAvail(0);
      const err = (() => {
        try {
          dev.pop();
        } catch (e) {
          return e;
        }
        return null;
      })();
      expect(err, code).toBeInstanceOf(VirtqueueError);
      expect((err as VirtqueueError).code).toBe(code);
      expect((err as VirtqueueError).head).toBe(0);
    }
    // avail.idx jumping more than the queue size ahead is rejected too.
    for (let i = 0; i < 9; i++) drv.pokeAvail(0);
    expect(codeOf(() => dev.pop())).toBe('ERR_VIRTQ_AVAIL_IDX');
  });

  it('rejects bad queue sizes and ring addresses', () => {
    const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(0x1000) }]);
    expect(codeOf(() => new SplitQueue(mem, { size: 3, desc: 0, avail: 0x100, used: 0x200, eventIdx: false }))).toBe('ERR_VIRTQ_SIZE');
    expect(codeOf(() => new SplitQueue(mem, { size: 512, desc: 0, avail: 0x100, used: 0x200, eventIdx: false }))).toBe('ERR_VIRTQ_RING_ADDR');
    expect(codeOf(() => new SplitQueue(mem, { size: 4, desc: 8, avail: 0x100, used: 0x200, eventIdx: false }))).toBe('ERR_VIRTQ_RING_ADDR');
  });

  it('EVENT_IDX: the device notifies only when used_event is crossed, the driver kicks only past avail_event', () => {
    const { drv, dev } = setup(8, true);
    const bufs = [{ addr: DATA, len: 4, write: true }];
    for (let i = 0; i < 3; i++) drv.add(bufs);
    drv.publish();
    // avail_event starts at 0: the first publish (0 → 3) crosses it.
    expect(drv.kickNeeded()).toBe(true);
    // The device pops everything; avail_event becomes 3.
    const heads = [dev.pop()!, dev.pop()!, dev.pop()!].map((c) => c.head);
    expect(dev.pop()).toBeNull();
    // used_event is 0 (the driver has not asked for more): completing 1 crosses it, completing 2 more does not.
    dev.pushUsed(heads[0]!, 0);
    expect(dev.needsNotification()).toBe(true);
    dev.pushUsed(heads[1]!, 0);
    dev.pushUsed(heads[2]!, 0);
    expect(dev.needsNotification()).toBe(false);
    // The driver collects all and re-arms used_event at 3: the next completion notifies.
    while (drv.popUsed()) { /* drain */ }
    drv.add(bufs);
    drv.publish();
    expect(drv.kickNeeded()).toBe(true); // avail 3 → 4 crosses avail_event 3
    drv.add(bufs);
    drv.publish();
    expect(drv.kickNeeded()).toBe(false); // the device has not consumed entry 3 yet: no new kick needed
    const c = dev.pop()!;
    dev.pushUsed(c.head, 0);
    expect(dev.needsNotification()).toBe(true);
  });

  it('EVENT_IDX wrap arithmetic across the 16-bit boundary', () => {
    const { drv, dev } = setup(8, true);
    const bufs = [{ addr: DATA, len: 4, write: true }];
    // Run 65,540 requests through so every index wraps.
    let notifications = 0;
    for (let i = 0; i < 65_540; i++) {
      drv.add(bufs);
      drv.publish();
      drv.kickNeeded();
      const c = dev.pop()!;
      dev.pushUsed(c.head, 0);
      if (dev.needsNotification()) notifications++;
      expect(drv.popUsed()).not.toBeNull();
    }
    // Every completion was asked for (used_event re-armed each time): one notification each.
    expect(notifications).toBe(65_540);
    expect(dev.lastAvail).toBe(65_540 & 0xffff);
  });

  it('without EVENT_IDX honours NO_INTERRUPT and NO_NOTIFY', () => {
    const { drv, dev } = setup(8, false);
    drv.setInterrupts(false);
    dev.setNotification(false);
    drv.add([{ addr: DATA, len: 4, write: true }]);
    drv.publish();
    expect(drv.kickNeeded()).toBe(false);
    dev.pushUsed(dev.pop()!.head, 0);
    expect(dev.needsNotification()).toBe(false);
  });

  it('with EVENT_IDX, kicks off while polling leaves avail_event behind; on again asks for the next chain', () => {
    const { drv, dev } = setup(8, true);
    const buf = [{ addr: DATA, len: 4, write: true }];
    drv.add(buf);
    drv.publish();
    expect(drv.kickNeeded()).toBe(true);
    dev.setNotification(false);
    dev.pushUsed(dev.pop()!.head, 0);
    // The device polls: popping did not move avail_event, so further chains come without kicks.
    for (let i = 0; i < 3; i++) {
      expect(drv.popUsed()).not.toBeNull();
      drv.add(buf);
      drv.publish();
      expect(drv.kickNeeded()).toBe(false);
      expect(dev.pending()).toBe(1);
      dev.pushUsed(dev.pop()!.head, 0);
    }
    expect(dev.pop()).toBeNull();
    dev.setNotification(true);
    expect(drv.popUsed()).not.toBeNull();
    drv.add(buf);
    drv.publish();
    expect(drv.kickNeeded()).toBe(true);
  });

  it('property: valid chains round-trip exactly', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ nr: fc.integer({ min: 0, max: 3 }), nw: fc.integer({ min: 0, max: 3 }), indirect: fc.boolean(), len: fc.integer({ min: 1, max: 512 }) }), { minLength: 1, maxLength: 40 }),
        fc.boolean(),
        (reqs, eventIdx) => {
          const { drv, dev } = setup(16, eventIdx);
          for (const r of reqs) {
            const n = Math.max(1, r.nr + r.nw);
            const bufs = Array.from({ length: n }, (_, i) => ({ addr: DATA + i * 1024, len: r.len + i, write: i >= r.nr }));
            const head = drv.add(bufs, r.indirect);
            expect(head).not.toBeNull();
            drv.publish();
            const c = dev.pop()!;
            expect(c.head).toBe(head);
            expect([...c.readable, ...c.writable].map((s) => [s.addr, s.len])).toEqual(bufs.map((b) => [b.addr, b.len]));
            expect(c.readable.length).toBe(bufs.filter((b) => !b.write).length);
            dev.pushUsed(c.head, c.writableLen);
            expect(drv.popUsed()).toEqual({ head, len: c.writableLen });
          }
        },
      ),
      { seed: 0x5eed, numRuns: 200 },
    );
  });

  it('property: adversarial descriptor tables only ever give typed errors or in-bounds chains', () => {
    const size = 16;
    const descArb = fc.record({
      addr: fc.oneof(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.integer({ min: BASE - 64, max: BASE + RAM + 64 }).map(BigInt)),
      len: fc.oneof(fc.integer({ min: 0, max: 0xffff_ffff }), fc.integer({ min: 0, max: 256 })),
      flags: fc.integer({ min: 0, max: 7 }),
      next: fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: size - 1 })),
    });
    fc.assert(
      fc.property(fc.array(descArb, { minLength: size, maxLength: size }), fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 1, maxLength: 24 }), fc.boolean(), (descs, heads, eventIdx) => {
        const { drv, dev, mem } = setup(size, eventIdx);
        descs.forEach((d, i) => drv.pokeDescriptor(i, d));
        // Some of the descriptors point at a region we also fill with garbage, to act as indirect tables.
        mem.write(DATA, new Uint8Array(Array.from({ length: 512 }, (_, i) => (i * 37 + heads.length) & 0xff)));
        for (const h of heads) drv.pokeAvail(h);
        for (let i = 0; i < heads.length + 1; i++) {
          let c: DescriptorChain | null;
          try {
            c = dev.pop();
          } catch (e) {
            expect(e instanceof VirtqueueError || e instanceof GuestMemoryError).toBe(true);
            continue;
          }
          if (c === null) break;
          expect(c.readable.length + c.writable.length).toBeLessThanOrEqual(size * (1 + 32768));
          for (const s of [...c.readable, ...c.writable]) {
            expect(s.addr).toBeGreaterThanOrEqual(BASE);
            expect(s.addr + s.len).toBeLessThanOrEqual(BASE + RAM);
          }
          expect(c.readableLen + c.writableLen).toBeLessThanOrEqual(0xffff_ffff);
        }
      }),
      { seed: 0xbad, numRuns: 500 },
    );
  });
});
