// Worker-thread entry of one hart. The machine process starts one worker per
// hart with HartWorkerData; every worker instantiates the hart core over the
// same shared memory (guest RAM already mapped into it) and builds its own
// view of the platform (bus + SBI) with createPlatform. Messages to the
// parent: { type: 'exit', hartId, exit: HartExit, instret, cpuMs } once the loop ends
// (cpuMs: this thread's CPU time, so that instret / cpuMs is the hart's speed
// whatever else the host is running).

import { parentPort, workerData } from 'node:worker_threads';
import { HartSignals } from '../signals.ts';
import type { PhysBus, SbiHandler } from '../bus.ts';
import { HartCore } from './wasm.ts';
import { Hart, type HartBoot, type HartExit } from './hart.ts';
import { ENGINE_STAT_FIELDS, type EngineKind } from '../engine.ts';
import type { JitStats } from '../jit/translator.ts';

export interface HartWorkerData {
  hartId: number;
  harts: number;
  memory: WebAssembly.Memory;
  ramSize: number;
  signals: SharedArrayBuffer;
  /** Passed as is to createPlatform (a PlatformState from @vmm/vcpu's platform). */
  platform: unknown;
  boot: HartBoot;
  /** The compiled hart core (loadHartModule() in the parent; a Module can be posted). Default: loaded in the worker. */
  module?: WebAssembly.Module;
  /** Instructions per batch (default 16384). */
  batch?: number;
  /** Default interp. */
  engine?: EngineKind;
  /** MAX_HARTS × ENGINE_STAT_FIELDS Float64 (Machine.engineInfo reads it). */
  engineStats?: SharedArrayBuffer;
}

export type HartWorkerMessage =
  | { type: 'exit'; hartId: number; exit: HartExit; instret: bigint; cpuMs: number; jit?: JitStats }
  /** Something the machine's logger should record (e.g. a generated block that failed to compile). */
  | { type: 'log'; hartId: number; level: 'warn'; msg: string; fields: Record<string, unknown> }
  | { type: 'error'; hartId: number; message: string };

const data = workerData as HartWorkerData;
try {
  const { createPlatform } = (await import('../platform/index.ts')) as unknown as {
    createPlatform(state: unknown, hartId: number): { bus: PhysBus; sbi: SbiHandler };
  };
  const { bus, sbi } = createPlatform(data.platform, data.hartId);
  const signals = new HartSignals(data.harts, data.signals);
  const core = new HartCore({ memory: data.memory, hartId: data.hartId, ramSize: data.ramSize, mode: data.boot.mode, bus, module: data.module, time: () => signals.nowTicks(),
    engine: data.engine,
    engineStats: data.engineStats ? new Float64Array(data.engineStats, data.hartId * ENGINE_STAT_FIELDS * 8, ENGINE_STAT_FIELDS) : undefined,
    log: (msg, fields) => parentPort?.postMessage({ type: 'log', hartId: data.hartId, level: 'warn', msg, fields } satisfies HartWorkerMessage) });
  const hart = new Hart({ engine: core, signals, sbi, boot: data.boot, memory: data.memory, ramSize: data.ramSize, batch: data.batch });
  hart.resetForBoot();
  const exit = hart.run();
  const cpu = process.threadCpuUsage();
  const cpuMs = Math.round((cpu.user + cpu.system) / 1000);
  parentPort?.postMessage({ type: 'exit', hartId: data.hartId, exit, instret: core.instret, cpuMs, jit: core.jitStats() } satisfies HartWorkerMessage);
} catch (err) {
  parentPort?.postMessage({ type: 'error', hartId: data.hartId, message: err instanceof Error ? `${err.name}: ${err.message}` : String(err) } satisfies HartWorkerMessage);
}

