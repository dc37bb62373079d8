// Debian packages on an ext4 disk image, end to end: `pnpm guest build
// --package iperf3 --package ethtool --package netperf --ext4 IMG` (the
// command as a user runs it, mke2fs -d, no root) and a vmm guest that boots
// with that image as its second disk (read-only, behind an ordinary ext4 data
// disk /init must leave alone): /init finds it by its label, mounts it at
// /packages and the tools run from it with their own glibc.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { startGuestSession } from '@vmm/orchestrator';
import { runBounded } from './guest-helpers.ts';

const GUEST_CLI = fileURLToPath(new URL('../packages/orchestrator/src/guestkit/cli.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vmm-guest-packages-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const GUEST = `
echo "WHICH $(command -v iperf3) $(command -v ethtool) $(command -v netperf)"
iperf3 --version | head -n 1
ethtool --version
netperf -V
echo "MOUNTS $(grep -c ' /packages ext4 ro' /proc/mounts) $(grep -c '^/dev/vda ' /proc/mounts)"
echo "MANIFEST $(grep -c . /packages/vmm-packages.txt)"
`;

describe('guest packages on an ext4 image', () => {
  it('pnpm guest build --ext4 writes the image; a vmm guest mounts it from its second disk and runs iperf3, ethtool and netperf from it', async () => {
    const img = join(dir, 'tools.img');
    const r = await runBounded(process.execPath, [GUEST_CLI, 'build', '--package', 'iperf3', '--package', 'ethtool', '--package', 'netperf', '--ext4', img], { timeoutMs: 300_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${img}\n`);
    expect(r.stderr).toMatch(/ext4 image \(label vmm-packages\) with .*ethtool 1:6\.14.*iperf3 3\.18.*netperf 2\.7/);
    execFileSync('e2fsck', ['-fn', img], { stdio: 'pipe' });

    const data = join(dir, 'data.img');
    writeFileSync(data, '');
    truncateSync(data, 16 << 20);
    execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'data', data]);
    const g = await startGuestSession({ disks: [`${data},format=raw,id=d0`, `${img},format=raw,readonly,id=tools`], cmd: GUEST });
    try {
      const { status } = await g.done;
      const out = g.output();
      expect(status, out).toBe(0);
      expect(out).toContain('WHICH /packages/usr/bin/iperf3 /packages/usr/sbin/ethtool /packages/usr/bin/netperf');
      expect(out).toMatch(/^iperf 3\.18/m);
      expect(out).toMatch(/^ethtool version 6\.14/m);
      expect(out).toMatch(/^Netperf version 2\.7/m);
      // The tools disk is mounted read-only; the data disk is not touched.
      expect(out).toContain('MOUNTS 1 0');
      expect(out).toMatch(/MANIFEST \d{2}/);
    } finally {
      await g.attached.close();
    }
    execFileSync('e2fsck', ['-fn', data], { stdio: 'pipe' });
  });

  it('an unknown package name: exit 1, one line naming it, no image written', async () => {
    const img = join(dir, 'none.img');
    const r = await runBounded(process.execPath, [GUEST_CLI, 'build', '--package', 'no-such-package-vmm', '--ext4', img], { timeoutMs: 300_000 });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n').at(-1)).toBe('guest: package no-such-package-vmm is not in Debian trixie (main, contrib, non-free) for riscv64 or amd64: unknown package name [ERR_GUEST_RESOLVE]');
    expect(() => execFileSync('test', ['-e', img])).toThrow();
  });
});
