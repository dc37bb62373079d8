// Test harness: compiles assembly/fpu.ts with asc under the hart core's
// constraints (stub runtime, imported shared memory, threads) and wraps the
// wasm exports so tests can call them with bigint bit patterns.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import asc from 'assemblyscript/asc';

/** The library under test. VMM_FPU_SOURCE may name another copy (used to
 *  check that the tests catch deliberately broken variants). */
export const FPU_SOURCE = process.env.VMM_FPU_SOURCE ?? fileURLToPath(new URL('../../assembly/fpu.ts', import.meta.url));

class FpuBuildError extends Error {
  readonly code = 'FPU_BUILD_FAILED';
  constructor(output: string) {
    super(`asc failed to compile ${FPU_SOURCE}: ${output}`);
    this.name = 'FpuBuildError';
  }
}

/** The asc flags the hart core is built with (plus optimization). */
export const ASC_FLAGS = [
  '--runtime', 'stub',
  '--enable', 'threads',
  '--sharedMemory', '--importMemory', '--initialMemory', '1', '--maximumMemory', '1',
  '-O3', '--noAssert',
];

async function compileFpu(): Promise<Uint8Array> {
  const dir = await mkdtemp(join(tmpdir(), 'vmm-fpu-'));
  try {
    const out = join(dir, 'fpu.wasm');
    let log = '';
    const sink = { write: (s: string | Uint8Array): void => { log += String(s); } };
    const { error } = await asc.main([FPU_SOURCE, '--outFile', out, ...ASC_FLAGS], { stdout: sink, stderr: sink });
    if (error) throw new FpuBuildError(`${error.message}\n${log}`);
    return new Uint8Array(await readFile(out));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

type WasmFn = (...args: (number | bigint)[]) => number | bigint;

/** Calls into the wasm library; every call clears fflags first and returns
 *  the result bits (unsigned bigint) with the flags it raised. */
export interface Fpu {
  call(name: string, ...args: (number | bigint | boolean)[]): { bits: bigint; flags: number };
  raw: Record<string, WasmFn>;
}

export async function loadFpu(): Promise<Fpu> {
  const bytes = await compileFpu();
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
  const { instance } = await WebAssembly.instantiate(bytes, {
    env: {
      memory,
      abort: () => { throw new Error('fpu wasm abort'); },
    },
  });
  const exp = instance.exports as Record<string, unknown>;
  const fflags = exp.fflags as WebAssembly.Global;
  const raw = exp as Record<string, WasmFn>;
  return {
    raw,
    call(name, ...args) {
      const fn = raw[name];
      if (typeof fn !== 'function') throw new Error(`fpu export ${name} missing`);
      fflags.value = 0;
      const r = fn(...args.map((a) => (typeof a === 'boolean' ? (a ? 1 : 0) : a)));
      const bits = typeof r === 'bigint' ? BigInt.asUintN(64, r) : BigInt(r >>> 0);
      return { bits, flags: fflags.value as number };
    },
  };
}
