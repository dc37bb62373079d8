// Temporary stand-in for assembly/fpu.ts (written by another engineer) with
// the same exported contract. It uses the host's native IEEE operations, so
// it always rounds to nearest-even and only approximates the exception
// flags (NV for signalling NaNs and invalid ops, DZ for x/0). The hart core
// switches to fpu.ts as soon as it exists.

export let fflags: u32 = 0;

const NV: u32 = 16;
const DZ: u32 = 8;

const CNAN32: u32 = 0x7fc00000;
const CNAN64: u64 = 0x7ff8000000000000;

@inline function isNaN32(a: u32): bool { return (a & 0x7fffffff) > 0x7f800000; }
@inline function isNaN64(a: u64): bool { return (a & 0x7fffffffffffffff) > 0x7ff0000000000000; }
@inline function isSNaN32(a: u32): bool { return isNaN32(a) && (a & 0x00400000) == 0; }
@inline function isSNaN64(a: u64): bool { return isNaN64(a) && (a & 0x0008000000000000) == 0; }

@inline function canon32(r: f32): u32 { const b = reinterpret<u32>(r); return isNaN32(b) ? CNAN32 : b; }
@inline function canon64(r: f64): u64 { const b = reinterpret<u64>(r); return isNaN64(b) ? CNAN64 : b; }

function nv32(a: u32, b: u32): void { if (isSNaN32(a) || isSNaN32(b)) fflags |= NV; }
function nv64(a: u64, b: u64): void { if (isSNaN64(a) || isSNaN64(b)) fflags |= NV; }

function inv32(a: u32, b: u32, r: u32): void { nv32(a, b); if (isNaN32(r) && !isNaN32(a) && !isNaN32(b)) fflags |= NV; }
function inv64(a: u64, b: u64, r: u64): void { nv64(a, b); if (isNaN64(r) && !isNaN64(a) && !isNaN64(b)) fflags |= NV; }

export function f32_add(a: u32, b: u32, rm: u32): u32 { const r = canon32(reinterpret<f32>(a) + reinterpret<f32>(b)); inv32(a, b, r); return r; }
export function f32_sub(a: u32, b: u32, rm: u32): u32 { const r = canon32(reinterpret<f32>(a) - reinterpret<f32>(b)); inv32(a, b, r); return r; }
export function f32_mul(a: u32, b: u32, rm: u32): u32 { const r = canon32(reinterpret<f32>(a) * reinterpret<f32>(b)); inv32(a, b, r); return r; }
export function f32_div(a: u32, b: u32, rm: u32): u32 {
  if ((b & 0x7fffffff) == 0 && !isNaN32(a) && (a & 0x7fffffff) != 0 && (a & 0x7fffffff) != 0x7f800000) fflags |= DZ;
  const r = canon32(reinterpret<f32>(a) / reinterpret<f32>(b)); inv32(a, b, r); return r;
}
export function f64_add(a: u64, b: u64, rm: u32): u64 { const r = canon64(reinterpret<f64>(a) + reinterpret<f64>(b)); inv64(a, b, r); return r; }
export function f64_sub(a: u64, b: u64, rm: u32): u64 { const r = canon64(reinterpret<f64>(a) - reinterpret<f64>(b)); inv64(a, b, r); return r; }
export function f64_mul(a: u64, b: u64, rm: u32): u64 { const r = canon64(reinterpret<f64>(a) * reinterpret<f64>(b)); inv64(a, b, r); return r; }
export function f64_div(a: u64, b: u64, rm: u32): u64 {
  if ((b & 0x7fffffffffffffff) == 0 && !isNaN64(a) && (a & 0x7fffffffffffffff) != 0 && (a & 0x7fffffffffffffff) != 0x7ff0000000000000) fflags |= DZ;
  const r = canon64(reinterpret<f64>(a) / reinterpret<f64>(b)); inv64(a, b, r); return r;
}
export function f32_sqrt(a: u32, rm: u32): u32 { const r = canon32(Mathf.sqrt(reinterpret<f32>(a))); inv32(a, 0, r); return r; }
export function f64_sqrt(a: u64, rm: u32): u64 { const r = canon64(Math.sqrt(reinterpret<f64>(a))); inv64(a, 0, r); return r; }

export function f32_fma(a: u32, b: u32, c: u32, rm: u32, negProduct: bool, negAddend: bool): u32 {
  let p = <f64>reinterpret<f32>(a) * <f64>reinterpret<f32>(b);
  if (negProduct) p = -p;
  let z = <f64>reinterpret<f32>(c);
  if (negAddend) z = -z;
  nv32(a, b); if (isSNaN32(c)) fflags |= NV;
  return canon32(<f32>(p + z));
}
export function f64_fma(a: u64, b: u64, c: u64, rm: u32, negProduct: bool, negAddend: bool): u64 {
  let p = reinterpret<f64>(a) * reinterpret<f64>(b);
  if (negProduct) p = -p;
  let z = reinterpret<f64>(c);
  if (negAddend) z = -z;
  nv64(a, b); if (isSNaN64(c)) fflags |= NV;
  return canon64(p + z);
}

export function f32_min(a: u32, b: u32): u32 {
  nv32(a, b);
  if (isNaN32(a) && isNaN32(b)) return CNAN32;
  if (isNaN32(a)) return b;
  if (isNaN32(b)) return a;
  if ((a | b) & 0x7fffffff) return reinterpret<f32>(a) < reinterpret<f32>(b) ? a : b;
  return a | b; // -0 < +0
}
export function f32_max(a: u32, b: u32): u32 {
  nv32(a, b);
  if (isNaN32(a) && isNaN32(b)) return CNAN32;
  if (isNaN32(a)) return b;
  if (isNaN32(b)) return a;
  if ((a | b) & 0x7fffffff) return reinterpret<f32>(a) > reinterpret<f32>(b) ? a : b;
  return a & b;
}
export function f64_min(a: u64, b: u64): u64 {
  nv64(a, b);
  if (isNaN64(a) && isNaN64(b)) return CNAN64;
  if (isNaN64(a)) return b;
  if (isNaN64(b)) return a;
  if ((a | b) & 0x7fffffffffffffff) return reinterpret<f64>(a) < reinterpret<f64>(b) ? a : b;
  return a | b;
}
export function f64_max(a: u64, b: u64): u64 {
  nv64(a, b);
  if (isNaN64(a) && isNaN64(b)) return CNAN64;
  if (isNaN64(a)) return b;
  if (isNaN64(b)) return a;
  if ((a | b) & 0x7fffffffffffffff) return reinterpret<f64>(a) > reinterpret<f64>(b) ? a : b;
  return a & b;
}

export function f32_eq(a: u32, b: u32): bool { nv32(a, b); return reinterpret<f32>(a) == reinterpret<f32>(b); }
export function f32_lt(a: u32, b: u32): bool { if (isNaN32(a) || isNaN32(b)) fflags |= NV; return reinterpret<f32>(a) < reinterpret<f32>(b); }
export function f32_le(a: u32, b: u32): bool { if (isNaN32(a) || isNaN32(b)) fflags |= NV; return reinterpret<f32>(a) <= reinterpret<f32>(b); }
export function f64_eq(a: u64, b: u64): bool { nv64(a, b); return reinterpret<f64>(a) == reinterpret<f64>(b); }
export function f64_lt(a: u64, b: u64): bool { if (isNaN64(a) || isNaN64(b)) fflags |= NV; return reinterpret<f64>(a) < reinterpret<f64>(b); }
export function f64_le(a: u64, b: u64): bool { if (isNaN64(a) || isNaN64(b)) fflags |= NV; return reinterpret<f64>(a) <= reinterpret<f64>(b); }

export function f32_classify(a: u32): u32 {
  const s = a >>> 31; const e = (a >>> 23) & 0xff; const m = a & 0x7fffff;
  if (e == 0xff) { if (m == 0) return s ? 1 : 128; return (m & 0x400000) ? 512 : 256; }
  if (e == 0) { if (m == 0) return s ? 8 : 16; return s ? 4 : 32; }
  return s ? 2 : 64;
}
export function f64_classify(a: u64): u32 {
  const s = <u32>(a >>> 63); const e = <u32>(a >>> 52) & 0x7ff; const m = a & 0xfffffffffffff;
  if (e == 0x7ff) { if (m == 0) return s ? 1 : 128; return (m & 0x8000000000000) ? 512 : 256; }
  if (e == 0) { if (m == 0) return s ? 8 : 16; return s ? 4 : 32; }
  return s ? 2 : 64;
}

// Float → integer with RISC-V saturation (ISA 20191213 §11.7 table 11.4): NaN → max.
function cvtI(x: f64, nan: bool, lo: f64, hi: f64, loV: i64, hiV: i64): i64 {
  if (nan) { fflags |= NV; return hiV; }
  const t = Math.trunc(x);
  if (t < lo) { fflags |= NV; return loV; }
  if (t > hi) { fflags |= NV; return hiV; }
  return <i64>t;
}
export function f32_to_i32(a: u32, rm: u32): i32 { return <i32>cvtI(<f64>reinterpret<f32>(a), isNaN32(a), -2147483648.0, 2147483647.0, -2147483648, 2147483647); }
export function f32_to_u32(a: u32, rm: u32): u32 { return <u32>cvtI(<f64>reinterpret<f32>(a), isNaN32(a), 0.0, 4294967295.0, 0, 0xffffffff); }
export function f64_to_i32(a: u64, rm: u32): i32 { return <i32>cvtI(reinterpret<f64>(a), isNaN64(a), -2147483648.0, 2147483647.0, -2147483648, 2147483647); }
export function f64_to_u32(a: u64, rm: u32): u32 { return <u32>cvtI(reinterpret<f64>(a), isNaN64(a), 0.0, 4294967295.0, 0, 0xffffffff); }
function toI64(x: f64, nan: bool): i64 {
  if (nan) { fflags |= NV; return i64.MAX_VALUE; }
  const t = Math.trunc(x);
  if (t < -9223372036854775808.0) { fflags |= NV; return i64.MIN_VALUE; }
  if (t >= 9223372036854775808.0) { fflags |= NV; return i64.MAX_VALUE; }
  return <i64>t;
}
function toU64(x: f64, nan: bool): u64 {
  if (nan) { fflags |= NV; return u64.MAX_VALUE; }
  const t = Math.trunc(x);
  if (t < 0) { fflags |= NV; return 0; }
  if (t >= 18446744073709551616.0) { fflags |= NV; return u64.MAX_VALUE; }
  return <u64>t;
}
export function f32_to_i64(a: u32, rm: u32): i64 { return toI64(<f64>reinterpret<f32>(a), isNaN32(a)); }
export function f32_to_u64(a: u32, rm: u32): u64 { return toU64(<f64>reinterpret<f32>(a), isNaN32(a)); }
export function f64_to_i64(a: u64, rm: u32): i64 { return toI64(reinterpret<f64>(a), isNaN64(a)); }
export function f64_to_u64(a: u64, rm: u32): u64 { return toU64(reinterpret<f64>(a), isNaN64(a)); }

export function i32_to_f32(v: i32, rm: u32): u32 { return reinterpret<u32>(<f32>v); }
export function u32_to_f32(v: u32, rm: u32): u32 { return reinterpret<u32>(<f32>v); }
export function i64_to_f32(v: i64, rm: u32): u32 { return reinterpret<u32>(<f32>v); }
export function u64_to_f32(v: u64, rm: u32): u32 { return reinterpret<u32>(<f32>v); }
export function i32_to_f64(v: i32, rm: u32): u64 { return reinterpret<u64>(<f64>v); }
export function u32_to_f64(v: u32, rm: u32): u64 { return reinterpret<u64>(<f64>v); }
export function i64_to_f64(v: i64, rm: u32): u64 { return reinterpret<u64>(<f64>v); }
export function u64_to_f64(v: u64, rm: u32): u64 { return reinterpret<u64>(<f64>v); }

export function f32_to_f64(a: u32): u64 {
  if (isSNaN32(a)) fflags |= NV;
  if (isNaN32(a)) return CNAN64;
  return reinterpret<u64>(<f64>reinterpret<f32>(a));
}
export function f64_to_f32(a: u64, rm: u32): u32 {
  if (isSNaN64(a)) fflags |= NV;
  if (isNaN64(a)) return CNAN32;
  return reinterpret<u32>(<f32>reinterpret<f64>(a));
}
