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

/** [name, original text (must occur exactly once), replacement]
 *
 *  Left out because they are equivalent (no input can tell them apart):
 *  dropping the sticky bit in a 128-bit shift by n <= 64 (the shifted operand
 *  has >= 21 trailing zero bits, or keeps nonzero bits below every rounding
 *  position, so the sticky is redundant); skipping fmaG's renormalization of
 *  a leading bit at 63 after a 64-bit move (the difference left by such a
 *  cancellation has at most 43 significant bits, and roundPack gives the same
 *  bits for (2m, e - 1) with m's low bit zero). */
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
  ['128-bit shift by 65..127 drops sticky', 'if (n < 128) return (hi >> <u64>(n - 64)) | (((hi << <u64>(128 - n)) | lo) != 0 ? 1 : 0);', 'if (n < 128) return (hi >> <u64>(n - 64));'],
  ['128-bit shift by >= 128 drops sticky', 'return (hi | lo) != 0 ? 1 : 0;\n}', 'return 0;\n}'],
  ['div128 first digit without correction', 'while (q1 >= b || q1 * vn0 > ((rhat << 32) | un1)) {', 'while (false) {'],
  ['fma sum carry ignored', 'if ((hi >> 63) != 0) {\n      lo = shiftRightJam128(hi, lo, 1);', 'if (false) {\n      lo = shiftRightJam128(hi, lo, 1);'],
  ['fma product normalization wrong', 'if ((pHi >> 61) != 0) {', 'if ((pHi >> 62) != 0) {'],
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
