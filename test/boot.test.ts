// End-to-end boots of the Debian guest kit.
//  1. Under QEMU (`-M virt`, OpenSBI fw_dynamic): proves the initramfs,
//     module loading, the interactive shell and the --exec exit-status
//     protocol (sifive,test1 finisher) independently of our vCPU.
//  2. Under vmm (`pnpm vmm run --exec`): the same guest on our machine.
// Boots are slow (TCG, or our wasm emulator): one at a time, generous
// deadlines, no timing assertions.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExecOutputFilter, GUEST_MODULES, initrdWithExec, type GuestKit } from '@vmm/orchestrator';
import { VMM_CLI, kitAndInitramfs, qemuArgs, requireQemu, runBounded } from './guest-helpers.ts';

let kit: GuestKit;
let initramfs: string;
const dir = mkdtempSync(join(tmpdir(), 'vmm-boot-'));

beforeAll(async () => {
  ({ kit, initramfs } = await kitAndInitramfs());
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function qemuExec(command: string, smp: number): Promise<{ code: number | null; output: string; status: number | null; console: string }> {
  const x = await initrdWithExec(initramfs, command);
  const f = join(dir, `exec-${x.nonce}.cpio`);
  writeFileSync(f, x.initrd);
  const r = await runBounded('qemu-system-riscv64', qemuArgs(kit, f, smp, 'console=ttyS0 panic=-1 quiet'), { timeoutMs: 180_000 });
  let output = '';
  const filter = new ExecOutputFilter(x.markers, (t) => (output += t));
  filter.push(new TextEncoder().encode(r.stdout));
  expect(r.timedOut, `QEMU did not finish; console:\n${r.stdout.slice(-3000)}`).toBe(false);
  return { code: r.code, output, status: filter.status, console: r.stdout };
}

describe('guest kit under QEMU (reference machine)', () => {
  requireQemu();

  for (const smp of [1, 2]) {
    it(`--exec 'uname -m; nproc' with ${smp} hart(s): prints only the command output, exits 0`, async () => {
      const r = await qemuExec('uname -m; nproc', smp);
      expect(r.output).toBe(`riscv64\n${smp}\n`);
      expect(r.status).toBe(0);
      expect(r.code).toBe(0);
    });
  }

  it('loads every module the initramfs carries', async () => {
    const r = await qemuExec('cut -d" " -f1 /proc/modules | sort', 1);
    expect(r.output.trim().split('\n')).toEqual([...GUEST_MODULES].sort());
    expect(r.console).not.toContain('insmod');
  });

  it('reports a command exiting 3 through the finisher: QEMU exits 3', async () => {
    const r = await qemuExec('echo before; exit 3', 1);
    expect(r.output).toBe('before\n');
    expect(r.status).toBe(3);
    expect(r.code).toBe(3);
  });

  it('interactive: a shell with job control on the console; poweroff ends the machine with 0', async () => {
    const r = await runBounded('qemu-system-riscv64', qemuArgs(kit, initramfs, 1, 'console=ttyS0 quiet'), {
      timeoutMs: 180_000,
      script: [
        { waitFor: "'poweroff' to stop the machine", send: '' },
        { waitFor: '$ ', send: 'echo sum-$((40+2)); sleep 30 &\n' },
        { waitFor: 'sum-42', send: 'jobs; tty\n' },
        { waitFor: '/dev/ttyS0', send: 'poweroff\n' },
      ],
    });
    expect(r.timedOut, r.stdout.slice(-2000)).toBe(false);
    expect(r.stdout).toMatch(/\[1\]\+\s+Running\s+sleep 30/);
    expect(r.code).toBe(0);
  });
});

describe('vmm run --exec (our machine)', () => {
  const vmm = (args: string[]) => runBounded(process.execPath, [VMM_CLI, 'run', ...args], { timeoutMs: 850_000 });

  for (const bios of ['builtin', 'opensbi']) {
    for (const smp of [1, 2]) {
      // `busybox time` reads the clock through the vDSO, i.e. `rdtime` in
      // U-mode: it needs the counter enables firmware leaves (scounteren,
      // privileged 1.12 §4.1.4), else it dies of SIGILL with status 132.
      it(`--bios ${bios} --smp ${smp}: uname -m; nproc; busybox time -f %e true`, { timeout: 900_000 }, async () => {
        const r = await vmm(['--bios', bios, '--smp', String(smp), '--exec', 'uname -m; nproc; busybox time -f %e true 2>&1']);
        expect(r.timedOut, r.stderr.slice(-3000)).toBe(false);
        expect(r.stdout).toMatch(new RegExp(`^riscv64\\n${smp}\\n\\d+\\.\\d\\d\\n$`));
        expect(r.code, r.stderr.slice(-3000)).toBe(0);
      });
    }
  }

  it('interactive: the console reaches a shell, and guest poweroff ends vmm with 0', async () => {
    const r = await runBounded(process.execPath, [VMM_CLI, 'run'], {
      timeoutMs: 850_000,
      script: [
        { waitFor: "'poweroff' to stop the machine", send: '' },
        { waitFor: '$ ', send: 'echo sum-$((40+2))\n' },
        { waitFor: 'sum-42', send: 'poweroff\n' },
      ],
    });
    expect(r.timedOut, r.stdout.slice(-3000)).toBe(false);
    expect(r.stdout).toContain('sum-42');
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
  });

  // Every test above runs the default engine (the translator); the interpreter, its reference, keeps one boot.
  it('--engine interp: the interpreter alone boots the same guest', { timeout: 900_000 }, async () => {
    const r = await vmm(['--engine', 'interp', '--smp', '2', '--exec', 'uname -m; nproc; busybox time -f %e true 2>&1']);
    expect(r.timedOut, r.stderr.slice(-3000)).toBe(false);
    expect(r.stdout).toMatch(/^riscv64\n2\n\d+\.\d\d\n$/);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
  });

  it('exits with the status of the command (3)', async () => {
    const r = await vmm(['--exec', 'echo out; exit 3']);
    expect(r.stdout).toBe('out\n');
    expect(r.code, r.stderr.slice(-3000)).toBe(3);
  });
});
