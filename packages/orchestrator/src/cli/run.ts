// `vmm run`: gather kernel, initrd and firmware (the guest kit by default,
// fetched and built on first use), start the machine, wire the console,
// and turn the machine's exit into the process's exit status.
import { existsSync, unlinkSync, writeFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { createLogger, logToFile } from '@vmm/core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { machineDtb, startMachine, type Machine, type MachineConfig, type MachineExit } from '@vmm/vcpu';
import { buildIommuKernel } from '../guestkit/kernel.ts';
import { stderrReporter } from '../guestkit/download.ts';
import { GuestKitError } from '../guestkit/errors.ts';
import { ExecOutputFilter, buildExecArchive, buildInitramfs } from '../guestkit/initramfs.ts';
import { checkKernelImage, ensureGuestKit, type GuestKit } from '../guestkit/kit.ts';
import { kernelCmdline, type RunOptions } from './args.ts';
import { ConsoleError, describeConsole, openConsole, type HostConsole } from './console.ts';
import { daemonReady, isDaemonChild } from './daemon.ts';
import { attachVm, type AttachedVm } from '../vm/attach.ts';
import { iommuPlan, type IommuPlan } from '../vm/iommu.ts';

/** A failure to report on one line with a non-zero status (not a usage error). */
export class RunError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'RunError';
    this.code = code;
  }
}

export interface RunIo {
  stdin: NodeJS.ReadStream;
  stdout: NodeJS.WriteStream;
  stderr: NodeJS.WriteStream;
}

async function readInput(flag: string, path: string): Promise<Uint8Array> {
  if (!existsSync(path)) throw new RunError('ERR_NO_FILE', `${flag} ${path}: no such file`);
  try {
    return new Uint8Array(await readFile(path));
  } catch (e) {
    throw new RunError('ERR_READ_FILE', `${flag} ${path}: ${(e as Error).message}`);
  }
}

/** An initrd is a newc cpio ("070701") or one of the compressions the kernel can unpack. */
function checkInitrd(bytes: Uint8Array, path: string): void {
  const starts = (...m: number[]): boolean => m.every((b, i) => bytes[i] === b);
  const ok =
    starts(0x30, 0x37, 0x30, 0x37, 0x30, 0x31) || // "070701" newc
    starts(0x1f, 0x8b) || // gzip
    starts(0xfd, 0x37, 0x7a, 0x58, 0x5a) || // xz
    starts(0x28, 0xb5, 0x2f, 0xfd) || // zstd
    starts(0x42, 0x5a, 0x68) || // bzip2
    starts(0x02, 0x21, 0x4c, 0x18) || // lz4 legacy
    starts(0x5d, 0x00, 0x00); // lzma
  if (!ok) throw new RunError('ERR_BAD_INITRD', `--initrd ${path} is neither a newc cpio archive nor a compressed one`);
}

export async function runVm(o: RunOptions, io: RunIo): Promise<number> {
  if (o.logFile !== null) logToFile(o.logFile);
  const logger = createLogger('vmm', undefined, o.logLevel);
  const reporter = stderrReporter(io.stderr);
  let iommuDir: string | null = null;
  try {
    let iommu: IommuPlan | null = null;
    if (o.iommu) {
      iommuDir = mkdtempSync(join(tmpdir(), 'vmm-iommu-'));
      iommu = iommuPlan(iommuDir);
    }
    return await runWith(o, io, logger, reporter, iommu);
  } finally {
    if (iommuDir) rmSync(iommuDir, { recursive: true, force: true });
  }
}

async function runWith(o: RunOptions, io: RunIo, logger: ReturnType<typeof createLogger>, reporter: ReturnType<typeof stderrReporter>, iommu: IommuPlan | null): Promise<number> {

  let kit: GuestKit | null = null;
  const needKit = o.kernel === null || o.initrd === null || o.exec !== null || o.bios.kind === 'opensbi';
  if (needKit) {
    kit = await ensureGuestKit({ reporter });
  }
  // The stock kernel cannot translate DMA (FACTS.md); --iommu boots the one the kit builds.
  const kernelPath = o.kernel ?? (iommu ? (await buildIommuKernel({ reporter })).image : kit!.kernel);
  const kernel = await readInput('--kernel', kernelPath);
  try {
    checkKernelImage(kernel, `--kernel ${kernelPath}`);
  } catch (e) {
    throw new RunError('ERR_BAD_KERNEL', (e as GuestKitError).message);
  }

  let initrd: Uint8Array;
  if (o.initrd !== null) {
    initrd = await readInput('--initrd', o.initrd);
    checkInitrd(initrd, o.initrd);
  } else {
    initrd = new Uint8Array(await readFile((await buildInitramfs(kit!)).path));
  }
  let filter: ExecOutputFilter | null = null;
  if (o.exec !== null) {
    // The command travels as a second cpio archive after the base one.
    const x = buildExecArchive(o.exec);
    const both = new Uint8Array(initrd.length + x.archive.length);
    both.set(initrd);
    both.set(x.archive, initrd.length);
    initrd = both;
    filter = new ExecOutputFilter(x.markers, (t) => io.stdout.write(t));
  }

  // A necessary (not sufficient) condition; the machine checks the exact layout.
  const needed = 2 * 2 ** 20 + kernel.length + initrd.length;
  if (needed > o.memBytes) {
    throw new RunError('ERR_TOO_BIG', `kernel (${(kernel.length / 2 ** 20).toFixed(1)} MiB) and initrd (${(initrd.length / 2 ** 20).toFixed(1)} MiB) do not fit in --mem ${o.memBytes / 2 ** 20}M`);
  }

  let bios: MachineConfig['bios'] = { kind: 'builtin' };
  if (o.bios.kind === 'opensbi') bios = { kind: 'firmware', image: await readInput('--bios', kit!.opensbi.fwDynamic) };
  else if (o.bios.kind === 'file') bios = { kind: 'firmware', image: await readInput('--bios', o.bios.path) };

  if (o.dumpDtb !== null) {
    // Like QEMU's -M virt,dumpdtb=FILE: write the tree the guest would get (same layout), start nothing.
    const { dtb } = machineDtb({ harts: o.smp, memBytes: o.memBytes, kernel, initrd, append: kernelCmdline(o), bios, ...(iommu ? { iommu: iommu.dtb } : {}) });
    await writeFile(o.dumpDtb, dtb);
    return 0;
  }

  let hostConsole: HostConsole | null = null;
  let quitRequested = false;
  let machine: Machine | null = null;
  let attached: AttachedVm | null = null;
  const interactive = o.exec === null;
  const stopAll = (): void => {
    quitRequested = true;
    // The VM's teardown disarms supervision before it stops anything (Vm.close).
    void (attached ? attached.vm.close() : machine?.stop());
  };

  // SIGINT, SIGTERM and SIGHUP end the VM as quit does, as they end QEMU
  // ("terminating on signal N"). A hang-up means the terminal is gone: stop
  // using it first. The device processes are in sessions of their own
  // (DeviceProcess), so these signals reach only vmm, which stops them in order.
  const onSignal = (signal: NodeJS.Signals): void => {
    // A hang-up often comes twice (the kernel to the foreground job, the shell to all its jobs).
    if (quitRequested) {
      logger.debug({ signal }, 'already stopping');
      return;
    }
    logger.info({ signal }, 'stopping the machine');
    if (signal === 'SIGHUP') hostConsole?.hangUp();
    stopAll();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  process.on('SIGINT', onSignal);
  const removePidfile = (): void => {
    try { unlinkSync(o.pidfile!); } catch { /* already gone */ }
  };
  if (o.pidfile !== null) {
    try {
      writeFileSync(o.pidfile, `${process.pid}\n`);
    } catch (e) {
      throw new RunError('ERR_PIDFILE', `--pidfile ${o.pidfile}: ${(e as Error).message}`);
    }
    process.on('exit', removePidfile);
  }
  const announce = (line: string): void => {
    io.stderr.write(`${line}${hostConsole?.raw ? '\r' : ''}\n`);
  };
  try {
    if (interactive) {
      try {
        hostConsole = await openConsole(o.console, { stdin: io.stdin, stdout: io.stdout, announce, onQuit: stopAll });
      } catch (e) {
        if (e instanceof ConsoleError) throw new RunError(e.code, e.message);
        throw new RunError('ERR_CONSOLE', `--console ${describeConsole(o.console)}: ${(e as Error).message}`);
      }
    }
    machine = startMachine({
      engine: o.engine,
      profile: o.profile,
      harts: o.smp,
      memBytes: o.memBytes,
      kernel,
      initrd,
      append: kernelCmdline(o),
      bios,
      ...(iommu ? { iommu: iommu.dtb } : {}),
      // --exec: a reboot (panic=-1 included) ends the run, so a broken guest cannot loop.
      reboot: o.exec === null && !o.noReboot,
      console: {
        input: hostConsole?.input ?? null,
        output: (bytes) => {
          if (filter) {
            filter.push(bytes);
            if (o.verbose) io.stderr.write(bytes);
          } else {
            hostConsole?.write(bytes);
          }
        },
      },
      logger,
    });
    if (iommu || o.devices.length > 0 || o.apiPort !== null || o.qmp !== null) {
      // Devices are plugged while the harts are paused, so the guest finds them at probe time.
      attached = await attachVm(machine, {
        devices: o.devices,
        iommu,
        apiPort: o.apiPort,
        qmpPath: o.qmp,
        name: o.name,
        log: logger,
        logLevel: o.logLevel,
        announce,
      });
    }
    // The VM is up (its QMP socket listening): a daemon's parent may exit now.
    if (isDaemonChild()) daemonReady();
    const exit = await machine.exited;
    logger.info({ exit }, 'machine exited');
    if (filter) return execStatus(exit, filter, quitRequested, io);
    if (quitRequested) return 0;
    switch (exit.reason) {
      case 'poweroff':
        return 0;
      case 'reset':
        io.stderr.write('\r\nvmm: the guest rebooted (--no-reboot): exiting\n');
        return 0;
      case 'fail':
        return exit.code || 1;
      case 'error':
        io.stderr.write(`\r\nvmm: machine error: ${exit.message ?? `code ${exit.code}`}\n`);
        return 1;
    }
    return 1;
  } catch (e) {
    await machine?.stop().catch(() => {});
    throw e;
  } finally {
    await attached?.close().catch((e: unknown) => logger.warn({ err: e }, 'closing the VM attachments failed'));
    hostConsole?.close();
    if (o.pidfile !== null) removePidfile();
    process.off('SIGTERM', onSignal);
    process.off('SIGHUP', onSignal);
    process.off('SIGINT', onSignal);
  }
}

function execStatus(exit: MachineExit, filter: ExecOutputFilter, interrupted: boolean, io: RunIo): number {
  if (filter.state === 'after' && filter.status !== null) {
    // The finisher carries the same status (0x3333 | code << 16); the marker line is the primary source.
    return filter.status & 0xff;
  }
  const tail = filter.transcript.replace(/\r/g, '').trimEnd().split('\n').slice(-15).join('\n');
  if (!interrupted && exit.message === undefined && (exit.reason === 'fail' || exit.reason === 'poweroff')) {
    // The guest powered off through the finisher (only /init does that in
    // --exec mode) but its console never showed the markers: the status is
    // still the command's, its output was lost on the way out.
    io.stderr.write(`vmm: warning: the command's output never reached the console (no end marker); exit status ${exit.code} from the guest's finisher\n`);
    return exit.reason === 'fail' ? exit.code & 0xff : 0;
  }
  if (interrupted) {
    io.stderr.write('vmm: interrupted before the command finished\n');
    return 130;
  }
  const why = exit.reason === 'error' ? `machine error: ${exit.message ?? exit.code}` : `the machine stopped (${exit.reason}, code ${exit.code}${exit.message ? `: ${exit.message}` : ''})`;
  io.stderr.write(`vmm: ${why} before the --exec command ${filter.state === 'before' ? 'started' : 'finished'}; last console lines:\n${tail}\n`);
  return exit.reason === 'fail' && exit.code ? exit.code : 1;
}

