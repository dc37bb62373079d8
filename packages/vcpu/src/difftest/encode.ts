// RV64GC instruction encoders for the differential tester. Each returns the
// encoding together with its assembly text in GNU as syntax (x/f register
// numbers, explicit rounding modes, explicit `c.` mnemonics), so a generated
// program can be shown to a person and re-assembled by binutils to check the
// encoder (encode.test.ts). Formats: RISC-V unprivileged ISA 20191213 §2.2–2.3
// (base), §16 (RVC), §11–12 (F/D), §8 (A), Table 24.1–24.2 (opcode map).

export interface Insn {
  /** Instruction bits (16-bit ones in the low half). */
  readonly word: number;
  readonly size: 2 | 4;
  readonly asm: string;
}

export class EncodeError extends Error {
  readonly code = 'ERR_DIFFTEST_ENCODE';
}

function check(cond: boolean, what: string): void {
  if (!cond) throw new EncodeError(what);
}

const x = (r: number): string => `x${r}`;
const f = (r: number): string => `f${r}`;
const RM_NAMES = ['rne', 'rtz', 'rdn', 'rup', 'rmm', 'rm5', 'rm6', 'dyn'] as const;

const i32 = (n: number): Insn['word'] => n >>> 0;

function rType(op: number, rd: number, f3: number, rs1: number, rs2: number, f7: number): number {
  return i32((f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op);
}
function iType(op: number, rd: number, f3: number, rs1: number, imm: number): number {
  check(imm >= -2048 && imm < 2048, `I-immediate ${imm} out of range`);
  return i32(((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op);
}
function sType(op: number, f3: number, rs1: number, rs2: number, imm: number): number {
  check(imm >= -2048 && imm < 2048, `S-immediate ${imm} out of range`);
  return i32((((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | op);
}
function bType(f3: number, rs1: number, rs2: number, off: number): number {
  check(off >= -4096 && off < 4096 && off % 2 === 0, `branch offset ${off} out of range`);
  return i32(
    (((off >> 12) & 1) << 31) | (((off >> 5) & 0x3f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) |
      (((off >> 1) & 0xf) << 8) | (((off >> 11) & 1) << 7) | 0x63,
  );
}

// ---------------------------------------------------------------- RV64I + M
const OP_F3: Record<string, [number, number]> = {
  add: [0, 0], sub: [0, 0x20], sll: [1, 0], slt: [2, 0], sltu: [3, 0], xor: [4, 0], srl: [5, 0], sra: [5, 0x20], or: [6, 0], and: [7, 0],
  mul: [0, 1], mulh: [1, 1], mulhsu: [2, 1], mulhu: [3, 1], div: [4, 1], divu: [5, 1], rem: [6, 1], remu: [7, 1],
};
const OP32_F3: Record<string, [number, number]> = {
  addw: [0, 0], subw: [0, 0x20], sllw: [1, 0], srlw: [5, 0], sraw: [5, 0x20],
  mulw: [0, 1], divw: [4, 1], divuw: [5, 1], remw: [6, 1], remuw: [7, 1],
};

/** Register-register ALU/M op (OP and OP-32 major opcodes). */
export function op(name: string, rd: number, rs1: number, rs2: number): Insn {
  const a = OP_F3[name], b = OP32_F3[name];
  const [f3, f7] = a ?? b ?? [-1, -1];
  check(f3 >= 0, `unknown R-type op ${name}`);
  return { word: rType(a ? 0x33 : 0x3b, rd, f3, rs1, rs2, f7), size: 4, asm: `${name} ${x(rd)}, ${x(rs1)}, ${x(rs2)}` };
}

const IMM_F3: Record<string, number> = { addi: 0, slti: 2, sltiu: 3, xori: 4, ori: 6, andi: 7 };
export const IMM_ALL = Object.keys(IMM_F3);
export function opImm(name: string, rd: number, rs1: number, imm: number): Insn {
  if (name === 'addiw') return { word: iType(0x1b, rd, 0, rs1, imm), size: 4, asm: `addiw ${x(rd)}, ${x(rs1)}, ${imm}` };
  const f3 = IMM_F3[name];
  check(f3 !== undefined, `unknown I-type op ${name}`);
  return { word: iType(0x13, rd, f3!, rs1, imm), size: 4, asm: `${name} ${x(rd)}, ${x(rs1)}, ${imm}` };
}

/** slli/srli/srai (6-bit shamt) and slliw/srliw/sraiw (5-bit). */
export function shiftImm(name: string, rd: number, rs1: number, shamt: number): Insn {
  const w = name.endsWith('w');
  check(shamt >= 0 && shamt < (w ? 32 : 64), `shift amount ${shamt} out of range for ${name}`);
  const base = w ? name.slice(0, -1) : name;
  const f3 = base === 'slli' ? 1 : 5;
  const hi = base === 'srai' ? 0x400 : 0;
  check(['slli', 'srli', 'srai'].includes(base), `unknown shift ${name}`);
  return { word: i32(((hi | shamt) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | (w ? 0x1b : 0x13)), size: 4, asm: `${name} ${x(rd)}, ${x(rs1)}, ${shamt}` };
}

export function lui(rd: number, imm20: number): Insn {
  return { word: i32(((imm20 & 0xfffff) << 12) | (rd << 7) | 0x37), size: 4, asm: `lui ${x(rd)}, 0x${(imm20 & 0xfffff).toString(16)}` };
}
export function auipc(rd: number, imm20: number): Insn {
  return { word: i32(((imm20 & 0xfffff) << 12) | (rd << 7) | 0x17), size: 4, asm: `auipc ${x(rd)}, 0x${(imm20 & 0xfffff).toString(16)}` };
}

const BR_F3: Record<string, number> = { beq: 0, bne: 1, blt: 4, bge: 5, bltu: 6, bgeu: 7 };
export const BRANCHES = Object.keys(BR_F3);
export function branch(name: string, rs1: number, rs2: number, off: number): Insn {
  return { word: bType(BR_F3[name]!, rs1, rs2, off), size: 4, asm: `${name} ${x(rs1)}, ${x(rs2)}, .${off >= 0 ? '+' : ''}${off}` };
}
export function jal(rd: number, off: number): Insn {
  check(off >= -(1 << 20) && off < 1 << 20 && off % 2 === 0, `jal offset ${off} out of range`);
  const w = (((off >> 20) & 1) << 31) | (((off >> 1) & 0x3ff) << 21) | (((off >> 11) & 1) << 20) | (((off >> 12) & 0xff) << 12) | (rd << 7) | 0x6f;
  return { word: i32(w), size: 4, asm: `jal ${x(rd)}, .${off >= 0 ? '+' : ''}${off}` };
}
export function jalr(rd: number, rs1: number, imm: number): Insn {
  return { word: iType(0x67, rd, 0, rs1, imm), size: 4, asm: `jalr ${x(rd)}, ${imm}(${x(rs1)})` };
}

const LD_F3: Record<string, number> = { lb: 0, lh: 1, lw: 2, ld: 3, lbu: 4, lhu: 5, lwu: 6 };
const ST_F3: Record<string, number> = { sb: 0, sh: 1, sw: 2, sd: 3 };
export const LOADS = Object.keys(LD_F3);
export const STORES = Object.keys(ST_F3);
export function load(name: string, rd: number, rs1: number, imm: number): Insn {
  return { word: iType(0x03, rd, LD_F3[name]!, rs1, imm), size: 4, asm: `${name} ${x(rd)}, ${imm}(${x(rs1)})` };
}
export function store(name: string, rs2: number, rs1: number, imm: number): Insn {
  return { word: sType(0x23, ST_F3[name]!, rs1, rs2, imm), size: 4, asm: `${name} ${x(rs2)}, ${imm}(${x(rs1)})` };
}
export function fload(name: 'flw' | 'fld', rd: number, rs1: number, imm: number): Insn {
  return { word: iType(0x07, rd, name === 'flw' ? 2 : 3, rs1, imm), size: 4, asm: `${name} ${f(rd)}, ${imm}(${x(rs1)})` };
}
export function fstore(name: 'fsw' | 'fsd', rs2: number, rs1: number, imm: number): Insn {
  return { word: sType(0x27, name === 'fsw' ? 2 : 3, rs1, rs2, imm), size: 4, asm: `${name} ${f(rs2)}, ${imm}(${x(rs1)})` };
}

const fenceSet = (b: number): string => ['i', 'o', 'r', 'w'].filter((_, k) => b & (8 >> k)).join('');
/** FENCE with non-empty predecessor/successor sets (ISA §2.7), FENCE.TSO, or FENCE.I (Zifencei, §3). */
export function fence(kind: 'fence' | 'fence.tso' | 'fence.i', pred = 0xf, succ = 0xf): Insn {
  if (kind === 'fence.i') return { word: 0x0000100f, size: 4, asm: 'fence.i' };
  if (kind === 'fence.tso') return { word: 0x8330000f, size: 4, asm: 'fence.tso' };
  check(pred > 0 && pred < 16 && succ > 0 && succ < 16, `fence sets ${pred}/${succ}`);
  return { word: i32((pred << 24) | (succ << 20) | 0x0f), size: 4, asm: `fence ${fenceSet(pred)}, ${fenceSet(succ)}` };
}

export const ECALL: Insn = { word: 0x73, size: 4, asm: 'ecall' };

// -------------------------------------------------------------------- Zicsr
const CSR_NAMES: Record<number, string> = { 1: 'fflags', 2: 'frm', 3: 'fcsr' };
const CSR_F3: Record<string, number> = { csrrw: 1, csrrs: 2, csrrc: 3, csrrwi: 5, csrrsi: 6, csrrci: 7 };
export function csr(name: string, rd: number, csrNum: number, rs1OrUimm: number): Insn {
  const f3 = CSR_F3[name];
  check(f3 !== undefined, `unknown CSR op ${name}`);
  const src = f3! >= 5 ? String(rs1OrUimm) : x(rs1OrUimm);
  return { word: i32((csrNum << 20) | (rs1OrUimm << 15) | (f3! << 12) | (rd << 7) | 0x73), size: 4, asm: `${name} ${x(rd)}, ${CSR_NAMES[csrNum] ?? csrNum}, ${src}` };
}

// ----------------------------------------------------------------------- A
const AMO_F5: Record<string, number> = {
  amoadd: 0, amoswap: 1, lr: 2, sc: 3, amoxor: 4, amoor: 8, amoand: 12, amomin: 16, amomax: 20, amominu: 24, amomaxu: 28,
};
export const AMOS = Object.keys(AMO_F5).filter((n) => n !== 'lr' && n !== 'sc');
/** AMO/LR/SC; `d` selects the .d form. rs2 is ignored (0) for lr. */
export function amo(name: string, d: boolean, aq: boolean, rl: boolean, rd: number, rs1: number, rs2: number): Insn {
  const f5 = AMO_F5[name];
  check(f5 !== undefined, `unknown AMO ${name}`);
  const src2 = name === 'lr' ? 0 : rs2;
  const w = (f5! << 27) | (Number(aq) << 26) | (Number(rl) << 25) | (src2 << 20) | (rs1 << 15) | ((d ? 3 : 2) << 12) | (rd << 7) | 0x2f;
  const sfx = `${d ? '.d' : '.w'}${aq && rl ? '.aqrl' : aq ? '.aq' : rl ? '.rl' : ''}`;
  const mn = name + sfx;
  const asm = name === 'lr' ? `${mn} ${x(rd)}, (${x(rs1)})` : `${mn} ${x(rd)}, ${x(src2)}, (${x(rs1)})`;
  return { word: i32(w), size: 4, asm };
}

// --------------------------------------------------------------------- F/D
export type Fmt = 's' | 'd';
const FMT = { s: 0, d: 1 } as const;
const FARITH_F5: Record<string, number> = { fadd: 0, fsub: 1, fmul: 2, fdiv: 3 };
export const FARITH = Object.keys(FARITH_F5);
/** fadd/fsub/fmul/fdiv.fmt with a rounding mode. */
export function farith(name: string, fmt: Fmt, rd: number, rs1: number, rs2: number, rm: number): Insn {
  return { word: rType(0x53, rd, rm, rs1, rs2, (FARITH_F5[name]! << 2) | FMT[fmt]), size: 4, asm: `${name}.${fmt} ${f(rd)}, ${f(rs1)}, ${f(rs2)}, ${RM_NAMES[rm]}` };
}
export function fsqrt(fmt: Fmt, rd: number, rs1: number, rm: number): Insn {
  return { word: rType(0x53, rd, rm, rs1, 0, (0x0b << 2) | FMT[fmt]), size: 4, asm: `fsqrt.${fmt} ${f(rd)}, ${f(rs1)}, ${RM_NAMES[rm]}` };
}
const FFIX: Record<string, [number, number]> = {
  fsgnj: [4, 0], fsgnjn: [4, 1], fsgnjx: [4, 2], fmin: [5, 0], fmax: [5, 1],
};
export const FSGNJ_MINMAX = Object.keys(FFIX);
export function fsgnjMinMax(name: string, fmt: Fmt, rd: number, rs1: number, rs2: number): Insn {
  const [f5, f3] = FFIX[name]!;
  return { word: rType(0x53, rd, f3, rs1, rs2, (f5 << 2) | FMT[fmt]), size: 4, asm: `${name}.${fmt} ${f(rd)}, ${f(rs1)}, ${f(rs2)}` };
}
const FCMP_F3: Record<string, number> = { fle: 0, flt: 1, feq: 2 };
export const FCMPS = Object.keys(FCMP_F3);
export function fcmp(name: string, fmt: Fmt, rd: number, rs1: number, rs2: number): Insn {
  return { word: rType(0x53, rd, FCMP_F3[name]!, rs1, rs2, (0x14 << 2) | FMT[fmt]), size: 4, asm: `${name}.${fmt} ${x(rd)}, ${f(rs1)}, ${f(rs2)}` };
}
export function fclass(fmt: Fmt, rd: number, rs1: number): Insn {
  return { word: rType(0x53, rd, 1, rs1, 0, (0x1c << 2) | FMT[fmt]), size: 4, asm: `fclass.${fmt} ${x(rd)}, ${f(rs1)}` };
}
/** fmv.x.w / fmv.x.d (float bits to integer register). */
export function fmvToX(fmt: Fmt, rd: number, rs1: number): Insn {
  return { word: rType(0x53, rd, 0, rs1, 0, (0x1c << 2) | FMT[fmt]), size: 4, asm: `fmv.x.${fmt === 's' ? 'w' : 'd'} ${x(rd)}, ${f(rs1)}` };
}
/** fmv.w.x / fmv.d.x (integer bits to float register; .w NaN-boxes). */
export function fmvFromX(fmt: Fmt, rd: number, rs1: number): Insn {
  return { word: rType(0x53, rd, 0, rs1, 0, (0x1e << 2) | FMT[fmt]), size: 4, asm: `fmv.${fmt === 's' ? 'w' : 'd'}.x ${f(rd)}, ${x(rs1)}` };
}
export const INT_KINDS = ['w', 'wu', 'l', 'lu'] as const;
/** fcvt.{w,wu,l,lu}.fmt: float to integer, saturating (ISA §11.7 Table 11.4). */
export function fcvtToInt(kind: (typeof INT_KINDS)[number], fmt: Fmt, rd: number, rs1: number, rm: number): Insn {
  return { word: rType(0x53, rd, rm, rs1, INT_KINDS.indexOf(kind), (0x18 << 2) | FMT[fmt]), size: 4, asm: `fcvt.${kind}.${fmt} ${x(rd)}, ${f(rs1)}, ${RM_NAMES[rm]}` };
}
/** fcvt.fmt.{w,wu,l,lu}: integer to float. Conversions that are always exact (to .d from 32-bit) use rm 0 and print none. */
export function fcvtFromInt(kind: (typeof INT_KINDS)[number], fmt: Fmt, rd: number, rs1: number, rm: number): Insn {
  const exact = fmt === 'd' && (kind === 'w' || kind === 'wu');
  const r = exact ? 0 : rm;
  return { word: rType(0x53, rd, r, rs1, INT_KINDS.indexOf(kind), (0x1a << 2) | FMT[fmt]), size: 4, asm: `fcvt.${fmt}.${kind} ${f(rd)}, ${x(rs1)}${exact ? '' : `, ${RM_NAMES[r]}`}` };
}
/** fcvt.s.d (rounds) and fcvt.d.s (exact, rm 0). */
export function fcvtFF(to: Fmt, rd: number, rs1: number, rm: number): Insn {
  if (to === 's') return { word: rType(0x53, rd, rm, rs1, 1, 0x20), size: 4, asm: `fcvt.s.d ${f(rd)}, ${f(rs1)}, ${RM_NAMES[rm]}` };
  return { word: rType(0x53, rd, 0, rs1, 0, 0x21), size: 4, asm: `fcvt.d.s ${f(rd)}, ${f(rs1)}` };
}
const FMA_OP: Record<string, number> = { fmadd: 0x43, fmsub: 0x47, fnmsub: 0x4b, fnmadd: 0x4f };
export const FMAS = Object.keys(FMA_OP);
export function fma(name: string, fmt: Fmt, rd: number, rs1: number, rs2: number, rs3: number, rm: number): Insn {
  return {
    word: i32((rs3 << 27) | (FMT[fmt] << 25) | (rs2 << 20) | (rs1 << 15) | (rm << 12) | (rd << 7) | FMA_OP[name]!),
    size: 4,
    asm: `${name}.${fmt} ${f(rd)}, ${f(rs1)}, ${f(rs2)}, ${f(rs3)}, ${RM_NAMES[rm]}`,
  };
}

// --------------------------------------------------------------------- RVC
const isC = (r: number): boolean => r >= 8 && r < 16;
const cr = (r: number): number => {
  check(isC(r), `register x${r} has no compressed encoding`);
  return r - 8;
};
const c16 = (w: number, asm: string): Insn => ({ word: w & 0xffff, size: 2, asm });
const bit = (v: number, b: number): number => (v >> b) & 1;

/** CI-format ALU ops: c.addi, c.addiw, c.li (6-bit signed imm), c.slli (6-bit shamt). */
export function cImm(name: 'c.addi' | 'c.addiw' | 'c.li' | 'c.slli', rd: number, imm: number): Insn {
  const [f3, q] = ({ 'c.addi': [0, 1], 'c.addiw': [1, 1], 'c.li': [2, 1], 'c.slli': [0, 2] } as const)[name];
  if (name === 'c.slli') check(imm > 0 && imm < 64, `c.slli shamt ${imm}`);
  else check(imm >= -32 && imm < 32, `${name} immediate ${imm}`);
  if (name === 'c.addiw') check(rd !== 0, 'c.addiw rd=0 is reserved');
  return c16((f3 << 13) | (bit(imm, 5) << 12) | (rd << 7) | ((imm & 0x1f) << 2) | q, `${name} ${x(rd)}, ${imm}`);
}
export function cLui(rd: number, imm6: number): Insn {
  check(rd !== 0 && rd !== 2 && imm6 !== 0 && imm6 >= -32 && imm6 < 32, `c.lui x${rd}, ${imm6}`);
  return c16((3 << 13) | (bit(imm6, 5) << 12) | (rd << 7) | ((imm6 & 0x1f) << 2) | 1, `c.lui ${x(rd)}, 0x${(imm6 & 0xfffff).toString(16)}`);
}
/** c.addi16sp: sp += nzimm (multiple of 16, -512..496). */
export function cAddi16sp(imm: number): Insn {
  check(imm !== 0 && imm % 16 === 0 && imm >= -512 && imm < 512, `c.addi16sp ${imm}`);
  const w = (3 << 13) | (bit(imm, 9) << 12) | (2 << 7) | (bit(imm, 4) << 6) | (bit(imm, 6) << 5) | (((imm >> 7) & 3) << 3) | (bit(imm, 5) << 2) | 1;
  return c16(w, `c.addi16sp x2, ${imm}`);
}
/** c.addi4spn: rd' = sp + nzuimm (multiple of 4, 4..1020). */
export function cAddi4spn(rd: number, imm: number): Insn {
  check(imm > 0 && imm < 1024 && imm % 4 === 0, `c.addi4spn ${imm}`);
  const w = (((imm >> 4) & 3) << 11) | (((imm >> 6) & 0xf) << 7) | (bit(imm, 2) << 6) | (bit(imm, 3) << 5) | (cr(rd) << 2);
  return c16(w, `c.addi4spn ${x(rd)}, x2, ${imm}`);
}
/** c.srli/c.srai/c.andi on rd'. */
export function cAluImm(name: 'c.srli' | 'c.srai' | 'c.andi', rd: number, imm: number): Insn {
  const f2 = { 'c.srli': 0, 'c.srai': 1, 'c.andi': 2 }[name];
  if (name === 'c.andi') check(imm >= -32 && imm < 32, `c.andi ${imm}`);
  else check(imm > 0 && imm < 64, `${name} shamt ${imm}`);
  return c16((4 << 13) | (bit(imm, 5) << 12) | (f2 << 10) | (cr(rd) << 7) | ((imm & 0x1f) << 2) | 1, `${name} ${x(rd)}, ${imm}`);
}
export const C_ALU = ['c.sub', 'c.xor', 'c.or', 'c.and', 'c.subw', 'c.addw'] as const;
export function cAlu(name: (typeof C_ALU)[number], rd: number, rs2: number): Insn {
  const i = C_ALU.indexOf(name);
  const w12 = i >= 4 ? 1 : 0;
  return c16((4 << 13) | (w12 << 12) | (3 << 10) | (cr(rd) << 7) | ((i & 3) << 5) | (cr(rs2) << 2) | 1, `${name} ${x(rd)}, ${x(rs2)}`);
}
export function cMvAdd(name: 'c.mv' | 'c.add', rd: number, rs2: number): Insn {
  check(rs2 !== 0, `${name} rs2=0 is another instruction`);
  return c16((4 << 13) | ((name === 'c.add' ? 1 : 0) << 12) | (rd << 7) | (rs2 << 2) | 2, `${name} ${x(rd)}, ${x(rs2)}`);
}
export function cJr(name: 'c.jr' | 'c.jalr', rs1: number): Insn {
  check(rs1 !== 0, `${name} rs1=0 is reserved`);
  return c16((4 << 13) | ((name === 'c.jalr' ? 1 : 0) << 12) | (rs1 << 7) | 2, `${name} ${x(rs1)}`);
}
export function cJ(off: number): Insn {
  check(off >= -2048 && off < 2048 && off % 2 === 0, `c.j offset ${off}`);
  const w = (5 << 13) | (bit(off, 11) << 12) | (bit(off, 4) << 11) | (((off >> 8) & 3) << 9) | (bit(off, 10) << 8) |
    (bit(off, 6) << 7) | (bit(off, 7) << 6) | (((off >> 1) & 7) << 3) | (bit(off, 5) << 2) | 1;
  return c16(w, `c.j .${off >= 0 ? '+' : ''}${off}`);
}
export function cBranch(name: 'c.beqz' | 'c.bnez', rs1: number, off: number): Insn {
  check(off >= -256 && off < 256 && off % 2 === 0, `${name} offset ${off}`);
  const w = ((name === 'c.beqz' ? 6 : 7) << 13) | (bit(off, 8) << 12) | (((off >> 3) & 3) << 10) | (cr(rs1) << 7) |
    (((off >> 6) & 3) << 5) | (((off >> 1) & 3) << 3) | (bit(off, 5) << 2) | 1;
  return c16(w, `${name} ${x(rs1)}, .${off >= 0 ? '+' : ''}${off}`);
}
export type CMem = 'c.lw' | 'c.ld' | 'c.fld' | 'c.sw' | 'c.sd' | 'c.fsd';
/** CL/CS loads and stores: register rs1' base, scaled unsigned offset. */
export function cMem(name: CMem, r: number, rs1: number, off: number): Insn {
  const word4 = name === 'c.lw' || name === 'c.sw';
  check(off >= 0 && off < (word4 ? 128 : 256) && off % (word4 ? 4 : 8) === 0, `${name} offset ${off}`);
  const f3 = { 'c.fld': 1, 'c.lw': 2, 'c.ld': 3, 'c.fsd': 5, 'c.sw': 6, 'c.sd': 7 }[name];
  const lo = word4 ? (bit(off, 2) << 6) | (bit(off, 6) << 5) : ((off >> 6) & 3) << 5;
  const w = (f3 << 13) | (((off >> 3) & 7) << 10) | (cr(rs1) << 7) | lo | (cr(r) << 2);
  const reg = name.includes('f') ? f(r) : x(r);
  return c16(w, `${name} ${reg}, ${off}(${x(rs1)})`);
}
export type CSp = 'c.lwsp' | 'c.ldsp' | 'c.fldsp' | 'c.swsp' | 'c.sdsp' | 'c.fsdsp';
/** CI/CSS sp-relative loads and stores. */
export function cSp(name: CSp, r: number, off: number): Insn {
  const word4 = name === 'c.lwsp' || name === 'c.swsp';
  check(off >= 0 && off < (word4 ? 256 : 512) && off % (word4 ? 4 : 8) === 0, `${name} offset ${off}`);
  const isLoad = name.includes('l') && !name.startsWith('c.s') && !name.startsWith('c.fs');
  const reg = name.startsWith('c.f') ? f(r) : x(r);
  let w: number;
  if (isLoad) {
    check(name === 'c.fldsp' || r !== 0, `${name} rd=0 is reserved`);
    const f3 = { 'c.fldsp': 1, 'c.lwsp': 2, 'c.ldsp': 3 }[name as 'c.fldsp'];
    const lo = word4 ? (((off >> 2) & 7) << 4) | (((off >> 6) & 3) << 2) : (((off >> 3) & 3) << 5) | (((off >> 6) & 7) << 2);
    w = (f3 << 13) | (bit(off, 5) << 12) | (r << 7) | lo | 2;
  } else {
    const f3 = { 'c.fsdsp': 5, 'c.swsp': 6, 'c.sdsp': 7 }[name as 'c.fsdsp'];
    const hi = word4 ? (((off >> 2) & 0xf) << 9) | (((off >> 6) & 3) << 7) : (((off >> 3) & 7) << 10) | (((off >> 6) & 7) << 7);
    w = (f3 << 13) | hi | (r << 2) | 2;
  }
  return c16(w, `${name} ${reg}, ${off}(x2)`);
}
