// Differential test of our RV64GC hart against qemu-riscv64 (Debian
// qemu-user): a fixed seed, a few thousand generated instructions covering
// every class (RV64I, M, A, F/D in all rounding modes, Zicsr on
// fcsr/frm/fflags, C), and instructions that must trap. Any divergence fails with the minimised program, the
// instruction, and the expected and actual values. Large counts: scripts/difftest.ts.
import { describe, expect, it } from 'vitest';
import { assemble, check, checkTrap, CLASS_NAMES, formatDivergence, generate, minimise, TRAP_KIND_NAMES } from '@vmm/vcpu/testing';

const SEED = 20261123;
const PROGRAMS = 6;
const GROUPS = 500;

describe('RV64GC hart vs qemu-riscv64', () => {
  it(`agrees on ${PROGRAMS} programs of ${GROUPS} groups from seed ${SEED}`, async () => {
    const seen = new Set<string>();
    let insns = 0;
    const reports: string[] = [];
    for (let k = 0; k < PROGRAMS; k++) {
      const p = generate({ seed: SEED + k, groups: GROUPS });
      p.groups.forEach((g) => seen.add(g.cls.startsWith('a.sc') ? 'a.lrsc' : g.cls));
      insns += assemble(p).bodyInsns;
      const d = await check(p);
      if (d) reports.push(formatDivergence(p, await minimise(p, d, 120)));
    }
    expect(insns).toBeGreaterThan(3000);
    expect([...seen].sort()).toEqual([...CLASS_NAMES].sort());
    expect(reports.join('\n\n')).toBe('');
  });

  it('traps like qemu (SIGILL/SIGBUS/SIGSEGV/SIGTRAP vs cause and pc) for every trap kind', async () => {
    const problems: string[] = [];
    for (const kind of TRAP_KIND_NAMES) {
      for (let k = 0; k < 4; k++) {
        const p = await checkTrap(SEED + k, kind);
        if (p) problems.push(p);
      }
    }
    expect(problems.join('\n')).toBe('');
  });
});
