// The packages disk image: real mke2fs -d over package trees laid out as
// the cache holds them, read back with e2fsprogs' own debugfs and e2fsck.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentReporter } from './download.ts';
import { buildPackagesImage, PACKAGES_LABEL, PACKAGES_MANIFEST } from './image.ts';
import { pkgDir, type LockedPackage } from './kit.ts';

const cache = mkdtempSync(join(tmpdir(), 'vmm-image-'));
const saved = process.env.XDG_CACHE_HOME;
const sbin = (tool: string): string => ['/usr/sbin', '/sbin'].map((d) => join(d, tool)).find((p) => { try { execFileSync(p, ['-V'], { stdio: 'ignore' }); return true; } catch { return false; } }) ?? tool;
const debugfs = (img: string, cmd: string): string => execFileSync(sbin('debugfs'), ['-R', cmd, img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });

const entry = (name: string, version: string): LockedPackage => ({ role: 'guest-package', name, version, filename: `pool/main/${name}.deb`, size: 1, sha256: name.padEnd(64, '0').replace(/[^0-9a-f]/g, 'a'), via: name });

/** Writes an unpacked package tree where ensureGuestPackages leaves it. */
function fakePackage(p: LockedPackage, files: Record<string, string>, links: Record<string, string> = {}): void {
  const root = join(pkgDir(p), 'tree');
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), text, { mode: path.includes('bin/') ? 0o755 : 0o644 });
  }
  for (const [path, target] of Object.entries(links)) {
    mkdirSync(join(root, path, '..'), { recursive: true });
    symlinkSync(target, join(root, path));
  }
  writeFileSync(join(pkgDir(p), 'complete'), `${p.sha256}\n`);
}

beforeAll(() => {
  process.env.XDG_CACHE_HOME = cache;
});
afterAll(() => {
  if (saved === undefined) delete process.env.XDG_CACHE_HOME;
  else process.env.XDG_CACHE_HOME = saved;
  rmSync(cache, { recursive: true, force: true });
});

describe('buildPackagesImage', () => {
  const tool = entry('tool', '1.0-1');
  const lib = entry('libtool0', '2:0.9-3');
  beforeAll(() => {
    fakePackage(tool, { 'usr/bin/tool': '#!/bin/sh\necho tool\n', 'usr/share/doc/tool/copyright': 'x', 'usr/share/tool/data': 'table\n', 'etc/tool.conf': 'a=1\n', 'etc/shared.conf': 'from tool\n' });
    fakePackage(lib, { 'usr/lib/riscv64-linux-gnu/libtool.so.0.9': 'ELF', 'etc/shared.conf': 'from libtool0\n', 'usr/share/man/man1/x.1': 'm' }, { 'usr/lib/riscv64-linux-gnu/libtool.so.0': 'libtool.so.0.9' });
  });

  it('merges the packages into a clean ext4 labelled for /init, documentation left out, a path two packages ship taken from the first in name order (whatever the order asked), cached by content', async () => {
    const a = await buildPackagesImage([tool, lib, tool], silentReporter);
    expect(a.cached).toBe(false);
    expect(a.packages).toEqual(['libtool0 2:0.9-3', 'tool 1.0-1']);
    execFileSync(sbin('e2fsck'), ['-fn', a.path], { stdio: 'pipe' });
    expect(execFileSync(sbin('dumpe2fs'), ['-h', a.path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toMatch(new RegExp(`Filesystem volume name:\\s+${PACKAGES_LABEL}\\n`));
    expect(debugfs(a.path, 'cat /usr/bin/tool')).toBe('#!/bin/sh\necho tool\n');
    expect(debugfs(a.path, 'stat /usr/bin/tool')).toMatch(/Mode:\s+0755/);
    expect(debugfs(a.path, 'cat /usr/share/tool/data')).toBe('table\n');
    expect(debugfs(a.path, 'cat /etc/tool.conf')).toBe('a=1\n');
    expect(debugfs(a.path, 'cat /etc/shared.conf')).toBe('from libtool0\n');
    expect(debugfs(a.path, `cat /${PACKAGES_MANIFEST}`)).toBe('libtool0 2:0.9-3\ntool 1.0-1\n');
    expect(debugfs(a.path, 'stat /usr/lib/riscv64-linux-gnu/libtool.so.0')).toMatch(/Fast link dest: "libtool.so.0.9"/);
    expect(debugfs(a.path, 'ls -p /usr/share')).not.toMatch(/\/(doc|man)\//);
    const b = await buildPackagesImage([lib, tool], silentReporter);
    expect(b).toEqual({ ...a, cached: true });
    // Nothing but the finished image in the cache: no work tree, no partial image.
    expect(readdirSync(join(cache, 'vmm', 'guest', 'images'))).toEqual([a.path.split('/').pop()]);
  });

  it('refuses an empty package list', async () => {
    await expect(buildPackagesImage([], silentReporter)).rejects.toThrow(/no packages to put on the image/);
  });
});
