// Hart core unit tests: decode (incl. compressed), ALU/M, CSRs, traps,
// delegation, interrupts, FP gating. Programs are hand-assembled with asm.ts
// and run on the real wasm core (built on demand by loadHartModule).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { A, assemble, li, REG } from './asm.ts';
import { runSnippet } from './snippet.ts';
import { HartCore, createHartMemory } from './wasm.ts';
import { RAM_BASE } from '../layout.ts';
import { MIP } from '../signals.ts';

const BASE = BigInt(RAM_BASE);
const U64 = (1n << 64n) - 1n;
const { a0, a1, a2, t0, t1, sp } = REG;
const u = (v: bigint) => BigInt.asUintN(64, v);
const s64 = (v: bigint) => BigInt.asIntN(64, v);

function snippet(code: (number | { c: number })[], x: bigint[] = [], privilege: 'M' | 'U' = 'M') {
  return runSnippet({ ram: assemble(code), entry: BASE, x, maxInstructions: 10_000, privilege });
}

const ramSize = 1 << 20;
function firmwareCore(code: number[]): HartCore {
  const core = new HartCore({ memory: createHartMemory(ramSize), hartId: 0, ramSize, mode: 'firmware' });
  core.ram().set(assemble(code));
  core.pc = BASE;
  return core;
}

describe('integer ISA', () => {
  it('runs RV64I arithmetic and stops at ECALL with pc at the ECALL', () => {
    const r = snippet([A.addi(a0, 0, -5), A.addi(a1, 0, 7), A.add(a2, a0, a1), A.srai(t0, a0, 1), A.srli(t1, a0, 60), A.ecall()]);
    expect(r.exit).toEqual({ kind: 'ecall' });
    expect(r.pc).toBe(BASE + 20n);
    expect(r.x[a0]).toBe(u(-5n));
    expect(r.x[a2]).toBe(2n);
    expect(r.x[t0]).toBe(u(-3n));
    expect(r.x[t1]).toBe(15n);
    expect(r.x[0]).toBe(0n);
  });

  it('loads 64-bit constants, stores and loads with sign/zero extension', () => {
    const r = snippet([
      ...li(a0, 0x1234_5678_9abc_def0n), ...li(sp, BASE + 0x800n),
      A.sd(a0, sp, 0), A.lw(a1, sp, 0), A.lwu(a2, sp, 0), A.lb(t0, sp, 7), A.lbu(t1, sp, 0), A.ecall(),
    ]);
    expect(r.x[a0]).toBe(0x1234_5678_9abc_def0n);
    expect(r.x[a1]).toBe(u(-0x6543_2110n));
    expect(r.x[a2]).toBe(0x9abc_def0n);
    expect(r.x[t0]).toBe(0x12n);
    expect(r.x[t1]).toBe(0xf0n);
    expect(new DataView(r.ram.buffer).getBigUint64(0x800, true)).toBe(0x1234_5678_9abc_def0n);
  });

  it('handles misaligned loads and stores, also across a page boundary', () => {
    const r = snippet([...li(sp, BASE + 0xffdn), ...li(a0, 0x1122_3344_5566_7788n), A.sd(a0, sp, 0), A.ld(a1, sp, 0), A.ecall()]);
    expect(r.exit).toEqual({ kind: 'ecall' });
    expect(r.x[a1]).toBe(0x1122_3344_5566_7788n);
  });

  it('M extension matches a BigInt reference, including division edge cases', () => {
    const edge = fc.constantFrom(0n, 1n, U64, 1n << 63n, (1n << 63n) - 1n, 0xffff_ffffn, 0x8000_0000n, 7n);
    const val = fc.oneof(edge, fc.bigInt({ min: 0n, max: U64 }));
    fc.assert(fc.property(val, val, (a, b) => {
      const r = snippet([
        A.mul(10, 5, 6), A.mulh(11, 5, 6), A.mulhsu(12, 5, 6), A.mulhu(13, 5, 6),
        A.div(14, 5, 6), A.divu(15, 5, 6), A.rem(16, 5, 6), A.remu(17, 5, 6),
        A.divw(28, 5, 6), A.remw(29, 5, 6), A.ecall(),
      ], [0n, 0n, 0n, 0n, 0n, a, b]);
      const sa = s64(a), sb = s64(b);
      const a32 = BigInt.asIntN(32, a), b32 = BigInt.asIntN(32, b);
      const exp = {
        10: u(a * b),
        11: u((sa * sb) >> 64n),
        12: u((sa * b) >> 64n),
        13: u((a * b) >> 64n),
        14: b === 0n ? U64 : sa === -(1n << 63n) && sb === -1n ? a : u(sa / sb),
        15: b === 0n ? U64 : a / b,
        16: b === 0n ? a : sa === -(1n << 63n) && sb === -1n ? 0n : u(sa % sb),
        17: b === 0n ? a : a % b,
        28: b32 === 0n ? U64 : a32 === -(1n << 31n) && b32 === -1n ? u(a32) : u(BigInt.asIntN(32, a32 / b32)),
        29: b32 === 0n ? u(a32) : a32 === -(1n << 31n) && b32 === -1n ? 0n : u(a32 % b32),
      } as Record<number, bigint>;
      for (const [k, v] of Object.entries(exp)) expect(r.x[Number(k)], `x${k} for a=${a} b=${b}`).toBe(v);
    }), { numRuns: 150 });
  });

  it('illegal instruction traps with the instruction bits in tval', () => {
    const r = snippet([A.addi(a0, 0, 1), 0xffff_ffff]);
    expect(r.exit).toEqual({ kind: 'trap', cause: 2n, tval: 0xffff_ffffn });
    expect(r.pc).toBe(BASE + 4n);
  });

  it('EBREAK traps with cause 3 and tval = pc', () => {
    const r = snippet([A.addi(a0, 0, 1), A.ebreak()]);
    expect(r.exit).toEqual({ kind: 'trap', cause: 3n, tval: BASE + 4n });
  });

  it('stops after maxInstructions with kind limit', () => {
    const r = runSnippet({ ram: assemble([A.addi(a0, a0, 1), A.jal(0, -4)]), entry: BASE, maxInstructions: 101 });
    expect(r.exit).toEqual({ kind: 'limit' });
    expect(r.x[a0]).toBe(51n);
    expect(r.pc).toBe(BASE + 4n);
  });

  it('an access outside RAM and devices is an access fault', () => {
    const r = snippet([...li(a0, 0x4000_0000n), A.ld(a1, a0, 8)]);
    expect(r.exit).toEqual({ kind: 'trap', cause: 5n, tval: 0x4000_0008n });
    const w = snippet([...li(a0, 0x4000_0000n), A.sd(a1, a0, 0)]);
    expect(w.exit).toEqual({ kind: 'trap', cause: 7n, tval: 0x4000_0000n });
  });
});

describe('compressed decoding (ISA §16)', () => {
  const core = new HartCore({ memory: createHartMemory(ramSize), hartId: 1, ramSize, mode: 'snippet' });
  const cases: [string, number, number][] = [
    ['c.addi4spn a0,sp,16', 0x0808, A.addi(10, 2, 16)],
    ['c.li a0,5', 0x4515, A.addi(10, 0, 5)],
    ['c.li a0,-1', 0x557d, A.addi(10, 0, -1)],
    ['c.ld a1,8(a0)', 0x650c, A.ld(11, 10, 8)],
    ['c.sd a1,16(a0)', 0xe90c, A.sd(11, 10, 16)],
    ['c.j 8', 0xa021, A.jal(0, 8)],
    ['c.j -2', 0xbffd, A.jal(0, -2)],
    ['c.beqz a0,-4', 0xdd75, A.beq(10, 0, -4)],
    ['c.lui a0,1', 0x6505, A.lui(10, 1)],
    ['c.addi16sp -32', 0x713d, A.addi(2, 2, -32)],
    ['c.srai a0,3', 0x850d, A.srai(10, 10, 3)],
    ['c.and a0,a1', 0x8d6d, ((11 << 20) | (10 << 15) | (7 << 12) | (10 << 7) | 0x33) >>> 0],
    ['c.addw a0,a1', 0x9d2d, A.addw(10, 10, 11)],
    ['c.jr ra', 0x8082, A.jalr(0, 1, 0)],
    ['c.mv a0,a1', 0x852e, A.add(10, 0, 11)],
    ['c.add a0,a1', 0x952e, A.add(10, 10, 11)],
    ['c.jalr a0', 0x9502, A.jalr(1, 10, 0)],
    ['c.ebreak', 0x9002, A.ebreak()],
    ['c.ldsp a0,8(sp)', 0x6522, A.ld(10, 2, 8)],
    ['c.sdsp a0,8(sp)', 0xe42a, A.sd(10, 2, 8)],
  ];
  for (const [name, h, w] of cases) it(`expands ${name}`, () => expect(core.expandCompressed(h).toString(16)).toBe(w.toString(16)));

  it('rejects reserved encodings', () => {
    for (const h of [0x0000, 0x0004, 0x4002, 0x8002, 0x6101 /* c.addi16sp 0 */, 0x2001 /* c.addiw x0 */]) expect(core.expandCompressed(h), h.toString(16)).toBe(0);
  });

  it('executes a mixed 16/32-bit program and reports the 16 bits of an illegal one', () => {
    const r = snippet([{ c: 0x4515 }, A.addi(a1, 0, 2), { c: 0x952e }, { c: 0x0000 }]);
    expect(r.x[a0]).toBe(7n);
    expect(r.exit).toEqual({ kind: 'trap', cause: 2n, tval: 0n });
    expect(r.pc).toBe(BASE + 8n);
  });
});

describe('CSRs', () => {
  it('identifies the hart: misa RV64IMAFDCSU, ids zero', () => {
    const core = firmwareCore([]);
    expect(core.readCsr(0x301)).toBe((2n << 62n) | 0x14112dn);
    expect(core.readCsr(0xf11)).toBe(0n);
    expect(core.readCsr(0xf14)).toBe(0n);
    expect(core.readCsr(0x7c0)).toBeUndefined();
  });

  it('mstatus is WARL: MPP=2 is not kept, UXL/SXL read 2, SD follows FS', () => {
    const r = snippet([A.addi(t0, 0, -1), A.csrrw(0, 0x300, t0), A.csrrs(a0, 0x300, 0), A.ecall()]);
    const v = r.x[a0]!;
    expect((v >> 11n) & 3n).not.toBe(2n);
    expect((v >> 32n) & 0xfn).toBe(0xan);
    expect(v >> 63n).toBe(1n);
    expect((v >> 13n) & 3n).toBe(3n);
  });

  it('U-mode access to an M-mode CSR, a write to a read-only CSR and an unknown CSR are illegal', () => {
    const insn = A.csrrs(a0, 0x300, 0);
    expect(snippet([insn], [], 'U').exit).toEqual({ kind: 'trap', cause: 2n, tval: BigInt(insn) });
    const ro = A.csrrw(a0, 0xf14, t0);
    expect(snippet([ro]).exit).toEqual({ kind: 'trap', cause: 2n, tval: BigInt(ro) });
    expect(snippet([A.csrrs(a0, 0xf14, 0), A.ecall()]).exit).toEqual({ kind: 'ecall' });
    expect(snippet([A.csrrs(a0, 0x7c0, 0)]).exit.kind).toBe('trap');
  });

  it('counters from U-mode need mcounteren/scounteren', () => {
    expect(snippet([A.csrrs(a0, 0xc00, 0)], [], 'U').exit).toMatchObject({ kind: 'trap', cause: 2n });
    const core = firmwareCore([A.csrrs(a0, 0xc02, 0), A.csrrs(a1, 0xc02, 0), A.jal(0, 0)]);
    core.writeCsr(0x306, 7n); core.writeCsr(0x106, 7n); core.priv = 0;
    core.run(3);
    expect(core.priv).toBe(0);
    expect(core.x(a1) - core.x(a0)).toBe(1n);
  });

  it('satp ignores unsupported modes and has no ASID bits', () => {
    const core = firmwareCore([]);
    core.writeCsr(0x180, (8n << 60n) | (0xffffn << 44n) | 0x80010n);
    expect(core.readCsr(0x180)).toBe((8n << 60n) | 0x80010n);
    core.writeCsr(0x180, (1n << 60n) | 5n);
    expect(core.readCsr(0x180)).toBe((8n << 60n) | 0x80010n);
  });

  it('sie/sip are views of mie/mip through mideleg', () => {
    const core = firmwareCore([]);
    core.writeCsr(0x304, 0xaaan);
    core.writeCsr(0x303, BigInt(MIP.STIP | MIP.SSIP));
    expect(core.readCsr(0x104)).toBe(BigInt(MIP.STIP | MIP.SSIP));
    core.setIrqLines(MIP.STIP | MIP.MTIP);
    expect(core.readCsr(0x144)).toBe(BigInt(MIP.STIP));
    expect(core.readCsr(0x344)).toBe(BigInt(MIP.STIP | MIP.MTIP));
  });

  it('CSRRS/CSRRC on mip use only the software SEIP bit, never latch the external line', () => {
    // OpenSBI's set_timer does csrc mip, STIP. If the PLIC's SEIP line is up
    // at that moment, the read-modify-write must not copy it into the
    // software bit (privileged 1.12 §3.1.9), or S-mode sees an external
    // interrupt forever once the line drops (an interrupt storm).
    const core = firmwareCore([...li(t0, BigInt(MIP.STIP)), A.csrrs(0, 0x344, t0), A.csrrc(a0, 0x344, t0), A.csrrs(a1, 0x344, 0), A.jal(0, 0)]);
    core.setIrqLines(MIP.SEIP);
    core.run(4);
    expect(core.x(a0)).toBe(BigInt(MIP.SEIP | MIP.STIP)); // the read shows the OR of both
    expect(core.x(a1)).toBe(BigInt(MIP.SEIP));
    core.setIrqLines(0);
    expect(core.readCsr(0x344)).toBe(0n);
  });
});

describe('floating point gating', () => {
  it('FP instructions are illegal when mstatus.FS is Off', () => {
    const fadd = A.fadd_d(1, 2, 3);
    const r = snippet([A.csrrw(0, 0x300, 0), fadd]);
    expect(r.exit).toEqual({ kind: 'trap', cause: 2n, tval: BigInt(fadd) });
  });

  it('invalid static and dynamic rounding modes are illegal', () => {
    expect(snippet([A.fadd_d(1, 2, 3, 5)]).exit).toMatchObject({ kind: 'trap', cause: 2n });
    expect(snippet([A.csrrwi(0, 0x002, 5), A.fadd_d(1, 2, 3)]).exit).toMatchObject({ kind: 'trap', cause: 2n });
  });

  it('computes, NaN-boxes singles, moves and converts; FS becomes Dirty', () => {
    const one = 0x3ff0_0000_0000_0000n;
    const r = snippet([
      ...li(t0, one), A.fmv_d_x(1, t0), A.fadd_d(2, 1, 1), A.fcvt_w_d(a0, 2), A.fsgnjn_d(3, 2, 2),
      A.feq_d(a1, 2, 2), A.fadd_s(4, 5, 5), A.fmv_x_w(a2, 4), A.csrrs(t1, 0x300, 0), A.ecall(),
    ], [], 'M');
    expect(r.x[a0]).toBe(2n);
    expect(r.f[3]).toBe(0xc000_0000_0000_0000n);
    expect(r.x[a1]).toBe(1n);
    // f5 = 0 is not NaN-boxed, so it reads as the canonical NaN: the sum is the canonical NaN, boxed.
    expect(r.f[4]).toBe(0xffff_ffff_7fc0_0000n);
    expect(r.x[a2]).toBe(0x7fc0_0000n);
    expect((r.x[t1]! >> 13n) & 3n).toBe(3n);
  });
});

describe('traps and delegation (privileged 1.12 §3.1.8, §3.3.1)', () => {
  it('ECALL from U goes to S when delegated, ECALL from S to M; xEPC/xCAUSE/xPP as specified', () => {
    const M_HANDLER = 0x100, S_HANDLER = 0x200, USER = 0x300;
    const code: number[] = [];
    const at = (off: number, words: number[]) => { while (code.length < off / 4) code.push(0); code.splice(off / 4, words.length, ...words); };
    at(0, [
      ...li(t0, BASE + BigInt(M_HANDLER)), A.csrrw(0, 0x305, t0),
      ...li(t0, BASE + BigInt(S_HANDLER)), A.csrrw(0, 0x105, t0),
      A.addi(t0, 0, 1 << 8), A.csrrw(0, 0x302, t0), // medeleg: ECALL from U
      ...li(t0, BASE + BigInt(USER)), A.csrrw(0, 0x341, t0),
      A.mret(), // MPP = U (reset value 0)
    ]);
    at(M_HANDLER, [A.jal(0, 0)]);
    at(S_HANDLER, [A.ecall()]);
    at(USER, [A.ecall()]);
    const core = firmwareCore(code);
    core.run(100);
    expect(core.priv).toBe(3);
    expect(core.pc).toBe(BASE + BigInt(M_HANDLER));
    expect(core.readCsr(0x142)).toBe(8n); // scause: ECALL from U
    expect(core.readCsr(0x141)).toBe(BASE + BigInt(USER));
    expect(core.readCsr(0x342)).toBe(9n); // mcause: ECALL from S
    expect(core.readCsr(0x341)).toBe(BASE + BigInt(S_HANDLER));
    const ms = core.readCsr(0x300)!;
    expect((ms >> 11n) & 3n).toBe(1n); // MPP = S
    expect((ms >> 8n) & 1n).toBe(0n); // SPP = U
  });

  it('takes interrupts by priority, honours global enables and mideleg, and vectors', () => {
    const spin = (words: number, at: number[]) => { const c = new Array<number>(words).fill(A.jal(0, 0)); for (const i of at) c[i] = A.jal(0, 0); return c; };
    const core = firmwareCore(spin(0x900 / 4, []));
    core.writeCsr(0x305, (BASE + 0x400n) | 1n); // vectored
    core.writeCsr(0x304, BigInt(MIP.MTIP | MIP.MEIP | MIP.STIP));
    core.setIrqLines(MIP.MTIP | MIP.MEIP);
    core.run(5);
    expect(core.pc).toBe(BASE); // M-mode with MIE = 0: nothing taken
    core.writeCsr(0x300, 1n << 3n); // MIE
    core.run(1);
    expect(core.readCsr(0x342)).toBe((1n << 63n) | 11n); // MEI before MTI
    expect(core.pc).toBe(BASE + 0x400n + 4n * 11n);

    // Delegated STIP: not taken in S with SIE = 0, taken from U regardless of SIE.
    const c2 = firmwareCore(spin(0x900 / 4, []));
    c2.writeCsr(0x105, BASE + 0x800n);
    c2.writeCsr(0x303, BigInt(MIP.STIP));
    c2.writeCsr(0x304, BigInt(MIP.STIP));
    c2.setIrqLines(MIP.STIP);
    c2.priv = 1;
    c2.run(3);
    expect(c2.pc).toBe(BASE);
    c2.priv = 0;
    c2.run(1);
    expect(c2.priv).toBe(1);
    expect(c2.readCsr(0x142)).toBe((1n << 63n) | 5n);
    expect(c2.pc).toBe(BASE + 0x800n);
  });

  it('WFI exits to the host when nothing can wake it and is a no-op when an enabled interrupt is pending', () => {
    const core = firmwareCore([A.wfi(), A.addi(a0, a0, 1), A.jal(0, 0)]);
    expect(core.run(10)).toEqual({ kind: 'wfi' });
    expect(core.pc).toBe(BASE + 4n);
    const c2 = firmwareCore([A.wfi(), A.addi(a0, a0, 1), A.jal(0, 0)]);
    c2.writeCsr(0x304, BigInt(MIP.MTIP));
    c2.setIrqLines(MIP.MTIP); // pending and enabled in mie, but MIE = 0: wakes without trapping
    expect(c2.run(10)).toEqual({ kind: 'limit' });
    expect(c2.x(a0)).toBe(1n);
    expect(c2.readCsr(0x342)).toBe(0n);
  });

  it('SRET to U-mode and the TSR/TW/TVM traps', () => {
    const core = firmwareCore([A.sret()]);
    core.writeCsr(0x300, 1n << 22n); // TSR
    core.writeCsr(0x305, BASE + 0x100n);
    core.priv = 1;
    core.run(1);
    expect(core.readCsr(0x342)).toBe(2n);
    expect(core.priv).toBe(3);
  });
});

describe('FP loads, stores and flags', () => {
  it('FLW NaN-boxes, FSD stores raw bits, fflags accrue into fcsr', () => {
    const r = runSnippet({
      ram: assemble([
        ...li(sp, BASE + 0x800n), ...li(t0, 0x3f80_0000n), A.sw(t0, sp, 0), A.flw(1, sp, 0), A.fsd(1, sp, 8),
        ...li(t0, 0x3ff0_0000_0000_0000n), A.fmv_d_x(2, t0), A.fmv_d_x(3, 0),
        ((0x0d << 25) | (3 << 20) | (2 << 15) | (7 << 12) | (4 << 7) | 0x53) >>> 0, // fdiv.d f4, f2, f3
        A.ecall(),
      ]),
      entry: BASE, maxInstructions: 100,
    });
    expect(r.exit).toEqual({ kind: 'ecall' });
    expect(r.f[1]).toBe(0xffff_ffff_3f80_0000n);
    expect(new DataView(r.ram.buffer).getBigUint64(0x808, true)).toBe(0xffff_ffff_3f80_0000n);
    expect(r.f[4]).toBe(0x7ff0_0000_0000_0000n); // +inf
    expect(r.fcsr & 0x1f).toBe(0x08); // DZ
  });
});
