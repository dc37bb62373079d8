// `pnpm bench recover [--kills N]`: SIGKILL a disk's vmm-blk process under a
// verifying guest write workload N times (default 1000; CI-sized with
// --kills 10) and measure, on the host, the time from each kill to the next
// completed guest request (the first used-buffer notification from the
// replacement process). At the end the guest re-reads every block: a block
// that does not carry the last round's tag is lost or corrupt.
// Last line: {"bench":"recover","p50_ms":…,"p99_ms":…,"lost":N,"kills":N}
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startGuestSession } from '@vmm/orchestrator';

const BLOCKS = 256;
/** No completion this long after a kill is a stall: fail with the rings' state rather than wait forever. */
const STALL_MS = 10_000;

type Disk = ReturnType<Awaited<ReturnType<typeof startGuestSession>>['attached']['vm']['devices']>[number];

/** The disk's next used-buffer notification, or an error naming the rings' avail/used indices and inflight heads. */
async function nextCompletionOrStall(d: Disk, what: string): Promise<number> {
  let timer: NodeJS.Timeout | undefined;
  const stall = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const rings = d.diagnose().map((r) => `queue ${r.queue}: avail.idx ${r.availIdx} used.idx ${r.usedIdx} (${r.outstanding} outstanding), inflight heads [${r.inflight.join(',')}]`);
      reject(new Error(`recover: ${what}: no request completed for ${STALL_MS / 1000} s (vmm-blk pid ${d.pid}, state ${d.state}, restarts ${d.restarts}); ${rings.join('; ') || 'no ring set up'}`));
    }, STALL_MS);
  });
  try {
    return await Promise.race([d.nextCompletion(), stall]);
  } finally {
    clearTimeout(timer);
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { kills: { type: 'string', default: '1000' }, help: { type: 'boolean' } } });
  if (values.help) {
    console.log('usage: pnpm bench recover [--kills N]   (default 1000)');
    return;
  }
  const kills = Number(values.kills);
  if (!Number.isInteger(kills) || kills < 1) throw new Error(`--kills ${values.kills}: a positive integer`);
  const dir = mkdtempSync(join(tmpdir(), 'vmm-recover-'));
  const disk = join(dir, 'disk.img');
  const stop = join(dir, 'stop.img');
  writeFileSync(disk, Buffer.alloc(BLOCKS * 4096));
  writeFileSync(stop, Buffer.alloc(1 << 20));
  const cmd = `
i=0; while [ $i -lt ${BLOCKS} ]; do printf "r%06d-b%06d" 0 $i | dd of=/dev/vda bs=4096 seek=$i conv=notrunc 2>/dev/null; i=$((i+1)); done; sync
echo @@GO@@
r=0
while [ ! -e /sys/block/vdb ]; do r=$((r+1)); i=0; while [ $i -lt ${BLOCKS} ]; do printf "r%06d-b%06d" $r $i | dd of=/dev/vda bs=4096 seek=$i conv=notrunc,fsync 2>/dev/null || echo WERR; i=$((i+1)); [ -e /sys/block/vdb ] && break; done; done
full=$r; [ $i -lt ${BLOCKS} ] && full=$((r-1))
echo 3 > /proc/sys/vm/drop_caches
bad=0; i=0; while [ $i -lt ${BLOCKS} ]; do v=$(dd if=/dev/vda bs=4096 skip=$i count=1 2>/dev/null | head -c 15); want=$(printf r%06d-b%06d $r $i); old=$(printf r%06d-b%06d $full $i); [ "$v" = "$want" ] || [ "$v" = "$old" ] || bad=$((bad+1)); i=$((i+1)); done
echo "LOST=$bad IOERRORS=$(dmesg | grep -ci 'i/o error')"
`;
  const g = await startGuestSession({ cmd, disks: [`${disk},format=raw,id=bench`] });
  const times: number[] = [];
  try {
    await g.waitFor('@@GO@@');
    const vm = g.attached.vm;
    const dev = () => vm.devices().find((d) => d.spec.id === 'bench')!;
    await nextCompletionOrStall(dev(), 'before the first kill');
    for (let k = 0; k < kills; k++) {
      // Let the workload run a little between kills.
      await nextCompletionOrStall(dev(), `before kill ${k + 1}`);
      await new Promise((r) => setTimeout(r, 50));
      const d = dev();
      // Steady state: a warm spare is standing by (raw images), as it would be between rare crashes.
      for (let waited = 0; d.sparePid === undefined && waited < 5000; waited += 20) await new Promise((r) => setTimeout(r, 20));
      const oldPid = d.pid;
      const t0 = performance.now();
      await vm.injectFault({ kind: 'kill', device: 'bench' });
      let at: number;
      do at = await nextCompletionOrStall(d, `after kill ${k + 1} of pid ${oldPid}`); while (d.pid === oldPid);
      times.push(at - t0);
      if ((k + 1) % 10 === 0 || k + 1 === kills) process.stderr.write(`recover: ${k + 1}/${kills} kills, last ${(at - t0).toFixed(1)} ms\n`);
    }
    const mib = (b: number | null) => (b === null ? '?' : (b / 2 ** 20).toFixed(1));
    for (const p of vm.queryProcesses()) console.log(`rss ${p.role} ${p.id} pid ${p.pid}: ${mib(p.rssBytes)} MiB (own ${mib(p.ownBytes)} MiB, guest RAM and inflight memfd pages ${mib(p.sharedMemfdBytes)} MiB)`);
    await vm.deviceAdd({ driver: 'virtio-blk', id: 'stop', file: stop, format: 'raw' });
  } catch (e) {
    await g.attached.close();
    throw e;
  }
  const { status } = await g.done;
  const out = g.output();
  const m = /LOST=(\d+) IOERRORS=(\d+)/.exec(out);
  if (!m || status !== 0) throw new Error(`guest did not finish its verification (status ${status}): ${out.slice(-2000)}`);
  const werr = (out.match(/WERR/g) ?? []).length;
  const lost = Number(m[1]) + werr;
  times.sort((a, b) => a - b);
  const p50 = Math.round(percentile(times, 50) * 10) / 10;
  const p99 = Math.round(percentile(times, 99) * 10) / 10;
  console.log(`kills ${kills}, kill → next completed request: p50 ${p50} ms, p99 ${p99} ms, max ${times.at(-1)?.toFixed(1)} ms; guest I/O errors ${m[2]}, write errors ${werr}`);
  console.log(JSON.stringify({ bench: 'recover', p50_ms: p50, p99_ms: p99, lost, kills }));
}
