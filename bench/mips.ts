// `pnpm bench mips [--iterations N] [--engine interp|jit|both]`: a CPU-bound guest command, a busybox
// sh loop of N iterations, timed inside the guest with /proc/uptime, under
// our vmm and under qemu-system-riscv64 -M virt (TCG) in the same run
// (FACTS.md: 300,000 iterations ≈ 5 s of guest time under QEMU). Last line:
// {"bench":"mips","iterations":N,"ours":S,"reference":S,"ratio":ours/reference}
// (guest seconds; ratio > 1 means slower than QEMU), with "engine"; with
// --engine both, one such line per engine.

import { argValue, engineArg, prepareGuest, runOurs, runQemu } from './_guest.ts';

const RESULT = 'vmm-mips-result';

function loop(n: number): string {
  return `read t0 rest < /proc/uptime; i=0; while [ $i -lt ${n} ]; do i=$((i+1)); done; read t1 rest < /proc/uptime; echo "${RESULT} $t0 $t1 $i"`;
}

function parse(output: string, n: number): number {
  const m = new RegExp(`${RESULT} ([\\d.]+) ([\\d.]+) (\\d+)`).exec(output);
  if (!m || Number(m[3]) !== n) throw new Error(`guest loop output not understood: ${JSON.stringify(output.slice(-500))}`);
  return Number(m[2]) - Number(m[1]);
}

export async function main(args: string[]): Promise<void> {
  const n = argValue(args, '--iterations', 100_000);
  const engines = engineArg(args);
  const g = await prepareGuest();
  const q = await runQemu(g, loop(n), RESULT, 600_000);
  const r = parse(q.output, n);
  console.log(`qemu-system-riscv64 TCG: ${n} iterations in ${r.toFixed(2)} s guest time (${Math.round(n / r)} it/s)`);
  const r2 = (v: number): number => Math.round(v * 100) / 100; // /proc/uptime has 10 ms resolution
  const lines: string[] = [];
  for (const engine of engines) {
    const o = await runOurs(loop(n), RESULT, 3_600_000, engine);
    const s = parse(o.output, n);
    console.log(`vmm --engine ${engine}: ${n} iterations in ${s.toFixed(2)} s guest time (${Math.round(n / s)} it/s)`);
    lines.push(JSON.stringify({ bench: 'mips', engine, iterations: n, ours: r2(s), reference: r2(r), ratio: s / r }));
  }
  for (const l of lines) console.log(l);
}
