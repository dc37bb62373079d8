// `pnpm bench int64 [--ops N] [--reps K]`: the 64-bit integer representation microbenchmark behind the decision to
// write the hart interpreter in AssemblyScript/wasm (docs/int64-representation.md).
//
// One small RV64-like workload, four implementations:
//   (a) BigInt: BigInt64Array register file and RAM, BigInt.asUintN(64, …)
//   (b) pairs of int32 (lo/hi in Int32Array), carries and 16-bit partial products by hand
//   (c) AssemblyScript compiled to wasm: native i64, RAM in a shared
//       WebAssembly.Memory with a memfd mmap'd over it (as the hart does)
//   (d) plain JS numbers (doubles, 53 bits): WRONG results, an upper bound only
// Each iteration is 10 "instructions": add, sll, xor, srl, mul, sltu, xor,
// sd, ld, add, on registers picked by the loop counter (like a decoded
// instruction's rd/rs1/rs2) and RAM addresses derived from register values.
// (a), (b) and (c) must agree on the final checksum; the run fails otherwise.

import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';
import os from 'node:os';
import { closeFd, memfdCreate, mmapFixedOver } from '@vmm/core';

const OPS_PER_ITER = 10;
const MEM_WORDS = 8192; // 64 KiB of "RAM"
const M64 = (1n << 64n) - 1n;

/** Initial register value i: an odd-multiplier hash, so every bit position is exercised. */
function initReg(i: number): bigint {
  return (BigInt(i + 1) * 0x9e3779b97f4a7c15n) & M64;
}

// ---------------------------------------------------------------- (a) BigInt
function runBigInt(n: number): bigint {
  const r = new BigUint64Array(32);
  const mem = new BigUint64Array(MEM_WORDS);
  for (let i = 0; i < 32; i++) r[i] = initReg(i);
  const mask = BigInt(MEM_WORDS - 1);
  for (let i = 0; i < n; i++) {
    const a = i & 31, b = (i + 7) & 31, c = (i + 13) & 31, d = (i + 19) & 31;
    r[a] = BigInt.asUintN(64, r[b]! + r[c]!);
    r[d] = r[a]! ^ BigInt.asUintN(64, r[c]! << 7n);
    r[b] = r[d]! >> 11n;
    r[c] = BigInt.asUintN(64, r[b]! * r[a]!);
    r[c] = r[c]! ^ (r[a]! < r[d]! ? 1n : 0n);
    mem[Number(r[b]! & mask)] = r[c]!;
    r[d] = BigInt.asUintN(64, r[d]! + mem[Number(r[a]! & mask)]!);
  }
  let x = 0n;
  for (let i = 0; i < 32; i++) x ^= r[i]!;
  return x;
}

// ---------------------------------------------------------- (b) int32 pairs
/** High 32 bits of the unsigned 32×32 product, from 16-bit partial products. */
function mulhu32(a: number, b: number): number {
  const a0 = a & 0xffff, a1 = a >>> 16, b0 = b & 0xffff, b1 = b >>> 16;
  const lo = a0 * b0;
  const mid1 = a1 * b0 + (lo >>> 16);
  const mid2 = a0 * b1 + (mid1 & 0xffff);
  return (a1 * b1 + (mid1 >>> 16) + (mid2 >>> 16)) | 0;
}

function runInt32Pairs(n: number): bigint {
  const r = new Int32Array(64); // r[2k] = lo, r[2k+1] = hi
  const mem = new Int32Array(MEM_WORDS * 2);
  for (let i = 0; i < 32; i++) {
    const v = initReg(i);
    r[2 * i] = Number(v & 0xffffffffn) | 0;
    r[2 * i + 1] = Number(v >> 32n) | 0;
  }
  const mask = MEM_WORDS - 1;
  for (let i = 0; i < n; i++) {
    const a = (i & 31) * 2, b = ((i + 7) & 31) * 2, c = ((i + 13) & 31) * 2, d = ((i + 19) & 31) * 2;
    // add
    let blo = r[b]!;
    const clo = r[c]!;
    let lo = (blo + clo) | 0;
    r[a + 1] = (r[b + 1]! + r[c + 1]! + ((lo >>> 0) < (blo >>> 0) ? 1 : 0)) | 0;
    r[a] = lo;
    // sll 7, xor
    const shi = (r[c + 1]! << 7) | (clo >>> 25), slo = clo << 7;
    r[d] = r[a]! ^ slo;
    r[d + 1] = r[a + 1]! ^ shi;
    // srl 11
    r[b] = (r[d]! >>> 11) | (r[d + 1]! << 21);
    r[b + 1] = r[d + 1]! >>> 11;
    // mul (low 64 bits)
    blo = r[b]!;
    const alo = r[a]!;
    const phi = (Math.imul(r[b + 1]!, alo) + Math.imul(blo, r[a + 1]!) + mulhu32(blo, alo)) | 0;
    r[c] = Math.imul(blo, alo);
    r[c + 1] = phi;
    // sltu, xor
    const ahi = r[a + 1]! >>> 0, dhi = r[d + 1]! >>> 0;
    const lt = ahi < dhi || (ahi === dhi && (r[a]! >>> 0) < (r[d]! >>> 0));
    r[c] = r[c]! ^ (lt ? 1 : 0);
    // sd
    const sa = (r[b]! & mask) * 2;
    mem[sa] = r[c]!;
    mem[sa + 1] = r[c + 1]!;
    // ld, add
    const la = (r[a]! & mask) * 2;
    const mlo = mem[la]!;
    const dlo = r[d]!;
    lo = (dlo + mlo) | 0;
    r[d + 1] = (r[d + 1]! + mem[la + 1]! + ((lo >>> 0) < (dlo >>> 0) ? 1 : 0)) | 0;
    r[d] = lo;
  }
  let xl = 0, xh = 0;
  for (let i = 0; i < 32; i++) {
    xl ^= r[2 * i]!;
    xh ^= r[2 * i + 1]!;
  }
  return (BigInt(xh >>> 0) << 32n) | BigInt(xl >>> 0);
}

// ------------------------------------------------ (d) doubles, 53 bits, wrong
function runNumbers(n: number): number {
  const r = new Float64Array(32);
  const mem = new Float64Array(MEM_WORDS);
  const T53 = 2 ** 53, INV53 = 2 ** -53;
  // Reduction mod 2^53 without the slow `%` (an fmod call in V8): floor and power-of-two scaling are exact.
  const t53 = (x: number): number => x - Math.floor(x * INV53) * T53;
  for (let i = 0; i < 32; i++) r[i] = Number(initReg(i) & ((1n << 53n) - 1n));
  const mask = MEM_WORDS - 1;
  for (let i = 0; i < n; i++) {
    const a = i & 31, b = (i + 7) & 31, c = (i + 13) & 31, d = (i + 19) & 31;
    r[a] = t53(r[b]! + r[c]!);
    r[d] = t53(r[a]! + t53(r[c]! * 128)); // xor has no 53-bit form: add stands in
    r[b] = Math.floor(r[d]! * (1 / 2048));
    r[c] = t53(r[b]! * r[a]!); // inexact beyond 2^53: this variant is only an upper bound
    r[c] = r[c]! + (r[a]! < r[d]! ? 1 : 0);
    mem[r[b]! & mask] = r[c]!;
    r[d] = t53(r[d]! + mem[r[a]! & mask]!);
  }
  let x = 0;
  for (let i = 0; i < 32; i++) x = t53(x + r[i]!);
  return x;
}

// ------------------------------------------- (c) AssemblyScript / wasm i64
// Layout of the shared memory: register file at 0, "guest RAM" at RAM_OFF
// (page-aligned so a memfd can be mmap'd over it, as for the real hart).
const RAM_OFF = 65536;
const AS_SOURCE = `
const RAM_OFF: usize = ${RAM_OFF};
@external("env", "mmio") declare function mmio(addr: u64): u64;
export function callout(n: i32): u64 {
  let x: u64 = 0;
  for (let i: i32 = 0; i < n; i++) x += mmio(<u64>i);
  return x;
}
export function init(): void {
  for (let i: i32 = 0; i < 32; i++) store<u64>(<usize>i << 3, <u64>(i + 1) * 0x9e3779b97f4a7c15);
  memory.fill(RAM_OFF, 0, ${MEM_WORDS * 8});
}
export function run(n: i32): u64 {
  for (let i: i32 = 0; i < n; i++) {
    const a = (<usize>(i & 31)) << 3, b = (<usize>((i + 7) & 31)) << 3;
    const c = (<usize>((i + 13) & 31)) << 3, d = (<usize>((i + 19) & 31)) << 3;
    store<u64>(a, load<u64>(b) + load<u64>(c));
    store<u64>(d, load<u64>(a) ^ (load<u64>(c) << 7));
    store<u64>(b, load<u64>(d) >> 11);
    store<u64>(c, load<u64>(b) * load<u64>(a));
    store<u64>(c, load<u64>(c) ^ <u64>(load<u64>(a) < load<u64>(d)));
    store<u64>(RAM_OFF + ((<usize>load<u64>(b) & ${MEM_WORDS - 1}) << 3), load<u64>(c));
    store<u64>(d, load<u64>(d) + load<u64>(RAM_OFF + ((<usize>load<u64>(a) & ${MEM_WORDS - 1}) << 3)));
  }
  let x: u64 = 0;
  for (let i: i32 = 0; i < 32; i++) x ^= load<u64>(<usize>i << 3);
  return x;
}
`;

/** The slice of asc's API used here (bench does not depend on assemblyscript's types). */
interface AscApi {
  compileString(src: Record<string, string>, opts: Record<string, unknown>): Promise<{ error: Error | null; binary: Uint8Array | null; stderr: { toString(): string } }>;
}

/** The slice of the WebAssembly JS API used here (the repo's lib setting, ES2024 without DOM, has no typings for it). */
interface WasmApi {
  Memory: new (d: { initial: number; maximum: number; shared: boolean }) => { buffer: SharedArrayBuffer };
  instantiate(bytes: Uint8Array, imports: Record<string, Record<string, unknown>>): Promise<{ instance: { exports: unknown } }>;
}
const { WebAssembly } = globalThis as unknown as { WebAssembly: WasmApi };

interface WasmWorkload {
  init(): void;
  run(n: number): bigint;
  callout(n: number): bigint;
}

async function compileWasm(): Promise<WasmWorkload> {
  // asc comes from @vmm/vcpu's devDependency, the same compiler that builds the hart.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const req = createRequire(path.join(here, '../packages/vcpu/package.json'));
  const ascDir = path.dirname(req.resolve('assemblyscript/package.json'));
  const asc = (await import(pathToFileURL(path.join(ascDir, 'dist/asc.js')).href)) as AscApi;
  const pages = (RAM_OFF + MEM_WORDS * 8) / 65536;
  const res = await asc.compileString({ 'workload.ts': AS_SOURCE }, {
    optimizeLevel: 3, shrinkLevel: 0, runtime: 'stub', noAssert: true,
    importMemory: true, sharedMemory: true, enable: ['threads'], initialMemory: pages, maximumMemory: pages,
  });
  if (res.error || !res.binary) throw new Error(`asc failed: ${res.error?.message ?? ''}\n${res.stderr.toString()}`);
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  // Guest RAM is a memfd mapped over the wasm memory, exactly as the hart's RAM is.
  const fd = memfdCreate('int64-bench-ram', MEM_WORDS * 8);
  mmapFixedOver(memory.buffer, RAM_OFF, fd, MEM_WORDS * 8);
  closeFd(fd); // the mapping keeps the file alive
  const mod = await WebAssembly.instantiate(res.binary, { env: { memory, mmio: (a: bigint): bigint => a + 1n, abort: () => { throw new Error('wasm abort'); } } });
  return mod.instance.exports as unknown as WasmWorkload;
}

/** Median wall time of `reps` runs (each run is short; the median damps a busy neighbour core). */
function timeIt<T>(reps: number, fn: () => T): { value: T; seconds: number } {
  const times: number[] = [];
  let value = fn();
  for (let k = 0; k < reps; k++) {
    const t0 = process.hrtime.bigint();
    value = fn();
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  times.sort((x, y) => x - y);
  return { value, seconds: times[Math.floor(reps / 2)]! };
}

export async function main(args: string[]): Promise<void> {
  const i = args.indexOf('--ops');
  const ops = i >= 0 ? Number(args[i + 1]) : 1e7;
  if (!Number.isFinite(ops) || ops < OPS_PER_ITER) throw new RangeError(`--ops must be a number ≥ ${OPS_PER_ITER}, got ${args[i + 1]}`);
  const n = Math.floor(ops / OPS_PER_ITER);
  const wasm = await compileWasm();
  const runWasm = (k: number): bigint => { wasm.init(); return BigInt.asUintN(64, wasm.run(k)); };

  // Warm up every variant so each is measured in its optimised tier.
  const warm = Math.min(n, 20_000);
  const ref = [runBigInt(warm), runInt32Pairs(warm), runWasm(warm)];
  if (!ref.every((v) => v === ref[0])) throw new Error(`checksums disagree after warm-up: ${ref.map((v) => v.toString(16)).join(' ')}`);
  runNumbers(warm);

  const ri = args.indexOf('--reps');
  const reps = ri >= 0 ? Math.max(1, Number(args[ri + 1])) : 5;
  const c = timeIt(reps, () => runWasm(n));
  const a = timeIt(reps, () => runBigInt(n));
  const b = timeIt(reps, () => runInt32Pairs(n));
  const d = timeIt(reps, () => runNumbers(n));
  if (a.value !== c.value || b.value !== c.value) {
    throw new Error(`checksums disagree: bigint ${a.value.toString(16)} int32 ${b.value.toString(16)} wasm ${c.value.toString(16)}`);
  }
  // The wasm↔JS boundary an MMIO access crosses: one imported-function call with an i64 in and out.
  const calls = 1_000_000;
  const x = timeIt(reps, () => wasm.callout(calls));
  const nsPerCall = (x.seconds / calls) * 1e9;
  const rate = (s: number): number => (n * OPS_PER_ITER) / s;
  const rows = [
    ['(a) BigInt', a.seconds],
    ['(b) int32 pairs', b.seconds],
    ['(c) wasm i64 (AssemblyScript)', c.seconds],
    ['(d) JS doubles, 53-bit, wrong', d.seconds],
  ] as const;
  console.log(`${n * OPS_PER_ITER} ops per run, median of ${reps} runs, checksum ${c.value.toString(16)}; ${os.cpus()[0]?.model ?? '?'}, node ${process.version}`);
  for (const [name, s] of rows) {
    console.log(`${name.padEnd(32)} ${(rate(s) / 1e6).toFixed(1).padStart(8)} Mops/s  ${s.toFixed(3)} s  ${(c.seconds / s).toFixed(3)}× wasm`);
  }
  console.log(`wasm→JS call (i64 arg and result, as an MMIO exit): ${nsPerCall.toFixed(1)} ns`);
  console.log(JSON.stringify({
    bench: 'int64', ops: n * OPS_PER_ITER,
    opsPerSec: { bigint: Math.round(rate(a.seconds)), int32pairs: Math.round(rate(b.seconds)), wasm: Math.round(rate(c.seconds)), numbers53: Math.round(rate(d.seconds)) },
    wasmToJsCallNs: nsPerCall,
    ratioVsWasm: { bigint: c.seconds / a.seconds, int32pairs: c.seconds / b.seconds, numbers53: c.seconds / d.seconds },
    // Headline: the fastest correct pure-JS representation relative to wasm i64 (the reference).
    ratio: c.seconds / Math.min(a.seconds, b.seconds),
  }));
}
