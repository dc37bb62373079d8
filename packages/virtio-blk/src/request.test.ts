import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory, SplitQueue, VirtqueueError, guestAddress, type GuestAddress } from '@vmm/core';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkDevice } from './device.ts';
import { RawImage } from './raw.ts';
import type { ChainBuffers } from './request.ts';
import { CFG, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES } from './spec.ts';

const RAM_BASE = 0x10000;
const RAM_SIZE = 64 * 1024;
const DISK = 256 * 1024;

let dir: string;
let path: string;
let image: RawImage;
let dev: BlkDevice;
let ram: ArrayBuffer;
let mem: GuestMemory;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'blk-req-'));
  path = join(dir, 'disk.raw');
  writeFileSync(path, new Uint8Array(DISK));
  image = await RawImage.open(path);
  dev = new BlkDevice(image, { serial: 'vmm-test-serial', queues: 2 });
  ram = new ArrayBuffer(RAM_SIZE);
  mem = GuestMemory.fromBuffers([{ gpa: RAM_BASE, buffer: ram }]);
});
afterAll(async () => {
  await image.close();
  rmSync(dir, { recursive: true, force: true });
});

function header(type: number, sector: bigint): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, sector, true);
  return b;
}

/** Lay out a standard chain at fixed guest addresses: header, data buffers, status. */
function chain(type: number, sector: bigint, data: { len: number; writable: boolean; fill?: number }[]): { chain: ChainBuffers; statusAt: number; dataAt: number[] } {
  const u8 = new Uint8Array(ram);
  let at = RAM_BASE;
  u8.set(header(type, sector), at - RAM_BASE);
  const c = { readable: [{ addr: guestAddress(at), len: 16 }], writable: [] as { addr: GuestAddress; len: number }[] };
  at += 16;
  const dataAt: number[] = [];
  for (const d of data) {
    if (d.fill !== undefined) u8.fill(d.fill, at - RAM_BASE, at - RAM_BASE + d.len);
    (d.writable ? c.writable : c.readable).push({ addr: guestAddress(at), len: d.len });
    dataAt.push(at);
    at += d.len;
  }
  u8[at - RAM_BASE] = 0xee;
  c.writable.push({ addr: guestAddress(at), len: 1 });
  return { chain: c, statusAt: at, dataAt };
}

const statusOf = (at: number): number => new Uint8Array(ram)[at - RAM_BASE]!;

describe('virtio-blk requests (virtio 1.2 §5.2.6)', () => {
  it('writes then reads back sectors, split over segments', async () => {
    const w = chain(VIRTIO_BLK_T_OUT, 3n, [
      { len: 512, writable: false, fill: 0x5a },
      { len: 1024, writable: false, fill: 0xa5 },
    ]);
    expect(await dev.handleChain(mem, w.chain)).toEqual({ usedLen: 1, status: VIRTIO_BLK_S_OK });
    expect(statusOf(w.statusAt)).toBe(VIRTIO_BLK_S_OK);
    const file = readFileSync(path);
    expect(file.subarray(3 * 512, 4 * 512).every((b) => b === 0x5a)).toBe(true);
    expect(file.subarray(4 * 512, 6 * 512).every((b) => b === 0xa5)).toBe(true);
    expect(file[6 * 512]).toBe(0);

    const r = chain(VIRTIO_BLK_T_IN, 3n, [{ len: 1536, writable: true, fill: 0 }]);
    expect(await dev.handleChain(mem, r.chain)).toEqual({ usedLen: 1537, status: VIRTIO_BLK_S_OK });
    const got = new Uint8Array(ram, r.dataAt[0]! - RAM_BASE, 1536);
    expect(got.subarray(0, 512).every((b) => b === 0x5a)).toBe(true);
    expect(got.subarray(512).every((b) => b === 0xa5)).toBe(true);
  });

  it('answers GET_ID with the serial, NUL-padded to 20 bytes', async () => {
    const r = chain(VIRTIO_BLK_T_GET_ID, 0n, [{ len: 20, writable: true, fill: 0xff }]);
    expect((await dev.handleChain(mem, r.chain))?.status).toBe(VIRTIO_BLK_S_OK);
    const id = new Uint8Array(ram, r.dataAt[0]! - RAM_BASE, 20);
    expect(new TextDecoder().decode(id.subarray(0, 15))).toBe('vmm-test-serial');
    expect([...id.subarray(15)]).toEqual([0, 0, 0, 0, 0]);
  });

  it('flushes, discards and writes zeros; rejects unmap on discard as UNSUPP', async () => {
    const f = chain(VIRTIO_BLK_T_FLUSH, 0n, []);
    expect((await dev.handleChain(mem, f.chain))?.status).toBe(VIRTIO_BLK_S_OK);
    const seg = (sector: number, n: number, flags: number): Uint8Array => {
      const b = new Uint8Array(16);
      const v = new DataView(b.buffer);
      v.setBigUint64(0, BigInt(sector), true);
      v.setUint32(8, n, true);
      v.setUint32(12, flags, true);
      return b;
    };
    const z = chain(VIRTIO_BLK_T_WRITE_ZEROES, 0n, [{ len: 16, writable: false }]);
    new Uint8Array(ram).set(seg(3, 1, 1), z.dataAt[0]! - RAM_BASE);
    expect((await dev.handleChain(mem, z.chain))?.status).toBe(VIRTIO_BLK_S_OK);
    expect(readFileSync(path).subarray(3 * 512, 4 * 512).every((b) => b === 0)).toBe(true);
    const d = chain(VIRTIO_BLK_T_DISCARD, 0n, [{ len: 16, writable: false }]);
    new Uint8Array(ram).set(seg(0, 1, 1), d.dataAt[0]! - RAM_BASE);
    expect((await dev.handleChain(mem, d.chain))?.status).toBe(VIRTIO_BLK_S_UNSUPP);
  });

  it('reports IOERR for reads beyond capacity and UNSUPP for unknown types', async () => {
    const r = chain(VIRTIO_BLK_T_IN, BigInt(DISK / 512), [{ len: 512, writable: true }]);
    expect((await dev.handleChain(mem, r.chain))?.status).toBe(VIRTIO_BLK_S_IOERR);
    const u = chain(99, 0n, []);
    expect((await dev.handleChain(mem, u.chain))?.status).toBe(VIRTIO_BLK_S_UNSUPP);
  });

  it('rejects a chain without a writable status byte', async () => {
    const before = Buffer.from(ram.slice(0));
    expect(await dev.handleChain(mem, { readable: [{ addr: guestAddress(RAM_BASE), len: 16 }], writable: [] })).toBeNull();
    expect(await dev.handleChain(mem, { readable: [], writable: [] })).toBeNull();
    expect(await dev.handleChain(mem, { readable: [], writable: [{ addr: guestAddress(RAM_BASE + RAM_SIZE), len: 1 }] })).toBeNull();
    expect(Buffer.compare(Buffer.from(ram), before)).toBe(0);
  });

  it('publishes the config space (§5.2.4)', () => {
    const c = dev.config();
    const v = new DataView(c.buffer);
    expect(v.getBigUint64(CFG.capacity, true)).toBe(BigInt(DISK / 512));
    expect(v.getUint32(CFG.blkSize, true)).toBe(512);
    expect(v.getUint16(CFG.numQueues, true)).toBe(2);
    expect(c[CFG.writeZeroesMayUnmap]).toBe(1);
    expect(c.length).toBe(CFG.size);
  });

  it('property: any descriptor ring contents give IOERR/UNSUPP, OK, or a rejected chain, and nothing outside the chain is touched', async () => {
    // A real split ring (core's SplitQueue with its bounded chain walk) over
    // guest RAM holding arbitrary descriptors: loops, out-of-range indices
    // and addresses, indirect tables, wrong directions, short headers.
    const QSIZE = 8;
    const DESC = RAM_BASE;
    const AVAIL = RAM_BASE + 0x100;
    const USED = RAM_BASE + 0x200;
    const DATA = RAM_BASE + 0x1000;
    const typeArb = fc.constantFrom(VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, 2, 10, 14, 0xffffffff);
    const addrArb = fc.oneof(
      { weight: 8, arbitrary: fc.integer({ min: DATA, max: RAM_BASE + RAM_SIZE - 1 }) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: RAM_BASE + 2 * RAM_SIZE }) },
      { weight: 1, arbitrary: fc.constantFrom(Number.MAX_SAFE_INTEGER - 8, 2 ** 40) },
    );
    const descArb = fc.record({
      addr: addrArb,
      len: fc.oneof(fc.integer({ min: 0, max: 4096 }), fc.constantFrom(1, 15, 16, 17, 512, 513)),
      flags: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(0, 1, 2, 3) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 7 }) }),
      next: fc.integer({ min: 0, max: QSIZE + 1 }),
    });
    const diskBefore = Buffer.alloc(DISK);
    await fc.assert(
      fc.asyncProperty(fc.array(descArb, { minLength: QSIZE, maxLength: QSIZE }), fc.integer({ min: 0, max: QSIZE }), typeArb, fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.uint8Array({ minLength: 64, maxLength: 64 }), async (descs, head, type, sector, noise) => {
        const u8 = new Uint8Array(ram);
        const dv = new DataView(ram);
        for (let i = DATA - RAM_BASE; i < u8.length; i += 64) u8.set(noise.subarray(0, Math.min(64, u8.length - i)), i);
        u8.fill(0, 0, DATA - RAM_BASE);
        descs.forEach((d, i) => {
          dv.setBigUint64(i * 16, BigInt(d.addr), true);
          dv.setUint32(i * 16 + 8, d.len, true);
          dv.setUint16(i * 16 + 12, d.flags, true);
          dv.setUint16(i * 16 + 14, d.next, true);
        });
        // Put a header of the chosen type where the head descriptor points, when it is in RAM.
        const h = descs[head];
        if (h && h.addr >= DATA && h.addr + 16 <= RAM_BASE + RAM_SIZE) {
          dv.setUint32(h.addr - RAM_BASE, type, true);
          dv.setBigUint64(h.addr - RAM_BASE + 8, sector, true);
        }
        dv.setUint16(AVAIL - RAM_BASE + 2, 1, true); // avail.idx = 1
        dv.setUint16(AVAIL - RAM_BASE + 4, head, true); // avail.ring[0]
        const q = new SplitQueue(mem, { size: QSIZE, desc: DESC, avail: AVAIL, used: USED, eventIdx: false });
        const ramBefore = Buffer.from(ram.slice(0));
        await image.read(0, diskBefore);
        let c;
        try {
          c = q.pop();
        } catch (e) {
          // Rejected by the ring layer: the back-end returns it with length 0, touching nothing.
          expect(e).toBeInstanceOf(VirtqueueError);
          expect(Buffer.compare(Buffer.from(ram), ramBefore)).toBe(0);
          return;
        }
        expect(c).not.toBeNull();
        const res = await dev.handleChain(mem, c!);
        const ramAfter = Buffer.from(ram);
        const mayChange = new Uint8Array(RAM_SIZE);
        for (const w of c!.writable) mayChange.fill(1, w.addr - RAM_BASE, w.addr - RAM_BASE + w.len);
        for (let i = 0; i < RAM_SIZE; i++) if (!mayChange[i] && ramAfter[i] !== ramBefore[i]) throw new Error(`guest byte at 0x${(RAM_BASE + i).toString(16)} outside the chain changed`);
        const diskAfter = Buffer.alloc(DISK);
        await image.read(0, diskAfter);
        if (res === null) {
          expect(Buffer.compare(ramAfter, ramBefore)).toBe(0);
          expect(Buffer.compare(diskAfter, diskBefore)).toBe(0);
          return;
        }
        expect([VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP]).toContain(res.status);
        const last = c!.writable[c!.writable.length - 1]!;
        expect(ramAfter[last.addr + last.len - 1 - RAM_BASE]).toBe(res.status);
        if (res.status !== VIRTIO_BLK_S_OK) expect(Buffer.compare(diskAfter, diskBefore)).toBe(0);
      }),
      { seed: 0x5eed, numRuns: 500 },
    );
  });
});

describe('I/O accounting (query-blockstats counters, QEMU block/accounting.c semantics)', () => {
  it('counts done, failed and invalid operations per op, bytes, times and the highest written offset', async () => {
    const { FaultInjectingImage } = await import('./faults.ts');
    const faulty = new FaultInjectingImage(image);
    const d = new BlkDevice(faulty, {});
    const fresh = d.stats.snapshot();
    expect(fresh).not.toHaveProperty('idle_time_ns');
    expect(fresh).toMatchObject({ rd_operations: 0, wr_operations: 0, wr_highest_offset: 0, account_invalid: true, account_failed: true, timed_stats: [] });
    const run = async (c: ReturnType<typeof chain>): Promise<number | undefined> => (await d.handleChain(mem, c.chain))?.status;
    const dwz = (type: number, sector: number, n: number): ReturnType<typeof chain> => {
      const c = chain(type, 0n, [{ len: 16, writable: false }]);
      const v = new DataView(ram, c.dataAt[0]! - RAM_BASE, 16);
      v.setBigUint64(0, BigInt(sector), true);
      v.setUint32(8, n, true);
      v.setUint32(12, 0, true);
      return c;
    };

    expect(await run(chain(VIRTIO_BLK_T_OUT, 3n, [{ len: 1536, writable: false, fill: 1 }]))).toBe(VIRTIO_BLK_S_OK);
    expect(await run(chain(VIRTIO_BLK_T_IN, 0n, [{ len: 1024, writable: true }]))).toBe(VIRTIO_BLK_S_OK);
    expect(await run(chain(VIRTIO_BLK_T_FLUSH, 0n, []))).toBe(VIRTIO_BLK_S_OK);
    expect(await run(dwz(VIRTIO_BLK_T_WRITE_ZEROES, 100, 8))).toBe(VIRTIO_BLK_S_OK); // a write, as QEMU counts it
    expect(await run(dwz(VIRTIO_BLK_T_DISCARD, 10, 16))).toBe(VIRTIO_BLK_S_OK); // an unmap
    // Invalid: refused before any I/O.
    expect(await run(chain(VIRTIO_BLK_T_IN, BigInt(DISK / 512), [{ len: 512, writable: true }]))).toBe(VIRTIO_BLK_S_IOERR);
    expect(await run(chain(VIRTIO_BLK_T_OUT, 0n, [{ len: 100, writable: false }]))).toBe(VIRTIO_BLK_S_IOERR);
    expect(await run(dwz(VIRTIO_BLK_T_DISCARD, DISK / 512, 1))).toBe(VIRTIO_BLK_S_IOERR);
    // Failed: an I/O error while executing.
    faulty.control({ fault: 'fail-requests', count: 2 });
    expect(await run(chain(VIRTIO_BLK_T_IN, 0n, [{ len: 512, writable: true }]))).toBe(VIRTIO_BLK_S_IOERR);
    expect(await run(chain(VIRTIO_BLK_T_OUT, 400n, [{ len: 512, writable: false }]))).toBe(VIRTIO_BLK_S_IOERR);
    // Not accounted: get-id and unknown types.
    expect(await run(chain(VIRTIO_BLK_T_GET_ID, 0n, [{ len: 20, writable: true }]))).toBe(VIRTIO_BLK_S_OK);
    expect(await run(chain(99, 0n, []))).toBe(VIRTIO_BLK_S_UNSUPP);

    const s = d.stats.snapshot();
    expect(s).toMatchObject({
      rd_operations: 1, rd_bytes: 1024, failed_rd_operations: 1, invalid_rd_operations: 1,
      wr_operations: 2, wr_bytes: 1536 + 8 * 512, failed_wr_operations: 1, invalid_wr_operations: 1,
      flush_operations: 1, failed_flush_operations: 0, invalid_flush_operations: 0,
      unmap_operations: 1, unmap_bytes: 16 * 512, failed_unmap_operations: 0, invalid_unmap_operations: 1,
      // The failed write at sector 400 does not count; the write-zeroes' end does.
      wr_highest_offset: 108 * 512,
      rd_merged: 0, wr_merged: 0, unmap_merged: 0,
    });
    for (const k of ['rd_total_time_ns', 'wr_total_time_ns', 'flush_total_time_ns', 'unmap_total_time_ns', 'idle_time_ns'] as const) {
      expect(Number.isInteger(s[k]), k).toBe(true);
      expect(s[k], k).toBeGreaterThan(0);
    }
    // Exactly QEMU 7.2's BlockDeviceStats members (checked against qemu-system-riscv64 in test/qmp.test.ts).
    expect(Object.keys(s)).toHaveLength(27);
  });
});
