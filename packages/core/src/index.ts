export * from "./ffi.ts";
