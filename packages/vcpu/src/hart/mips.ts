// Quick engine speed check: `pnpm exec node packages/vcpu/src/hart/mips.ts [millions] [interp|jit]`.
// Runs a load/store/ALU/branch loop (5 instructions per iteration) in
// batches the way a hart worker does and prints MIPS per wall second and per
// CPU second (the latter is steadier on a shared machine). Not a test.
import { HartCore, createHartMemory } from './wasm.ts';
import { A, li, assemble } from './asm.ts';
import { RAM_BASE } from '../layout.ts';

const iterations = BigInt(Math.round(Number(process.argv[2] ?? 20) * 1e6 / 5));
const prog = assemble([
  ...li(5, iterations), A.addi(6, 0, 0), ...li(2, BigInt(RAM_BASE) + 0x1000n),
  A.add(6, 6, 5), A.sd(6, 2, 0), A.ld(7, 2, 0), A.addi(5, 5, -1), A.bne(5, 0, -16),
  A.ecall(),
]);
const ramSize = 1 << 20;
const engine = process.argv[3] === 'jit' ? 'jit' : 'interp';
const core = new HartCore({ memory: createHartMemory(ramSize), hartId: 0, ramSize, mode: 'snippet', engine });
for (let round = 0; round < 2; round++) {
  core.reset();
  core.ram().set(prog);
  core.pc = BigInt(RAM_BASE);
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  while (core.run(16384).kind === 'limit');
  const wall = (performance.now() - t0) / 1000;
  const cu = process.cpuUsage(c0);
  const cpu = (cu.user + cu.system) / 1e6;
  const n = Number(core.instret);
  console.log(`${engine} round ${round}: ${(n / 1e6).toFixed(0)} M instructions, ${(n / wall / 1e6).toFixed(1)} MIPS (wall), ${(n / cpu / 1e6).toFixed(1)} MIPS (per CPU second)`);
}
