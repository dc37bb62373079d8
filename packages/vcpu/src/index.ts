export * from "./layout.ts";
export * from "./signals.ts";
export type * from "./bus.ts";
export * from "./engine.ts";
export { HartCore, HartConfigError, HART_WASM_URL, createHartMemory, wasmMemoryPages, loadHartModule } from "./hart/wasm.ts";
export type { HartCoreOptions } from "./hart/wasm.ts";
export { runSnippet } from "./hart/snippet.ts";
export type { SnippetOptions, SnippetResult } from "./hart/snippet.ts";
export * from "./difftest/index.ts";
