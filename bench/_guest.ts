// Helpers shared by the guest benchmarks (boot, mips): run one busybox sh
// command in a freshly booted guest, under our vmm (its CLI, as a user runs
// it) and under qemu-system-riscv64 -M virt (TCG) with the same kernel and
// initramfs, and time when the command's output appears.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureGuestKit, buildInitramfs, initrdWithExec, ExecOutputFilter, silentReporter } from '@vmm/orchestrator';
import type { GuestKit } from '@vmm/orchestrator';
import { ENGINE_KINDS, type EngineKind } from '@vmm/vcpu';

export class BenchGuestError extends Error {
  readonly code = 'ERR_BENCH_GUEST';
}

export interface GuestRun {
  /** Seconds from spawning the process to `marker` appearing in the command's output. */
  markerSeconds: number;
  /** Seconds until the process exited. */
  totalSeconds: number;
  /** The command's output (between the exec markers). */
  output: string;
}

export interface Guest {
  kit: GuestKit;
  initramfs: string;
}

export async function prepareGuest(): Promise<Guest> {
  const kit = await ensureGuestKit({ reporter: silentReporter });
  const built = await buildInitramfs(kit);
  return { kit, initramfs: built.path };
}

export const MEM = '512M';
const CLI = fileURLToPath(new URL('../packages/orchestrator/src/cli.ts', import.meta.url));

function timed(cmd: string, args: string[], marker: string, timeoutMs: number, filter: (chunk: Buffer, emit: (s: string) => void) => void, signal?: AbortSignal): Promise<GuestRun> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const secs = (): number => Number(process.hrtime.bigint() - t0) / 1e9;
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let markerSeconds = -1;
    let stderr = '';
    const emit = (s: string): void => {
      output += s;
      if (markerSeconds < 0 && output.includes(marker)) markerSeconds = secs();
    };
    child.stdout.on('data', (b: Buffer) => filter(b, emit));
    child.stderr.on('data', (b: Buffer) => { if (stderr.length < 65536) stderr += b.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    signal?.addEventListener('abort', () => child.kill('SIGKILL'), { once: true });
    child.on('error', (e) => { clearTimeout(timer); reject(new BenchGuestError(`${cmd}: ${e.message}`)); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (markerSeconds < 0) {
        reject(new BenchGuestError(`${path.basename(cmd)} ${args[0] ?? ''}: marker never appeared (exit ${code ?? signal}); output: ${output.slice(-2000)} stderr: ${stderr.slice(-2000)}`));
      } else resolve({ markerSeconds, totalSeconds: secs(), output });
    });
  });
}

/** Our vmm: `vmm run --engine E --exec CMD` (stdout is exactly the command's output). */
export function runOurs(command: string, marker: string, timeoutMs: number, engine: EngineKind = 'interp'): Promise<GuestRun> {
  return timed(process.execPath, [CLI, 'run', '--engine', engine, '--mem', MEM, '--exec', command], marker, timeoutMs, (b, emit) => emit(b.toString()));
}

/** `--engine interp|jit|both` (default interp): the vmm engines a benchmark measures. */
export function engineArg(args: string[]): EngineKind[] {
  const i = args.indexOf('--engine');
  if (i < 0) return ['interp'];
  const v = args[i + 1] ?? '';
  if (v === 'both') return [...ENGINE_KINDS];
  if (!(ENGINE_KINDS as readonly string[]).includes(v)) throw new RangeError(`--engine must be ${ENGINE_KINDS.join(', ')} or both, got ${JSON.stringify(v)}`);
  return [v as EngineKind];
}

/**
 * QEMU: same kernel, same base initramfs plus the same --exec archive; the
 * kit's OpenSBI fw_dynamic (FACTS.md: fw_jump leaves the 6.12 kernel too
 * little room before the DTB). The initramfs's /init powers the machine
 * off through the sifive,test finisher after the command, so qemu exits.
 * `extra` adds QEMU arguments and kernel command-line words (a NIC, say);
 * its `signal` kills QEMU early (its peer failed).
 */
export async function runQemu(g: Guest, command: string, marker: string, timeoutMs: number, extra: { args: string[]; append: string; signal?: AbortSignal } = { args: [], append: '' }): Promise<GuestRun> {
  const x = await initrdWithExec(g.initramfs, command);
  const dir = mkdtempSync(path.join(tmpdir(), 'vmm-bench-'));
  try {
    const initrd = path.join(dir, 'initrd.cpio');
    writeFileSync(initrd, x.initrd);
    let filter: ExecOutputFilter | undefined;
    return await timed('qemu-system-riscv64', [
      '-M', 'virt', '-smp', '1', '-m', MEM, '-nographic', '-no-reboot',
      '-bios', g.kit.opensbi.fwDynamic, '-kernel', g.kit.kernel, '-initrd', initrd,
      '-append', `console=ttyS0 earlycon=sbi cryptomgr.notests quiet ${extra.append}`.trimEnd(),
      ...extra.args,
    ], marker, timeoutMs, (b, emit) => {
      // Pass on only the command's output (between the exec markers), as vmm --exec does.
      filter ??= new ExecOutputFilter(x.markers, emit);
      filter.push(new Uint8Array(b));
    }, extra.signal);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export function argValue(args: string[], name: string, dflt: number): number {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = Number(args[i + 1]);
  if (!Number.isFinite(v) || v <= 0) throw new RangeError(`${name} must be a positive number, got ${args[i + 1]}`);
  return v;
}
