// A scripted guest session, for end-to-end tests and benchmarks: boots the
// guest kit's kernel and initramfs with an --exec command under the same
// calls `vmm run --disk … --qmp …` makes (startMachine, then attachVm), and
// lets the caller react to what the command prints while it runs.
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createLogger } from '@vmm/core';
import { startMachine, type MachineExit } from '@vmm/vcpu';
import { silentReporter, stderrReporter } from '../guestkit/download.ts';
import { buildInitramfs, ExecOutputFilter, initrdWithExec } from '../guestkit/initramfs.ts';
import { ensureGuestKit } from '../guestkit/kit.ts';
import { buildIommuKernel } from '../guestkit/kernel.ts';
import { ensureGuestPackages, guestPackagesArchive } from '../guestkit/packages.ts';
import { iommuPlan } from './iommu.ts';
import { attachVm, type AttachedVm } from './attach.ts';
import { parseDiskFlag, parseNicFlag } from './device-spec.ts';
import { DeviceRegistry } from './kinds.ts';

export interface GuestSession {
  attached: AttachedVm;
  qmpPath: string;
  /** Everything the command printed so far. */
  output(): string;
  /** Resolves when the command's output contains `text`. */
  waitFor(text: string, timeoutMs?: number): Promise<void>;
  /** Resolves with the machine's exit and the command's status once the guest has powered off. */
  done: Promise<{ exit: MachineExit; status: number | null; transcript: string }>;
}

export interface GuestSessionOptions {
  cmd: string;
  disks: string[];
  /** NICs as for `vmm run --nic` (switch=NAME|tap=IF,…), ids net0, net1, … */
  nics?: string[];
  smp?: number;
  memBytes?: number;
  append?: string;
  logLevel?: string;
  /** Also serve the WebSocket API (0 = any free port); the token goes to `tokenPath`. */
  apiPort?: number;
  tokenPath?: string;
  /** The VM's name (QMP query-name). */
  name?: string;
  /** Boot the IOMMU kernel with vmm-iommu in the top slot, as `vmm run --iommu` (vm/iommu.ts). */
  iommu?: boolean;
  /** Boot the IOMMU kernel even without the IOMMU (to compare the two with only the IOMMU differing). */
  iommuKernel?: boolean;
  /** Debian riscv64 packages (and their Depends: closure) added to the initramfs, as `pnpm guest build --package`. */
  packages?: string[];
}

export async function startGuestSession(o: GuestSessionOptions): Promise<GuestSession> {
  const kit = await ensureGuestKit({ reporter: silentReporter });
  const iommu = o.iommu ? iommuPlan(mkdtempSync(join(tmpdir(), 'vmm-iommu-'))) : null;
  // scripts/setup.sh builds the IOMMU kernel; if the cache lacks it (a new
  // config), it is built here, its progress on stderr (minutes, not silence).
  const kernel = new Uint8Array(await readFile(iommu || o.iommuKernel ? (await buildIommuKernel({ reporter: stderrReporter() })).image : kit.kernel));
  const x = await initrdWithExec((await buildInitramfs(kit)).path, o.cmd);
  if (o.packages && o.packages.length > 0) {
    // Base initramfs, then the packages' archive, then the command's (the kernel unpacks them in order).
    const pk = guestPackagesArchive(await ensureGuestPackages(o.packages, silentReporter));
    x.initrd = Buffer.concat([x.initrd.subarray(0, x.initrd.length - x.archive.length), pk, x.archive]);
  }
  let out = '';
  const waiters: { text: string; resolve: () => void }[] = [];
  const filter = new ExecOutputFilter(x.markers, (t) => {
    out += t;
    for (const w of [...waiters]) {
      if (out.includes(w.text)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  });
  const level = o.logLevel ?? 'warn';
  const log = createLogger('vmm-session', undefined, level);
  const machine = startMachine({
    harts: o.smp ?? 1,
    memBytes: o.memBytes ?? 512 << 20,
    kernel,
    initrd: x.initrd,
    // vmm.hotplug=1: the initramfs starts the guest's hot-plug helper (a QMP socket is always served here).
    append: `console=ttyS0 quiet panic=-1 cryptomgr.notests vmm.hotplug=1 ${o.append ?? ''}`,
    bios: { kind: 'builtin' },
    ...(iommu ? { iommu: iommu.dtb } : {}),
    console: { input: null, output: (b) => filter.push(b) },
    logger: log,
  });
  const qmpPath = join(mkdtempSync(join(tmpdir(), 'vmm-session-')), 'qmp.sock');
  const attached = await attachVm(machine, {
    devices: [
      ...o.disks.map((d, i) => parseDiskFlag(new DeviceRegistry(), d, i)),
      ...(o.nics ?? []).map((n, i) => parseNicFlag(new DeviceRegistry(), n, i)),
    ],
    iommu,
    apiPort: o.apiPort ?? null,
    ...(o.tokenPath ? { tokenPath: o.tokenPath } : {}),
    qmpPath,
    name: o.name ?? null,
    log,
    logLevel: level,
    announce: () => {},
  });
  const done = machine.exited.then(async (exit) => {
    await attached.close();
    if (iommu) rmSync(dirname(String(iommu.spec.options.table)), { recursive: true, force: true });
    return { exit, status: filter.status, transcript: filter.transcript };
  });
  return {
    attached,
    qmpPath,
    output: () => out,
    waitFor: (text, timeoutMs = 600_000) => new Promise<void>((resolve, reject) => {
      if (out.includes(text)) {
        resolve();
        return;
      }
      const timer = setTimeout(() => reject(new Error(`guest never printed '${text}'; output so far:\n${out.slice(-3000)}`)), timeoutMs);
      waiters.push({ text, resolve: () => { clearTimeout(timer); resolve(); } });
    }),
    done,
  };
}
