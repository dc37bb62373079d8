// `pnpm bench boot [--runs K] [--engine interp|jit|both]`: wall time from process start to a marker
// echoed by the guest's init (through --exec), for the guest kit's kernel
// and initramfs under our vmm and under qemu-system-riscv64 -M virt (TCG),
// measured in the same run. Last line:
// {"bench":"boot","engine":E,"ours":S,"reference":S,"ratio":ours/reference}, one per engine.

import { randomBytes } from 'node:crypto';
import { argValue, engineArg, median, prepareGuest, runOurs, runQemu } from './_guest.ts';

export async function main(args: string[]): Promise<void> {
  const runs = argValue(args, '--runs', 3);
  const engines = engineArg(args);
  const g = await prepareGuest();
  const ours = new Map(engines.map((e) => [e, [] as number[]]));
  const ref: number[] = [];
  for (let k = 0; k < runs; k++) {
    const marker = `vmm-boot-marker-${randomBytes(4).toString('hex')}`;
    // Alternate them so a busy neighbour on the shared host hits all alike.
    const q = await runQemu(g, `echo ${marker}`, marker, 300_000);
    ref.push(q.markerSeconds);
    const line = [`run ${k + 1}: qemu ${q.markerSeconds.toFixed(2)} s`];
    for (const e of engines) {
      const o = await runOurs(`echo ${marker}`, marker, 900_000, e);
      ours.get(e)!.push(o.markerSeconds);
      line.push(`vmm --engine ${e} ${o.markerSeconds.toFixed(2)} s`);
    }
    console.log(line.join(', '));
  }
  const r = median(ref);
  const lines: string[] = [];
  for (const e of engines) {
    const o = median(ours.get(e)!);
    console.log(`boot to marker (median of ${runs}): vmm --engine ${e} ${o.toFixed(2)} s, qemu-system-riscv64 TCG ${r.toFixed(2)} s`);
    lines.push(JSON.stringify({ bench: 'boot', engine: e, runs, ours: o, reference: r, ratio: o / r }));
  }
  for (const l of lines) console.log(l);
}
