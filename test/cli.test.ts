// The `vmm` and `pnpm guest` command lines as a user meets them: help,
// bad flags (one line naming flag and value, status 2), missing or corrupt
// inputs (one line, non-zero), and --dump-dtb checked with dtc.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GuestKit } from '@vmm/orchestrator';
import { VMM_CLI, kitAndInitramfs, runBounded } from './guest-helpers.ts';

const GUEST_CLI = fileURLToPath(new URL('../packages/orchestrator/src/guestkit/cli.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vmm-cli-'));
let kit: GuestKit;

beforeAll(async () => {
  ({ kit } = await kitAndInitramfs());
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const vmm = (...args: string[]) => runBounded(process.execPath, [VMM_CLI, ...args], { timeoutMs: 120_000 });
const oneLine = (s: string): string => {
  const lines = s.trimEnd().split('\n');
  expect(lines, s).toHaveLength(1);
  return lines[0]!;
};

describe('vmm command line', () => {
  it('--help lists every flag and exits 0', async () => {
    const r = await vmm('run', '--help');
    expect(r.code).toBe(0);
    for (const f of ['--smp', '--mem', '--kernel', '--initrd', '--append', '--bios', '--dump-dtb', '--exec', '--verbose', '--log-level', '--disk', '--api-port', '--qmp', 'Ctrl-A x']) expect(r.stdout).toContain(f);
    expect((await vmm('--help')).code).toBe(0);
  });

  it('rejects bad values and unknown flags with one line and status 2', async () => {
    const cases: [string[], string[]][] = [
      [['run', '--smp', '0'], ['--smp', '"0"']],
      [['run', '--smp', '9'], ['--smp', '"9"']],
      [['run', '--mem', '12X'], ['--mem', '"12X"']],
      [['run', '--mem', '1M'], ['--mem', '"1M"']],
      [['run', '--log-level', 'loud'], ['--log-level', '"loud"']],
      [['run', '--no-such-flag'], ['--no-such-flag']],
      [['run', '--smp'], ['--smp']],
      [['fly'], ['fly']],
    ];
    for (const [argv, words] of cases) {
      const r = await vmm(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      const line = oneLine(r.stderr);
      for (const w of words) expect(line).toContain(w);
      expect(r.stdout).toBe('');
    }
  });

  it('a missing kernel or initrd: one line naming the file, status 1', async () => {
    const r = await vmm('run', '--kernel', join(dir, 'nope'), '--initrd', join(dir, 'nope.cpio'));
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toContain(join(dir, 'nope'));
    const r2 = await vmm('run', '--kernel', kit.kernel, '--initrd', join(dir, 'nope.cpio'));
    expect(r2.code).toBe(1);
    expect(oneLine(r2.stderr)).toContain('nope.cpio');
  });

  it('a corrupt kernel or initrd: one line saying what is wrong, status 1', async () => {
    const junk = join(dir, 'junk');
    writeFileSync(junk, new Uint8Array(4096).fill(0x5a));
    const r = await vmm('run', '--kernel', junk, '--initrd', junk);
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/--kernel .*junk is not a RISC-V Linux Image/);
    const r2 = await vmm('run', '--kernel', kit.kernel, '--initrd', junk);
    expect(r2.code).toBe(1);
    expect(oneLine(r2.stderr)).toMatch(/--initrd .*junk is neither a newc cpio/);
  });

  it('an initrd that does not fit in --mem: one line, status 1', async () => {
    const big = join(dir, 'big.cpio');
    const bytes = new Uint8Array(60 * 2 ** 20);
    bytes.set(new TextEncoder().encode('070701'));
    writeFileSync(big, bytes);
    const r = await vmm('run', '--mem', '64M', '--initrd', big);
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/do not fit in --mem 64M/);
  });

  it('--dump-dtb writes the device tree the guest would get (checked with dtc) and exits 0', async () => {
    const out = join(dir, 'virt.dtb');
    const r = await vmm('run', '--smp', '2', '--mem', '256M', '--append', 'foo=bar', '--dump-dtb', out);
    expect(r.code, r.stderr).toBe(0);
    let dts: string;
    try {
      dts = execFileSync('dtc', ['-q', '-I', 'dtb', '-O', 'dts', out], { encoding: 'utf8' });
    } catch (e) {
      throw new Error(`dtc failed (missing? run scripts/setup.sh, Debian package device-tree-compiler): ${(e as Error).message}`, { cause: e });
    }
    expect(dts).toContain('compatible = "riscv-virtio"');
    expect(dts).toMatch(/cpu@0\s*{/);
    expect(dts).toMatch(/cpu@1\s*{/);
    expect(dts).not.toMatch(/cpu@2\s*{/);
    expect(dts).toMatch(/bootargs = "console=ttyS0 earlycon=sbi cryptomgr.notests foo=bar"/);
    expect(dts).toMatch(/memory@80000000\s*{[^}]*reg = <0x00 0x80000000 0x00 0x10000000>/);
    expect(dts).toContain('linux,initrd-start');
  });

  it('interactive: Ctrl-A x stops the machine and vmm exits 0', async () => {
    const r = await runBounded(process.execPath, [VMM_CLI, 'run'], {
      timeoutMs: 600_000,
      // Wait for the kernel's first early-console line, then type the escape.
      script: [{ waitFor: 'Linux version', send: '\x01x' }],
    });
    expect(r.timedOut, r.stdout.slice(-2000)).toBe(false);
    expect(r.stdout).toContain('Linux version');
    // As QEMU's "QEMU: Terminated": on a line of its own, so the shell's prompt starts a fresh one.
    expect(r.stdout.endsWith('\r\nvmm: terminated\r\n'), r.stdout.slice(-200)).toBe(true);
    expect(r.code, r.stderr).toBe(0);
  });
});

describe('pnpm guest command line', () => {
  const guest = (...args: string[]) => runBounded(process.execPath, [GUEST_CLI, ...args], { timeoutMs: 300_000 });

  it('--help exits 0; an unknown command exits 2 with one line', async () => {
    const h = await guest('--help');
    expect(h.code).toBe(0);
    expect(h.stdout).toContain('fetch [--update]');
    const r = await guest('frobnicate');
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toContain('frobnicate');
  });

  it('fetch with the lock and a warm cache touches no network', async () => {
    // An unroutable mirror: any network access would fail the command.
    const r = await runBounded(process.execPath, [GUEST_CLI, 'fetch'], { timeoutMs: 60_000, env: { ...process.env, VMM_DEBIAN_MIRROR: 'http://127.0.0.1:9' } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`ready: kernel ${kit.kernelVersion}`);
    expect(r.stderr).not.toContain('fetching');
  });

  it('build --exec writes a base archive followed by the command archive', async () => {
    const out = join(dir, 'x.cpio');
    const r = await guest('build', '--exec', 'echo hi', '-o', out);
    expect(r.code, r.stderr).toBe(0);
    const bytes = readFileSync(out);
    const list = execFileSync('cpio', ['-t', '--quiet'], { input: bytes }).toString();
    expect(list).toContain('init');
    expect(list).toContain('bin/busybox');
    expect(list).toContain('sbin/vmm-hotplug');
    // GNU cpio stops at the first trailer; the appended archive follows the
    // base's trailer, the last-but-one (busybox itself contains the string).
    const second = bytes.indexOf('070701', bytes.lastIndexOf('TRAILER!!!', bytes.lastIndexOf('TRAILER!!!') - 1));
    const tail = execFileSync('cpio', ['-t', '--quiet'], { input: bytes.subarray(second) }).toString();
    expect(tail.trim().split('\n')).toEqual(['vmm', 'vmm/exec.sh', 'vmm/nonce']);
  });
});

describe('every command a user runs: --help, and a wrong flag in one line', () => {
  const root = fileURLToPath(new URL('..', import.meta.url));
  /** What a login shell has: the system's PATH and Node 20, no pnpm shims (the device bins find the pinned Node themselves). */
  const PLAIN_ENV = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: process.env.HOME ?? '/root' };
  const BENCH = join(root, 'bench', 'run.ts');
  const commands: { name: string; run: (...a: string[]) => Promise<{ code: number | null; stdout: string; stderr: string }>; usage: RegExp; bad: string[]; says: string }[] = [
    { name: 'vmm', run: (...a) => vmm(...a), usage: /^usage: pnpm vmm <command>/, bad: ['--bogus'], says: '"--bogus"' },
    { name: 'vmm run', run: (...a) => vmm('run', ...a), usage: /^usage: pnpm vmm run/, bad: ['--bogus'], says: "'--bogus' (pnpm vmm run --help)" },
    { name: 'vmm ctl', run: (...a) => vmm('ctl', ...a), usage: /^usage: vmm ctl/, bad: ['--bogus'], says: "'--bogus' (vmm ctl --help)" },
    { name: 'pnpm guest', run: (...a) => runBounded(process.execPath, [GUEST_CLI, ...a], { timeoutMs: 60_000 }), usage: /^usage: pnpm guest/, bad: ['fetch', '--bogus'], says: "'--bogus' (pnpm guest --help)" },
    { name: 'pnpm bench', run: (...a) => runBounded(process.execPath, [BENCH, ...a], { timeoutMs: 60_000 }), usage: /^usage: pnpm bench NAME/, bad: ['boot', '--bogus'], says: 'unknown option --bogus (boot takes --runs V, --engine V)' },
    ...[['vmm-blk', 'virtio-blk'], ['vmm-net', 'virtio-net'], ['vmm-switch', 'virtio-net'], ['vmm-iommu', 'iommu']].map(([bin, pkg]) => ({
      name: bin!,
      run: (...a: string[]) => runBounded(join(root, 'packages', pkg!, 'bin', bin!), a, { timeoutMs: 60_000, env: PLAIN_ENV }),
      usage: new RegExp(`^usage: ${bin} --`),
      bad: ['--bogus'],
      says: `${bin}: `,
    })),
  ];
  it.each(commands.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const h = await c.run('--help');
    expect(h.code, h.stderr).toBe(0);
    expect(h.stdout).toMatch(c.usage);
    const r = await c.run(...c.bad);
    expect(r.code, r.stderr).toBe(2);
    const line = oneLine(r.stderr);
    expect(line).toContain(c.says);
    expect(line).toMatch(/bogus/i);
    expect(r.stdout).toBe('');
  });
});
