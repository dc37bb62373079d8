// qcow2 images (QEMU docs/interop/qcow2.txt), versions 2 and 3, in
// TypeScript: two-level L1/L2 mapping with an LRU cache of L2 tables,
// refcount table + blocks, cluster allocation on write, zero clusters,
// backing files, compressed clusters (read), discard and write-zeroes.
//
// Crash safety: every metadata update is written through to the file
// (pwrite) before the request completes, in the order qcow2 needs so that
// a referenced cluster never has refcount 0: refcount → data → L2 entry →
// L1 entry; clusters are freed (refcount decremented) only after the
// entries pointing at them are gone. A killed process therefore leaves at
// worst leaked clusters. flush() is the fdatasync barrier for power loss.
//
// Concurrency: reads and in-place writes run in parallel (shared lock);
// cluster allocation is serialised by a mutex but still runs beside
// in-place I/O (it only takes free clusters); anything that frees a
// cluster (discard, write-zeroes, rewriting a compressed cluster) takes
// the lock exclusively, so no in-flight I/O can land in a freed cluster.

import { closeSync, openSync, readSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { inflateRawSync, constants as zc } from 'node:zlib';
import { ImageCorruptError, ImageError, ImageUnsupportedError } from './errors.ts';
import { checkRange, checkWritable, type BlockImage } from './image.ts';
import { AsyncMutex, AsyncRwLock } from './lock.ts';
import { INCOMPAT_CORRUPT, INCOMPAT_DIRTY, QCOW2_MAGIC, parseQcow2Header, type Qcow2Header } from './qcow2-header.ts';
import { RawImage, preadFull, pwriteFull } from './raw.ts';

const COPIED = 0x8000_0000; // bit 63 of L1/L2 entries, in the high word
const COMPRESSED = 0x4000_0000; // bit 62 of L2 entries, in the high word
const ZERO_FLAG = 1; // bit 0 of a standard L2 entry (v3)
const TWO32 = 2 ** 32;
const MAX_BACKING_DEPTH = 16;
/** Walk every L2 table at open to check refcounts when there are at most this many. */
const FULL_CHECK_MAX_L2 = 4096;

export interface Qcow2OpenOptions {
  readOnly?: boolean;
  /** L2 tables kept in memory (default: enough for 8 MiB of tables). */
  l2CacheTables?: number;
  /** Internal: depth in a backing chain. */
  depth?: number;
}

/** What one guest cluster maps to, decoded from its L2 entry. */
type Mapping =
  | { kind: 'unallocated' }
  | { kind: 'zero'; host: number; copied: boolean } // host 0: no preallocated cluster
  | { kind: 'data'; host: number; copied: boolean }
  | { kind: 'compressed'; offset: number; bytes: number; spanStart: number; spanBytes: number };

/** Small LRU of cluster-sized tables keyed by host offset, with de-duplicated loads. */
class TableCache {
  readonly #max: number;
  readonly #map = new Map<number, Uint8Array>();
  readonly #loading = new Map<number, Promise<Uint8Array>>();
  constructor(max: number) {
    this.#max = max;
  }
  async get(offset: number, load: () => Promise<Uint8Array>): Promise<Uint8Array> {
    const hit = this.#map.get(offset);
    if (hit) {
      this.#map.delete(offset);
      this.#map.set(offset, hit);
      return hit;
    }
    const pending = this.#loading.get(offset);
    if (pending) return pending;
    const p = load().then((t) => {
      this.#loading.delete(offset);
      this.put(offset, t);
      return t;
    }, (e: unknown) => {
      this.#loading.delete(offset);
      throw e;
    });
    this.#loading.set(offset, p);
    return p;
  }
  put(offset: number, table: Uint8Array): void {
    this.#map.delete(offset);
    this.#map.set(offset, table);
    while (this.#map.size > this.#max) this.#map.delete(this.#map.keys().next().value!);
  }
  drop(offset: number): void {
    this.#map.delete(offset);
  }
}

function hostOf(hi: number, lo: number): number {
  // Bits 9..55: the low word without its low 9 bits, plus 24 bits of the high word.
  return (hi & 0x00ff_ffff) * TWO32 + ((lo & 0xffff_fe00) >>> 0);
}

export class Qcow2Image implements BlockImage {
  readonly capacity: number;
  readonly readOnly: boolean;
  readonly path: string;
  readonly header: Qcow2Header;
  readonly backing: BlockImage | undefined;

  readonly #fh: FileHandle;
  readonly #cs: number;
  readonly #cbits: number;
  readonly #l2Entries: number;
  readonly #l1: Uint8Array;
  readonly #l1dv: DataView;
  #reftable: Uint8Array;
  #reftableDv: DataView;
  readonly #refBits: number;
  readonly #refPerBlock: number;
  readonly #l2Cache: TableCache;
  readonly #refCache = new TableCache(64);
  readonly #zlibCache = new Map<number, Uint8Array>();
  readonly #alloc = new AsyncMutex();
  readonly #rw = new AsyncRwLock();
  /** One past the last cluster index the file uses or that has been allocated. */
  #endCluster: number;
  /** Where the free-cluster scan starts: every cluster below it is in use. */
  #freeHint = 0;

  private constructor(path: string, fh: FileHandle, h: Qcow2Header, fileSize: number, l1: Uint8Array, reftable: Uint8Array, readOnly: boolean, backing: BlockImage | undefined, l2CacheTables: number) {
    this.path = path;
    this.#fh = fh;
    this.header = h;
    this.capacity = h.size;
    this.readOnly = readOnly;
    this.backing = backing;
    this.#cs = h.clusterSize;
    this.#cbits = h.clusterBits;
    this.#l2Entries = h.clusterSize / 8;
    this.#l1 = l1;
    this.#l1dv = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.#reftable = reftable;
    this.#reftableDv = new DataView(reftable.buffer, reftable.byteOffset, reftable.byteLength);
    this.#refBits = 1 << h.refcountOrder;
    this.#refPerBlock = (h.clusterSize * 8) / this.#refBits;
    this.#l2Cache = new TableCache(l2CacheTables);
    this.#endCluster = Math.ceil(fileSize / h.clusterSize);
  }

  static async open(path: string, options: Qcow2OpenOptions = {}): Promise<Qcow2Image> {
    const readOnly = options.readOnly ?? false;
    const depth = options.depth ?? 0;
    let fh: FileHandle;
    try {
      fh = await open(path, readOnly ? 'r' : 'r+');
    } catch (e) {
      throw new ImageError('ERR_IMAGE_OPEN', `cannot open qcow2 image ${path}: ${(e as Error).message}`);
    }
    let backing: BlockImage | undefined;
    try {
      const st = await fh.stat();
      const fileSize = st.size;
      const first = new Uint8Array(Math.min(fileSize, 2 * 1024 * 1024));
      await preadFull(fh, first, 0);
      const h = parseQcow2Header(first, fileSize);
      const cs = h.clusterSize;

      const dirty = ((h.incompatibleFeatures >> BigInt(INCOMPAT_DIRTY)) & 1n) === 1n;
      const corrupt = ((h.incompatibleFeatures >> BigInt(INCOMPAT_CORRUPT)) & 1n) === 1n;
      if (!readOnly && corrupt) throw new ImageCorruptError(`qcow2 image ${path} is marked corrupt; repair it with qemu-img check -r all, or open it read-only`);
      if (!readOnly && dirty) throw new ImageCorruptError(`qcow2 image ${path} has the dirty bit set (refcounts may be stale); repair it with qemu-img check -r all, or open it read-only`);
      if (!readOnly && h.nbSnapshots > 0) throw new ImageUnsupportedError(`qcow2 image ${path} has ${h.nbSnapshots} internal snapshots; writing to it is not supported, open it read-only`);

      const l1 = new Uint8Array(h.l1Size * 8);
      await preadFull(fh, l1, h.l1TableOffset);
      const reftable = new Uint8Array(h.refcountTableClusters * cs);
      await preadFull(fh, reftable, h.refcountTableOffset);

      if (h.backingFile !== undefined) {
        if (depth >= MAX_BACKING_DEPTH) throw new ImageCorruptError(`qcow2 backing chain of ${path} is deeper than ${MAX_BACKING_DEPTH} (a loop?)`);
        const bpath = isAbsolute(h.backingFile) ? h.backingFile : resolve(dirname(path), h.backingFile);
        backing = await openImage(bpath, { readOnly: true, format: h.backingFormat === 'raw' || h.backingFormat === 'qcow2' ? h.backingFormat : undefined, depth: depth + 1 });
      }
      const l2CacheTables = options.l2CacheTables ?? Math.max(16, Math.floor((8 * 1024 * 1024) / cs));
      const img = new Qcow2Image(path, fh, h, fileSize, l1, reftable, readOnly, backing, l2CacheTables);
      await img.#checkMetadata();
      if (!readOnly && h.autoclearFeatures !== 0n) {
        // We do not maintain bitmaps or a raw external data file: clearing
        // the autoclear bits tells other tools those are stale (qcow2.txt, bytes 88–95).
        const z = new Uint8Array(8);
        await pwriteFull(fh, z, 88);
      }
      return img;
    } catch (e) {
      await backing?.close();
      await fh.close();
      throw e;
    }
  }

  // ---- metadata access ------------------------------------------------------

  #l1Entry(i: number): { hi: number; lo: number } {
    return { hi: this.#l1dv.getUint32(i * 8), lo: this.#l1dv.getUint32(i * 8 + 4) };
  }

  #l2Offset(l1Index: number): number {
    const { hi, lo } = this.#l1Entry(l1Index);
    if ((lo & 0x1ff) !== 0 || (hi & 0x7f00_0000) !== 0) throw new ImageCorruptError(`qcow2 L1 entry ${l1Index} has reserved bits set (0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')})`);
    return hostOf(hi, lo);
  }

  async #loadTable(offset: number, what: string): Promise<Uint8Array> {
    if (offset % this.#cs !== 0) throw new ImageCorruptError(`qcow2 ${what} offset ${offset} is not cluster-aligned`);
    if (offset === 0) throw new ImageCorruptError(`qcow2 ${what} at offset 0 overlaps the header`);
    const t = new Uint8Array(this.#cs);
    await preadFull(this.#fh, t, offset);
    return t;
  }

  #l2Table(offset: number): Promise<Uint8Array> {
    return this.#l2Cache.get(offset, () => this.#loadTable(offset, 'L2 table'));
  }

  #decode(hi: number, lo: number, vcluster: number): Mapping {
    if (hi & COMPRESSED) {
      // Compressed cluster descriptor (qcow2.txt "Compressed Clusters Descriptor"):
      // x = 62 - (cluster_bits - 8); bits 0..x-1 host byte offset, bits x..61
      // the number of additional 512-byte sectors.
      const v = ((BigInt(hi) & 0x3fff_ffffn) << 32n) | BigInt(lo);
      const x = BigInt(62 - (this.#cbits - 8));
      const offset = Number(v & ((1n << x) - 1n));
      const sectors = Number(v >> x) + 1;
      const spanStart = offset - (offset % 512);
      const spanBytes = sectors * 512;
      return { kind: 'compressed', offset, bytes: spanBytes - (offset - spanStart), spanStart, spanBytes };
    }
    if ((lo & 0x1fe) !== 0 || (hi & 0x3f00_0000) !== 0) {
      throw new ImageCorruptError(`qcow2 L2 entry for guest cluster ${vcluster} has reserved bits set`);
    }
    const host = hostOf(hi, lo);
    const copied = (hi & COPIED) !== 0;
    if (this.header.version === 3 && lo & ZERO_FLAG) return { kind: 'zero', host, copied };
    if (host === 0) return { kind: 'unallocated' };
    return { kind: 'data', host, copied };
  }

  async #map(vcluster: number): Promise<Mapping> {
    const l1Index = Math.floor(vcluster / this.#l2Entries);
    const l2Off = this.#l2Offset(l1Index);
    if (l2Off === 0) return { kind: 'unallocated' };
    const t = await this.#l2Table(l2Off);
    const i = (vcluster % this.#l2Entries) * 8;
    const dv = new DataView(t.buffer, t.byteOffset, t.byteLength);
    return this.#decode(dv.getUint32(i), dv.getUint32(i + 4), vcluster);
  }

  // ---- refcounts ------------------------------------------------------------

  #refBlockOffset(blockIndex: number): number {
    if (blockIndex * 8 >= this.#reftable.length) return 0;
    const hi = this.#reftableDv.getUint32(blockIndex * 8);
    const lo = this.#reftableDv.getUint32(blockIndex * 8 + 4);
    if ((lo & 0x1ff) !== 0) throw new ImageCorruptError(`qcow2 refcount table entry ${blockIndex} is not cluster-aligned`);
    return hi * TWO32 + lo;
  }

  #refBlock(offset: number): Promise<Uint8Array> {
    return this.#refCache.get(offset, () => this.#loadTable(offset, 'refcount block'));
  }

  /** Read entry `i` of a refcount block (entries are refcount_bits wide, big-endian). */
  #refGet(block: Uint8Array, i: number): number {
    const bits = this.#refBits;
    if (bits < 8) {
      const byte = block[Math.floor((i * bits) / 8)]!;
      const shift = (i * bits) % 8; // qcow2.txt: sub-byte refcounts start at the least significant bit
      return (byte >> shift) & ((1 << bits) - 1);
    }
    const dv = new DataView(block.buffer, block.byteOffset, block.byteLength);
    const at = (i * bits) / 8;
    if (bits === 8) return block[at]!;
    if (bits === 16) return dv.getUint16(at);
    if (bits === 32) return dv.getUint32(at);
    return dv.getUint32(at) * TWO32 + dv.getUint32(at + 4);
  }

  /** Set entry `i`; returns the byte range of the block that changed. */
  #refSet(block: Uint8Array, i: number, v: number): [number, number] {
    const bits = this.#refBits;
    if (v < 0 || v >= 2 ** Math.min(bits, 53)) throw new ImageCorruptError(`qcow2 refcount ${v} does not fit in ${bits} bits`);
    if (bits < 8) {
      const at = Math.floor((i * bits) / 8);
      const shift = (i * bits) % 8;
      const mask = ((1 << bits) - 1) << shift;
      block[at] = (block[at]! & ~mask) | (v << shift);
      return [at, at + 1];
    }
    const dv = new DataView(block.buffer, block.byteOffset, block.byteLength);
    const at = (i * bits) / 8;
    if (bits === 8) block[at] = v;
    else if (bits === 16) dv.setUint16(at, v);
    else if (bits === 32) dv.setUint32(at, v);
    else {
      dv.setUint32(at, Math.floor(v / TWO32));
      dv.setUint32(at + 4, v % TWO32);
    }
    return [at, at + bits / 8];
  }

  async #refcount(cluster: number): Promise<number> {
    const b = Math.floor(cluster / this.#refPerBlock);
    const off = this.#refBlockOffset(b);
    if (off === 0) return 0;
    return this.#refGet(await this.#refBlock(off), cluster % this.#refPerBlock);
  }

  /** Add `delta` to a cluster's refcount; its refcount block must exist. Written through. */
  async #refAdd(cluster: number, delta: number): Promise<void> {
    const b = Math.floor(cluster / this.#refPerBlock);
    const off = this.#refBlockOffset(b);
    if (off === 0) throw new ImageCorruptError(`qcow2 refcount block for cluster ${cluster} is missing`);
    const block = await this.#refBlock(off);
    const i = cluster % this.#refPerBlock;
    const v = this.#refGet(block, i) + delta;
    if (v < 0) throw new ImageCorruptError(`qcow2 refcount of cluster ${cluster} would drop below 0`);
    const [s, e] = this.#refSet(block, i, v);
    await pwriteFull(this.#fh, block.subarray(s, e), off + s);
    if (v === 0 && cluster < this.#freeHint) this.#freeHint = cluster;
  }

  /**
   * Allocate one cluster (refcount 0 → 1, written through) and return its
   * host offset. Caller holds #alloc. Reuses freed clusters first-fit from
   * #freeHint, else extends the file; creates refcount blocks and grows the
   * refcount table as needed.
   */
  async #allocCluster(): Promise<number> {
    while (true) {
      let c = this.#freeHint;
      while (c < this.#endCluster && (await this.#refcount(c)) !== 0) c++;
      const b = Math.floor(c / this.#refPerBlock);
      if (b * 8 >= this.#reftable.length) {
        await this.#growRefTable(c);
        continue;
      }
      if (this.#refBlockOffset(b) === 0) {
        // A new refcount block placed in the range it describes counts itself (qcow2.txt allows any placement).
        const block = new Uint8Array(this.#cs);
        this.#refSet(block, c % this.#refPerBlock, 1);
        const off = c * this.#cs;
        await pwriteFull(this.#fh, block, off);
        this.#refCache.put(off, block);
        this.#reftableDv.setUint32(b * 8, Math.floor(off / TWO32));
        this.#reftableDv.setUint32(b * 8 + 4, off % TWO32);
        await pwriteFull(this.#fh, this.#reftable.subarray(b * 8, b * 8 + 8), this.header.refcountTableOffset + b * 8);
        this.#endCluster = Math.max(this.#endCluster, c + 1);
        this.#freeHint = c + 1;
        continue;
      }
      await this.#refAdd(c, 1);
      this.#endCluster = Math.max(this.#endCluster, c + 1);
      this.#freeHint = c + 1;
      return c * this.#cs;
    }
  }

  /**
   * The refcount table cannot describe cluster `need`: write a larger table
   * (plus the refcount blocks that describe the new table itself) past the
   * end of the file, switch the header to it in one 12-byte write, then free
   * the old table.
   */
  async #growRefTable(need: number): Promise<void> {
    const cs = this.#cs;
    const per = this.#refPerBlock;
    const oldClusters = this.header.refcountTableClusters;
    const oldOffset = this.header.refcountTableOffset;
    const start = Math.max(this.#endCluster, need);
    let tableClusters = Math.max(oldClusters * 2, Math.ceil(((Math.floor(need / per) + 1) * 8) / cs));
    let newBlocks: number[] = [];
    for (;;) {
      const end = start + tableClusters + newBlocks.length;
      const blocks: number[] = [];
      for (let b = Math.floor(start / per); b <= Math.floor((end - 1) / per); b++) if (this.#refBlockOffset(b) === 0) blocks.push(b);
      const maxBlock = Math.max(Math.floor((end - 1) / per), Math.floor(need / per));
      if ((maxBlock + 1) * 8 > tableClusters * cs) {
        tableClusters = Math.ceil(((maxBlock + 1) * 8) / cs);
        continue;
      }
      if (blocks.length === newBlocks.length) {
        newBlocks = blocks;
        break;
      }
      newBlocks = blocks;
    }
    const tableAt = start;
    const blocksAt = start + tableClusters;
    const end = blocksAt + newBlocks.length;
    const table = new Uint8Array(tableClusters * cs);
    table.set(this.#reftable);
    const tdv = new DataView(table.buffer);
    const blockBufs = new Map<number, Uint8Array>();
    newBlocks.forEach((b, k) => {
      const off = (blocksAt + k) * cs;
      tdv.setUint32(b * 8, Math.floor(off / TWO32));
      tdv.setUint32(b * 8 + 4, off % TWO32);
      blockBufs.set(b, new Uint8Array(cs));
    });
    const viaOld: number[] = [];
    for (let c = tableAt; c < end; c++) {
      const buf = blockBufs.get(Math.floor(c / per));
      if (buf) this.#refSet(buf, c % per, 1);
      else viaOld.push(c);
    }
    for (const [k, b] of newBlocks.entries()) {
      const off = (blocksAt + k) * cs;
      await pwriteFull(this.#fh, blockBufs.get(b)!, off);
      this.#refCache.put(off, blockBufs.get(b)!);
    }
    // Clusters of the new region that fall in already-existing blocks.
    for (const c of viaOld) await this.#refAdd(c, 1);
    await pwriteFull(this.#fh, table, tableAt * cs);
    await this.#fh.datasync();
    const hdr = new Uint8Array(12);
    const hdv = new DataView(hdr.buffer);
    hdv.setUint32(0, Math.floor((tableAt * cs) / TWO32));
    hdv.setUint32(4, (tableAt * cs) % TWO32);
    hdv.setUint32(8, tableClusters);
    await pwriteFull(this.#fh, hdr, 48);
    await this.#fh.datasync();
    this.#reftable = table;
    this.#reftableDv = tdv;
    this.header.refcountTableOffset = tableAt * cs;
    this.header.refcountTableClusters = tableClusters;
    this.#endCluster = Math.max(this.#endCluster, end);
    for (let k = 0; k < oldClusters; k++) await this.#refAdd(oldOffset / cs + k, -1);
  }

  /** Decrement the refcounts of what a mapping occupied (after its entry is gone). */
  async #release(m: Mapping): Promise<void> {
    if ((m.kind === 'data' || m.kind === 'zero') && m.host !== 0) {
      await this.#refAdd(m.host / this.#cs, -1);
    } else if (m.kind === 'compressed') {
      const first = Math.floor(m.spanStart / this.#cs);
      const last = Math.floor((m.spanStart + m.spanBytes - 1) / this.#cs);
      for (let c = first; c <= last; c++) await this.#refAdd(c, -1);
    }
  }

  // ---- open-time checks -----------------------------------------------------

  /**
   * Metadata must not overlap (header, L1, refcount table, refcount blocks,
   * L2 tables), and every cluster in use must have refcount ≥ 1; otherwise an
   * allocation would hand out a live cluster. Refused for writing; a
   * read-only open tolerates refcount problems (reads don't use refcounts).
   */
  async #checkMetadata(): Promise<void> {
    const cs = this.#cs;
    const h = this.header;
    const owner = new Map<number, string>();
    const claim = (offset: number, bytes: number, what: string): void => {
      const first = Math.floor(offset / cs);
      const last = Math.floor((offset + Math.max(bytes, 1) - 1) / cs);
      for (let c = first; c <= last; c++) {
        const prev = owner.get(c);
        if (prev !== undefined) throw new ImageCorruptError(`qcow2 metadata overlap: ${what} at offset ${offset} overlaps ${prev} (cluster ${c})`);
        owner.set(c, what);
      }
    };
    claim(0, cs, 'the header');
    claim(h.l1TableOffset, h.l1Size * 8, 'the L1 table');
    claim(h.refcountTableOffset, h.refcountTableClusters * cs, 'the refcount table');
    for (let b = 0; b * 8 < this.#reftable.length; b++) {
      const off = this.#refBlockOffset(b);
      if (off !== 0) {
        if (off % cs !== 0) throw new ImageCorruptError(`qcow2 refcount block ${b} offset ${off} is not cluster-aligned`);
        claim(off, cs, `refcount block ${b}`);
      }
    }
    const l2s: number[] = [];
    for (let i = 0; i < h.l1Size; i++) {
      const off = this.#l2Offset(i);
      if (off === 0) continue;
      if (off % cs !== 0) throw new ImageCorruptError(`qcow2 L1 entry ${i}: L2 table offset ${off} is not cluster-aligned`);
      claim(off, cs, `L2 table ${i}`);
      l2s.push(off);
    }
    if (this.readOnly) return;
    // Refcounts of metadata and (when affordable) of every data cluster.
    const used = new Map<number, number>();
    for (const c of owner.keys()) used.set(c, (used.get(c) ?? 0) + 1);
    if (l2s.length <= FULL_CHECK_MAX_L2) {
      for (const [n, off] of l2s.entries()) {
        const t = await this.#l2Table(off);
        const dv = new DataView(t.buffer, t.byteOffset, t.byteLength);
        for (let j = 0; j < this.#l2Entries; j++) {
          const m = this.#decode(dv.getUint32(j * 8), dv.getUint32(j * 8 + 4), n * this.#l2Entries + j);
          if ((m.kind === 'data' || m.kind === 'zero') && m.host !== 0) {
            const c = m.host / cs;
            if (owner.has(c)) throw new ImageCorruptError(`qcow2 data cluster at ${m.host} overlaps ${owner.get(c)}`);
            used.set(c, (used.get(c) ?? 0) + 1);
          } else if (m.kind === 'compressed') {
            for (let c = Math.floor(m.spanStart / cs); c <= Math.floor((m.spanStart + m.spanBytes - 1) / cs); c++) used.set(c, (used.get(c) ?? 0) + 1);
          }
        }
      }
    }
    for (const c of used.keys()) {
      if ((await this.#refcount(c)) === 0) throw new ImageCorruptError(`qcow2 refcount error: cluster ${c} (offset ${c * cs}) is in use but has refcount 0; repair with qemu-img check -r all or open read-only`);
    }
    // Allocation starts after the highest cluster in use.
    for (const c of used.keys()) if (c + 1 > this.#endCluster) this.#endCluster = c + 1;
  }

  // ---- reads ----------------------------------------------------------------

  async #readCompressed(m: Extract<Mapping, { kind: 'compressed' }>): Promise<Uint8Array> {
    const hit = this.#zlibCache.get(m.offset);
    if (hit) return hit;
    const raw = new Uint8Array(m.bytes);
    await preadFull(this.#fh, raw, m.offset);
    let out: Uint8Array;
    try {
      // Raw deflate (RFC 1951) without zlib header (qcow2.txt); trailing
      // sector padding is ignored, output capped at one cluster.
      out = inflateRawSync(raw, { finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: this.#cs });
    } catch (e) {
      throw new ImageCorruptError(`qcow2 compressed cluster at ${m.offset} does not inflate: ${(e as Error).message}`);
    }
    if (out.length !== this.#cs) throw new ImageCorruptError(`qcow2 compressed cluster at ${m.offset} inflates to ${out.length} bytes, not ${this.#cs}`);
    this.#zlibCache.set(m.offset, out);
    if (this.#zlibCache.size > 8) this.#zlibCache.delete(this.#zlibCache.keys().next().value!);
    return out;
  }

  async #readFromBacking(offset: number, into: Uint8Array): Promise<void> {
    const b = this.backing;
    const n = b ? Math.max(0, Math.min(into.length, b.capacity - offset)) : 0;
    if (n > 0) await b!.read(offset, into.subarray(0, n));
    into.fill(0, n);
  }

  /** Read bytes of one guest cluster through mapping `m`. */
  async #readMapped(m: Mapping, offset: number, into: Uint8Array): Promise<void> {
    const inCluster = offset % this.#cs;
    switch (m.kind) {
      case 'data':
        return preadFull(this.#fh, into, m.host + inCluster);
      case 'zero':
        into.fill(0);
        return;
      case 'unallocated':
        return this.#readFromBacking(offset, into);
      case 'compressed': {
        const data = await this.#readCompressed(m);
        into.set(data.subarray(inCluster, inCluster + into.length));
        return;
      }
    }
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this, 'read', offset, into.length);
    await this.#rw.shared(() => this.#readLocked(offset, into));
  }

  async #readLocked(offset: number, into: Uint8Array): Promise<void> {
    const cs = this.#cs;
    const ops: Promise<void>[] = [];
    let pos = 0;
    // Contiguous host data across clusters is coalesced into one pread.
    let run: { host: number; start: number; len: number } | undefined;
    const flush = (): void => {
      if (run) ops.push(preadFull(this.#fh, into.subarray(run.start, run.start + run.len), run.host));
      run = undefined;
    };
    while (pos < into.length) {
      const off = offset + pos;
      const len = Math.min(cs - (off % cs), into.length - pos);
      const m = await this.#map(Math.floor(off / cs));
      if (m.kind === 'data') {
        const host = m.host + (off % cs);
        if (run && run.host + run.len === host) run.len += len;
        else {
          flush();
          run = { host, start: pos, len };
        }
      } else {
        flush();
        ops.push(this.#readMapped(m, off, into.subarray(pos, pos + len)));
      }
      pos += len;
    }
    flush();
    await Promise.all(ops);
  }

  // ---- writes ---------------------------------------------------------------

  async write(offset: number, from: Uint8Array): Promise<void> {
    checkWritable(this, 'write');
    checkRange(this, 'write', offset, from.length);
    const cs = this.#cs;
    let pos = 0;
    const slow: { off: number; data: Uint8Array; frees: boolean }[] = [];
    await this.#rw.shared(async () => {
      const ops: Promise<void>[] = [];
      while (pos < from.length) {
        const off = offset + pos;
        const len = Math.min(cs - (off % cs), from.length - pos);
        const data = from.subarray(pos, pos + len);
        const m = await this.#map(Math.floor(off / cs));
        if (m.kind === 'data' && m.copied) ops.push(pwriteFull(this.#fh, data, m.host + (off % cs)));
        else slow.push({ off, data, frees: m.kind === 'compressed' || (m.kind === 'data' && !m.copied) });
        pos += len;
      }
      await Promise.all(ops);
    });
    for (const s of slow) {
      if (s.frees) await this.#rw.exclusive(() => this.#alloc.run(() => this.#writeAllocating(s.off, s.data)));
      else await this.#rw.shared(() => this.#alloc.run(() => this.#writeAllocating(s.off, s.data)));
    }
  }

  /** L2 table for guest cluster `vcluster`, allocating an empty one (and its L1 entry) if absent. Caller holds #alloc. */
  async #ensureL2(vcluster: number): Promise<{ table: Uint8Array; offset: number }> {
    const l1Index = Math.floor(vcluster / this.#l2Entries);
    let off = this.#l2Offset(l1Index);
    if (off !== 0) {
      const { hi } = this.#l1Entry(l1Index);
      if (!(hi & COPIED)) throw new ImageUnsupportedError(`qcow2 L2 table ${l1Index} is shared (no COPIED flag); copy-on-write of L2 tables is not supported`);
      return { table: await this.#l2Table(off), offset: off };
    }
    off = await this.#allocCluster();
    const table = new Uint8Array(this.#cs);
    // Order: the refcount is written, then the (empty) table, then the L1 entry that points to it.
    await pwriteFull(this.#fh, table, off);
    this.#l2Cache.put(off, table);
    this.#l1dv.setUint32(l1Index * 8, (COPIED | Math.floor(off / TWO32)) >>> 0);
    this.#l1dv.setUint32(l1Index * 8 + 4, off % TWO32);
    await pwriteFull(this.#fh, this.#l1.subarray(l1Index * 8, l1Index * 8 + 8), this.header.l1TableOffset + l1Index * 8);
    return { table, offset: off };
  }

  async #setL2Entry(table: Uint8Array, tableOffset: number, vcluster: number, hi: number, lo: number): Promise<void> {
    const i = (vcluster % this.#l2Entries) * 8;
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    dv.setUint32(i, hi >>> 0);
    dv.setUint32(i + 4, lo >>> 0);
    await pwriteFull(this.#fh, table.subarray(i, i + 8), tableOffset + i);
  }

  /** Write into one guest cluster that is not (yet) a plain allocated cluster. Caller holds #alloc. */
  async #writeAllocating(off: number, data: Uint8Array): Promise<void> {
    const cs = this.#cs;
    const vcluster = Math.floor(off / cs);
    const m = await this.#map(vcluster);
    if (m.kind === 'data' && m.copied) {
      await pwriteFull(this.#fh, data, m.host + (off % cs));
      return;
    }
    let buf = data;
    if (data.length !== cs) {
      // Partial cluster: start from what the cluster reads as now.
      buf = new Uint8Array(cs);
      const base = vcluster * cs;
      const valid = Math.min(cs, this.capacity - base);
      if (m.kind !== 'zero') await this.#readMapped(m, base, buf.subarray(0, valid));
      buf.set(data, off % cs);
    }
    const { table, offset: l2Off } = await this.#ensureL2(vcluster);
    if (m.kind === 'zero' && m.host !== 0 && m.copied) {
      // Preallocated zero cluster: fill it, then drop the zero flag.
      await pwriteFull(this.#fh, buf, m.host);
      await this.#setL2Entry(table, l2Off, vcluster, COPIED | Math.floor(m.host / TWO32), m.host % TWO32);
      return;
    }
    const host = await this.#allocCluster();
    await pwriteFull(this.#fh, buf, host);
    await this.#setL2Entry(table, l2Off, vcluster, COPIED | Math.floor(host / TWO32), host % TWO32);
    await this.#release(m);
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.#fh.datasync();
  }

  // ---- discard and write-zeroes ---------------------------------------------

  async discard(offset: number, length: number): Promise<void> {
    checkWritable(this, 'discard');
    checkRange(this, 'discard', offset, length);
    await this.#rw.exclusive(() => this.#alloc.run(() => this.#zeroRange(offset, length, 'discard', true)));
  }

  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    checkWritable(this, 'write-zeroes');
    checkRange(this, 'write-zeroes', offset, length);
    await this.#rw.exclusive(() => this.#alloc.run(() => this.#zeroRange(offset, length, 'zero', mayUnmap)));
  }

  /**
   * Discard (advisory: partial clusters are left alone) or write zeros
   * (exact: partial clusters are written). Whole clusters become
   * unallocated (no backing file) or zero clusters (v3); with `mayUnmap`
   * false an allocated cluster keeps its space as a preallocated zero
   * cluster. Entries change before refcounts drop.
   */
  async #zeroRange(offset: number, length: number, op: 'discard' | 'zero', mayUnmap: boolean): Promise<void> {
    const cs = this.#cs;
    const end = offset + length;
    const v3 = this.header.version === 3;
    const hasBacking = this.backing !== undefined;
    let pos = offset;
    while (pos < end) {
      const inCluster = pos % cs;
      const clusterEnd = pos - inCluster + cs;
      const vcluster = Math.floor(pos / cs);
      const whole = inCluster === 0 && (clusterEnd <= end || (end === this.capacity && clusterEnd > this.capacity));
      const stop = Math.min(clusterEnd, end);
      if (!whole) {
        if (op === 'zero') await this.#writeZeroPart(pos, stop - pos);
        pos = stop;
        continue;
      }
      const l1Index = Math.floor(vcluster / this.#l2Entries);
      if (this.#l2Offset(l1Index) === 0 && !hasBacking) {
        // No L2 table and nothing underneath: the whole L2 range already reads as zeros.
        pos = Math.min(end, (l1Index + 1) * this.#l2Entries * cs);
        continue;
      }
      const m = await this.#map(vcluster);
      if (m.kind === 'unallocated' && !hasBacking) {
        pos = stop;
        continue;
      }
      if (m.kind === 'zero' && (m.host === 0 || !mayUnmap)) {
        pos = stop;
        continue;
      }
      if (!v3) {
        // v2 has no zero flag: unallocated reads as zeros only without a backing file.
        if (hasBacking) {
          if (op === 'zero') await this.#writeZeroPart(pos, stop - pos);
        } else if (m.kind !== 'unallocated') {
          const { table, offset: l2Off } = await this.#ensureL2(vcluster);
          await this.#setL2Entry(table, l2Off, vcluster, 0, 0);
          await this.#release(m);
        }
        pos = stop;
        continue;
      }
      const { table, offset: l2Off } = await this.#ensureL2(vcluster);
      if (op === 'zero' && !mayUnmap && m.kind === 'data' && m.copied) {
        await this.#setL2Entry(table, l2Off, vcluster, COPIED | Math.floor(m.host / TWO32), (m.host % TWO32) | ZERO_FLAG);
      } else {
        await this.#setL2Entry(table, l2Off, vcluster, 0, hasBacking || op === 'zero' ? ZERO_FLAG : 0);
        await this.#release(m);
      }
      pos = stop;
    }
  }

  async #writeZeroPart(off: number, len: number): Promise<void> {
    const m = await this.#map(Math.floor(off / this.#cs));
    if (m.kind === 'zero' || (m.kind === 'unallocated' && !this.backing)) return;
    await this.#writeAllocating(off, new Uint8Array(len));
  }

  async close(): Promise<void> {
    await this.#fh.close();
    await this.backing?.close();
  }

  /** Host file offset of the cluster holding guest byte `offset` (0 if none): for tests and tools. */
  async hostOffset(offset: number): Promise<number> {
    const m = await this.#map(Math.floor(offset / this.#cs));
    return m.kind === 'data' ? m.host : 0;
  }
}

export type ImageFormat = 'raw' | 'qcow2';

export interface OpenImageOptions {
  readOnly?: boolean;
  /** Omitted: probe the qcow2 magic, else raw. */
  format?: ImageFormat | undefined;
  depth?: number;
}

/** The format of the image at `path`: qcow2 if it starts with the qcow2 magic, else raw (a shorter file is raw). */
export function probeImageFormat(path: string): ImageFormat {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new ImageError('ERR_IMAGE_OPEN', `cannot open image ${path}: ${(e as Error).message}`);
  }
  try {
    const head = new Uint8Array(4);
    readSync(fd, head, 0, 4, 0);
    return new DataView(head.buffer).getUint32(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  } finally {
    closeSync(fd);
  }
}

/** Open an image by path, probing the format unless given. */
export async function openImage(path: string, options: OpenImageOptions = {}): Promise<BlockImage> {
  const format = options.format ?? probeImageFormat(path);
  if (format === 'qcow2') return Qcow2Image.open(path, { readOnly: options.readOnly ?? false, depth: options.depth ?? 0 });
  return RawImage.open(path, { readOnly: options.readOnly ?? false });
}
