// Property tests: the wasm F/D library (assembly/fpu.ts) against the exact
// BigInt reference (reference.ts), plus spot checks against the host's native
// round-to-nearest-even arithmetic and hand-picked RISC-V corner cases.
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { f64NearF32LimitsArb, floatArb, intArb, pairArb, specials, toIntFloatArb, tripleArb } from './arbitraries.ts';
import { type Fpu, loadFpu } from './harness.ts';
import {
  canonicalNaN, DZ, F32, F64, type Format, NV, NX, OF, refAdd, refClassify, refConvert, refDiv, refEq,
  refFma, refFromInt, refLt, refMinMax, refMul, refSqrt, refToInt, type Result, RDN, RMM, RNE, RTZ, RUP, UF,
} from './reference.ts';

// Fixed seed for reproducible runs; FPU_SEED / FPU_RUNS allow deeper one-off
// sweeps (e.g. FPU_SEED=7 FPU_RUNS=20000).
const SEED = Number(process.env.FPU_SEED ?? 0x5f10a7);
const RUNS = Number(process.env.FPU_RUNS ?? 2500);
const rmArb = fc.integer({ min: 0, max: 4 });

let fpu: Fpu;
// Compiling with asc takes seconds, more on a loaded 2-core machine.
beforeAll(async () => {
  fpu = await loadFpu();
}, 180_000);

/** f32 operands travel as numbers, f64 as bigints. */
const arg = (f: Format, bits: bigint): number | bigint => (f === F32 ? Number(bits) : bits);
const hex = (v: bigint): string => `0x${v.toString(16)}`;

function check(got: { bits: bigint; flags: number }, want: Result, what: string): void {
  if (got.bits !== want.bits || got.flags !== want.flags) {
    throw new Error(`${what}: got ${hex(got.bits)} flags ${got.flags}, want ${hex(want.bits)} flags ${want.flags}`);
  }
}

function prop<T>(arb: fc.Arbitrary<T>, body: (v: T) => void, numRuns = RUNS): void {
  fc.assert(fc.property(arb, body), { seed: SEED, numRuns });
}

describe.each([F32, F64])('%s arithmetic vs exact reference', (f) => {
  const n = f.name;
  it.each([
    ['add', (a: bigint, b: bigint, rm: number) => refAdd(a, b, rm, f)],
    ['sub', (a: bigint, b: bigint, rm: number) => refAdd(a, b, rm, f, true)],
    ['mul', (a: bigint, b: bigint, rm: number) => refMul(a, b, rm, f)],
    ['div', (a: bigint, b: bigint, rm: number) => refDiv(a, b, rm, f)],
  ] as const)('%s', (op, ref) => {
    prop(fc.tuple(pairArb(f), rmArb), ([[a, b], rm]) => {
      check(fpu.call(`${n}_${op}`, arg(f, a), arg(f, b), rm), ref(a, b, rm), `${n}_${op}(${hex(a)}, ${hex(b)}, rm=${rm})`);
    });
  });

  // rm = RNE takes the native fast paths for these four: exercise them apart.
  it.each(['add', 'sub', 'mul', 'div'] as const)('%s, round to nearest even (fast path)', (op) => {
    const ref = { add: refAdd, sub: (a: bigint, b: bigint, rm: number, g: Format) => refAdd(a, b, rm, g, true), mul: refMul, div: refDiv }[op];
    prop(pairArb(f), ([a, b]) => {
      check(fpu.call(`${n}_${op}`, arg(f, a), arg(f, b), RNE), ref(a, b, RNE, f), `${n}_${op}(${hex(a)}, ${hex(b)}, RNE)`);
    });
  });

  it('sqrt', () => {
    // Mostly non-negative operands: negative ones all give NV.
    const operand = fc.tuple(floatArb(f), fc.integer({ min: 0, max: 3 }))
      .map(([a, k]) => (k === 0 ? a : a & ((1n << BigInt(f.frac + f.exp)) - 1n)));
    prop(fc.tuple(operand, rmArb), ([a, rm]) => {
      check(fpu.call(`${n}_sqrt`, arg(f, a), rm), refSqrt(a, rm, f), `${n}_sqrt(${hex(a)}, rm=${rm})`);
    });
  });

  it('fma in all four sign variants', () => {
    prop(fc.tuple(tripleArb(f), rmArb, fc.boolean(), fc.boolean()), ([[a, b, c], rm, np, na]) => {
      check(fpu.call(`${n}_fma`, arg(f, a), arg(f, b), arg(f, c), rm, np, na), refFma(a, b, c, rm, f, np, na),
        `${n}_fma(${hex(a)}, ${hex(b)}, ${hex(c)}, rm=${rm}, ${np}, ${na})`);
    }, 2 * RUNS);
  });

  it('min, max, eq, lt, le, classify', () => {
    prop(pairArb(f), ([a, b]) => {
      const A = arg(f, a);
      const B = arg(f, b);
      const w = `(${hex(a)}, ${hex(b)})`;
      check(fpu.call(`${n}_min`, A, B), refMinMax(a, b, f, false), `${n}_min${w}`);
      check(fpu.call(`${n}_max`, A, B), refMinMax(a, b, f, true), `${n}_max${w}`);
      const asResult = (r: { value: boolean; flags: number }): Result => ({ bits: r.value ? 1n : 0n, flags: r.flags });
      check(fpu.call(`${n}_eq`, A, B), asResult(refEq(a, b, f)), `${n}_eq${w}`);
      check(fpu.call(`${n}_lt`, A, B), asResult(refLt(a, b, f, false)), `${n}_lt${w}`);
      check(fpu.call(`${n}_le`, A, B), asResult(refLt(a, b, f, true)), `${n}_le${w}`);
      check(fpu.call(`${n}_classify`, A), { bits: BigInt(refClassify(a, f)), flags: 0 }, `${n}_classify(${hex(a)})`);
    });
  });

  it.each([
    ['i32', true, 32], ['u32', false, 32], ['i64', true, 64], ['u64', false, 64],
  ] as const)('to %s', (t, signed, w) => {
    prop(fc.tuple(toIntFloatArb(f), rmArb), ([a, rm]) => {
      const r = refToInt(a, rm, f, signed, w);
      check(fpu.call(`${n}_to_${t}`, arg(f, a), rm), { bits: BigInt.asUintN(w, r.value), flags: r.flags },
        `${n}_to_${t}(${hex(a)}, rm=${rm})`);
    });
  });

  it.each([
    ['i32', true, 32], ['u32', false, 32], ['i64', true, 64], ['u64', false, 64],
  ] as const)('from %s', (t, signed, w) => {
    prop(fc.tuple(intArb(w, signed), rmArb), ([v, rm]) => {
      const a = w === 32 ? Number(v) : v;
      check(fpu.call(`${t}_to_${n}`, a, rm), refFromInt(v, rm, f), `${t}_to_${n}(${v}, rm=${rm})`);
    });
  });
});

describe('format conversion vs exact reference', () => {
  it('f32 -> f64 is exact', () => {
    prop(floatArb(F32), (a) => {
      check(fpu.call('f32_to_f64', Number(a)), refConvert(a, RNE, F32, F64), `f32_to_f64(${hex(a)})`);
    });
  });
  it('f64 -> f32 rounds', () => {
    prop(fc.tuple(fc.oneof(floatArb(F64), f64NearF32LimitsArb()), rmArb), ([a, rm]) => {
      check(fpu.call('f64_to_f32', a, rm), refConvert(a, rm, F64, F32), `f64_to_f32(${hex(a)}, rm=${rm})`);
    });
  });
});

describe('round-to-nearest-even equals the host FPU', () => {
  const dv = new DataView(new ArrayBuffer(8));
  const d2b = (x: number): bigint => { dv.setFloat64(0, x); return dv.getBigUint64(0); };
  const b2d = (b: bigint): number => { dv.setBigUint64(0, b); return dv.getFloat64(0); };
  const s2b = (x: number): bigint => { dv.setFloat32(0, x); return BigInt(dv.getUint32(0)); };
  const b2s = (b: bigint): number => { dv.setUint32(0, Number(b)); return dv.getFloat32(0); };
  // NaN payloads from the host are not specified; the library must give the canonical NaN.
  const nat64 = (x: number): bigint => (Number.isNaN(x) ? canonicalNaN(F64) : d2b(x));
  const nat32 = (x: number): bigint => (Number.isNaN(x) ? canonicalNaN(F32) : s2b(x));

  it('f64 add/sub/mul/div/sqrt', () => {
    prop(pairArb(F64), ([a, b]) => {
      const x = b2d(a);
      const y = b2d(b);
      expect(fpu.call('f64_add', a, b, RNE).bits).toBe(nat64(x + y));
      expect(fpu.call('f64_sub', a, b, RNE).bits).toBe(nat64(x - y));
      expect(fpu.call('f64_mul', a, b, RNE).bits).toBe(nat64(x * y));
      expect(fpu.call('f64_div', a, b, RNE).bits).toBe(nat64(x / y));
      expect(fpu.call('f64_sqrt', a, RNE).bits).toBe(nat64(Math.sqrt(x)));
      expect(fpu.call('f64_to_f32', a, RNE).bits).toBe(nat32(Math.fround(x)));
    }, 4 * RUNS);
  });

  it('f32 add/sub/mul/div/sqrt (f64 then fround is exact for these: 53 >= 2*24+2)', () => {
    prop(pairArb(F32), ([a, b]) => {
      const x = b2s(a);
      const y = b2s(b);
      const A = Number(a);
      const B = Number(b);
      expect(fpu.call('f32_add', A, B, RNE).bits).toBe(nat32(Math.fround(x + y)));
      expect(fpu.call('f32_sub', A, B, RNE).bits).toBe(nat32(Math.fround(x - y)));
      expect(fpu.call('f32_mul', A, B, RNE).bits).toBe(nat32(Math.fround(x * y)));
      expect(fpu.call('f32_div', A, B, RNE).bits).toBe(nat32(Math.fround(x / y)));
      expect(fpu.call('f32_sqrt', A, RNE).bits).toBe(nat32(Math.fround(Math.sqrt(x))));
      expect(fpu.call('f32_to_f64', A).bits).toBe(nat64(x));
    }, 4 * RUNS);
  });

  it('i64 -> f64 equals Number(bigint)', () => {
    prop(intArb(64, true), (v) => {
      expect(fpu.call('i64_to_f64', v, RNE).bits).toBe(d2b(Number(v)));
    }, 4 * RUNS);
  });
});

describe('RISC-V corner cases (hand-checked against the ISA text)', () => {
  const ONE32 = 0x3f800000;
  const QNAN32 = 0x7fc00000;
  const SNAN32 = 0x7f800001;
  const INF32 = 0x7f800000;

  it('NaN results are canonical, NV only for signaling inputs (ISA §11.3)', () => {
    expect(fpu.call('f32_add', 0xffc12345, ONE32, RNE)).toEqual({ bits: 0x7fc00000n, flags: 0 });
    expect(fpu.call('f32_add', SNAN32, ONE32, RNE)).toEqual({ bits: 0x7fc00000n, flags: NV });
    expect(fpu.call('f64_mul', 0x7ff0000000000001n, 0n, RNE)).toEqual({ bits: 0x7ff8000000000000n, flags: NV });
    expect(fpu.call('f32_to_f64', QNAN32 | 0x1234)).toEqual({ bits: 0x7ff8000000000000n, flags: 0 });
  });

  it('FMA: inf * 0 + qNaN raises NV (ISA §11.6)', () => {
    expect(fpu.call('f32_fma', INF32, 0, QNAN32, RNE, false, false)).toEqual({ bits: 0x7fc00000n, flags: NV });
    expect(fpu.call('f64_fma', 0n, 0xfff0000000000000n, 0x7ff8000000000000n, RNE, false, false))
      .toEqual({ bits: 0x7ff8000000000000n, flags: NV });
  });

  it('FMA rounds once: fma(1+2^-23, 1-2^-23, -1) = -2^-46 exactly', () => {
    // The product 1 - 2^-46 rounds to 1.0 in f32, so a separate multiply would give 0.
    expect(fpu.call('f32_fma', 0x3f800001, 0x3f7ffffe, 0xbf800000, RNE, false, false)).toEqual({ bits: 0xa8800000n, flags: 0 });
    expect(fpu.call('f32_mul', 0x3f800001, 0x3f7ffffe, RNE)).toEqual({ bits: 0x3f800000n, flags: NX });
  });

  it('FMA cancellation down to a single cross term: (1+2^-31)(1+2^-32) - (1+2^-31+2^-32) = 2^-63', () => {
    const a = 0x3ff0000000200000n; // 1 + 2^-31
    const b = 0x3ff0000000100000n; // 1 + 2^-32
    const c = 0xbff0000000300000n; // -(1 + 2^-31 + 2^-32)
    expect(fpu.call('f64_fma', a, b, c, RNE, false, false)).toEqual({ bits: 0x3c00000000000000n, flags: 0 });
    // FNMADD: -(a*b) - c = -2^-63
    expect(fpu.call('f64_fma', a, b, c, RNE, true, true)).toEqual({ bits: 0xbc00000000000000n, flags: 0 });
  });

  it('FMIN/FMAX: minimumNumber semantics, -0 < +0, both NaN -> canonical (ISA §11.8)', () => {
    expect(fpu.call('f32_min', 0x80000000, 0)).toEqual({ bits: 0x80000000n, flags: 0 });
    expect(fpu.call('f32_max', 0x80000000, 0)).toEqual({ bits: 0n, flags: 0 });
    expect(fpu.call('f32_min', QNAN32, ONE32)).toEqual({ bits: BigInt(ONE32), flags: 0 });
    expect(fpu.call('f32_max', SNAN32, ONE32)).toEqual({ bits: BigInt(ONE32), flags: NV });
    expect(fpu.call('f32_min', SNAN32, 0xffc00001)).toEqual({ bits: 0x7fc00000n, flags: NV });
  });

  it('FEQ is quiet, FLT/FLE signal on any NaN (ISA §11.8)', () => {
    expect(fpu.call('f32_eq', QNAN32, QNAN32)).toEqual({ bits: 0n, flags: 0 });
    expect(fpu.call('f32_eq', SNAN32, ONE32)).toEqual({ bits: 0n, flags: NV });
    expect(fpu.call('f32_lt', QNAN32, ONE32)).toEqual({ bits: 0n, flags: NV });
    expect(fpu.call('f64_le', 0x8000000000000000n, 0n)).toEqual({ bits: 1n, flags: 0 });
    expect(fpu.call('f64_eq', 0x8000000000000000n, 0n)).toEqual({ bits: 1n, flags: 0 });
  });

  it('FCLASS masks (ISA Table 11.5)', () => {
    const got = specials(F32).map((s) => Number(fpu.call('f32_classify', Number(s)).bits));
    // +0 +inf +qNaN +qNaN +sNaN +sNaN +sub +sub +norm +norm +norm, then the negative ones
    expect(got).toEqual([16, 128, 512, 512, 256, 256, 32, 32, 64, 64, 64, 8, 1, 512, 512, 256, 256, 4, 4, 2, 2, 2]);
  });

  it('float -> int saturation (ISA Table 11.4)', () => {
    expect(fpu.call('f32_to_i32', QNAN32, RTZ)).toEqual({ bits: 0x7fffffffn, flags: NV });
    expect(fpu.call('f32_to_i32', 0xff800000, RTZ)).toEqual({ bits: 0x80000000n, flags: NV });
    expect(fpu.call('f32_to_u32', 0xbf800000, RTZ)).toEqual({ bits: 0n, flags: NV }); // -1.0
    expect(fpu.call('f32_to_u32', 0xbf000000, RTZ)).toEqual({ bits: 0n, flags: NX }); // -0.5 -> -0
    expect(fpu.call('f32_to_u32', 0xbf000000, RDN)).toEqual({ bits: 0n, flags: NV }); // -0.5 -> -1
    expect(fpu.call('f64_to_u64', 0x7ff8000000000000n, RNE)).toEqual({ bits: 0xffffffffffffffffn, flags: NV });
    expect(fpu.call('f64_to_i64', 0xc3e0000000000000n, RNE)).toEqual({ bits: 0x8000000000000000n, flags: 0 }); // -2^63
    expect(fpu.call('f64_to_i64', 0x43e0000000000000n, RNE)).toEqual({ bits: 0x7fffffffffffffffn, flags: NV }); // 2^63
    expect(fpu.call('f64_to_i32', 0x41dfffffffe00000n, RMM)).toEqual({ bits: 0x7fffffffn, flags: NV }); // 2^31-0.5 -> 2^31
    expect(fpu.call('f64_to_i32', 0x41dfffffffe00000n, RTZ)).toEqual({ bits: 0x7fffffffn, flags: NX });
  });

  it('underflow: tininess is detected after rounding', () => {
    // (1 - 2^-23)(1 + 2^-23) 2^-126 = (1 - 2^-46) 2^-126: below the smallest
    // normal, but rounded to 24 bits with an unbounded exponent (RNE) it is
    // 2^-126, so it is not tiny: NX only, no UF.
    const a = 0x3f7ffffe; // 1 - 2^-23
    const b = 0x00800001; // (1 + 2^-23) 2^-126
    expect(fpu.call('f32_mul', a, b, RNE)).toEqual({ bits: 0x00800000n, flags: NX });
    // Rounding toward zero gives (1 - 2^-24) 2^-126: tiny and inexact -> UF.
    expect(fpu.call('f32_mul', a, b, RTZ)).toEqual({ bits: 0x007fffffn, flags: NX | UF });
    // (1 - 2^-24) 2^-126 is exact at 24 bits, hence tiny even after rounding.
    expect(fpu.call('f32_mul', 0x3f7fffff, 0x00800000, RNE)).toEqual({ bits: 0x00800000n, flags: NX | UF });
    // Exact subnormal results raise nothing.
    expect(fpu.call('f32_mul', 0x3f000000, 0x00000002, RNE)).toEqual({ bits: 1n, flags: 0 });
  });

  it('overflow goes to inf or max finite by rounding direction', () => {
    const max = 0x7f7fffff;
    expect(fpu.call('f32_add', max, max, RNE)).toEqual({ bits: 0x7f800000n, flags: OF | NX });
    expect(fpu.call('f32_add', max, max, RTZ)).toEqual({ bits: 0x7f7fffffn, flags: OF | NX });
    expect(fpu.call('f32_mul', max | 0x80000000, max, RUP)).toEqual({ bits: 0xff7fffffn, flags: OF | NX });
    expect(fpu.call('f32_mul', max | 0x80000000, max, RDN)).toEqual({ bits: 0xff800000n, flags: OF | NX });
  });

  it('division by zero raises DZ; x - x is -0 only when rounding down', () => {
    expect(fpu.call('f64_div', 0x3ff0000000000000n, 0x8000000000000000n, RNE)).toEqual({ bits: 0xfff0000000000000n, flags: DZ });
    expect(fpu.call('f32_sub', ONE32, ONE32, RNE)).toEqual({ bits: 0n, flags: 0 });
    expect(fpu.call('f32_sub', ONE32, ONE32, RDN)).toEqual({ bits: 0x80000000n, flags: 0 });
    expect(fpu.call('f32_fma', ONE32, ONE32, 0xbf800000, RDN, false, false)).toEqual({ bits: 0x80000000n, flags: 0 });
  });

  it('ties: RMM rounds half away from zero, RNE to even', () => {
    // 2^24 + 1 is a tie in f32 between 2^24 and 2^24 + 2.
    expect(fpu.call('u32_to_f32', 0x1000001, RNE).bits).toBe(0x4b800000n);
    expect(fpu.call('u32_to_f32', 0x1000001, RMM).bits).toBe(0x4b800001n);
    expect(fpu.call('u32_to_f32', 0x1000003, RNE).bits).toBe(0x4b800002n);
    expect(fpu.call('u32_to_f32', 0x1000001, RUP)).toEqual({ bits: 0x4b800001n, flags: NX });
  });
});
