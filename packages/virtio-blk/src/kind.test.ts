// The disk's registration: what query-block reports for each image (QEMU's
// answer for the same -drive, checked against QEMU 7.2: the probed driver
// when no format is given) and which disks get a warm spare.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { OptionValues } from '@vmm/core';
import { afterAll, describe, expect, it } from 'vitest';
import { blkKind } from './kind.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmm-blk-kind-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const raw = join(dir, 'a.img');
writeFileSync(raw, new Uint8Array(1 << 20));
const qcow2 = join(dir, 'b.qcow2');
execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcow2, '16M']);
const drv = (o: OptionValues): unknown => (blkKind.query!.row('vda', o).inserted as { drv: unknown }).drv;

describe('virtio-blk kind', () => {
  it('query-block names the driver: the format given, else the probed one', () => {
    expect(drv({ file: raw })).toBe('raw');
    expect(drv({ file: qcow2 })).toBe('qcow2');
    expect(drv({ file: qcow2, format: 'raw' })).toBe('raw');
    expect(drv({ file: join(dir, 'gone.img') })).toBe('raw');
  });
  it('a warm spare for raw images only, probed the same way', () => {
    expect(blkKind.warmSpare({ file: raw })).toBe(true);
    expect(blkKind.warmSpare({ file: qcow2 })).toBe(false);
    expect(blkKind.warmSpare({ file: join(dir, 'gone.img') })).toBe(false);
  });
});
