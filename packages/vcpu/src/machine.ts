// A whole `-M virt`-shaped machine in this process: guest RAM (a memfd
// mapped into the harts' shared WebAssembly.Memory), the platform devices
// (state in SharedArrayBuffers), one worker_thread per hart, and the console
// pump. The main thread owns only console I/O and the machine's lifecycle;
// every MMIO access and SBI call is served on the hart's own thread.
//
// Boot follows the RISC-V Linux boot protocol (Documentation/arch/riscv/
// boot.rst): the kernel Image at RAM_BASE + text_offset (0x8020_0000 on
// rv64), the initrd after the kernel's image_size, the DTB near the top of
// RAM, and either
//  - builtin SBI: hart 0 enters the kernel in S-mode with a0 = hartid,
//    a1 = DTB; the SBI is ours (platform/sbi.ts), other harts start by HSM;
//  - firmware: OpenSBI's fw_dynamic.bin at RAM_BASE; every hart starts in
//    M-mode there with a0 = hartid, a1 = DTB, a2 = struct fw_dynamic_info.

import { Worker } from 'node:worker_threads';
import { closeFd, ConfigError, createLogger, fdSize, memfdCreate, mmapFixedOver, type Logger } from '@vmm/core';
import { KERNEL_LOAD, MAX_HARTS, RAM_BASE, WASM_RAM_OFFSET } from './layout.ts';
import { HSM, RUN, HartSignals } from './signals.ts';
import { createHartMemory } from './hart/wasm.ts';
import type { HartBoot } from './hart/hart.ts';
import type { HartWorkerData, HartWorkerMessage } from './hart/hart-worker.ts';
import { DEFAULT_ENGINE, ENGINE_STAT_FIELDS, ENGINE_STAT_WHERE, ENGINE_WHERE, type EngineKind, type HartEngineInfo, type HartProfile } from './engine.ts';
import { buildVirtDtb, type DtbIommu } from './platform/dtb.ts';
import { createPlatform, createPlatformState, resetPlatformState, type Platform, type PlatformState } from './platform/index.ts';

export interface MachineConfig {
  harts: number;
  memBytes: number;
  kernel: Uint8Array;
  initrd?: Uint8Array;
  append: string;
  bios: { kind: 'builtin' } | { kind: 'firmware'; image: Uint8Array };
  /** Receives the DTB the guest gets (`--dump-dtb`). */
  dtbOut?: (dtb: Uint8Array) => void;
  console: { input: NodeJS.ReadableStream | null; output: (bytes: Uint8Array) => void };
  logger?: Logger;
  /** Guest RAM created by the caller (a memfd of memBytes); by default the machine creates and owns one. */
  ramFd?: number;
  /** Entropy for chosen/rng-seed; default 32 fresh random bytes at every (re)boot. */
  rngSeed?: Uint8Array;
  /** A virtio-iommu in one virtio-mmio slot translating the DMA of others (dtb.ts DtbIommu). */
  iommu?: DtbIommu;
  /**
   * What a reset the guest asks for (finisher 0x7777, SBI SRST reboot) does:
   * true restarts the machine in place, as a real board (and QEMU) does;
   * false ends it with reason 'reset' (QEMU's -no-reboot). Default false.
   */
  reboot?: boolean;
  /** What executes guest code in every hart (default DEFAULT_ENGINE). */
  engine?: EngineKind;
  /**
   * Sample every hart's WHERE word (interpreter, translated code, translator,
   * helpers, host) about every millisecond from this thread: engineInfo()
   * gains `profile`, and the shares are logged when the machine stops
   * (`vmm run --profile`). The harts pay one store per change of place either way.
   */
  profile?: boolean;
}

/** Who asked for a reset: the guest (SRST, finisher) or the host (Machine.reset, QMP system_reset). */
export type ResetCause = 'guest' | 'host';

export type MachineExit = { reason: 'poweroff' | 'reset' | 'fail' | 'error'; code: number; message?: string };

export interface Machine {
  /** Resolves once the machine has stopped and every hart worker has ended. */
  readonly exited: Promise<MachineExit>;
  /** Ask every hart to stop, join the workers; resolves `exited` (poweroff, "stopped by host") if nothing else did. */
  stop(): Promise<void>;
  pause(): void;
  resume(): void;
  /**
   * Reset the machine in place (QMP system_reset): the harts stop, the
   * platform devices and virtio-mmio transports go back to their reset state,
   * the boot images are loaded again, the reset hooks run, and the harts start
   * from their reset vector. Guest RAM is otherwise kept, as on QEMU.
   * Resolves once the new harts run; rejects if the machine has ended.
   */
  reset(): Promise<void>;
  /**
   * Run `hook` during every reset, after the harts have stopped and the
   * transports were reset, before the harts start again (the orchestrator
   * stops the device back-ends' rings here). A hook that throws ends the machine.
   */
  onReset(hook: (cause: ResetCause) => Promise<void> | void): void;
  /** The guest RAM memfd (MAP_SHARED by everyone who serves this guest). */
  readonly ramFd: number;
  /** Where things were put in guest-physical memory. */
  readonly layout: BootLayout;
  /** The main thread's view of the platform (PLIC lines, virtio slots, console rings). */
  readonly platform: Platform;
  readonly platformState: PlatformState;
  readonly memory: WebAssembly.Memory;
  /** Each hart's engine and, for the translator, its code cache (live figures). */
  engineInfo(): HartEngineInfo[];
}

export class MachineConfigError extends ConfigError {
  constructor(message: string) {
    super(message, 'ERR_MACHINE_CONFIG');
  }
}

// ─── Image header (boot.rst, "RISC-V Linux Kernel Image Header") ─────────────
const IMAGE_HEADER_BYTES = 64;
const IMAGE_MAGIC = 'RISCV\0\0\0'; // offset 48, deprecated but still written
const IMAGE_MAGIC2 = 0x0543_5352; // "RSC\x05" little-endian, offset 56
const RV64_TEXT_OFFSET = 0x20_0000;

export interface KernelImageInfo {
  textOffset: number;
  /** Effective size of the kernel in memory, including BSS (image_size). */
  imageSize: number;
}

export function parseKernelImage(kernel: Uint8Array): KernelImageInfo {
  if (kernel.length < IMAGE_HEADER_BYTES) throw new MachineConfigError(`kernel is ${kernel.length} bytes: too short for a RISC-V Image header`);
  const dv = new DataView(kernel.buffer, kernel.byteOffset, kernel.byteLength);
  const magic = new TextDecoder('latin1').decode(kernel.subarray(48, 56));
  const magic2 = dv.getUint32(56, true);
  if (magic !== IMAGE_MAGIC && magic2 !== IMAGE_MAGIC2) {
    throw new MachineConfigError(`kernel is not a RISC-V Image: header magic ${JSON.stringify(magic)} / 0x${magic2.toString(16)}, want "RISCV\\0\\0\\0" / "RSC\\x05"`);
  }
  const textOffset = Number(dv.getBigUint64(8, true));
  if (textOffset !== RV64_TEXT_OFFSET) throw new MachineConfigError(`kernel is not an RV64 Image: text_offset 0x${textOffset.toString(16)}, want 0x${RV64_TEXT_OFFSET.toString(16)}`);
  let imageSize = Number(dv.getBigUint64(16, true));
  if (imageSize === 0) imageSize = kernel.length; // headers before 0.2 may leave it zero
  if (imageSize < kernel.length) throw new MachineConfigError(`kernel Image header says image_size ${imageSize} but the file has ${kernel.length} bytes`);
  return { textOffset, imageSize };
}

// ─── placement ──────────────────────────────────────────────────────────────
const MiB = 1024 * 1024;
const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;
const alignDown = (n: number, a: number): number => Math.floor(n / a) * a;
/** OpenSBI's fw_dynamic_info (include/sbi/fw_dynamic.h), version 2. */
const FW_DYNAMIC_INFO_MAGIC = 0x4942_534fn;
const FW_DYNAMIC_INFO_VERSION = 2n;
const FW_DYNAMIC_INFO_NEXT_MODE_S = 1n;
const FW_DYNAMIC_INFO_BYTES = 48;

export interface BootLayout {
  kernel: { start: number; end: number };
  initrd?: { start: number; end: number };
  dtb: { start: number; end: number };
  firmware?: { start: number; end: number };
  fwDynamicInfo?: number;
}

/**
 * Where kernel, initrd, DTB (and firmware) go. The DTB sits 2 MiB-aligned
 * within its size of the end of RAM or of 3 GiB, whichever is lower (as QEMU
 * does, so a 32-bit address reaches it and OpenSBI can grow it in place);
 * the initrd starts at the first 2 MiB boundary after the kernel's image_size.
 */
export function planBoot(cfg: Pick<MachineConfig, 'memBytes' | 'kernel' | 'initrd' | 'bios'>, dtbBytes: number): BootLayout {
  const info = parseKernelImage(cfg.kernel);
  const ramEnd = RAM_BASE + cfg.memBytes;
  const kernel = { start: RAM_BASE + info.textOffset, end: RAM_BASE + info.textOffset + info.imageSize };
  let firmware: BootLayout['firmware'];
  if (cfg.bios.kind === 'firmware') {
    if (cfg.bios.image.length === 0 || RAM_BASE + cfg.bios.image.length > kernel.start) {
      throw new MachineConfigError(`firmware image of ${cfg.bios.image.length} bytes does not fit below the kernel at 0x${kernel.start.toString(16)}`);
    }
    firmware = { start: RAM_BASE, end: RAM_BASE + cfg.bios.image.length };
  }
  let next = alignUp(kernel.end, 2 * MiB);
  let initrd: BootLayout['initrd'];
  if (cfg.initrd) {
    initrd = { start: next, end: next + cfg.initrd.length };
    next = alignUp(initrd.end, 8);
  }
  const infoBytes = cfg.bios.kind === 'firmware' ? FW_DYNAMIC_INFO_BYTES : 0;
  const top = Math.min(ramEnd, RAM_BASE + 3 * 1024 * MiB);
  const dtbStart = alignDown(top - dtbBytes, 2 * MiB);
  const need = next + infoBytes + dtbBytes;
  if (dtbStart - infoBytes < next || dtbStart + dtbBytes > ramEnd) {
    const sizes = `kernel image_size ${info.imageSize}${cfg.initrd ? ` + initrd ${cfg.initrd.length}` : ''} + DTB ${dtbBytes} bytes`;
    throw new MachineConfigError(`${sizes} do not fit in memBytes ${cfg.memBytes} (need at least ${alignUp(need - RAM_BASE, 2 * MiB) + 2 * MiB})`);
  }
  return {
    kernel,
    ...(initrd ? { initrd } : {}),
    dtb: { start: dtbStart, end: dtbStart + dtbBytes },
    ...(firmware ? { firmware, fwDynamicInfo: dtbStart - infoBytes } : {}),
  };
}

function encodeFwDynamicInfo(bootHart: number): Uint8Array {
  const out = new Uint8Array(FW_DYNAMIC_INFO_BYTES);
  const dv = new DataView(out.buffer);
  [FW_DYNAMIC_INFO_MAGIC, FW_DYNAMIC_INFO_VERSION, BigInt(KERNEL_LOAD), FW_DYNAMIC_INFO_NEXT_MODE_S, 0n, BigInt(bootHart)].forEach((v, i) => dv.setBigUint64(i * 8, v, true));
  return out;
}

// ─── hart workers ───────────────────────────────────────────────────────────

/** The worker module each hart runs in (the hart core's entry, HART_WORKER_URL). */
let hartWorkerUrl = new URL('./hart/hart-worker.ts', import.meta.url);
/** Replace the hart worker module (tests: a stand-in hart speaking the same HartWorkerData/HartWorkerMessage contract). */
export function setHartWorkerUrl(url: URL): void {
  hartWorkerUrl = url;
}

/** MachineExit.message of a machine ended by Machine.stop(). */
export const STOPPED_BY_HOST = 'stopped by host';

/**
 * The name of hart `h`'s worker thread. Node gives a worker's OS thread its
 * name (Linux: /proc/PID/task/TID/comm), so the thread of each hart can be
 * found from outside (QMP query-cpus-fast's thread-id, top -H, perf).
 */
export function hartThreadName(h: number): string {
  return `hart${h}`;
}

/** How long harts get to notice RUN.STOPPING before their workers are terminated. */
const STOP_GRACE_MS = 5000;

function validate(cfg: Pick<MachineConfig, 'harts' | 'memBytes'>): void {
  if (!Number.isInteger(cfg.harts) || cfg.harts < 1 || cfg.harts > MAX_HARTS) throw new MachineConfigError(`harts must be an integer 1..${MAX_HARTS}, got ${cfg.harts}`);
  if (!Number.isInteger(cfg.memBytes) || cfg.memBytes < 16 * MiB || cfg.memBytes % (2 * MiB) !== 0) {
    throw new MachineConfigError(`memBytes must be a multiple of 2 MiB and at least 16 MiB, got ${cfg.memBytes}`);
  }
  if (WASM_RAM_OFFSET + cfg.memBytes > 4 * 1024 * MiB) throw new MachineConfigError(`memBytes ${cfg.memBytes} exceeds what a 4 GiB wasm memory holds above its ${WASM_RAM_OFFSET}-byte state area`);
}

/**
 * The device tree and boot layout a machine with this configuration gets,
 * without starting it (`--dump-dtb`). Validates the configuration like startMachine.
 */
export function machineDtb(cfg: Pick<MachineConfig, 'harts' | 'memBytes' | 'kernel' | 'initrd' | 'append' | 'bios' | 'rngSeed' | 'iommu'>): { dtb: Uint8Array; layout: BootLayout } {
  validate(cfg);
  const seed = cfg.rngSeed ?? crypto.getRandomValues(new Uint8Array(32));
  // The DTB's size does not depend on where the initrd lands: build it once to size it, then for real.
  const dtbCfg = { harts: cfg.harts, memBytes: cfg.memBytes, bootargs: cfg.append, rngSeed: seed, ...(cfg.iommu ? { iommu: cfg.iommu } : {}) };
  const probe = buildVirtDtb({ ...dtbCfg, ...(cfg.initrd ? { initrd: { start: 0, end: 0 } } : {}) });
  const layout = planBoot(cfg, probe.length);
  const dtb = buildVirtDtb({ ...dtbCfg, ...(layout.initrd ? { initrd: layout.initrd } : {}) });
  if (dtb.length !== probe.length) throw new Error(`DTB size changed from ${probe.length} to ${dtb.length} bytes`);
  return { dtb, layout };
}

export function startMachine(cfg: MachineConfig): Machine {
  validate(cfg);
  const log = cfg.logger ?? createLogger('machine');
  let { dtb, layout } = machineDtb(cfg);
  cfg.dtbOut?.(dtb);

  if (cfg.ramFd !== undefined && fdSize(cfg.ramFd) < cfg.memBytes) {
    // Touching a page past the end of a shared file mapping is SIGBUS, not an error we could report.
    throw new MachineConfigError(`ramFd ${cfg.ramFd} holds ${fdSize(cfg.ramFd)} bytes, less than memBytes ${cfg.memBytes}`);
  }
  const ownsFd = cfg.ramFd === undefined;
  const ramFd = cfg.ramFd ?? memfdCreate('vmm-guest-ram', cfg.memBytes);
  const memory = createHartMemory(cfg.memBytes);
  mmapFixedOver(memory.buffer, WASM_RAM_OFFSET, ramFd, cfg.memBytes);
  const ram = new Uint8Array(memory.buffer, WASM_RAM_OFFSET, cfg.memBytes);
  const put = (paddr: number, bytes: Uint8Array): void => ram.set(bytes, paddr - RAM_BASE);
  /** Place the boot images (at power-on and again at every reset, as QEMU's ROM loader does). */
  const loadImages = (): void => {
    put(layout.kernel.start, cfg.kernel);
    ram.fill(0, layout.kernel.start + cfg.kernel.length - RAM_BASE, layout.kernel.end - RAM_BASE); // BSS of a reused memfd
    if (cfg.initrd && layout.initrd) put(layout.initrd.start, cfg.initrd);
    put(layout.dtb.start, dtb);
    if (cfg.bios.kind === 'firmware' && layout.firmware && layout.fwDynamicInfo !== undefined) {
      put(layout.firmware.start, cfg.bios.image);
      put(layout.fwDynamicInfo, encodeFwDynamicInfo(0));
    }
  };
  loadImages();
  log.info({ harts: cfg.harts, memBytes: cfg.memBytes, bios: cfg.bios.kind, kernel: hex(layout.kernel.start), initrd: layout.initrd && hex(layout.initrd.start), dtb: hex(layout.dtb.start) }, 'machine: boot layout');

  const state = createPlatformState({ harts: cfg.harts, memBytes: cfg.memBytes });
  const platform = createPlatform(state, 0);
  const signals = new HartSignals(cfg.harts, state.signals);
  const engine = cfg.engine ?? DEFAULT_ENGINE;
  const engineStats = new SharedArrayBuffer(cfg.harts * ENGINE_STAT_FIELDS * 8);
  const engineView = new Float64Array(engineStats);
  // The sampling profiler (cfg.profile): counts per hart, indexed by the WHERE value.
  const whereSamples = Array.from({ length: cfg.harts }, () => new Float64Array(ENGINE_WHERE.length));
  const memWords = new Int32Array(memory.buffer);
  const sampler = cfg.profile ? setInterval(() => {
    for (let h = 0; h < cfg.harts; h++) {
      const addr = engineView[h * ENGINE_STAT_FIELDS + ENGINE_STAT_WHERE]!; // 0 until the hart's core exists
      if (addr) whereSamples[h]![Atomics.load(memWords, addr >> 2)]! += 1;
    }
  }, 1) : null;
  sampler?.unref();
  const profileOf = (h: number): HartProfile => {
    const c = whereSamples[h]!;
    const samples = c.reduce((a, b) => a + b, 0);
    const share = (i: number): number => (samples ? Math.round((c[i]! / samples) * 1000) / 1000 : 0);
    return { samples, ...(Object.fromEntries(ENGINE_WHERE.map((w, i) => [w, share(i)])) as Record<(typeof ENGINE_WHERE)[number], number>) };
  };
  const boots: HartBoot[] = [];
  for (let h = 0; h < cfg.harts; h++) {
    if (cfg.bios.kind === 'firmware') {
      boots.push({ mode: 'firmware', pc: BigInt(RAM_BASE), a0: BigInt(h), a1: BigInt(layout.dtb.start), a2: BigInt(layout.fwDynamicInfo!) });
    } else {
      // Hart 0 enters the kernel; the others stay HSM STOPPED until the kernel's hart_start.
      boots.push({ mode: 'builtin', pc: BigInt(layout.kernel.start), a0: BigInt(h), a1: BigInt(layout.dtb.start), a2: 0n });
    }
  }
  // Every hart runs the firmware from reset. fw_dynamic_info.boot_hart = 0 only picks the hart that
  // relocates OpenSBI; the cold-boot hart, which enters the kernel, is whichever wins the lottery in
  // OpenSBI 1.6's sbi_init (as on QEMU), so a guest must not assume it is hart 0.
  const firmwareHsm = (): void => { if (cfg.bios.kind === 'firmware') for (let h = 0; h < cfg.harts; h++) signals.setHsmState(h, HSM.STARTED); };
  firmwareHsm();
  const url = hartWorkerUrl;

  let resolveExit!: (e: MachineExit) => void;
  const exited = new Promise<MachineExit>((r) => { resolveExit = r; });
  let final: MachineExit | null = null;
  /** A reset in progress: who asked, and the callers of reset() waiting for the new harts. */
  type Restart = { cause: ResetCause; waiters: { resolve: () => void; reject: (e: Error) => void }[] };
  let restart: Restart | null = null;
  // Read through a function: TS would otherwise narrow `restart` to its initial null inside the lifecycle IIFE below.
  const pendingRestart = (): Restart | null => restart;
  const resetHooks: ((cause: ResetCause) => Promise<void> | void)[] = [];
  let paused = false;
  let workers: Worker[] = [];
  let killTimer: NodeJS.Timeout | null = null;
  /** Tell the harts to leave their loops; a worker that does not come back in time is terminated. */
  const stopHarts = (): void => {
    signals.setRunState(RUN.STOPPING);
    if (killTimer) return;
    const doomed = workers;
    killTimer = setTimeout(() => { for (const w of doomed) void w.terminate(); }, STOP_GRACE_MS);
    killTimer.unref();
  };
  const finish = (e: MachineExit): void => {
    if (final) return;
    final = e;
    stopHarts();
  };
  const requestRestart = (cause: ResetCause): Promise<void> => {
    if (final) return Promise.reject(new Error(`the machine has stopped (${final.reason})`));
    return new Promise((resolve, reject) => {
      if (restart) restart.waiters.push({ resolve, reject });
      else {
        restart = { cause, waiters: [{ resolve, reject }] };
        log.info({ cause }, 'machine: reset');
        stopHarts();
      }
    });
  };

  // Console: guest → host (drain the TX ring whenever its tail moves).
  let pumping = true;
  const drain = (): void => {
    const bytes = platform.console.tx.pop();
    if (bytes.length > 0) cfg.console.output(bytes);
  };
  const txPump = (async () => {
    while (pumping) {
      drain();
      const cell = platform.console.tx.tailCell();
      if (platform.console.tx.length > 0) continue;
      const w = Atomics.waitAsync(cell.array, cell.index, cell.value, 100);
      if (w.async) await w.value;
    }
    drain();
  })();

  // Console: host → guest (the RX ring, then re-evaluate the UART's RX interrupt).
  let backlog: Uint8Array[] = [];
  let rxTimer: NodeJS.Timeout | null = null;
  const feed = (): void => {
    while (backlog.length > 0) {
      const head = backlog[0]!;
      const n = platform.console.rx.push(head);
      if (n < head.length) {
        backlog[0] = head.subarray(n);
        break;
      }
      backlog.shift();
    }
    platform.uart.rxNotify();
    if (backlog.length > 0 && !rxTimer) rxTimer = setTimeout(() => { rxTimer = null; feed(); }, 10);
  };
  const onData = (chunk: Buffer | string): void => {
    backlog.push(typeof chunk === 'string' ? Buffer.from(chunk) : new Uint8Array(chunk));
    feed();
  };
  cfg.console.input?.on('data', onData);

  // Lifecycle: an exit request (finisher, SRST), every hart stopped, or a worker failure.
  // One watcher at a time: a host reset leaves the current one waiting (the slot stays empty).
  let watchingExit = false;
  const watchExit = (): void => {
    if (watchingExit) return;
    watchingExit = true;
    void platform.exit.wait().then((e) => {
      watchingExit = false;
      if (e.reason === 'reset' && cfg.reboot && !final) void requestRestart('guest').catch(() => {});
      else finish({ reason: e.reason, code: e.code });
    });
  };
  watchExit();
  const hsmWatch = setInterval(() => {
    if (restart) return;
    let anyRunning = false;
    for (let h = 0; h < cfg.harts; h++) if (signals.hsmState(h) !== HSM.STOPPED) anyRunning = true;
    if (!anyRunning) finish({ reason: 'poweroff', code: 0, message: 'every hart is stopped (SBI HSM)' });
  }, 100);
  hsmWatch.unref();

  /** Start one worker per hart; resolves when all of them have ended. */
  const spawnHarts = (): Promise<void> => new Promise<void>((resolveEnded) => {
    const running = new Set<number>();
    workers = [];
    for (let h = 0; h < cfg.harts; h++) {
      const data: HartWorkerData = { hartId: h, harts: cfg.harts, memory, ramSize: cfg.memBytes, signals: state.signals, platform: state, boot: boots[h]!, engine, engineStats };
      const w = new Worker(url, { workerData: data, name: hartThreadName(h) });
      running.add(h);
      w.on('message', (m: HartWorkerMessage) => {
        if (m.type === 'log') {
          log.warn({ hart: h, ...m.fields }, `machine: ${m.msg}`);
        } else if (m.type === 'error') {
          log.error({ hart: h, message: m.message }, 'machine: hart failed');
          finish({ reason: 'error', code: 1, message: `hart ${h}: ${m.message}` });
        } else if (m.exit.kind === 'fatal') {
          const x = m.exit;
          const message = `hart ${h}: unhandled trap, cause 0x${x.cause.toString(16)} tval 0x${x.tval.toString(16)} at pc 0x${x.pc.toString(16)} (priv ${x.priv})`;
          log.error({ hart: h, instret: m.instret }, message);
          finish({ reason: 'error', code: 1, message });
        } else {
          log.debug({ hart: h, exit: m.exit.kind, instret: m.instret, cpuMs: m.cpuMs, jit: m.jit }, 'machine: hart ended');
        }
      });
      w.on('error', (err) => {
        log.error({ hart: h, err }, 'machine: hart worker failed');
        finish({ reason: 'error', code: 1, message: `hart ${h}: ${err instanceof Error ? err.message : String(err)}` });
      });
      w.on('exit', (code) => {
        running.delete(h);
        // A worker terminated because it did not stop in time for a reset is not a failure of the machine.
        if (code !== 0 && !final && !restart) finish({ reason: 'error', code: 1, message: `hart ${h} worker exited with code ${code}` });
        if (running.size === 0) resolveEnded();
      });
      workers.push(w);
    }
  });

  /** Between two generations of harts: the system reset proper. */
  const resetInPlace = async (cause: ResetCause): Promise<void> => {
    resetPlatformState(state);
    firmwareHsm();
    if (!cfg.rngSeed) {
      // A fresh chosen/rng-seed per boot (QEMU re-randomizes it at reset too); the size, hence the layout, is the same.
      const again = machineDtb(cfg);
      if (again.dtb.length !== dtb.length) throw new Error(`DTB size changed across a reset: ${dtb.length} → ${again.dtb.length} bytes`);
      dtb = again.dtb;
      layout = again.layout;
    }
    loadImages();
    for (const hook of resetHooks) await hook(cause);
    watchExit();
  };

  void (async () => {
    for (;;) {
      await spawnHarts();
      if (killTimer) { clearTimeout(killTimer); killTimer = null; }
      const r = pendingRestart();
      if (!r || final) break;
      try {
        await resetInPlace(r.cause);
      } catch (e) {
        log.error({ err: e }, 'machine: reset failed');
        finish({ reason: 'error', code: 1, message: `reset failed: ${(e as Error).message}` });
        for (const w of r.waiters) w.reject(e as Error);
        restart = null;
        break;
      }
      restart = null;
      if (final) {
        for (const w of r.waiters) w.reject(new Error(`the machine stopped during the reset (${(final as MachineExit).reason})`));
        break;
      }
      signals.setRunState(paused ? RUN.PAUSED : RUN.RUNNING);
      log.info({ cause: r.cause }, 'machine: restarted after reset');
      for (const w of r.waiters) w.resolve();
    }
    clearInterval(hsmWatch);
    if (sampler) {
      clearInterval(sampler);
      for (let h = 0; h < cfg.harts; h++) log.info({ hart: h, engine, profile: profileOf(h) }, 'machine: profile');
    }
    if (rxTimer) clearTimeout(rxTimer);
    cfg.console.input?.off('data', onData);
    backlog = [];
    const e = platform.exit.get();
    if (!final) finish(e ? { reason: e.reason, code: e.code } : { reason: 'error', code: 1, message: 'every hart worker ended without an exit request' });
    platform.console.close();
    pumping = false;
    // A pending Atomics.waitAsync does not keep the event loop alive: wake the pump now that no hart can.
    const cell = platform.console.tx.tailCell();
    Atomics.notify(cell.array, cell.index);
    await txPump;
    if (ownsFd) closeFd(ramFd);
    log.info({ exit: final }, 'machine: stopped');
    resolveExit(final!);
  })();

  return {
    exited,
    ramFd,
    get layout() { return layout; },
    platform,
    platformState: state,
    memory,
    engineInfo: () => Array.from({ length: cfg.harts }, (_, h): HartEngineInfo => {
      const f = h * ENGINE_STAT_FIELDS;
      return { hart: h, engine, blocks: engineView[f]!, codeCacheBytes: engineView[f + 1]!, compileMs: Math.round(engineView[f + 2]! * 10) / 10, translatedInstructions: engineView[f + 3]!,
        ...(cfg.profile ? { profile: profileOf(h) } : {}) };
    }),
    pause: () => {
      paused = true;
      if (!final && !restart) signals.setRunState(RUN.PAUSED);
    },
    resume: () => {
      paused = false;
      if (!final && !restart) signals.setRunState(RUN.RUNNING);
    },
    reset: () => requestRestart('host'),
    onReset: (hook) => { resetHooks.push(hook); },
    async stop() {
      finish({ reason: 'poweroff', code: 0, message: STOPPED_BY_HOST });
      platform.console.close(); // a hart blocked on a full console ring must not hold up the stop
      await exited;
    },
  };
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
