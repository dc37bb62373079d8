import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Reporter } from './download.ts';
import { GuestKitError } from './errors.ts';
import { resolveGuestPackages } from './kit.ts';
import { serveFiles, serveLoopback } from './test-server.ts';

// A fake Debian archive over real HTTP on loopback. Its InRelease files
// are unsigned (gpgv rejects them: the warning path); what is exercised is
// the hash chain and the resolution through the kernel metapackage.
const stanzas = (kver: string): string =>
  [
    `Package: linux-image-riscv64\nVersion: ${kver}-1\nArchitecture: riscv64\nDepends: linux-image-${kver}+deb13-riscv64 (= ${kver}-1)\nFilename: pool/main/l/linux/meta.deb\nSize: 1\nSHA256: ${'1'.repeat(64)}`,
    `Package: linux-image-${kver}+deb13-riscv64\nVersion: ${kver}-1\nArchitecture: riscv64\nFilename: pool/main/l/linux/k.deb\nSize: 100\nSHA256: ${'2'.repeat(64)}`,
    `Package: busybox-static\nVersion: 1:1.37.0-6\nArchitecture: riscv64\nFilename: pool/main/b/busybox/old.deb\nSize: 9\nSHA256: ${'3'.repeat(64)}`,
    `Package: busybox-static\nVersion: 1:1.37.0-6+b9\nArchitecture: riscv64\nFilename: pool/main/b/busybox/new.deb\nSize: 10\nSHA256: ${'4'.repeat(64)}`,
    `Package: opensbi\nVersion: 1.6-1\nArchitecture: all\nFilename: pool/main/o/opensbi/o.deb\nSize: 5\nSHA256: ${'5'.repeat(64)}`,
    `Package: linux-source-6.12\nVersion: ${kver}-1\nArchitecture: all\nFilename: pool/main/l/linux/src.deb\nSize: 7\nSHA256: ${'6'.repeat(64)}`,
    `Package: linux-source-6.12\nVersion: 6.12.999-1\nArchitecture: all\nFilename: pool/main/l/linux/src-newer.deb\nSize: 8\nSHA256: ${'7'.repeat(64)}`,
  ].join('\n\n') + '\n';

const xz = (text: string): Buffer => execFileSync('xz', ['-c'], { input: text });
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const release = (suite: string, codename: string, hash: string, size: number): string =>
  `Origin: Debian\nSuite: ${suite}\nCodename: ${codename}\nDate: Sat, 12 Sep 2026 07:55:41 UTC\nAcquire-By-Hash: yes\nSHA256:\n ${hash} ${size} main/binary-riscv64/Packages.xz\n`;

let server: Server;
let mirror = '';
const files = new Map<string, Buffer | string>();
const cache = mkdtempSync(join(tmpdir(), 'vmm-kit-'));
const savedCache = process.env.XDG_CACHE_HOME;

beforeAll(async () => {
  const l = await serveLoopback(serveFiles(files));
  server = l.server;
  mirror = `${l.origin}/debian`;
  process.env.XDG_CACHE_HOME = cache;
});
afterAll(() => {
  server.close();
  if (savedCache === undefined) delete process.env.XDG_CACHE_HOME;
  else process.env.XDG_CACHE_HOME = savedCache;
  rmSync(cache, { recursive: true, force: true });
});
beforeEach(() => files.clear());

function recorder(): Reporter & { warnings: string[] } {
  const warnings: string[] = [];
  return { warnings, info: () => {}, warn: (l) => warnings.push(l) };
}

describe('resolving the guest packages from an archive', () => {
  it('follows the kernel metapackage, takes the newest busybox, records hashes; unsigned InRelease is a warning', async () => {
    const idx = xz(stanzas('6.12.107'));
    files.set('/debian/dists/trixie/InRelease', release('stable', 'trixie', sha(idx), idx.length));
    files.set(`/debian/dists/trixie/main/binary-riscv64/by-hash/SHA256/${sha(idx)}`, idx);
    const r = recorder();
    const lock = await resolveGuestPackages(mirror, r);
    expect(lock.packages.map((p) => [p.role, p.name, p.version, p.filename])).toEqual([
      ['kernel', 'linux-image-6.12.107+deb13-riscv64', '6.12.107-1', 'pool/main/l/linux/k.deb'],
      ['busybox', 'busybox-static', '1:1.37.0-6+b9', 'pool/main/b/busybox/new.deb'],
      ['opensbi', 'opensbi', '1.6-1', 'pool/main/o/opensbi/o.deb'],
      // the source of the same Debian version as the kernel, not the newest
      ['kernel-source', 'linux-source-6.12', '6.12.107-1', 'pool/main/l/linux/src.deb'],
    ]);
    expect(lock.packages[0]!.via).toBe('linux-image-riscv64');
    expect(lock.index.sha256).toBe(sha(idx));
    expect(r.warnings.some((w) => w.includes('cannot verify the signature of dists/trixie/InRelease'))).toBe(true);
  });

  it('accepts an index out of step with trixie/InRelease when the signed alias suite lists it, saying so', async () => {
    const served = xz(stanzas('6.12.100'));
    const newer = xz(stanzas('6.12.107'));
    files.set('/debian/dists/trixie/InRelease', release('stable', 'trixie', sha(newer), newer.length));
    files.set('/debian/dists/trixie/main/binary-riscv64/Packages.xz', served);
    files.set('/debian/dists/stable/InRelease', release('stable', 'trixie', sha(served), served.length));
    const r = recorder();
    const lock = await resolveGuestPackages(mirror, r);
    expect(lock.packages[0]!.version).toBe('6.12.100-1');
    expect(r.warnings.some((w) => w.includes('out of step') && w.includes('dists/stable/InRelease'))).toBe(true);
  });

  it('refuses an index no InRelease vouches for', async () => {
    const served = xz(stanzas('6.12.100'));
    files.set('/debian/dists/trixie/InRelease', release('stable', 'trixie', 'f'.repeat(64), 1));
    files.set('/debian/dists/trixie/main/binary-riscv64/Packages.xz', served);
    // An alias naming another codename does not count.
    files.set('/debian/dists/stable/InRelease', release('stable', 'forky', sha(served), served.length));
    const err = await resolveGuestPackages(mirror, recorder()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestKitError);
    expect((err as GuestKitError).code).toBe('ERR_GUEST_HASH');
    expect((err as Error).message).toContain(sha(served));
  });
});
