// vhost-user protocol constants (QEMU docs/interop/vhost-user.rst).

/** Front-end → back-end request codes ("Front-end message types"). */
export const Req = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

export const reqName = (code: number): string => Object.entries(Req).find(([, v]) => v === code)?.[0] ?? `UNKNOWN(${code})`;

/** Back-end → front-end request codes on the back-end channel ("Back-end message types"; SET_BACKEND_REQ_FD, BACKEND_REQ). */
export const BackendReq = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
} as const;

/** Header flags: bits 0-1 version (must be 1), bit 2 reply, bit 3 need_reply. */
export const VERSION = 0x1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;

export const HEADER_SIZE = 12;
/** Largest payload we accept; every message defined above is far smaller (the memory table is 264 bytes, config 268). */
export const MAX_PAYLOAD = 4096;
/** Regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_MEM_TABLE_REGIONS = 8;
/** Memory slots we report for GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS). */
export const MAX_MEM_SLOTS = 32;
/** Config space payload limit (VHOST_USER_MAX_CONFIG_SIZE). */
export const MAX_CONFIG_SIZE = 256;

/** Virtio feature bit 30: the back-end speaks protocol features (VHOST_USER_F_PROTOCOL_FEATURES). */
export const VHOST_USER_F_PROTOCOL_FEATURES = 1n << 30n;

/** Protocol feature bits ("Protocol features"). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

export const pf = (bit: number): bigint => 1n << BigInt(bit);

/** SET_VRING_KICK/CALL/ERR payload: bits 0-7 ring index, bit 8 "no fd" (polling / no notifications). */
export const VRING_IDX_MASK = 0xffn;
export const VRING_NOFD_MASK = 0x100n;
