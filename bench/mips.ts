// `pnpm bench mips [--iterations N]`: a CPU-bound guest command, a busybox
// sh loop of N iterations, timed inside the guest with /proc/uptime, under
// our vmm and under qemu-system-riscv64 -M virt (TCG) in the same run
// (FACTS.md: 300,000 iterations ≈ 5 s of guest time under QEMU). Last line:
// {"bench":"mips","iterations":N,"ours":S,"reference":S,"ratio":ours/reference}
// (guest seconds; ratio > 1 means slower than QEMU).

import { argValue, prepareGuest, runOurs, runQemu } from './_guest.ts';

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
  const g = await prepareGuest();
  const q = await runQemu(g, loop(n), RESULT, 600_000);
  const r = parse(q.output, n);
  console.log(`qemu-system-riscv64 TCG: ${n} iterations in ${r.toFixed(2)} s guest time (${Math.round(n / r)} it/s)`);
  const o = await runOurs(loop(n), RESULT, 3_600_000);
  const s = parse(o.output, n);
  const r2 = (v: number): number => Math.round(v * 100) / 100; // /proc/uptime has 10 ms resolution
  console.log(`vmm: ${n} iterations in ${s.toFixed(2)} s guest time (${Math.round(n / s)} it/s)`);
  console.log(JSON.stringify({ bench: 'mips', iterations: n, ours: r2(s), reference: r2(r), ratio: s / r }));
}
