// Property tests of the qcow2 implementation against two references: a raw
// byte model (what every read must return) and qemu-img (Debian qemu-utils:
// the image we leave behind must `check` clean and `compare` identical to
// the model). Plus corrupted headers: a typed error, never a crash.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VmmError } from '@vmm/core';
import { openImage } from './qcow2.ts';

const SIZE = 2 << 20;
const SECTOR = 512;

type Op = { kind: 'write'; sector: number; sectors: number; fill: number } | { kind: 'zero'; sector: number; sectors: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('write' as const), sector: fc.integer({ min: 0, max: SIZE / SECTOR - 1 }), sectors: fc.integer({ min: 1, max: 40 }), fill: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('zero' as const), sector: fc.integer({ min: 0, max: SIZE / SECTOR - 1 }), sectors: fc.integer({ min: 1, max: 300 }) }),
);

function qemuImg(args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

describe('qcow2 against a raw model and qemu-img', () => {
  it('random writes and write-zeroes read back like the model; qemu-img check is clean and compare identical', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmm-qcow2-prop-'));
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(512, 4096, 65536), fc.array(opArb, { minLength: 1, maxLength: 25 }), async (clusterSize, ops) => {
        const file = join(dir, `t${run}.qcow2`);
        const rawFile = join(dir, `t${run++}.raw`);
        qemuImg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${clusterSize}`, file, String(SIZE)]);
        const model = new Uint8Array(SIZE);
        const img = await openImage(file, { format: 'qcow2' });
        for (const op of ops) {
          const off = op.sector * SECTOR;
          const len = Math.min(op.sectors * SECTOR, SIZE - off);
          if (op.kind === 'write') {
            const data = new Uint8Array(len).fill(op.fill);
            await img.write(off, data);
            model.set(data, off);
          } else {
            await img.writeZeroes(off, len, false);
            model.fill(0, off, off + len);
          }
        }
        const back = new Uint8Array(SIZE);
        await img.read(0, back);
        expect(Buffer.compare(Buffer.from(back), Buffer.from(model))).toBe(0);
        await img.flush();
        await img.close();
        writeFileSync(rawFile, model);
        qemuImg(['check', '-q', file]); // throws on a non-zero exit (errors or leaks reported as corruption)
        expect(qemuImg(['compare', '-q', '-f', 'qcow2', '-F', 'raw', file, rawFile])).toBe('');
      }),
      { seed: 20261123, numRuns: 12 },
    );
  });

  it('a corrupted header is refused with a typed error, or opens and reads without crashing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmm-qcow2-corrupt-'));
    const good = join(dir, 'good.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', good, String(SIZE)]);
    const img = await openImage(good, { format: 'qcow2' });
    await img.write(0, new Uint8Array(65536).fill(7));
    await img.close();
    const pristine = readFileSync(good);
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.record({ at: fc.integer({ min: 0, max: 111 }), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 4 }), async (flips) => {
        const bad = Buffer.from(pristine);
        for (const f of flips) bad[f.at] = f.value;
        const file = join(dir, `c${n++}.qcow2`);
        writeFileSync(file, bad);
        let opened;
        try {
          opened = await openImage(file, { format: 'qcow2' });
        } catch (e) {
          expect(e).toBeInstanceOf(VmmError);
          return;
        }
        try {
          await opened.read(0, new Uint8Array(Math.min(opened.capacity, 1 << 20)));
        } catch (e) {
          expect(e).toBeInstanceOf(VmmError);
        } finally {
          await opened.close();
        }
      }),
      { seed: 7, numRuns: 150 },
    );
  });
});
