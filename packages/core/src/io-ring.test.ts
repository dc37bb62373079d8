// IoRing against the real kernel: scatter/gather reads and writes of a real
// file, more requests at once than the ring has entries, short reads at end
// of file, and errors reported per request.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { IoRing, IoRingError } from './io-ring.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmm-io-ring-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('IoRing', () => {
  it('writes and reads back a file through scatter/gather requests, 4× more at once than it has entries', async () => {
    const ring = IoRing.create(16);
    const file = join(dir, 'a.img');
    writeFileSync(file, new Uint8Array(256 * 1024));
    const fd = openSync(file, 'r+');
    try {
      const blocks = 64;
      const writes: Promise<number>[] = [];
      for (let i = 0; i < blocks; i++) {
        const a = new Uint8Array(1024).fill(i);
        const b = new Uint8Array(3072).fill(255 - i);
        writes.push(ring.writev(fd, [a, b], i * 4096));
      }
      expect(await Promise.all(writes)).toEqual(new Array(blocks).fill(4096));
      const reads = Array.from({ length: blocks }, (_, i) => {
        const bufs = [new Uint8Array(512), new Uint8Array(3584)];
        return ring.readv(fd, bufs, i * 4096).then((n) => ({ n, bufs }));
      });
      const got = await Promise.all(reads);
      got.forEach(({ n, bufs }, i) => {
        expect(n).toBe(4096);
        expect(bufs[0]!.every((v) => v === i)).toBe(true);
        expect(bufs[1]!.subarray(0, 512).every((v) => v === i)).toBe(true);
        expect(bufs[1]!.subarray(512).every((v) => v === 255 - i)).toBe(true);
      });
      const disk = readFileSync(file);
      expect(disk[5 * 4096]).toBe(5);
      expect(disk[5 * 4096 + 1024]).toBe(250);
      expect(ring.stats.requests).toBe(2 * blocks);
      // Requests queued in one turn share an io_uring_enter.
      expect(ring.stats.submits).toBeLessThan(ring.stats.requests);
      expect(ring.inFlight).toBe(0);
    } finally {
      closeSync(fd);
      ring.close();
    }
  });

  it('reports a short read at end of file and an error per request (bad fd), and keeps serving', async () => {
    const ring = IoRing.create(8);
    const file = join(dir, 'b.img');
    writeFileSync(file, new Uint8Array(1000).fill(7));
    const fd = openSync(file, 'r');
    try {
      const buf = new Uint8Array(4096);
      expect(await ring.readv(fd, [buf], 0)).toBe(1000);
      expect(buf[999]).toBe(7);
      await expect(ring.readv(9999, [buf], 0)).rejects.toBeInstanceOf(IoRingError);
      await expect(ring.readv(9999, [buf], 0)).rejects.toMatchObject({ errno: 9 });
      await expect(ring.writev(fd, [buf], 0)).rejects.toMatchObject({ errno: 9 }); // read-only fd: EBADF
      await expect(ring.readv(fd, [], 0)).rejects.toThrow(/0 buffers/);
      expect(await ring.readv(fd, [new Uint8Array(10)], 995)).toBe(5);
    } finally {
      closeSync(fd);
      ring.close();
    }
    await expect(ring.readv(fd, [new Uint8Array(1)], 0)).rejects.toThrow(/closed/);
  });
});
