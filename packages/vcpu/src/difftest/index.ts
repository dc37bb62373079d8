// Differential tester of our RV64GC hart against qemu-riscv64 (see check.ts).
export { generate, CLASSES, CLASS_NAMES, Rng, INT_EDGES, F32_EDGES, F64_EDGES } from './generator.ts';
export type { Program, Group, GenerateOptions } from './generator.ts';
export { assemble, toElf, describeOffset, BASE as DIFFTEST_BASE, OUT_SIZE as DIFFTEST_OUT_SIZE } from './image.ts';
export type { Image, ListedInsn } from './image.ts';
export { writeElf } from './elf.ts';
export { runQemu, QemuError } from './qemu.ts';
export { check, minimise, formatDivergence, runOurs } from './check.ts';
export type { Divergence, Difference, CheckOptions, SideResult } from './check.ts';
export { EncodeError } from './encode.ts';
export type { Insn } from './encode.ts';
export { lockstepImage, formatLockstep } from './lockstep.ts';
export type { LockstepOptions, LockstepDivergence } from './lockstep.ts';
export { checkTrap, trapProgram, TRAP_KINDS, TRAP_KIND_NAMES } from './trap.ts';
export type { TrapCase } from './trap.ts';
export { execQemu } from './qemu.ts';
export type { QemuRun } from './qemu.ts';
