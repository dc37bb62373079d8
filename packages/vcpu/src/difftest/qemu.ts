// The reference side: run an image under qemu-riscv64 (Debian qemu-user,
// TCG, `-cpu rv64` = RV64GC) and capture what its epilogue writes to stdout.

import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export class QemuError extends Error {
  readonly code = 'ERR_DIFFTEST_QEMU';
}

export const QEMU = process.env.VMM_QEMU_RISCV64 ?? 'qemu-riscv64';

let dir: string | undefined;
let serial = 0;

function workDir(): string {
  if (!dir) {
    const d = mkdtempSync(path.join(tmpdir(), 'vmm-difftest-'));
    dir = d;
    process.once('exit', () => rmSync(d, { recursive: true, force: true }));
  }
  return dir;
}

export interface QemuRun {
  stdout: Uint8Array;
  /** Exit status, or null when a signal ended it. */
  status: number | null;
  /** The signal that ended it (SIGILL, SIGBUS, SIGSEGV, SIGTRAP …), or null. */
  signal: string | null;
  stderr: string;
}

/** Run an ELF under qemu-riscv64 and report how it ended. */
export function execQemu(elf: Uint8Array, timeoutMs = 30_000): Promise<QemuRun> {
  const file = path.join(workDir(), `p${process.pid}-${serial++}.elf`);
  writeFileSync(file, elf, { mode: 0o755 });
  return new Promise((resolve, reject) => {
    execFile(QEMU, ['-cpu', 'rv64', file], { encoding: 'buffer', maxBuffer: 1 << 24, timeout: timeoutMs }, (err, stdout, stderr) => {
      rmSync(file, { force: true });
      const e = err as (NodeJS.ErrnoException & { signal?: string | null; code?: unknown }) | null;
      if (e?.code === 'ENOENT') {
        reject(new QemuError(`${QEMU} not found (Debian package qemu-user)`));
        return;
      }
      resolve({
        stdout: new Uint8Array(stdout.buffer, stdout.byteOffset, stdout.length),
        status: e ? (typeof e.code === 'number' ? e.code : null) : 0,
        signal: e?.signal ?? null,
        stderr: stderr.toString(),
      });
    });
  });
}

/** Run an ELF under qemu-riscv64; resolve with its stdout, which must be exactly `expectBytes` long. */
export async function runQemu(elf: Uint8Array, expectBytes: number, timeoutMs = 30_000): Promise<Uint8Array> {
  const r = await execQemu(elf, timeoutMs);
  if (r.status !== 0) throw new QemuError(`${QEMU} failed (${r.signal ?? `exit ${String(r.status)}`}): ${r.stderr.trim()}`);
  if (r.stdout.length !== expectBytes) throw new QemuError(`${QEMU} wrote ${r.stdout.length} bytes, expected ${expectBytes}`);
  return r.stdout;
}
