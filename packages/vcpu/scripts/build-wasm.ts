// Compiles the hart core (assembly/*.ts, AssemblyScript) to build/hart.wasm.
//
// Idempotent and fast: does nothing when the output is newer than every
// source file. `--runtime stub` and no heap use in the core, because several
// instances (one per hart) share one imported memory; `--sharedMemory`
// with threads for the atomics that LR/SC and AMOs need.
import { readdirSync, statSync, mkdirSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const srcDir = join(pkgDir, 'assembly');
const outDir = join(pkgDir, 'build');
export const HART_WASM_PATH = join(outDir, 'hart.wasm');

export class WasmBuildError extends Error {
  readonly code = 'VCPU_WASM_BUILD';
  constructor(message: string) { super(message); this.name = 'WasmBuildError'; }
}

function newestSource(): number {
  let t = statSync(fileURLToPath(import.meta.url)).mtimeMs;
  for (const f of readdirSync(srcDir)) {
    if (f.endsWith('.ts')) t = Math.max(t, statSync(join(srcDir, f)).mtimeMs);
  }
  return t;
}

export function wasmIsStale(): boolean {
  return !existsSync(HART_WASM_PATH) || statSync(HART_WASM_PATH).mtimeMs < newestSource();
}

/** Build build/hart.wasm if it is missing or older than its sources. Returns true if it compiled. */
export async function buildWasm(force = false): Promise<boolean> {
  if (!force && !wasmIsStale()) return false;
  mkdirSync(outDir, { recursive: true });
  const asc = (await import('assemblyscript/asc')).default;
  const tmp = `${HART_WASM_PATH}.${process.pid}.tmp`;
  const stderr: string[] = [];
  const { error } = await asc.main([
    join(srcDir, 'index.ts'),
    '-O3', '--noAssert', '--runtime', 'stub',
    '--importMemory', '--importTable', '--sharedMemory', '--initialMemory', '1', '--maximumMemory', '65536',
    '--enable', 'threads', '--memoryBase', '4096',
    '-o', tmp,
  ], {
    stderr: { write: (s: string | Uint8Array) => { stderr.push(String(s)); return true; } },
  });
  if (error) throw new WasmBuildError(`asc failed: ${error.message}\n${stderr.join('')}`);
  const { renameSync } = await import('node:fs');
  renameSync(tmp, HART_WASM_PATH); // atomic: a concurrent reader never sees a partial file
  return true;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const built = await buildWasm(process.argv.includes('--force'));
  console.log(built ? `built ${HART_WASM_PATH}` : `${HART_WASM_PATH} is up to date`);
}
