// Runs one program on both sides, compares, and minimises a divergence to
// the shortest failing prefix and then a small failing subset of groups.

import { runSnippet } from '../hart/snippet.ts';
import type { EngineKind } from '../engine.ts';
import type { Program } from './generator.ts';
import { assemble, describeOffset, OUT_SIZE, toElf, BASE } from './image.ts';
import type { Image } from './image.ts';
import { QemuError, runQemu } from './qemu.ts';

export interface Difference {
  /** x5, f12, fcsr or mem[scratch+0x18]. */
  readonly where: string;
  readonly expected: bigint;
  readonly got: bigint;
}

export interface Divergence {
  readonly seed: number;
  /** Indices (into program.groups) of the groups in the failing program. */
  readonly groups: number[];
  /** Our hart did not reach the dump's ECALL: how it stopped instead. */
  readonly exit?: string;
  readonly diffs: Difference[];
}

/** Generous bound: every body instruction runs at most once (forward-only control flow). */
function budget(img: Image): number {
  return img.bodyInsns + 1000;
}

/** What one side produced: the output region, or how it stopped before the dump's ECALL. */
export type SideResult = { out: Uint8Array } | { exit: string };

export interface CheckOptions {
  /** Our side (default: runSnippet on a bare U-mode hart). Tests substitute a faulty one to check detection. */
  ours?: (img: Image) => SideResult;
  /** Engine of our side when `ours` is not given (default interp). */
  engine?: EngineKind;
}

/** Our side: runSnippet on the image, read the output region back from guest RAM. */
export function runOurs(img: Image, engine: EngineKind = 'interp'): SideResult {
  const r = runSnippet({ ram: img.segment, entry: BigInt(img.entry), maxInstructions: budget(img), privilege: 'U', engine });
  if (r.exit.kind !== 'ecall') {
    const why = r.exit.kind === 'trap' ? `trap cause ${r.exit.cause} tval 0x${r.exit.tval.toString(16)}` : 'instruction limit';
    return { exit: `${why} at pc 0x${r.pc.toString(16)}` };
  }
  if (r.x[17] !== 64n) return { exit: `stopped at an ECALL with a7=${r.x[17]} at pc 0x${r.pc.toString(16)}, not the dump's write` };
  const off = img.scratch - BASE;
  return { out: r.ram.slice(off, off + OUT_SIZE) };
}

function compare(expected: Uint8Array, got: Uint8Array): Difference[] {
  const e = new DataView(expected.buffer, expected.byteOffset, expected.length);
  const g = new DataView(got.buffer, got.byteOffset, got.length);
  const diffs: Difference[] = [];
  for (let o = 0; o < OUT_SIZE; o += 8) {
    const a = e.getBigUint64(o, true), b = g.getBigUint64(o, true);
    if (a !== b) diffs.push({ where: describeOffset(o), expected: a, got: b });
  }
  // Registers first: a wrong register usually explains the memory that follows.
  return diffs.sort((p, q) => Number(p.where.startsWith('mem')) - Number(q.where.startsWith('mem')));
}

/** Run the program (restricted to `keep` groups) on both sides; null when they agree. */
export async function check(program: Program, keep?: number[], opts: CheckOptions = {}): Promise<Divergence | null> {
  const img = assemble(program, keep);
  const groups = keep ?? program.groups.map((_, i) => i);
  const ref = runQemu(toElf(img), OUT_SIZE);
  ref.catch(() => undefined); // handled below; keeps a throw from our side from leaving it unhandled
  const mine = opts.ours ? opts.ours(img) : runOurs(img, opts.engine);
  // qemu rejecting a program (SIGILL, no dump) is a generator bug: name the seed.
  const expected = await ref.catch((e: unknown) => {
    throw new QemuError(`seed ${program.seed} (${groups.length} groups): ${e instanceof Error ? e.message : String(e)}`);
  });
  if ('exit' in mine) return { seed: program.seed, groups, exit: mine.exit, diffs: [] };
  const diffs = compare(expected, mine.out);
  return diffs.length ? { seed: program.seed, groups, diffs } : null;
}

/**
 * Shrink a divergence: binary-search the shortest failing prefix (its last
 * group is where the two sides first disagree), then greedily drop earlier
 * groups that are not needed to reproduce it. Bounded by `maxRuns` checks.
 */
export async function minimise(program: Program, d: Divergence, maxRuns = 300, opts: CheckOptions = {}): Promise<Divergence> {
  let runs = 0;
  let best = d;
  let lo = 0, hi = d.groups.length; // prefix of length hi fails; length lo is assumed to pass
  while (hi - lo > 1 && runs < maxRuns) {
    const mid = (lo + hi) >> 1;
    runs++;
    const r = await check(program, d.groups.slice(0, mid), opts);
    if (r) { hi = mid; best = r; } else lo = mid;
  }
  let keep = d.groups.slice(0, hi);
  // Greedy removal, largest chunks first (ddmin-style), always keeping the last group.
  for (let chunk = Math.max(1, keep.length >> 1); chunk >= 1 && runs < maxRuns; chunk >>= 1) {
    let end = keep.length - 1;
    while (end > 0 && runs < maxRuns) {
      const start = Math.max(0, end - chunk);
      const trial = [...keep.slice(0, start), ...keep.slice(end)];
      runs++;
      const r = await check(program, trial, opts);
      if (r) { keep = trial; best = r; }
      end = start;
    }
  }
  return best;
}

const hex = (v: bigint): string => `0x${v.toString(16).padStart(16, '0')}`;

/** A report a person can act on: seed, failing groups disassembled, the differing values. */
export function formatDivergence(program: Program, d: Divergence): string {
  const img = assemble(program, d.groups);
  const lines = [`seed ${d.seed}: divergence after group #${d.groups[d.groups.length - 1]} (minimal program of ${d.groups.length} groups)`];
  for (const l of img.listing) {
    if (l.group < 0) continue;
    const w = l.insn.size === 4 ? l.insn.word.toString(16).padStart(8, '0') : l.insn.word.toString(16).padStart(4, '0').padEnd(8);
    lines.push(`  #${String(l.group).padEnd(6)} ${l.addr.toString(16)}: ${w}  ${l.insn.asm}   [${program.groups[l.group]!.cls}]`);
  }
  if (d.exit) lines.push(`  ours stopped early: ${d.exit}`);
  for (const x of d.diffs.slice(0, 12)) lines.push(`  ${x.where.padEnd(22)} qemu ${hex(x.expected)}  ours ${hex(x.got)}`);
  if (d.diffs.length > 12) lines.push(`  … and ${d.diffs.length - 12} more differences`);
  const init = d.diffs.filter((x) => /^[xf]\d+$/.test(x.where)).map((x) => {
    const n = Number(x.where.slice(1));
    return `${x.where}₀=${hex(x.where[0] === 'x' ? program.x[n]! : program.f[n]!)}`;
  });
  if (init.length) lines.push(`  initial: ${init.join(' ')} fcsr₀=0x${program.fcsr.toString(16)}`);
  return lines.join('\n');
}

