// The qemu side, image layout, comparison and minimiser, on real
// qemu-riscv64 processes (Debian qemu-user) and our real hart.
import { describe, expect, it } from 'vitest';
import * as E from './encode.ts';
import { generate, GP, SCRATCH_SIZE } from './generator.ts';
import type { Group, Program } from './generator.ts';
import { assemble, describeOffset, OUT_SIZE, toElf } from './image.ts';
import { runQemu } from './qemu.ts';
import { check, formatDivergence, minimise, runOurs } from './check.ts';
import type { SideResult } from './check.ts';
import { execQemu } from './qemu.ts';
import { trapProgram } from './trap.ts';

const group = (cls: string, ...insns: E.Insn[]): Group => ({ cls, size: insns.reduce((s, i) => s + i.size, 0), build: () => insns });
const xAt = (out: Uint8Array, r: number): bigint => new DataView(out.buffer, out.byteOffset).getBigUint64(SCRATCH_SIZE + 8 * (r - 1), true);
const fAt = (out: Uint8Array, r: number): bigint => new DataView(out.buffer, out.byteOffset).getBigUint64(SCRATCH_SIZE + 248 + 8 * r, true);

describe('difftest image under qemu-riscv64', () => {
  it('round-trips the initial state through prologue and epilogue when the body is empty', async () => {
    const p = generate({ seed: 7, groups: 0 });
    const img = assemble(p);
    const out = await runQemu(toElf(img), OUT_SIZE);
    for (let r = 1; r < 32; r++) {
      if (r === 2 || r === 8) expect(xAt(out, r)).toBe(BigInt(img.scratch));
      else if (r === 3) expect(xAt(out, r)).toBe(BigInt(img.scratch + SCRATCH_SIZE));
      else expect(xAt(out, r)).toBe(p.x[r]);
    }
    for (let r = 0; r < 32; r++) expect(fAt(out, r)).toBe(p.f[r]);
    expect(new DataView(out.buffer, out.byteOffset).getBigUint64(SCRATCH_SIZE + 504, true)).toBe(BigInt(p.fcsr));
    expect(Buffer.from(out.subarray(0, SCRATCH_SIZE)).equals(Buffer.from(p.scratch))).toBe(true);
  });

  it('gives the ISA-defined results of a hand-written body', async () => {
    const base = generate({ seed: 1, groups: 0 });
    const p: Program = {
      ...base,
      groups: [
        group('t', E.opImm('addi', 5, 0, 42), E.op('mul', 6, 5, 5)),
        group('t', E.op('div', 7, 5, 0), E.op('remu', 9, 5, 0)), // ISA §7.2: x/0 = -1, x%0 = x
        group('t', E.store('sd', 6, GP, 0), E.load('lw', 10, GP, 0)),
        group('t', E.fcvtFromInt('w', 'd', 1, 5, 0), E.fsqrt('d', 2, 1, 0), E.fmvToX('d', 11, 2)),
        group('t', E.cImm('c.li', 12, -1), E.cAluImm('c.srli', 12, 60)),
      ],
    };
    const out = await runQemu(toElf(assemble(p)), OUT_SIZE);
    expect(xAt(out, 5)).toBe(42n);
    expect(xAt(out, 6)).toBe(1764n);
    expect(xAt(out, 7)).toBe((1n << 64n) - 1n);
    expect(xAt(out, 9)).toBe(42n);
    expect(xAt(out, 10)).toBe(1764n);
    const f64 = new DataView(new ArrayBuffer(8));
    f64.setFloat64(0, Math.sqrt(42));
    expect(xAt(out, 11)).toBe(f64.getBigUint64(0));
    expect(xAt(out, 12)).toBe(15n);
    expect(new DataView(out.buffer, out.byteOffset).getBigUint64(2048, true)).toBe(1764n);
  });

  it('names every byte of the output region', () => {
    expect(describeOffset(0x18)).toBe('mem[scratch+0x18]');
    expect(describeOffset(SCRATCH_SIZE)).toBe('x1');
    expect(describeOffset(SCRATCH_SIZE + 247)).toBe('x31');
    expect(describeOffset(SCRATCH_SIZE + 248)).toBe('f0');
    expect(describeOffset(SCRATCH_SIZE + 504)).toBe('fcsr');
  });
});

describe('comparison and minimisation', () => {
  // A deliberately faulty "ours": our real hart, with x5's dumped value
  // corrupted whenever the program contains a mulhu. The tester must find
  // it and shrink the program to the single group holding the first mulhu.
  const faultyOurs = (img: ReturnType<typeof assemble>): SideResult => {
    const r = runOurs(img);
    if ('out' in r && img.listing.some((l) => l.group >= 0 && l.insn.asm.startsWith('mulhu '))) {
      const dv = new DataView(r.out.buffer, r.out.byteOffset);
      dv.setBigUint64(SCRATCH_SIZE + 8 * 4, dv.getBigUint64(SCRATCH_SIZE + 8 * 4, true) ^ 1n, true);
    }
    return r;
  };

  it('detects an injected fault and minimises to the group that triggers it', async () => {
    const p = generate({ seed: 11, groups: 300, classes: ['rv64i.op', 'm.op', 'f.arith', 'c.alu'] });
    const first = p.groups.findIndex((g) => g.build(0, 0).some((i) => i.asm.startsWith('mulhu ')));
    expect(first).toBeGreaterThan(0);
    const d = await check(p, undefined, { ours: faultyOurs });
    expect(d).not.toBeNull();
    const m = await minimise(p, d!, 300, { ours: faultyOurs });
    expect(m.groups).toEqual([first]);
    expect(m.diffs.map((x) => x.where)).toEqual(['x5']);
    const text = formatDivergence(p, m);
    expect(text).toContain(`seed 11`);
    expect(text).toMatch(/mulhu x\d+, x\d+, x\d+/);
  });

  it('reports our side stopping before the dump as a divergence', async () => {
    const p = generate({ seed: 12, groups: 20 });
    const d = await check(p, undefined, { ours: () => ({ exit: 'trap cause 2 at pc 0x80000100' }) });
    expect(d?.exit).toContain('cause 2');
    expect(formatDivergence(p, d!)).toContain('ours stopped early: trap cause 2');
  });
});

describe('trap programs', () => {
  it('end with the trapping instruction, which qemu turns into the expected signal', async () => {
    const { program, kase } = trapProgram(3, 'c-reserved');
    const img = assemble(program);
    const last = img.listing.filter((l) => l.group >= 0).at(-1)!;
    expect(last.insn).toBe(kase.insns.at(-1));
    const q = await execQemu(toElf(img));
    expect(q.signal).toBe('SIGILL');
    expect(q.stdout.length).toBe(0);
  });

  it('rejects an unknown trap kind by name', () => {
    expect(() => trapProgram(1, 'no-such-kind')).toThrow(/no-such-kind/);
  });
});
