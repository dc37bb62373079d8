// Differential checks of instructions that must trap. qemu-riscv64 turns a
// U-mode exception into a signal (illegal instruction → SIGILL, misaligned
// → SIGBUS, access fault → SIGSEGV, breakpoint → SIGTRAP); our hart must
// stop with an exception of the matching cause (privileged spec §3.1.15,
// Table 3.6) at the trapping instruction.

import * as E from './encode.ts';
import type { Insn } from './encode.ts';
import { CLASSES, GP, Rng, generate } from './generator.ts';
import type { Group, Program } from './generator.ts';
import { assemble, toElf } from './image.ts';
import { execQemu } from './qemu.ts';
import { runSnippet } from '../hart/snippet.ts';
import type { EngineKind } from '../engine.ts';

export interface TrapCase {
  readonly name: string;
  /** Set-up instructions, then the instruction that must trap (last). */
  readonly insns: Insn[];
  readonly signal: 'SIGILL' | 'SIGBUS' | 'SIGSEGV' | 'SIGTRAP';
}

/** mcause values each qemu-user signal stands for. */
const CAUSES: Record<TrapCase['signal'], readonly bigint[]> = {
  SIGILL: [2n],
  SIGTRAP: [3n],
  // A misaligned access may raise address-misaligned or access-fault (ISA §2.6, §8.4 for AMOs).
  SIGBUS: [4n, 5n, 6n, 7n],
  SIGSEGV: [5n, 7n],
};

const raw = (word: number, size: 2 | 4, asm: string): Insn => ({ word, size, asm });
const WRITABLE = [1, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 28, 29, 30, 31];

/** The trap kinds, each a function of a random source. */
export const TRAP_KINDS: Record<string, (g: Rng) => TrapCase> = {
  // rm 5 and 6 are reserved (ISA §11.2).
  'rm-reserved': (g) => ({ name: 'rm-reserved', signal: 'SIGILL', insns: [E.farith(g.pick(E.FARITH), g.chance(0.5) ? 's' : 'd', g.int(32), g.int(32), g.int(32), g.pick([5, 6]))] }),
  // A dynamic-rm instruction with frm 5–7 is illegal (ISA §11.2).
  'frm-invalid': (g) => ({
    name: 'frm-invalid', signal: 'SIGILL',
    insns: [E.csr('csrrwi', 0, 2, g.range(5, 7)), g.chance(0.5) ? E.fsqrt('d', g.int(32), g.int(32), 7) : E.fma('fmadd', 's', g.int(32), g.int(32), g.int(32), g.int(32), 7)],
  }),
  // Reserved RVC encodings (ISA §16.x: nzimm = 0, rd = 0) and the all-zero parcel.
  'c-reserved': (g) => ({
    name: 'c-reserved', signal: 'SIGILL',
    insns: [g.pick([
      raw(0x0000, 2, '.2byte 0x0000 (illegal)'), raw(0x6101, 2, 'c.addi16sp sp, 0 (reserved)'), raw(0x6281, 2, 'c.lui x5, 0 (reserved)'),
      raw(0x4002, 2, 'c.lwsp x0 (reserved)'), raw(0x6002, 2, 'c.ldsp x0 (reserved)'), raw(0x8002, 2, 'c.jr x0 (reserved)'),
      raw(0x2001, 2, 'c.addiw x0 (reserved)'), raw(0x0008, 2, 'c.addi4spn x10, sp, 0 (reserved)'),
    ])],
  }),
  // Machine/supervisor CSRs and returns are not accessible from U-mode (privileged spec §2.1, §3.3.2).
  'privileged': (g) => ({
    name: 'privileged', signal: 'SIGILL',
    insns: [g.pick([
      E.csr('csrrs', g.pick(WRITABLE), 0x300, 0), E.csr('csrrs', g.pick(WRITABLE), 0x100, 0), E.csr('csrrw', 0, 0x180, 0),
      E.csr('csrrs', g.pick(WRITABLE), 0x341, 0), E.csr('csrrw', 0, 0xc00, g.pick(WRITABLE)),
      raw(0x10200073, 4, 'sret'), raw(0x30200073, 4, 'mret'),
    ])],
  }),
  'misaligned-amo': (g) => {
    const d = g.chance(0.5), t = g.pick(WRITABLE);
    const off = g.range(-100, 100) * 8 + g.pick(d ? [1, 2, 4, 7] : [1, 2, 3]);
    // Not SC: qemu 7.2 checks the reservation first, so a misaligned SC without one just fails (exit 0).
    const name = g.pick([...E.AMOS, 'lr']);
    return { name: 'misaligned-amo', signal: 'SIGBUS', insns: [E.opImm('addi', t, GP, off), E.amo(name, d, false, false, g.pick(WRITABLE), t, g.pick(WRITABLE))] };
  },
  // Nothing is mapped at address 0 (qemu-user) and no RAM is there on our bare hart.
  'unmapped': (g) => ({
    name: 'unmapped', signal: 'SIGSEGV',
    insns: [g.chance(0.5) ? E.load(g.pick(E.LOADS), g.pick(WRITABLE), 0, g.range(0, 255) * 8) : E.store(g.pick(E.STORES), g.pick(WRITABLE), 0, g.range(0, 255) * 8)],
  }),
  'ebreak': (g) => ({ name: 'ebreak', signal: 'SIGTRAP', insns: [g.chance(0.5) ? raw(0x00100073, 4, 'ebreak') : raw(0x9002, 2, 'c.ebreak')] }),
};
export const TRAP_KIND_NAMES = Object.keys(TRAP_KINDS);

const PREFIX_CLASSES = Object.keys(CLASSES).filter((c) => !c.includes('jump') && !['rv64i.branch', 'rv64i.jal', 'rv64i.jalr'].includes(c));

/** A program: some random non-jumping groups, then the trap case as the last group. */
export function trapProgram(seed: number, kind: string, prefixGroups = 20): { program: Program; kase: TrapCase } {
  const make = TRAP_KINDS[kind];
  if (!make) throw new RangeError(`unknown trap kind ${kind} (known: ${TRAP_KIND_NAMES.join(', ')})`);
  const base = generate({ seed, groups: prefixGroups, classes: PREFIX_CLASSES });
  const kase = make(new Rng(seed ^ 0x5a5a5a5a));
  const g: Group = { cls: `trap.${kase.name}`, size: kase.insns.reduce((s, i) => s + i.size, 0), build: () => kase.insns };
  return { program: { ...base, groups: [...base.groups, g] }, kase };
}

/** Run a trap program on both sides; null when they agree, else a description of the disagreement. */
export async function checkTrap(seed: number, kind: string, engine: EngineKind = 'interp'): Promise<string | null> {
  const { program, kase } = trapProgram(seed, kind);
  const img = assemble(program);
  const last = img.listing.filter((l) => l.group === program.groups.length - 1).at(-1)!;
  const q = await execQemu(toElf(img));
  const r = runSnippet({ ram: img.segment, entry: BigInt(img.entry), maxInstructions: img.bodyInsns + 1000, privilege: 'U', engine });
  const what = `seed ${seed} ${kind}: ${last.insn.asm} (0x${last.insn.word.toString(16)}) at 0x${last.addr.toString(16)}`;
  if (q.signal !== kase.signal) return `${what}: qemu ended with ${q.signal ?? `exit ${String(q.status)}`}, expected ${kase.signal} — a generator assumption, not a hart bug`;
  if (r.exit.kind !== 'trap') return `${what}: qemu ${q.signal}, ours stopped with ${r.exit.kind} at pc 0x${r.pc.toString(16)}`;
  if (!CAUSES[kase.signal].includes(r.exit.cause)) return `${what}: qemu ${q.signal}, ours trapped with cause ${r.exit.cause} (expected ${CAUSES[kase.signal].join(' or ')})`;
  if (r.pc !== BigInt(last.addr)) return `${what}: ours trapped (cause ${r.exit.cause}) at pc 0x${r.pc.toString(16)} instead`;
  return null;
}
