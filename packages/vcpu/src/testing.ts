// Test tooling of the vCPU (`@vmm/vcpu/testing`), kept out of the public
// entry point: the differential tester against qemu-riscv64 (difftest/).
export * from './difftest/index.ts';
