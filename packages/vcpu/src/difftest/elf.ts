// Minimal ELF64 writer for RISC-V static executables (ELF-64 Object File
// Format 1.5; RISC-V ELF psABI "File Header" for e_flags): one PT_LOAD
// segment, readable+writable+executable, at a fixed virtual address so
// qemu-riscv64 and our hart run the bytes at identical addresses.

const EHDR = 64, PHDR = 56, PAGE = 0x1000;
const EM_RISCV = 243;
/** EF_RISCV_RVC | EF_RISCV_FLOAT_ABI_DOUBLE: the program uses compressed and double-float instructions. */
const E_FLAGS = 0x1 | 0x4;

export function writeElf(segment: Uint8Array, vaddr: bigint, entry: bigint): Uint8Array {
  if (vaddr % BigInt(PAGE) !== 0n) throw new RangeError(`ELF segment address 0x${vaddr.toString(16)} must be page-aligned`);
  const out = new Uint8Array(PAGE + segment.length);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2 /* ELFCLASS64 */, 1 /* little-endian */, 1 /* EV_CURRENT */, 0 /* SYSV */]);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, EM_RISCV, true);
  v.setUint32(20, 1, true);
  v.setBigUint64(24, entry, true);
  v.setBigUint64(32, BigInt(EHDR), true); // e_phoff
  v.setBigUint64(40, 0n, true); // no section headers
  v.setUint32(48, E_FLAGS, true);
  v.setUint16(52, EHDR, true);
  v.setUint16(54, PHDR, true);
  v.setUint16(56, 1, true); // e_phnum
  v.setUint16(58, 64, true); // e_shentsize
  // Program header: PT_LOAD, file offset PAGE ≡ vaddr (mod PAGE) as the loader requires.
  const p = EHDR;
  v.setUint32(p, 1, true);
  v.setUint32(p + 4, 7, true); // PF_R | PF_W | PF_X
  v.setBigUint64(p + 8, BigInt(PAGE), true);
  v.setBigUint64(p + 16, vaddr, true);
  v.setBigUint64(p + 24, vaddr, true);
  v.setBigUint64(p + 32, BigInt(segment.length), true);
  v.setBigUint64(p + 40, BigInt(segment.length), true);
  v.setBigUint64(p + 48, BigInt(PAGE), true);
  out.set(segment, PAGE);
  return out;
}
