// The translator against its reference, the interpreter, and against
// qemu-riscv64: real hart cores (two wasm instances over separate shared
// memories), real generated modules, real qemu-user processes.
//
// Lockstep: the same program runs on an interpreter core and a translator
// core in batches of random size; after every batch pc, instret, privilege
// and all registers must be equal. Equal instret after every batch is the
// check that a translated block never runs past its budget, and that traps
// inside blocks are charged exactly as the interpreter charges them.
import { describe, expect, it } from 'vitest';
import { HartCore, createHartMemory } from '../hart/wasm.ts';
import { A, li, assemble } from '../hart/asm.ts';
import { RAM_BASE } from '../layout.ts';
import { Rng, generate } from '../difftest/generator.ts';
import { check, formatDivergence, minimise } from '../difftest/check.ts';
import { checkTrap, TRAP_KIND_NAMES } from '../difftest/trap.ts';
import { assemble as assembleImage } from '../difftest/image.ts';
import { formatLockstep, lockstepImage } from '../difftest/lockstep.ts';
import { Translator } from './translator.ts';

const RAM = 1 << 20;
const MIP_MTIP = 1 << 7;
const FENCE_I = 0x0000100f;

type Item = number | { label: string } | ((at: (l: string) => number, pc: number) => number);
/** A few-line assembler with labels: functions get (label → address, own address). */
function program(items: Item[], base = 0): Uint8Array {
  const labels = new Map<string, number>();
  let pc = base;
  for (const it of items) { if (typeof it === 'object') labels.set(it.label, pc); else pc += 4; }
  const at = (l: string): number => { const v = labels.get(l); if (v === undefined) throw new Error(`no label ${l}`); return v; };
  const words: number[] = [];
  pc = base;
  for (const it of items) {
    if (typeof it === 'object') continue;
    words.push(typeof it === 'number' ? it : it(at, pc));
    pc += 4;
  }
  return assemble(words);
}
const L = (label: string): Item => ({ label });
const bne = (a: number, b: number, l: string): Item => (at, pc) => A.bne(a, b, at(l) - pc);
const beq = (a: number, b: number, l: string): Item => (at, pc) => A.beq(a, b, at(l) - pc);
const blt = (a: number, b: number, l: string): Item => (at, pc) => A.blt(a, b, at(l) - pc);
const jal = (rd: number, l: string): Item => (at, pc) => A.jal(rd, at(l) - pc);

function core(engine: 'interp' | 'jit'): HartCore {
  return new HartCore({ memory: createHartMemory(RAM), hartId: 0, ramSize: RAM, mode: 'firmware', engine, jitThreshold: 2 });
}

function state(c: HartCore): string {
  const xs = Array.from({ length: 32 }, (_, i) => c.x(i).toString(16));
  const fs = Array.from({ length: 32 }, (_, i) => c.f(i).toString(16));
  const csr = (n: number): string => c.readCsr(n)?.toString(16) ?? '-'; // fcsr is absent while mstatus.FS = Off
  return `pc=${c.pc.toString(16)} priv=${c.priv} instret=${c.instret} x=[${xs.join(',')}] f=[${fs.join(',')}] fcsr=${csr(0x003)} mepc=${csr(0x341)} mcause=${csr(0x342)} mtval=${csr(0x343)}`;
}

interface LockstepOptions {
  batches: number;
  seed: number;
  maxBatch?: number;
  /** Called before batch k on both cores (host-side events: interrupt lines …). */
  before?: (k: number, c: HartCore) => void;
  /** Offset of the program in RAM (default 0). */
  at?: number;
}

/** Run `code` on both engines in lockstep; returns the two cores after the last batch. */
function lockstep(code: Uint8Array, o: LockstepOptions): { interp: HartCore; jit: HartCore } {
  const a = core('interp'), b = core('jit');
  for (const c of [a, b]) {
    c.ram().set(code, o.at ?? 0);
    c.pc = BigInt(RAM_BASE + (o.at ?? 0));
  }
  const rng = new Rng(o.seed);
  for (let k = 0; k < o.batches; k++) {
    o.before?.(k, a); o.before?.(k, b);
    const n = 1 + rng.int(o.maxBatch ?? 3000);
    const ra = a.run(n), rb = b.run(n);
    expect(rb, `batch ${k} (${n} instructions): exit`).toEqual(ra);
    expect(state(b), `batch ${k} (${n} instructions)`).toBe(state(a));
  }
  expect(Buffer.from(b.ram()).equals(Buffer.from(a.ram())), 'guest RAM').toBe(true);
  return { interp: a, jit: b };
}

const DATA = BigInt(RAM_BASE) + 0x8000n;

describe('translator vs interpreter in lockstep', () => {
  it('an ALU/M/load/store loop with forward and backward branches runs the same, translated', () => {
    const code = program([
      ...li(5, 3000n), ...li(2, DATA), ...li(6, 0x123456789abcdefn),
      L('loop'),
      A.add(6, 6, 5), A.mul(7, 6, 5), A.divu(8, 7, 5), A.remw(9, 7, 5), A.mulhu(10, 6, 7),
      A.sd(7, 2, 0), A.ld(9, 2, 0), A.sw(10, 2, 12), A.lw(11, 2, 12), A.lbu(12, 2, 13), A.lb(13, 2, 14),
      A.srai(14, 6, 7), A.sraw(15, 6, 5), A.sltu(16, 14, 6), A.andi(17, 11, 7),
      beq(17, 0, 'skip'), A.addi(18, 18, 1),
      L('skip'),
      A.addi(5, 5, -1), bne(5, 0, 'loop'),
      L('end'), jal(0, 'end'),
    ]);
    const { jit } = lockstep(code, { batches: 60, seed: 1 });
    expect(jit.x(5)).toBe(0n); // the loop finished
    expect(jit.jitStats()!.compiled).toBeGreaterThan(0);
  });

  it('a loop body that straddles a page boundary runs the same (blocks end at the page)', () => {
    const code = program([
      ...li(5, 2000n), ...li(2, DATA),
      L('loop'),
      ...Array.from({ length: 12 }, (_, i) => A.addi(6 + (i % 6), 6 + ((i + 1) % 6), i + 1)),
      A.sd(6, 2, 0), A.ld(12, 2, 0),
      A.addi(5, 5, -1), bne(5, 0, 'loop'),
      L('end'), jal(0, 'end'),
    ], RAM_BASE + 0xfe0);
    const { jit } = lockstep(code, { batches: 30, seed: 2, at: 0xfe0 });
    expect(jit.x(5)).toBe(0n);
  });

  it('a load that faults in the middle of a hot block traps at its pc with instret exact', () => {
    // M-mode handler: count, skip the faulting instruction, return.
    const code = program([
      ...li(5, 1500n), ...li(2, DATA), ...li(25, 0x100000000n),
      L('loop'),
      A.addi(6, 6, 3), A.sd(6, 2, 0),
      A.ld(9, 25, 0), // no RAM, no device: access fault (cause 5)
      A.ld(7, 2, 0), A.add(8, 8, 7),
      A.addi(5, 5, -1), bne(5, 0, 'loop'),
      L('end'), jal(0, 'end'),
      L('h'),
      A.csrrs(26, 0x341, 0), A.addi(26, 26, 4), A.csrrw(0, 0x341, 26), A.addi(27, 27, 1), A.mret(),
    ]);
    // mtvec = the handler: set it from the host on both cores.
    const hAddr = BigInt(RAM_BASE) + BigInt(code.length - 20);
    const { jit } = lockstep(code, { batches: 40, seed: 3, before: (k, c) => { if (k === 0) c.writeCsr(0x305, hAddr); } });
    expect(jit.x(27)).toBe(1500n);
    expect(jit.readCsr(0x342)).toBe(5n);
  });

  it('interrupts raised while a translated loop runs are taken at the same instruction', () => {
    const code = program([
      ...li(5, 1n << 40n), ...li(2, DATA),
      L('loop'),
      A.addi(6, 6, 1), A.sd(6, 2, 0), A.ld(7, 2, 0), A.add(8, 8, 7),
      A.addi(5, 5, -1), bne(5, 0, 'loop'),
      L('end'), jal(0, 'end'),
      L('h'), // count; mask MTIE until the host re-enables it
      A.addi(28, 28, 1), A.addi(29, 0, 0x80), A.csrrc(0, 0x304, 29), A.mret(),
    ]);
    const hAddr = BigInt(RAM_BASE) + BigInt(code.length - 16);
    let raised = 0;
    const { jit } = lockstep(code, {
      batches: 80, seed: 4,
      before: (k, c) => {
        if (k === 0) { c.writeCsr(0x305, hAddr); c.writeCsr(0x300, 1n << 3n); }
        if (k % 4 === 1) { c.setIrqLines(MIP_MTIP); c.writeCsr(0x304, BigInt(MIP_MTIP)); if (c.engine === 'jit') raised++; }
        if (k % 4 === 2) c.setIrqLines(0);
      },
    });
    expect(jit.x(28)).toBe(BigInt(raised));
    expect(jit.jitStats()!.compiled).toBeGreaterThan(0);
  });

  it('self-modifying code: after the store and FENCE.I the new instruction runs', () => {
    const code = program([
      A.auipc(20, 0), (at, pc) => A.addi(20, 20, at('p') - (pc - 4)), // x20 = address of p
      ...li(21, BigInt(A.addi(5, 5, 2))), ...li(22, 2000n), ...li(23, 1000n),
      L('loop'),
      L('p'), A.addi(5, 5, 1),
      A.addi(6, 6, 1),
      bne(6, 23, 'nopatch'),
      A.sw(21, 20, 0), FENCE_I,
      L('nopatch'),
      blt(6, 22, 'loop'),
      L('end'), jal(0, 'end'),
    ]);
    const { jit } = lockstep(code, { batches: 20, seed: 5 });
    expect(jit.x(6)).toBe(2000n);
    expect(jit.x(5)).toBe(1000n * 1n + 1000n * 2n);
    const s = jit.jitStats()!;
    expect(s.fenceI).toBe(1);
    expect(s.revalidated).toBeGreaterThan(0);
  });

  it('self-modifying code without FENCE.I: the store invalidates the page, the next iteration runs the new code', () => {
    // Outside the ISA (no FENCE.I), but a hart's own store into a translated
    // page is noticed: the loop sees the new instruction from its next
    // iteration on, as the interpreter does here.
    const code = program([
      A.auipc(20, 0), (at, pc) => A.addi(20, 20, at('p') - (pc - 4)),
      ...li(21, BigInt(A.addi(5, 5, 2))), ...li(22, 2000n), ...li(23, 1000n),
      L('loop'),
      L('p'), A.addi(5, 5, 1),
      A.addi(6, 6, 1),
      bne(6, 23, 'nopatch'),
      A.sw(21, 20, 0),
      L('nopatch'),
      blt(6, 22, 'loop'),
      L('end'), jal(0, 'end'),
    ]);
    const { jit } = lockstep(code, { batches: 20, seed: 6 });
    expect(jit.x(5)).toBe(3000n);
  });

  it('blocks chain: calls into another page and returns run block to block without the interpreter', () => {
    // main (page 0): call f on page 1 with JAL, count down; f returns with JALR. Each iteration is
    // three blocks (main up to the JAL, f, the return point up to the BNE back to main's head).
    const f = 0x1000;
    const main = program([
      ...li(5, 4000n), ...li(2, DATA),
      L('loop'), A.addi(6, 6, 1), (_at, pc) => A.jal(1, f - pc),
      A.addi(5, 5, -1), bne(5, 0, 'loop'),
      L('end'), jal(0, 'end'),
    ]);
    const fn = assemble([A.add(7, 7, 6), A.sd(7, 2, 0), A.ld(8, 2, 0), A.jalr(0, 1, 0)]);
    const code = new Uint8Array(f + fn.length);
    code.set(main); code.set(fn, f);
    const { jit } = lockstep(code, { batches: 40, seed: 8 });
    expect(jit.x(5)).toBe(0n);
    const s = jit.jitStats()!;
    // 4000 iterations × 3 blocks; the interpreter's loop entered translated code only a few
    // times per batch (40 batches): the rest were tail calls from block to block.
    expect(s.jitInstructions).toBeGreaterThan(4000 * 7);
    expect(s.entries).toBeLessThan(400);
  });

  it('regions follow JALs on the page (calls, jumps backwards) and see code patched behind a followed JAL', () => {
    // 'skip' is a region that follows `j p` backwards and `call f` forwards; after the patch of p and
    // FENCE.I, its re-validation must compare the bytes before its entry too.
    const code = program([
      A.auipc(20, 0), (at, pc) => A.addi(20, 20, at('p') - (pc - 4)),
      ...li(21, BigInt(A.addi(5, 5, 2))), ...li(22, 2000n), ...li(23, 1000n), ...li(2, DATA),
      jal(0, 'loop'),
      L('p'), A.addi(5, 5, 1),
      jal(1, 'f'),
      blt(6, 22, 'loop'),
      jal(0, 'end'),
      L('loop'), A.addi(6, 6, 1),
      bne(6, 23, 'skip'),
      A.sw(21, 20, 0), FENCE_I,
      L('skip'), jal(0, 'p'),
      L('f'), A.add(7, 7, 5), A.sd(7, 2, 0), A.jalr(0, 1, 0),
      L('end'), jal(0, 'end'),
    ]);
    const { jit } = lockstep(code, { batches: 30, seed: 9 });
    expect(jit.x(6)).toBe(2000n);
    expect(jit.x(5)).toBe(999n * 1n + 1001n * 2n); // iteration 1000 patches p before it runs
    const s = jit.jitStats()!;
    expect(s.revalidated).toBeGreaterThan(0);
    expect(s.jitInstructions).toBeGreaterThan(2000 * 4);
  });

  it('CSR reads and writes, AMO, LR/SC and FP inside a hot block run through jitCold like the interpreter (instret reads, an FP trap while FS is off)', () => {
    // The handler (FP illegal with FS off) turns FS on and retries; the loop turns FS off every
    // 256 iterations, so the trap hits a block in the middle. mscratch writes leave the block (EV_IRQ).
    const code = program([
      ...li(5, 3000n), ...li(2, DATA), ...li(9, 3n << 13n),
      L('loop'),
      A.addi(6, 6, 3),
      A.csrrs(10, 0xb02, 0), // minstret
      A.add(11, 11, 10),
      A.amoadd_d(12, 2, 6), A.lr_d(13, 2), A.add(13, 13, 5), A.sc_d(14, 2, 13), A.add(15, 15, 14),
      A.fmv_d_x(1, 6), A.fadd_d(2, 2, 1), A.fsd(2, 2, 16), A.fld(3, 2, 16), A.fmv_x_w(16, 3), A.add(17, 17, 16),
      A.andi(18, 5, 255), bne(18, 0, 'keep'),
      A.csrrc(0, 0x300, 9), // FS off: the next FP instruction traps
      A.csrrw(19, 0x340, 5), // mscratch
      L('keep'),
      A.addi(5, 5, -1), bne(5, 0, 'loop'),
      L('end'), jal(0, 'end'),
      L('h'), A.csrrs(0, 0x300, 9), A.addi(28, 28, 1), A.mret(),
    ]);
    const hAddr = BigInt(RAM_BASE) + BigInt(code.length - 12);
    const { jit } = lockstep(code, { batches: 60, seed: 10, before: (k, c) => { if (k === 0) { c.writeCsr(0x305, hAddr); c.writeCsr(0x300, 1n << 13n); } } });
    expect(jit.x(5)).toBe(0n);
    expect(jit.x(28)).toBeGreaterThan(5n); // FP traps taken
    expect(jit.jitStats()!.jitInstructions).toBeGreaterThan(3000 * 15);
  });

  it.each([
    ['function-table slots', { slots: 9 }],
    ['shadow copies (a ring that wraps)', { shadowBytes: 8 * 24 }],
  ])('a code cache smaller than the working set (%s) evicts the oldest blocks and still runs the same', (_what, limits) => {
    // 24 blocks on 24 pages, each jumping to the next (cross-page JALs end regions), the last back
    // to the loop head: with room for 8 blocks, evicted ones are translated again.
    const PAGES = 24;
    const code = new Uint8Array(0x1000 * (PAGES + 1));
    code.set(program([...li(5, 3000n), (_at, pc) => A.jal(0, 0x800 - pc)]));
    code.set(program([A.addi(5, 5, -1), beq(5, 0, 'end'), (_at, pc) => A.jal(0, 0x1000 - pc), L('end'), jal(0, 'end')], 0x800), 0x800);
    for (let k = 1; k <= PAGES; k++) code.set(assemble([A.addi(6, 6, k), A.add(7, 7, 6), A.jal(0, k === PAGES ? 0x800 - (0x1000 * k + 8) : 0x1000 - 8)]), 0x1000 * k);
    const a = core('interp'), b = core('jit');
    Object.assign((b.jit as Translator).limits, limits);
    for (const c of [a, b]) { c.ram().set(code); c.pc = BigInt(RAM_BASE); }
    const rng = new Rng(11);
    for (let k = 0; k < 100; k++) {
      const n = 1 + rng.int(3000);
      expect(b.run(n)).toEqual(a.run(n));
      expect(state(b), `batch ${k}`).toBe(state(a));
    }
    const s = b.jitStats()!;
    expect(s.evictions).toBeGreaterThan(0);
    expect(s.blocks).toBeLessThanOrEqual(8);
    expect(s.compiled).toBeGreaterThan(PAGES);
    expect(b.x(5)).toBeLessThan(3000n - 1000n); // the loop went round
  });

  it('a remote fence.i (Hart.poll → fenceI) makes a hart drop code another thread rewrote', () => {
    const code = program([
      L('loop'), A.addi(5, 5, 1), jal(0, 'loop'),
    ]);
    const c = core('jit');
    c.ram().set(code);
    c.pc = BigInt(RAM_BASE);
    c.run(10_000);
    expect(c.x(5)).toBe(5000n);
    // "Another hart" rewrites the loop's add, then fences this hart remotely.
    c.ram().set(assemble([A.addi(5, 5, 3)]));
    c.fenceI();
    c.run(10_000);
    expect(c.x(5)).toBe(5000n + 5000n * 3n);
  });
});

// M-mode trap handler used below: count in x27, skip the trapping 4 bytes, return.
const skipHandler = (): Item[] => [L('h'), A.csrrs(26, 0x341, 0), A.addi(26, 26, 4), A.csrrw(0, 0x341, 26), A.addi(27, 27, 1), A.mret()];
const handlerAt = (code: Uint8Array): bigint => BigInt(RAM_BASE) + BigInt(code.length - 20);

describe('translator vs interpreter in lockstep: bad input and coherence', () => {
  // custom-0 (opcode 0x0b) is no instruction of RV64GC; the 16-bit word 0 is the defined illegal one (ISA §16.1).
  const ILLEGAL32 = 0x0000000b;
  const ILLEGAL16_THEN_CNOP = 0x00010000; // c.illegal, then c.nop
  const body = [A.addi(6, 6, 3), A.sd(6, 2, 0), A.ld(7, 2, 0), A.add(8, 8, 7), A.mul(9, 8, 6), A.sltu(10, 9, 8), A.addi(5, 5, -1)];
  for (const [name, bad] of [['a 32-bit illegal instruction', ILLEGAL32], ['c.illegal', ILLEGAL16_THEN_CNOP]] as const) {
    it(`${name} at every position of a hot loop traps at its pc, instret exact, the rest of the loop translated`, () => {
      for (let p = 0; p <= body.length; p++) {
        const loop = [...body];
        if (p < body.length) loop[p] = bad; else loop.push(bad); // p = body.length: just before the back branch
        const code = program([
          ...li(5, 1500n), ...li(2, DATA),
          L('loop'), ...loop, bne(5, 0, 'loop'),
          L('end'), jal(0, 'end'),
          ...skipHandler(),
        ]);
        const { jit } = lockstep(code, { batches: 30, seed: 10 + p, before: (k, c) => { if (k === 0) c.writeCsr(0x305, handlerAt(code)); } });
        expect(jit.readCsr(0x342), `position ${p}`).toBe(2n);
        expect(jit.readCsr(0x343), `position ${p}: mtval is the instruction`).toBe(bad === ILLEGAL32 ? BigInt(ILLEGAL32) : 0n);
        if (p !== 6) expect(jit.x(27), `position ${p}`).toBe(1500n); // (at p = 6 the loop counter is never decremented)
      }
    });
  }

  it('a jump into the middle of a 32-bit instruction runs the 16-bit one found there, like the interpreter', () => {
    // 0x02850013 is addi x0, x10, 40; its upper half 0x0285 is c.addi x5, 1.
    const W = 0x02850013;
    const code = program([
      ...li(11, 2000n),
      A.auipc(9, 0), (at, pc) => A.addi(9, 9, at('w') - (pc - 4)),
      L('loop'),
      A.andi(7, 6, 1), A.slli(7, 7, 1), A.add(10, 9, 7), A.addi(6, 6, 1),
      A.jalr(0, 10, 0), // to w or w + 2
      L('w'), W,
      blt(6, 11, 'loop'),
      L('end'), jal(0, 'end'),
    ]);
    const { jit } = lockstep(code, { batches: 20, seed: 20 });
    expect(jit.x(6)).toBe(2000n);
    expect(jit.x(5)).toBe(1000n); // entered at w + 2 on every odd iteration
    expect(jit.jitStats()!.compiled).toBeGreaterThan(1);
  });

  it('page tables changed under running code (Sv39, SFENCE.VMA): the new mapping runs, as interpreted', () => {
    // S-mode; VA 0x8000_0000 is an identity gigapage (this code, the tables);
    // VA 0x4000_0000 is one 4 KiB page, first P1 (x5 += 1), then P2 (x5 += 100).
    const ROOT = 0x10000, L1 = 0x11000, L0 = 0x12000, P1 = 0x20000, P2 = 0x21000;
    const pa = (off: number): bigint => BigInt(RAM_BASE + off);
    const V = 1n, R = 2n, W = 4n, X = 8n, AB = 64n, D = 128n;
    const leaf = (off: number): bigint => ((pa(off) >> 12n) << 10n) | V | R | X | AB;
    const code = program([
      ...li(20, 0x4000_0000n), ...li(21, pa(L0)), ...li(22, leaf(P2)), ...li(23, 1000n), ...li(24, 2000n),
      L('loop'),
      A.jalr(1, 20, 0),
      A.addi(6, 6, 1),
      bne(6, 23, 'skip'),
      A.sd(22, 21, 0), A.sfence_vma(),
      L('skip'),
      blt(6, 24, 'loop'),
      L('end'), jal(0, 'end'),
    ]);
    const tables = (c: HartCore): void => {
      const dv = new DataView(c.ram().buffer, c.ram().byteOffset);
      dv.setBigUint64(ROOT + 8 * 2, ((0x8000_0000n >> 12n) << 10n) | V | R | W | X | AB | D, true);
      dv.setBigUint64(ROOT + 8 * 1, ((pa(L1) >> 12n) << 10n) | V, true);
      dv.setBigUint64(L1, ((pa(L0) >> 12n) << 10n) | V, true);
      dv.setBigUint64(L0, leaf(P1), true);
      c.ram().set(assemble([A.addi(5, 5, 1), A.jalr(0, 1, 0)]), P1);
      c.ram().set(assemble([A.addi(5, 5, 100), A.jalr(0, 1, 0)]), P2);
      c.writeCsr(0x180, (8n << 60n) | (pa(ROOT) >> 12n));
      c.priv = 1;
    };
    const { jit } = lockstep(code, { batches: 40, seed: 21, before: (k, c) => { if (k === 0) tables(c); } });
    expect(jit.x(6)).toBe(2000n);
    expect(jit.x(5)).toBe(1000n + 100n * 1000n);
  });

  it('FP in every static rounding mode and in dynamic mode under every frm: results and fflags as interpreted', () => {
    const modes: [rm: number, frm: number][] = [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [7, 0], [7, 1], [7, 2], [7, 3], [7, 4]];
    for (const [rm, frm] of modes) {
      const code = program([
        ...li(5, 1200n), ...li(6, 0x123456789abcdefn), ...li(11, 6364136223846793005n), ...li(12, 1442695040888963407n),
        ...li(13, 0xffffffff3dcccccdn), A.fmv_d_x(5, 13), // f5 = 0.1f, NaN-boxed
        L('loop'),
        A.fcvt_d_l(1, 6, rm), A.fadd_d(2, 2, 1, rm), A.fmadd_d(3, 1, 2, 3, rm), A.fadd_s(4, 4, 5, rm),
        A.fcvt_w_d(7, 3, rm), A.add(8, 8, 7), A.fmv_x_w(9, 4), A.add(10, 10, 9),
        A.mul(6, 6, 11), A.add(6, 6, 12),
        A.addi(5, 5, -1), bne(5, 0, 'loop'),
        L('end'), jal(0, 'end'),
      ]);
      const { jit } = lockstep(code, { batches: 20, seed: 30 + rm * 8 + frm, before: (k, c) => { if (k === 0) { c.writeCsr(0x300, 1n << 13n); c.writeCsr(0x002, BigInt(frm)); } } });
      expect(jit.x(5), `rm ${rm} frm ${frm}`).toBe(0n);
      expect(jit.readCsr(0x001), `rm ${rm} frm ${frm}: some exception flag was raised`).not.toBe(0n);
    }
  });

  it('a generated module that fails to compile is interpreted instead and logged once', () => {
    const logs: string[] = [];
    const c: HartCore = new HartCore({ memory: createHartMemory(RAM), hartId: 0, ramSize: RAM, mode: 'firmware', engine: 'jit', jitThreshold: 2, log: (msg) => { logs.push(`${msg} (${c.where()})`); } });
    const ref = core('interp');
    // Fault injection: the emitter hands V8 a truncated module (a header and a bad section id).
    (c.jit as Translator).emit = () => Uint8Array.of(0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x7f, 0x00);
    const code = program([
      ...li(5, 3000n), ...li(2, DATA),
      L('loop'), A.addi(6, 6, 1), A.sd(6, 2, 0), A.ld(7, 2, 0), A.add(8, 8, 7), beq(8, 0, 'other'),
      L('back'), A.addi(5, 5, -1), bne(5, 0, 'loop'),
      L('end'), jal(0, 'end'),
      L('other'), jal(0, 'back'),
    ]);
    for (const k of [c, ref]) { k.ram().set(code); k.pc = BigInt(RAM_BASE); }
    for (let i = 0; i < 20; i++) { c.run(2000); ref.run(2000); }
    expect(state(c)).toBe(state(ref));
    expect(c.x(5)).toBe(0n);
    const s = c.jitStats()!;
    expect(s.invalid).toBeGreaterThan(1);
    expect(s.compiled).toBe(0);
    expect(logs).toEqual(['generated block failed to compile; interpreting it (translating)']); // what a profiler sampled then
    expect(c.where()).toBe('host'); // and outside run()
  });
});

describe('translator vs interpreter in lockstep (generated programs, fixed seed)', () => {
  it('every class, batches of random size: equal state after every batch, twice over the same cores', () => {
    const reports: string[] = [];
    for (let k = 0; k < 4; k++) {
      const seed = 20261202 + k;
      const d = lockstepImage(assembleImage(generate({ seed, groups: 400 })), { seed, maxBatch: 48, runs: 2 });
      if (d) reports.push(formatLockstep(seed, d));
    }
    expect(reports.join('\n\n')).toBe('');
  });
});

describe('translator vs qemu-riscv64 (differential, fixed seed)', () => {
  const SEED = 20261201;
  it('agrees on generated programs (every class, page-crossing code) run translated', async () => {
    const reports: string[] = [];
    for (let k = 0; k < 4; k++) {
      const p = generate({ seed: SEED + k, groups: 400 });
      const d = await check(p, undefined, { engine: 'jit' });
      if (d) reports.push(formatDivergence(p, await minimise(p, d, 120, { engine: 'jit' })));
    }
    expect(reports.join('\n\n')).toBe('');
  });

  it('traps like qemu for every trap kind, translated', async () => {
    const problems: string[] = [];
    for (const kind of TRAP_KIND_NAMES) {
      const p = await checkTrap(SEED, kind, 'jit');
      if (p) problems.push(p);
    }
    expect(problems.join('\n')).toBe('');
  });
});

describe('generated modules', () => {
  it('every emitted region validates, and a region is never empty or past its page', () => {
    const c = core('jit');
    const rng = new Rng(7);
    // Random bytes: whatever the guest wrote, the translator emits valid wasm or nothing.
    const bytes = new Uint8Array(16384);
    for (let i = 0; i < bytes.length; i++) bytes[i] = rng.int(256);
    c.ram().set(bytes);
    const t = c.jit as Translator;
    let regions = 0;
    for (let off = 0; off < bytes.length; off += 2) {
      const hp = (c.ram().byteOffset + off) >>> 0;
      const insns = t.scan(hp);
      if (!insns.length) continue;
      regions++;
      for (const ins of insns) {
        expect((off & 0xfff) + ins.delta).toBeGreaterThanOrEqual(0);
        expect((off & 0xfff) + ins.delta + ins.len).toBeLessThanOrEqual(0x1000);
      }
      expect(WebAssembly.validate(t.emit(insns))).toBe(true);
    }
    expect(regions).toBeGreaterThan(100);
  });
});
