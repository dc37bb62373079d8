// Property test: the PLIC, driven through its MMIO registers and the
// back-end line API, behaves like a small reference model of the PLIC spec
// 1.0.0 (level gateway, claim = highest priority then lowest id, completion
// only for enabled ids, notification when max priority > threshold) for
// random operation sequences on two harts.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MMIO } from '../layout.ts';
import { MIP } from '../signals.ts';
import { createPlatform, createPlatformState } from './index.ts';

const SOURCES = 12; // ids 1..11 keep collisions frequent
const CONTEXTS = 4; // 2 harts × (M, S)
const PLIC = MMIO.plic.base;

type Op =
  | { k: 'level'; src: number; high: boolean }
  | { k: 'prio'; src: number; v: number }
  | { k: 'enable'; ctx: number; mask: number }
  | { k: 'threshold'; ctx: number; v: number }
  | { k: 'claim'; ctx: number }
  | { k: 'complete'; ctx: number; src: number };

const src = fc.integer({ min: 1, max: SOURCES - 1 });
const ctx = fc.integer({ min: 0, max: CONTEXTS - 1 });
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ k: fc.constant('level' as const), src, high: fc.boolean() }),
  fc.record({ k: fc.constant('prio' as const), src, v: fc.integer({ min: 0, max: 9 }) }),
  fc.record({ k: fc.constant('enable' as const), ctx, mask: fc.integer({ min: 0, max: (1 << SOURCES) - 1 }) }),
  fc.record({ k: fc.constant('threshold' as const), ctx, v: fc.integer({ min: 0, max: 8 }) }),
  fc.record({ k: fc.constant('claim' as const), ctx }),
  fc.record({ k: fc.constant('complete' as const), ctx, src }),
);

class Model {
  prio = new Array<number>(SOURCES).fill(0);
  level = new Array<boolean>(SOURCES).fill(false);
  pending = new Array<boolean>(SOURCES).fill(false);
  inService = new Array<boolean>(SOURCES).fill(false);
  enable = Array.from({ length: CONTEXTS }, () => new Array<boolean>(SOURCES).fill(false));
  threshold = new Array<number>(CONTEXTS).fill(0);

  best(c: number): { id: number; p: number } {
    let id = 0;
    let p = 0;
    for (let s = 1; s < SOURCES; s++) {
      if (this.pending[s] && !this.inService[s] && this.enable[c]![s] && this.prio[s]! > p) {
        p = this.prio[s]!;
        id = s;
      }
    }
    return { id, p };
  }
  apply(o: Op): number | undefined {
    switch (o.k) {
      case 'level':
        this.level[o.src] = o.high;
        this.pending[o.src] = o.high && !this.inService[o.src];
        return undefined;
      case 'prio': this.prio[o.src] = o.v & 7; return undefined;
      case 'enable': for (let s = 0; s < SOURCES; s++) this.enable[o.ctx]![s] = s !== 0 && ((o.mask >> s) & 1) === 1; return undefined;
      case 'threshold': this.threshold[o.ctx] = o.v & 7; return undefined;
      case 'claim': {
        const { id } = this.best(o.ctx);
        if (id) {
          this.pending[id] = false;
          this.inService[id] = true;
        }
        return id;
      }
      case 'complete':
        if (this.enable[o.ctx]![o.src]) {
          this.inService[o.src] = false;
          if (this.level[o.src]) this.pending[o.src] = true;
        }
        return undefined;
    }
  }
  line(c: number): boolean { return this.best(c).p > this.threshold[c]!; }
}

describe('PLIC vs reference model', () => {
  it('agrees on claims and on every context’s interrupt line', () => {
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 60 }), (ops) => {
        const p = createPlatform(createPlatformState({ harts: 2, memBytes: 1 << 20 }), 0);
        const m = new Model();
        for (const o of ops) {
          let got: number | undefined;
          switch (o.k) {
            case 'level': p.plic.setLevel(o.src, o.high); break;
            case 'prio': p.bus.store(PLIC + 4 * o.src, 4, BigInt(o.v), 0); break;
            case 'enable': p.bus.store(PLIC + 0x2000 + 0x80 * o.ctx, 4, BigInt(o.mask), 0); break;
            case 'threshold': p.bus.store(PLIC + 0x20_0000 + 0x1000 * o.ctx, 4, BigInt(o.v), 0); break;
            case 'claim': got = Number(p.bus.load(PLIC + 0x20_0004 + 0x1000 * o.ctx, 4, 0)); break;
            case 'complete': p.bus.store(PLIC + 0x20_0004 + 0x1000 * o.ctx, 4, BigInt(o.src), 0); break;
          }
          expect(got).toBe(m.apply(o));
          for (let c = 0; c < CONTEXTS; c++) {
            const bit = c % 2 === 0 ? MIP.MEIP : MIP.SEIP;
            expect((p.signals.irq(c >> 1) & bit) !== 0).toBe(m.line(c));
          }
        }
      }),
      { numRuns: 300, seed: 0x5eed },
    );
  });
});
