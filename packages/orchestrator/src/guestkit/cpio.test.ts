import { execFileSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { CpioWriter, writeCpio } from './cpio.ts';
import { GuestKitError } from './errors.ts';

// The reference reader is Debian's GNU cpio: if it can list and extract
// what we write, so can the kernel's (simpler) unpacker.
function requireCpio(): void {
  try {
    execFileSync('cpio', ['--version'], { stdio: 'ignore' });
  } catch {
    throw new Error('GNU cpio is missing: run scripts/setup.sh (Debian package cpio)');
  }
}

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'vmm-cpio-'));
  dirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function extract(archive: Uint8Array): string {
  const d = tmp();
  execFileSync('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], { cwd: d, input: archive });
  return d;
}

describe('newc cpio writer', () => {
  requireCpio();

  it('is read back by GNU cpio: dirs, files, symlinks, device nodes, odd name lengths', () => {
    const data = new Uint8Array(1001).map((_, i) => (i * 7) & 0xff);
    const archive = writeCpio([
      { type: 'dir', path: 'bin' },
      { type: 'file', path: 'bin/busybox', data, mode: 0o755 },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
      { type: 'dir', path: 'dev' },
      { type: 'chardev', path: 'dev/console', major: 5, minor: 1 },
      { type: 'file', path: 'a', data: new Uint8Array([1, 2, 3]) },
      { type: 'file', path: 'abcd', data: new Uint8Array(0) },
    ]);
    expect(archive.length % 512).toBe(0);
    const list = execFileSync('cpio', ['-t', '--quiet'], { input: archive }).toString().trim().split('\n');
    expect(list).toEqual(['bin', 'bin/busybox', 'bin/sh', 'dev', 'dev/console', 'a', 'abcd']);
    const d = extract(archive);
    expect(new Uint8Array(readFileSync(join(d, 'bin/busybox')))).toEqual(data);
    expect(lstatSync(join(d, 'bin/busybox')).mode & 0o777).toBe(0o755);
    expect(readlinkSync(join(d, 'bin/sh'))).toBe('busybox');
    const con = lstatSync(join(d, 'dev/console'));
    expect(con.isCharacterDevice()).toBe(true);
    expect(con.rdev).toBe((5 << 8) | 1);
    expect([...readFileSync(join(d, 'a'))]).toEqual([1, 2, 3]);
    expect(readFileSync(join(d, 'abcd')).length).toBe(0);
  });

  it('concatenated archives unpack in order, the later file winning', () => {
    const a = writeCpio([{ type: 'file', path: 'x', data: new TextEncoder().encode('first') }]);
    const b = writeCpio([{ type: 'file', path: 'x', data: new TextEncoder().encode('second') }, { type: 'file', path: 'y', data: new Uint8Array([9]) }]);
    const both = new Uint8Array(a.length + b.length);
    both.set(a);
    both.set(b, a.length);
    const f = join(tmp(), 'both.cpio');
    writeFileSync(f, both);
    const d = tmp();
    // GNU cpio stops at the first trailer; read the second archive from its offset, as the kernel does.
    execFileSync('sh', ['-c', `cpio -idm --quiet < ${f} && tail -c ${b.length} ${f} | cpio -idum --quiet`], { cwd: d });
    expect(readFileSync(join(d, 'x'), 'utf8')).toBe('second');
    expect([...readFileSync(join(d, 'y'))]).toEqual([9]);
  });

  it('round-trips arbitrary file sets through GNU cpio', () => {
    const name = fc.stringMatching(/^[a-z0-9_.-]{1,20}$/).filter((s) => s !== '.' && s !== '..');
    fc.assert(
      fc.property(fc.uniqueArray(fc.tuple(name, fc.uint8Array({ maxLength: 300 })), { selector: (t) => t[0], minLength: 1, maxLength: 8 }), (files) => {
        const archive = writeCpio(files.map(([p, data]) => ({ type: 'file' as const, path: p, data })));
        const d = extract(archive);
        for (const [p, data] of files) expect(new Uint8Array(readFileSync(join(d, p)))).toEqual(data);
      }),
      { numRuns: 25 },
    );
  });

  it('rejects absolute, escaping and duplicate paths with a typed error', () => {
    for (const bad of ['/etc/passwd', '../x', 'a//b', '']) {
      expect(() => writeCpio([{ type: 'dir', path: bad }])).toThrow(GuestKitError);
    }
    const w = new CpioWriter().add({ type: 'dir', path: 'a' });
    expect(() => w.add({ type: 'dir', path: 'a' })).toThrow(/duplicate entry a/);
  });
});
