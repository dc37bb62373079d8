// Large-count differential run of our RV64GC hart against qemu-riscv64:
//   pnpm exec node scripts/difftest.ts --count 10000000 --seed 1 [--groups 400] [--classes a,b] [--max-failures 10] [--traps N] [--engine interp|jit] [--lockstep]
// Programs get seeds S, S+1, …; each has --groups groups (≈1.3 instructions
// each). Every distinct divergence (by instruction class and mnemonic) is
// minimised and printed; the exit status is 1 if any was found. --traps N
// also runs N trap programs per trap kind (instructions that must trap).
// --engine jit runs our side on the translator (code translated the first
// time it runs), so the same programs check it against qemu. --lockstep also
// runs every program on the translator and the interpreter in lockstep
// (batches of random size, the whole state compared after each: pc, instret,
// registers, fcsr, then RAM), which qemu cannot check (budget, trap charging).

import { parseArgs } from 'node:util';
import { check, checkTrap, generate, minimise, formatDivergence, formatLockstep, lockstepImage, CLASS_NAMES, TRAP_KIND_NAMES, assemble } from '@vmm/vcpu/testing';
import type { Divergence, Program } from '@vmm/vcpu/testing';
import { ENGINE_KINDS, type EngineKind } from '@vmm/vcpu';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '100000' },
    seed: { type: 'string', default: '1' },
    groups: { type: 'string', default: '400' },
    classes: { type: 'string' },
    'max-failures': { type: 'string', default: '10' },
    traps: { type: 'string', default: '0' },
    engine: { type: 'string', default: 'interp' },
    lockstep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log(`usage: pnpm exec node scripts/difftest.ts [--count N] [--seed S] [--groups G] [--classes a,b] [--max-failures K] [--traps N] [--engine interp|jit] [--lockstep]
  Generated RV64GC programs on our hart vs qemu-riscv64 (and, with --lockstep, the translator vs the interpreter in lockstep).`);
  process.exit(0);
}
const count = Number(values.count), seed0 = Number(values.seed), groups = Number(values.groups);
const maxFailures = Number(values['max-failures']);
const traps = Number(values.traps);
if (!Number.isInteger(traps) || traps < 0) throw new RangeError(`--traps must be a non-negative integer, got ${values.traps}`);
for (const [k, v] of [['count', count], ['seed', seed0], ['groups', groups], ['max-failures', maxFailures]] as const) {
  if (!Number.isInteger(v) || v < 0) throw new RangeError(`--${k} must be a non-negative integer, got ${String(v)}`);
}
if (!(ENGINE_KINDS as readonly string[]).includes(values.engine)) throw new RangeError(`--engine must be ${ENGINE_KINDS.join(' or ')}, got ${values.engine}`);
const engine = values.engine as EngineKind;
const classes = values.classes?.split(',');
for (const c of classes ?? []) if (!CLASS_NAMES.includes(c)) throw new RangeError(`unknown class ${c} (known: ${CLASS_NAMES.join(', ')})`);

/** Key of a divergence for de-duplication: the class and mnemonics of its last group. */
function key(p: Program, d: Divergence): string {
  const last = d.groups[d.groups.length - 1]!;
  const img = assemble(p, [last]);
  const mn = img.listing.filter((l) => l.group === last).map((l) => l.insn.asm.split(' ')[0]);
  return `${p.groups[last]!.cls}:${mn.join('+')}:${d.exit ? 'exit' : d.diffs.map((x) => x.where.replace(/\d+|\[.*\]/g, '')).join(',')}`;
}

const t0 = Date.now();
let insns = 0, programs = 0, lastLog = t0, lockstepDivergences = 0;
const seen = new Map<string, number>();
let seed = seed0;
while (insns < count && seen.size < maxFailures && lockstepDivergences < maxFailures) {
  // Two programs at a time: their qemu processes overlap our (synchronous) runs.
  const batch = [generate({ seed: seed++, groups, classes }), generate({ seed: seed++, groups, classes })];
  const results = await Promise.all(batch.map((p) => check(p, undefined, { engine })));
  for (let i = 0; i < batch.length; i++) {
    const p = batch[i]!;
    insns += assemble(p).bodyInsns;
    programs++;
    if (values.lockstep) {
      // Batches up to 512: every batch boundary is a new block entry, translated at once (threshold 1).
      const ls = lockstepImage(assemble(p), { seed: p.seed, maxBatch: 512 });
      if (ls) {
        lockstepDivergences++;
        if (lockstepDivergences <= maxFailures) console.log(`\n${formatLockstep(p.seed, ls)}\n`);
      }
    }
    const d = results[i];
    if (!d) continue;
    const m = await minimise(p, d, 300, { engine });
    const k = key(p, m);
    seen.set(k, (seen.get(k) ?? 0) + 1);
    if (seen.get(k) === 1) console.log(`\n${formatDivergence(p, m)}\n`);
  }
  if (Date.now() - lastLog > 10_000) {
    lastLog = Date.now();
    console.error(`difftest: ${insns} instructions in ${programs} programs, ${((Date.now() - t0) / 1000).toFixed(0)} s, ${seen.size} distinct divergences`
      + (values.lockstep ? `, ${lockstepDivergences} lockstep divergences` : ''));
  }
}
let trapProblems = 0;
for (const kind of TRAP_KIND_NAMES) {
  for (let k = 0; k < traps; k++) {
    const p = await checkTrap(seed0 + k, kind, engine);
    if (p) { trapProblems++; console.log(p); }
  }
}
if (traps) console.log(`traps: ${traps * TRAP_KIND_NAMES.length} programs, ${trapProblems} disagreements`);
if (trapProblems) process.exitCode = 1;
const secs = (Date.now() - t0) / 1000;
console.log(`difftest (${engine}): seeds ${seed0}..${seed - 1}, ${programs} programs, ${insns} instructions, ${secs.toFixed(1)} s (${Math.round(insns / secs)} insn/s), ${seen.size} distinct divergences from qemu`
  + (values.lockstep ? `, ${lockstepDivergences} programs where the translator and the interpreter differ in lockstep` : ''));
if (lockstepDivergences) process.exitCode = 1;
if (seen.size) {
  console.log(`${seen.size} distinct divergences:`);
  for (const [k, n] of seen) console.log(`  ${k}  ×${n}`);
  process.exitCode = 1;
} else if (!lockstepDivergences) console.log('no divergence');
