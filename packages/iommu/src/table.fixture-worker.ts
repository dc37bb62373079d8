// Worker for table.test.ts: reads mapping snapshots through the real
// IommuTableView while the main thread writes, and counts torn ones.
import { parentPort, workerData } from 'node:worker_threads';
import { IommuTableView } from './table.ts';

const { sab, stop, id } = workerData as { sab: SharedArrayBuffer; stop: SharedArrayBuffer; id: number };
const view = new IommuTableView(sab);
const ctl = new Int32Array(stop);
let seen = 0;
let torn = 0;
while (Atomics.load(ctl, 0) === 0) {
  for (let s = 0; s < view.sizes.maxMappings; s++) {
    const m = view.readMapping(s);
    if (!m) continue;
    seen++;
    // The writer keeps end = start + 0xfff and phys = start * 3.
    if (m.virtEnd !== m.virtStart + 0xfff || m.physStart !== m.virtStart * 3) torn++;
  }
  Atomics.store(ctl, 1 + id, seen);
}
parentPort!.postMessage({ seen, torn });
