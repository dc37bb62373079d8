export * from "./layout.ts";
export * from "./signals.ts";
export type * from "./bus.ts";
