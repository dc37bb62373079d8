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

/** Run an ELF under qemu-riscv64; resolve with its stdout, which must be exactly `expectBytes` long. */
export function runQemu(elf: Uint8Array, expectBytes: number, timeoutMs = 30_000): Promise<Uint8Array> {
  const file = path.join(workDir(), `p${process.pid}-${serial++}.elf`);
  writeFileSync(file, elf, { mode: 0o755 });
  return new Promise((resolve, reject) => {
    execFile(QEMU, ['-cpu', 'rv64', file], { encoding: 'buffer', maxBuffer: 1 << 24, timeout: timeoutMs }, (err, stdout, stderr) => {
      rmSync(file, { force: true });
      if (err) {
        const e = err as NodeJS.ErrnoException & { signal?: string };
        if (e.code === 'ENOENT') reject(new QemuError(`${QEMU} not found (Debian package qemu-user)`));
        else reject(new QemuError(`${QEMU} failed (${e.signal ?? `exit ${String(e.code)}`}): ${stderr.toString().trim()}`));
        return;
      }
      if (stdout.length !== expectBytes) {
        reject(new QemuError(`${QEMU} wrote ${stdout.length} bytes, expected ${expectBytes}`));
        return;
      }
      resolve(new Uint8Array(stdout.buffer, stdout.byteOffset, stdout.length));
    });
  });
}
