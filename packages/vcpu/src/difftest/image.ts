// Lays a generated program out in memory and wraps it with a prologue that
// loads every register from a data block and an epilogue that dumps them.
//
//   BASE                 prologue | body (the groups) | epilogue
//   DATA  (page-aligned) x0..x31, f0..f31, fcsr initial values (8 bytes each)
//   SCRATCH (4 KiB)      the buffer loads, stores and AMOs use
//   DUMP  (512 bytes)    x1..x31, f0..f31, fcsr after the body
//
// The epilogue then does write(1, SCRATCH, 4096 + 512) and exit(0) (Linux
// riscv64 syscalls 64 and 93, number in a7, ISA ECALL): under qemu-riscv64
// that region arrives on stdout; our hart stops at that first ECALL and the
// same region is read back from its RAM. Comparing the region compares all
// registers, fcsr and the scratch memory.

import * as E from './encode.ts';
import type { Insn } from './encode.ts';
import { GP, S0, SP, SCRATCH_SIZE } from './generator.ts';
import type { Program } from './generator.ts';
import { writeElf } from './elf.ts';

export const BASE = 0x8000_0000;
export const DUMP_SIZE = 512;
export const OUT_SIZE = SCRATCH_SIZE + DUMP_SIZE;

export interface ListedInsn {
  readonly addr: number;
  readonly insn: Insn;
  /** Index of the group in the program, or -1 for prologue/epilogue. */
  readonly group: number;
}

export interface Image {
  /** The loaded segment, starting at BASE. */
  readonly segment: Uint8Array;
  readonly entry: number;
  readonly scratch: number;
  readonly bodyStart: number;
  readonly bodyEnd: number;
  /** Instructions in the body (group >= 0) and around it. */
  readonly listing: ListedInsn[];
  /** Number of body instructions (not counting prologue/epilogue). */
  readonly bodyInsns: number;
}

/** auipc+addi pair giving rd = target, placed at pc. */
function la(rd: number, pc: number, target: number): Insn[] {
  const delta = target - pc;
  const hi = (delta + 0x800) >> 12;
  return [E.auipc(rd, hi), E.opImm('addi', rd, rd, delta - hi * 4096)];
}

const PROLOGUE_SIZE = 8 + 32 * 4 + 8 + 8 + 4 * 3 + 27 * 4 + 4;

function prologue(pc: number, data: number, scratch: number): Insn[] {
  const out: Insn[] = [...la(5, pc, data)];
  for (let i = 0; i < 32; i++) out.push(E.fload('fld', i, 5, 256 + 8 * i));
  out.push(E.load('ld', 6, 5, 512), E.csr('csrrw', 0, 3, 6)); // fscsr
  out.push(...la(SP, pc + out.length * 4, scratch));
  out.push(E.opImm('addi', S0, SP, 0), E.opImm('addi', GP, SP, 2047), E.opImm('addi', GP, GP, 1));
  for (let i = 1; i < 32; i++) if (i !== SP && i !== GP && i !== S0 && i !== 5) out.push(E.load('ld', i, 5, 8 * i));
  out.push(E.load('ld', 5, 5, 40));
  return out;
}

function epilogue(pc: number, scratch: number): Insn[] {
  const out: Insn[] = [E.opImm('addi', GP, GP, 2047), E.opImm('addi', GP, GP, 1)]; // gp = DUMP
  for (let i = 1; i < 32; i++) out.push(E.store('sd', i, GP, 8 * (i - 1)));
  for (let i = 0; i < 32; i++) out.push(E.fstore('fsd', i, GP, 248 + 8 * i));
  out.push(E.csr('csrrs', 5, 3, 0), E.store('sd', 5, GP, 504));
  out.push(E.opImm('addi', 10, 0, 1));
  out.push(...la(11, pc + out.length * 4, scratch));
  out.push(E.lui(12, 1), E.opImm('addi', 12, 12, DUMP_SIZE), E.opImm('addi', 17, 0, 64), E.ECALL);
  out.push(E.opImm('addi', 10, 0, 0), E.opImm('addi', 17, 0, 93), E.ECALL);
  return out;
}

/** Lay out `program` keeping only the groups whose indices are in `keep` (default: all). */
export function assemble(program: Program, keep?: readonly number[]): Image {
  const idx = keep ?? program.groups.map((_, i) => i);
  const groups = idx.map((i) => program.groups[i]!);
  const starts: number[] = [];
  let pc = BASE + PROLOGUE_SIZE;
  const bodyStart = pc;
  for (const g of groups) {
    starts.push(pc);
    pc += g.size;
  }
  const bodyEnd = pc;
  starts.push(bodyEnd);
  const codeEnd = bodyEnd + 4 * 80;
  const data = Math.ceil(codeEnd / 4096) * 4096;
  const scratch = data + 4096;
  const segment = new Uint8Array(scratch + OUT_SIZE - BASE);
  const dv = new DataView(segment.buffer);
  const listing: ListedInsn[] = [];
  const emit = (addr: number, insns: Insn[], group: number): number => {
    for (const ins of insns) {
      if (ins.size === 4) dv.setUint32(addr - BASE, ins.word, true);
      else dv.setUint16(addr - BASE, ins.word, true);
      listing.push({ addr, insn: ins, group });
      addr += ins.size;
    }
    return addr;
  };
  const pro = prologue(BASE, data, scratch);
  if (emit(BASE, pro, -1) !== bodyStart) throw new Error('prologue size mismatch');
  let bodyInsns = 0;
  groups.forEach((g, k) => {
    const target = starts[Math.min(k + 1 + (g.skip ?? 0), groups.length)]!;
    const insns = g.build(starts[k]!, target);
    bodyInsns += insns.length;
    if (emit(starts[k]!, insns, idx[k]!) !== starts[k + 1]) throw new Error(`group ${idx[k]} (${g.cls}) size mismatch`);
  });
  const epi = epilogue(bodyEnd, scratch);
  if (emit(bodyEnd, epi, -1) > codeEnd) throw new Error('epilogue too long');
  for (let i = 0; i < 32; i++) dv.setBigUint64(data - BASE + 8 * i, program.x[i]!, true);
  for (let i = 0; i < 32; i++) dv.setBigUint64(data - BASE + 256 + 8 * i, program.f[i]!, true);
  dv.setBigUint64(data - BASE + 512, BigInt(program.fcsr), true);
  segment.set(program.scratch, scratch - BASE);
  return { segment, entry: BASE, scratch, bodyStart, bodyEnd, listing, bodyInsns };
}

export function toElf(img: Image): Uint8Array {
  return writeElf(img.segment, BigInt(BASE), BigInt(img.entry));
}

/** Name the byte at `off` of the output region (scratch buffer, then the register dump). */
export function describeOffset(off: number): string {
  if (off < SCRATCH_SIZE) return `mem[scratch+0x${(off & ~7).toString(16)}]`;
  const d = off - SCRATCH_SIZE;
  if (d < 248) return `x${(d >> 3) + 1}`;
  if (d < 504) return `f${(d - 248) >> 3}`;
  return 'fcsr';
}
