// A minimal WebAssembly binary writer (WebAssembly Core Specification 2.0,
// §5 "Binary Format"): just what the translator emits — one type section,
// function, memory and table imports, one exported function, a code section.
// Hand-written rather than binaryen.js because a block must compile in tens
// of microseconds and binaryen's module objects alone cost more than that.

export const T = { i32: 0x7f, i64: 0x7e } as const;
export type ValType = (typeof T)[keyof typeof T];

/** Opcodes used by the translator (§5.4). */
export const OP = {
  block: 0x02, loop: 0x03, if: 0x04, else: 0x05, end: 0x0b, br: 0x0c, br_if: 0x0d, br_table: 0x0e, return: 0x0f, call: 0x10,
  return_call_indirect: 0x13, // tail-call proposal, standard since Wasm 3.0 (§5.4.1); Node 24's V8 has it
  drop: 0x1a,
  local_get: 0x20, local_set: 0x21, local_tee: 0x22,
  i32_load: 0x28, i64_load: 0x29,
  i64_load8_s: 0x30, i64_load8_u: 0x31, i64_load16_s: 0x32, i64_load16_u: 0x33, i64_load32_s: 0x34, i64_load32_u: 0x35,
  i64_store: 0x37, i64_store8: 0x3c, i64_store16: 0x3d, i64_store32: 0x3e,
  i32_const: 0x41, i64_const: 0x42,
  i32_eqz: 0x45, i32_eq: 0x46, i32_ne: 0x47, i32_lt_s: 0x48, i32_gt_s: 0x4a, i32_le_u: 0x4d, i32_ge_s: 0x4e,
  i64_eqz: 0x50, i64_eq: 0x51, i64_ne: 0x52, i64_lt_s: 0x53, i64_lt_u: 0x54, i64_ge_s: 0x59, i64_ge_u: 0x5a,
  i32_add: 0x6a, i32_sub: 0x6b, i32_mul: 0x6c, i32_and: 0x71, i32_shl: 0x74, i32_shr_s: 0x75, i32_shr_u: 0x76,
  i64_add: 0x7c, i64_sub: 0x7d, i64_mul: 0x7e, i64_and: 0x83, i64_or: 0x84, i64_xor: 0x85, i64_shl: 0x86, i64_shr_s: 0x87, i64_shr_u: 0x88,
  i32_wrap_i64: 0xa7, i64_extend_i32_s: 0xac, i64_extend_i32_u: 0xad,
} as const;

/** Growable byte buffer with LEB128 (§5.2.2). */
export class Bytes {
  private buf: Uint8Array;
  length = 0;
  constructor(capacity = 4096) { this.buf = new Uint8Array(capacity); }
  private grow(need: number): void {
    let n = this.buf.length * 2;
    while (n < need) n *= 2;
    const b = new Uint8Array(n); b.set(this.buf.subarray(0, this.length)); this.buf = b;
  }
  reset(): this { this.length = 0; return this; }
  byte(b: number): void {
    if (this.length === this.buf.length) this.grow(this.length + 1);
    this.buf[this.length++] = b;
  }
  u32(v: number): void {
    v >>>= 0;
    do { let b = v & 0x7f; v >>>= 7; if (v !== 0) b |= 0x80; this.byte(b); } while (v !== 0);
  }
  s32(v: number): void {
    v |= 0;
    for (;;) {
      const b = v & 0x7f; v >>= 7;
      if ((v === 0 && (b & 0x40) === 0) || (v === -1 && (b & 0x40) !== 0)) { this.byte(b); return; }
      this.byte(b | 0x80);
    }
  }
  /** Signed LEB128 of a 64-bit value given as a number (exact for safe integers). */
  s64n(v: number): void {
    if (v >= -0x80000000 && v <= 0x7fffffff) { this.s32(v); return; }
    this.s64(BigInt(v));
  }
  s64(v: bigint): void {
    v = BigInt.asIntN(64, v);
    for (;;) {
      const b = Number(v & 0x7fn); v >>= 7n;
      if ((v === 0n && (b & 0x40) === 0) || (v === -1n && (b & 0x40) !== 0)) { this.byte(b); return; }
      this.byte(b | 0x80);
    }
  }
  name(s: string): void { this.u32(s.length); for (let i = 0; i < s.length; i++) this.byte(s.charCodeAt(i)); }
  append(o: Bytes): void {
    if (this.length + o.length > this.buf.length) this.grow(this.length + o.length);
    this.buf.set(o.buf.subarray(0, o.length), this.length);
    this.length += o.length;
  }
  bytes(): Uint8Array { return this.buf.slice(0, this.length); }
}

export interface FuncType { params: ValType[]; results: ValType[] }

export interface ModuleSpec {
  types: FuncType[];
  /** Function imports from module "env", in function-index order. */
  funcImports: { name: string; type: number }[];
  /** A shared memory imported as env.memory with these limits (64 KiB pages). */
  memory: { min: number; max: number; shared: boolean };
  /** A funcref table imported as env.table (table 0) with at least this many elements, for return_call_indirect. */
  table?: { min: number };
  /** The one defined function (index funcImports.length), exported under `exportName`. */
  func: { type: number; locals: { count: number; type: ValType }[]; body: Bytes };
  exportName: string;
}

function section(out: Bytes, id: number, content: Bytes): void {
  out.byte(id); out.u32(content.length); out.append(content);
}

// Scratch buffers reused by every writeModule call (one thread, not re-entrant):
// allocating fresh typed arrays per block was most of the translation time.
const S = { out: new Bytes(8192), types: new Bytes(128), imports: new Bytes(512), funcs: new Bytes(16), exports: new Bytes(16), body: new Bytes(8192), code: new Bytes(8192) };

export function writeModule(m: ModuleSpec): Uint8Array {
  const out = S.out.reset();
  for (const b of [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]) out.byte(b);
  const types = S.types.reset();
  types.u32(m.types.length);
  for (const t of m.types) {
    types.byte(0x60);
    types.u32(t.params.length); for (const p of t.params) types.byte(p);
    types.u32(t.results.length); for (const r of t.results) types.byte(r);
  }
  section(out, 1, types);
  const imports = S.imports.reset();
  imports.u32(m.funcImports.length + 1 + (m.table ? 1 : 0));
  for (const f of m.funcImports) { imports.name('env'); imports.name(f.name); imports.byte(0x00); imports.u32(f.type); }
  imports.name('env'); imports.name('memory'); imports.byte(0x02);
  imports.byte(m.memory.shared ? 0x03 : 0x01); imports.u32(m.memory.min); imports.u32(m.memory.max);
  if (m.table) { imports.name('env'); imports.name('table'); imports.byte(0x01); imports.byte(0x70); imports.byte(0x00); imports.u32(m.table.min); }
  section(out, 2, imports);
  const funcs = S.funcs.reset(); funcs.u32(1); funcs.u32(m.func.type);
  section(out, 3, funcs);
  const exports = S.exports.reset(); exports.u32(1); exports.name(m.exportName); exports.byte(0x00); exports.u32(m.funcImports.length);
  section(out, 7, exports);
  const body = S.body.reset();
  body.u32(m.func.locals.length);
  for (const l of m.func.locals) { body.u32(l.count); body.byte(l.type); }
  body.append(m.func.body);
  body.byte(OP.end);
  const code = S.code.reset(); code.u32(1); code.u32(body.length); code.append(body);
  section(out, 10, code);
  return out.bytes();
}
