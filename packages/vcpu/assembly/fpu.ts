// IEEE 754-2008 binary32/binary64 arithmetic for the RISC-V F and D extensions
// (RISC-V unprivileged ISA 20191213, ch. 11 "F" and ch. 12 "D").
//
// Wasm's native f32/f64 ops round to nearest-even only and raise no flags, so
// everything here works on raw bit patterns with integer arithmetic, in the
// style of Berkeley SoftFloat. Native ops are used only where the result is
// provably the same (square root: wasm sqrt is IEEE squareRoot with
// roundTiesToEven; the exact residual decides flags and directed rounding).
//
// Constraints: compiled into the hart core with `--runtime stub` and shared
// memory, so no heap: only scalars and module globals. Results that do not fit
// in one scalar are passed through the `r*` globals below (per wasm instance,
// so per hart thread).
//
// Conventions shared by the whole file:
// - F is the fraction width of the format: 23 (binary32) or 52 (binary64).
//   binary32 values travel in the low 32 bits of a u64.
// - A finite nonzero unpacked value is (m, e) with m in [2^62, 2^63)
//   (the leading significand bit at bit 62) and value = m * 2^(e - 62). Bit 0
//   of m may be a "sticky" bit standing for nonzero bits shifted out below.
// - rm: 0=RNE 1=RTZ 2=RDN 3=RUP 4=RMM (ISA §11.2, Table 11.1). The hart traps on
//   reserved/invalid rm before calling; any other value is treated as RNE.

/** Accrued exception flags (ISA §11.2, fflags layout): NV=16 DZ=8 OF=4 UF=2 NX=1.
 *  The core ORs this into fcsr.fflags after each instruction and clears it. */
export let fflags: u32 = 0;

const NV: u32 = 16;
const DZ: u32 = 8;
const OF: u32 = 4;
const UF: u32 = 2;
const NX: u32 = 1;

const RTZ: u32 = 1;
const RDN: u32 = 2;
const RUP: u32 = 3;
const RMM: u32 = 4;

// ---------------------------------------------------------------------------
// Format parameters

// @ts-ignore: decorator
@inline function expMax(F: i32): i32 { return F == 23 ? 0xff : 0x7ff; }
// @ts-ignore: decorator
@inline function bias(F: i32): i32 { return F == 23 ? 127 : 1023; }
// @ts-ignore: decorator
@inline function signShift(F: i32): u64 { return F == 23 ? 31 : 63; }
// @ts-ignore: decorator
@inline function signBit(F: i32): u64 { return <u64>1 << signShift(F); }
// @ts-ignore: decorator
@inline function absMask(F: i32): u64 { return signBit(F) - 1; }
// @ts-ignore: decorator
@inline function infBits(F: i32): u64 { return <u64>expMax(F) << <u64>F; }
/** The canonical NaN (ISA §11.3): positive, quiet bit set, rest zero. */
// @ts-ignore: decorator
@inline function defaultNaN(F: i32): u64 { return F == 23 ? 0x7fc00000 : 0x7ff8000000000000; }
// @ts-ignore: decorator
@inline function isNaNBits(x: u64, F: i32): bool { return (x & absMask(F)) > infBits(F); }
/** Signaling NaN: NaN with the most significant fraction bit clear (IEEE 754-2008 §6.2.1). */
// @ts-ignore: decorator
@inline function isSNaNBits(x: u64, F: i32): bool {
  return isNaNBits(x, F) && (x & (<u64>1 << <u64>(F - 1))) == 0;
}

// ---------------------------------------------------------------------------
// Scalar helpers

/** Shift right, OR-ing every bit shifted out into bit 0 ("jamming"), so that
 *  rounding still sees that the value was inexact. */
// @ts-ignore: decorator
@inline function shiftRightJam(m: u64, n: i32): u64 {
  if (n <= 0) return m;
  if (n >= 64) return m != 0 ? 1 : 0;
  return (m >> <u64>n) | ((m << <u64>(64 - n)) != 0 ? 1 : 0);
}

let uE: i32 = 0; // exponent output of unpack()
let uM: u64 = 0; // significand output of unpack()

/** Unpacks a finite nonzero value (normal or subnormal) into uM/uE. */
// @ts-ignore: decorator
@inline function unpack(x: u64, F: i32): void {
  const be = <i32>((x >> <u64>F) & <u64>expMax(F));
  const frac = x & ((<u64>1 << <u64>F) - 1);
  if (be == 0) {
    // Subnormal: value = frac * 2^(1 - bias - F); normalize the leading 1 to bit 62.
    const lz = <i32>clz(frac);
    uM = frac << <u64>(lz - 1);
    uE = 64 - bias(F) - F - lz;
  } else {
    uM = (frac | (<u64>1 << <u64>F)) << <u64>(62 - F);
    uE = be - bias(F);
  }
}

/** Whether to add one unit in the last place, given the discarded bits `rb`
 *  (`half` is the weight of the first discarded bit) — IEEE 754-2008 §4.3. */
// @ts-ignore: decorator
@inline function roundUp(rb: u64, half: u64, sig: u64, s: u32, rm: u32): bool {
  if (rm == RTZ) return false;
  if (rm == RDN) return s != 0;
  if (rm == RUP) return s == 0;
  if (rm == RMM) return rb >= half;
  return rb > half || (rb == half && (sig & 1) != 0); // RNE
}

/** Overflow result (IEEE 754-2008 §7.4): ±inf when rounding away from zero,
 *  else the largest finite magnitude. */
function overflow(s: u32, rm: u32, F: i32): u64 {
  fflags |= OF | NX;
  const sign = <u64>s << signShift(F);
  const toInf = rm == RTZ ? false : rm == RDN ? s != 0 : rm == RUP ? s == 0 : true;
  return sign | (toInf ? infBits(F) : infBits(F) - 1);
}

/** Rounds (s, e, m) (m normalized to bit 62, sticky in bit 0) to format F and
 *  packs it, raising NX/UF/OF. Underflow uses tininess detected after rounding
 *  (ISA §11.2 follows IEEE 754-2008 §7.5's "after rounding" option): the value
 *  is tiny if, rounded to F+1 bits with an unbounded exponent, it is below the
 *  smallest normal. UF is raised only when tiny and inexact. */
function roundPack(s: u32, e: i32, m: u64, rm: u32, F: i32): u64 {
  const EM = expMax(F);
  let be = e + bias(F);
  if (be >= EM) return overflow(s, rm, F);
  const sh = 62 - F; // discarded bits below the kept F+1 bits
  const half: u64 = <u64>1 << <u64>(sh - 1);
  const mask: u64 = (<u64>1 << <u64>sh) - 1;
  let tiny = false;
  let pe: u64 = 0; // exponent field contribution; the implicit bit adds the last 1
  if (be < 1) {
    tiny = true;
    if (be == 0) {
      // Just below the smallest normal: tiny unless rounding at full precision
      // carries into 2^emin.
      const rb0 = m & mask;
      let sig0 = m >> <u64>sh;
      if (rb0 != 0 && roundUp(rb0, half, sig0, s, rm)) sig0++;
      if ((sig0 >> <u64>(F + 1)) != 0) tiny = false;
    }
    m = shiftRightJam(m, 1 - be);
  } else {
    pe = <u64>(be - 1);
  }
  const rb = m & mask;
  let sig = m >> <u64>sh;
  if (rb != 0) {
    fflags |= tiny ? NX | UF : NX;
    if (roundUp(rb, half, sig, s, rm)) sig++;
  }
  // Adding (not OR-ing) lets a carry out of the significand bump the exponent.
  const bits = (pe << <u64>F) + sig;
  if ((bits >> <u64>F) >= <u64>EM) return overflow(s, rm, F);
  return (<u64>s << signShift(F)) | bits;
}

/** Exact zero result of a sum of opposite-signed operands: +0, or -0 when
 *  rounding down (IEEE 754-2008 §6.3). */
// @ts-ignore: decorator
@inline function cancelZero(rm: u32, F: i32): u64 { return rm == RDN ? signBit(F) : 0; }

// ---------------------------------------------------------------------------
// 128-bit helpers (for binary64 multiply, divide and fused multiply-add)

let rHi: u64 = 0; // high half of a 128-bit result; the low half is the return value

/** Full 64x64 -> 128 product via 32-bit halves. */
// @ts-ignore: decorator
@inline function mul128(a: u64, b: u64): u64 {
  const a0 = a & 0xffffffff;
  const a1 = a >> 32;
  const b0 = b & 0xffffffff;
  const b1 = b >> 32;
  const p00 = a0 * b0;
  const p01 = a0 * b1;
  const p10 = a1 * b0;
  const p11 = a1 * b1;
  const mid = (p00 >> 32) + (p01 & 0xffffffff) + (p10 & 0xffffffff);
  rHi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
  return (mid << 32) | (p00 & 0xffffffff);
}

/** 128-bit shift right with jamming. */
// @ts-ignore: decorator
@inline function shiftRightJam128(hi: u64, lo: u64, n: i32): u64 {
  if (n <= 0) { rHi = hi; return lo; }
  if (n < 64) {
    rHi = hi >> <u64>n;
    return (lo >> <u64>n) | (hi << <u64>(64 - n)) | ((lo << <u64>(64 - n)) != 0 ? 1 : 0);
  }
  rHi = 0;
  if (n == 64) return hi | (lo != 0 ? 1 : 0);
  if (n < 128) return (hi >> <u64>(n - 64)) | (((hi << <u64>(128 - n)) | lo) != 0 ? 1 : 0);
  return (hi | lo) != 0 ? 1 : 0;
}

let divRem: u64 = 0;

/** (u1:u0) / v for a normalized divisor (bit 63 set) and u1 < v, so the
 *  quotient fits in 64 bits; remainder in divRem. Knuth's algorithm D with
 *  32-bit digits (TAOCP vol. 2 §4.3.1; Hacker's Delight "divlu"). */
function div128(u1: u64, u0: u64, v: u64): u64 {
  const b: u64 = 0x100000000;
  const vn1 = v >> 32;
  const vn0 = v & 0xffffffff;
  const un1 = u0 >> 32;
  const un0 = u0 & 0xffffffff;
  let q1 = u1 / vn1;
  let rhat = u1 - q1 * vn1;
  while (q1 >= b || q1 * vn0 > ((rhat << 32) | un1)) {
    q1--;
    rhat += vn1;
    if (rhat >= b) break;
  }
  const un21 = ((u1 << 32) | un1) - q1 * v; // exact: the true value is < v
  let q0 = un21 / vn1;
  rhat = un21 - q0 * vn1;
  while (q0 >= b || q0 * vn0 > ((rhat << 32) | un0)) {
    q0--;
    rhat += vn1;
    if (rhat >= b) break;
  }
  divRem = ((un21 << 32) | un0) - q0 * v;
  return (q1 << 32) | q0;
}

// ---------------------------------------------------------------------------
// Arithmetic, generic over the format

function addG(a: u64, b: u64, rm: u32, F: i32, negB: bool): u64 {
  const SB = signBit(F);
  const INF = infBits(F);
  if (negB) b ^= SB;
  const absA = a & absMask(F);
  const absB = b & absMask(F);
  if (absA > INF || absB > INF) {
    if (isSNaNBits(a, F) || isSNaNBits(b, F)) fflags |= NV;
    return defaultNaN(F);
  }
  const sa = <u32>(a >> signShift(F));
  const sb = <u32>(b >> signShift(F));
  if (absA == INF) {
    if (absB == INF && sa != sb) { fflags |= NV; return defaultNaN(F); } // inf - inf (§7.2)
    return a;
  }
  if (absB == INF) return b;
  if (absA == 0) {
    if (absB == 0) return sa == sb ? a : cancelZero(rm, F);
    return b;
  }
  if (absB == 0) return a;
  unpack(a, F);
  let ea = uE;
  let ma = uM;
  unpack(b, F);
  let eb = uE;
  let mb = uM;
  let s = sa;
  if (sa == sb) {
    if (ea < eb) {
      const t = ea; ea = eb; eb = t;
      const u = ma; ma = mb; mb = u;
    }
    let m = ma + shiftRightJam(mb, ea - eb); // < 2^64
    if ((m >> 63) != 0) { m = shiftRightJam(m, 1); ea++; }
    return roundPack(s, ea, m, rm, F);
  }
  // Opposite signs: subtract the smaller magnitude from the larger. The jammed
  // sticky bit keeps the difference on the correct side of every rounding
  // boundary (the larger operand has >= 10 trailing zero bits; see SoftFloat).
  if (ea < eb || (ea == eb && ma < mb)) {
    const t = ea; ea = eb; eb = t;
    const u = ma; ma = mb; mb = u;
    s = sb;
  }
  let m = ma - shiftRightJam(mb, ea - eb);
  if (m == 0) return cancelZero(rm, F);
  const lz = <i32>clz(m) - 1;
  m <<= <u64>lz;
  return roundPack(s, ea - lz, m, rm, F);
}

function mulG(a: u64, b: u64, rm: u32, F: i32): u64 {
  const INF = infBits(F);
  const absA = a & absMask(F);
  const absB = b & absMask(F);
  if (absA > INF || absB > INF) {
    if (isSNaNBits(a, F) || isSNaNBits(b, F)) fflags |= NV;
    return defaultNaN(F);
  }
  const s = <u32>((a ^ b) >> signShift(F));
  const sign = <u64>s << signShift(F);
  if (absA == INF || absB == INF) {
    if (absA == 0 || absB == 0) { fflags |= NV; return defaultNaN(F); } // inf * 0 (§7.2)
    return sign | INF;
  }
  if (absA == 0 || absB == 0) return sign;
  unpack(a, F);
  const ea = uE;
  const ma = uM;
  unpack(b, F);
  let e = ea + uE;
  let m: u64;
  if (F == 23) {
    // 24x24-bit significands: the 48-bit product is exact in a u64.
    m = ((ma >> 39) * (uM >> 39)) << 15; // in [2^61, 2^63)
    e++;
  } else {
    const lo = mul128(ma, uM); // product in [2^124, 2^126)
    m = (rHi << 2) | (lo >> 62) | ((lo << 2) != 0 ? 1 : 0);
    if ((m >> 63) != 0) { m = shiftRightJam(m, 1); e++; }
  }
  if ((m >> 62) == 0) { m <<= 1; e--; }
  return roundPack(s, e, m, rm, F);
}

function divG(a: u64, b: u64, rm: u32, F: i32): u64 {
  const INF = infBits(F);
  const absA = a & absMask(F);
  const absB = b & absMask(F);
  if (absA > INF || absB > INF) {
    if (isSNaNBits(a, F) || isSNaNBits(b, F)) fflags |= NV;
    return defaultNaN(F);
  }
  const s = <u32>((a ^ b) >> signShift(F));
  const sign = <u64>s << signShift(F);
  if (absA == INF) {
    if (absB == INF) { fflags |= NV; return defaultNaN(F); } // inf / inf
    return sign | INF;
  }
  if (absB == INF) return sign;
  if (absB == 0) {
    if (absA == 0) { fflags |= NV; return defaultNaN(F); } // 0 / 0
    fflags |= DZ; // finite / 0 (IEEE 754-2008 §7.3)
    return sign | INF;
  }
  if (absA == 0) return sign;
  unpack(a, F);
  const ea = uE;
  const ma = uM;
  unpack(b, F);
  let m: u64;
  let e: i32;
  if (F == 23) {
    // 63-bit dividend over a 24-bit divisor: a 39/40-bit quotient, plenty
    // for 24 bits plus rounding bits; the remainder is the sticky bit.
    const d = uM >> 39;
    const q = ma / d;
    const r = ma - q * d;
    const lz = <i32>clz(q) - 1;
    m = (q << <u64>lz) | (r != 0 ? 1 : 0);
    e = ea - uE + 23 - lz;
  } else {
    // q = floor(ma * 2^64 / (2 mb)) = floor(ma/mb * 2^63), in (2^62, 2^64).
    m = div128(ma, 0, uM << 1);
    e = ea - uE - 1;
    if ((m >> 63) != 0) { m = shiftRightJam(m, 1); e++; }
    if (divRem != 0) m |= 1;
  }
  return roundPack(s, e, m, rm, F);
}

/** Fused multiply-add (±a·b) ± c with a single rounding (ISA §11.6). The exact
 *  product (up to 2·(F+1) bits) and the addend are combined in 128 bits. */
function fmaG(a: u64, b: u64, c: u64, rm: u32, F: i32, negProduct: bool, negAddend: bool): u64 {
  const INF = infBits(F);
  const SS = signShift(F);
  if (negAddend) c ^= signBit(F);
  const absA = a & absMask(F);
  const absB = b & absMask(F);
  const absC = c & absMask(F);
  if (absA > INF || absB > INF || absC > INF) {
    // ISA §11.6: inf * 0 raises NV even when the addend is a quiet NaN.
    if (isSNaNBits(a, F) || isSNaNBits(b, F) || isSNaNBits(c, F)
      || (absA == INF && absB == 0) || (absA == 0 && absB == INF)) fflags |= NV;
    return defaultNaN(F);
  }
  const sp = <u32>((a ^ b) >> SS) ^ (negProduct ? 1 : 0);
  const sc = <u32>(c >> SS);
  if (absA == INF || absB == INF) {
    if (absA == 0 || absB == 0) { fflags |= NV; return defaultNaN(F); }
    if (absC == INF && sc != sp) { fflags |= NV; return defaultNaN(F); }
    return (<u64>sp << SS) | INF;
  }
  if (absC == INF) return c;
  if (absA == 0 || absB == 0) {
    if (absC == 0) return sp == sc ? <u64>sp << SS : cancelZero(rm, F);
    return c;
  }
  unpack(a, F);
  const ea = uE;
  const ma = uM;
  unpack(b, F);
  // Product P in [2^124, 2^126); normalize its leading bit to bit 126 so
  // value = P * 2^(ep - 126).
  let pLo = mul128(ma, uM);
  let pHi = rHi;
  let ep = ea + uE;
  if ((pHi >> 61) != 0) {
    pHi = (pHi << 1) | (pLo >> 63); pLo <<= 1; ep++;
  } else {
    pHi = (pHi << 2) | (pLo >> 62); pLo <<= 2;
  }
  if (absC == 0) {
    // (exact product) + 0: the sum is the product itself.
    return roundPack(sp, ep, pHi | (pLo != 0 ? 1 : 0), rm, F);
  }
  unpack(c, F);
  const ec = uE;
  let cHi = uM; // leading bit at 126 as well: value = C * 2^(ec - 126)
  let cLo: u64 = 0;
  let hi: u64;
  let lo: u64;
  let e: i32;
  let s: u32;
  if (sp == sc) {
    s = sp;
    if (ep >= ec) {
      cLo = shiftRightJam128(cHi, cLo, ep - ec); cHi = rHi;
      e = ep;
    } else {
      pLo = shiftRightJam128(pHi, pLo, ec - ep); pHi = rHi;
      e = ec;
    }
    lo = pLo + cLo;
    hi = pHi + cHi + (lo < pLo ? 1 : 0); // < 2^128: both addends < 2^127
    if ((hi >> 63) != 0) {
      lo = shiftRightJam128(hi, lo, 1); hi = rHi;
      e++;
    }
  } else {
    // Subtract the smaller magnitude from the larger; as in addG, both have
    // many trailing zero bits, so jamming keeps rounding decisions exact.
    if (ep > ec || (ep == ec && (pHi > cHi || (pHi == cHi && pLo >= cLo)))) {
      s = sp;
      e = ep;
      cLo = shiftRightJam128(cHi, cLo, ep - ec); cHi = rHi;
      lo = pLo - cLo;
      hi = pHi - cHi - (pLo < cLo ? 1 : 0);
    } else {
      s = sc;
      e = ec;
      pLo = shiftRightJam128(pHi, pLo, ec - ep); pHi = rHi;
      lo = cLo - pLo;
      hi = cHi - pHi - (cLo < pLo ? 1 : 0);
    }
    if (hi == 0 && lo == 0) return cancelZero(rm, F);
    // Normalize the leading bit back to bit 126.
    if (hi == 0) {
      hi = lo; lo = 0; e -= 64;
    }
    const lz = <i32>clz(hi) - 1;
    if (lz > 0) {
      hi = (hi << <u64>lz) | (lo >> <u64>(64 - lz));
      lo <<= <u64>lz;
      e -= lz;
    } else if (lz < 0) { // only after the 64-bit move above: leading bit at 127
      lo = shiftRightJam128(hi, lo, 1); hi = rHi;
      e++;
    }
  }
  return roundPack(s, e, hi | (lo != 0 ? 1 : 0), rm, F);
}

// ---------------------------------------------------------------------------
// Comparisons, min/max, classify (ISA §11.8, §11.9)

function eqG(a: u64, b: u64, F: i32): bool {
  if (isNaNBits(a, F) || isNaNBits(b, F)) {
    if (isSNaNBits(a, F) || isSNaNBits(b, F)) fflags |= NV; // FEQ is a quiet comparison
    return false;
  }
  return a == b || ((a | b) & absMask(F)) == 0;
}

/** FLT (orEqual=false) / FLE (orEqual=true): signaling comparisons, NV on any NaN. */
function ltG(a: u64, b: u64, F: i32, orEqual: bool): bool {
  if (isNaNBits(a, F) || isNaNBits(b, F)) { fflags |= NV; return false; }
  if (((a | b) & absMask(F)) == 0) return orEqual; // +0 == -0
  const sa = a >> signShift(F);
  const sb = b >> signShift(F);
  if (sa != sb) return sa != 0;
  if (a == b) return orEqual;
  return sa == 0 ? a < b : a > b;
}

/** FMIN/FMAX (ISA 2.2+ semantics, IEEE 754-2019 minimumNumber/maximumNumber):
 *  a NaN operand is ignored, two NaNs give the canonical NaN, -0 < +0,
 *  NV for any signaling NaN input. */
function minMaxG(a: u64, b: u64, F: i32, isMax: bool): u64 {
  const an = isNaNBits(a, F);
  const bn = isNaNBits(b, F);
  if (isSNaNBits(a, F) || isSNaNBits(b, F)) fflags |= NV;
  if (an && bn) return defaultNaN(F);
  if (an) return b;
  if (bn) return a;
  const sa = a >> signShift(F);
  const sb = b >> signShift(F);
  const aLess = sa != sb ? sa != 0 : sa == 0 ? a < b : a > b;
  return aLess != isMax ? a : b;
}

/** FCLASS mask (ISA §11.9, Table 11.5). */
function classG(a: u64, F: i32): u32 {
  const s = (a >> signShift(F)) != 0;
  const be = <i32>((a >> <u64>F) & <u64>expMax(F));
  const frac = a & ((<u64>1 << <u64>F) - 1);
  if (be == expMax(F)) {
    if (frac == 0) return s ? 1 : 1 << 7;
    return (frac >> <u64>(F - 1)) != 0 ? 1 << 9 : 1 << 8;
  }
  if (be == 0) {
    if (frac == 0) return s ? 1 << 3 : 1 << 4;
    return s ? 1 << 2 : 1 << 5;
  }
  return s ? 1 << 1 : 1 << 6;
}

// ---------------------------------------------------------------------------
// Conversions (ISA §11.7, §12.5)

/** Float -> integer with the RISC-V saturation rules (ISA §11.7, Table 11.4):
 *  NaN and +out-of-range give the largest value, -out-of-range the smallest;
 *  such invalid cases raise NV only; otherwise NX when inexact. `w` is 32 or
 *  64; the result is the integer's bit pattern (two's complement, low w bits). */
function toIntG(a: u64, rm: u32, F: i32, signed: bool, w: i32): u64 {
  const INF = infBits(F);
  const s = <u32>(a >> signShift(F));
  const abs = a & absMask(F);
  const maxPos: u64 = signed ? (<u64>1 << <u64>(w - 1)) - 1 : (w == 64 ? <u64>-1 : <u64>0xffffffff);
  const minNeg: u64 = signed ? <u64>-1 << <u64>(w - 1) : 0;
  if (abs > INF) { fflags |= NV; return maxPos; }
  if (abs == 0) return 0;
  if (abs == INF) { fflags |= NV; return s != 0 ? minNeg : maxPos; }
  unpack(a, F);
  const e = uE;
  const m = uM;
  if (e >= 64) { fflags |= NV; return s != 0 ? minNeg : maxPos; }
  let mag: u64;
  let inexact = false;
  if (e >= F) {
    // Already an integer: exact.
    mag = e <= 62 ? m >> <u64>(62 - e) : m << 1;
  } else {
    // Keep two extra bits (half, sticky) below the integer's units place.
    const x = shiftRightJam(m, 60 - e);
    mag = x >> 2;
    const rb = x & 3;
    if (rb != 0) {
      inexact = true;
      if (roundUp(rb, 2, mag, s, rm)) mag++;
    }
  }
  if (signed) {
    const limit: u64 = s != 0 ? <u64>1 << <u64>(w - 1) : (<u64>1 << <u64>(w - 1)) - 1;
    if (mag > limit) { fflags |= NV; return s != 0 ? minNeg : maxPos; }
    if (inexact) fflags |= NX;
    return s != 0 ? 0 - mag : mag;
  }
  if (s != 0 && mag != 0) { fflags |= NV; return 0; }
  if (w == 32 && mag > 0xffffffff) { fflags |= NV; return maxPos; }
  if (inexact) fflags |= NX;
  return mag;
}

/** Integer magnitude (with sign s) -> float, rounded per rm. */
function fromIntG(mag: u64, s: u32, rm: u32, F: i32): u64 {
  if (mag == 0) return 0;
  if ((mag >> 63) != 0) return roundPack(s, 63, shiftRightJam(mag, 1), rm, F);
  const lz = <i32>clz(mag) - 1;
  return roundPack(s, 62 - lz, mag << <u64>lz, rm, F);
}

/** Format conversion (FCVT.S.D / FCVT.D.S, ISA §12.5): NaN in -> canonical
 *  NaN out (NV for sNaN), otherwise rounded to the target format. */
function cvtG(a: u64, rm: u32, Fin: i32, Fout: i32): u64 {
  const INF = infBits(Fin);
  const s = <u32>(a >> signShift(Fin));
  const abs = a & absMask(Fin);
  if (abs > INF) {
    if (isSNaNBits(a, Fin)) fflags |= NV;
    return defaultNaN(Fout);
  }
  const sign = <u64>s << signShift(Fout);
  if (abs == INF) return sign | infBits(Fout);
  if (abs == 0) return sign;
  unpack(a, Fin);
  return roundPack(s, uE, uM, rm, Fout);
}

// ---------------------------------------------------------------------------
// Square root

/** Square root via wasm's native sqrt, which IEEE 754 requires to be correctly
 *  rounded to nearest-even; the sign of r^2 - a, computed exactly in integers,
 *  gives NX and the one-ulp nudge for directed modes (a square root is never
 *  exactly halfway between two floats, so RMM equals RNE). Result is always in
 *  the normal range: no overflow or underflow. */
function sqrtG(a: u64, rm: u32, F: i32): u64 {
  const INF = infBits(F);
  const abs = a & absMask(F);
  if (abs > INF) {
    if (isSNaNBits(a, F)) fflags |= NV;
    return defaultNaN(F);
  }
  if (abs == 0) return a; // sqrt(±0) = ±0
  if ((a >> signShift(F)) != 0) { fflags |= NV; return defaultNaN(F); } // negative, incl. -inf
  if (abs == INF) return a;
  let r: u64;
  if (F == 23) r = <u64>reinterpret<u32>(sqrt<f32>(reinterpret<f32>(<u32>a)));
  else r = reinterpret<u64>(sqrt<f64>(reinterpret<f64>(a)));
  // r = sigR * 2^(er - F), a = ma * 2^(ea - 62); compare sigR^2 with ma * 2^k.
  const er = <i32>(r >> <u64>F) - bias(F);
  const sigR = (r & ((<u64>1 << <u64>F) - 1)) | (<u64>1 << <u64>F);
  unpack(a, F);
  let cmp: i32;
  if (F == 23) {
    const k = uE + 23 - 2 * er; // in [22, 24]
    const lhs = sigR * sigR;
    const rhs = (uM >> 39) << <u64>k;
    cmp = lhs == rhs ? 0 : lhs > rhs ? 1 : -1;
  } else {
    const k = uE + 42 - 2 * er; // in [41, 43]
    const lo = mul128(sigR, sigR);
    const hi = rHi;
    const rhi = uM >> <u64>(64 - k);
    const rlo = uM << <u64>k;
    cmp = hi == rhi && lo == rlo ? 0 : hi > rhi || (hi == rhi && lo > rlo) ? 1 : -1;
  }
  if (cmp == 0) return r;
  fflags |= NX;
  if (rm == RTZ || rm == RDN) {
    if (cmp > 0) r--;
  } else if (rm == RUP) {
    if (cmp < 0) r++;
  }
  return r;
}

// ---------------------------------------------------------------------------
// Round-to-nearest-even fast paths. Wasm's native +, *, / are IEEE operations
// rounded to nearest-even (and, in binary64 then binary32, double rounding is
// innocuous for +, -, *, / since 53 >= 2*24 + 2: Figueroa, "When is double
// rounding innocuous?", 1995). So for rm = RNE the result is the native one;
// what remains is to compute the flags exactly. Each fast path covers only
// finite results that are clear of the underflow threshold and of overflow
// (where UF/OF would need care) and returns NOFAST otherwise; the integer
// paths above then handle the case.

const NOFAST: u64 = 0xffffffffffffffff; // never a result of ours (not canonical)
const ABS64: u64 = 0x7fffffffffffffff;
const MIN_NORMAL64: u64 = 0x0010000000000000;
const INF64: u64 = 0x7ff0000000000000;
const FRAC64: u64 = 0x000fffffffffffff;
const MIN_NORMAL32: u32 = 0x00800000;

/** Significand of a finite binary64 as an integer, with trailing zeros
 *  removed (its odd part). Caller guarantees nonzero. */
// @ts-ignore: decorator
@inline function oddSig64(a: u64): u64 {
  const sig = (a & FRAC64) | ((a & INF64) != 0 ? FRAC64 + 1 : 0);
  return sig >> ctz(sig);
}

/** Addition: Fast2Sum (Dekker 1971) gives the exact rounding error of the
 *  native sum when |big| >= |small|; NX iff it is nonzero. A sum of floats
 *  that is tiny is exact (both are multiples of the least subnormal), so UF
 *  never occurs here. */
// @ts-ignore: decorator
@inline function addFast64(a: u64, b: u64): u64 {
  const x = reinterpret<f64>(a);
  const y = reinterpret<f64>(b);
  const sum = x + y;
  if (!isFinite<f64>(sum)) return NOFAST; // NaN/inf operands or overflow
  const xBig = (a & ABS64) >= (b & ABS64);
  const big = xBig ? x : y;
  const small = xBig ? y : x;
  if (small - (sum - big) != 0) fflags |= NX;
  return reinterpret<u64>(sum);
}

// @ts-ignore: decorator
@inline function addFast32(a: u32, b: u32): u64 {
  const x = <f64>reinterpret<f32>(a);
  const y = <f64>reinterpret<f32>(b);
  const sum = x + y; // binary64 sum of binary32 values: never overflows
  const r = <f32>sum;
  if (!isFinite<f32>(r)) return NOFAST;
  const xBig = (a & 0x7fffffff) >= (b & 0x7fffffff);
  const big = xBig ? x : y;
  const small = xBig ? y : x;
  // Inexact if the binary64 sum was, or if narrowing it changed it.
  if (small - (sum - big) != 0 || <f64>r != sum) fflags |= NX;
  return <u64>reinterpret<u32>(r);
}

/** Multiplication with a normal result: the product of the significands' odd
 *  parts is exactly representable iff it is below 2^53. */
// @ts-ignore: decorator
@inline function mulFast64(a: u64, b: u64): u64 {
  const p = reinterpret<u64>(reinterpret<f64>(a) * reinterpret<f64>(b));
  const ap = p & ABS64;
  // Strictly above the smallest normal: the exact product is not tiny.
  if (ap <= MIN_NORMAL64 || ap >= INF64) return NOFAST;
  const oa = oddSig64(a);
  const ob = oddSig64(b);
  const bits = 128 - <i32>clz(oa) - <i32>clz(ob);
  if (bits > 54 || oa * ob >= (<u64>1 << 53)) fflags |= NX;
  return p;
}

// @ts-ignore: decorator
@inline function mulFast32(a: u32, b: u32): u64 {
  // The binary64 product of two binary32 values is exact (48-bit significand,
  // exponent within binary64's normal range).
  const p = <f64>reinterpret<f32>(a) * <f64>reinterpret<f32>(b);
  if (!(abs<f64>(p) >= <f64>reinterpret<f32>(MIN_NORMAL32))) return NOFAST; // tiny, zero or NaN
  const r = <f32>p;
  if (!isFinite<f32>(r)) return NOFAST;
  if (<f64>r != p) fflags |= NX;
  return <u64>reinterpret<u32>(r);
}

/** Division with a normal result: a/b = (oa/ob) * 2^k is representable iff
 *  the odd part ob divides oa (else the reduced fraction has an odd
 *  denominator and is not a dyadic rational at all). */
// @ts-ignore: decorator
@inline function divFast64(a: u64, b: u64): u64 {
  const q = reinterpret<u64>(reinterpret<f64>(a) / reinterpret<f64>(b));
  const aq = q & ABS64;
  if (aq <= MIN_NORMAL64 || aq >= INF64) return NOFAST; // also 0/x, x/0, x/inf, NaN
  if (oddSig64(a) % oddSig64(b) != 0) fflags |= NX;
  return q;
}

// @ts-ignore: decorator
@inline function divFast32(a: u32, b: u32): u64 {
  const x = <f64>reinterpret<f32>(a);
  const y = <f64>reinterpret<f32>(b);
  const r = <f32>(x / y);
  const ar = reinterpret<u32>(r) & 0x7fffffff;
  if (ar <= MIN_NORMAL32 || ar >= 0x7f800000) return NOFAST;
  // r * y is exact in binary64 (24x24 bits), so it equals x iff r is exact.
  if (<f64>r * y != x) fflags |= NX;
  return <u64>reinterpret<u32>(r);
}

// ---------------------------------------------------------------------------
// binary32 through binary64 in every rounding mode. A binary64 product of two
// binary32 values is exact, and a binary64 sum rounded to odd (RNE sum, then,
// if the TwoSum error is nonzero and the last bit even, one ulp toward the
// exact value) can be rounded again to binary32 in any mode, with the same
// result, inexactness and tininess as rounding the exact value once (Boldo &
// Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms
// using rounding to odd", IEEE TC 2008; needs 53 >= 24 + 2). All values here
// are multiples of 2^-298 below 2^257 in magnitude, so the binary64 steps
// never overflow or lose bits to underflow.

/** x + y rounded to odd in binary64, as bits. The sum must be nonzero. */
// @ts-ignore: decorator
@inline function addRoundOdd(x: f64, y: f64): u64 {
  const s = x + y;
  const bb = s - x;
  const err = (x - (s - bb)) + (y - bb); // Knuth's TwoSum: exact error
  let bits = reinterpret<u64>(s);
  if (err != 0 && (bits & 1) == 0) {
    // Step one ulp toward the exact value x + y = s + err.
    if ((err > 0) == (s > 0)) bits++; else bits--;
  }
  return bits;
}

// @ts-ignore: decorator
@inline function finite32(a: u32): bool { return (a & 0x7fffffff) < 0x7f800000; }

/** binary32 a + b (b already negated for a subtraction), finite operands and
 *  a nonzero sum only (an exact zero sum's sign depends on rm). */
function addOdd32(a: u32, b: u32, rm: u32): u64 {
  if (!finite32(a) || !finite32(b)) return NOFAST;
  const x = <f64>reinterpret<f32>(a);
  const y = <f64>reinterpret<f32>(b);
  if (x + y == 0) return NOFAST;
  return cvtG(addRoundOdd(x, y), rm, 52, 23);
}

function mulOdd32(a: u32, b: u32, rm: u32): u64 {
  if (!finite32(a) || !finite32(b)) return NOFAST;
  const p = <f64>reinterpret<f32>(a) * <f64>reinterpret<f32>(b); // exact, signed zero included
  return cvtG(reinterpret<u64>(p), rm, 52, 23);
}

function fmaOdd32(a: u32, b: u32, c: u32, rm: u32, negProduct: bool, negAddend: bool): u64 {
  if (!finite32(a) || !finite32(b) || !finite32(c)) return NOFAST;
  let x = <f64>reinterpret<f32>(a) * <f64>reinterpret<f32>(b); // exact
  if (negProduct) x = -x;
  let y = <f64>reinterpret<f32>(c);
  if (negAddend) y = -y;
  if (x + y == 0) return NOFAST;
  return cvtG(addRoundOdd(x, y), rm, 52, 23);
}

// ---------------------------------------------------------------------------
// Exported contract (raw IEEE bit patterns in and out)

export function f32_add(a: u32, b: u32, rm: u32): u32 {
  if (rm == 0) { const r = addFast32(a, b); if (r != NOFAST) return <u32>r; }
  const r = addOdd32(a, b, rm);
  if (r != NOFAST) return <u32>r;
  return <u32>addG(a, b, rm, 23, false);
}
export function f32_sub(a: u32, b: u32, rm: u32): u32 {
  if (rm == 0) { const r = addFast32(a, b ^ 0x80000000); if (r != NOFAST) return <u32>r; }
  const r = addOdd32(a, b ^ 0x80000000, rm);
  if (r != NOFAST) return <u32>r;
  return <u32>addG(a, b, rm, 23, true);
}
export function f32_mul(a: u32, b: u32, rm: u32): u32 {
  if (rm == 0) { const r = mulFast32(a, b); if (r != NOFAST) return <u32>r; }
  const r = mulOdd32(a, b, rm);
  if (r != NOFAST) return <u32>r;
  return <u32>mulG(a, b, rm, 23);
}
export function f32_div(a: u32, b: u32, rm: u32): u32 {
  if (rm == 0) { const r = divFast32(a, b); if (r != NOFAST) return <u32>r; }
  return <u32>divG(a, b, rm, 23);
}
export function f32_sqrt(a: u32, rm: u32): u32 { return <u32>sqrtG(a, rm, 23); }
/** (±a·b) ± c with one rounding. FMADD: (false,false), FMSUB: (false,true),
 *  FNMSUB: (true,false), FNMADD: (true,true). */
export function f32_fma(a: u32, b: u32, c: u32, rm: u32, negProduct: bool, negAddend: bool): u32 {
  const r = fmaOdd32(a, b, c, rm, negProduct, negAddend);
  if (r != NOFAST) return <u32>r;
  return <u32>fmaG(a, b, c, rm, 23, negProduct, negAddend);
}
export function f32_min(a: u32, b: u32): u32 { return <u32>minMaxG(a, b, 23, false); }
export function f32_max(a: u32, b: u32): u32 { return <u32>minMaxG(a, b, 23, true); }
export function f32_eq(a: u32, b: u32): bool { return eqG(a, b, 23); }
export function f32_lt(a: u32, b: u32): bool { return ltG(a, b, 23, false); }
export function f32_le(a: u32, b: u32): bool { return ltG(a, b, 23, true); }
export function f32_classify(a: u32): u32 { return classG(a, 23); }

export function f64_add(a: u64, b: u64, rm: u32): u64 {
  if (rm == 0) { const r = addFast64(a, b); if (r != NOFAST) return r; }
  return addG(a, b, rm, 52, false);
}
export function f64_sub(a: u64, b: u64, rm: u32): u64 {
  if (rm == 0) { const r = addFast64(a, b ^ 0x8000000000000000); if (r != NOFAST) return r; }
  return addG(a, b, rm, 52, true);
}
export function f64_mul(a: u64, b: u64, rm: u32): u64 {
  if (rm == 0) { const r = mulFast64(a, b); if (r != NOFAST) return r; }
  return mulG(a, b, rm, 52);
}
export function f64_div(a: u64, b: u64, rm: u32): u64 {
  if (rm == 0) { const r = divFast64(a, b); if (r != NOFAST) return r; }
  return divG(a, b, rm, 52);
}
export function f64_sqrt(a: u64, rm: u32): u64 { return sqrtG(a, rm, 52); }
export function f64_fma(a: u64, b: u64, c: u64, rm: u32, negProduct: bool, negAddend: bool): u64 {
  return fmaG(a, b, c, rm, 52, negProduct, negAddend);
}
export function f64_min(a: u64, b: u64): u64 { return minMaxG(a, b, 52, false); }
export function f64_max(a: u64, b: u64): u64 { return minMaxG(a, b, 52, true); }
export function f64_eq(a: u64, b: u64): bool { return eqG(a, b, 52); }
export function f64_lt(a: u64, b: u64): bool { return ltG(a, b, 52, false); }
export function f64_le(a: u64, b: u64): bool { return ltG(a, b, 52, true); }
export function f64_classify(a: u64): u32 { return classG(a, 52); }

// Float -> integer. 32-bit results are returned as their bit pattern; the hart
// sign-extends them into the 64-bit register (ISA §11.7: FCVT.WU.S results are
// sign-extended too).
export function f32_to_i32(a: u32, rm: u32): i32 { return <i32>toIntG(a, rm, 23, true, 32); }
export function f32_to_u32(a: u32, rm: u32): u32 { return <u32>toIntG(a, rm, 23, false, 32); }
export function f32_to_i64(a: u32, rm: u32): i64 { return <i64>toIntG(a, rm, 23, true, 64); }
export function f32_to_u64(a: u32, rm: u32): u64 { return toIntG(a, rm, 23, false, 64); }
export function f64_to_i32(a: u64, rm: u32): i32 { return <i32>toIntG(a, rm, 52, true, 32); }
export function f64_to_u32(a: u64, rm: u32): u32 { return <u32>toIntG(a, rm, 52, false, 32); }
export function f64_to_i64(a: u64, rm: u32): i64 { return <i64>toIntG(a, rm, 52, true, 64); }
export function f64_to_u64(a: u64, rm: u32): u64 { return toIntG(a, rm, 52, false, 64); }

// Integer -> float.
export function i32_to_f32(v: i32, rm: u32): u32 {
  return <u32>fromIntG(v < 0 ? <u64>(-<i64>v) : <u64>v, v < 0 ? 1 : 0, rm, 23);
}
export function u32_to_f32(v: u32, rm: u32): u32 { return <u32>fromIntG(<u64>v, 0, rm, 23); }
export function i64_to_f32(v: i64, rm: u32): u32 {
  return <u32>fromIntG(v < 0 ? 0 - <u64>v : <u64>v, v < 0 ? 1 : 0, rm, 23);
}
export function u64_to_f32(v: u64, rm: u32): u32 { return <u32>fromIntG(v, 0, rm, 23); }
export function i32_to_f64(v: i32, rm: u32): u64 {
  return fromIntG(v < 0 ? <u64>(-<i64>v) : <u64>v, v < 0 ? 1 : 0, rm, 52);
}
export function u32_to_f64(v: u32, rm: u32): u64 { return fromIntG(<u64>v, 0, rm, 52); }
export function i64_to_f64(v: i64, rm: u32): u64 {
  return fromIntG(v < 0 ? 0 - <u64>v : <u64>v, v < 0 ? 1 : 0, rm, 52);
}
export function u64_to_f64(v: u64, rm: u32): u64 { return fromIntG(v, 0, rm, 52); }

// Between formats.
export function f32_to_f64(a: u32): u64 { return cvtG(<u64>a, 0, 23, 52); }
export function f64_to_f32(a: u64, rm: u32): u32 { return <u32>cvtG(a, rm, 52, 23); }
