// Throughput of the F/D library, measured inside wasm (a JS call per op would
// measure BigInt boxing instead). Operands come from an xorshift generator:
// random normal numbers in [1, 2^16) with random signs, either with
// rm = RNE (what guests use almost always) or cycling through all five
// rounding modes; figures include the generator (timed alone too).
//   pnpm exec node packages/vcpu/src/fpu/throughput.ts
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import asc from 'assemblyscript/asc';
import { ASC_FLAGS, FPU_SOURCE } from './harness.ts';

const OPS = [
  ['f64_add', 'fpu.f64_add(a, b, rm)'],
  ['f64_mul', 'fpu.f64_mul(a, b, rm)'],
  ['f64_div', 'fpu.f64_div(a, b, rm)'],
  ['f64_sqrt', 'fpu.f64_sqrt(a & 0x7fffffffffffffff, rm)'],
  ['f64_fma', 'fpu.f64_fma(a, b, c, rm, false, false)'],
  ['f32_add', '<u64>fpu.f32_add(<u32>(a >> 32), <u32>(b >> 32), rm)'],
  ['f32_mul', '<u64>fpu.f32_mul(<u32>(a >> 32), <u32>(b >> 32), rm)'],
  ['f32_fma', '<u64>fpu.f32_fma(<u32>(a >> 32), <u32>(b >> 32), <u32>(c >> 32), rm, false, false)'],
  ['f64_to_i64', '<u64>fpu.f64_to_i64(a, rm)'],
  ['baseline', 'a ^ b ^ c'],
] as const;

function benchSource(fpuImport: string): string {
  const fns = OPS.map(([name, expr]) => `
export function bench_${name}(n: i32, mode: u32): u64 {
  let acc: u64 = 0;
  for (let i = 0; i < n; i++) {
    const a = next(); const b = next(); const c = next(); const rm = mode < 5 ? mode : <u32>(i % 5);
    acc ^= ${expr};
  }
  return acc ^ <u64>fpu.fflags;
}`).join('\n');
  return `import * as fpu from '${fpuImport}';
let s: u64 = 0x9e3779b97f4a7c15;
// xorshift64, mapped to a normal f64 in [1, 2^16) with a random sign
@inline function next(): u64 {
  s ^= s << 13; s ^= s >> 7; s ^= s << 17;
  return (s & 0x800fffffffffffff) | ((0x3ff + ((s >> 52) & 15)) << 52);
}
${fns}
`;
}

const dir = await mkdtemp(join(tmpdir(), 'vmm-fpu-bench-'));
try {
  const entry = join(dir, 'bench.ts');
  const rel = relative(dir, FPU_SOURCE).replace(/\.ts$/, '');
  await writeFile(entry, benchSource(rel.startsWith('.') ? rel : `./${rel}`));
  const out = join(dir, 'bench.wasm');
  let log = '';
  const { error } = await asc.main([entry, '--outFile', out, ...ASC_FLAGS], {
    stdout: { write: (s: string | Uint8Array) => { log += String(s); } },
    stderr: { write: (s: string | Uint8Array) => { log += String(s); } },
  });
  if (error) throw new Error(`asc failed: ${error.message}\n${log}`);
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
  const { instance } = await WebAssembly.instantiate(await readFile(out), { env: { memory, abort: () => { throw new Error('abort'); } } });
  const ex = instance.exports as unknown as Record<string, (n: number, mode: number) => bigint>;
  const N = 2_000_000;
  const timeOf = (name: string, mode: number): number => {
    const fn = ex[`bench_${name}`]!;
    fn(N / 10, mode); // warm up
    let best = Infinity;
    for (let r = 0; r < 7; r++) {
      // CPU time rather than wall time: the machine is shared, and time spent
      // descheduled is not ours.
      const t0 = process.cpuUsage();
      fn(N, mode);
      const d = process.cpuUsage(t0);
      best = Math.min(best, (d.user + d.system) * 1000);
    }
    return best / N; // ns per iteration
  };
  // Figures include the operand generator (printed first): the generator and
  // a cheap operation overlap in the CPU, so subtracting it would overstate.
  const base = timeOf('baseline', 5);
  console.log(`operand generator alone: ${base.toFixed(1)} ns/iteration (included below)`);
  console.log(`${'op'.padEnd(12)} ${'rm=RNE'.padStart(22)} ${'rm=all five'.padStart(22)}`);
  const fmt = (ns: number): string => `${(1e3 / ns).toFixed(1).padStart(7)} M/s (${ns.toFixed(1).padStart(5)} ns)`;
  for (const [name] of OPS) {
    if (name === 'baseline') continue;
    console.log(`${name.padEnd(12)} ${fmt(timeOf(name, 0)).padStart(22)} ${fmt(timeOf(name, 5)).padStart(22)}`);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
