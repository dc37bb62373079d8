// fast-check generators of IEEE operands that hit the hard cases: specials,
// subnormals, extremes of the exponent range, sparse significands (whose
// products and sums land exactly on rounding ties), operand pairs that nearly
// cancel, and values around the integer conversion boundaries.
import fc from 'fast-check';
import { type Format, refMul, RTZ } from './reference.ts';

const mask = (bits: number): bigint => (1n << BigInt(bits)) - 1n;
const width = (f: Format): number => 1 + f.exp + f.frac;
const expMax = (f: Format): number => (1 << f.exp) - 1;
const bias = (f: Format): number => (1 << (f.exp - 1)) - 1;

function pack(f: Format, sign: number, be: number, fr: bigint): bigint {
  return (BigInt(sign) << BigInt(f.exp + f.frac)) | (BigInt(be) << BigInt(f.frac)) | (fr & mask(f.frac));
}

/** Fractions: zero, one, all ones, quiet bit, random, sparse (only the top
 *  k bits random), all ones minus a little. */
function fracArb(f: Format): fc.Arbitrary<bigint> {
  return fc.oneof(
    fc.constantFrom(0n, 1n, mask(f.frac), 1n << BigInt(f.frac - 1), mask(f.frac - 1)),
    fc.bigInt({ min: 0n, max: mask(f.frac) }),
    fc.integer({ min: 0, max: f.frac }).chain((k) =>
      fc.bigInt({ min: 0n, max: mask(k) }).map((v) => v << BigInt(f.frac - k))),
    fc.bigInt({ min: 0n, max: 64n }).map((d) => mask(f.frac) - d),
  );
}

function expArb(f: Format): fc.Arbitrary<number> {
  const b = bias(f);
  const em = expMax(f);
  return fc.oneof(
    fc.constantFrom(0, 1, 2, b - 1, b, b + 1, em - 2, em - 1, em),
    fc.integer({ min: 0, max: em }),
    fc.integer({ min: b - 4, max: b + 4 }),
  );
}

export function specials(f: Format): bigint[] {
  const em = expMax(f);
  const out: bigint[] = [];
  for (const s of [0, 1]) {
    out.push(
      pack(f, s, 0, 0n), // zero
      pack(f, s, em, 0n), // inf
      pack(f, s, em, 1n << BigInt(f.frac - 1)), // quiet NaN
      pack(f, s, em, (1n << BigInt(f.frac - 1)) | 5n), // quiet NaN with payload
      pack(f, s, em, 1n), // signaling NaN
      pack(f, s, em, mask(f.frac - 1)), // signaling NaN, full payload
      pack(f, s, 0, 1n), // min subnormal
      pack(f, s, 0, mask(f.frac)), // max subnormal
      pack(f, s, 1, 0n), // min normal
      pack(f, s, em - 1, mask(f.frac)), // max finite
      pack(f, s, bias(f), 0n), // 1.0
    );
  }
  return out;
}

/** Any operand, biased toward the interesting ones. */
export function floatArb(f: Format): fc.Arbitrary<bigint> {
  return fc.oneof(
    { arbitrary: fc.constantFrom(...specials(f)), weight: 1 },
    { arbitrary: fc.bigInt({ min: 0n, max: mask(width(f)) }), weight: 2 },
    { arbitrary: fc.tuple(fc.integer({ min: 0, max: 1 }), expArb(f), fracArb(f)).map(([s, e, fr]) => pack(f, s, e, fr)), weight: 4 },
  );
}

/** A finite operand with exponent near `a`'s (so sums align, tie and cancel). */
function nearArb(f: Format, a: bigint): fc.Arbitrary<bigint> {
  const be = Number((a >> BigInt(f.frac)) & mask(f.exp));
  return fc.tuple(fc.integer({ min: 0, max: 1 }), fc.integer({ min: -(f.frac + 4), max: f.frac + 4 }), fracArb(f), fc.bigInt({ min: -8n, max: 8n }))
    .map(([s, d, fr, delta]) => {
      const e = Math.min(Math.max(be + d, 0), expMax(f) - 1);
      // `a` itself nudged by a few ulps (heavy cancellation) or a related value
      const base = d === 0 && delta !== 0n ? (a & mask(f.exp + f.frac)) + delta : pack(f, 0, e, fr);
      return (base & mask(f.exp + f.frac)) | (BigInt(s) << BigInt(f.exp + f.frac));
    });
}

const signArb = fc.integer({ min: 0, max: 1 });

/** Two odd significands of k and j bits with k + j in {P+1, P+2}: their exact
 *  product has P+1 bits about half the time, i.e. lies exactly halfway
 *  between two floats (a rounding tie). */
function tieProductArb(f: Format): fc.Arbitrary<[bigint, bigint]> {
  const P = f.frac + 1;
  const oddSig = (k: number): fc.Arbitrary<bigint> =>
    fc.bigInt({ min: 0n, max: mask(Math.max(k - 2, 0)) }).map((v) => k === 1 ? 1n : (1n << BigInt(k - 1)) | (v << 1n) | 1n);
  return fc.tuple(fc.integer({ min: 1, max: P }), fc.integer({ min: 0, max: 1 })).chain(([k, extra]) => {
    const j = Math.min(P + 1 - k + extra, P);
    return fc.tuple(oddSig(k), oddSig(j), signArb, signArb, expArb(f), fc.integer({ min: -(f.frac + 3), max: f.frac + 3 }))
      .map(([x, y, sx, sy, ex, dy]): [bigint, bigint] => {
        // Normal operands with those significands; the second one's exponent
        // mirrors the first around the bias so products stay in range often.
        const eb = Math.min(Math.max(2 * bias(f) - ex + dy, 1), expMax(f) - 1);
        const ea = Math.min(Math.max(ex, 1), expMax(f) - 1);
        return [pack(f, sx, ea, x << BigInt(P - k)), pack(f, sy, eb, y << BigInt(P - j))];
      });
  });
}

/** One operand near 1 and one near the smallest normal: products and
 *  quotients land on both sides of the underflow threshold, where tininess
 *  after rounding differs from tininess before rounding. */
function thresholdPairArb(f: Format): fc.Arbitrary<[bigint, bigint]> {
  const b = bias(f);
  const nearFrac = fc.oneof(fc.bigInt({ min: 0n, max: 16n }), fc.bigInt({ min: 0n, max: 16n }).map((d) => mask(f.frac) - d));
  const near1 = fc.tuple(signArb, fc.constantFrom(b - 1, b), nearFrac).map(([s, e, fr]) => pack(f, s, e, fr));
  const nearMin = fc.tuple(signArb, fc.constantFrom(0, 1, 2), nearFrac).map(([s, e, fr]) => pack(f, s, e, fr));
  // (1 + d ulp) * (1 - d' ulp) 2^emin with d' = d lands in the window
  // (1 - ulp/2, 1) 2^emin: not tiny after rounding to nearest, tiny toward zero.
  const exact = fc.tuple(fc.bigInt({ min: 1n, max: 1n << BigInt(f.frac >> 1) }), fc.bigInt({ min: -1n, max: 1n }), signArb, signArb)
    .map(([d, dd, s1, s2]) => [pack(f, s1, b, d), pack(f, s2, 0, (1n << BigInt(f.frac)) - d - dd)] as const);
  return fc.tuple(fc.oneof(fc.tuple(near1, nearMin), exact), fc.boolean())
    .map(([[x, y], swap]): [bigint, bigint] => (swap ? [y, x] : [x, y]));
}

/** A sparse significand and a power of two: products and quotients are exact
 *  shifts, which in the subnormal range cut off bits and give subnormal ties. */
function pow2PairArb(f: Format): fc.Arbitrary<[bigint, bigint]> {
  return fc.tuple(floatArb(f), signArb, expArb(f), fc.boolean())
    .map(([x, s, e, swap]): [bigint, bigint] => (swap ? [pack(f, s, e, 0n), x] : [x, pack(f, s, e, 0n)]));
}

/** Encodes m * 2^e2 exactly (m > 0), or undefined when not representable. */
function encodeExact(f: Format, sign: number, m: bigint, e2: number): bigint | undefined {
  const P = f.frac + 1;
  const emin = 1 - bias(f);
  const L = m.toString(2).length;
  const E = e2 + L - 1;
  if (L > P || E > bias(f)) return undefined;
  if (E >= emin) return pack(f, sign, E + bias(f), (m << BigInt(P - L)) - (1n << BigInt(f.frac)));
  if (e2 < emin - f.frac) return undefined;
  return pack(f, sign, 0, m << BigInt(e2 - (emin - f.frac)));
}

/** x and 2^±t such that x / 2^t = x * 2^-t = m * 2^(emin - F - 1) with m odd:
 *  exactly halfway between two subnormals (a subnormal rounding tie). */
function subnormalTiePairArb(f: Format): fc.Arbitrary<[bigint, bigint]> {
  const emin = 1 - bias(f);
  // m = 2^P - 1 gives (1 - 2^-P) 2^emin: a tie that rounds (to even) up to the
  // smallest normal although the value is tiny even after rounding.
  const v = fc.oneof({ arbitrary: fc.bigInt({ min: 0n, max: mask(f.frac + 1) }), weight: 3 }, fc.constant(mask(f.frac + 1)));
  return fc.tuple(fc.integer({ min: 1, max: f.frac + 1 }), v, fc.integer({ min: 1, max: bias(f) - 1 }), signArb, signArb, fc.boolean())
    .map(([L, v, t, s1, s2, divide]): [bigint, bigint] => {
      const m = ((v & mask(L)) | (1n << BigInt(L - 1))) | 1n;
      const x = encodeExact(f, s1, m, emin - f.frac - 1 + t) ?? pack(f, s1, bias(f), 0n);
      return [x, pack(f, s2, bias(f) + (divide ? t : -t), 0n)];
    });
}

export function pairArb(f: Format): fc.Arbitrary<[bigint, bigint]> {
  return fc.oneof(
    subnormalTiePairArb(f),
    fc.tuple(floatArb(f), floatArb(f)),
    floatArb(f).chain((a) => nearArb(f, a).map((b): [bigint, bigint] => [a, b])),
    tieProductArb(f),
    thresholdPairArb(f),
    pow2PairArb(f),
  );
}

/** a = 1 + 2^-x, b = 1 + 2^-y (scaled), c = -(a*b truncated) +- a few ulps:
 *  a*b + c leaves the cross term 2^-(x+y), so the cancellation leaves the
 *  leading bit anywhere in the 128-bit sum (including bit 63, where the
 *  renormalization has its own branch). */
function crossTermTripleArb(f: Format): fc.Arbitrary<[bigint, bigint, bigint]> {
  const b0 = bias(f);
  const sb = 1n << BigInt(f.exp + f.frac);
  return fc.tuple(fc.integer({ min: 1, max: f.frac }), fc.integer({ min: 1, max: f.frac }), signArb, signArb,
    fc.integer({ min: -20, max: 20 }), fc.integer({ min: -20, max: 20 }), fc.bigInt({ min: -2n, max: 2n }))
    .map(([x, y, sa, sbb, da, db, delta]): [bigint, bigint, bigint] => {
      const a = pack(f, sa, b0 + da, 1n << BigInt(f.frac - x));
      const b = pack(f, sbb, b0 + db, 1n << BigInt(f.frac - y));
      const p = refMul(a, b, RTZ, f).bits;
      return [a, b, (((p & (sb - 1n)) + delta) & (sb - 1n)) | ((p & sb) ^ sb)];
    });
}

/** Addend 2^k away from the product, |k| up to 130: the 128-bit alignment
 *  shifts by amounts around 64 and 127, where its sticky logic has branches. */
function gapTripleArb(f: Format): fc.Arbitrary<[bigint, bigint, bigint]> {
  return fc.tuple(pairArb(f), fc.integer({ min: -130, max: 130 }), signArb, fracArb(f))
    .map(([[a, b], k, s, fr]): [bigint, bigint, bigint] => {
      const p = refMul(a, b, RTZ, f).bits;
      const be = Number((p >> BigInt(f.frac)) & mask(f.exp));
      return [a, b, pack(f, s, Math.min(Math.max(be + k, 0), expMax(f) - 1), fr)];
    });
}

/** FMA operands; the addend is often close to minus the product, to exercise
 *  massive cancellation in the 128-bit sum. */
export function tripleArb(f: Format): fc.Arbitrary<[bigint, bigint, bigint]> {
  return fc.oneof(
    fc.tuple(floatArb(f), floatArb(f), floatArb(f)),
    crossTermTripleArb(f),
    gapTripleArb(f),
    pairArb(f).chain(([a, b]) => {
      const p = refMul(a, b, RTZ, f).bits;
      const tiny = fc.tuple(signArb, fc.bigInt({ min: 0n, max: mask(f.frac) })).map(([s, fr]) => pack(f, s, 0, fr));
      return fc.oneof(nearArb(f, p), floatArb(f), tiny).map((c): [bigint, bigint, bigint] => [a, b, c]);
    }),
  );
}

/** Operands around the float->integer boundaries 2^31, 2^32, 2^63, 2^64 and
 *  small values that round to 0 or ±1. */
export function toIntFloatArb(f: Format): fc.Arbitrary<bigint> {
  const b = bias(f);
  return fc.oneof(
    floatArb(f),
    fc.tuple(
      fc.integer({ min: 0, max: 1 }),
      fc.oneof(fc.constantFrom(b - 2, b - 1, b, b + 1, b + 30, b + 31, b + 32, b + 62, b + 63, b + 64), fc.integer({ min: b - 3, max: b + 65 })),
      fracArb(f),
    ).map(([s, e, fr]) => pack(f, s, e, fr)),
  );
}

/** Integers near powers of two and the type limits, plus random widths. */
export function intArb(bits: 32 | 64, signed: boolean): fc.Arbitrary<bigint> {
  const lo = signed ? -(1n << BigInt(bits - 1)) : 0n;
  const hi = signed ? (1n << BigInt(bits - 1)) - 1n : (1n << BigInt(bits)) - 1n;
  const clamp = (v: bigint): bigint => (v < lo ? lo : v > hi ? hi : v);
  return fc.oneof(
    fc.bigInt({ min: lo, max: hi }),
    fc.constantFrom(lo, hi, 0n, 1n, -1n).map(clamp),
    fc.tuple(fc.integer({ min: 0, max: bits }), fc.bigInt({ min: -70n, max: 70n }), fc.boolean())
      .map(([k, d, neg]) => clamp((neg ? -1n : 1n) * ((1n << BigInt(k)) + d))),
    fc.tuple(fc.integer({ min: 1, max: bits }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.boolean())
      .map(([k, v, neg]) => clamp((neg ? -1n : 1n) * (v & mask(k)))),
  );
}

/** binary64 values around binary32's underflow and overflow thresholds, for
 *  FCVT.S.D. */
export function f64NearF32LimitsArb(): fc.Arbitrary<bigint> {
  const F64f: Format = { name: 'f64', frac: 52, exp: 11 };
  const near = fc.oneof(fc.bigInt({ min: 0n, max: 1n << 32n }), fc.bigInt({ min: 0n, max: 1n << 32n }).map((d) => mask(52) - d));
  return fc.tuple(signArb, fc.constantFrom(1023 - 127, 1023 - 126, 1023 - 150, 1023 - 149, 1023 - 148, 1023 + 127, 1023 + 128), near, fracArb(F64f))
    .chain(([s, e, fr, rnd]) => fc.constantFrom(pack(F64f, s, e, fr), pack(F64f, s, e, rnd)));
}
