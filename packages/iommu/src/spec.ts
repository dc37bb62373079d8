// Constants of the virtio IOMMU device, virtio 1.2 §5.13.

/** Device ID (virtio 1.2 §5.13.1). */
export const VIRTIO_ID_IOMMU = 23;

/** Virtqueues (§5.13.2). */
export const REQUEST_QUEUE = 0;
export const EVENT_QUEUE = 1;

/** Feature bits (§5.13.3). VIRTIO_IOMMU_F_BYPASS (3) is superseded by BYPASS_CONFIG and not offered. */
export const VIRTIO_IOMMU_F_INPUT_RANGE = 0;
export const VIRTIO_IOMMU_F_DOMAIN_RANGE = 1;
export const VIRTIO_IOMMU_F_MAP_UNMAP = 2;
export const VIRTIO_IOMMU_F_BYPASS = 3;
export const VIRTIO_IOMMU_F_PROBE = 4;
export const VIRTIO_IOMMU_F_MMIO = 5;
export const VIRTIO_IOMMU_F_BYPASS_CONFIG = 6;

/** struct virtio_iommu_config (§5.13.4): byte offsets. */
export const CFG = {
  pageSizeMask: 0,
  inputStart: 8,
  inputEnd: 16,
  domainStart: 24,
  domainEnd: 28,
  probeSize: 32,
  bypass: 36,
  size: 40,
} as const;

/** Request types (§5.13.6). */
export const VIRTIO_IOMMU_T_ATTACH = 1;
export const VIRTIO_IOMMU_T_DETACH = 2;
export const VIRTIO_IOMMU_T_MAP = 3;
export const VIRTIO_IOMMU_T_UNMAP = 4;
export const VIRTIO_IOMMU_T_PROBE = 5;

/** Status codes (§5.13.6). */
export const VIRTIO_IOMMU_S_OK = 0;
export const VIRTIO_IOMMU_S_IOERR = 1;
export const VIRTIO_IOMMU_S_UNSUPP = 2;
export const VIRTIO_IOMMU_S_DEVERR = 3;
export const VIRTIO_IOMMU_S_INVAL = 4;
export const VIRTIO_IOMMU_S_RANGE = 5;
export const VIRTIO_IOMMU_S_NOENT = 6;
export const VIRTIO_IOMMU_S_FAULT = 7;
export const VIRTIO_IOMMU_S_NOMEM = 8;

export type IommuStatus =
  | typeof VIRTIO_IOMMU_S_OK
  | typeof VIRTIO_IOMMU_S_IOERR
  | typeof VIRTIO_IOMMU_S_UNSUPP
  | typeof VIRTIO_IOMMU_S_DEVERR
  | typeof VIRTIO_IOMMU_S_INVAL
  | typeof VIRTIO_IOMMU_S_RANGE
  | typeof VIRTIO_IOMMU_S_NOENT
  | typeof VIRTIO_IOMMU_S_FAULT
  | typeof VIRTIO_IOMMU_S_NOMEM;

/** ATTACH flags (§5.13.6.3). */
export const VIRTIO_IOMMU_ATTACH_F_BYPASS = 1;
/** MAP flags (§5.13.6.5). */
export const VIRTIO_IOMMU_MAP_F_READ = 1;
export const VIRTIO_IOMMU_MAP_F_WRITE = 2;
export const VIRTIO_IOMMU_MAP_F_MMIO = 4;

/**
 * Device-readable lengths of each request, head included (the 4-byte
 * tail is the device-writable part; PROBE also writes probe_size bytes of
 * properties before it). struct virtio_iommu_req_* in §5.13.6.
 */
export const REQ_HEAD_LEN = 4;
export const REQ_TAIL_LEN = 4;
export const ATTACH_LEN = 20; // head, le32 domain, le32 endpoint, le32 flags, u8 reserved[4]
export const DETACH_LEN = 20; // head, le32 domain, le32 endpoint, u8 reserved[8]
export const MAP_LEN = 36; // head, le32 domain, le64 virt_start, le64 virt_end, le64 phys_start, le32 flags
export const UNMAP_LEN = 28; // head, le32 domain, le64 virt_start, le64 virt_end, u8 reserved[4]
export const PROBE_LEN = 72; // head, le32 endpoint, u8 reserved[64]

/** PROBE properties (§5.13.6.8): header { le16 type:12 + reserved:4, le16 length }. */
export const VIRTIO_IOMMU_PROBE_T_NONE = 0;
export const VIRTIO_IOMMU_PROBE_T_RESV_MEM = 1;
export const PROBE_PROPERTY_HEAD_LEN = 4;
/** struct virtio_iommu_probe_resv_mem without its header: u8 subtype, u8 reserved[3], le64 start, le64 end. */
export const RESV_MEM_VALUE_LEN = 20;
export const VIRTIO_IOMMU_RESV_MEM_T_RESERVED = 0;
export const VIRTIO_IOMMU_RESV_MEM_T_MSI = 1;

/** struct virtio_iommu_fault (§5.13.6.9). */
export const FAULT_LEN = 24;
export const VIRTIO_IOMMU_FAULT_R_UNKNOWN = 0;
export const VIRTIO_IOMMU_FAULT_R_DOMAIN = 1;
export const VIRTIO_IOMMU_FAULT_R_MAPPING = 2;
export const VIRTIO_IOMMU_FAULT_F_READ = 1;
export const VIRTIO_IOMMU_FAULT_F_WRITE = 2;
export const VIRTIO_IOMMU_FAULT_F_ADDRESS = 0x100;

export const bit = (n: number): bigint => 1n << BigInt(n);
