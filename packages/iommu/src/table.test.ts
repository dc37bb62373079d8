import { Worker } from 'node:worker_threads';
import { GuestMemory, memfdCreate, mmapShared, closeFd } from '@vmm/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { execute, type IommuLimits } from './execute.ts';
import { VIRTIO_IOMMU_FAULT_F_ADDRESS, VIRTIO_IOMMU_FAULT_F_WRITE, VIRTIO_IOMMU_FAULT_R_DOMAIN, VIRTIO_IOMMU_FAULT_R_MAPPING, VIRTIO_IOMMU_MAP_F_READ, VIRTIO_IOMMU_MAP_F_WRITE } from './spec.ts';
import { FAULT_RING, IommuTable, IommuTableView, tableBytes, type TableSizes } from './table.ts';
import { EndpointTranslator } from './translator.ts';

const SIZES: TableSizes = { maxEndpoints: 4, maxDomains: 4, maxMappings: 128 };
const LIM: IommuLimits = { granule: 4096, inputStart: 0, inputEnd: 2 ** 48 - 1, domainStart: 1, domainEnd: 100, domainRangeNegotiated: true, bypassConfigNegotiated: true, physEnd: 2 ** 40, reserved: [] };
const map = (domain: number, vs: number, ve: number, ps: number, flags: number) => ({ type: 'map' as const, domain, virtStart: BigInt(vs), virtEnd: BigInt(ve), physStart: BigInt(ps), flags });

describe('IommuTable', () => {
  it('refuses a buffer that is not a table, or too small, by value', () => {
    expect(() => new IommuTableView(new ArrayBuffer(4096))).toThrow(/magic is 0x0/);
    const buf = new ArrayBuffer(tableBytes(SIZES));
    IommuTable.create(buf, SIZES, [1], false);
    expect(() => new IommuTableView(buf.slice(0, 1024))).toThrow(/needs \d+ bytes/);
    expect(() => IommuTable.create(new ArrayBuffer(64), SIZES, [1], false)).toThrow(/needs/);
    expect(() => IommuTable.create(new ArrayBuffer(tableBytes(SIZES)), SIZES, [1, 1], false)).toThrow(/not unique/);
  });

  it('lives in a memfd: a second mapping of it (another process) reads what the writer wrote', () => {
    const bytes = tableBytes(SIZES);
    const fd = memfdCreate('iommu-table-test', bytes);
    try {
      const t = IommuTable.create(mmapShared(fd, bytes), SIZES, [8, 9], false);
      execute(t, { type: 'attach', domain: 3, endpoint: 8, flags: 0, reservedNonZero: false }, LIM);
      execute(t, map(3, 0x1000, 0x1fff, 0x8000_0000, VIRTIO_IOMMU_MAP_F_READ), LIM);
      const reader = new IommuTableView(mmapShared(fd, bytes));
      const d = reader.endpointDomain(reader.endpointIndex(8));
      expect(reader.domainState(d)).toEqual({ live: true, bypass: false, id: 3 });
      expect(reader.lookup(d, 0x1800)).toMatchObject({ virtStart: 0x1000, virtEnd: 0x1fff, physStart: 0x8000_0000 });
    } finally {
      closeFd(fd);
    }
  });

  it('a restarted writer finds its state and settles a write cut in half', () => {
    const buf = new ArrayBuffer(tableBytes(SIZES));
    const t = IommuTable.create(buf, SIZES, [8, 9], false);
    execute(t, { type: 'attach', domain: 1, endpoint: 8, flags: 0, reservedNonZero: false }, LIM);
    execute(t, map(1, 0x1000, 0x1fff, 0x8000_0000, VIRTIO_IOMMU_MAP_F_READ), LIM);
    // Simulate a crash in the middle of a MAP (slot ctrl left with an odd
    // generation) and in the middle of a DETACH (domain 2 left without endpoints).
    const w = new Uint32Array(buf);
    const slot = t.insertMapping(0, 0x5000, 0x5fff, 0x9000_0000, 2);
    const ctrlWord = w.length - FAULT_RING * 4 - (SIZES.maxMappings - slot) * 8;
    w[ctrlWord] = (w[ctrlWord]! & ~0xff) + 0x100;
    t.createDomain(2, false);
    const before = t.version;
    const { table, repaired } = IommuTable.attach(buf);
    expect(repaired).toEqual([`mapping slot ${slot} was being written; freed`, 'domain 2 had no endpoint left; ended']);
    expect(table.version).toBeGreaterThan(before);
    const d = table.findDomain(1);
    expect(table.mappingsOf(d).map((m) => m.virtStart)).toEqual([0x1000]);
    expect(table.endpointDomain(table.endpointIndex(8))).toBe(d);
    expect(table.findDomain(2)).toBe(-1);
  });

  it('readers in other threads never see a torn mapping while the writer maps and unmaps', async () => {
    const sizes: TableSizes = { maxEndpoints: 1, maxDomains: 1, maxMappings: 8 };
    const sab = new SharedArrayBuffer(tableBytes(sizes));
    const t = IommuTable.create(sab, sizes, [1], false);
    const d = t.createDomain(1, false);
    t.setEndpointDomain(0, d);
    const stop = new SharedArrayBuffer(12);
    const ctl = new Int32Array(stop);
    const workers = [0, 1].map((id) => new Worker(new URL('./table.fixture-worker.ts', import.meta.url), { workerData: { sab, stop, id } }));
    const results = workers.map((wk) => new Promise<{ seen: number; torn: number }>((r) => wk.once('message', r)));
    const live: number[] = [];
    // Keep writing until both readers have checked plenty of snapshots (bounded).
    for (let i = 0; i < 20_000_000 && (i < 200_000 || Atomics.load(ctl, 1) < 10_000 || Atomics.load(ctl, 2) < 10_000); i++) {
      if (i % 100_000 === 0) await new Promise((r) => setImmediate(r));
      if (live.length >= 8 || (live.length > 0 && i % 3 === 0)) t.removeMapping(live.splice(i % live.length, 1)[0]!);
      else {
        const vs = ((i * 7919) % 100_000) * 0x1000 + 0x1_0000_0000 * (i % 5);
        live.push(t.insertMapping(d, vs, vs + 0xfff, vs * 3, 2));
      }
    }
    Atomics.store(new Int32Array(stop), 0, 1);
    const got = await Promise.all(results);
    await Promise.all(workers.map((wk) => wk.terminate()));
    expect(got.every((g) => g.seen > 0)).toBe(true);
    expect(got.map((g) => g.torn)).toEqual([0, 0]);
  });
});

describe("the writer's index", () => {
  it('finds exactly the intersecting mappings of a domain, before and after a takeover rebuilds it', () => {
    const sizes: TableSizes = { maxEndpoints: 1, maxDomains: 2, maxMappings: 64 };
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 1 }), fc.integer({ min: 0, max: 63 }), fc.integer({ min: 1, max: 4 })), { maxLength: 80 }), fc.integer({ min: 0, max: 70 }), fc.integer({ min: 0, max: 8 }), (ops, qs, qn) => {
        const buf = new ArrayBuffer(tableBytes(sizes));
        let t = IommuTable.create(buf, sizes, [1], false);
        const doms = [t.createDomain(1, false), t.createDomain(2, false)];
        for (const [add, d, page, n] of ops) {
          const vs = page * 0x1000;
          const ve = vs + n * 0x1000 - 1;
          const hits = t.overlapping(doms[d]!, vs, ve);
          if (add && hits.length === 0) t.insertMapping(doms[d]!, vs, ve, 0x8000_0000, 2);
          else if (!add) for (const m of hits) t.removeMapping(m.slot);
        }
        const check = (tt: IommuTable): void => {
          for (const d of doms) {
            const vs = qs * 0x1000;
            const ve = vs + qn * 0x1000 + 0xfff;
            const brute = tt.mappingsOf(d).filter((m) => m.virtStart <= ve && m.virtEnd >= vs).sort((a, b) => a.virtStart - b.virtStart);
            expect(tt.overlapping(d, vs, ve)).toEqual(brute);
          }
        };
        check(t);
        t = IommuTable.attach(buf).table;
        check(t);
      }),
      { numRuns: 300 },
    );
  });
});

describe('EndpointTranslator', () => {
  const setup = () => {
    const t = IommuTable.create(new ArrayBuffer(tableBytes(SIZES)), SIZES, [8, 9], false);
    execute(t, { type: 'attach', domain: 1, endpoint: 8, flags: 0, reservedNonZero: false }, LIM);
    execute(t, map(1, 0x10_0000, 0x10_1fff, 0x8000_2000, VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE), LIM);
    execute(t, map(1, 0x10_2000, 0x10_2fff, 0x8000_0000, VIRTIO_IOMMU_MAP_F_READ), LIM);
    const ram = new ArrayBuffer(0x10000);
    const phys = GuestMemory.fromBuffers([{ gpa: 0x8000_0000, buffer: ram }]);
    return { t, ram, phys };
  };

  it("translates a device's accesses through its domain, across mappings", () => {
    const { t, ram, phys } = setup();
    const tr = new EndpointTranslator(new IommuTableView(t.buffer), 8, 0);
    const dma = phys.withTranslator(tr);
    dma.write(0x10_0010, Uint8Array.of(1, 2, 3));
    expect([...new Uint8Array(ram, 0x2010, 3)]).toEqual([1, 2, 3]);
    // A read spanning two mappings lands in two physical places.
    new Uint8Array(ram, 0x3ffe, 2).set([7, 8]);
    new Uint8Array(ram, 0x0000, 2).set([9, 10]);
    expect([...dma.read(0x10_1ffe, 4)]).toEqual([7, 8, 9, 10]);
  });

  it('refuses unmapped, read-only-written and unattached accesses; records each fault for the event queue', () => {
    const { t, ram, phys } = setup();
    const view = new IommuTableView(t.buffer);
    const dma = phys.withTranslator(new EndpointTranslator(view, 8, 0));
    const snapshot = new Uint8Array(ram).slice();
    expect(() => dma.write(0x20_0000, Uint8Array.of(1))).toThrow(expect.objectContaining({ code: 'ERR_IOMMU_FAULT' }));
    expect(() => dma.write(0x10_2000, Uint8Array.of(1))).toThrow(/may not write/);
    expect(() => dma.write(0x10_1fff, Uint8Array.of(1, 2))).toThrow(/may not write/);
    const other = phys.withTranslator(new EndpointTranslator(view, 9, 1));
    expect(() => other.read(0x10_0000, 4)).toThrow(/not attached/);
    // Not one byte changed, not even the first byte of the access that crossed into read-only.
    expect(new Uint8Array(ram)).toEqual(snapshot);
    const { faults } = t.takeFaults();
    expect(faults).toEqual([
      { endpoint: 8, reason: VIRTIO_IOMMU_FAULT_R_MAPPING, flags: VIRTIO_IOMMU_FAULT_F_ADDRESS | VIRTIO_IOMMU_FAULT_F_WRITE, address: 0x20_0000 },
      { endpoint: 8, reason: VIRTIO_IOMMU_FAULT_R_MAPPING, flags: VIRTIO_IOMMU_FAULT_F_ADDRESS | VIRTIO_IOMMU_FAULT_F_WRITE, address: 0x10_2000 },
      { endpoint: 8, reason: VIRTIO_IOMMU_FAULT_R_MAPPING, flags: VIRTIO_IOMMU_FAULT_F_ADDRESS | VIRTIO_IOMMU_FAULT_F_WRITE, address: 0x10_2000 },
      { endpoint: 9, reason: VIRTIO_IOMMU_FAULT_R_DOMAIN, flags: VIRTIO_IOMMU_FAULT_F_ADDRESS | 1, address: 0x10_0000 },
    ]);
    expect(t.takeFaults().faults).toEqual([]);
  });

  it('an unattached endpoint reaches memory 1:1 when the config bypass is on', () => {
    const { t, ram, phys } = setup();
    t.setBypass(true);
    const dma = phys.withTranslator(new EndpointTranslator(new IommuTableView(t.buffer), 9, 1));
    dma.write(0x8000_0100, Uint8Array.of(5));
    expect(new Uint8Array(ram)[0x100]).toBe(5);
  });

  it('a reader slot in use holds back quiescence until the request ends', () => {
    const { t } = setup();
    const tr = new EndpointTranslator(new IommuTableView(t.buffer), 8, 3);
    const a = tr.begin();
    const v = t.bump();
    expect(t.quiescent(v)).toBe(false);
    tr.end(a);
    expect(t.quiescent(v)).toBe(true);
    // A request that begins after the bump does not hold it.
    const b = tr.begin();
    expect(t.quiescent(v)).toBe(true);
    tr.end(b);
  });

  it('each request counts on its own: the oldest one in flight holds, later ones do not', () => {
    const { t } = setup();
    const tr = new EndpointTranslator(new IommuTableView(t.buffer), 8, 2);
    const a = tr.begin();
    const v2 = t.bump();
    const b = tr.begin(); // began after v2
    expect(t.quiescent(v2)).toBe(false); // a is older than v2
    tr.end(a);
    expect(t.quiescent(v2)).toBe(true); // only b is left, and it saw v2
    const v3 = t.bump();
    expect(t.quiescent(v3)).toBe(false); // b is older than v3
    const c = tr.begin();
    tr.end(b);
    expect(t.quiescent(v3)).toBe(true); // c began under v3
    expect(tr.inFlight).toBe(1);
    tr.end(c);
    tr.end(c); // ending twice is harmless
    expect(tr.inFlight).toBe(0);
    expect(t.quiescent(t.bump())).toBe(true);
  });

  it('a reader slot left by a dead process is released; one of a live process is kept', () => {
    const { t } = setup();
    const view = new IommuTableView(t.buffer);
    view.enter(4, 999_999_999); // no such pid: a device process killed mid-request
    view.enter(5); // this (live) process
    const v = t.bump();
    expect(t.quiescent(v)).toBe(false);
    expect(t.releaseDeadReaders(v)).toEqual([999_999_999]);
    expect(t.quiescent(v)).toBe(false); // slot 5 is a live request
    view.leave(5);
    expect(t.quiescent(v)).toBe(true);
    // A slot at the current version is not looked at (it cannot hold this grace period back).
    view.enter(6, 999_999_999);
    expect(t.releaseDeadReaders(t.version)).toEqual([]);
  });
});

