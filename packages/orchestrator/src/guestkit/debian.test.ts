import { describe, expect, it } from 'vitest';
import { compareDebVersions, newest, parsePackages, parseRelease } from './debian.ts';
import { GuestKitError } from './errors.ts';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { debianMirror, parseDeb822Sources, parseOneLineSources, pickDebianMirror, readAptSources } from './sources.ts';

describe('Debian metadata', () => {
  it('reads the SHA256 section of a clearsigned InRelease', () => {
    const text = [
      '-----BEGIN PGP SIGNED MESSAGE-----',
      'Hash: SHA256',
      '',
      'Origin: Debian',
      'Suite: stable',
      'Codename: trixie',
      'Date: Sat, 21 Nov 2026 09:15:44 UTC',
      'Acquire-By-Hash: yes',
      'MD5Sum:',
      ' 576c5642117fbf5e949c05740c8aa3eb  9387120 main/binary-riscv64/Packages.xz',
      'SHA256:',
      ' F60294DC64D700AFA90C1833CDA096D8B8DE1F033E99AB2969A99FB9EA4AFF1B  9387120 main/binary-riscv64/Packages.xz',
      '-----BEGIN PGP SIGNATURE-----',
      'xxx',
      '-----END PGP SIGNATURE-----',
    ].join('\n');
    const r = parseRelease(text);
    expect(r.codename).toBe('trixie');
    expect(r.suite).toBe('stable');
    expect(r.acquireByHash).toBe(true);
    expect(r.sha256.get('main/binary-riscv64/Packages.xz')).toEqual({ sha256: 'f60294dc64d700afa90c1833cda096d8b8de1f033e99ab2969a99fb9ea4aff1b', size: 9387120 });
  });

  it('parses Packages stanzas and picks the newest version', () => {
    const idx = parsePackages(
      [
        'Package: busybox-static\nVersion: 1:1.37.0-6\nArchitecture: riscv64\nFilename: pool/a.deb\nSize: 10\nSHA256: AA\nDescription: x\n more text',
        'Package: busybox-static\nVersion: 1:1.37.0-6+b9\nArchitecture: riscv64\nFilename: pool/b.deb\nSize: 11\nSHA256: bb',
        'Package: opensbi\nVersion: 1.6-1\nArchitecture: all\nFilename: pool/c.deb\nSize: 1\nSHA256: cc',
      ].join('\n\n'),
    );
    expect(idx).toHaveLength(3);
    expect(idx[0]!.SHA256).toBe('aa');
    expect(newest(idx, 'busybox-static').Filename).toBe('pool/b.deb');
    expect(() => newest(idx, 'nope')).toThrow(GuestKitError);
  });

  it('compares versions like dpkg', () => {
    const lt = (a: string, b: string): void => {
      expect(compareDebVersions(a, b)).toBeLessThan(0);
      expect(compareDebVersions(b, a)).toBeGreaterThan(0);
    };
    lt('1.0', '1.1');
    lt('1.0~rc1', '1.0');
    lt('1.37.0-6', '1.37.0-6+b9');
    lt('6.12.9-1', '6.12.107-1');
    lt('9:1.0', '10:0.1');
    lt('1.0a', '1.0+');
    expect(compareDebVersions('1:1.37.0-6+b9', '1:1.37.0-6+b9')).toBe(0);
    expect(compareDebVersions('1.0', '0:1.0')).toBe(0);
  });
});

describe('apt sources', () => {
  it('finds the Debian archive, not the security archive nor a third-party repo', () => {
    const deb822 = parseDeb822Sources(
      [
        'Types: deb\nURIs: https://example.org/node\nSuites: nodistro\nComponents: main',
        'Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main',
        '# comment\nTypes: deb deb-src\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\nComponents: main contrib',
      ].join('\n\n'),
      'debian.sources',
    );
    expect(deb822).toHaveLength(3);
    expect(pickDebianMirror(deb822)).toBe('http://mirror.invalid/debian');
    expect(pickDebianMirror(parseDeb822Sources('Types: deb\nEnabled: no\nURIs: http://a.invalid/debian\nSuites: trixie\nComponents: main', 'x'))).toBeNull();
  });

  it('reads one-line entries with options', () => {
    const s = parseOneLineSources('# x\ndeb [signed-by=/k.gpg arch=amd64] http://a.invalid/debian trixie main\ndeb-src http://b.invalid/debian trixie main\n', 'sources.list');
    expect(s).toEqual([{ uri: 'http://a.invalid/debian', suites: ['trixie'], components: ['main'], file: 'sources.list' }]);
    expect(pickDebianMirror(s)).toBe('http://a.invalid/debian');
  });
});

describe('apt configuration on disk', () => {
  it('reads sources.list and sources.list.d/*.list|*.sources, ignoring other suffixes', () => {
    const root = mkdtempSync(join(tmpdir(), 'vmm-apt-'));
    try {
      mkdirSync(join(root, 'sources.list.d'));
      writeFileSync(join(root, 'sources.list.d', 'a.sources.disabled-by-someone'), 'Types: deb\nURIs: http://wrong.invalid/debian\nSuites: trixie\nComponents: main\n');
      writeFileSync(join(root, 'sources.list.d', 'debian.sources'), 'Types: deb\nURIs: http://right.invalid/debian\nSuites: bookworm\nComponents: main\n');
      expect(readAptSources(root).map((s) => s.uri)).toEqual(['http://right.invalid/debian']);
      const saved = process.env.VMM_DEBIAN_MIRROR;
      delete process.env.VMM_DEBIAN_MIRROR;
      try {
        expect(debianMirror(root)).toBe('http://right.invalid/debian');
        rmSync(join(root, 'sources.list.d', 'debian.sources'));
        expect(() => debianMirror(root)).toThrow(/no Debian archive found/);
        process.env.VMM_DEBIAN_MIRROR = 'http://override.invalid/debian/';
        expect(debianMirror(root)).toBe('http://override.invalid/debian');
      } finally {
        if (saved === undefined) delete process.env.VMM_DEBIAN_MIRROR;
        else process.env.VMM_DEBIAN_MIRROR = saved;
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
