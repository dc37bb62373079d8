// A tiny RV64 instruction encoder for hand-assembled test programs
// (unprivileged ISA 20191213 §2.2–2.3 base formats). Tests only; not an assembler.

const r = (f7: number, rs2: number, rs1: number, f3: number, rd: number, op: number): number =>
  ((f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
const i = (imm: number, rs1: number, f3: number, rd: number, op: number): number =>
  (((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
const s = (imm: number, rs2: number, rs1: number, f3: number, op: number): number =>
  ((((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | op) >>> 0;
const b = (imm: number, rs2: number, rs1: number, f3: number): number =>
  ((((imm >> 12) & 1) << 31) | (((imm >> 5) & 0x3f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (((imm >> 1) & 0xf) << 8) | (((imm >> 11) & 1) << 7) | 0x63) >>> 0;

export const A = {
  lui: (rd: number, imm20: number) => (((imm20 & 0xfffff) << 12) | (rd << 7) | 0x37) >>> 0,
  auipc: (rd: number, imm20: number) => (((imm20 & 0xfffff) << 12) | (rd << 7) | 0x17) >>> 0,
  jal: (rd: number, off: number) =>
    ((((off >> 20) & 1) << 31) | (((off >> 1) & 0x3ff) << 21) | (((off >> 11) & 1) << 20) | (((off >> 12) & 0xff) << 12) | (rd << 7) | 0x6f) >>> 0,
  jalr: (rd: number, rs1: number, off: number) => i(off, rs1, 0, rd, 0x67),
  beq: (rs1: number, rs2: number, off: number) => b(off, rs2, rs1, 0),
  bne: (rs1: number, rs2: number, off: number) => b(off, rs2, rs1, 1),
  blt: (rs1: number, rs2: number, off: number) => b(off, rs2, rs1, 4),
  bltu: (rs1: number, rs2: number, off: number) => b(off, rs2, rs1, 6),
  lb: (rd: number, rs1: number, off: number) => i(off, rs1, 0, rd, 0x03),
  lw: (rd: number, rs1: number, off: number) => i(off, rs1, 2, rd, 0x03),
  ld: (rd: number, rs1: number, off: number) => i(off, rs1, 3, rd, 0x03),
  lbu: (rd: number, rs1: number, off: number) => i(off, rs1, 4, rd, 0x03),
  lwu: (rd: number, rs1: number, off: number) => i(off, rs1, 6, rd, 0x03),
  sb: (rs2: number, rs1: number, off: number) => s(off, rs2, rs1, 0, 0x23),
  sw: (rs2: number, rs1: number, off: number) => s(off, rs2, rs1, 2, 0x23),
  sd: (rs2: number, rs1: number, off: number) => s(off, rs2, rs1, 3, 0x23),
  addi: (rd: number, rs1: number, imm: number) => i(imm, rs1, 0, rd, 0x13),
  slli: (rd: number, rs1: number, sh: number) => i(sh, rs1, 1, rd, 0x13),
  srli: (rd: number, rs1: number, sh: number) => i(sh, rs1, 5, rd, 0x13),
  srai: (rd: number, rs1: number, sh: number) => i(sh | 0x400, rs1, 5, rd, 0x13),
  andi: (rd: number, rs1: number, imm: number) => i(imm, rs1, 7, rd, 0x13),
  ori: (rd: number, rs1: number, imm: number) => i(imm, rs1, 6, rd, 0x13),
  addiw: (rd: number, rs1: number, imm: number) => i(imm, rs1, 0, rd, 0x1b),
  add: (rd: number, rs1: number, rs2: number) => r(0, rs2, rs1, 0, rd, 0x33),
  sub: (rd: number, rs1: number, rs2: number) => r(0x20, rs2, rs1, 0, rd, 0x33),
  sltu: (rd: number, rs1: number, rs2: number) => r(0, rs2, rs1, 3, rd, 0x33),
  mul: (rd: number, rs1: number, rs2: number) => r(1, rs2, rs1, 0, rd, 0x33),
  mulh: (rd: number, rs1: number, rs2: number) => r(1, rs2, rs1, 1, rd, 0x33),
  mulhsu: (rd: number, rs1: number, rs2: number) => r(1, rs2, rs1, 2, rd, 0x33),
  mulhu: (rd: number, rs1: number, rs2: number) => r(1, rs2, rs1, 3, rd, 0x33),
  div: (rd: number, rs1: number, rs2: number) => r(1, rs2, rs1, 4, rd, 0x33),
  divu: (rd: number, rs1: number, rs2: number) => r(1, rs2, rs1, 5, rd, 0x33),
  rem: (rd: number, rs1: number, rs2: number) => r(1, rs2, rs1, 6, rd, 0x33),
  remu: (rd: number, rs1: number, rs2: number) => r(1, rs2, rs1, 7, rd, 0x33),
  divw: (rd: number, rs1: number, rs2: number) => r(1, rs2, rs1, 4, rd, 0x3b),
  remw: (rd: number, rs1: number, rs2: number) => r(1, rs2, rs1, 6, rd, 0x3b),
  addw: (rd: number, rs1: number, rs2: number) => r(0, rs2, rs1, 0, rd, 0x3b),
  sraw: (rd: number, rs1: number, rs2: number) => r(0x20, rs2, rs1, 5, rd, 0x3b),
  lr_d: (rd: number, rs1: number) => r(0x02 << 2, 0, rs1, 3, rd, 0x2f),
  sc_d: (rd: number, rs1: number, rs2: number) => r(0x03 << 2, rs2, rs1, 3, rd, 0x2f),
  lr_w: (rd: number, rs1: number) => r(0x02 << 2, 0, rs1, 2, rd, 0x2f),
  sc_w: (rd: number, rs1: number, rs2: number) => r(0x03 << 2, rs2, rs1, 2, rd, 0x2f),
  amoadd_d: (rd: number, rs1: number, rs2: number) => r(0x00 << 2, rs2, rs1, 3, rd, 0x2f),
  amoadd_w: (rd: number, rs1: number, rs2: number) => r(0x00 << 2, rs2, rs1, 2, rd, 0x2f),
  amoswap_d: (rd: number, rs1: number, rs2: number) => r(0x01 << 2, rs2, rs1, 3, rd, 0x2f),
  amomax_w: (rd: number, rs1: number, rs2: number) => r(0x14 << 2, rs2, rs1, 2, rd, 0x2f),
  amominu_d: (rd: number, rs1: number, rs2: number) => r(0x18 << 2, rs2, rs1, 3, rd, 0x2f),
  fence_i: () => 0x0000100f,
  ecall: () => 0x00000073,
  ebreak: () => 0x00100073,
  mret: () => 0x30200073,
  sret: () => 0x10200073,
  wfi: () => 0x10500073,
  sfence_vma: (rs1 = 0, rs2 = 0) => r(0x09, rs2, rs1, 0, 0, 0x73),
  csrrw: (rd: number, csr: number, rs1: number) => i(csr, rs1, 1, rd, 0x73),
  csrrs: (rd: number, csr: number, rs1: number) => i(csr, rs1, 2, rd, 0x73),
  csrrc: (rd: number, csr: number, rs1: number) => i(csr, rs1, 3, rd, 0x73),
  csrrwi: (rd: number, csr: number, uimm: number) => i(csr, uimm, 5, rd, 0x73),
  fld: (rd: number, rs1: number, off: number) => i(off, rs1, 3, rd, 0x07),
  flw: (rd: number, rs1: number, off: number) => i(off, rs1, 2, rd, 0x07),
  fsd: (rs2: number, rs1: number, off: number) => s(off, rs2, rs1, 3, 0x27),
  fadd_d: (rd: number, rs1: number, rs2: number, rm = 7) => r(0x01, rs2, rs1, rm, rd, 0x53),
  fadd_s: (rd: number, rs1: number, rs2: number, rm = 7) => r(0x00, rs2, rs1, rm, rd, 0x53),
  fmv_x_w: (rd: number, rs1: number) => r(0x70, 0, rs1, 0, rd, 0x53),
  fmv_d_x: (rd: number, rs1: number) => r(0x79, 0, rs1, 0, rd, 0x53),
  fsgnjn_d: (rd: number, rs1: number, rs2: number) => r(0x11, rs2, rs1, 1, rd, 0x53),
  fcvt_w_d: (rd: number, rs1: number, rm = 1) => r(0x61, 0, rs1, rm, rd, 0x53),
  fcvt_d_l: (rd: number, rs1: number, rm = 7) => r(0x69, 2, rs1, rm, rd, 0x53),
  feq_d: (rd: number, rs1: number, rs2: number) => r(0x51, rs2, rs1, 2, rd, 0x53),
  fmadd_d: (rd: number, rs1: number, rs2: number, rs3: number, rm = 7) => ((rs3 << 27) | (1 << 25) | (rs2 << 20) | (rs1 << 15) | (rm << 12) | (rd << 7) | 0x43) >>> 0,
};

const sext12 = (v: bigint): bigint => BigInt.asIntN(12, v);

/** Load a 64-bit constant (the usual lui/addiw/slli/addi expansion). */
export function li(rd: number, value: bigint): number[] {
  const v = BigInt.asIntN(64, value);
  if (v >= -2048n && v < 2048n) return [A.addi(rd, 0, Number(v))];
  const lo = sext12(v & 0xfffn);
  if (v >= -(1n << 31n) && v < 1n << 31n) {
    const hi = Number(((v - lo) >> 12n) & 0xfffffn);
    return lo === 0n ? [A.lui(rd, hi)] : [A.lui(rd, hi), A.addiw(rd, rd, Number(lo))];
  }
  let h = (v - lo) >> 12n;
  let shift = 12;
  while ((h & 1n) === 0n) { h >>= 1n; shift++; }
  const out = [...li(rd, h), A.slli(rd, rd, shift)];
  if (lo !== 0n) out.push(A.addi(rd, rd, Number(lo)));
  return out;
}

/** Little-endian bytes of a program: numbers are 32-bit instructions, { c: n } a 16-bit one. */
export function assemble(code: (number | { c: number })[]): Uint8Array {
  const bytes: number[] = [];
  for (const w of code) {
    if (typeof w === 'number') bytes.push(w & 0xff, (w >>> 8) & 0xff, (w >>> 16) & 0xff, (w >>> 24) & 0xff);
    else bytes.push(w.c & 0xff, (w.c >>> 8) & 0xff);
  }
  return Uint8Array.from(bytes);
}

export const REG = { zero: 0, ra: 1, sp: 2, gp: 3, tp: 4, t0: 5, t1: 6, t2: 7, s0: 8, s1: 9, a0: 10, a1: 11, a2: 12, a3: 13, a4: 14, a5: 15, a6: 16, a7: 17, t3: 28, t4: 29, t5: 30, t6: 31 } as const;
