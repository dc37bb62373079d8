// The Depends: closure of extra guest packages, over a synthetic index.
import { describe, expect, it } from 'vitest';
import type { PackageStanza } from './debian.ts';
import { GuestKitError } from './errors.ts';
import { resolveClosure } from './packages.ts';

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
