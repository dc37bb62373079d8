// The encoders are checked against GNU as: every instruction of generated
// programs (all classes, several seeds) is re-assembled from its assembly
// text by riscv64-linux-gnu-as (Debian binutils-riscv64-linux-gnu) and must
// give the same bytes.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { generate, CLASS_NAMES } from './generator.ts';
import { assemble, BASE } from './image.ts';
import * as E from './encode.ts';

function gas(lines: string[]): Uint8Array {
  try {
    execFileSync('riscv64-linux-gnu-as', ['--version']);
  } catch {
    throw new Error('riscv64-linux-gnu-as not found: install the Debian package binutils-riscv64-linux-gnu (scripts/setup.sh)');
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'difftest-as-'));
  try {
    const src = ['.option norelax', '.option norvc', ...lines].join('\n') + '\n';
    writeFileSync(path.join(dir, 'a.s'), src);
    execFileSync('riscv64-linux-gnu-as', ['-march=rv64gc', '-o', path.join(dir, 'a.o'), path.join(dir, 'a.s')]);
    execFileSync('riscv64-linux-gnu-objcopy', ['-O', 'binary', '-j', '.text', path.join(dir, 'a.o'), path.join(dir, 'a.bin')]);
    return new Uint8Array(readFileSync(path.join(dir, 'a.bin')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const asLine = (i: E.Insn): string[] => (i.size === 2 ? ['.option rvc', i.asm, '.option norvc'] : [i.asm]);

describe('RV64GC encoders', () => {
  it('match GNU as for whole generated programs (prologue, every class, epilogue)', () => {
    for (const seed of [1, 2, 3]) {
      const img = assemble(generate({ seed, groups: 600 }));
      const lines = img.listing.flatMap((l) => asLine(l.insn));
      const ours = img.segment.subarray(0, img.listing.at(-1)!.addr + img.listing.at(-1)!.insn.size - BASE);
      const ref = gas(lines);
      expect(ref.length).toBe(ours.length);
      // Report the first mismatching instruction rather than a byte dump.
      for (const l of img.listing) {
        const o = l.addr - BASE;
        const got = Buffer.from(ours.subarray(o, o + l.insn.size)).toString('hex');
        const want = Buffer.from(ref.subarray(o, o + l.insn.size)).toString('hex');
        expect(`${l.insn.asm} ${got}`).toBe(`${l.insn.asm} ${want}`);
      }
      const classes = new Set(img.listing.filter((l) => l.group >= 0).map((l) => generate({ seed, groups: 600 }).groups[l.group]!.cls));
      expect(classes.size).toBeGreaterThanOrEqual(CLASS_NAMES.length - 1);
    }
  });

  it('match GNU as at immediate and offset extremes', () => {
    const insns = [
      E.opImm('addi', 1, 2, -2048), E.opImm('addi', 1, 2, 2047), E.shiftImm('srai', 5, 6, 63), E.shiftImm('sraiw', 5, 6, 31),
      E.lui(7, 0x80000), E.auipc(7, 0xfffff), E.branch('bgeu', 31, 30, 4094), E.branch('blt', 1, 2, -4096),
      E.jal(1, 1048574), E.jal(0, -1048576), E.store('sd', 31, 3, -2048), E.fstore('fsw', 31, 3, 2044),
      E.amo('sc', true, true, true, 1, 2, 3), E.amo('lr', false, true, false, 4, 5, 0), E.amo('amomaxu', true, false, true, 6, 7, 8),
      E.csr('csrrci', 9, 3, 31), E.fma('fnmadd', 'd', 31, 30, 29, 28, 4), E.fcvtToInt('lu', 's', 31, 0, 1),
      E.cJ(2046), E.cJ(-2048), E.cBranch('c.bnez', 15, 254), E.cBranch('c.beqz', 8, -256), E.cAddi16sp(-512), E.cAddi16sp(496),
      E.cAddi4spn(15, 1020), E.cLui(31, -32), E.cLui(1, 31), E.cImm('c.addiw', 31, -32), E.cImm('c.slli', 1, 63),
      E.cAluImm('c.srai', 15, 63), E.cAluImm('c.andi', 8, -32), E.cSp('c.ldsp', 31, 504), E.cSp('c.sdsp', 0, 504),
      E.cSp('c.lwsp', 1, 252), E.cSp('c.swsp', 31, 252), E.cSp('c.fldsp', 0, 504), E.cSp('c.fsdsp', 31, 0),
      E.cMem('c.ld', 15, 8, 248), E.cMem('c.lw', 9, 10, 124), E.cMem('c.fsd', 8, 15, 248), E.cMem('c.sw', 15, 15, 4),
      E.cAlu('c.addw', 15, 8), E.cAlu('c.sub', 8, 15), E.cMvAdd('c.add', 31, 1), E.cJr('c.jalr', 31),
    ];
    const ref = gas(insns.flatMap(asLine));
    let o = 0;
    for (const i of insns) {
      const want = i.size === 4 ? new DataView(ref.buffer).getUint32(o, true) : new DataView(ref.buffer).getUint16(o, true);
      expect(`${i.asm} ${i.word.toString(16)}`).toBe(`${i.asm} ${want.toString(16)}`);
      o += i.size;
    }
  });

  it('rejects out-of-range operands with a typed error naming the value', () => {
    expect(() => E.opImm('addi', 1, 1, 2048)).toThrow(/2048/);
    expect(() => E.cJ(2048)).toThrow(E.EncodeError);
    expect(() => E.cMem('c.ld', 7, 8, 0)).toThrow(/x7/);
    expect(() => E.cAddi16sp(0)).toThrow(E.EncodeError);
  });
});
