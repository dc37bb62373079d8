// `pnpm bench boot [--runs K]`: wall time from process start to a marker
// echoed by the guest's init (through --exec), for the guest kit's kernel
// and initramfs under our vmm and under qemu-system-riscv64 -M virt (TCG),
// measured in the same run. Last line:
// {"bench":"boot","ours":S,"reference":S,"ratio":ours/reference}

import { randomBytes } from 'node:crypto';
import { argValue, median, prepareGuest, runOurs, runQemu } from './_guest.ts';

export async function main(args: string[]): Promise<void> {
  const runs = argValue(args, '--runs', 3);
  const g = await prepareGuest();
  const ours: number[] = [], ref: number[] = [];
  for (let k = 0; k < runs; k++) {
    const marker = `vmm-boot-marker-${randomBytes(4).toString('hex')}`;
    // Alternate the two so a busy neighbour on the shared host hits both alike.
    const q = await runQemu(g, `echo ${marker}`, marker, 300_000);
    ref.push(q.markerSeconds);
    const o = await runOurs(`echo ${marker}`, marker, 900_000);
    ours.push(o.markerSeconds);
    console.log(`run ${k + 1}: vmm ${o.markerSeconds.toFixed(2)} s, qemu ${q.markerSeconds.toFixed(2)} s`);
  }
  const o = median(ours), r = median(ref);
  console.log(`boot to marker (median of ${runs}): vmm ${o.toFixed(2)} s, qemu-system-riscv64 TCG ${r.toFixed(2)} s`);
  console.log(JSON.stringify({ bench: 'boot', runs, ours: o, reference: r, ratio: o / r }));
}
