export * from "./layout.ts";
export * from "./signals.ts";
export type * from "./bus.ts";
export * from "./engine.ts";
export { HartCore, HartConfigError, HART_WASM_URL, createHartMemory, wasmMemoryPages, loadHartModule } from "./hart/wasm.ts";
export type { HartCoreOptions } from "./hart/wasm.ts";
export { runSnippet } from "./hart/snippet.ts";
export type { SnippetOptions, SnippetResult } from "./hart/snippet.ts";
export { Hart, HartStateError } from "./hart/hart.ts";
export type { HartBoot, HartExit, HartState, HartOptions } from "./hart/hart.ts";
export type { HartWorkerData, HartWorkerMessage } from "./hart/hart-worker.ts";
/** The hart worker entry, for `new Worker(HART_WORKER_URL, { workerData: HartWorkerData })`. */
export const HART_WORKER_URL = new URL("./hart/hart-worker.ts", import.meta.url);
export * from "./platform/index.ts";
export { startMachine, machineDtb, hartThreadName, MachineConfigError, parseKernelImage, planBoot, setHartWorkerUrl, STOPPED_BY_HOST } from "./machine.ts";
export type { Machine, MachineConfig, MachineExit, BootLayout, KernelImageInfo, ResetCause } from "./machine.ts";
export { VirtioMmioState, INT as VIRTIO_INT, REG as VIRTIO_MMIO_REG, TRANSPORT_FEATURES, type IrqFn, type KickFn, type QueueConfig } from "./virtio-mmio/transport.ts";
