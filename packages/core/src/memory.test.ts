import { describe, expect, it } from 'vitest';
import { closeFd, dupFd as memfdDup, memfdCreate } from './ffi.ts';
import { GuestMemory, GuestMemoryError, guestAddress, type AddressTranslator, type DmaTranslator } from './memory.ts';

function twoRegions(): GuestMemory {
  // [0x1000, 0x2000) and [0x2000, 0x3000): adjacent, so ranges can straddle them.
  return GuestMemory.fromBuffers([
    { gpa: 0x1000, buffer: new ArrayBuffer(0x1000), userAddr: 0x7f00_0000_0000n },
    { gpa: 0x2000, buffer: new ArrayBuffer(0x1000), userAddr: 0x7f00_1000_0000n },
  ]);
}

describe('GuestMemory', () => {
  it('reads back what it wrote, little-endian, across regions', () => {
    const m = twoRegions();
    m.writeU64(0x1ffc, 0x1122334455667788n);
    expect(m.readU64(0x1ffc)).toBe(0x1122334455667788n);
    expect(m.readU32(0x2000)).toBe(0x11223344);
    expect(m.readU16(0x1ffc)).toBe(0x7788);
    m.write(0x1ff0, new Uint8Array([1, 2, 3]));
    expect([...m.read(0x1ff0, 3)]).toEqual([1, 2, 3]);
    expect(m.slices(0x1ff8, 16).map((s) => s.length)).toEqual([8, 8]);
  });
  it('rejects unmapped and overflowing ranges with a typed error', () => {
    const m = twoRegions();
    for (const [a, l] of [[0, 1], [0xfff, 2], [0x2fff, 2], [0x3000, 1], [Number.MAX_SAFE_INTEGER, 1], [-1, 1], [0x1000, -1]] as const) {
      const e = (() => {
        try {
          m.read(a, l);
        } catch (err) {
          return err;
        }
        return null;
      })();
      expect(e).toBeInstanceOf(GuestMemoryError);
      expect((e as GuestMemoryError).code).toMatch(/^ERR_GUEST_MEMORY/);
    }
    expect(() => m.slice(0x1ff8, 16)).toThrow(/spans 2 pieces/);
    expect(() => guestAddress(1n << 60n)).toThrow(GuestMemoryError);
  });
  it('slice is a zero-copy view', () => {
    const m = twoRegions();
    const v = m.slice(0x2010, 4);
    v[0] = 0x5a;
    expect(m.readU8(0x2010)).toBe(0x5a);
  });
  it('translates frontend user addresses to guest addresses', () => {
    const m = twoRegions();
    expect(m.userToGuest(0x7f00_1000_0010n)).toBe(0x2010);
    expect(() => m.userToGuest(0x7f00_2000_0000n)).toThrow(GuestMemoryError);
  });
  it('maps a memfd twice and both views share bytes', () => {
    const fd = memfdCreate('g', 0x4000);
    const a = GuestMemory.fromMemfd(fd, 0x8000_0000, 0x4000);
    const b = new GuestMemory([GuestMemory.mapVhostUserRegion({ guestPhysAddr: 0x8000_1000n, memorySize: 0x3000n, userAddr: 0x1000n, mmapOffset: 0x1000n, fd: memfdDup(fd) })]);
    a.writeU32(0x8000_2000, 0xdeadbeef);
    expect(b.readU32(0x8000_2000)).toBe(0xdeadbeef);
    expect(() => b.readU8(0x8000_0000)).toThrow(GuestMemoryError);
    // A region larger than its file is refused (mapping it would SIGBUS on access).
    expect(() => GuestMemory.mapVhostUserRegion({ guestPhysAddr: 0n, memorySize: 0x8000n, userAddr: 0n, mmapOffset: 0n, fd: memfdDup(fd) })).toThrow(/exceeds its fd/);
    closeFd(fd);
  });
  it('an IOMMU translator sits inside the interface and faults on a miss', () => {
    const m = twoRegions();
    // A page-granular map: IOVA 0x10000 → GPA 0x2000 (read-write), IOVA 0x11000 → GPA 0x1000 (read-only).
    const t: AddressTranslator = {
      translate(iova, len, access) {
        const page = Math.floor(iova / 0x1000) * 0x1000;
        const n = Math.min(len, page + 0x1000 - iova);
        if (page === 0x10000) return { gpa: 0x2000 + (iova - page), len: n };
        if (page === 0x11000 && access === 'read') return { gpa: 0x1000 + (iova - page), len: n };
        throw new GuestMemoryError(`iova ${iova} unmapped`, iova, len, 'ERR_IOMMU_FAULT');
      },
    };
    const d = m.withTranslator(t);
    d.writeU32(0x10004, 7);
    expect(m.readU32(0x2004)).toBe(7);
    m.writeU32(0x1000, 9);
    expect(d.readU32(0x11000)).toBe(9);
    expect(d.slices(0x10ffe, 4).length).toBe(2);
    expect(() => d.writeU32(0x11000, 1)).toThrow(expect.objectContaining({ code: 'ERR_IOMMU_FAULT' }));
    expect(() => d.read(0x12000, 1)).toThrow(expect.objectContaining({ code: 'ERR_IOMMU_FAULT' }));
  });

  it('a per-access view makes each copy one strict-mode request, translated and copied between begin and end', () => {
    const m = twoRegions();
    const events: string[] = [];
    let open = 0;
    const t: DmaTranslator = {
      begin: () => {
        open++;
        events.push('begin');
        return 1;
      },
      end: () => {
        open--;
        events.push('end');
      },
      translate(iova, len) {
        // Every translation happens inside a request.
        events.push(open > 0 ? 'translate' : 'translate-outside');
        if (iova < 0x10000 || iova >= 0x11000) throw new GuestMemoryError(`iova ${iova} unmapped`, iova, len, 'ERR_IOMMU_FAULT');
        return { gpa: 0x1000 + (iova - 0x10000), len: Math.min(len, 0x11000 - iova) };
      },
    };
    const d = m.withTranslator(t, true);
    d.write(0x10010, Uint8Array.of(1, 2, 3));
    expect([...m.read(0x1010, 3)]).toEqual([1, 2, 3]);
    expect(d.readU16(0x10010)).toBe(0x0201);
    d.writeU8(0x10020, 5);
    expect(events).toEqual(['begin', 'translate', 'end', 'begin', 'translate', 'end', 'begin', 'translate', 'end']);
    // A refused access still ends its request.
    expect(() => d.write(0x20000, Uint8Array.of(1))).toThrow(expect.objectContaining({ code: 'ERR_IOMMU_FAULT' }));
    expect(open).toBe(0);
    // A plain AddressTranslator cannot make a per-access view.
    expect(() => m.withTranslator({ translate: t.translate }, true)).toThrow(/needs a DmaTranslator/);
  });
});
