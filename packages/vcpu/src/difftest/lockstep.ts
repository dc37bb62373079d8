// Lockstep differential of the translator against its reference, the
// interpreter: the same generated program runs on an interpreter core and a
// translator core (code translated the first time it runs), in batches of
// random size; after every batch pc, privilege, instret, every integer and
// FP register and fcsr must be equal, and at the end all of guest RAM. Equal
// instret after every batch checks that a translated block never runs past
// its budget and that a trap inside a block is charged as the interpreter
// charges it; qemu-riscv64 (check.ts) cannot show either.

import { HartCore, createHartMemory } from '../hart/wasm.ts';
import { PRIV, type EngineExit } from '../engine.ts';
import { Rng } from './generator.ts';
import type { Image } from './image.ts';

const MSTATUS_FS_INITIAL = 1n << 13n;
const CSR_FCSR = 0x003;

export interface LockstepOptions {
  /** Seed of the batch sizes. */
  seed: number;
  /** Largest batch (instructions); batch sizes are 1..maxBatch. Default 64. */
  maxBatch?: number;
  /** Run the image this many times on the same cores (re-runs use the blocks already translated). Default 1. */
  runs?: number;
}

export interface LockstepDivergence {
  /** Which run (0-based) and batch, and how many instructions that batch was given. */
  run: number;
  batch: number;
  instructions: number;
  interp: string;
  jit: string;
}

const cores = new Map<number, { interp: HartCore; jit: HartCore }>();

function coresFor(ramSize: number): { interp: HartCore; jit: HartCore } {
  let c = cores.get(ramSize);
  if (!c) {
    const mk = (engine: 'interp' | 'jit'): HartCore =>
      new HartCore({ memory: createHartMemory(ramSize), hartId: 0, ramSize, mode: 'snippet', engine, jitThreshold: 1 });
    c = { interp: mk('interp'), jit: mk('jit') };
    cores.set(ramSize, c);
  }
  return c;
}

function describe(c: HartCore, r: EngineExit): string {
  const exit = r.kind === 'trap' ? `trap(${r.cause},0x${r.tval.toString(16)})` : r.kind;
  const xs = Array.from({ length: 32 }, (_, i) => c.x(i).toString(16)).join(',');
  const fs = Array.from({ length: 32 }, (_, i) => c.f(i).toString(16)).join(',');
  return `exit=${exit} pc=${c.pc.toString(16)} priv=${c.priv} instret=${c.instret} fcsr=${c.readCsr(CSR_FCSR)!.toString(16)} x=[${xs}] f=[${fs}]`;
}

function load(c: HartCore, img: Image): void {
  c.reset();
  const ram = c.ram();
  ram.fill(0);
  ram.set(img.segment);
  for (let i = 1; i < 32; i++) c.setX(i, 0n);
  for (let i = 0; i < 32; i++) c.setF(i, 0n);
  c.writeCsr(0x300, MSTATUS_FS_INITIAL);
  c.pc = BigInt(img.entry);
  c.priv = PRIV.U;
}

/** Run `img` (a difftest image, bare U-mode) on both engines in lockstep; null when they agree throughout. */
export function lockstepImage(img: Image, opts: LockstepOptions): LockstepDivergence | null {
  const ramSize = Math.max(1 << 20, Math.ceil(img.segment.length / 65536) * 65536);
  const { interp, jit } = coresFor(ramSize);
  const rng = new Rng(opts.seed);
  const maxBatch = opts.maxBatch ?? 64;
  const limit = img.bodyInsns + 1000; // forward-only control flow: every instruction runs at most once
  for (let run = 0; run < (opts.runs ?? 1); run++) {
    load(interp, img);
    load(jit, img);
    let done = 0;
    for (let batch = 0; done < limit; batch++) {
      const n = 1 + rng.int(maxBatch);
      done += n;
      const ra = interp.run(n), rb = jit.run(n);
      const a = describe(interp, ra), b = describe(jit, rb);
      if (a !== b) return { run, batch, instructions: n, interp: a, jit: b };
      if (ra.kind !== 'limit') break;
    }
    if (!Buffer.from(interp.ram()).equals(Buffer.from(jit.ram()))) {
      const x = interp.ram(), y = jit.ram();
      let o = 0;
      while (x[o] === y[o]) o++;
      return { run, batch: -1, instructions: 0, interp: `ram[0x${o.toString(16)}]=${x[o]}`, jit: `ram[0x${o.toString(16)}]=${y[o]}` };
    }
  }
  return null;
}

/** A report a person can act on: where the two engines first disagreed, and the differing fields. */
export function formatLockstep(seed: number, d: LockstepDivergence): string {
  const fa = d.interp.split(' '), fb = d.jit.split(' ');
  const diff = fa.map((f, i) => (f === fb[i] ? null : `  interp ${f}\n  jit    ${fb[i]}`)).filter((l) => l !== null);
  return `seed ${seed}: translator and interpreter differ after run ${d.run} batch ${d.batch} (${d.instructions} instructions)\n${diff.join('\n')}`;
}
