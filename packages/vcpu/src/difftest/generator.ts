// Seeded generator of RV64GC instruction sequences for differential testing
// against qemu-riscv64. A program is a list of *groups*: instructions that
// must stay together (an address set-up and its AMO, an LR and its SC, an
// auipc and its jalr). Control flow only goes forward, a bounded number of
// groups ahead, so every program terminates and reaches the epilogue; the
// minimiser removes whole groups and re-resolves branch targets.
//
// Register conventions (the prologue in image.ts sets them):
//   x2 (sp) and x8 (s0) = start of the 4 KiB scratch buffer, x3 (gp) = its
//   middle; the generator never writes them, so every load/store/AMO stays
//   inside the buffer and both sides see identical addresses.
// Everything a U-mode program can observe of Zicsr is limited to fflags,
// frm and fcsr; frm is only ever written with valid modes (0–4) so dynamic
// rounding never hits a reserved encoding (ISA §11.2).

import * as E from './encode.ts';
import type { Insn } from './encode.ts';

export const SP = 2, GP = 3, S0 = 8;
export const SCRATCH_SIZE = 4096;

export interface Group {
  readonly cls: string;
  /** Byte size of the group (independent of its branch offsets). */
  readonly size: number;
  /** Forward control transfer: how many following groups it jumps over. */
  readonly skip?: number;
  /** pc: the group's address; target: the address it jumps to when it has a skip. */
  build(pc: number, target: number): Insn[];
}

export interface Program {
  readonly seed: number;
  /** Initial x0..x31 (x0 ignored, x2/x3/x8 overwritten by the prologue), f0..f31, fcsr. */
  readonly x: bigint[];
  readonly f: bigint[];
  readonly fcsr: number;
  /** Initial contents of the scratch buffer. */
  readonly scratch: Uint8Array;
  readonly groups: Group[];
}

/** sfc32: small, fast, seedable; deterministic across platforms. */
export class Rng {
  private a: number; private b: number; private c: number; private d: number;
  constructor(seed: number) {
    this.a = 0x9e3779b9; this.b = 0x243f6a88; this.c = 0xb7e15162; this.d = seed >>> 0;
    for (let i = 0; i < 16; i++) this.u32();
  }
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number { return Math.floor((this.u32() / 2 ** 32) * n); }
  range(lo: number, hi: number): number { return lo + this.int(hi - lo + 1); }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]!; }
  chance(p: number): boolean { return this.u32() / 2 ** 32 < p; }
  u64(): bigint { return (BigInt(this.u32()) << 32n) | BigInt(this.u32()); }
}

const M64 = (1n << 64n) - 1n;
const u64 = (v: bigint): bigint => v & M64;

/** Integer edge values: 0, ±1, INT64_MIN/MAX, 2^31 and 2^32 boundaries, float-conversion ties. */
export const INT_EDGES: readonly bigint[] = [
  0n, 1n, u64(-1n), 2n, u64(-2n), 0x7fff_ffff_ffff_ffffn, 0x8000_0000_0000_0000n, 0x8000_0000_0000_0001n,
  0x7fff_ffffn, 0x8000_0000n, u64(-0x8000_0000n), u64(-0x8000_0001n), 0xffff_ffffn, 0x1_0000_0000n, 0xffff_ffff_7fff_ffffn,
  0x8000_0000_ffff_ffffn, 31n, 32n, 63n, 64n, 0xffn, 0x80n, 0x8000n, 0xffffn, 0x100_0000n + 1n, (1n << 53n) + 1n,
  (1n << 63n) - 1024n, 0x5555_5555_5555_5555n, 0xaaaa_aaaa_aaaa_aaaan,
];

const boxS = (bits: number): bigint => 0xffff_ffff_0000_0000n | BigInt(bits >>> 0);
/** Singles (NaN-boxed): ±0, ±1, ±inf, qNaN, sNaN, subnormals, min normal, max, 2^31/2^32/2^63/2^64, ties. */
export const F32_EDGES: readonly bigint[] = [
  0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0x7fa00000,
  0x00000001, 0x807fffff, 0x00800000, 0x7f7fffff, 0xff7fffff, 0x4f000000, 0xcf000000, 0xcf000001, 0x4f800000, 0x5f000000,
  0xdf000000, 0x5f800000, 0x3f000000, 0xbf000000, 0x3fc00000, 0x40200000, 0xc0200000, 0x4b000001, 0x4a800001, 0x3effffff,
  0x33800000, 0x3f800001, 0x3f7fffff, 0x34000000,
].map(boxS);
/** Doubles: the same classes plus values whose narrowing to single is a tie. */
export const F64_EDGES: readonly bigint[] = [
  0x0000_0000_0000_0000n, 0x8000_0000_0000_0000n, 0x3ff0_0000_0000_0000n, 0xbff0_0000_0000_0000n, 0x7ff0_0000_0000_0000n,
  0xfff0_0000_0000_0000n, 0x7ff8_0000_0000_0000n, 0xfff8_0000_0000_0000n, 0x7ff0_0000_0000_0001n, 0x7ff4_0000_0000_0000n,
  0x0000_0000_0000_0001n, 0x800f_ffff_ffff_ffffn, 0x0010_0000_0000_0000n, 0x7fef_ffff_ffff_ffffn, 0x41e0_0000_0000_0000n,
  0xc1e0_0000_0000_0000n, 0xc1e0_0000_0020_0000n, 0x41ef_ffff_ffe0_0000n, 0x41f0_0000_0000_0000n, 0x43e0_0000_0000_0000n,
  0xc3e0_0000_0000_0000n, 0x43f0_0000_0000_0000n, 0x3fe0_0000_0000_0000n, 0xbfe0_0000_0000_0000n, 0x3ff8_0000_0000_0000n,
  0x4004_0000_0000_0000n, 0xc004_0000_0000_0000n, 0x3ff0_0000_1000_0000n, 0x3ff0_0000_3000_0000n, 0x4330_0000_0000_0001n,
  0x4320_0000_0000_0001n, 0x47ef_ffff_f000_0000n, 0x3810_0000_0000_0000n, 0x36a0_0000_0000_0000n, 0x3fd5_5555_5555_5555n,
  0x3ca0_0000_0000_0000n, 0x3ff0_0000_0000_0001n, 0x3fef_ffff_ffff_ffffn, 0x3cb0_0000_0000_0000n, 0x0008_0000_0000_0000n,
];

/** A register value: an integer edge, a float edge (for moves/conversions), a small number or random bits. */
function value(rng: Rng): bigint {
  const k = rng.int(10);
  if (k < 4) return rng.pick(INT_EDGES);
  if (k < 5) return rng.pick(F64_EDGES);
  if (k < 6) return rng.pick(F32_EDGES);
  if (k < 7) return u64(BigInt(rng.range(-100, 100)));
  return rng.u64();
}
/** Initial f register value; f0–f15 lean to doubles and f16–f31 to NaN-boxed singles (see fr()). */
function fvalue(rng: Rng, reg: number): bigint {
  const k = rng.int(10);
  const dbl = reg < 16 ? 6 : 2;
  if (k < dbl) return rng.pick(F64_EDGES);
  if (k < 8) return rng.pick(F32_EDGES);
  if (k < 9) return boxS(rng.u32());
  return rng.u64(); // mostly an unboxed single: reads as the canonical NaN (ISA §12.2)
}

const VALID_RMS = [0, 1, 2, 3, 4, 7] as const;
const WRITABLE = Array.from({ length: 32 }, (_, i) => i).filter((r) => r !== SP && r !== GP && r !== S0);
const WRITABLE_NZ = WRITABLE.filter((r) => r !== 0);
const C_WRITABLE = [9, 10, 11, 12, 13, 14, 15];
const C_ANY = [8, 9, 10, 11, 12, 13, 14, 15];
const ALL = Array.from({ length: 32 }, (_, i) => i);

function simple(cls: string, ...insns: Insn[]): Group {
  const size = insns.reduce((s, i) => s + i.size, 0);
  return { cls, size, build: () => insns };
}
function jump(cls: string, size: number, skip: number, build: (pc: number, target: number) => Insn[]): Group {
  return { cls, size, skip, build };
}

/** The generator's instruction classes; each returns one group. */
export const CLASSES: Record<string, (g: Rng) => Group> = {
  'rv64i.op': (g) => simple('rv64i.op', E.op(g.pick(['add', 'sub', 'sll', 'slt', 'sltu', 'xor', 'srl', 'sra', 'or', 'and']), rd(g), g.pick(ALL), g.pick(ALL))),
  'rv64i.opw': (g) => simple('rv64i.opw', E.op(g.pick(['addw', 'subw', 'sllw', 'srlw', 'sraw']), rd(g), g.pick(ALL), g.pick(ALL))),
  'rv64i.imm': (g) => {
    const name = g.pick([...E.IMM_ALL, 'addiw']);
    return simple('rv64i.imm', E.opImm(name, rd(g), g.pick(ALL), imm12(g)));
  },
  'rv64i.shift': (g) => {
    const name = g.pick(['slli', 'srli', 'srai', 'slliw', 'srliw', 'sraiw']);
    return simple('rv64i.shift', E.shiftImm(name, rd(g), g.pick(ALL), g.int(name.endsWith('w') ? 32 : 64)));
  },
  'rv64i.lui': (g) => {
    const imm = g.pick([0, 1, 0x7ffff, 0x80000, 0xfffff, g.int(1 << 20)]);
    return simple('rv64i.lui', g.chance(0.5) ? E.lui(rd(g), imm) : E.auipc(rd(g), imm));
  },
  'rv64i.load': (g) => {
    const name = g.pick(E.LOADS);
    const [base, off] = scratchAddr(g, ({ lb: 1, lbu: 1, lh: 2, lhu: 2, lw: 4, lwu: 4, ld: 8 } as Record<string, number>)[name]!);
    return simple('rv64i.load', E.load(name, rd(g), base, off));
  },
  'rv64i.store': (g) => {
    const name = g.pick(E.STORES);
    const [base, off] = scratchAddr(g, ({ sb: 1, sh: 2, sw: 4, sd: 8 } as Record<string, number>)[name]!);
    return simple('rv64i.store', E.store(name, g.pick(ALL), base, off));
  },
  'rv64i.branch': (g) => {
    const name = g.pick(E.BRANCHES), a = g.pick(ALL), b = g.chance(0.2) ? a : g.pick(ALL);
    return jump('rv64i.branch', 4, g.int(4), (pc, t) => [E.branch(name, a, b, t - pc)]);
  },
  'rv64i.jal': (g) => {
    const r = rd(g);
    return jump('rv64i.jal', 4, g.int(4), (pc, t) => [E.jal(r, t - pc)]);
  },
  'rv64i.jalr': (g) => {
    // auipc t, 0 ; jalr rd, off(t): an indirect forward jump (rd may equal t).
    const t = g.pick(WRITABLE_NZ), r = rd(g);
    return jump('rv64i.jalr', 8, g.int(4), (pc, target) => [E.auipc(t, 0), E.jalr(r, t, target - pc)]);
  },
  'rv64i.misaligned': (g) => {
    // Misaligned scalar and FP loads/stores: our hart performs them (as qemu does), so the values must agree.
    // (ISA §2.6 lets an implementation trap instead; misaligned AMOs/LR/SC must trap on both, and are not generated.)
    const k = g.int(4);
    const sizes: Record<string, number> = { lh: 2, lhu: 2, lw: 4, lwu: 4, ld: 8, sh: 2, sw: 4, sd: 8, flw: 4, fld: 8, fsw: 4, fsd: 8 };
    const name = k === 0 ? g.pick(['lh', 'lhu', 'lw', 'lwu', 'ld']) : k === 1 ? g.pick(['sh', 'sw', 'sd']) : k === 2 ? g.pick(['flw', 'fld']) : g.pick(['fsw', 'fsd']);
    const size = sizes[name]!;
    const off = g.range(-2048, 2047 - size);
    const o = off % size === 0 ? off + 1 : off;
    if (k === 0) return simple('rv64i.misaligned', E.load(name, rd(g), GP, o));
    if (k === 1) return simple('rv64i.misaligned', E.store(name, g.pick(ALL), GP, o));
    if (k === 2) return simple('rv64i.misaligned', E.fload(name as 'flw' | 'fld', fr(g, name === 'fld' ? 'd' : 's'), GP, o));
    return simple('rv64i.misaligned', E.fstore(name as 'fsw' | 'fsd', fr(g, name === 'fsd' ? 'd' : 's'), GP, o));
  },
  'm.op': (g) => {
    const name = g.pick(['mul', 'mulh', 'mulhsu', 'mulhu', 'div', 'divu', 'rem', 'remu']);
    return simple('m.op', E.op(name, rd(g), g.pick(ALL), divisor(g, name)));
  },
  'm.opw': (g) => {
    const name = g.pick(['mulw', 'divw', 'divuw', 'remw', 'remuw']);
    return simple('m.opw', E.op(name, rd(g), g.pick(ALL), divisor(g, name)));
  },
  'a.amo': (g) => {
    const d = g.chance(0.5), t = g.pick(WRITABLE_NZ);
    const off = alignedOff(g, d ? 8 : 4);
    return simple('a.amo', E.opImm('addi', t, GP, off), E.amo(g.pick(E.AMOS), d, g.chance(0.5), g.chance(0.5), rd(g), t, g.pick(ALL)));
  },
  'a.lrsc': (g) => {
    const d = g.chance(0.5), t = g.pick(WRITABLE_NZ);
    const off = alignedOff(g, d ? 8 : 4);
    const insns: Insn[] = [E.opImm('addi', t, GP, off)];
    const paired = g.chance(0.85);
    if (paired) {
      insns.push(E.amo('lr', d, g.chance(0.5), g.chance(0.5), rdNot(g, t), t, 0));
      for (let k = g.int(3); k > 0; k--) insns.push(E.op(g.pick(['add', 'xor', 'sub', 'mul']), rdNot(g, t), g.pick(ALL), g.pick(ALL)));
    }
    // A lone SC has no reservation and must fail (ISA §8.2).
    insns.push(E.amo('sc', d, g.chance(0.5), g.chance(0.5), rd(g), t, g.pick(ALL)));
    return simple(paired ? 'a.lrsc' : 'a.sc-alone', ...insns);
  },
  'f.arith': (g) => {
    const fmt = fmtOf(g);
    return simple('f.arith', E.farith(g.pick(E.FARITH), fmt, fr(g, fmt), fr(g, fmt), fr(g, fmt), g.pick(VALID_RMS)));
  },
  'f.sqrt': (g) => {
    const fmt = fmtOf(g);
    return simple('f.sqrt', E.fsqrt(fmt, fr(g, fmt), fr(g, fmt), g.pick(VALID_RMS)));
  },
  'f.fma': (g) => {
    const fmt = fmtOf(g);
    return simple('f.fma', E.fma(g.pick(E.FMAS), fmt, fr(g, fmt), fr(g, fmt), fr(g, fmt), fr(g, fmt), g.pick(VALID_RMS)));
  },
  'f.sgnj-minmax': (g) => {
    const fmt = fmtOf(g), a = fr(g, fmt);
    return simple('f.sgnj-minmax', E.fsgnjMinMax(g.pick(E.FSGNJ_MINMAX), fmt, fr(g, fmt), a, g.chance(0.2) ? a : fr(g, fmt)));
  },
  'f.cmp': (g) => {
    const fmt = fmtOf(g), a = fr(g, fmt);
    return simple('f.cmp', g.chance(0.8) ? E.fcmp(g.pick(E.FCMPS), fmt, rd(g), a, g.chance(0.2) ? a : fr(g, fmt)) : E.fclass(fmt, rd(g), a));
  },
  'f.cvt-int': (g) => {
    const kind = g.pick(E.INT_KINDS), fmt = fmtOf(g), rm = g.pick(VALID_RMS);
    return simple('f.cvt-int', g.chance(0.5) ? E.fcvtToInt(kind, fmt, rd(g), fr(g, fmt), rm) : E.fcvtFromInt(kind, fmt, fr(g, fmt), g.pick(ALL), rm));
  },
  'f.cvt-ff': (g) => {
    const to = g.chance(0.5) ? 's' : 'd';
    return simple('f.cvt-ff', E.fcvtFF(to, fr(g, to), fr(g, to === 's' ? 'd' : 's'), g.pick(VALID_RMS)));
  },
  'f.mv': (g) => {
    const fmt = fmtOf(g);
    return simple('f.mv', g.chance(0.5) ? E.fmvToX(fmt, rd(g), fr(g, fmt)) : E.fmvFromX(fmt, fr(g, fmt), g.pick(ALL)));
  },
  'f.mem': (g) => {
    const d = g.chance(0.5);
    const [base, off] = scratchAddr(g, d ? 8 : 4);
    if (g.chance(0.5)) return simple('f.mem', E.fload(d ? 'fld' : 'flw', fr(g, d ? 'd' : 's'), base, off));
    return simple('f.mem', E.fstore(d ? 'fsd' : 'fsw', fr(g, d ? 'd' : 's'), base, off));
  },
  'zicsr.fp': (g) => {
    const k = g.int(7);
    if (k === 0) return simple('zicsr.fp', E.csr('csrrwi', rd(g), 2, g.range(0, 4))); // fsrmi
    if (k === 1) {
      // fsrm with a register: set frm from a known-valid value.
      const t = g.pick(WRITABLE_NZ);
      return simple('zicsr.fp', E.opImm('addi', t, 0, g.range(0, 4)), E.csr('csrrw', rd(g), 2, t));
    }
    if (k === 2) return simple('zicsr.fp', E.csr(g.pick(['csrrw', 'csrrs', 'csrrc']), rd(g), 1, g.pick(ALL))); // fflags: 5 bits, any value
    if (k === 3) return simple('zicsr.fp', E.csr(g.pick(['csrrwi', 'csrrsi', 'csrrci']), rd(g), g.pick([1, 3]), g.int(32)));
    if (k === 4) {
      // fscsr with a value whose frm field is valid, or clearing bits (always leaves a valid frm).
      const t = g.pick(WRITABLE_NZ);
      // csrrs may only set fflags bits: OR-ing frm bits into a valid frm can make it 5–7.
      const set = g.chance(0.5);
      const v = (set ? 0 : g.range(0, 4) << 5) | g.int(32);
      return simple('zicsr.fp', E.opImm('addi', t, 0, v), E.csr(set ? 'csrrs' : 'csrrw', rd(g), 3, t));
    }
    if (k === 5) return simple('zicsr.fp', E.csr('csrrc', rd(g), g.pick([2, 3]), g.pick(ALL)));
    return simple('zicsr.fp', E.csr('csrrs', rd(g), g.pick([1, 2, 3]), 0)); // frflags/frrm/frcsr
  },
  'c.alu': (g) => {
    const k = g.int(9);
    if (k === 0) return simple('c.alu', E.cImm('c.addi', g.pick(WRITABLE_NZ), nz6(g)));
    if (k === 1) return simple('c.alu', E.cImm('c.addiw', g.pick(WRITABLE_NZ), g.range(-32, 31)));
    if (k === 2) return simple('c.alu', E.cImm('c.li', g.pick(WRITABLE_NZ), g.range(-32, 31)));
    if (k === 3) return simple('c.alu', E.cImm('c.slli', g.pick(WRITABLE_NZ), g.range(1, 63)));
    if (k === 4) return simple('c.alu', E.cLui(g.pick(WRITABLE_NZ), nz6(g)));
    if (k === 5) return simple('c.alu', E.cAluImm(g.pick(['c.srli', 'c.srai'] as const), g.pick(C_WRITABLE), g.range(1, 63)));
    if (k === 6) return simple('c.alu', E.cAluImm('c.andi', g.pick(C_WRITABLE), g.range(-32, 31)));
    if (k === 7) return simple('c.alu', E.cAlu(g.pick(E.C_ALU), g.pick(C_WRITABLE), g.pick(C_ANY)));
    return simple('c.alu', E.cMvAdd(g.pick(['c.mv', 'c.add'] as const), g.pick(WRITABLE_NZ), g.pick(ALL.filter((r) => r !== 0))));
  },
  'c.mem': (g) => {
    const k = g.int(5);
    if (k === 0) {
      const name = g.pick(['c.lw', 'c.ld', 'c.fld'] as const);
      const off = name === 'c.lw' ? 4 * g.int(32) : 8 * g.int(32);
      return simple('c.mem', E.cMem(name, name === 'c.fld' ? g.pick(C_ANY) : g.pick(C_WRITABLE), S0, off));
    }
    if (k === 1) {
      const name = g.pick(['c.sw', 'c.sd', 'c.fsd'] as const);
      return simple('c.mem', E.cMem(name, g.pick(C_ANY), S0, name === 'c.sw' ? 4 * g.int(32) : 8 * g.int(32)));
    }
    if (k === 2) {
      const name = g.pick(['c.lwsp', 'c.ldsp', 'c.fldsp'] as const);
      const off = name === 'c.lwsp' ? 4 * g.int(64) : 8 * g.int(64);
      return simple('c.mem', E.cSp(name, name === 'c.fldsp' ? g.int(32) : g.pick(WRITABLE_NZ), off));
    }
    if (k === 3) {
      const name = g.pick(['c.swsp', 'c.sdsp', 'c.fsdsp'] as const);
      return simple('c.mem', E.cSp(name, name === 'c.fsdsp' ? g.int(32) : g.pick(ALL), name === 'c.swsp' ? 4 * g.int(64) : 8 * g.int(64)));
    }
    // c.addi4spn, or c.addi16sp up and back down (sp must stay the scratch base).
    if (g.chance(0.5)) return simple('c.mem', E.cAddi4spn(g.pick(C_WRITABLE), 4 * g.range(1, 255)));
    const up = 16 * g.range(1, 31);
    return simple('c.mem', E.cAddi16sp(up), E.cSp('c.sdsp', g.pick(ALL), 8 * g.int(32)), E.cAddi16sp(-up));
  },
  'c.jump': (g) => {
    const k = g.int(4);
    if (k === 0) return jump('c.jump', 2, g.int(4), (pc, t) => [E.cJ(t - pc)]);
    if (k === 1) {
      const name = g.pick(['c.beqz', 'c.bnez'] as const), r = g.pick(C_ANY);
      return jump('c.jump', 2, g.int(4), (pc, t) => [E.cBranch(name, r, t - pc)]);
    }
    // auipc t, 0 ; addi t, t, off ; c.jr t / c.jalr t
    const t = g.pick(WRITABLE_NZ), name = g.pick(['c.jr', 'c.jalr'] as const);
    return jump('c.jump', 10, g.int(4), (pc, target) => [E.auipc(t, 0), E.opImm('addi', t, t, target - pc), E.cJr(name, t)]);
  },
  'misc.fence': (g) => {
    const k = g.int(3);
    return simple('misc.fence', k === 0 ? E.fence('fence.i') : k === 1 ? E.fence('fence.tso') : E.fence('fence', g.range(1, 15), g.range(1, 15)));
  },
  'c.nop': () => simple('c.nop', { word: 0x0001, size: 2, asm: 'c.nop' }),
};

export const CLASS_NAMES = Object.keys(CLASSES);

function rd(g: Rng): number {
  return g.chance(0.04) ? 0 : g.pick(WRITABLE_NZ);
}
function rdNot(g: Rng, avoid: number): number {
  let r = rd(g);
  while (r === avoid) r = rd(g);
  return r;
}
function nz6(g: Rng): number {
  const v = g.range(-32, 30);
  return v >= 0 ? v + 1 : v;
}
function imm12(g: Rng): number {
  return g.pick([0, 1, -1, 2047, -2048, 31, 32, 63, g.range(-2048, 2047), g.range(-16, 16)]);
}
function fmtOf(g: Rng): E.Fmt {
  return g.chance(0.5) ? 's' : 'd';
}
/**
 * An f register for an operand of format fmt: mostly from the half that
 * holds that format (f0–f15 doubles, f16–f31 singles), so most operations
 * see real values of their format; sometimes any register, so a single
 * operation also meets unboxed values (canonical NaN, ISA §12.2) and doubles
 * meet boxed singles (NaNs).
 */
function fr(g: Rng, fmt: E.Fmt): number {
  if (g.chance(0.2)) return g.int(32);
  return (fmt === 'd' ? 0 : 16) + g.int(16);
}
/** A divisor register: often x0 (division by zero) to hit the ISA §7.2 special cases. */
function divisor(g: Rng, name: string): number {
  return name.includes('div') || name.includes('rem') ? (g.chance(0.15) ? 0 : g.pick(ALL)) : g.pick(ALL);
}
function alignedOff(g: Rng, size: number): number {
  return g.range(-2048 / size, 2048 / size - 1) * size;
}
/** A base register and naturally aligned offset that address the scratch buffer. */
function scratchAddr(g: Rng, size: number): [number, number] {
  if (g.chance(0.6)) return [GP, alignedOff(g, size)];
  return [g.chance(0.5) ? SP : S0, g.int(2048 / size) * size];
}

export interface GenerateOptions {
  seed: number;
  /** Number of groups (each 1–6 instructions). */
  groups: number;
  /** Restrict to these classes (default: all, equally likely). */
  classes?: readonly string[];
}

export function generate(opts: GenerateOptions): Program {
  const g = new Rng(opts.seed);
  const names = opts.classes ?? CLASS_NAMES;
  for (const n of names) if (!(n in CLASSES)) throw new RangeError(`unknown instruction class ${n}`);
  const x = Array.from({ length: 32 }, (_, i) => (i === 0 ? 0n : value(g)));
  const f = Array.from({ length: 32 }, (_, i) => fvalue(g, i));
  const fcsr = (g.range(0, 4) << 5) | g.int(32);
  const scratch = new Uint8Array(SCRATCH_SIZE);
  const dv = new DataView(scratch.buffer);
  for (let o = 0; o < SCRATCH_SIZE; o += 8) dv.setBigUint64(o, g.chance(0.5) ? value(g) : fvalue(g, g.int(32)), true);
  const groups: Group[] = [];
  for (let i = 0; i < opts.groups; i++) groups.push(CLASSES[g.pick(names)]!(g));
  return { seed: opts.seed, x, f, fcsr, scratch, groups };
}
