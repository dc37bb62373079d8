import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { IOMMU_CONFIG_FRAGMENT, IOMMU_KCONFIG_PATCH, parseKconfig, unmetOptions, withCacheLock } from './kernel.ts';
import { kernelSourceFor } from './kit.ts';
import type { PackageStanza } from './debian.ts';

describe('IOMMU kernel config', () => {
  it('parses set, string and unset options', () => {
    const c = parseKconfig('CONFIG_A=y\nCONFIG_B="x y"\n# CONFIG_C is not set\n# a comment\nCONFIG_D=m\n');
    expect([...c]).toEqual([['CONFIG_A', 'y'], ['CONFIG_B', '"x y"'], ['CONFIG_C', 'n'], ['CONFIG_D', 'm']]);
  });

  it('names every fragment option Kconfig dropped or changed', () => {
    const frag = parseKconfig('CONFIG_VIRTIO_IOMMU=y\nCONFIG_EXT4_FS=y\n# CONFIG_X is not set\n');
    const final = parseKconfig('CONFIG_EXT4_FS=y\n# CONFIG_VIRTIO_IOMMU is not set\n');
    expect(unmetOptions(frag, final)).toEqual([{ option: 'CONFIG_VIRTIO_IOMMU', want: 'y', got: 'n' }]);
  });

  it('the checked-in fragment asks for translated, strict DMA through virtio-iommu', () => {
    const frag = parseKconfig(readFileSync(IOMMU_CONFIG_FRAGMENT, 'utf8'));
    for (const o of ['CONFIG_VIRTIO_IOMMU', 'CONFIG_IOMMU_DMA', 'CONFIG_IOMMU_DEFAULT_DMA_STRICT', 'CONFIG_VIRTIO_MMIO', 'CONFIG_VIRTIO_BLK', 'CONFIG_VIRTIO_NET', 'CONFIG_EXT4_FS']) {
      expect(frag.get(o), o).toBe('y');
    }
  });

  it('the patch widens exactly the two Kconfig lines to RISCV', () => {
    const p = readFileSync(IOMMU_KCONFIG_PATCH, 'utf8');
    const added = p.split('\n').filter((l) => l.startsWith('+') && !l.startsWith('+++'));
    expect(added).toEqual(['+\tdef_bool ARM64 || X86 || S390 || RISCV', '+\tdepends on (ARM64 || X86 || RISCV)']);
    expect(p).toMatch(/^Why:/);
  });
});

describe('kernelSourceFor', () => {
  const st = (Package: string, Version: string): PackageStanza => ({ Package, Version, Architecture: 'all', Filename: `pool/${Package}_${Version}.deb`, Size: 1, SHA256: 'a'.repeat(64), Depends: '', Provides: '' });
  it('prefers the source of the stock kernel version, else the newest', () => {
    const idx = [st('linux-source-6.12', '6.12.107-1'), st('linux-source-6.12', '6.12.110-1')];
    expect(kernelSourceFor(idx, '6.12.107-1').Version).toBe('6.12.107-1');
    expect(kernelSourceFor(idx, '6.12.99-1').Version).toBe('6.12.110-1');
    expect(() => kernelSourceFor([], '6.12.107-1')).toThrow(/linux-source-6.12/);
  });
});

describe('withCacheLock', () => {
  it('runs a second holder of the same cache path only after the first is done, saying it waits; a failing holder releases it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmm-lock-'));
    try {
      const target = join(dir, 'iommu-x');
      const events: string[] = [];
      const lines: string[] = [];
      let saidWaiting!: () => void;
      const waiting = new Promise<void>((r) => (saidWaiting = r));
      const reporter = { info: (l: string) => { lines.push(l); saidWaiting(); }, warn: (l: string) => lines.push(l) };
      let releaseFirst!: () => void;
      const firstHeld = new Promise<void>((r) => (releaseFirst = r));
      let firstIn!: () => void;
      const firstEntered = new Promise<void>((r) => (firstIn = r));
      const a = withCacheLock(target, 'kernel x', reporter, async () => {
        events.push('a in');
        firstIn();
        await firstHeld;
        events.push('a out');
      });
      await firstEntered;
      const b = withCacheLock(target, 'kernel x', reporter, async () => {
        events.push('b in');
      });
      await waiting; // b found the lock held
      releaseFirst();
      await Promise.all([a, b]);
      expect(events).toEqual(['a in', 'a out', 'b in']);
      expect(lines).toEqual([`kernel x: another process is building it (lock ${target}.lock); waiting`]);
      await expect(withCacheLock(target, 'kernel x', reporter, async () => { throw new Error('make failed'); })).rejects.toThrow('make failed');
      await withCacheLock(target, 'kernel x', reporter, async () => { events.push('c in'); });
      expect(events.at(-1)).toBe('c in');
      expect(existsSync(`${target}.lock`)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
