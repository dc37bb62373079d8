// The Depends: closure of extra guest packages, over a synthetic index.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PackageStanza } from './debian.ts';
import { silentReporter } from './download.ts';
import { GuestKitError } from './errors.ts';
import { ensureGuestPackages, resolveClosure } from './packages.ts';
import { serveFiles, serveLoopback } from './test-server.ts';

const st = (Package: string, Depends = '', Provides = '', Version = '1.0-1'): PackageStanza => ({
  Package, Version, Architecture: 'riscv64', Filename: `pool/${Package}.deb`, Size: 1, SHA256: '0'.repeat(64), Depends, Provides,
});

describe('resolveClosure', () => {
  const index = [
    st('iperf3', 'libc6 (>= 2.34), libiperf0 (= 3.18-2), adduser'),
    st('libiperf0', 'libc6 (>= 2.38), libsctp1 (>= 1.0.10+dfsg), libssl3t64 (>= 3.0.0)'),
    st('libc6', 'libgcc-s1'),
    st('libgcc-s1', 'gcc-14-base (= 14.2.0-19), libc6 (>= 2.35)'),
    st('gcc-14-base'),
    st('libsctp1', 'libc6:any'),
    st('libssl3t64', 'libc6 (>= 2.38), libzstd1 | zlib1g, openssl-provider-legacy'),
    st('libzstd1', 'libc6'),
    st('zlib1g', 'libc6'),
    st('openssl-provider-legacy', 'libc6'),
    st('adduser', 'passwd, debconf (>= 0.5) | debconf-2.0'),
    st('libc6', 'libgcc-s1', '', '0.9-1'),
    st('netcat-openbsd', 'libbsd0, netcat-dummy'),
    st('libbsd-real', 'libc6', 'libbsd0 (= 1)'),
  ];

  it('follows the first alternative of each group, versions and arch qualifiers stripped, install-time-only packages left out', () => {
    const r = resolveClosure(index, ['iperf3']);
    expect(r.packages.map((p) => p.Package).sort()).toEqual(
      ['gcc-14-base', 'iperf3', 'libc6', 'libgcc-s1', 'libiperf0', 'libsctp1', 'libssl3t64', 'libzstd1', 'openssl-provider-legacy'],
    );
    expect(r.packages.find((p) => p.Package === 'libc6')?.Version).toBe('1.0-1'); // the newest
    expect(r.skipped).toEqual(['adduser']);
  });

  it('takes a provider for a virtual package, and says which dependency nothing provides', () => {
    expect(() => resolveClosure(index, ['netcat-openbsd'])).toThrow(GuestKitError);
    expect(() => resolveClosure(index, ['netcat-openbsd'])).toThrow(/netcat-openbsd depends on netcat-dummy/);
    const ok = resolveClosure([...index, st('netcat-dummy')], ['netcat-openbsd']);
    expect(ok.packages.map((p) => p.Package)).toContain('libbsd-real');
    expect(() => resolveClosure(index, ['nosuch'])).toThrow(/package nosuch is not in the index/);
  });
});

// ensureGuestPackages against a small archive over real HTTP on loopback
// (unsigned InRelease: the warning path), with real .deb files made by
// dpkg-deb: the bad inputs each give one line naming the package and
// leave the lock and the cache as they were.
describe('ensureGuestPackages', () => {
  const work = mkdtempSync(join(tmpdir(), 'vmm-pkgs-'));
  const cache = join(work, 'cache');
  const lockPath = join(work, 'guest.lock.json');
  const files = new Map<string, Buffer>();
  let server: Server;
  const saved = { cache: process.env.XDG_CACHE_HOME, mirror: process.env.VMM_DEBIAN_MIRROR };
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  const deb = (name: string, file: string, text: string): Buffer => {
    const root = join(work, `deb-${name}`);
    mkdirSync(join(root, 'DEBIAN'), { recursive: true });
    mkdirSync(join(root, file, '..'), { recursive: true });
    writeFileSync(join(root, 'DEBIAN', 'control'), `Package: ${name}\nVersion: 1.0-1\nArchitecture: riscv64\nMaintainer: t <t@t>\nDescription: t\n`);
    writeFileSync(join(root, file), text);
    execFileSync('dpkg-deb', ['--root-owner-group', '-Zxz', '-b', root, join(work, `${name}.deb`)], { stdio: 'ignore' });
    return readFileSync(join(work, `${name}.deb`));
  };
  const stanza = (name: string, depends: string, body: Buffer | null, arch = 'riscv64'): string =>
    `Package: ${name}\nVersion: 1.0-1\nArchitecture: ${arch}\n${depends ? `Depends: ${depends}\n` : ''}Filename: pool/main/${name}.deb\nSize: ${body?.length ?? 1}\nSHA256: ${body ? sha(body) : 'e'.repeat(64)}\n`;
  const base = {
    format: 1, suite: 'trixie', architecture: 'riscv64', component: 'main', index: { path: 'main/binary-riscv64/Packages.xz', sha256: 'a'.repeat(64), releaseDate: 'x' },
    packages: (['kernel', 'busybox', 'opensbi'] as const).map((role) => ({ role, name: role, version: '1', filename: `pool/${role}.deb`, size: 1, sha256: 'b'.repeat(64) })),
  };
  const lockText = `${JSON.stringify(base, null, 2)}\n`;

  beforeAll(async () => {
    const tool = deb('tool', 'usr/bin/tool', 'tool\n');
    const libc = deb('libc6', 'usr/lib/riscv64-linux-gnu/libc.so.6', 'libc\n');
    const rotten = Buffer.from(deb('rotten', 'usr/bin/rotten', 'rotten\n'));
    const indexes: Record<string, string> = {
      'main/binary-riscv64': [stanza('tool', 'libc6 (>= 2.38), adduser', tool), stanza('libc6', '', libc), stanza('broken', 'libc6, ghost | phantom (>= 2)', null), stanza('rotten', '', rotten), stanza('adduser', 'passwd', null)].join('\n'),
      'non-free/binary-riscv64': stanza('netfoo', '', null),
      'main/binary-amd64': [stanza('cpuid', '', null, 'amd64'), stanza('tool', '', null, 'amd64')].join('\n'),
    };
    let release = 'Origin: Debian\nSuite: stable\nCodename: trixie\nDate: Sat, 12 Sep 2026 07:55:41 UTC\nSHA256:\n';
    for (const [dir, text] of Object.entries(indexes)) {
      const xz = execFileSync('xz', ['-c'], { input: text });
      files.set(`/debian/dists/trixie/${dir}/Packages.xz`, xz);
      release += ` ${sha(xz)} ${xz.length} ${dir}/Packages.xz\n`;
    }
    files.set('/debian/dists/trixie/InRelease', Buffer.from(release));
    files.set('/debian/pool/main/tool.deb', tool);
    files.set('/debian/pool/main/libc6.deb', libc);
    rotten[rotten.length - 1]! ^= 0xff; // the mirror serves other bytes than the index vouches for
    files.set('/debian/pool/main/rotten.deb', rotten);
    const l = await serveLoopback(serveFiles(files));
    server = l.server;
    process.env.VMM_DEBIAN_MIRROR = `${l.origin}/debian`;
    process.env.XDG_CACHE_HOME = cache;
  });
  afterAll(() => {
    server.close();
    for (const [k, v] of [['XDG_CACHE_HOME', saved.cache], ['VMM_DEBIAN_MIRROR', saved.mirror]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    rmSync(work, { recursive: true, force: true });
  });

  /** The cache's guest dir minus the fetched indexes: package directories, and what is in them. */
  const cached = (): string[] => {
    const dir = join(cache, 'vmm', 'guest');
    if (!existsSync(dir)) return [];
    return readdirSync(dir).filter((n) => n !== 'index').flatMap((n) => [n, ...readdirSync(join(dir, n)).map((f) => `${n}/${f}`)]).sort();
  };

  it.each([
    ['nosuch', 'package nosuch is not in Debian trixie (main, contrib, non-free) for riscv64 or amd64: unknown package name'],
    ['cpuid', 'package cpuid has no riscv64 build in trixie main (the archive builds it for amd64, not for riscv64)'],
    ['netfoo', 'package netfoo is in trixie non-free, not main; the guest kit takes packages from main only'],
    ['broken', 'broken depends on ghost | phantom (>= 2), which no package in the index provides'],
  ])('%s: one line naming it, the lock and the cache untouched', async (name, message) => {
    writeFileSync(lockPath, lockText);
    const err = await ensureGuestPackages(['tool', name], silentReporter, lockPath).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestKitError);
    expect((err as Error).message).toBe(message);
    expect(readFileSync(lockPath, 'utf8')).toBe(lockText);
    expect(cached()).toEqual([]);
  });

  it('locks and unpacks a package with its closure (install-time-only dependencies left out); a .deb that does not match the index leaves nothing behind', async () => {
    writeFileSync(lockPath, lockText);
    const got = await ensureGuestPackages(['tool'], silentReporter, lockPath);
    expect(got.map((p) => [p.name, p.via])).toEqual([['tool', 'tool'], ['libc6', 'tool']]);
    expect(JSON.parse(readFileSync(lockPath, 'utf8')).packages.slice(3).map((p: { name: string }) => p.name)).toEqual(['tool', 'libc6']);
    expect(readFileSync(join(cache, 'vmm', 'guest', 'tool_1.0-1', 'tree', 'usr', 'bin', 'tool'), 'utf8')).toBe('tool\n');
    const before = cached();
    const err = await ensureGuestPackages(['rotten'], silentReporter, lockPath).catch((e: unknown) => e);
    expect((err as GuestKitError).code).toBe('ERR_GUEST_HASH');
    expect((err as Error).message).toMatch(/^rotten 1\.0-1: SHA256 [0-9a-f]{64} of \S+rotten\.deb does not match the index/);
    // Its (verified) lock entry stays; its cache directory holds no file, no tree, no "complete".
    expect(cached().filter((f) => !before.includes(f))).toEqual(['rotten_1.0-1']);
  });
});
