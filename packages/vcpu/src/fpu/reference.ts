// Reference IEEE 754-2008 arithmetic for testing assembly/fpu.ts: every
// operation is carried out exactly on rationals (BigInt numerator and
// denominator) and rounded once. Slow but obviously right; written apart from
// the wasm library so that a shared misunderstanding is less likely.
// RISC-V specifics (ISA 20191213 ch. 11/12): canonical NaN results,
// tininess detected after rounding, FMIN/FMAX as minimumNumber/maximumNumber,
// float->int saturation (Table 11.4).

export const NV = 16;
export const DZ = 8;
export const OF = 4;
export const UF = 2;
export const NX = 1;

export const RNE = 0;
export const RTZ = 1;
export const RDN = 2;
export const RUP = 3;
export const RMM = 4;

export interface Format {
  readonly name: 'f32' | 'f64';
  /** fraction (trailing significand) width */
  readonly frac: number;
  /** exponent field width */
  readonly exp: number;
}
export const F32: Format = { name: 'f32', frac: 23, exp: 8 };
export const F64: Format = { name: 'f64', frac: 52, exp: 11 };

export interface Result {
  readonly bits: bigint;
  readonly flags: number;
}

const bias = (f: Format): number => (1 << (f.exp - 1)) - 1;
const expAllOnes = (f: Format): bigint => (1n << BigInt(f.exp)) - 1n;
const signPos = (f: Format): bigint => BigInt(f.frac + f.exp);

export function canonicalNaN(f: Format): bigint {
  return (expAllOnes(f) << BigInt(f.frac)) | (1n << BigInt(f.frac - 1));
}
function infinity(f: Format, sign: number): bigint {
  return (BigInt(sign) << signPos(f)) | (expAllOnes(f) << BigInt(f.frac));
}
function zero(f: Format, sign: number): bigint {
  return BigInt(sign) << signPos(f);
}
function maxFinite(f: Format, sign: number): bigint {
  return infinity(f, sign) - 1n;
}

/** A decoded operand. Finite values are sign * m * 2^e exactly. */
type Decoded =
  | { kind: 'nan'; sign: number; signaling: boolean }
  | { kind: 'inf'; sign: number }
  | { kind: 'zero'; sign: number }
  | { kind: 'finite'; sign: number; m: bigint; e: number; subnormal: boolean };

function decode(bits: bigint, f: Format): Decoded {
  const sign = Number((bits >> signPos(f)) & 1n);
  const be = (bits >> BigInt(f.frac)) & expAllOnes(f);
  const fr = bits & ((1n << BigInt(f.frac)) - 1n);
  if (be === expAllOnes(f)) {
    if (fr === 0n) return { kind: 'inf', sign };
    return { kind: 'nan', sign, signaling: (fr >> BigInt(f.frac - 1)) === 0n };
  }
  if (be === 0n) {
    if (fr === 0n) return { kind: 'zero', sign };
    return { kind: 'finite', sign, m: fr, e: 1 - bias(f) - f.frac, subnormal: true };
  }
  return { kind: 'finite', sign, m: fr | (1n << BigInt(f.frac)), e: Number(be) - bias(f) - f.frac, subnormal: false };
}

function bitLength(x: bigint): number {
  return x === 0n ? 0 : x.toString(2).length;
}

/** Scales the rational n/d by 2^k. */
function scale(n: bigint, d: bigint, k: number): [bigint, bigint] {
  return k >= 0 ? [n << BigInt(k), d] : [n, d << BigInt(-k)];
}

/** Rounds the positive rational n/d to an integer in mode rm (sign is the sign
 *  of the real value, for the directed modes). */
function roundToInteger(n: bigint, d: bigint, sign: number, rm: number): { q: bigint; inexact: boolean } {
  const q = n / d;
  const r = n - q * d;
  if (r === 0n) return { q, inexact: false };
  const twice = 2n * r;
  let up: boolean;
  switch (rm) {
    case RTZ: up = false; break;
    case RDN: up = sign === 1; break;
    case RUP: up = sign === 0; break;
    case RMM: up = twice >= d; break;
    default: up = twice > d || (twice === d && (q & 1n) === 1n); break;
  }
  return { q: up ? q + 1n : q, inexact: true };
}

/** Rounds sign * n/d (n, d > 0) to format f (IEEE 754-2008 §4.3, §7.4, §7.5). */
function roundRational(sign: number, n: bigint, d: bigint, f: Format, rm: number): Result {
  const P = f.frac + 1;
  const emin = 1 - bias(f);
  const emax = bias(f);
  // E = floor(log2(n/d))
  let E = bitLength(n) - bitLength(d);
  {
    const [pn, pd] = scale(1n, 1n, E); // 2^E as a rational
    if (n * pd < pn * d) E--; // n/d < 2^E
  }
  // Tininess after rounding: round to P bits with an unbounded exponent range.
  const unb = roundToInteger(...scale(n, d, P - 1 - E), sign, rm);
  const roundedExp = unb.q === 1n << BigInt(P) ? E + 1 : E;
  const tiny = roundedExp < emin;

  let Eq = Math.max(E, emin);
  const r = roundToInteger(...scale(n, d, P - 1 - Eq), sign, rm);
  let q = r.q;
  if (q === 1n << BigInt(P)) {
    q = 1n << BigInt(P - 1);
    Eq++;
  }
  if (Eq > emax) {
    const toInf = rm === RNE || rm === RMM || (rm === RDN && sign === 1) || (rm === RUP && sign === 0);
    return { bits: toInf ? infinity(f, sign) : maxFinite(f, sign), flags: OF | NX };
  }
  const flags = r.inexact ? NX | (tiny ? UF : 0) : 0;
  let biased: bigint;
  let fr: bigint;
  if (q < 1n << BigInt(P - 1)) {
    biased = 0n; // subnormal (or zero after rounding)
    fr = q;
  } else {
    biased = BigInt(Eq + bias(f));
    fr = q - (1n << BigInt(P - 1));
  }
  return { bits: (BigInt(sign) << signPos(f)) | (biased << BigInt(f.frac)) | fr, flags };
}

/** Rounds sign * m * 2^e (m > 0). */
function roundDyadic(sign: number, m: bigint, e: number, f: Format, rm: number): Result {
  return roundRational(sign, ...scale(m, 1n, e), f, rm);
}

function nanResult(f: Format, ...ops: Decoded[]): Result | undefined {
  if (!ops.some((o) => o.kind === 'nan')) return undefined;
  const signaling = ops.some((o) => o.kind === 'nan' && o.signaling);
  return { bits: canonicalNaN(f), flags: signaling ? NV : 0 };
}
const invalid = (f: Format): Result => ({ bits: canonicalNaN(f), flags: NV });

/** Exact sum of two signed dyadic numbers as sign * M * 2^E (M >= 0). */
function exactSum(s1: number, m1: bigint, e1: number, s2: number, m2: bigint, e2: number): { s: number; M: bigint; E: number } {
  const E = Math.min(e1, e2);
  const v = (s1 ? -1n : 1n) * (m1 << BigInt(e1 - E)) + (s2 ? -1n : 1n) * (m2 << BigInt(e2 - E));
  return v < 0n ? { s: 1, M: -v, E } : { s: 0, M: v, E };
}

export function refAdd(a: bigint, b: bigint, rm: number, f: Format, negB = false): Result {
  const x = decode(a, f);
  const y0 = decode(b, f);
  const y: Decoded = negB ? { ...y0, sign: y0.sign ^ 1 } : y0;
  const nan = nanResult(f, x, y);
  if (nan) return nan;
  if (x.kind === 'inf' && y.kind === 'inf') return x.sign === y.sign ? { bits: infinity(f, x.sign), flags: 0 } : invalid(f);
  if (x.kind === 'inf') return { bits: infinity(f, x.sign), flags: 0 };
  if (y.kind === 'inf') return { bits: infinity(f, y.sign), flags: 0 };
  const mx = x.kind === 'finite' ? x.m : 0n;
  const ex = x.kind === 'finite' ? x.e : 0;
  const my = y.kind === 'finite' ? y.m : 0n;
  const ey = y.kind === 'finite' ? y.e : 0;
  const sum = exactSum(x.sign, mx, ex, y.sign, my, ey);
  if (sum.M === 0n) {
    // IEEE 754-2008 §6.3: exact zero sum of opposite signs is +0 (RDN: -0).
    const sign = x.kind === 'zero' && y.kind === 'zero' && x.sign === y.sign ? x.sign : rm === RDN ? 1 : 0;
    return { bits: zero(f, sign), flags: 0 };
  }
  return roundDyadic(sum.s, sum.M, sum.E, f, rm);
}

export function refMul(a: bigint, b: bigint, rm: number, f: Format): Result {
  const x = decode(a, f);
  const y = decode(b, f);
  const nan = nanResult(f, x, y);
  if (nan) return nan;
  const sign = x.sign ^ y.sign;
  if (x.kind === 'inf' || y.kind === 'inf') {
    if (x.kind === 'zero' || y.kind === 'zero') return invalid(f);
    return { bits: infinity(f, sign), flags: 0 };
  }
  if (x.kind !== 'finite' || y.kind !== 'finite') return { bits: zero(f, sign), flags: 0 };
  return roundDyadic(sign, x.m * y.m, x.e + y.e, f, rm);
}

export function refDiv(a: bigint, b: bigint, rm: number, f: Format): Result {
  const x = decode(a, f);
  const y = decode(b, f);
  const nan = nanResult(f, x, y);
  if (nan) return nan;
  const sign = x.sign ^ y.sign;
  if (x.kind === 'inf') return y.kind === 'inf' ? invalid(f) : { bits: infinity(f, sign), flags: 0 };
  if (y.kind === 'inf') return { bits: zero(f, sign), flags: 0 };
  if (y.kind === 'zero') return x.kind === 'zero' ? invalid(f) : { bits: infinity(f, sign), flags: DZ };
  if (x.kind === 'zero') return { bits: zero(f, sign), flags: 0 };
  if (x.kind !== 'finite' || y.kind !== 'finite') throw new Error('unreachable');
  // (mx 2^ex) / (my 2^ey) = (mx / my) 2^(ex-ey)
  return roundRational(sign, ...scale(x.m, y.m, x.e - y.e), f, rm);
}

function isqrt(n: bigint): bigint {
  if (n < 2n) return n;
  let x = 1n << BigInt((bitLength(n) >> 1) + 1);
  while (true) {
    const y = (x + n / x) >> 1n;
    if (y >= x) return x;
    x = y;
  }
}

export function refSqrt(a: bigint, rm: number, f: Format): Result {
  const x = decode(a, f);
  const nan = nanResult(f, x);
  if (nan) return nan;
  if (x.kind === 'zero') return { bits: zero(f, x.sign), flags: 0 };
  if (x.sign === 1) return invalid(f);
  if (x.kind === 'inf') return { bits: infinity(f, 0), flags: 0 };
  if (x.kind !== 'finite') throw new Error('unreachable');
  let m = x.m;
  let e = x.e;
  if (e % 2 !== 0) {
    m <<= 1n;
    e -= 1;
  }
  // sqrt(m 2^e) = sqrt(m 4^k) 2^(e/2 - k); with k = P + 3 the integer root
  // has >= P + 4 bits, so an inexact root r < t < r + 1 rounds like r + 1/2.
  const k = f.frac + 4;
  const n = m << BigInt(2 * k);
  const r = isqrt(n);
  const exact = r * r === n;
  const [num, den] = exact ? [r, 1n] : [2n * r + 1n, 2n];
  return roundRational(0, ...scale(num, den, e / 2 - k), f, rm);
}

export function refFma(a: bigint, b: bigint, c: bigint, rm: number, f: Format, negProduct: boolean, negAddend: boolean): Result {
  const x = decode(a, f);
  const y = decode(b, f);
  const z0 = decode(c, f);
  const z: Decoded = negAddend ? { ...z0, sign: z0.sign ^ 1 } : z0;
  const infTimesZero = (x.kind === 'inf' && y.kind === 'zero') || (x.kind === 'zero' && y.kind === 'inf');
  const nan = nanResult(f, x, y, z);
  if (nan) return infTimesZero ? invalid(f) : nan; // ISA §11.6: NV even with a quiet NaN addend
  if (infTimesZero) return invalid(f);
  const sp = x.sign ^ y.sign ^ (negProduct ? 1 : 0);
  if (x.kind === 'inf' || y.kind === 'inf') {
    if (z.kind === 'inf' && z.sign !== sp) return invalid(f);
    return { bits: infinity(f, sp), flags: 0 };
  }
  if (z.kind === 'inf') return { bits: infinity(f, z.sign), flags: 0 };
  const pm = x.kind === 'finite' && y.kind === 'finite' ? x.m * y.m : 0n;
  const pe = x.kind === 'finite' && y.kind === 'finite' ? x.e + y.e : 0;
  const cm = z.kind === 'finite' ? z.m : 0n;
  const ce = z.kind === 'finite' ? z.e : 0;
  const sum = exactSum(sp, pm, pe, z.sign, cm, ce);
  if (sum.M === 0n) {
    const sign = pm === 0n && z.kind === 'zero' && sp === z.sign ? sp : rm === RDN ? 1 : 0;
    return { bits: zero(f, sign), flags: 0 };
  }
  return roundDyadic(sum.s, sum.M, sum.E, f, rm);
}

/** Orders two non-NaN decoded values: -1, 0, 1 (with -0 == +0). */
function compareValues(x: Decoded, y: Decoded): number {
  const val = (d: Decoded): { inf: number; s: number; m: bigint; e: number } => {
    if (d.kind === 'inf') return { inf: d.sign ? -1 : 1, s: d.sign, m: 0n, e: 0 };
    if (d.kind === 'finite') return { inf: 0, s: d.sign, m: d.m, e: d.e };
    return { inf: 0, s: 0, m: 0n, e: 0 };
  };
  const a = val(x);
  const b = val(y);
  if (a.inf !== 0 || b.inf !== 0) return Math.sign(a.inf - b.inf);
  const diff = exactSum(a.s, a.m, a.e, b.s ^ 1, b.m, b.e);
  return diff.M === 0n ? 0 : diff.s ? -1 : 1;
}

export function refEq(a: bigint, b: bigint, f: Format): { value: boolean; flags: number } {
  const x = decode(a, f);
  const y = decode(b, f);
  if (x.kind === 'nan' || y.kind === 'nan') {
    const sig = (x.kind === 'nan' && x.signaling) || (y.kind === 'nan' && y.signaling);
    return { value: false, flags: sig ? NV : 0 };
  }
  return { value: compareValues(x, y) === 0, flags: 0 };
}

export function refLt(a: bigint, b: bigint, f: Format, orEqual: boolean): { value: boolean; flags: number } {
  const x = decode(a, f);
  const y = decode(b, f);
  if (x.kind === 'nan' || y.kind === 'nan') return { value: false, flags: NV };
  const c = compareValues(x, y);
  return { value: c < 0 || (orEqual && c === 0), flags: 0 };
}

export function refMinMax(a: bigint, b: bigint, f: Format, isMax: boolean): Result {
  const x = decode(a, f);
  const y = decode(b, f);
  const flags = (x.kind === 'nan' && x.signaling) || (y.kind === 'nan' && y.signaling) ? NV : 0;
  if (x.kind === 'nan' && y.kind === 'nan') return { bits: canonicalNaN(f), flags };
  if (x.kind === 'nan') return { bits: b, flags };
  if (y.kind === 'nan') return { bits: a, flags };
  let c = compareValues(x, y);
  if (c === 0) c = x.sign === y.sign ? 0 : x.sign ? -1 : 1; // -0 < +0
  const pickA = isMax ? c >= 0 : c <= 0;
  return { bits: pickA ? a : b, flags };
}

export function refClassify(a: bigint, f: Format): number {
  const x = decode(a, f);
  switch (x.kind) {
    case 'inf': return x.sign ? 1 << 0 : 1 << 7;
    case 'zero': return x.sign ? 1 << 3 : 1 << 4;
    case 'nan': return x.signaling ? 1 << 8 : 1 << 9;
    case 'finite':
      if (x.subnormal) return x.sign ? 1 << 2 : 1 << 5;
      return x.sign ? 1 << 1 : 1 << 6;
  }
}

/** Float -> integer (ISA §11.7, Table 11.4). Returns the integer's value
 *  (not its bit pattern) and the flags. */
export function refToInt(a: bigint, rm: number, f: Format, signed: boolean, width: 32 | 64): { value: bigint; flags: number } {
  const x = decode(a, f);
  const max = signed ? (1n << BigInt(width - 1)) - 1n : (1n << BigInt(width)) - 1n;
  const min = signed ? -(1n << BigInt(width - 1)) : 0n;
  if (x.kind === 'nan') return { value: max, flags: NV };
  if (x.kind === 'inf') return { value: x.sign ? min : max, flags: NV };
  if (x.kind === 'zero') return { value: 0n, flags: 0 };
  const [n, d] = scale(x.m, 1n, x.e);
  const r = roundToInteger(n, d, x.sign, rm);
  const v = x.sign ? -r.q : r.q;
  if (v > max) return { value: max, flags: NV };
  if (v < min) return { value: min, flags: NV };
  return { value: v, flags: r.inexact ? NX : 0 };
}

/** Integer value -> float. */
export function refFromInt(v: bigint, rm: number, f: Format): Result {
  if (v === 0n) return { bits: 0n, flags: 0 };
  return roundRational(v < 0n ? 1 : 0, v < 0n ? -v : v, 1n, f, rm);
}

/** FCVT.S.D / FCVT.D.S. */
export function refConvert(a: bigint, rm: number, from: Format, to: Format): Result {
  const x = decode(a, from);
  if (x.kind === 'nan') return { bits: canonicalNaN(to), flags: x.signaling ? NV : 0 };
  if (x.kind === 'inf') return { bits: infinity(to, x.sign), flags: 0 };
  if (x.kind === 'zero') return { bits: zero(to, x.sign), flags: 0 };
  return roundDyadic(x.sign, x.m, x.e, to, rm);
}
