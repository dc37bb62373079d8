// Checks that the F/D tests can fail: each mutant is assembly/fpu.ts with one
// deliberate, plausible bug; the test suite is run against it (through
// VMM_FPU_SOURCE) and must fail. Slow (one vitest run per mutant), so it is a
// manual check, not part of the suite:
//   pnpm exec node packages/vcpu/src/fpu/mutants.ts [substring of a mutant name…]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import asc from 'assemblyscript/asc';
import { ASC_FLAGS } from './harness.ts';

const SOURCE = fileURLToPath(new URL('../../assembly/fpu.ts', import.meta.url));
const TESTS = fileURLToPath(new URL('./fpu.test.ts', import.meta.url));

/** [name, original text (must occur exactly once), replacement] */
const MUTANTS: readonly (readonly [string, string, string])[] = [
  ['tininess before rounding', 'if ((sig0 >> <u64>(F + 1)) != 0) tiny = false;', ''],
  ['RNE ties away from zero', '(rb == half && (sig & 1) != 0)', '(rb == half)'],
  ['RMM ties toward zero', 'if (rm == RMM) return rb >= half;', 'if (rm == RMM) return rb > half;'],
  ['no sticky jamming', 'return (m >> <u64>n) | ((m << <u64>(64 - n)) != 0 ? 1 : 0);', 'return (m >> <u64>n);'],
  ['x - x is +0 when rounding down', 'rm == RDN ? signBit(F) : 0', '<u64>0'],
  ['fma inf*0 + qNaN quiet', '|| (absA == INF && absB == 0) || (absA == 0 && absB == INF)) fflags |= NV;', ') fflags |= NV;'],
  ['div128 without correction', 'while (q0 >= b || q0 * vn0 > ((rhat << 32) | un0)) {', 'while (false) {'],
  ['sqrt RTZ not nudged', 'if (cmp > 0) r--;', ''],
  ['fcvt.wu.s(-0.5) invalid', 'if (s != 0 && mag != 0) { fflags |= NV; return 0; }', 'if (s != 0) { fflags |= NV; return 0; }'],
  ['overflow under RTZ to inf', 'rm == RTZ ? false :', 'rm == RTZ ? true :'],
  ['fma loses its sticky bit', 'return roundPack(s, e, hi | (lo != 0 ? 1 : 0), rm, F);', 'return roundPack(s, e, hi, rm, F);'],
  ['min treats -0 == +0', 'sa != sb ? sa != 0 :', 'sa != sb ? false :'],
  ['f64 mul loses its sticky bit', 'm = (rHi << 2) | (lo >> 62) | ((lo << 2) != 0 ? 1 : 0);', 'm = (rHi << 2) | (lo >> 62);'],
  ['feq signals on quiet NaN', 'if (isSNaNBits(a, F) || isSNaNBits(b, F)) fflags |= NV; // FEQ', 'fflags |= NV; // FEQ'],
  ['no UF flag', 'fflags |= tiny ? NX | UF : NX;', 'fflags |= NX;'],
  ['f32 div loses its sticky bit', 'm = (q << <u64>lz) | (r != 0 ? 1 : 0);', 'm = (q << <u64>lz);'],
  ['i64 minimum off by one', 'return s != 0 ? 0 - mag : mag;', 'return s != 0 ? 0 - mag + (mag >> 63) : mag;'],
  ['fast add without NX', 'if (small - (sum - big) != 0) fflags |= NX;', ''],
  ['fast f32 add ignores narrowing', 'if (small - (sum - big) != 0 || <f64>r != sum) fflags |= NX;', 'if (small - (sum - big) != 0) fflags |= NX;'],
  ['fast f64 mul at the smallest normal', 'if (ap <= MIN_NORMAL64 || ap >= INF64) return NOFAST;', 'if (ap < MIN_NORMAL64 || ap >= INF64) return NOFAST;'],
  ['fast f64 mul exactness off by one bit', 'if (bits > 54 || oa * ob >= (<u64>1 << 53)) fflags |= NX;', 'if (bits > 55 || oa * ob >= (<u64>1 << 54)) fflags |= NX;'],
  ['fast f64 div without NX', 'if (oddSig64(a) % oddSig64(b) != 0) fflags |= NX;', ''],
  ['fast f32 div at the smallest normal', 'if (ar <= MIN_NORMAL32 || ar >= 0x7f800000) return NOFAST;', 'if (ar < MIN_NORMAL32 || ar >= 0x7f800000) return NOFAST;'],
  ['fast f32 mul on tiny products', 'if (!(abs<f64>(p) >= <f64>reinterpret<f32>(MIN_NORMAL32))) return NOFAST;', 'if (!(abs<f64>(p) >= 0)) return NOFAST;'],
  ['round-to-odd without the step', 'if (err != 0 && (bits & 1) == 0) {', 'if (false) {'],
  ['round-to-odd steps the wrong way', 'if ((err > 0) == (s > 0)) bits++; else bits--;', 'if ((err > 0) == (s > 0)) bits--; else bits++;'],
  ['f32 fma ignores negAddend', '  if (negAddend) y = -y;\n  if (x + y == 0)', '  if (x + y == 0)'],
];

const original = readFileSync(SOURCE, 'utf8');
const only = process.argv.slice(2);
const dir = mkdtempSync(join(tmpdir(), 'vmm-fpu-mutants-'));
let survivors = 0;
try {
  for (const [name, from, to] of MUTANTS) {
    if (only.length > 0 && !only.some((o) => name.includes(o))) continue;
    const at = original.indexOf(from);
    if (at < 0 || original.indexOf(from, at + 1) >= 0) throw new Error(`mutant "${name}": text must occur exactly once in ${SOURCE}`);
    const file = join(dir, 'fpu.ts');
    writeFileSync(file, original.slice(0, at) + to + original.slice(at + from.length));
    // A mutant that does not compile would "fail the tests" for the wrong reason.
    const sink = { write: (): void => {} };
    const { error } = await asc.main([file, '--outFile', join(dir, 'fpu.wasm'), ...ASC_FLAGS], { stdout: sink, stderr: sink });
    if (error) throw new Error(`mutant "${name}" does not compile: ${error.message}`);
    let killed = false;
    try {
      execFileSync('pnpm', ['exec', 'vitest', 'run', TESTS, '--bail=1'], {
        env: { ...process.env, VMM_FPU_SOURCE: file },
        stdio: 'ignore',
      });
    } catch {
      killed = true; // the suite failed, as it must
    }
    if (!killed) survivors++;
    console.log(`${killed ? 'killed  ' : 'SURVIVED'}  ${name}`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
if (survivors > 0) {
  console.log(`${survivors} mutant(s) survived: the tests miss those bugs`);
  process.exitCode = 1;
}
