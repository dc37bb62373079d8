// qcow2 header and header extensions (QEMU docs/interop/qcow2.txt,
// "Header" and "Header extensions"). All fields are big-endian. Parsing
// validates every field before any table is read, so a corrupt or hostile
// image is refused with a message naming the field, never half-opened.

import { ImageCorruptError, ImageUnsupportedError } from './errors.ts';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const V2_HEADER_LEN = 72;
export const V3_HEADER_MIN_LEN = 104;

/** Incompatible feature bits (qcow2.txt, header bytes 72–79). */
export const INCOMPAT_DIRTY = 0;
export const INCOMPAT_CORRUPT = 1;
const INCOMPAT_EXTERNAL_DATA = 2;
export const INCOMPAT_COMPRESSION_TYPE = 3;
const INCOMPAT_EXTENDED_L2 = 4;
const KNOWN_INCOMPAT_NAMES: Record<number, string> = {
  [INCOMPAT_DIRTY]: 'dirty bit',
  [INCOMPAT_CORRUPT]: 'corrupt bit',
  [INCOMPAT_EXTERNAL_DATA]: 'external data file',
  [INCOMPAT_COMPRESSION_TYPE]: 'compression type',
  [INCOMPAT_EXTENDED_L2]: 'extended L2 entries',
};

/** Header extension types (qcow2.txt, "Header extensions"). */
export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_NAMES = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_FDE = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

/** Limits QEMU also applies: keep a hostile header from making us allocate gigabytes. */
const MAX_L1_BYTES = 32 * 1024 * 1024;
const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
const MAX_BACKING_NAME = 1023;

export interface FeatureName {
  type: 'incompatible' | 'compatible' | 'autoclear';
  bit: number;
  name: string;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  clusterSize: number;
  size: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  backingFile?: string;
  backingFormat?: string;
  featureNames: FeatureName[];
}

function u64(dv: DataView, off: number, field: string): number {
  const v = dv.getBigUint64(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ImageCorruptError(`qcow2 header field ${field} = ${v} is too large`);
  return Number(v);
}

/** Name of an incompatible feature bit, from the image's own feature table if it has one. */
function incompatName(bit: number, names: FeatureName[]): string {
  const own = names.find((n) => n.type === 'incompatible' && n.bit === bit);
  return own?.name ?? KNOWN_INCOMPAT_NAMES[bit] ?? `unknown incompatible feature bit ${bit}`;
}

/**
 * Parse and validate the header in `buf` (the image's first cluster, or
 * the whole file if shorter). `fileSize` bounds every offset.
 */
export function parseQcow2Header(buf: Uint8Array, fileSize: number): Qcow2Header {
  if (buf.length < V2_HEADER_LEN || fileSize < V2_HEADER_LEN) throw new ImageCorruptError(`qcow2 image is only ${fileSize} bytes, shorter than a header`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = dv.getUint32(0);
  if (magic !== QCOW2_MAGIC) throw new ImageCorruptError(`not a qcow2 image: magic 0x${magic.toString(16)} instead of 0x${QCOW2_MAGIC.toString(16)}`);
  const version = dv.getUint32(4);
  if (version !== 2 && version !== 3) throw new ImageUnsupportedError(`qcow2 version ${version} is not supported (only 2 and 3)`);
  const clusterBits = dv.getUint32(20);
  if (clusterBits < 9 || clusterBits > 21) throw new ImageCorruptError(`qcow2 cluster_bits ${clusterBits} is outside 9..21`);
  const clusterSize = 2 ** clusterBits;
  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(dv, 8, 'backing_file_offset'),
    backingFileSize: dv.getUint32(16),
    clusterBits,
    clusterSize,
    size: u64(dv, 24, 'size'),
    l1Size: dv.getUint32(36),
    l1TableOffset: u64(dv, 40, 'l1_table_offset'),
    refcountTableOffset: u64(dv, 48, 'refcount_table_offset'),
    refcountTableClusters: dv.getUint32(56),
    nbSnapshots: dv.getUint32(60),
    snapshotsOffset: u64(dv, 64, 'snapshots_offset'),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LEN,
    compressionType: 0,
    featureNames: [],
  };
  const cryptMethod = dv.getUint32(32);
  if (cryptMethod !== 0) throw new ImageUnsupportedError(`qcow2 encryption (crypt_method ${cryptMethod}) is not supported`);

  if (version === 3) {
    if (buf.length < V3_HEADER_MIN_LEN) throw new ImageCorruptError(`qcow2 v3 image is shorter than its ${V3_HEADER_MIN_LEN}-byte header`);
    h.incompatibleFeatures = dv.getBigUint64(72);
    h.compatibleFeatures = dv.getBigUint64(80);
    h.autoclearFeatures = dv.getBigUint64(88);
    h.refcountOrder = dv.getUint32(96);
    h.headerLength = dv.getUint32(100);
    if (h.headerLength < V3_HEADER_MIN_LEN || h.headerLength > clusterSize || h.headerLength % 8 !== 0) {
      throw new ImageCorruptError(`qcow2 header_length ${h.headerLength} must be a multiple of 8 between ${V3_HEADER_MIN_LEN} and the cluster size ${clusterSize}`);
    }
    if (h.headerLength > 104) h.compressionType = buf[104]!;
    if (h.refcountOrder > 6) throw new ImageCorruptError(`qcow2 refcount_order ${h.refcountOrder} is above 6`);
  }
  if (h.headerLength > buf.length) throw new ImageCorruptError(`qcow2 header_length ${h.headerLength} runs past the end of the file`);

  // Header extensions follow the header, up to the end of the first cluster (qcow2.txt).
  parseExtensions(buf, h);

  // Incompatible features: refuse what we cannot honour, naming it.
  const incompat = h.incompatibleFeatures;
  for (let b = 0; b < 64; b++) {
    if (!((incompat >> BigInt(b)) & 1n)) continue;
    if (b === INCOMPAT_DIRTY || b === INCOMPAT_CORRUPT) continue; // decided by the opener (read-only allowed)
    if (b === INCOMPAT_COMPRESSION_TYPE) continue; // checked against compression_type below
    throw new ImageUnsupportedError(`qcow2 incompatible feature not supported: ${incompatName(b, h.featureNames)}`);
  }
  const hasCompressionBit = ((incompat >> BigInt(INCOMPAT_COMPRESSION_TYPE)) & 1n) === 1n;
  if (h.compressionType !== 0) {
    if (!hasCompressionBit) throw new ImageCorruptError(`qcow2 compression_type ${h.compressionType} without the compression type feature bit`);
    throw new ImageUnsupportedError(`qcow2 compression type ${h.compressionType === 1 ? 'zstd' : h.compressionType} is not supported (only deflate)`);
  }

  // Sizes and offsets (qcow2.txt: every table is cluster-aligned and inside the file).
  if (h.size % 512 !== 0) throw new ImageCorruptError(`qcow2 virtual size ${h.size} is not a multiple of 512`);
  const l2Entries = clusterSize / 8;
  const l1Needed = Math.ceil(h.size / (clusterSize * l2Entries));
  if (h.l1Size < l1Needed) throw new ImageCorruptError(`qcow2 l1_size ${h.l1Size} is too small for virtual size ${h.size} (needs ${l1Needed})`);
  if (h.l1Size * 8 > MAX_L1_BYTES) throw new ImageCorruptError(`qcow2 l1_size ${h.l1Size} is larger than ${MAX_L1_BYTES / 8} entries`);
  checkTable('L1 table', h.l1TableOffset, h.l1Size * 8, clusterSize, fileSize);
  if (h.refcountTableClusters === 0) throw new ImageCorruptError('qcow2 refcount_table_clusters is 0');
  if (h.refcountTableClusters * clusterSize > MAX_REFTABLE_BYTES) throw new ImageCorruptError(`qcow2 refcount_table_clusters ${h.refcountTableClusters} is too large`);
  checkTable('refcount table', h.refcountTableOffset, h.refcountTableClusters * clusterSize, clusterSize, fileSize);
  if (h.nbSnapshots > 0) checkTable('snapshot table', h.snapshotsOffset, 1, clusterSize, fileSize);

  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize === 0 || h.backingFileSize > MAX_BACKING_NAME) throw new ImageCorruptError(`qcow2 backing_file_size ${h.backingFileSize} is outside 1..${MAX_BACKING_NAME}`);
    if (h.backingFileOffset + h.backingFileSize > Math.min(buf.length, clusterSize)) {
      throw new ImageCorruptError(`qcow2 backing file name at ${h.backingFileOffset}+${h.backingFileSize} is outside the header cluster`);
    }
    h.backingFile = new TextDecoder().decode(buf.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize));
  }
  return h;
}

function checkTable(what: string, offset: number, bytes: number, clusterSize: number, fileSize: number): void {
  if (offset % clusterSize !== 0) throw new ImageCorruptError(`qcow2 ${what} offset ${offset} is not aligned to the cluster size ${clusterSize}`);
  if (bytes > 0 && offset === 0) throw new ImageCorruptError(`qcow2 ${what} overlaps the header (offset 0)`);
  if (offset + bytes > fileSize) throw new ImageCorruptError(`qcow2 ${what} at ${offset}+${bytes} runs past the end of the ${fileSize}-byte file`);
}

function parseExtensions(buf: Uint8Array, h: Qcow2Header): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const end = Math.min(buf.length, h.clusterSize, h.backingFileOffset > 0 ? h.backingFileOffset : Infinity);
  let off = h.headerLength;
  const seen = new Set<number>();
  while (true) {
    if (off + 8 > end) {
      // v2 images written by old tools may have no end marker when nothing follows.
      if (off >= end) return;
      throw new ImageCorruptError(`qcow2 header extension at ${off} is cut off by the end of the header area (${end})`);
    }
    const type = dv.getUint32(off);
    const len = dv.getUint32(off + 4);
    if (type === EXT_END) return;
    const data = off + 8;
    if (data + len > end) throw new ImageCorruptError(`qcow2 header extension 0x${type.toString(16)} of ${len} bytes at ${off} runs past the header area (${end})`);
    if (seen.has(type) && type !== EXT_BITMAPS) throw new ImageCorruptError(`qcow2 header extension 0x${type.toString(16)} appears twice`);
    seen.add(type);
    const body = buf.subarray(data, data + len);
    switch (type) {
      case EXT_BACKING_FORMAT:
        h.backingFormat = new TextDecoder().decode(body);
        break;
      case EXT_FEATURE_NAMES:
        // Entries of 48 bytes: u8 type, u8 bit, char name[46] (NUL-padded).
        for (let i = 0; i + 48 <= len; i += 48) {
          const t = body[i]!;
          const nameBytes = body.subarray(i + 2, i + 48);
          const nul = nameBytes.indexOf(0);
          h.featureNames.push({
            type: t === 0 ? 'incompatible' : t === 1 ? 'compatible' : 'autoclear',
            bit: body[i + 1]!,
            name: new TextDecoder().decode(nul < 0 ? nameBytes : nameBytes.subarray(0, nul)),
          });
        }
        break;
      case EXT_FDE:
        throw new ImageUnsupportedError('qcow2 full disk encryption header extension: encrypted images are not supported');
      case EXT_DATA_FILE:
        throw new ImageUnsupportedError('qcow2 external data file is not supported');
      default:
        // Bitmaps and unknown extensions: ignorable (their autoclear bit is cleared on a writable open).
        break;
    }
    off = data + Math.ceil(len / 8) * 8;
  }
}
