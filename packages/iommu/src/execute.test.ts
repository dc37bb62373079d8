import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { execute, type IommuLimits } from './execute.ts';
import type { IommuRequest } from './request.ts';
import {
  VIRTIO_IOMMU_ATTACH_F_BYPASS,
  VIRTIO_IOMMU_MAP_F_READ,
  VIRTIO_IOMMU_MAP_F_WRITE,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_S_NOMEM,
  VIRTIO_IOMMU_S_OK,
  VIRTIO_IOMMU_S_RANGE,
} from './spec.ts';
import { IommuTable, tableBytes, type TableSizes } from './table.ts';

const RW = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE;
const LIM: IommuLimits = {
  granule: 4096,
  inputStart: 0,
  inputEnd: 2 ** 48 - 1,
  domainStart: 1,
  domainEnd: 100,
  domainRangeNegotiated: true,
  bypassConfigNegotiated: true,
  physEnd: 2 ** 40 - 1,
  reserved: [{ subtype: 1, start: 0x800_0000, end: 0x80f_ffff }],
};

function table(endpoints = [8, 16, 24], sizes: TableSizes = { maxEndpoints: 8, maxDomains: 4, maxMappings: 64 }): IommuTable {
  return IommuTable.create(new ArrayBuffer(tableBytes(sizes)), sizes, endpoints, false);
}
const attach = (domain: number, endpoint: number, flags = 0, reservedNonZero = false): IommuRequest => ({ type: 'attach', domain, endpoint, flags, reservedNonZero });
const detach = (domain: number, endpoint: number): IommuRequest => ({ type: 'detach', domain, endpoint });
const map = (domain: number, vs: number, ve: number, ps: number, flags = RW): IommuRequest => ({ type: 'map', domain, virtStart: BigInt(vs), virtEnd: BigInt(ve), physStart: BigInt(ps), flags });
const unmap = (domain: number, vs: number | bigint, ve: number | bigint, reservedNonZero = false): IommuRequest => ({ type: 'unmap', domain, virtStart: BigInt(vs), virtEnd: BigInt(ve), reservedNonZero });
const run = (t: IommuTable, r: IommuRequest, lim = LIM): number => execute(t, r, lim).status;
/** Everything the table holds, for "nothing changed" checks. */
const state = (t: IommuTable): unknown => ({
  eps: t.endpointIds().map((id) => [id, t.endpointDomain(t.endpointIndex(id))]),
  doms: Array.from({ length: t.sizes.maxDomains }, (_, s) => ({ ...t.domainState(s), maps: t.mappingsOf(s).map((m) => [m.virtStart, m.virtEnd, m.physStart, m.flags]) })),
  bypass: t.bypass,
});

describe('ATTACH (virtio 1.2 §5.13.6.3)', () => {
  it('creates the domain, attaches, and moves an endpoint as DETACH + ATTACH would', () => {
    const t = table();
    expect(run(t, attach(1, 8))).toBe(VIRTIO_IOMMU_S_OK);
    expect(run(t, attach(1, 16))).toBe(VIRTIO_IOMMU_S_OK);
    expect(run(t, map(1, 0x1000, 0x1fff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_OK);
    expect(t.endpointsOf(t.findDomain(1)).map((i) => t.endpointId(i))).toEqual([8, 16]);
    // Move 8 to domain 2: domain 1 keeps 16 and its mapping.
    expect(run(t, attach(2, 8))).toBe(VIRTIO_IOMMU_S_OK);
    expect(t.mappingsOf(t.findDomain(1))).toHaveLength(1);
    // Move 16 too: domain 1 had no endpoint left, it ceased to exist with its mappings.
    expect(run(t, attach(2, 16))).toBe(VIRTIO_IOMMU_S_OK);
    expect(t.findDomain(1)).toBe(-1);
    expect(t.stats.unmaps).toBe(1);
  });

  it('re-attaching to the same domain is a no-op', () => {
    const t = table();
    run(t, attach(1, 8));
    const before = state(t);
    expect(run(t, attach(1, 8))).toBe(VIRTIO_IOMMU_S_OK);
    expect(state(t)).toEqual(before);
  });

  it('gives the spec status for each bad ATTACH and changes nothing', () => {
    const t = table();
    run(t, attach(1, 8));
    run(t, attach(2, 16, VIRTIO_IOMMU_ATTACH_F_BYPASS));
    const before = state(t);
    expect(run(t, attach(3, 24, 0, true))).toBe(VIRTIO_IOMMU_S_INVAL); // reserved not zero: MUST INVAL
    expect(run(t, attach(3, 24, 2))).toBe(VIRTIO_IOMMU_S_INVAL); // unknown flag bit
    expect(run(t, attach(3, 24, VIRTIO_IOMMU_ATTACH_F_BYPASS), { ...LIM, bypassConfigNegotiated: false })).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(run(t, attach(3, 99))).toBe(VIRTIO_IOMMU_S_NOENT); // unknown endpoint: MUST NOENT
    expect(run(t, attach(0, 24))).toBe(VIRTIO_IOMMU_S_RANGE); // below domain_range
    expect(run(t, attach(101, 24))).toBe(VIRTIO_IOMMU_S_RANGE); // above domain_range
    expect(run(t, attach(1, 24, VIRTIO_IOMMU_ATTACH_F_BYPASS))).toBe(VIRTIO_IOMMU_S_INVAL); // inconsistent with the domain
    expect(run(t, attach(2, 24))).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(state(t)).toEqual(before);
    // Without DOMAIN_RANGE negotiated any domain id is valid.
    expect(run(t, attach(0xffff_ffff, 24), { ...LIM, domainRangeNegotiated: false })).toBe(VIRTIO_IOMMU_S_OK);
  });

  it('runs out of domain slots with NOMEM, unless the move frees one', () => {
    const t = table([1, 2, 3, 4, 5], { maxEndpoints: 8, maxDomains: 2, maxMappings: 8 });
    expect(run(t, attach(1, 1))).toBe(VIRTIO_IOMMU_S_OK);
    expect(run(t, attach(2, 2))).toBe(VIRTIO_IOMMU_S_OK);
    const before = state(t);
    expect(run(t, attach(3, 3))).toBe(VIRTIO_IOMMU_S_NOMEM);
    expect(state(t)).toEqual(before);
    // Endpoint 2 is alone in domain 2: moving it to a new domain 3 reuses the slot.
    expect(run(t, attach(3, 2))).toBe(VIRTIO_IOMMU_S_OK);
    expect(t.findDomain(2)).toBe(-1);
    expect(t.findDomain(3)).toBeGreaterThanOrEqual(0);
  });
});

describe('DETACH (§5.13.6.4)', () => {
  it('detaches; the last endpoint ends the domain and its mappings', () => {
    const t = table();
    run(t, attach(1, 8));
    run(t, map(1, 0, 0xfff, 0x8000_0000));
    const r = execute(t, detach(1, 8), LIM);
    expect(r.status).toBe(VIRTIO_IOMMU_S_OK);
    expect(r.invalidated).toBe(t.version);
    expect(t.findDomain(1)).toBe(-1);
    expect(t.mappingsOf(0)).toEqual([]);
  });

  it('NOENT for an unknown endpoint, INVAL for a wrong or absent domain', () => {
    const t = table();
    run(t, attach(1, 8));
    const before = state(t);
    expect(run(t, detach(1, 99))).toBe(VIRTIO_IOMMU_S_NOENT);
    expect(run(t, detach(5, 8))).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(run(t, detach(1, 16))).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(state(t)).toEqual(before);
    // A DETACH done already (replayed after a restart): OK.
    expect(run(t, detach(1, 8))).toBe(VIRTIO_IOMMU_S_OK);
    expect(run(t, detach(1, 8))).toBe(VIRTIO_IOMMU_S_OK);
  });
});

describe('MAP (§5.13.6.5)', () => {
  it('gives the spec status for each bad MAP and changes nothing', () => {
    const t = table();
    run(t, attach(1, 8));
    run(t, attach(2, 16, VIRTIO_IOMMU_ATTACH_F_BYPASS));
    run(t, map(1, 0x10000, 0x1ffff, 0x8000_0000));
    const before = state(t);
    expect(run(t, map(1, 0x40000, 0x40fff, 0x8000_0000, 4))).toBe(VIRTIO_IOMMU_S_INVAL); // MMIO: not offered → unknown
    expect(run(t, map(1, 0x40000, 0x40fff, 0x8000_0000, 8))).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(run(t, map(7, 0x40000, 0x40fff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_NOENT);
    expect(run(t, map(2, 0x40000, 0x40fff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_INVAL); // bypass domain
    expect(run(t, map(1, 0x40800, 0x40fff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_RANGE); // virt_start unaligned
    expect(run(t, map(1, 0x40000, 0x40ffe, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_RANGE); // virt_end + 1 unaligned
    expect(run(t, map(1, 0x40000, 0x40fff, 0x8000_0800))).toBe(VIRTIO_IOMMU_S_RANGE); // phys unaligned
    expect(run(t, map(1, 0x41000, 0x40fff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_INVAL); // end below start
    expect(run(t, map(1, 2 ** 48, 2 ** 48 + 0xfff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_RANGE); // beyond input_range
    expect(run(t, { type: 'map', domain: 1, virtStart: 0n, virtEnd: 0xffff_ffff_ffff_ffffn, physStart: 0n, flags: RW })).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(run(t, map(1, 0x40000, 0x40fff, 2 ** 40))).toBe(VIRTIO_IOMMU_S_RANGE); // beyond guest-physical
    expect(run(t, map(1, 0x800_0000, 0x800_0fff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_INVAL); // reserved (MSI) region
    expect(run(t, map(1, 0x1f000, 0x20fff, 0x9000_0000))).toBe(VIRTIO_IOMMU_S_INVAL); // overlaps an existing mapping
    expect(run(t, map(1, 0x10000, 0x1ffff, 0x9000_0000))).toBe(VIRTIO_IOMMU_S_INVAL); // same range, other target
    expect(run(t, map(1, 0x10000, 0x1ffff, 0x8000_0000, VIRTIO_IOMMU_MAP_F_READ))).toBe(VIRTIO_IOMMU_S_INVAL); // other permission
    expect(state(t)).toEqual(before);
    // The very same MAP again (replayed after a restart) finds it in place: OK, nothing added.
    expect(run(t, map(1, 0x10000, 0x1ffff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_OK);
    expect(state(t)).toEqual(before);
  });

  it('NOMEM when every mapping slot is in use, with nothing changed', () => {
    const t = table([8], { maxEndpoints: 1, maxDomains: 1, maxMappings: 3 });
    run(t, attach(1, 8));
    for (let i = 0; i < 3; i++) expect(run(t, map(1, i * 0x1000, i * 0x1000 + 0xfff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_OK);
    const before = state(t);
    expect(run(t, map(1, 0x10000, 0x10fff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_NOMEM);
    expect(state(t)).toEqual(before);
    // A freed slot is reused.
    expect(run(t, unmap(1, 0, 0xfff))).toBe(VIRTIO_IOMMU_S_OK);
    expect(run(t, map(1, 0x10000, 0x10fff, 0x8000_0000))).toBe(VIRTIO_IOMMU_S_OK);
  });
});

describe('UNMAP (§5.13.6.6)', () => {
  // The spec's own examples (1)–(7), with 4 KiB pages instead of bytes.
  const P = 0x1000;
  const at = (a: number, b: number): [number, number] => [a * P, (b + 1) * P - 1];
  const cases: { name: string; maps: [number, number][]; un: [number, number]; status: number; left: [number, number][] }[] = [
    { name: '(1) nothing mapped', maps: [], un: at(0, 4), status: VIRTIO_IOMMU_S_OK, left: [] },
    { name: '(2) exactly one mapping', maps: [at(0, 9)], un: at(0, 9), status: VIRTIO_IOMMU_S_OK, left: [] },
    { name: '(3) two mappings', maps: [at(0, 4), at(5, 9)], un: at(0, 9), status: VIRTIO_IOMMU_S_OK, left: [] },
    { name: '(4) would split one', maps: [at(0, 9)], un: at(0, 4), status: VIRTIO_IOMMU_S_RANGE, left: [at(0, 9)] },
    { name: '(5) the first of two', maps: [at(0, 4), at(5, 9)], un: at(0, 4), status: VIRTIO_IOMMU_S_OK, left: [at(5, 9)] },
    { name: '(6) spilling over', maps: [at(0, 4)], un: at(0, 9), status: VIRTIO_IOMMU_S_OK, left: [] },
    { name: '(7) with a hole', maps: [at(0, 4), at(10, 14)], un: at(0, 14), status: VIRTIO_IOMMU_S_OK, left: [] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const t = table();
      run(t, attach(1, 8));
      for (const [a, b] of c.maps) expect(run(t, map(1, a, b, 0x8000_0000 + a))).toBe(VIRTIO_IOMMU_S_OK);
      expect(run(t, unmap(1, c.un[0], c.un[1]))).toBe(c.status);
      expect(t.mappingsOf(t.findDomain(1)).map((m) => [m.virtStart, m.virtEnd])).toEqual(c.left);
    });
  }

  it('a split anywhere in the range removes nothing, even mappings fully covered', () => {
    const t = table();
    run(t, attach(1, 8));
    run(t, map(1, 0x0, 0xfff, 0x8000_0000));
    run(t, map(1, 0x1000, 0x2fff, 0x8000_0000));
    expect(run(t, unmap(1, 0, 0x1fff))).toBe(VIRTIO_IOMMU_S_RANGE);
    expect(t.mappingsOf(t.findDomain(1))).toHaveLength(2);
  });

  it('reserved bytes, unknown or bypass domain, inverted range', () => {
    const t = table();
    run(t, attach(1, 8));
    run(t, attach(2, 16, VIRTIO_IOMMU_ATTACH_F_BYPASS));
    run(t, map(1, 0, 0xfff, 0x8000_0000));
    const before = state(t);
    expect(run(t, unmap(1, 0, 0xfff, true))).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(run(t, unmap(9, 0, 0xfff))).toBe(VIRTIO_IOMMU_S_NOENT);
    expect(run(t, unmap(2, 0, 0xfff))).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(run(t, unmap(1, 0x2000, 0x1000))).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(state(t)).toEqual(before);
    // A range end beyond 2^53 still covers everything below it.
    expect(run(t, unmap(1, 0n, 0xffff_ffff_ffff_ffffn))).toBe(VIRTIO_IOMMU_S_OK);
    expect(t.mappingsOf(t.findDomain(1))).toEqual([]);
  });
});

describe('PROBE (§5.13.6.7)', () => {
  it('reports each reserved region as RESV_MEM, zero after; NOENT for an unknown endpoint', () => {
    const t = table();
    const r = execute(t, { type: 'probe', endpoint: 16, propertiesLen: 64 }, LIM);
    expect(r.status).toBe(VIRTIO_IOMMU_S_OK);
    const v = new DataView(r.properties!.buffer);
    expect([v.getUint16(0, true), v.getUint16(2, true), r.properties![4]]).toEqual([1, 20, 1]);
    expect([v.getBigUint64(8, true), v.getBigUint64(16, true)]).toEqual([0x800_0000n, 0x80f_ffffn]);
    expect(r.properties!.subarray(24).every((b) => b === 0)).toBe(true);
    expect(run(t, { type: 'probe', endpoint: 99, propertiesLen: 64 })).toBe(VIRTIO_IOMMU_S_NOENT);
    expect(run(t, { type: 'probe', endpoint: 16, propertiesLen: 8 })).toBe(VIRTIO_IOMMU_S_INVAL);
  });
});

// Property test: random MAP/UNMAP sequences against a plain model of the
// spec's rules; statuses agree, the table holds what the model holds, and a
// failed request leaves the table untouched.
describe('MAP/UNMAP against a model', () => {
  type Op = { op: 'map'; a: number; b: number; p: number } | { op: 'unmap'; a: number; b: number };
  const page = fc.integer({ min: 0, max: 40 });
  const opArb: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ op: fc.constant('map' as const), a: page, b: page, p: fc.integer({ min: 0, max: 1000 }) }),
    fc.record({ op: fc.constant('unmap' as const), a: page, b: page }),
  );
  it('agrees with the model on every step', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 60 }), (ops) => {
        const t = table([8], { maxEndpoints: 1, maxDomains: 1, maxMappings: 16 });
        run(t, attach(1, 8));
        let model: { a: number; b: number; p: number }[] = [];
        for (const o of ops) {
          const vs = Math.min(o.a, o.b) * 0x1000;
          const ve = (Math.max(o.a, o.b) + 1) * 0x1000 - 1;
          const before = state(t);
          let want: number;
          if (o.op === 'map') {
            if (model.some((m) => m.a === vs && m.b === ve && m.p === o.p * 0x1000)) want = VIRTIO_IOMMU_S_OK; // replayed MAP
            else if (model.some((m) => vs <= m.b && ve >= m.a)) want = VIRTIO_IOMMU_S_INVAL;
            else if (model.length >= 16) want = VIRTIO_IOMMU_S_NOMEM;
            else {
              want = VIRTIO_IOMMU_S_OK;
              model.push({ a: vs, b: ve, p: o.p * 0x1000 });
            }
            expect(run(t, map(1, vs, ve, o.p * 0x1000))).toBe(want);
          } else {
            const hit = model.filter((m) => m.a <= ve && m.b >= vs);
            if (hit.some((m) => m.a < vs || m.b > ve)) want = VIRTIO_IOMMU_S_RANGE;
            else {
              want = VIRTIO_IOMMU_S_OK;
              model = model.filter((m) => !hit.includes(m));
            }
            expect(run(t, unmap(1, vs, ve))).toBe(want);
          }
          if (want !== VIRTIO_IOMMU_S_OK) expect(state(t)).toEqual(before);
          const got = t.mappingsOf(t.findDomain(1)).map((m) => ({ a: m.virtStart, b: m.virtEnd, p: m.physStart }));
          const sort = (x: { a: number }[]): unknown[] => [...x].sort((l, r) => l.a - r.a);
          expect(sort(got)).toEqual(sort(model));
        }
      }),
      { numRuns: 300 },
    );
  });
});
