// Constants of the virtio block device, virtio 1.2 §5.2.

/** Sector size the protocol counts in, regardless of blk_size (virtio 1.2 §5.2.6). */
export const SECTOR_SIZE = 512;
export const SECTOR_SHIFT = 9;

/** Request types (virtio 1.2 §5.2.6). */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

/** Status byte values (virtio 1.2 §5.2.6). */
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Length of `struct virtio_blk_req`'s header: le32 type, le32 reserved, le64 sector. */
export const REQ_HEADER_LEN = 16;
/** Length of `struct virtio_blk_discard_write_zeroes`: le64 sector, le32 num_sectors, le32 flags. */
export const DWZ_SEGMENT_LEN = 16;
/** Flag bit 0 of a discard/write-zeroes segment (virtio 1.2 §5.2.6). */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
/** GET_ID answers with up to 20 bytes, not NUL-terminated when all 20 are used (virtio 1.2 §5.2.6). */
export const VIRTIO_BLK_ID_BYTES = 20;

/** Device feature bits (virtio 1.2 §5.2.3), as bit numbers. */
export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_GEOMETRY = 4;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_TOPOLOGY = 10;
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
export const VIRTIO_BLK_F_MQ = 12;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;

/** Transport-level feature bits (virtio 1.2 §6). */
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;

/** virtio device id of a block device (virtio 1.2 §5). */
export const VIRTIO_ID_BLOCK = 2;

/** Offsets in `struct virtio_blk_config` (virtio 1.2 §5.2.4). All little-endian. */
export const CFG = {
  capacity: 0, // le64, in 512-byte sectors
  sizeMax: 8, // le32
  segMax: 12, // le32
  geometry: 16, // le16 cylinders, u8 heads, u8 sectors
  blkSize: 20, // le32
  topology: 24, // u8 physical_block_exp, u8 alignment_offset, le16 min_io_size, le32 opt_io_size
  writeback: 32, // u8
  numQueues: 34, // le16
  maxDiscardSectors: 36, // le32
  maxDiscardSeg: 40, // le32
  discardSectorAlignment: 44, // le32
  maxWriteZeroesSectors: 48, // le32
  maxWriteZeroesSeg: 52, // le32
  writeZeroesMayUnmap: 56, // u8
  /** End of the fields up to write_zeroes_may_unmap and its padding. */
  size: 60,
} as const;

/** Feature bit number → mask as a bigint (features are 64-bit). */
export function bit(n: number): bigint {
  return 1n << BigInt(n);
}
