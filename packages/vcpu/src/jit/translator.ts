// RISC-V → WebAssembly translator: turns a hot stretch of guest code (one
// "region", inside one 4 KiB physical page) into a wasm function generated at
// run time in the hart's own thread. The interpreter (assembly/index.ts)
// stays the reference and runs everything the translator leaves out; the
// contract between the two is described at the end of assembly/index.ts
// ("translator interface").
//
// A region starts at the pc the interpreter found hot and runs forward to the
// first instruction the translator does not handle (CSR, AMO, FP, ECALL,
// FENCE.I, xRET, WFI, SFENCE.VMA …), a JALR, the end of the page, or
// MAX_REGION instructions; a JAL whose target is on the same page is
// followed (the region goes on at the target, as a trace), one whose target
// is off the page or already in the region ends it. Inside it:
//  - guest registers live in wasm locals (loaded on entry, the written ones
//    stored back on exit);
//  - every taken branch or JAL whose target is an instruction of the region
//    goes back to a `loop` with a `br_table` on the target (so loops and
//    forward branches within the page are wasm control flow), after checking
//    the instruction budget: a region never runs more instructions than the
//    interpreter was asked to run, so interrupts (sampled between batches)
//    are taken within one batch, as with the interpreter;
//  - loads and stores probe the interpreter's softmmu TLB inline (same tags,
//    same deltas); a miss, a page-crossing access or MMIO calls the
//    interpreter's slow path, which may raise an exception: the region then
//    exits with pc = the faulting instruction and the budget charged as the
//    interpreter charges it, and the interpreter delivers the trap (precise
//    traps);
//  - pc-relative values (AUIPC, JAL links, branch targets) are computed from
//    the virtual pc the region was entered with, since the same physical page
//    may be mapped at several virtual addresses.
// Blocks chain (QEMU's goto_tb): a block leaving to a pc that is not a trap
// looks the next block up itself — the fetch TLB for the host address, then
// the core's lookup table — and, when that block is translated and checked
// in the current code generation, tail-calls it (`return_call_indirect`)
// with the remaining budget instead of returning to the interpreter. Each
// block checks its budget at entry, so a chain never runs past the batch;
// anything else (cold or stale entry, TLB miss) returns to the core, which
// counts hotness, re-validates or interprets as before.

import { Bytes, OP, T, writeModule, type FuncType } from './wasm-writer.ts';
import { WASM_RAM_OFFSET } from '../layout.ts';
import { ENGINE_WHERE } from '../engine.ts';

const WHERE_TRANSLATING = ENGINE_WHERE.indexOf('translating');

/** Executions of a block entry (counted by the interpreter's lookup) before it is translated. */
export const JIT_THRESHOLD = 4000;
/** Longest region in instructions. */
export const MAX_REGION = 64;
/** Widest stretch of guest bytes one region may cover (its shadow copy) when it follows JALs. */
const MAX_SPAN = 512;
/** Code-cache bound (bytes of generated wasm per hart); past it the oldest blocks are evicted. */
export const CODE_CACHE_BYTES = 64 * 1024 * 1024;
/** Function-table slots for blocks (index 0 stays empty). */
export const JIT_SLOTS = 32768;

/** What the hart core exports for generated code (see the end of assembly/index.ts). */
export interface JitCoreExports {
  jitFlush(): void;
  jitClear(): void;
  jitForget(hp: number): void;
  jitMarkCodePage(ramOffset: bigint): void;
  setJit(on: number): void;
  setJitThreshold(n: number): void;
  jitInstructions(): bigint;
  jitFenceCount(): number;
  jitRevalidationCount(): bigint;
  jitEntryCount(): bigint;
  jitRetAddr(): number;
  jitShadowAddr(): number;
  jitShadowEnd(): number;
  jitCodeWriteCount(): number;
  jitTabAddr(): number;
  jitGenAddr(): number;
  jitPcAddr(): number;
  jitDKeyAddr(): number;
  jitFKeyAddr(): number;
  jitTabMask(): number;
  tlbTagsAddr(): number;
  tlbDeltasAddr(): number;
  tlbEntries(): number;
  whereAddr(): number;
  xBase(): number;
  expandCompressed(h: number): number;
  jitLoad: WebAssembly.ExportValue;
  jitStore: WebAssembly.ExportValue;
  jitFault: WebAssembly.ExportValue;
  jitMulh: WebAssembly.ExportValue;
  jitMulhsu: WebAssembly.ExportValue;
  jitMulhu: WebAssembly.ExportValue;
  jitDiv: WebAssembly.ExportValue;
  jitDivu: WebAssembly.ExportValue;
  jitRem: WebAssembly.ExportValue;
  jitRemu: WebAssembly.ExportValue;
  jitDivw: WebAssembly.ExportValue;
  jitDivuw: WebAssembly.ExportValue;
  jitRemw: WebAssembly.ExportValue;
  jitRemuw: WebAssembly.ExportValue;
  jitCold: WebAssembly.ExportValue;
}

export interface JitStats {
  /** Blocks currently in the code cache. */
  blocks: number;
  /** Bytes of generated wasm currently in the code cache. */
  cacheBytes: number;
  /** Guest instructions covered by the cached blocks. */
  guestInsns: number;
  compiled: number;
  /** Regions the translator could not start (first instruction not translatable). */
  untranslatable: number;
  /** Generated modules that failed to compile (the block is interpreted instead). */
  invalid: number;
  /** Blocks compared with their shadow copy after a flush (FENCE.I, remote fence.i, a store into code). */
  revalidated: number;
  /** Blocks evicted, oldest first, to make room (function-table slots, generated bytes or shadow copies full). */
  evictions: number;
  /** Time spent translating and compiling, ns. */
  compileNs: number;
  /** Guest instructions executed by translated blocks (the rest were interpreted). */
  jitInstructions: number;
  /** Entries into translated code from the interpreter's loop (blocks reached by chaining are not counted). */
  entries: number;
  /** FENCE.I executed by this hart. */
  fenceI: number;
  /** Stores by this hart into pages it had translated code from. */
  codeWrites: number;
}

type Log = (msg: string, fields: Record<string, unknown>) => void;

const TYPES: FuncType[] = [
  { params: [T.i32, T.i64], results: [T.i32] }, // 0: block
  { params: [T.i64, T.i32], results: [T.i64] }, // 1: jitLoad
  { params: [T.i64, T.i32, T.i64], results: [] }, // 2: jitStore
  { params: [], results: [T.i32] }, // 3: jitFault
  { params: [T.i64, T.i64], results: [T.i64] }, // 4: M-extension helpers
  { params: [T.i32, T.i32, T.i32], results: [T.i32] }, // 5: jitCold
];
const HELPERS = ['jitLoad', 'jitStore', 'jitFault', 'jitMulh', 'jitMulhsu', 'jitMulhu', 'jitDiv', 'jitDivu', 'jitRem', 'jitRemu', 'jitDivw', 'jitDivuw', 'jitRemw', 'jitRemuw', 'jitCold'] as const;
type Helper = (typeof HELPERS)[number];
const HELPER_TYPE: Record<Helper, number> = {
  jitLoad: 1, jitStore: 2, jitFault: 3, jitMulh: 4, jitMulhsu: 4, jitMulhu: 4, jitDiv: 4, jitDivu: 4, jitRem: 4, jitRemu: 4, jitDivw: 4, jitDivuw: 4, jitRemw: 4, jitRemuw: 4, jitCold: 5,
};
// M extension (ISA §7) by funct3, OP and OP-32, for the cases done by helpers.
const MUL_HELPER: (Helper | null)[] = [null, 'jitMulh', 'jitMulhsu', 'jitMulhu', 'jitDiv', 'jitDivu', 'jitRem', 'jitRemu'];
const MULW_HELPER: (Helper | null)[] = [null, null, null, null, 'jitDivw', 'jitDivuw', 'jitRemw', 'jitRemuw'];

// Locals of a block function.
const L_LEFT = 0; // param: budget
const L_PC = 1; // param: virtual pc of the region's first instruction
const L_BASE = 2; // budget + index of the instruction the current run started at
const L_T = 3; // br_table target (label ordinal)
const L_TI = 4; // TLB index × 8
const L_GEN = 5; // code generation at entry (the last i32 local)
const L_NPC = 6;
const L_VA = 7;
const L_DKEY = 8;
const L_REG0 = 9; // x1..x31 follow, for the registers the region uses

const ACC_LOAD = 1;
const ACC_STORE = 2;
const LOAD_OP = [OP.i64_load8_s, OP.i64_load16_s, OP.i64_load32_s, OP.i64_load, OP.i64_load8_u, OP.i64_load16_u, OP.i64_load32_u];
const STORE_OP = [OP.i64_store8, OP.i64_store16, OP.i64_store32, OP.i64_store];

interface Block {
  slot: number;
  /** Bytes of generated wasm. */
  bytes: number;
  insns: number;
  /** The guest code it was translated from: bytes [entry + lo, entry + lo + code.length). */
  code: Uint8Array;
  lo: number;
  /** Address of its shadow copy in the core's translator area. */
  shadow: number;
}

interface Insn {
  /** Byte offset from the region's first instruction (negative after a JAL backwards). */
  delta: number;
  len: 2 | 4;
  /** 32-bit form (RVC expanded). */
  w: number;
  /** As fetched (16 bits for RVC): the tval of an illegal-instruction trap raised by jitCold. */
  raw: number;
  /** A JAL the region follows: the next instruction of the list is its target. */
  follow?: boolean;
}

/** The stretch of the page a region's instructions cover, relative to its entry. */
function spanOf(insns: Insn[]): { lo: number; hi: number } {
  let lo = 0, hi = 0;
  for (const i of insns) { lo = Math.min(lo, i.delta); hi = Math.max(hi, i.delta + i.len); }
  return { lo, hi };
}

const immI = (w: number): number => w >> 20;
const immS = (w: number): number => ((w >> 25) << 5) | ((w >>> 7) & 0x1f);
const immB = (w: number): number => ((w >> 31) << 12) | (((w >>> 7) & 1) << 11) | (((w >>> 25) & 0x3f) << 5) | (((w >>> 8) & 0xf) << 1);
const immJ = (w: number): number => ((w >> 31) << 20) | (((w >>> 12) & 0xff) << 12) | (((w >>> 20) & 1) << 11) | (((w >>> 21) & 0x3ff) << 1);

/** Can the translator run this (expanded) instruction? Illegal encodings are left to the interpreter. */
function translatable(w: number): boolean {
  const f3 = (w >>> 12) & 7, f7 = w >>> 25;
  switch (w & 0x7f) {
    case 0x37: case 0x17: case 0x6f: return true;
    case 0x67: return f3 === 0;
    case 0x63: return f3 !== 2 && f3 !== 3;
    case 0x03: return f3 !== 7;
    case 0x23: return f3 <= 3;
    case 0x13:
      if (f3 === 1) return (w >>> 26) === 0;
      if (f3 === 5) return (w >>> 26) === 0 || (w >>> 26) === 0x10;
      return true;
    case 0x1b:
      if (f3 === 0) return true;
      if (f3 === 1) return f7 === 0;
      if (f3 === 5) return f7 === 0 || f7 === 0x20;
      return false;
    case 0x33: return f7 === 0 || f7 === 1 || (f7 === 0x20 && (f3 === 0 || f3 === 5));
    case 0x3b:
      if (f7 === 0) return f3 === 0 || f3 === 1 || f3 === 5;
      if (f7 === 0x20) return f3 === 0 || f3 === 5;
      if (f7 === 1) return f3 === 0 || f3 >= 4;
      return false;
    case 0x0f: return f3 === 0; // FENCE (a no-op here: memory is sequentially consistent); FENCE.I goes to the interpreter
    // Through the core's jitCold (which raises what is illegal among them): AMO/LR/SC, F/D, and the
    // CSR instructions (ECALL, EBREAK, xRET, WFI, SFENCE.VMA stay in the interpreter).
    case 0x2f: case 0x07: case 0x27: case 0x43: case 0x47: case 0x4b: case 0x4f: case 0x53: return true;
    case 0x73: return f3 !== 0 && f3 !== 4;
    default: return false;
  }
}

/** Emitter state for one block: the body, its control stack and the register locals. */
class Gen {
  readonly b = new Bytes();
  private readonly ctl: string[] = [];
  readonly regLocal = new Int32Array(32).fill(-1);
  nRegs = 0;
  readonly dirty = new Set<number>();
  /** Start a new function (buffers are reused: allocation dominated translation time). */
  reset(): this {
    this.b.reset(); this.ctl.length = 0; this.regLocal.fill(-1); this.nRegs = 0; this.dirty.clear(); this.used.length = 0;
    return this;
  }
  op(o: number): this { this.b.byte(o); return this; }
  i32(v: number): this { this.b.byte(OP.i32_const); this.b.s32(v); return this; }
  i64(v: number): this { this.b.byte(OP.i64_const); this.b.s64n(v); return this; }
  get(l: number): this { this.b.byte(OP.local_get); this.b.u32(l); return this; }
  set(l: number): this { this.b.byte(OP.local_set); this.b.u32(l); return this; }
  tee(l: number): this { this.b.byte(OP.local_tee); this.b.u32(l); return this; }
  mem(o: number, align: number, offset: number): this { this.b.byte(o); this.b.u32(align); this.b.u32(offset >>> 0); return this; }
  /** Helpers imported by this function, in function-index order (only those used: fewer imports instantiate faster). */
  readonly used: Helper[] = [];
  call(h: Helper): this {
    let i = this.used.indexOf(h);
    if (i < 0) { i = this.used.length; this.used.push(h); }
    this.b.byte(OP.call); this.b.u32(i);
    return this;
  }
  open(kind: number, label: string, bt: number = 0x40): this { this.b.byte(kind); this.b.byte(bt); this.ctl.push(label); return this; }
  else(): this { this.b.byte(OP.else); return this; }
  end(): this { this.b.byte(OP.end); this.ctl.pop(); return this; }
  br(label: string): this {
    const i = this.ctl.lastIndexOf(label);
    if (i < 0) throw new Error(`jit: no label ${label}`);
    this.b.byte(OP.br); this.b.u32(this.ctl.length - 1 - i);
    return this;
  }
  brTable(labels: string[]): this {
    this.b.byte(OP.br_table); this.b.u32(labels.length - 1);
    for (const l of labels) this.b.u32(this.ctl.length - 1 - this.ctl.lastIndexOf(l));
    return this;
  }
  reg(r: number): number {
    if (this.regLocal[r]! < 0) this.regLocal[r] = L_REG0 + this.nRegs++;
    return this.regLocal[r]!;
  }
  /** Push x[r]. */
  x(r: number): this { return r === 0 ? this.i64(0) : this.get(this.reg(r)); }
  /** Pop into x[r] (rd = 0: dropped). */
  setX(r: number): this {
    if (r === 0) return this.op(OP.drop);
    this.dirty.add(r);
    return this.set(this.reg(r));
  }
}

export interface TranslatorOptions {
  memory: WebAssembly.Memory;
  table: WebAssembly.Table;
  core: JitCoreExports;
  log?: Log;
  /** ENGINE_STAT_FIELDS doubles other threads read: blocks, cache bytes, compile ms, translated instructions. */
  publish?: Float64Array;
}

export class Translator {
  private readonly memory: WebAssembly.Memory;
  private readonly table: WebAssembly.Table;
  readonly core: JitCoreExports;
  private readonly log: Log | undefined;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly genAddr: number;
  private readonly ret: Uint32Array;
  private readonly shadowBase: number;
  private readonly shadowEnd: number;
  private shadowNext: number;
  private readonly imports: Record<string, WebAssembly.ImportValue>;
  private readonly memLimits: { min: number; max: number; shared: boolean };
  private readonly xb: number;
  private readonly tlbTags: number;
  private readonly tlbDeltas: number;
  private readonly tlbMask: number;
  private readonly pcAddr: number;
  private readonly dkeyAddr: number;
  private readonly fkeyAddr: number;
  private readonly jitTab: number;
  private readonly jitTabMask: number;
  /** The core's WHERE word (what a sampling profiler reads). */
  private readonly where: Int32Array;
  private readonly blocks = new Map<number, Block>();
  private readonly freeSlots: number[] = [];
  private nextSlot = 1;
  /** The code cache's bounds (tests lower them to exercise eviction). */
  readonly limits = { slots: JIT_SLOTS, bytes: CODE_CACHE_BYTES, shadowBytes: Infinity };
  private loggedInvalid = false;
  private readonly publish: Float64Array | undefined;
  private readonly gBody = new Gen();
  private readonly gHead = new Gen();
  private readonly head = new Bytes(8192);
  readonly stats: JitStats = { blocks: 0, cacheBytes: 0, guestInsns: 0, compiled: 0, untranslatable: 0, invalid: 0, revalidated: 0, evictions: 0, compileNs: 0, jitInstructions: 0, entries: 0, fenceI: 0, codeWrites: 0 };

  constructor(opts: TranslatorOptions) {
    this.memory = opts.memory;
    this.table = opts.table;
    this.core = opts.core;
    this.log = opts.log;
    this.publish = opts.publish;
    this.u8 = new Uint8Array(opts.memory.buffer);
    this.dv = new DataView(opts.memory.buffer);
    const c = opts.core;
    this.genAddr = c.jitGenAddr();
    this.ret = new Uint32Array(opts.memory.buffer, c.jitRetAddr(), 1);
    this.shadowBase = this.shadowNext = c.jitShadowAddr();
    this.shadowEnd = c.jitShadowEnd();
    this.xb = c.xBase();
    this.tlbTags = c.tlbTagsAddr();
    this.tlbDeltas = c.tlbDeltasAddr();
    this.tlbMask = c.tlbEntries() - 1;
    this.pcAddr = c.jitPcAddr();
    this.dkeyAddr = c.jitDKeyAddr();
    this.fkeyAddr = c.jitFKeyAddr();
    this.jitTab = c.jitTabAddr();
    this.jitTabMask = c.jitTabMask();
    this.where = new Int32Array(opts.memory.buffer, c.whereAddr(), 1);
    const pages = opts.memory.buffer.byteLength / 65536;
    this.memLimits = { min: pages, max: pages, shared: true };
    this.imports = { memory: opts.memory, table: opts.table };
    for (const h of HELPERS) this.imports[h] = c[h];
    if (this.table.length < JIT_SLOTS) throw new Error(`jit: function table has ${this.table.length} slots, need ${JIT_SLOTS}`);
  }

  /**
   * Make room for a block of `bytes` of wasm and a shadow copy of `shadowNeed`
   * bytes, evicting the oldest blocks first (FIFO: the shadow copies are a
   * ring allocated in translation order, so the oldest blocks are the ones
   * in the way; a hot evicted block is translated again after counting up to
   * the threshold anew). QEMU flushes its whole cache instead (tb_flush);
   * FIFO keeps the hot working set of a long-running guest that touched
   * more code than fits, at no bookkeeping per executed block. Called only
   * from compile(), i.e. from the core's lookup, when no block is running.
   * Returns the shadow copy's address.
   */
  private makeRoom(bytes: number, shadowNeed: number): number {
    while (this.blocks.size > 0 && (this.blocks.size >= this.limits.slots - 1 || this.stats.cacheBytes + bytes > this.limits.bytes)) this.evictOldest();
    let at = this.shadowNext;
    if (at + shadowNeed > Math.min(this.shadowEnd, this.shadowBase + this.limits.shadowBytes)) at = this.shadowBase; // wrap
    for (;;) {
      const oldest = this.blocks.entries().next();
      if (oldest.done) break;
      const [, b] = oldest.value;
      if (!(b.shadow < at + shadowNeed && b.shadow + 8 + b.code.length > at)) break;
      this.evictOldest();
    }
    this.shadowNext = at + shadowNeed;
    return at;
  }

  private evictOldest(): void {
    const [hp, b] = this.blocks.entries().next().value!;
    this.drop(hp, b);
    this.core.jitForget(hp);
    this.stats.evictions++;
  }

  private drop(hp: number, b: Block): void {
    this.table.set(b.slot, null);
    this.freeSlots.push(b.slot);
    this.blocks.delete(hp);
    this.stats.blocks--; this.stats.cacheBytes -= b.bytes; this.stats.guestInsns -= b.insns;
  }

  /**
   * FENCE.I from another hart (SBI remote fence.i): no block may run again
   * before its code has been compared with its shadow copy (the core does
   * that at each block's next execution, see jitEnter).
   */
  flush(): void { this.core.jitFlush(); }

  private sameCode(b: Block, hp: number): boolean {
    const cur = this.u8.subarray(hp + b.lo, hp + b.lo + b.code.length);
    for (let i = 0; i < cur.length; i++) if (cur[i] !== b.code[i]) return false;
    return true;
  }

  /**
   * Called by the core (import env.jitCompile) when the code at host address
   * `hp` (virtual `pc`) became hot. Returns the block's function-table index,
   * or 0 when the region is not translatable (the core then interprets it).
   */
  compile(hp: number, pc: bigint): number {
    const known = this.blocks.get(hp);
    if (known) {
      // The core's entry was lost (collision) or the code changed: reuse the block if its bytes are the same.
      if (this.sameCode(known, hp)) { this.ret[0] = known.shadow; this.stats.revalidated++; return known.slot; }
      this.drop(hp, known);
    }
    const t0 = process.hrtime.bigint();
    const was = this.where[0]!;
    this.where[0] = WHERE_TRANSLATING;
    try {
      // One snapshot of the page: the region is decoded from it and its shadow copy taken from it
      // (read twice from live memory, a writer in between — another hart, a device's DMA — would
      // leave a block of the old bytes with a shadow of the new ones).
      const page = hp & ~0xfff;
      const snap = this.u8.slice(page, page + 0x1000);
      const insns = this.scan(hp, snap);
      if (insns.length === 0) { this.stats.untranslatable++; return 0; }
      const bytes = this.emit(insns);
      const { lo, hi } = spanOf(insns);
      const codeLen = hi - lo;
      const shadowNeed = 8 + ((codeLen + 7) & ~7);
      let fn: WebAssembly.ExportValue;
      try {
        const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: this.imports });
        fn = inst.exports.b!;
      } catch (e) {
        this.stats.invalid++;
        if (!this.loggedInvalid) {
          this.loggedInvalid = true;
          this.log?.('generated block failed to compile; interpreting it', { hp, pc: `0x${pc.toString(16)}`, error: (e as Error).message });
        }
        return 0;
      }
      const shadow = this.makeRoom(bytes.length, shadowNeed);
      const slot = this.freeSlots.pop() ?? this.nextSlot++;
      this.table.set(slot, fn);
      // The shadow copy: [u32 length][i32 start relative to the entry][guest bytes], what the core compares after a flush.
      this.dv.setUint32(shadow, codeLen, true);
      this.dv.setInt32(shadow + 4, lo, true);
      const start = hp & 0xfff;
      const code = snap.subarray(start + lo, start + hi);
      this.u8.set(code, shadow + 8);
      this.ret[0] = shadow;
      // From now on a store by this hart into the page invalidates its blocks (see jitCodeWritten).
      this.core.jitMarkCodePage(BigInt((hp & ~0xfff) - WASM_RAM_OFFSET));
      this.blocks.set(hp, { slot, bytes: bytes.length, insns: insns.length, code: code.slice(), lo, shadow });
      this.stats.compiled++;
      this.stats.blocks++;
      this.stats.cacheBytes += bytes.length;
      this.stats.guestInsns += insns.length;
      return slot;
    } finally {
      this.where[0] = was;
      this.stats.compileNs += Number(process.hrtime.bigint() - t0);
      const p = this.publish;
      if (p) { p[0] = this.stats.blocks; p[1] = this.stats.cacheBytes; p[2] = this.stats.compileNs / 1e6; p[3] = Number(this.core.jitInstructions()); }
    }
  }

  /** Decode the region starting at host address hp (never past its page) from `page`, the bytes of its page (default: live memory). */
  scan(hp: number, page: Uint8Array = this.u8.subarray(hp & ~0xfff, (hp & ~0xfff) + 0x1000)): Insn[] {
    const dv = new DataView(page.buffer, page.byteOffset, 0x1000);
    const out: Insn[] = [];
    const start = hp & 0xfff;
    const seen = new Set<number>();
    let spanLo = start, spanHi = start;
    let off = start;
    while (out.length < MAX_REGION && off < 0x1000 && !seen.has(off)) {
      const lo = dv.getUint16(off, true);
      let w: number, len: 2 | 4;
      if ((lo & 3) === 3) {
        if (off > 0xffc) break; // the upper half is on the next page
        w = dv.getUint32(off, true) | 0;
        len = 4;
      } else {
        w = this.core.expandCompressed(lo) | 0;
        if (w === 0) break; // illegal: the interpreter raises it
        len = 2;
      }
      if (!translatable(w)) break;
      if (Math.max(spanHi, off + len) - Math.min(spanLo, off) > MAX_SPAN) break;
      const ins: Insn = { delta: off - start, len, w, raw: len === 2 ? lo : w >>> 0 };
      out.push(ins);
      seen.add(off);
      spanLo = Math.min(spanLo, off); spanHi = Math.max(spanHi, off + len);
      off += len;
      const opc = w & 0x7f;
      if (opc === 0x67) break; // JALR: nothing after it is reached from it
      if (opc === 0x6f) {
        // JAL: go on at its target when that is on this page, not yet in the region, within the span.
        const t = off - len + immJ(w);
        if (t < 0 || t >= 0x1000 || seen.has(t) || Math.max(spanHi, t + 4) - Math.min(spanLo, t) > MAX_SPAN) break;
        ins.follow = true;
        off = t;
      }
    }
    // A region that ends just after a followed JAL leaves through it (to its target) instead.
    const last = out[out.length - 1];
    if (last?.follow) last.follow = false;
    return out;
  }

  /** Generate the module for a region (exposed for tests). */
  emit(insns: Insn[]): Uint8Array {
    const g = this.gBody.reset();
    const n = insns.length;
    const index = new Map<number, number>();
    insns.forEach((ins, i) => index.set(ins.delta, i));
    // Labels: instruction 0 and every in-region branch target.
    const isLabel = new Uint8Array(n);
    isLabel[0] = 1;
    const targetOf = (ins: Insn): number | undefined => {
      const opc = ins.w & 0x7f;
      if (opc === 0x63) return index.get(ins.delta + immB(ins.w));
      if (opc === 0x6f && !ins.follow) return index.get(ins.delta + immJ(ins.w));
      return undefined;
    };
    for (const ins of insns) { const t = targetOf(ins); if (t !== undefined) isLabel[t] = 1; }
    // The region may end by running into one of its own instructions (after a followed JAL backwards).
    const last = insns[n - 1]!;
    const lastOpc = last.w & 0x7f;
    const fallsOff = lastOpc !== 0x6f && lastOpc !== 0x67;
    const fallTarget = fallsOff ? index.get(last.delta + last.len) : undefined;
    if (fallTarget !== undefined) isLabel[fallTarget] = 1;
    const ordinal = new Int32Array(n).fill(-1);
    const labels: string[] = [];
    for (let i = 0; i < n; i++) if (isLabel[i]) { ordinal[i] = labels.length; labels.push(`L${i}`); }
    const need = (i: number): number => n - i; // most instructions run from i without a budget check

    const body = g.b;
    const head = this.head.reset(); // register loads, emitted once the used registers are known
    const pcOf = (i: number): void => {
      g.get(L_PC);
      if (insns[i]!.delta !== 0) g.i64(insns[i]!.delta).op(OP.i64_add);
    };
    const pcPlus = (i: number, d: number): void => { g.get(L_PC); if (insns[i]!.delta + d !== 0) g.i64(insns[i]!.delta + d).op(OP.i64_add); };
    /** Leave the block: left = base − retired, npc already in L_NPC. */
    const exitWith = (retired: number): void => { g.get(L_BASE).i32(retired).op(OP.i32_sub).set(L_LEFT).br('exit'); };
    const exitTo = (i: number, d: number): void => { pcPlus(i, d); g.set(L_NPC); exitWith(i + 1); };
    // A trap exit marks L_T (else a br_table ordinal, ≥ 0) so that the epilogue does not chain.
    const trapExit = (i: number): void => { pcOf(i); g.set(L_NPC); g.i32(-1).set(L_T); exitWith(i + 1); };
    /** Control goes to pc(i)+d after instruction i retired. */
    const jump = (i: number, d: number): void => {
      const t = index.get(insns[i]!.delta + d);
      if (t === undefined) { exitTo(i, d); return; }
      if (t <= i) {
        // Backward (a loop). Code written by this hart (jitCodeWritten) or flushed: leave, so that
        // a loop never runs code older than one iteration.
        g.i32(0).mem(OP.i32_load, 2, this.genAddr).get(L_GEN).op(OP.i32_ne).open(OP.if, 'ifg');
        exitTo(i, d);
        g.end();
        // Budget: after i, left = base − (i+1); enter t only if left ≥ need(t).
        g.get(L_BASE).i32(need(t) + i + 1).op(OP.i32_lt_s).open(OP.if, 'ifb');
        exitTo(i, d);
        g.end();
      }
      // Forward (t > i, in list order) needs neither check: the run that reached i started with
      // left ≥ need(start), so left ≥ n − (i+1) ≥ need(t) still, and it ends within the region.

      g.get(L_BASE).i32(t - i - 1).op(OP.i32_add).set(L_BASE);
      g.i32(ordinal[t]!).set(L_T).br('top');
    };
    /** Inline TLB probe for an access of `size` at L_VA; leaves the hit condition (i32). */
    const tlbHit = (kind: number, size: number): void => {
      g.get(L_VA).i64(12).op(OP.i64_shr_u).op(OP.i32_wrap_i64).i32(this.tlbMask).op(OP.i32_and).i32(3).op(OP.i32_shl).tee(L_TI);
      g.mem(OP.i64_load, 3, this.tlbTags + kind * (this.tlbMask + 1) * 8);
      g.get(L_VA).i64(12).op(OP.i64_shr_u).get(L_DKEY).op(OP.i64_or).op(OP.i64_eq);
      g.get(L_VA).op(OP.i32_wrap_i64).i32(0xfff).op(OP.i32_and).i32(0x1000 - size).op(OP.i32_le_u).op(OP.i32_and);
    };
    const hostAddr = (kind: number): void => {
      g.get(L_VA).get(L_TI).mem(OP.i64_load, 3, this.tlbDeltas + kind * (this.tlbMask + 1) * 8).op(OP.i64_add).op(OP.i32_wrap_i64);
    };

    g.open(OP.block, 'exit');
    g.open(OP.loop, 'top');
    for (let k = labels.length - 1; k >= 0; k--) g.open(OP.block, labels[k]!);
    g.get(L_T).brTable([...labels, labels[0]!]);
    for (let i = 0; i < n; i++) {
      if (isLabel[i]) g.end();
      const { w, len } = insns[i]!;
      const rd = (w >>> 7) & 31, rs1 = (w >>> 15) & 31, rs2 = (w >>> 20) & 31, f3 = (w >>> 12) & 7, f7 = w >>> 25;
      switch (w & 0x7f) {
        case 0x37: if (rd) g.i64(w & 0xfffff000).setX(rd); break; // LUI
        case 0x17: if (rd) { pcPlus(i, w & 0xfffff000); g.setX(rd); } break; // AUIPC
        case 0x6f: // JAL
          if (rd) { pcPlus(i, len); g.setX(rd); }
          if (!insns[i]!.follow) jump(i, immJ(w)); // else the region goes on at the target, next in the list
          break;
        case 0x67: // JALR: target before the link (rd may be rs1)
          g.x(rs1).i64(immI(w)).op(OP.i64_add).i64(-2).op(OP.i64_and).set(L_NPC);
          if (rd) { pcPlus(i, len); g.setX(rd); }
          exitWith(i + 1);
          break;
        case 0x63: { // BRANCH
          g.x(rs1).x(rs2);
          g.op([OP.i64_eq, OP.i64_ne, 0, 0, OP.i64_lt_s, OP.i64_ge_s, OP.i64_lt_u, OP.i64_ge_u][f3]!);
          g.open(OP.if, 'ift');
          jump(i, immB(w));
          g.end();
          break;
        }
        case 0x03: { // LOAD
          const size = 1 << (f3 & 3);
          g.x(rs1).i64(immI(w)).op(OP.i64_add).set(L_VA);
          tlbHit(ACC_LOAD, size);
          g.open(OP.if, 'ld', T.i64);
          hostAddr(ACC_LOAD); g.mem(LOAD_OP[f3]!, 0, 0);
          g.else();
          g.get(L_VA).i32(f3).call('jitLoad');
          g.call('jitFault').open(OP.if, 'ldf'); trapExit(i); g.end();
          g.end();
          g.setX(rd);
          break;
        }
        case 0x23: { // STORE
          const size = 1 << f3;
          g.x(rs1).i64(immS(w)).op(OP.i64_add).set(L_VA);
          tlbHit(ACC_STORE, size);
          g.open(OP.if, 'st');
          hostAddr(ACC_STORE); g.x(rs2).mem(STORE_OP[f3]!, 0, 0);
          g.else();
          g.get(L_VA).i32(size).x(rs2).call('jitStore');
          g.call('jitFault').open(OP.if, 'stf'); trapExit(i); g.end();
          g.end();
          break;
        }
        case 0x13: { // OP-IMM
          if (!rd) break;
          const imm = immI(w);
          g.x(rs1);
          switch (f3) {
            case 0: g.i64(imm).op(OP.i64_add); break;
            case 1: g.i64(imm & 63).op(OP.i64_shl); break;
            case 2: g.i64(imm).op(OP.i64_lt_s).op(OP.i64_extend_i32_u); break;
            case 3: g.i64(imm).op(OP.i64_lt_u).op(OP.i64_extend_i32_u); break;
            case 4: g.i64(imm).op(OP.i64_xor); break;
            case 5: g.i64(imm & 63).op((w >>> 26) === 0 ? OP.i64_shr_u : OP.i64_shr_s); break;
            case 6: g.i64(imm).op(OP.i64_or); break;
            default: g.i64(imm).op(OP.i64_and);
          }
          g.setX(rd);
          break;
        }
        case 0x1b: { // OP-IMM-32
          if (!rd) break;
          g.x(rs1).op(OP.i32_wrap_i64);
          if (f3 === 0) g.i32(immI(w)).op(OP.i32_add);
          else if (f3 === 1) g.i32(rs2).op(OP.i32_shl);
          else g.i32(rs2).op(f7 === 0 ? OP.i32_shr_u : OP.i32_shr_s);
          g.op(OP.i64_extend_i32_s).setX(rd);
          break;
        }
        case 0x33: { // OP (and M)
          if (!rd) break;
          g.x(rs1).x(rs2);
          if (f7 === 1) {
            const h = MUL_HELPER[f3];
            if (h) g.call(h); else g.op(OP.i64_mul);
          } else if (f7 === 0x20) g.op(f3 === 0 ? OP.i64_sub : OP.i64_shr_s);
          else {
            switch (f3) {
              case 0: g.op(OP.i64_add); break;
              case 1: g.op(OP.i64_shl); break;
              case 2: g.op(OP.i64_lt_s).op(OP.i64_extend_i32_u); break;
              case 3: g.op(OP.i64_lt_u).op(OP.i64_extend_i32_u); break;
              case 4: g.op(OP.i64_xor); break;
              case 5: g.op(OP.i64_shr_u); break;
              case 6: g.op(OP.i64_or); break;
              default: g.op(OP.i64_and);
            }
          }
          g.setX(rd);
          break;
        }
        case 0x3b: { // OP-32 (and M)
          if (!rd) break;
          const h = f7 === 1 ? MULW_HELPER[f3] : null;
          if (h) { g.x(rs1).x(rs2).call(h).setX(rd); break; }
          g.x(rs1).op(OP.i32_wrap_i64).x(rs2).op(OP.i32_wrap_i64);
          if (f7 === 1) g.op(OP.i32_mul);
          else if (f3 === 0) g.op(f7 === 0 ? OP.i32_add : OP.i32_sub);
          else if (f3 === 1) g.op(OP.i32_shl);
          else g.op(f7 === 0 ? OP.i32_shr_u : OP.i32_shr_s);
          g.op(OP.i64_extend_i32_s).setX(rd);
          break;
        }
        case 0x0f: break; // FENCE
        case 0x2f: case 0x73: case 0x07: case 0x27: case 0x43: case 0x47: case 0x4b: case 0x4f: case 0x53: { // jitCold
          // The core reads and writes x registers in memory: store those the instruction may read or
          // write (a local exists for each, so the head loads it), reload rd after.
          const op = w & 0x7f;
          const xs = op === 0x2f ? [rs1, rs2, rd] : op === 0x73 || op === 0x53 ? [rs1, rd] : op === 0x07 || op === 0x27 ? [rs1] : [];
          for (const r of xs) if (r !== 0) g.i32(0).get(g.reg(r)).mem(OP.i64_store, 3, this.xb + 8 * r);
          g.i32(w).i32(insns[i]!.raw | 0).get(L_BASE).i32(i + 1).op(OP.i32_sub).call('jitCold').set(L_TI);
          // Reload rd first: a CSR write completes (its rd written) and then leaves the block, whose
          // exit stores the dirty locals.
          const reload = op === 0x2f || op === 0x73 || op === 0x53 ? rd : 0;
          if (reload !== 0) g.i32(0).mem(OP.i64_load, 3, this.xb + 8 * reload).set(g.reg(reload));
          g.get(L_TI).open(OP.if, 'cold');
          g.get(L_TI).i32(1).op(OP.i32_eq).open(OP.if, 'coldx');
          trapExit(i);
          g.else();
          pcPlus(i, len); g.set(L_NPC); g.i32(-1).set(L_T); exitWith(i + 1); // completed; the core checks interrupts
          g.end();
          g.end();
          break;
        }
        default: throw new Error(`jit: untranslatable instruction 0x${(w >>> 0).toString(16)} reached the emitter`);
      }
    }
    // Fell off the end: on to the next instruction (in the region, or a chained block or the interpreter).
    if (fallsOff) jump(n - 1, last.len);
    g.end(); // top
    g.end(); // exit
    // Exit: store the written registers and the next pc, return the budget.
    for (const r of g.dirty) g.i32(0).get(g.regLocal[r]!).mem(OP.i64_store, 3, this.xb + 8 * r);
    g.i32(0).get(L_NPC).mem(OP.i64_store, 3, this.pcAddr);
    // Chain: fetch-TLB hit for npc (the tag the core's fetchSlow installs), then the core's lookup
    // entry for its host address (see jitEnter): same tag, a block, checked in this generation.
    g.get(L_T).i32(0).op(OP.i32_ge_s).open(OP.if, 'chain');
    g.get(L_NPC).i64(12).op(OP.i64_shr_u).set(L_VA);
    g.get(L_VA).op(OP.i32_wrap_i64).i32(this.tlbMask).op(OP.i32_and).i32(3).op(OP.i32_shl).tee(L_TI);
    g.mem(OP.i64_load, 3, this.tlbTags); // fetch TLB: kind 0
    g.get(L_VA).i32(0).mem(OP.i64_load, 3, this.fkeyAddr).op(OP.i64_or).op(OP.i64_eq).open(OP.if, 'ftlb');
    g.get(L_NPC).get(L_TI).mem(OP.i64_load, 3, this.tlbDeltas).op(OP.i64_add).op(OP.i32_wrap_i64).tee(L_TI); // hp
    g.i32(1).op(OP.i32_shr_u).i32(this.jitTabMask).op(OP.i32_and).i32(4).op(OP.i32_shl).tee(L_BASE); // entry offset
    g.mem(OP.i32_load, 2, this.jitTab).get(L_TI).op(OP.i32_eq);
    g.get(L_BASE).mem(OP.i32_load, 2, this.jitTab + 8).i32(0).mem(OP.i32_load, 2, this.genAddr).op(OP.i32_eq).op(OP.i32_and);
    g.get(L_BASE).mem(OP.i32_load, 2, this.jitTab + 4).tee(L_T).i32(0).op(OP.i32_gt_s).op(OP.i32_and).open(OP.if, 'next');
    g.get(L_LEFT).get(L_NPC).get(L_T);
    g.op(OP.return_call_indirect); g.b.u32(0); g.b.u32(0); // type 0 (block), table 0 (env.table)
    g.end().end().end();
    g.get(L_LEFT);

    // Head: load the used registers and dKey; refuse to start without budget for a straight run.
    const h = this.gHead.reset();
    for (let r = 1; r < 32; r++) if (g.regLocal[r]! >= 0) h.i32(0).mem(OP.i64_load, 3, this.xb + 8 * r).set(g.regLocal[r]!);
    h.i32(0).mem(OP.i64_load, 3, this.dkeyAddr).set(L_DKEY);
    h.i32(0).mem(OP.i32_load, 2, this.genAddr).set(L_GEN);
    h.get(L_LEFT).i32(need(0)).op(OP.i32_lt_s).open(OP.if, 'noop').get(L_LEFT).op(OP.return).end();
    h.get(L_LEFT).set(L_BASE);
    head.append(h.b);
    head.append(body);
    return writeModule({
      types: TYPES,
      funcImports: g.used.map((name) => ({ name, type: HELPER_TYPE[name] })),
      memory: this.memLimits,
      table: { min: JIT_SLOTS },
      func: { type: 0, locals: [{ count: 4, type: T.i32 }, { count: 3 + g.nRegs, type: T.i64 }], body: head },
      exportName: 'b',
    });
  }
}
