// MMU tests (privileged 1.12 §4.3–4.5): Sv39 and Sv48 walks, superpages,
// A/D updates, permission faults with SUM/MXR/MPRV, canonical addresses,
// SFENCE.VMA. S-mode code runs through an identity gigapage; every fault
// goes to an M-mode handler (`j .`) so mcause/mtval can be inspected.
import { describe, expect, it } from 'vitest';
import { A, li, REG } from './asm.ts';
import { HartCore, createHartMemory } from './wasm.ts';
import { RAM_BASE } from '../layout.ts';

const BASE = BigInt(RAM_BASE);
const V = 1n, R = 2n, W = 4n, X = 8n, U = 16n, AB = 64n, D = 128n;
const { a0, a1, t0, t1 } = REG;
const ramSize = 4 << 20;
const ROOT39 = 0x10000, L1 = 0x11000, L0 = 0x12000, ROOT48 = 0x30000;
const PAGE_A = 0x20000, PAGE_B = 0x21000, MEGA = 0x200000, M_HANDLER = 0x1000;
const pte = (off: number, flags: bigint) => (((BASE + BigInt(off)) >> 12n) << 10n) | flags;

class Rig {
  readonly core = new HartCore({ memory: createHartMemory(ramSize), hartId: 0, ramSize, mode: 'firmware' });
  readonly dv = new DataView(this.core.memory.buffer as SharedArrayBuffer, this.core.ram().byteOffset, ramSize);
  constructor(dataFlags: bigint, sv48 = false) {
    const c = this.core;
    this.w64(ROOT39 + 2 * 8, pte(0, V | R | W | X | AB | D)); // identity gigapage over RAM
    this.w64(ROOT39 + 0 * 8, pte(L1, V));
    this.w64(L1 + 0 * 8, pte(L0, V));
    this.w64(L0 + 1 * 8, pte(PAGE_A, dataFlags)); // VA 0x1000 → PAGE_A
    this.w64(L1 + 1 * 8, pte(MEGA, V | R | W | AB | D)); // VA 0x200000 → MEGA (2 MiB)
    this.w64(ROOT48, pte(ROOT39, V));
    this.w64(PAGE_A, 0x1111_1111_1111_1111n);
    this.w64(PAGE_B, 0x2222_2222_2222_2222n);
    this.w64(MEGA + 8, 0x3333_3333_3333_3333n);
    this.code(M_HANDLER, [A.jal(0, 0)]);
    c.writeCsr(0x305, BASE + BigInt(M_HANDLER));
    c.writeCsr(0x180, sv48 ? (9n << 60n) | ((BASE + BigInt(ROOT48)) >> 12n) : (8n << 60n) | ((BASE + BigInt(ROOT39)) >> 12n));
  }
  w64(off: number, v: bigint): void { this.dv.setBigUint64(off, v, true); }
  r64(off: number): bigint { return this.dv.getBigUint64(off, true); }
  code(off: number, words: number[]): void { words.forEach((w, i) => this.dv.setUint32(off + 4 * i, w, true)); }
  /** Run `words` in S-mode (or U) from RAM_BASE; a final `j .` is appended. */
  runS(words: number[], priv: 0 | 1 = 1, steps = 50): void {
    this.code(0, [...words, A.jal(0, 0)]);
    this.core.pc = BASE;
    this.core.priv = priv;
    this.core.run(steps);
  }
  get trapped(): { cause: bigint; tval: bigint } | null {
    if (this.core.priv !== 3) return null;
    return { cause: this.core.readCsr(0x342)!, tval: this.core.readCsr(0x343)! };
  }
}

for (const sv48 of [false, true]) {
  describe(sv48 ? 'Sv48' : 'Sv39', () => {
    it('translates a 4 KiB page and sets A on a load, D on a store, atomically in the PTE', () => {
      const rig = new Rig(V | R | W);
      rig.core.writeCsr(0x180, sv48 ? (9n << 60n) | ((BASE + BigInt(ROOT48)) >> 12n) : rig.core.readCsr(0x180)!);
      rig.runS([...li(t0, 0x1000n), A.ld(a0, t0, 0)]);
      expect(rig.trapped).toBeNull();
      expect(rig.core.x(a0)).toBe(0x1111_1111_1111_1111n);
      expect(rig.r64(L0 + 8) & (AB | D)).toBe(AB);
      rig.runS([...li(t0, 0x1000n), A.sd(t0, t0, 8)]);
      expect(rig.r64(L0 + 8) & (AB | D)).toBe(AB | D);
      expect(rig.r64(PAGE_A + 8)).toBe(0x1000n);
    });

    it('store to a read-only page is a store page fault with tval = VA', () => {
      const rig = new Rig(V | R | AB, sv48);
      rig.runS([...li(t0, 0x1000n), A.sd(t0, t0, 0x10)]);
      expect(rig.trapped).toEqual({ cause: 15n, tval: 0x1010n });
    });

    it('U pages: S needs SUM for data, never executes them; U cannot touch S pages', () => {
      const rig = new Rig(V | R | W | X | U | AB | D, sv48);
      rig.runS([...li(t0, 0x1000n), A.ld(a0, t0, 0)]);
      expect(rig.trapped).toEqual({ cause: 13n, tval: 0x1000n });
      const sum = new Rig(V | R | W | X | U | AB | D, sv48);
      sum.core.writeCsr(0x100, 1n << 18n);
      sum.runS([...li(t0, 0x1000n), A.ld(a0, t0, 0)]);
      expect(sum.trapped).toBeNull();
      expect(sum.core.x(a0)).toBe(0x1111_1111_1111_1111n);
      sum.runS([...li(t0, 0x1000n), A.jalr(0, t0, 0)]);
      expect(sum.trapped).toEqual({ cause: 12n, tval: 0x1000n });
      // U-mode fetching from the supervisor gigapage.
      const usr = new Rig(V | R | U | AB, sv48);
      usr.runS([A.addi(a0, 0, 1)], 0);
      expect(usr.trapped).toEqual({ cause: 12n, tval: BASE });
    });

    it('MXR makes execute-only pages readable', () => {
      const rig = new Rig(V | X | AB, sv48);
      rig.runS([...li(t0, 0x1000n), A.ld(a0, t0, 0)]);
      expect(rig.trapped).toEqual({ cause: 13n, tval: 0x1000n });
      const mxr = new Rig(V | X | AB, sv48);
      mxr.core.writeCsr(0x100, 1n << 19n);
      mxr.runS([...li(t0, 0x1000n), A.ld(a0, t0, 0)]);
      expect(mxr.trapped).toBeNull();
      expect(mxr.core.x(a0)).toBe(0x1111_1111_1111_1111n);
    });

    it('megapages translate, misaligned ones fault', () => {
      const rig = new Rig(V | R | AB, sv48);
      rig.runS([...li(t0, 0x200000n), A.ld(a0, t0, 8)]);
      expect(rig.trapped).toBeNull();
      expect(rig.core.x(a0)).toBe(0x3333_3333_3333_3333n);
      const bad = new Rig(V | R | AB, sv48);
      bad.w64(L1 + 8, pte(MEGA + 0x1000, V | R | W | AB | D));
      bad.runS([...li(t0, 0x200000n), A.ld(a0, t0, 8)]);
      expect(bad.trapped).toEqual({ cause: 13n, tval: 0x200008n });
    });

    it('invalid PTEs, W-without-R and non-canonical addresses are page faults; unmapped fetch too', () => {
      const inv = new Rig(R | W | AB, sv48);
      inv.runS([...li(t0, 0x1000n), A.ld(a0, t0, 0)]);
      expect(inv.trapped).toEqual({ cause: 13n, tval: 0x1000n });
      const wo = new Rig(V | W | AB, sv48);
      wo.runS([...li(t0, 0x1000n), A.sd(a0, t0, 0)]);
      expect(wo.trapped).toEqual({ cause: 15n, tval: 0x1000n });
      const nc = new Rig(V | R | AB, sv48);
      const va = sv48 ? 1n << 47n : 1n << 38n;
      nc.runS([...li(t0, va), A.ld(a0, t0, 0)]);
      expect(nc.trapped).toEqual({ cause: 13n, tval: va });
      const nf = new Rig(V | R | AB, sv48);
      nf.runS([...li(t0, 0x5000n), A.jalr(0, t0, 0)]);
      expect(nf.trapped).toEqual({ cause: 12n, tval: 0x5000n });
    });

    it('SFENCE.VMA makes a changed PTE visible', () => {
      const rig = new Rig(V | R | W | AB | D, sv48);
      rig.runS([
        ...li(t0, 0x1000n), A.ld(a0, t0, 0),
        ...li(t1, BASE + BigInt(L0 + 8)), ...li(a1, pte(PAGE_B, V | R | W | AB | D)), A.sd(a1, t1, 0),
        A.sfence_vma(), A.ld(a1, t0, 0),
      ], 1, 100);
      expect(rig.trapped).toBeNull();
      expect(rig.core.x(a0)).toBe(0x1111_1111_1111_1111n);
      expect(rig.core.x(a1)).toBe(0x2222_2222_2222_2222n);
    });
  });
}

describe('MPRV', () => {
  it('M-mode loads translate with MPP privilege when MPRV = 1; fetches do not', () => {
    const rig = new Rig(V | R | AB);
    rig.core.writeCsr(0x300, (1n << 17n) | (1n << 11n)); // MPRV, MPP = S
    rig.code(0, [...li(t0, 0x1000n), A.ld(a0, t0, 0), A.jal(0, 0)]);
    rig.core.pc = BASE;
    rig.core.run(10);
    expect(rig.core.readCsr(0x342)).toBe(0n);
    expect(rig.core.x(a0)).toBe(0x1111_1111_1111_1111n);
  });

  it('the host can flush the TLB (REQ.TLB_FLUSH path)', () => {
    const rig = new Rig(V | R | W | AB | D);
    rig.runS([...li(t0, 0x1000n), A.ld(a0, t0, 0)]);
    rig.w64(L0 + 8, pte(PAGE_B, V | R | W | AB | D));
    rig.core.flushTlb();
    rig.runS([...li(t0, 0x1000n), A.ld(a0, t0, 0)]);
    expect(rig.core.x(a0)).toBe(0x2222_2222_2222_2222n);
  });
});
