// Flattened Devicetree writer (Devicetree Specification v0.4 §5: header,
// memory reservation block, structure block, strings block; version 17,
// last compatible version 16) and a generator for a tree shaped like QEMU
// 7.2's `-M virt` (hw/riscv/virt.c), restricted to the devices we model.

import { writeFileSync } from 'node:fs';
import { VmmError } from '@vmm/core';
import { IRQ, MMIO, PLIC_NUM_SOURCES, RAM_BASE, TIMEBASE_HZ } from '../layout.ts';

const FDT_MAGIC = 0xd00d_feed;
const FDT_BEGIN_NODE = 1;
const FDT_END_NODE = 2;
const FDT_PROP = 3;
const FDT_END = 9;
const FDT_VERSION = 17;
const FDT_LAST_COMP_VERSION = 16;
const HEADER_BYTES = 40;

export class DtbError extends VmmError {
  constructor(message: string) {
    super(message, 'config', 'ERR_DTB');
  }
}

/** A property value: bytes as given, a string, a string list, u32 cells, u64 cells, or empty. */
export type DtValue = Uint8Array | string | string[] | number[] | { u64: bigint[] } | null;

export class DtNode {
  readonly name: string;
  readonly props: { name: string; value: Uint8Array }[] = [];
  readonly children: DtNode[] = [];

  constructor(name: string) {
    // §2.2.1: node-name@unit-address, 1..31 characters for the name part.
    if (name !== '' && !/^[A-Za-z0-9,._+-]{1,31}(@[A-Za-z0-9,._+-]+)?$/.test(name)) throw new DtbError(`bad devicetree node name ${JSON.stringify(name)}`);
    this.name = name;
  }

  prop(name: string, value: DtValue): this {
    if (!/^[A-Za-z0-9,._+?#-]{1,31}$/.test(name)) throw new DtbError(`bad devicetree property name ${JSON.stringify(name)}`);
    this.props.push({ name, value: encodeValue(value) });
    return this;
  }

  child(name: string): DtNode {
    const c = new DtNode(name);
    this.children.push(c);
    return c;
  }
}

function encodeValue(v: DtValue): Uint8Array {
  if (v === null) return new Uint8Array(0);
  if (v instanceof Uint8Array) return v;
  if (typeof v === 'string') return new TextEncoder().encode(`${v}\0`);
  if (Array.isArray(v) && (v.length === 0 || typeof v[0] === 'string')) return new TextEncoder().encode((v as string[]).map((s) => `${s}\0`).join(''));
  if (Array.isArray(v)) {
    const cells = v as number[];
    const out = new Uint8Array(cells.length * 4);
    const dv = new DataView(out.buffer);
    cells.forEach((c, i) => {
      if (!Number.isInteger(c) || c < 0 || c > 0xffff_ffff) throw new DtbError(`devicetree cell out of u32 range: ${c}`);
      dv.setUint32(i * 4, c);
    });
    return out;
  }
  const out = new Uint8Array(v.u64.length * 8);
  const dv = new DataView(out.buffer);
  v.u64.forEach((c, i) => dv.setBigUint64(i * 8, BigInt.asUintN(64, c)));
  return out;
}

/** Serialize a tree (root named "") into a DTB blob (§5). */
export function encodeFdt(root: DtNode, opts: { bootCpuId?: number; reserve?: { address: bigint; size: bigint }[] } = {}): Uint8Array {
  const struct: number[] = []; // big-endian bytes
  const strings: number[] = [];
  const stringOffsets = new Map<string, number>();
  const enc = new TextEncoder();
  const u32 = (n: number): void => { struct.push((n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff); };
  const pad = (): void => { while (struct.length % 4 !== 0) struct.push(0); };
  const nameOff = (name: string): number => {
    let off = stringOffsets.get(name);
    if (off === undefined) {
      off = strings.length;
      stringOffsets.set(name, off);
      strings.push(...enc.encode(name), 0);
    }
    return off;
  };
  const emit = (node: DtNode): void => {
    u32(FDT_BEGIN_NODE);
    struct.push(...enc.encode(node.name), 0);
    pad();
    for (const p of node.props) {
      u32(FDT_PROP);
      u32(p.value.length);
      u32(nameOff(p.name));
      for (const b of p.value) struct.push(b);
      pad();
    }
    for (const c of node.children) emit(c);
    u32(FDT_END_NODE);
  };
  emit(root);
  u32(FDT_END);

  const reserve = opts.reserve ?? [];
  const offRsv = HEADER_BYTES; // 8-byte aligned (§5.3)
  const rsvBytes = (reserve.length + 1) * 16;
  const offStruct = offRsv + rsvBytes;
  const offStrings = offStruct + struct.length;
  const total = offStrings + strings.length;
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  const header = [FDT_MAGIC, total, offStruct, offStrings, offRsv, FDT_VERSION, FDT_LAST_COMP_VERSION, opts.bootCpuId ?? 0, strings.length, struct.length];
  header.forEach((v, i) => dv.setUint32(i * 4, v));
  reserve.forEach((r, i) => {
    dv.setBigUint64(offRsv + i * 16, r.address);
    dv.setBigUint64(offRsv + i * 16 + 8, r.size);
  });
  out.set(struct, offStruct);
  out.set(strings, offStrings);
  return out;
}

export interface VirtDtbConfig {
  harts: number;
  memBytes: number;
  bootargs: string;
  initrd?: { start: number; end: number };
  /** Entropy for the kernel's RNG (chosen/rng-seed), as QEMU passes 32 bytes. */
  rngSeed?: Uint8Array;
  /** A virtio-iommu in one of the virtio-mmio slots and the slots whose DMA it translates. */
  iommu?: DtbIommu;
}

/**
 * The IOMMU's wiring (Linux Documentation/devicetree/bindings/virtio/mmio.yaml
 * and bindings/iommu/iommu.txt): the IOMMU's virtio-mmio node gets
 * `#iommu-cells = <1>` and a phandle, each endpoint's node `iommus =
 * <&viommu ID>`; ID is the endpoint id the driver puts in ATTACH/PROBE
 * requests (virtio 1.2 §5.13.6.3).
 */
export interface DtbIommu {
  /** Index of the virtio-mmio slot the IOMMU sits in. */
  slot: number;
  endpoints: readonly { slot: number; id: number }[];
  /**
   * A page of RAM the guest must never use (a /memreserve/ entry, DTSpec
   * §5.3): the host keeps a canary there, where a stray device access that
   * escaped translation (IOVA taken as a guest-physical address) would land.
   */
  canary?: { gpa: number; size: number };
}

function checkIommu(io: DtbIommu): void {
  const slotOk = (s: number): boolean => Number.isInteger(s) && s >= 0 && s < MMIO.virtio.count;
  if (!slotOk(io.slot)) throw new DtbError(`IOMMU slot ${io.slot} is not a virtio-mmio slot (0..${MMIO.virtio.count - 1})`);
  const seen = new Set<number>();
  const ids = new Set<number>();
  for (const e of io.endpoints) {
    if (!slotOk(e.slot)) throw new DtbError(`IOMMU endpoint slot ${e.slot} is not a virtio-mmio slot (0..${MMIO.virtio.count - 1})`);
    if (e.slot === io.slot) throw new DtbError(`IOMMU endpoint slot ${e.slot} is the IOMMU's own slot`);
    if (seen.has(e.slot)) throw new DtbError(`IOMMU endpoint slot ${e.slot} is listed twice`);
    if (!Number.isInteger(e.id) || e.id < 0 || e.id > 0xffff_ffff) throw new DtbError(`IOMMU endpoint id ${e.id} (slot ${e.slot}) is not a u32`);
    if (ids.has(e.id)) throw new DtbError(`IOMMU endpoint id ${e.id} is given to two slots`);
    seen.add(e.slot);
    ids.add(e.id);
  }
}

/** ISA string and extension list of our hart (RV64GC with the counters and CSR/fence.i split out). */
export const RISCV_ISA = 'rv64imafdc_zicntr_zicsr_zifencei';
export const RISCV_ISA_EXTENSIONS = ['i', 'm', 'a', 'f', 'd', 'c', 'zicntr', 'zicsr', 'zifencei'];

const hi = (n: number): number => Math.floor(n / 2 ** 32);
const lo = (n: number): number => n >>> 0;
const reg = (base: number, size: number): number[] => [hi(base), lo(base), hi(size), lo(size)];

/** The DTB for our `-M virt`-shaped machine. Node order follows QEMU's dump (libfdt prepends subnodes). */
export function buildVirtDtb(cfg: VirtDtbConfig): Uint8Array {
  if (cfg.iommu) checkIommu(cfg.iommu);
  let next = 1;
  const phandle = (): number => next++;
  const root = new DtNode('');
  root.prop('#address-cells', [2]).prop('#size-cells', [2]).prop('compatible', 'riscv-virtio').prop('model', 'riscv-virtio,qemu');

  const chosen = root.child('chosen');
  chosen.prop('bootargs', cfg.bootargs).prop('stdout-path', `/soc/serial@${MMIO.uart0.base.toString(16)}`);
  if (cfg.initrd) chosen.prop('linux,initrd-start', { u64: [BigInt(cfg.initrd.start)] }).prop('linux,initrd-end', { u64: [BigInt(cfg.initrd.end)] });
  if (cfg.rngSeed) chosen.prop('rng-seed', cfg.rngSeed);

  const testPhandle = phandle();
  root.child('poweroff').prop('value', [0x5555]).prop('offset', [0]).prop('regmap', [testPhandle]).prop('compatible', 'syscon-poweroff');
  root.child('reboot').prop('value', [0x7777]).prop('offset', [0]).prop('regmap', [testPhandle]).prop('compatible', 'syscon-reboot');

  root.child(`memory@${RAM_BASE.toString(16)}`).prop('device_type', 'memory').prop('reg', reg(RAM_BASE, cfg.memBytes));

  const cpus = root.child('cpus');
  cpus.prop('#address-cells', [1]).prop('#size-cells', [0]).prop('timebase-frequency', [TIMEBASE_HZ]);
  const cpuPhandles: number[] = [];
  const intcPhandles: number[] = [];
  for (let h = 0; h < cfg.harts; h++) {
    const cpuPh = phandle();
    const intcPh = phandle();
    cpuPhandles.push(cpuPh);
    intcPhandles.push(intcPh);
    const cpu = cpus.child(`cpu@${h}`);
    cpu.prop('phandle', [cpuPh]).prop('device_type', 'cpu').prop('reg', [h]).prop('status', 'okay').prop('compatible', 'riscv')
      .prop('riscv,isa', RISCV_ISA).prop('riscv,isa-base', 'rv64i').prop('riscv,isa-extensions', RISCV_ISA_EXTENSIONS)
      .prop('mmu-type', 'riscv,sv48');
    cpu.child('interrupt-controller').prop('#interrupt-cells', [1]).prop('interrupt-controller', null).prop('compatible', 'riscv,cpu-intc').prop('phandle', [intcPh]);
  }
  const cluster = cpus.child('cpu-map').child('cluster0');
  for (let h = 0; h < cfg.harts; h++) cluster.child(`core${h}`).prop('cpu', [cpuPhandles[h]!]);

  const soc = root.child('soc');
  soc.prop('#address-cells', [2]).prop('#size-cells', [2]).prop('compatible', 'simple-bus').prop('ranges', null);
  const plicPhandle = phandle();
  soc.child(`rtc@${MMIO.rtc.base.toString(16)}`).prop('interrupts', [IRQ.rtc]).prop('interrupt-parent', [plicPhandle])
    .prop('reg', reg(MMIO.rtc.base, MMIO.rtc.size)).prop('compatible', 'google,goldfish-rtc');
  soc.child(`serial@${MMIO.uart0.base.toString(16)}`).prop('interrupts', [IRQ.uart0]).prop('interrupt-parent', [plicPhandle])
    .prop('clock-frequency', [0x384000]).prop('reg', reg(MMIO.uart0.base, MMIO.uart0.size)).prop('compatible', 'ns16550a');
  soc.child(`test@${MMIO.test.base.toString(16)}`).prop('phandle', [testPhandle]).prop('reg', reg(MMIO.test.base, MMIO.test.size))
    .prop('compatible', ['sifive,test1', 'sifive,test0', 'syscon']);
  // Allocated after every other phandle, so a DTB without an IOMMU is unchanged.
  const iommuPhandle = cfg.iommu ? phandle() : 0;
  // QEMU lists the slots from the highest address down; Linux probes in this order, so vda is the last slot.
  for (let i = MMIO.virtio.count - 1; i >= 0; i--) {
    const base = MMIO.virtio.base + i * MMIO.virtio.size;
    const node = soc.child(`virtio_mmio@${base.toString(16)}`).prop('interrupts', [IRQ.virtioFirst + i]).prop('interrupt-parent', [plicPhandle])
      .prop('reg', reg(base, MMIO.virtio.size)).prop('compatible', 'virtio,mmio');
    if (cfg.iommu?.slot === i) node.prop('#iommu-cells', [1]).prop('phandle', [iommuPhandle]);
    const ep = cfg.iommu?.endpoints.find((e) => e.slot === i);
    if (ep) node.prop('iommus', [iommuPhandle, ep.id]);
  }
  const plicExt: number[] = [];
  const clintExt: number[] = [];
  for (let h = 0; h < cfg.harts; h++) {
    plicExt.push(intcPhandles[h]!, 11, intcPhandles[h]!, 9); // contexts 2h (M external), 2h+1 (S external)
    clintExt.push(intcPhandles[h]!, 3, intcPhandles[h]!, 7); // M software, M timer
  }
  soc.child(`plic@${MMIO.plic.base.toString(16)}`).prop('phandle', [plicPhandle]).prop('riscv,ndev', [PLIC_NUM_SOURCES - 1])
    .prop('reg', reg(MMIO.plic.base, MMIO.plic.size)).prop('interrupts-extended', plicExt).prop('interrupt-controller', null)
    .prop('compatible', ['sifive,plic-1.0.0', 'riscv,plic0']).prop('#address-cells', [0]).prop('#interrupt-cells', [1]);
  soc.child(`clint@${MMIO.clint.base.toString(16)}`).prop('interrupts-extended', clintExt).prop('reg', reg(MMIO.clint.base, MMIO.clint.size))
    .prop('compatible', ['sifive,clint0', 'riscv,clint0']);

  const canary = cfg.iommu?.canary;
  if (canary && !(canary.size > 0 && canary.gpa >= RAM_BASE && canary.gpa + canary.size <= RAM_BASE + cfg.memBytes)) {
    throw new DtbError(`IOMMU canary 0x${canary.gpa.toString(16)}+${canary.size} is not inside RAM`);
  }
  return encodeFdt(root, canary ? { reserve: [{ address: BigInt(canary.gpa), size: BigInt(canary.size) }] } : {});
}

/** `--dump-dtb PATH`: write the blob a machine with this configuration would get. */
export function dumpDtb(path: string, cfg: VirtDtbConfig): void {
  writeFileSync(path, buildVirtDtb(cfg));
}
