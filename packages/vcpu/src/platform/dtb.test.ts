// Checks our DTB against the reference: dtc must decode it, and its nodes,
// compatible strings, reg, interrupts and interrupt wiring must match what
// QEMU 7.2's `-M virt` dumps for the same hart count and RAM size, except for
// the QEMU devices we do not model (PCIe, fw-cfg, flash, platform bus, PMU).

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildVirtDtb, dumpDtb, DtNode, encodeFdt } from './dtb.ts';

function requireTool(cmd: string, pkg: string): void {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`]);
  if (r.status !== 0) throw new Error(`${cmd} not found: run scripts/setup.sh (Debian package ${pkg})`);
}

const dir = mkdtempSync(join(tmpdir(), 'vmm-dtb-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function dts(blob: Uint8Array | string): string {
  requireTool('dtc', 'device-tree-compiler');
  const path = typeof blob === 'string' ? blob : join(dir, `b${Math.random().toString(36).slice(2)}.dtb`);
  if (typeof blob !== 'string') execFileSync('sh', ['-c', 'cat > "$1"', 'sh', path], { input: blob });
  return execFileSync('dtc', ['-q', '-I', 'dtb', '-O', 'dts', path], { encoding: 'utf8' });
}

function qemuDtb(harts: number, memMiB: number): string {
  requireTool('qemu-system-riscv64', 'qemu-system-misc');
  const path = join(dir, `qemu-${harts}-${memMiB}.dtb`);
  execFileSync('qemu-system-riscv64', ['-M', `virt,dumpdtb=${path}`, '-smp', String(harts), '-m', `${memMiB}M`, '-nographic', '-display', 'none'], { stdio: 'ignore' });
  return path;
}

interface Node { path: string; props: Map<string, string>; children: string[] }

/** Parse dtc's canonical DTS output into path → properties (raw value text). */
function parseDts(text: string): Map<string, Node> {
  const nodes = new Map<string, Node>();
  const stack: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('/dts-v1/') || line.startsWith('/memreserve/')) continue;
    let m: RegExpMatchArray | null;
    if ((m = /^(\S+) \{$/.exec(line))) {
      const name = m[1]!;
      const path = name === '/' ? '/' : `${stack.length === 1 ? '' : stack[stack.length - 1]}/${name}`;
      if (stack.length > 0) nodes.get(stack[stack.length - 1]!)!.children.push(path);
      nodes.set(path, { path, props: new Map(), children: [] });
      stack.push(path);
    } else if (line === '};') {
      stack.pop();
    } else if ((m = /^([^\s=]+)(?: = (.*))?;$/.exec(line))) {
      nodes.get(stack[stack.length - 1]!)!.props.set(m[1]!, m[2] ?? '');
    } else {
      throw new Error(`unparsed DTS line: ${line}`);
    }
  }
  return nodes;
}

/** Replace phandle cells in wiring properties by the path of the node they name. */
function wiring(nodes: Map<string, Node>, node: Node): Record<string, string> {
  const byPhandle = new Map<string, string>();
  for (const n of nodes.values()) {
    const ph = n.props.get('phandle');
    if (ph) byPhandle.set(ph.replace(/[<>]/g, ''), n.path);
  }
  const cells = (v: string): string[] => v.replace(/[<>]/g, '').split(/\s+/).filter(Boolean);
  const out: Record<string, string> = {};
  for (const key of ['compatible', 'reg', 'interrupts', 'device_type', 'clock-frequency', 'value', 'offset', 'timebase-frequency', 'status', '#interrupt-cells', '#address-cells', '#size-cells', 'interrupt-controller', 'ranges']) {
    const v = node.props.get(key);
    if (v !== undefined) out[key] = v;
  }
  for (const key of ['interrupt-parent', 'regmap', 'cpu']) {
    const v = node.props.get(key);
    if (v !== undefined) out[key] = byPhandle.get(cells(v)[0]!) ?? `?${v}`;
  }
  const ext = node.props.get('interrupts-extended');
  if (ext !== undefined) {
    const c = cells(ext);
    const pairs: string[] = [];
    for (let i = 0; i < c.length; i += 2) pairs.push(`${byPhandle.get(c[i]!)}:${c[i + 1]}`);
    out['interrupts-extended'] = pairs.join(' ');
  }
  return out;
}

// QEMU virt devices we deliberately do not model.
const NOT_MODELLED = [/^\/pmu$/, /^\/fw-cfg@/, /^\/flash@/, /^\/platform-bus@/, /^\/soc\/pci@/];

describe('FDT writer (Devicetree spec v0.4 §5)', () => {
  it('produces a v17 blob dtc decodes, with strings, cells, u64 and empty properties', () => {
    const root = new DtNode('');
    root.prop('#address-cells', [2]).prop('model', 'x').prop('compatible', ['a', 'b']);
    root.child('n@1').prop('empty', null).prop('big', { u64: [0x1_0000_0002n] }).prop('bytes', Uint8Array.of(1, 2, 3));
    const blob = encodeFdt(root, { reserve: [{ address: 0x8000_0000n, size: 0x1000n }] });
    const dv = new DataView(blob.buffer);
    expect(dv.getUint32(0)).toBe(0xd00d_feed);
    expect(dv.getUint32(4)).toBe(blob.length);
    expect(dv.getUint32(20)).toBe(17);
    expect(dv.getUint32(24)).toBe(16);
    const text = dts(blob);
    expect(text).toContain('/memreserve/\t0x0000000080000000 0x0000000000001000;');
    const n = parseDts(text);
    expect(n.get('/')!.props.get('compatible')).toBe('"a\\0b"');
    expect(n.get('/n@1')!.props.get('big')).toBe('<0x01 0x02>');
    expect(n.get('/n@1')!.props.get('empty')).toBe('');
    expect(n.get('/n@1')!.props.get('bytes')).toBe('[01 02 03]');
  });

  it('rejects bad node and property names and out-of-range cells', () => {
    expect(() => new DtNode('a b')).toThrow(/bad devicetree node name/);
    expect(() => new DtNode('x').prop('', null)).toThrow(/property name/);
    expect(() => new DtNode('x').prop('v', [2 ** 32])).toThrow(/u32 range/);
  });
});

describe('virt DTB vs QEMU 7.2 -M virt', () => {
  it.each([[1, 128], [2, 256], [4, 1024]])('harts=%i mem=%iMiB: same devices, addresses, interrupts and wiring', (harts, memMiB) => {
    const ours = parseDts(dts(buildVirtDtb({ harts, memBytes: memMiB * 1024 * 1024, bootargs: 'console=ttyS0' })));
    const ref = parseDts(dts(qemuDtb(harts, memMiB)));
    const refPaths = [...ref.keys()].filter((p) => !NOT_MODELLED.some((re) => re.test(p)));
    expect([...ours.keys()].sort()).toEqual(refPaths.sort());
    for (const p of refPaths) {
      const mine = wiring(ours, ours.get(p)!);
      const theirs = wiring(ref, ref.get(p)!);
      expect({ path: p, ...mine }).toEqual({ path: p, ...theirs });
    }
    // Child order of /soc decides probe order (vda is the first virtio-mmio node Linux probes).
    const order = (n: Map<string, Node>): string[] => n.get('/soc')!.children.filter((c) => c.includes('virtio_mmio'));
    expect(order(ours)).toEqual(order(ref));
    expect(order(ours)[0]).toBe('/soc/virtio_mmio@10008000');
    expect(ours.get('/chosen')!.props.get('stdout-path')).toBe(ref.get('/chosen')!.props.get('stdout-path'));
    // Our hart: RV64GC, Sv48.
    expect(ours.get('/cpus/cpu@0')!.props.get('mmu-type')).toBe('"riscv,sv48"');
    expect(ours.get('/cpus/cpu@0')!.props.get('riscv,isa')).toBe('"rv64imafdc_zicntr_zicsr_zifencei"');
    expect(ours.get('/cpus/cpu@0')!.props.get('riscv,isa-base')).toBe('"rv64i"');
  });

  it('chosen carries bootargs, the initrd range as u64s and an rng seed; --dump-dtb writes the same blob', () => {
    const cfg = { harts: 1, memBytes: 64 << 20, bootargs: 'console=ttyS0 rdinit=/init', initrd: { start: 0x8400_0000, end: 0x8412_3456 }, rngSeed: new Uint8Array(32).fill(7) };
    const blob = buildVirtDtb(cfg);
    const chosen = parseDts(dts(blob)).get('/chosen')!.props;
    expect(chosen.get('bootargs')).toBe('"console=ttyS0 rdinit=/init"');
    expect(chosen.get('linux,initrd-start')).toBe('<0x00 0x84000000>');
    expect(chosen.get('linux,initrd-end')).toBe('<0x00 0x84123456>');
    expect(chosen.get('rng-seed')).toMatch(/^<0x7070707 /);
    const path = join(dir, 'dump.dtb');
    dumpDtb(path, cfg);
    expect(new Uint8Array(readFileSync(path))).toEqual(blob);
  });
});

describe('virt DTB with a virtio-iommu (bindings/virtio/mmio.yaml)', () => {
  const cfg = { harts: 1, memBytes: 128 << 20, bootargs: 'console=ttyS0', iommu: { slot: 7, endpoints: [{ slot: 0, id: 8 }, { slot: 1, id: 9 }] } };

  it('gives the IOMMU node #iommu-cells = <1> and a phandle, each endpoint iommus = <&viommu ID>', () => {
    const n = parseDts(dts(buildVirtDtb(cfg)));
    // Slot i is at 0x10001000 + i·0x1000: slot 7 is the IOMMU, slots 0 and 1 its endpoints.
    const viommu = n.get('/soc/virtio_mmio@10008000')!.props;
    expect(viommu.get('#iommu-cells')).toBe('<0x01>');
    const ph = viommu.get('phandle');
    expect(ph).toMatch(/^<0x[0-9a-f]+>$/);
    const cell = ph!.slice(1, -1);
    expect(n.get('/soc/virtio_mmio@10001000')!.props.get('iommus')).toBe(`<${cell} 0x08>`);
    expect(n.get('/soc/virtio_mmio@10002000')!.props.get('iommus')).toBe(`<${cell} 0x09>`);
    expect(n.get('/soc/virtio_mmio@10003000')!.props.has('iommus')).toBe(false);
    // The phandle is nobody else's.
    const all = [...n.values()].map((x) => x.props.get('phandle')).filter((p) => p !== undefined);
    expect(all.filter((p) => p === ph)).toHaveLength(1);
  });

  it("passes dtc's own checks (iommus cells against the target's #iommu-cells), which catch a miswired blob", () => {
    // dtc checks phandle arguments when it reads a blob (from DTS source the cells are bare numbers).
    const check = (blob: Uint8Array): string => spawnSync('dtc', ['-I', 'dtb', '-O', 'dtb', '-o', '/dev/null', '-'], { input: blob, encoding: 'utf8' }).stderr;
    const good = buildVirtDtb(cfg);
    expect(check(good)).not.toMatch(/iommu/);
    const miswired = spawnSync('dtc', ['-I', 'dts', '-O', 'dtb', '-'], { input: dts(good).replace('#iommu-cells = <0x01>', '#iommu-cells = <0x02>'), stdio: ['pipe', 'pipe', 'ignore'] }).stdout;
    expect(check(new Uint8Array(miswired))).toMatch(/Warning \(iommus_property\): \/soc\/virtio_mmio@10001000:iommus/);
  });

  it('without an IOMMU the blob is what it was; bad wiring is refused naming the value', () => {
    const { iommu: _, ...plain } = cfg;
    expect(dts(buildVirtDtb(plain))).not.toMatch(/iommu/);
    expect(() => buildVirtDtb({ ...cfg, iommu: { slot: 8, endpoints: [] } })).toThrow(/IOMMU slot 8 is not a virtio-mmio slot/);
    expect(() => buildVirtDtb({ ...cfg, iommu: { slot: 7, endpoints: [{ slot: 7, id: 1 }] } })).toThrow(/the IOMMU's own slot/);
    expect(() => buildVirtDtb({ ...cfg, iommu: { slot: 7, endpoints: [{ slot: 0, id: 1 }, { slot: 0, id: 2 }] } })).toThrow(/slot 0 is listed twice/);
    expect(() => buildVirtDtb({ ...cfg, iommu: { slot: 7, endpoints: [{ slot: 0, id: 1 }, { slot: 1, id: 1 }] } })).toThrow(/id 1 is given to two slots/);
    expect(() => buildVirtDtb({ ...cfg, iommu: { slot: 7, endpoints: [{ slot: 0, id: -1 }] } })).toThrow(/id -1 \(slot 0\) is not a u32/);
  });
});
