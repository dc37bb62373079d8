// The IOMMU's state — endpoints, domains, mappings — laid out in one flat
// buffer that can be a memfd mapped MAP_SHARED by vmm-iommu (the only
// writer) and read-only by every device process (readers translate DMA
// addresses from it directly, no message per access). Because the state
// lives in the memfd and not in the writer's heap, a vmm-iommu killed with
// SIGKILL is restarted over the same memfd and finds every domain and
// mapping where it was (repair() settles a write cut in half).
//
// Layout: little-endian u32 words (Atomics work on them across processes,
// FACTS.md "FFI and shared memory"):
//
//   header   HEADER_WORDS words: magic, layout, version counter, sizes,
//            bypass, statistics, reader slots (strict invalidation)
//   endpoints  maxEndpoints × 4 words  { id, known, domainSlot+1, 0 }
//   domains    maxDomains   × 4 words  { state, id, maps, unmaps } (mappings added and removed in that domain)
//   mappings   maxMappings  × 8 words  { ctrl, domainSlot, vs lo/hi, ve lo/hi, phys lo/hi }
//   faults     FAULT_RING × 4 words    { endpoint, reason|flags<<8, addr lo/hi } (device → vmm-iommu)
//
// Consistency without locks: each mapping slot is a tiny seqlock. `ctrl`
// holds a generation in its upper bits and the valid/permission flags in
// the low byte; the writer makes ctrl "writing" (odd generation), writes
// the fields, then publishes ctrl with the next even generation. A reader
// loads ctrl, the fields, ctrl again, and retries if they differ or the
// generation is odd. The header's version counter is bumped after every
// change that can take a translation away (UNMAP, DETACH, re-ATTACH, a
// domain's end, the bypass switch): a reader caching translations
// revalidates when it moves. Strict invalidation (what Linux's
// IOMMU_DEFAULT_DMA_STRICT expects: an UNMAP completes only when no device
// can use the old translation) uses reader slots: a device process stores
// the version it translated under while a request is in flight and 0 when
// idle; the writer completes an UNMAP only once every slot is idle or at
// the version it bumped to (an RCU grace period, across processes).

export const TABLE_MAGIC = 0x564f4d49; // "IMOV"
export const TABLE_LAYOUT = 1;

const W = {
  magic: 0,
  layout: 1,
  version: 2,
  maxEndpoints: 3,
  maxDomains: 4,
  maxMappings: 5,
  bypass: 6,
  highWater: 7,
  maps: 8,
  unmaps: 9,
  faults: 10,
  writerPid: 11,
  faultHead: 12,
  faultTail: 13,
  mapRequests: 14,
  unmapRequests: 15,
  readerBase: 16,
} as const;

/** Reader slots for strict invalidation: { pid, activeVersion } each. */
export const READER_SLOTS = 16;
const HEADER_WORDS = W.readerBase + 2 * READER_SLOTS;
const EP_WORDS = 4;
const DOM_WORDS = 4;
const MAP_WORDS = 8;
const FAULT_WORDS = 4;
/** Faults recorded by device processes and not yet taken by vmm-iommu; older ones are overwritten. */
export const FAULT_RING = 64;

/** Mapping ctrl flags (low byte); the generation counts in the bits above. */
export const M_VALID = 1;
export const M_READ = 2;
export const M_WRITE = 4;
/** @public (the table's layout: no device process sets it yet) */
export const M_MMIO = 8;
const GEN_ONE = 0x100;

/** Domain state word. */
const D_FREE = 0;
const D_LIVE = 1;
const D_BYPASS = 2;

export interface TableSizes {
  maxEndpoints: number;
  maxDomains: number;
  maxMappings: number;
}

export const DEFAULT_SIZES: TableSizes = { maxEndpoints: 64, maxDomains: 64, maxMappings: 65536 };

export function tableBytes(s: TableSizes): number {
  return 4 * (HEADER_WORDS + s.maxEndpoints * EP_WORDS + s.maxDomains * DOM_WORDS + s.maxMappings * MAP_WORDS + FAULT_RING * FAULT_WORDS);
}

export class IommuTableError extends Error {
  readonly code = 'ERR_IOMMU_TABLE';
}

const TWO32 = 2 ** 32;
const lo = (v: number): number => v % TWO32 >>> 0;
const hi = (v: number): number => Math.floor(v / TWO32) >>> 0;
const join = (l: number, h: number): number => h * TWO32 + l;

export interface Mapping {
  slot: number;
  domainSlot: number;
  virtStart: number;
  virtEnd: number;
  physStart: number;
  flags: number;
}

export interface RecordedFault {
  endpoint: number;
  reason: number;
  flags: number;
  address: number;
}

/** Read-side view (device processes; the writer extends it). */
export class IommuTableView {
  protected readonly w: Uint32Array;
  readonly sizes: TableSizes;
  protected readonly epBase: number;
  protected readonly domBase: number;
  protected readonly mapBase: number;
  protected readonly faultBase: number;

  constructor(buffer: ArrayBufferLike, byteOffset = 0) {
    const head = new Uint32Array(buffer, byteOffset, HEADER_WORDS);
    if (head[W.magic] !== TABLE_MAGIC) throw new IommuTableError(`IOMMU table magic is 0x${(head[W.magic] ?? 0).toString(16)}, expected 0x${TABLE_MAGIC.toString(16)} (not initialised by vmm-iommu?)`);
    if (head[W.layout] !== TABLE_LAYOUT) throw new IommuTableError(`IOMMU table layout ${head[W.layout]}, this build reads layout ${TABLE_LAYOUT}`);
    this.sizes = { maxEndpoints: head[W.maxEndpoints]!, maxDomains: head[W.maxDomains]!, maxMappings: head[W.maxMappings]! };
    const bytes = tableBytes(this.sizes);
    if (buffer.byteLength - byteOffset < bytes) throw new IommuTableError(`IOMMU table needs ${bytes} bytes for its sizes, the buffer has ${buffer.byteLength - byteOffset}`);
    this.w = new Uint32Array(buffer, byteOffset, bytes / 4);
    this.epBase = HEADER_WORDS;
    this.domBase = this.epBase + this.sizes.maxEndpoints * EP_WORDS;
    this.mapBase = this.domBase + this.sizes.maxDomains * DOM_WORDS;
    this.faultBase = this.mapBase + this.sizes.maxMappings * MAP_WORDS;
  }

  /** The memory the table lives in (to hand to another view, or to check it is the memfd's). */
  get buffer(): ArrayBufferLike {
    return this.w.buffer;
  }

  /** The translation version: it moves whenever a translation may have gone away. */
  get version(): number {
    return Atomics.load(this.w, W.version);
  }

  get bypass(): boolean {
    return Atomics.load(this.w, W.bypass) === 1;
  }

  get stats(): { maps: number; unmaps: number; mapRequests: number; unmapRequests: number; faults: number; highWater: number } {
    return {
      maps: Atomics.load(this.w, W.maps),
      unmaps: Atomics.load(this.w, W.unmaps),
      mapRequests: Atomics.load(this.w, W.mapRequests),
      unmapRequests: Atomics.load(this.w, W.unmapRequests),
      faults: Atomics.load(this.w, W.faults),
      highWater: Atomics.load(this.w, W.highWater),
    };
  }

  /** Index of endpoint `id`, or -1 when the IOMMU does not manage it. */
  endpointIndex(id: number): number {
    for (let i = 0; i < this.sizes.maxEndpoints; i++) {
      const b = this.epBase + i * EP_WORDS;
      if (Atomics.load(this.w, b + 1) === 1 && Atomics.load(this.w, b) === id) return i;
    }
    return -1;
  }

  endpointIds(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.sizes.maxEndpoints; i++) {
      const b = this.epBase + i * EP_WORDS;
      if (Atomics.load(this.w, b + 1) === 1) out.push(Atomics.load(this.w, b));
    }
    return out;
  }

  /** The id of the endpoint at `index`. */
  endpointId(index: number): number {
    return Atomics.load(this.w, this.epBase + index * EP_WORDS);
  }

  /** Domain slot the endpoint is attached to, or -1. */
  endpointDomain(index: number): number {
    return Atomics.load(this.w, this.epBase + index * EP_WORDS + 2) - 1;
  }

  domainState(slot: number): { live: boolean; bypass: boolean; id: number } {
    const b = this.domBase + slot * DOM_WORDS;
    const st = Atomics.load(this.w, b);
    return { live: st !== D_FREE, bypass: st === D_BYPASS, id: Atomics.load(this.w, b + 1) };
  }

  /** Slot of the live domain `id`, or -1. */
  /** Mappings added to and removed from the domain in `slot` since it was created. */
  domainCounts(slot: number): { maps: number; unmaps: number } {
    const b = this.domBase + slot * DOM_WORDS;
    return { maps: Atomics.load(this.w, b + 2), unmaps: Atomics.load(this.w, b + 3) };
  }

  findDomain(id: number): number {
    for (let s = 0; s < this.sizes.maxDomains; s++) {
      const b = this.domBase + s * DOM_WORDS;
      if (Atomics.load(this.w, b) !== D_FREE && Atomics.load(this.w, b + 1) === id) return s;
    }
    return -1;
  }

  /**
   * A consistent snapshot of mapping `slot`, or null when the slot is free
   * or being written (a MAP not complete yet, or a slot being reused after
   * its UNMAP completed: unmapped either way). Retries when the slot
   * changed while it was read.
   */
  readMapping(slot: number): Mapping | null {
    const b = this.mapBase + slot * MAP_WORDS;
    for (;;) {
      const c1 = Atomics.load(this.w, b);
      if ((c1 & GEN_ONE) !== 0 || (c1 & M_VALID) === 0) return null; // odd generation: being written
      const m: Mapping = {
        slot,
        domainSlot: Atomics.load(this.w, b + 1),
        virtStart: join(Atomics.load(this.w, b + 2), Atomics.load(this.w, b + 3)),
        virtEnd: join(Atomics.load(this.w, b + 4), Atomics.load(this.w, b + 5)),
        physStart: join(Atomics.load(this.w, b + 6), Atomics.load(this.w, b + 7)),
        flags: c1 & 0xff,
      };
      if (Atomics.load(this.w, b) === c1) return m;
    }
  }

  /** Every valid mapping of domain `domainSlot`, in slot order. */
  mappingsOf(domainSlot: number): Mapping[] {
    const out: Mapping[] = [];
    const hw = Atomics.load(this.w, W.highWater);
    for (let s = 0; s < hw; s++) {
      const m = this.readMapping(s);
      if (m && m.domainSlot === domainSlot) out.push(m);
    }
    return out;
  }

  /** The mapping of `domainSlot` containing `iova`, or null. */
  lookup(domainSlot: number, iova: number, hint = -1): Mapping | null {
    if (hint >= 0) {
      const m = this.readMapping(hint);
      if (m && m.domainSlot === domainSlot && iova >= m.virtStart && iova <= m.virtEnd) return m;
    }
    const hw = Atomics.load(this.w, W.highWater);
    for (let s = 0; s < hw; s++) {
      const b = this.mapBase + s * MAP_WORDS;
      // Cheap pre-filter on the words before taking a consistent snapshot.
      if ((Atomics.load(this.w, b) & M_VALID) === 0 || Atomics.load(this.w, b + 1) !== domainSlot) continue;
      const m = this.readMapping(s);
      if (m && m.domainSlot === domainSlot && iova >= m.virtStart && iova <= m.virtEnd) return m;
    }
    return null;
  }

  /** Reader slot `i` marks a request in flight under the current version (returns it), until leave(i). */
  enter(i: number, pid = process.pid): number {
    const b = W.readerBase + 2 * i;
    Atomics.store(this.w, b, pid);
    for (;;) {
      const v = this.version;
      Atomics.store(this.w, b + 1, v);
      // Re-check: a bump between the load and the store must not be missed.
      if (this.version === v) return v;
    }
  }

  leave(i: number): void {
    Atomics.store(this.w, W.readerBase + 2 * i + 1, 0);
  }

  /** Reader slot `i` now holds `version` (the oldest request of that reader still in flight began under it). */
  hold(i: number, version: number): void {
    Atomics.store(this.w, W.readerBase + 2 * i + 1, version);
  }

  /** Records a translation fault for vmm-iommu to report on the event queue (device processes). */
  recordFault(f: RecordedFault): void {
    const n = Atomics.add(this.w, W.faultHead, 1);
    const b = this.faultBase + (n % FAULT_RING) * FAULT_WORDS;
    Atomics.store(this.w, b, f.endpoint);
    Atomics.store(this.w, b + 1, (f.reason & 0xff) | (f.flags << 8));
    Atomics.store(this.w, b + 2, lo(f.address));
    Atomics.store(this.w, b + 3, hi(f.address));
    Atomics.add(this.w, W.faults, 1);
  }
}

/** One domain's mappings in the writer's index: sorted by start, never overlapping (MAP refuses overlaps). */
interface IndexEntry {
  vs: number;
  ve: number;
  slot: number;
}

/**
 * The writer (vmm-iommu). One per table. Besides the shared table it keeps,
 * in its own heap, an index of each domain's mappings sorted by address and
 * a list of free slots, so MAP and UNMAP cost O(log n) instead of a scan of
 * every slot; both are rebuilt from the table when a restarted writer takes
 * it over (the table stays the only state).
 */
/** kill(pid, 0): ESRCH means no such process; EPERM means it exists (not ours to signal). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

export class IommuTable extends IommuTableView {
  readonly #index = new Map<number, IndexEntry[]>();
  readonly #free: number[] = [];

  // create() starts empty; attach() builds the index after repair().
  private constructor(buffer: ArrayBufferLike, byteOffset = 0) {
    super(buffer, byteOffset);
  }

  #rebuild(): void {
    this.#index.clear();
    this.#free.length = 0;
    const hw = Atomics.load(this.w, W.highWater);
    for (let s = hw - 1; s >= 0; s--) {
      const m = this.readMapping(s);
      if (!m) {
        this.#free.push(s);
        continue;
      }
      const list = this.#index.get(m.domainSlot) ?? [];
      list.push({ vs: m.virtStart, ve: m.virtEnd, slot: s });
      this.#index.set(m.domainSlot, list);
    }
    for (const list of this.#index.values()) list.sort((a, b) => a.vs - b.vs);
  }

  /** First index in `list` whose mapping ends at or after `addr`. */
  static #firstEndingFrom(list: readonly IndexEntry[], addr: number): number {
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid]!.ve < addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The mappings of `domainSlot` that intersect [vs, ve], in address order. */
  overlapping(domainSlot: number, vs: number, ve: number): Mapping[] {
    const list = this.#index.get(domainSlot);
    if (!list) return [];
    const out: Mapping[] = [];
    for (let i = IommuTable.#firstEndingFrom(list, vs); i < list.length && list[i]!.vs <= ve; i++) {
      const m = this.readMapping(list[i]!.slot);
      if (m) out.push(m);
    }
    return out;
  }

  /** Initialise a fresh table in `buffer` (all zero) for the given endpoint ids. */
  static create(buffer: ArrayBufferLike, sizes: TableSizes, endpoints: readonly number[], bypass: boolean, byteOffset = 0): IommuTable {
    const bytes = tableBytes(sizes);
    if (buffer.byteLength - byteOffset < bytes) throw new IommuTableError(`IOMMU table needs ${bytes} bytes, the buffer has ${buffer.byteLength - byteOffset}`);
    if (endpoints.length > sizes.maxEndpoints) throw new IommuTableError(`${endpoints.length} endpoints do not fit the table's ${sizes.maxEndpoints}`);
    if (new Set(endpoints).size !== endpoints.length) throw new IommuTableError(`endpoint ids ${JSON.stringify(endpoints)} are not unique`);
    const w = new Uint32Array(buffer, byteOffset, bytes / 4);
    w.fill(0);
    w[W.layout] = TABLE_LAYOUT;
    w[W.version] = 1;
    w[W.maxEndpoints] = sizes.maxEndpoints;
    w[W.maxDomains] = sizes.maxDomains;
    w[W.maxMappings] = sizes.maxMappings;
    w[W.bypass] = bypass ? 1 : 0;
    endpoints.forEach((id, i) => {
      w[HEADER_WORDS + i * EP_WORDS] = id >>> 0;
      w[HEADER_WORDS + i * EP_WORDS + 1] = 1;
    });
    // Magic last: a reader never sees a half-initialised table as valid.
    Atomics.store(w, W.magic, TABLE_MAGIC);
    return new IommuTable(buffer, byteOffset);
  }

  /**
   * Take over an existing table (vmm-iommu restarted over the same memfd)
   * and settle whatever the previous writer left half done: a mapping slot
   * caught mid-write is freed (its MAP never completed, the driver will
   * see the request again from the inflight region), and a domain left
   * without endpoints (a DETACH cut short) is ended with its mappings, as
   * the spec says a domain ceases to exist once its last endpoint leaves.
   * Returns what it repaired.
   */
  static attach(buffer: ArrayBufferLike, byteOffset = 0): { table: IommuTable; repaired: string[] } {
    const t = new IommuTable(buffer, byteOffset);
    return { table: t, repaired: t.repair() };
  }

  private repair(): string[] {
    const out: string[] = [];
    const hw = Atomics.load(this.w, W.highWater);
    for (let s = 0; s < hw; s++) {
      const b = this.mapBase + s * MAP_WORDS;
      const c = Atomics.load(this.w, b);
      if ((c & GEN_ONE) !== 0) {
        Atomics.store(this.w, b, (c + GEN_ONE) & ~0xff);
        out.push(`mapping slot ${s} was being written; freed`);
      }
    }
    const used = new Set<number>();
    for (let i = 0; i < this.sizes.maxEndpoints; i++) if (this.endpointDomain(i) >= 0) used.add(this.endpointDomain(i));
    for (let s = 0; s < this.sizes.maxDomains; s++) {
      if (this.domainState(s).live && !used.has(s)) {
        out.push(`domain ${this.domainState(s).id} had no endpoint left; ended`);
        this.endDomain(s);
      }
    }
    for (let i = 0; i < READER_SLOTS; i++) Atomics.store(this.w, W.readerBase + 2 * i + 1, 0);
    this.bump();
    this.#rebuild();
    return out;
  }

  /** A MAP or UNMAP request was served (whatever its status): the request rate query-iommu shows, kept across restarts. */
  countRequest(type: 'map' | 'unmap'): void {
    Atomics.add(this.w, type === 'map' ? W.mapRequests : W.unmapRequests, 1);
  }

  setWriterPid(pid: number): void {
    Atomics.store(this.w, W.writerPid, pid);
  }

  /** Moves the version counter (after a change that can take a translation away); returns the new version. */
  bump(): number {
    return Atomics.add(this.w, W.version, 1) + 1;
  }

  setBypass(on: boolean): void {
    Atomics.store(this.w, W.bypass, on ? 1 : 0);
  }

  /** Creates domain `id`; returns its slot or -1 when the table has no free domain slot. */
  createDomain(id: number, bypass: boolean): number {
    for (let s = 0; s < this.sizes.maxDomains; s++) {
      const b = this.domBase + s * DOM_WORDS;
      if (Atomics.load(this.w, b) === D_FREE) {
        Atomics.store(this.w, b + 1, id >>> 0);
        Atomics.store(this.w, b + 2, 0);
        Atomics.store(this.w, b + 3, 0);
        Atomics.store(this.w, b, bypass ? D_BYPASS : D_LIVE);
        return s;
      }
    }
    return -1;
  }

  /** Ends a domain: its mappings first, then the slot. Endpoints must have left already. */
  endDomain(slot: number): void {
    for (const m of this.mappingsOf(slot)) this.removeMapping(m.slot);
    this.#index.delete(slot);
    Atomics.store(this.w, this.domBase + slot * DOM_WORDS, D_FREE);
  }

  /** Device reset (virtio 1.2 §5.13.5): every endpoint detached, every domain and mapping gone. */
  resetDomains(): void {
    for (let i = 0; i < this.sizes.maxEndpoints; i++) this.setEndpointDomain(i, -1);
    for (let s = 0; s < this.sizes.maxDomains; s++) if (this.domainState(s).live) this.endDomain(s);
    this.bump();
  }

  setEndpointDomain(index: number, domainSlot: number): void {
    Atomics.store(this.w, this.epBase + index * EP_WORDS + 2, domainSlot + 1);
  }

  endpointsOf(domainSlot: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.sizes.maxEndpoints; i++) if (this.endpointDomain(i) === domainSlot) out.push(i);
    return out;
  }

  /** Inserts a mapping (the caller checked it overlaps none); returns its slot, or -1 when every slot is used. */
  insertMapping(domainSlot: number, virtStart: number, virtEnd: number, physStart: number, flags: number): number {
    const hw = Atomics.load(this.w, W.highWater);
    let slot = this.#free.pop() ?? -1;
    if (slot < 0) {
      if (hw >= this.sizes.maxMappings) return -1;
      slot = hw;
    }
    const b = this.mapBase + slot * MAP_WORDS;
    const c = Atomics.load(this.w, b) & ~0xff;
    Atomics.store(this.w, b, c + GEN_ONE); // odd: being written
    Atomics.store(this.w, b + 1, domainSlot);
    Atomics.store(this.w, b + 2, lo(virtStart));
    Atomics.store(this.w, b + 3, hi(virtStart));
    Atomics.store(this.w, b + 4, lo(virtEnd));
    Atomics.store(this.w, b + 5, hi(virtEnd));
    Atomics.store(this.w, b + 6, lo(physStart));
    Atomics.store(this.w, b + 7, hi(physStart));
    if (slot === hw) Atomics.store(this.w, W.highWater, hw + 1);
    Atomics.store(this.w, b, c + 2 * GEN_ONE + (M_VALID | (flags & ~M_VALID & 0xff)));
    Atomics.add(this.w, W.maps, 1);
    Atomics.add(this.w, this.domBase + domainSlot * DOM_WORDS + 2, 1);
    const list = this.#index.get(domainSlot) ?? [];
    list.splice(IommuTable.#firstEndingFrom(list, virtStart), 0, { vs: virtStart, ve: virtEnd, slot });
    this.#index.set(domainSlot, list);
    return slot;
  }

  removeMapping(slot: number): void {
    const m = this.readMapping(slot);
    if (!m) return;
    const b = this.mapBase + slot * MAP_WORDS;
    const c = Atomics.load(this.w, b);
    Atomics.store(this.w, b, (c & ~0xff) + 2 * GEN_ONE);
    Atomics.add(this.w, W.unmaps, 1);
    Atomics.add(this.w, this.domBase + m.domainSlot * DOM_WORDS + 3, 1);
    const list = this.#index.get(m.domainSlot);
    if (list) {
      const i = IommuTable.#firstEndingFrom(list, m.virtStart);
      if (list[i]?.slot === slot) list.splice(i, 1);
    }
    this.#free.push(slot);
  }

  /** True when no reader slot holds a request that started before `version`. */
  quiescent(version: number): boolean {
    for (let i = 0; i < READER_SLOTS; i++) {
      const v = Atomics.load(this.w, W.readerBase + 2 * i + 1);
      if (v !== 0 && v < version) return false;
    }
    return true;
  }

  /**
   * Frees the reader slots that hold a version older than `version` for a
   * process that no longer exists (a device process killed with SIGKILL in
   * the middle of a request never leaves its slot; its successor — a
   * restart or the warm spare, given the same slot — may stay idle for a
   * while). Returns the pids let go. `alive` is injectable for tests.
   */
  releaseDeadReaders(version: number, alive: (pid: number) => boolean = processAlive): number[] {
    const gone: number[] = [];
    for (let i = 0; i < READER_SLOTS; i++) {
      const b = W.readerBase + 2 * i;
      const v = Atomics.load(this.w, b + 1);
      if (v === 0 || v >= version) continue;
      const pid = Atomics.load(this.w, b);
      if (pid > 0 && alive(pid)) continue;
      // Only if the slot still holds what we looked at: a live successor may have entered meanwhile.
      if (Atomics.compareExchange(this.w, b + 1, v, 0) === v) gone.push(pid);
    }
    return gone;
  }

  /** Faults recorded by readers since the last call (oldest first; some may have been overwritten). */
  takeFaults(): { faults: RecordedFault[]; lost: number } {
    const head = Atomics.load(this.w, W.faultHead);
    let tail = Atomics.load(this.w, W.faultTail);
    let lost = 0;
    if (head - tail > FAULT_RING) {
      lost = head - tail - FAULT_RING;
      tail = head - FAULT_RING;
    }
    const faults: RecordedFault[] = [];
    for (let n = tail; n < head; n++) {
      const b = this.faultBase + (n % FAULT_RING) * FAULT_WORDS;
      const rf = Atomics.load(this.w, b + 1);
      faults.push({ endpoint: Atomics.load(this.w, b), reason: rf & 0xff, flags: rf >>> 8, address: join(Atomics.load(this.w, b + 2), Atomics.load(this.w, b + 3)) });
    }
    Atomics.store(this.w, W.faultTail, head);
    return { faults, lost };
  }
}

/** What query-iommu shows: domains with their endpoints and mappings, the counters, the version. */
export interface TableSummary {
  bypass: boolean;
  version: number;
  /** Each endpoint with its domain's MAP/UNMAP counts (0 when detached): translation at work for that device. */
  endpoints: { id: number; domain: number | null; maps: number; unmaps: number }[];
  domains: { id: number; bypass: boolean; endpoints: number[]; mappings: number; mappedBytes: number; maps: number; unmaps: number }[];
  /** Mappings added and removed (an UNMAP request can remove several) and faults recorded, since the table was made. */
  maps: number;
  unmaps: number;
  /** MAP and UNMAP requests served (each a round trip for the guest). */
  mapRequests: number;
  unmapRequests: number;
  faults: number;
}

export function summarize(t: IommuTableView): TableSummary {
  const domains: TableSummary['domains'] = [];
  const endpoints: TableSummary['endpoints'] = [];
  const byDomain = new Map<number, number[]>();
  for (let i = 0; i < t.sizes.maxEndpoints; i++) {
    const id = t.endpointId(i);
    if (t.endpointIndex(id) !== i) continue;
    const d = t.endpointDomain(i);
    endpoints.push({ id, domain: d < 0 ? null : t.domainState(d).id, ...(d < 0 ? { maps: 0, unmaps: 0 } : t.domainCounts(d)) });
    if (d >= 0) byDomain.set(d, [...(byDomain.get(d) ?? []), id]);
  }
  for (let s = 0; s < t.sizes.maxDomains; s++) {
    const d = t.domainState(s);
    if (!d.live) continue;
    const maps = t.mappingsOf(s);
    domains.push({ id: d.id, bypass: d.bypass, endpoints: byDomain.get(s) ?? [], mappings: maps.length, mappedBytes: maps.reduce((a, m) => a + (m.virtEnd - m.virtStart + 1), 0), ...t.domainCounts(s) });
  }
  const st = t.stats;
  return { bypass: t.bypass, version: t.version, endpoints, domains, maps: st.maps, unmaps: st.unmaps, mapRequests: st.mapRequests, unmapRequests: st.unmapRequests, faults: st.faults };
}
