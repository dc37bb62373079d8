// Checked access to guest RAM (STYLE.md §1). A device touches guest memory
// only through GuestMemory: every access is bounds-checked against the mapped
// regions and fails with a typed error, never a wrong byte. An optional
// AddressTranslator (an IOMMU) sits inside the interface, so a device does not
// know whether its addresses are guest-physical or I/O-virtual.
//
// GuestAddress is a branded `number`: exact for every address below 2^53,
// which covers any guest RAM this VMM maps (and the virtio-iommu device
// advertises an input range below 2^53, so IOVAs fit too). A 64-bit value
// read from the guest that does not fit is rejected by guestAddress() with
// the same range error as any other unmapped address.

import { VmmError } from './errors.ts';
import { closeFd, fdSize, mmapShared } from './ffi.ts';

export type GuestAddress = number & { readonly __brand: 'GuestAddress' };

export class GuestMemoryError extends VmmError {
  readonly addr: number | bigint;
  readonly len: number;
  constructor(message: string, addr: number | bigint, len: number, code = 'ERR_GUEST_MEMORY_RANGE') {
    super(message, 'guest', code);
    this.addr = addr;
    this.len = len;
  }
}

const hex = (v: number | bigint) => `0x${v.toString(16)}`;

/** Brand a guest address; throws GuestMemoryError for negative, fractional or ≥ 2^53 values. */
const MAX_SAFE_BIGINT = BigInt(Number.MAX_SAFE_INTEGER);

export function guestAddress(v: number | bigint): GuestAddress {
  if (typeof v === 'bigint') {
    if (v < 0n || v > MAX_SAFE_BIGINT) throw new GuestMemoryError(`guest address ${hex(v)} is beyond 2^53`, v, 0);
    return Number(v) as GuestAddress;
  }
  if (!Number.isSafeInteger(v) || v < 0) throw new GuestMemoryError(`guest address ${v} is not a valid address`, v, 0);
  return v as GuestAddress;
}

export type Access = 'read' | 'write';

/**
 * Translates I/O-virtual addresses to guest-physical ones (an IOMMU). Returns
 * the GPA of `iova` and how many bytes from there are contiguous with the same
 * permission (at least 1, at most `len`), or throws GuestMemoryError with code
 * ERR_IOMMU_FAULT on a miss or a permission fault.
 */
export interface AddressTranslator {
  translate(iova: number, len: number, access: Access): { gpa: number; len: number };
}

/**
 * The IOMMU a device process translates its DMA through, with strict-mode
 * request tracking: a request begin()s before its first translation and
 * end()s after its last access, so the IOMMU can tell when no request uses
 * a translation it took away (an UNMAP completes only then).
 */
export interface DmaTranslator extends AddressTranslator {
  begin(): number;
  end(token: number): void;
}

function isDmaTranslator(t: AddressTranslator): t is DmaTranslator {
  return typeof (t as Partial<DmaTranslator>).begin === 'function' && typeof (t as Partial<DmaTranslator>).end === 'function';
}

/** One mapped stretch of guest-physical memory. */
export interface GuestRegion {
  readonly gpa: GuestAddress;
  readonly size: number;
  /** The frontend's virtual address of the region's start (vhost-user), or the gpa when unknown. */
  readonly userAddr: bigint;
  /** Offset of the region in its fd (vhost-user mmap_offset). */
  readonly mmapOffset: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
}

/** A region described by a vhost-user memory table entry (vhost-user spec "Memory regions description"). */
export interface VhostUserRegionDesc {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userAddr: bigint;
  mmapOffset: bigint;
  fd: number;
}

/** Typed-array views over a guest-physical range that lies in one region (for virtqueue rings). */
export interface RangeViews {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Index [i] is the 16-bit word at byte offset 2*i of the range (range 2-aligned). */
  readonly u16: Uint16Array;
  /** Index [i] is the 32-bit word at byte offset 4*i (only when the range is 4-aligned, else length 0). */
  readonly u32: Uint32Array;
}

function makeRegion(gpa: GuestAddress, buffer: ArrayBuffer, byteOffset: number, size: number, userAddr: bigint, mmapOffset: number): GuestRegion {
  return { gpa, size, userAddr, mmapOffset, bytes: new Uint8Array(buffer, byteOffset, size), view: new DataView(buffer, byteOffset, size) };
}

export class GuestMemory {
  private regions: GuestRegion[] = [];
  private last: GuestRegion | undefined;
  /** When set, every address passed in is an IOVA translated through it. */
  readonly translator: AddressTranslator | null;
  private readonly physical: GuestMemory | null;
  /**
   * Per-access strict mode (withTranslator(t, true)): every copy in or out
   * is its own DMA request, begun before its translation and ended after
   * its last byte moved, so this view holds no translation between calls.
   */
  private readonly perAccess: DmaTranslator | null;

  constructor(regions: GuestRegion[] = [], translator: AddressTranslator | null = null, physical: GuestMemory | null = null, perAccess: DmaTranslator | null = null) {
    this.translator = translator;
    this.physical = physical;
    this.perAccess = perAccess;
    for (const r of regions) this.addRegion(r);
  }

  /** Guest RAM as one memfd mapped at `gpa` (the VM's own RAM). */
  static fromMemfd(fd: number, gpa: number, size: number): GuestMemory {
    const buf = mmapShared(fd, size);
    return new GuestMemory([makeRegion(guestAddress(gpa), buf, 0, size, BigInt(gpa), 0)]);
  }

  /** Wrap existing buffers (tests, in-process harnesses). */
  static fromBuffers(regions: { gpa: number; buffer: ArrayBuffer; userAddr?: bigint }[]): GuestMemory {
    return new GuestMemory(regions.map((r) => makeRegion(guestAddress(r.gpa), r.buffer, 0, r.buffer.byteLength, r.userAddr ?? BigInt(r.gpa), 0)));
  }

  /**
   * Map one vhost-user memory region. The whole [0, mmap_offset+size) of the
   * fd is mapped because mmap_offset need not be page-aligned (the way
   * libvhost-user does it); the fd is closed afterwards (the mapping keeps the
   * file alive).
   */
  static mapVhostUserRegion(d: VhostUserRegionDesc): GuestRegion {
    try {
      const gpa = guestAddress(d.guestPhysAddr);
      const size = Number(d.memorySize);
      const off = Number(d.mmapOffset);
      if (size <= 0 || !Number.isSafeInteger(size) || !Number.isSafeInteger(off) || gpa + size > Number.MAX_SAFE_INTEGER) {
        throw new GuestMemoryError(`vhost-user region gpa ${hex(d.guestPhysAddr)} size ${hex(d.memorySize)} offset ${hex(d.mmapOffset)} is invalid`, d.guestPhysAddr, size);
      }
      // mmap does not check the file's size; touching pages past its end would SIGBUS the whole process.
      const fileSize = fdSize(d.fd);
      if (off + size > fileSize) {
        throw new GuestMemoryError(`vhost-user region offset 0x${off.toString(16)} + size 0x${size.toString(16)} exceeds its fd's ${fileSize} bytes`, d.guestPhysAddr, size, 'ERR_GUEST_MEMORY_CONFIG');
      }
      const buf = mmapShared(d.fd, off + size);
      return makeRegion(gpa, buf, off, size, d.userAddr, off);
    } finally {
      closeFd(d.fd);
    }
  }

  get regionList(): readonly GuestRegion[] {
    return this.physical ? this.physical.regionList : this.regions;
  }

  /**
   * A view of the same RAM whose addresses are translated by `t` (DMA
   * behind an IOMMU). With `perAccess` (t a DmaTranslator), each read,
   * write, fill and readUN/writeUN call is one strict-mode request of its
   * own (DmaTranslator.begin/end around translation and copy); the views
   * slice()/slices()/rangeViews() return are outside that bracket (rings,
   * translated once when they start, and validation that keeps nothing).
   */
  withTranslator(t: AddressTranslator, perAccess = false): GuestMemory {
    if (perAccess && !isDmaTranslator(t)) throw new GuestMemoryError('a per-access translated view needs a DmaTranslator (begin/end)', 0, 0, 'ERR_GUEST_MEMORY_CONFIG');
    return new GuestMemory([], t, this.physical ?? this, perAccess ? (t as DmaTranslator) : null);
  }

  /** Run one access as a strict-mode request of its own (per-access views), else just run it. */
  private access<T>(f: () => T): T {
    const d = this.perAccess;
    if (d === null) return f();
    const token = d.begin();
    try {
      return f();
    } finally {
      d.end(token);
    }
  }

  addRegion(r: GuestRegion): void {
    if (this.physical) throw new GuestMemoryError('cannot add regions to a translated view', r.gpa, r.size, 'ERR_GUEST_MEMORY_CONFIG');
    for (const o of this.regions) {
      if (r.gpa < o.gpa + o.size && o.gpa < r.gpa + r.size) {
        throw new GuestMemoryError(`region ${hex(r.gpa)}+${hex(r.size)} overlaps ${hex(o.gpa)}+${hex(o.size)}`, r.gpa, r.size, 'ERR_GUEST_MEMORY_CONFIG');
      }
    }
    this.regions.push(r);
    this.regions.sort((a, b) => a.gpa - b.gpa);
  }

  /** Remove the region that starts at `gpa` with `size` (vhost-user REM_MEM_REG); returns it, or undefined. */
  removeRegion(gpa: number, size: number): GuestRegion | undefined {
    const i = this.regions.findIndex((r) => r.gpa === gpa && r.size === size);
    if (i < 0) return undefined;
    const [r] = this.regions.splice(i, 1);
    this.last = undefined;
    return r;
  }

  /** Swap the whole region list (vhost-user SET_MEM_TABLE) while keeping this object, which others hold. */
  replaceRegions(regions: readonly GuestRegion[]): void {
    const old = this.regions;
    this.regions = [];
    this.last = undefined;
    try {
      for (const r of regions) this.addRegion(r);
    } catch (e) {
      this.regions = old;
      throw e;
    }
  }

  clear(): void {
    this.regions = [];
    this.last = undefined;
  }

  /** Translate a frontend virtual address (vhost-user SET_VRING_ADDR) to a guest-physical address. */
  userToGuest(ua: bigint, len = 1): GuestAddress {
    for (const r of this.regionList) {
      if (ua >= r.userAddr && ua + BigInt(len) <= r.userAddr + BigInt(r.size)) return (r.gpa + Number(ua - r.userAddr)) as GuestAddress;
    }
    throw new GuestMemoryError(`user address ${hex(ua)}+${len} is in no memory region`, ua, len);
  }

  private findPhys(gpa: number, len: number): GuestRegion {
    const l = this.last;
    if (l !== undefined && gpa >= l.gpa && gpa + len <= l.gpa + l.size) return l;
    for (const r of this.regions) {
      if (gpa >= r.gpa && gpa + len <= r.gpa + r.size) {
        this.last = r;
        return r;
      }
    }
    throw new GuestMemoryError(`guest range ${hex(gpa)}+${len} is not inside one mapped region`, gpa, len);
  }

  /**
   * Resolve [addr, addr+len) to (region, offset) pieces, translating through
   * the IOMMU when there is one and splitting at region boundaries.
   */
  private pieces(addr: number, len: number, access: Access): { r: GuestRegion; off: number; len: number }[] {
    if (!Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len) || len < 0 || addr + len > Number.MAX_SAFE_INTEGER) {
      throw new GuestMemoryError(`guest range ${addr}+${len} is invalid`, addr, len);
    }
    const out: { r: GuestRegion; off: number; len: number }[] = [];
    const phys = this.physical ?? this;
    let a = addr;
    let left = len;
    while (left > 0) {
      let gpa = a;
      let chunk = left;
      if (this.translator) {
        const t = this.translator.translate(a, left, access);
        if (!(t.len >= 1 && t.len <= left)) throw new GuestMemoryError(`IOMMU returned length ${t.len} for ${hex(a)}+${left}`, a, left, 'ERR_IOMMU_FAULT');
        gpa = t.gpa;
        chunk = t.len;
      }
      // Split at region boundaries: find the region holding gpa, take what fits.
      const r = phys.findPhys(gpa, 1);
      const off = gpa - r.gpa;
      const n = Math.min(chunk, r.size - off);
      // Translations of consecutive pages that land next to each other in host memory make one piece (a ring, a buffer
      // the guest's pages happen to back contiguously), so slice() can view it whole.
      const prev = out[out.length - 1];
      if (prev !== undefined && prev.r === r && prev.off + prev.len === off) prev.len += n;
      else out.push({ r, off, len: n });
      a += n;
      left -= n;
    }
    return out;
  }

  /** Fast path: [addr, addr+len) lies in one region and there is no translator. */
  private direct(addr: number, len: number): { r: GuestRegion; off: number } | null {
    if (this.translator) return null;
    const l = this.last;
    if (l !== undefined && addr >= l.gpa && addr + len <= l.gpa + l.size) return { r: l, off: addr - l.gpa };
    for (const r of this.regions) {
      if (addr >= r.gpa && addr + len <= r.gpa + r.size) {
        this.last = r;
        return { r, off: addr - r.gpa };
      }
    }
    return null;
  }

  /** Copy `len` bytes out of guest memory. */
  read(addr: GuestAddress | number, len: number): Uint8Array {
    if (!Number.isSafeInteger(len) || len < 0) throw new GuestMemoryError(`read length ${len} is invalid`, addr, len);
    const out = new Uint8Array(len);
    this.readInto(addr, out);
    return out;
  }

  readInto(addr: GuestAddress | number, dest: Uint8Array): void {
    // One region, no IOMMU (a frame's buffer, nearly always): no piece list to build.
    const d = this.direct(addr, dest.length);
    if (d) {
      dest.set(d.r.bytes.subarray(d.off, d.off + dest.length));
      return;
    }
    this.access(() => {
      let o = 0;
      for (const p of this.pieces(addr, dest.length, 'read')) {
        dest.set(p.r.bytes.subarray(p.off, p.off + p.len), o);
        o += p.len;
      }
    });
  }

  write(addr: GuestAddress | number, data: Uint8Array): void {
    const d = this.direct(addr, data.length);
    if (d) {
      d.r.bytes.set(data, d.off);
      return;
    }
    this.access(() => {
      let o = 0;
      for (const p of this.pieces(addr, data.length, 'write')) {
        p.r.bytes.set(data.subarray(o, o + p.len), p.off);
        o += p.len;
      }
    });
  }

  /** Set `len` bytes to `value`. */
  fill(addr: GuestAddress | number, len: number, value = 0): void {
    this.access(() => {
      for (const p of this.pieces(addr, len, 'write')) p.r.bytes.fill(value, p.off, p.off + p.len);
    });
  }

  /**
   * Zero-copy view of [addr, addr+len) for I/O straight into guest RAM.
   * Throws if the range is not contiguous in one region (use slices()).
   */
  slice(addr: GuestAddress | number, len: number, access: Access = 'read'): Uint8Array {
    const d = this.direct(addr, len);
    if (d) return d.r.bytes.subarray(d.off, d.off + len);
    const ps = this.pieces(addr, len, access);
    if (ps.length !== 1) throw new GuestMemoryError(`guest range ${hex(addr)}+${len} spans ${ps.length} pieces; no single view`, addr, len, 'ERR_GUEST_MEMORY_DISCONTIGUOUS');
    const p = ps[0]!;
    return p.r.bytes.subarray(p.off, p.off + p.len);
  }

  /** Throw GuestMemoryError unless [addr, addr+len) is all mapped (and, behind an IOMMU, allowed for `access`); what slices() checks, without the views. */
  check(addr: GuestAddress | number, len: number, access: Access = 'read'): void {
    if (this.direct(addr, len)) return;
    this.pieces(addr, len, access);
  }

  /** Zero-copy views covering [addr, addr+len), one per contiguous piece (an empty range gives []). */
  slices(addr: GuestAddress | number, len: number, access: Access = 'read'): Uint8Array[] {
    const d = this.direct(addr, len);
    if (d) return len === 0 ? [] : [d.r.bytes.subarray(d.off, d.off + len)];
    return this.pieces(addr, len, access).map((p) => p.r.bytes.subarray(p.off, p.off + p.len));
  }

  private dv(addr: number, len: number, access: Access): { view: DataView; off: number } | null {
    const d = this.direct(addr, len);
    if (d) return { view: d.r.view, off: d.off };
    const ps = this.pieces(addr, len, access);
    if (ps.length === 1) return { view: ps[0]!.r.view, off: ps[0]!.off };
    return null;
  }

  readU8(addr: GuestAddress | number): number {
    return this.access(() => {
      const d = this.dv(addr, 1, 'read')!;
      return d.view.getUint8(d.off);
    });
  }
  readU16(addr: GuestAddress | number): number {
    return this.access(() => {
      const d = this.dv(addr, 2, 'read');
      return d ? d.view.getUint16(d.off, true) : new DataView(this.read(addr, 2).buffer).getUint16(0, true);
    });
  }
  readU32(addr: GuestAddress | number): number {
    return this.access(() => {
      const d = this.dv(addr, 4, 'read');
      return d ? d.view.getUint32(d.off, true) : new DataView(this.read(addr, 4).buffer).getUint32(0, true);
    });
  }
  readU64(addr: GuestAddress | number): bigint {
    return this.access(() => {
      const d = this.dv(addr, 8, 'read');
      return d ? d.view.getBigUint64(d.off, true) : new DataView(this.read(addr, 8).buffer).getBigUint64(0, true);
    });
  }
  writeU8(addr: GuestAddress | number, v: number): void {
    this.access(() => {
      const d = this.dv(addr, 1, 'write')!;
      d.view.setUint8(d.off, v);
    });
  }
  writeU16(addr: GuestAddress | number, v: number): void {
    this.access(() => {
      const d = this.dv(addr, 2, 'write');
      if (d) d.view.setUint16(d.off, v, true);
      else {
        const b = new Uint8Array(2);
        new DataView(b.buffer).setUint16(0, v, true);
        this.write(addr, b);
      }
    });
  }
  writeU32(addr: GuestAddress | number, v: number): void {
    this.access(() => {
      const d = this.dv(addr, 4, 'write');
      if (d) d.view.setUint32(d.off, v, true);
      else {
        const b = new Uint8Array(4);
        new DataView(b.buffer).setUint32(0, v, true);
        this.write(addr, b);
      }
    });
  }
  writeU64(addr: GuestAddress | number, v: bigint): void {
    this.access(() => {
      const d = this.dv(addr, 8, 'write');
      if (d) d.view.setBigUint64(d.off, v, true);
      else {
        const b = new Uint8Array(8);
        new DataView(b.buffer).setBigUint64(0, v, true);
        this.write(addr, b);
      }
    });
  }

  /**
   * Typed-array views over a range that must lie contiguously in one region,
   * `align`-aligned (virtio rings: §2.7 alignment 16/2/4). Used once at queue
   * setup so the ring hot path indexes typed arrays and can use Atomics.
   */
  rangeViews(addr: GuestAddress | number, len: number, align: number, access: Access = 'write'): RangeViews {
    if (addr % align !== 0) throw new GuestMemoryError(`guest address ${hex(addr)} is not ${align}-byte aligned`, addr, len, 'ERR_GUEST_MEMORY_ALIGN');
    const bytes = this.slice(addr, len, access);
    const buf = bytes.buffer as ArrayBuffer;
    if (bytes.byteOffset % 2 !== 0) throw new GuestMemoryError(`guest range ${hex(addr)}+${len} maps to an odd host offset`, addr, len, 'ERR_GUEST_MEMORY_ALIGN');
    const u16 = new Uint16Array(buf, bytes.byteOffset, len >> 1);
    const u32 = bytes.byteOffset % 4 === 0 ? new Uint32Array(buf, bytes.byteOffset, len >> 2) : new Uint32Array(0);
    return { bytes, view: new DataView(buf, bytes.byteOffset, len), u16, u32 };
  }
}
