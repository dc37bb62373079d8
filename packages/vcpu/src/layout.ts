// Physical memory map of the machine, laid out like QEMU's `-M virt`
// (hw/riscv/virt.c, QEMU 7.2) so that the same kernel, DTB shape and
// OpenSBI work on both and can be compared.

export const TIMEBASE_HZ = 10_000_000; // QEMU virt: RISCV_ACLINT_DEFAULT_TIMEBASE_FREQ

export const MMIO = {
  test: { base: 0x0010_0000, size: 0x1000 }, // sifive,test1 "syscon" finisher: poweroff/reboot
  rtc: { base: 0x0010_1000, size: 0x1000 }, // google,goldfish-rtc
  power: { base: 0x0010_2000, size: 0x1000 }, // vmm's paravirtual power button (not in the DTB; a page QEMU virt leaves free)
  clint: { base: 0x0200_0000, size: 0x1_0000 }, // sifive,clint0 (ACLINT MSWI + MTIMER layout)
  plic: { base: 0x0c00_0000, size: 0x60_0000 }, // sifive,plic-1.0.0
  uart0: { base: 0x1000_0000, size: 0x100 }, // ns16550a
  virtio: { base: 0x1000_1000, size: 0x1000, count: 8 }, // virtio,mmio slots
} as const;

export const IRQ = {
  uart0: 10,
  rtc: 11,
  virtioFirst: 1, // slot i uses PLIC source 1 + i
} as const;

export const PLIC_NUM_SOURCES = 96; // QEMU: VIRT_IRQCHIP_NUM_SOURCES
export const PLIC_NUM_PRIORITIES = 7;

export const RAM_BASE = 0x8000_0000;
/** Where the kernel Image is loaded (the offset the RISC-V Linux boot protocol expects for rv64: 2 MiB). */
export const KERNEL_LOAD = 0x8020_0000;

/**
 * Guest RAM lives inside the vCPU's shared WebAssembly.Memory at this byte
 * offset: the region [WASM_RAM_OFFSET, WASM_RAM_OFFSET + ramSize) is
 * replaced by an mmap(MAP_SHARED|MAP_FIXED) of the VM's RAM memfd, so the
 * wasm hart, the machine process's TypeScript and every device process all
 * see the same pages. Below it: the hart core's static data and per-hart state.
 */
export const WASM_RAM_OFFSET = 16 * 1024 * 1024;

export const MAX_HARTS = 8;
