export * from './errors.ts';
export * from './logger.ts';
export * from './ffi.ts';
export * from './memory.ts';
export * from './virtqueue.ts';
export * from './device.ts';
export * from './device-kind.ts';
export * from './device-process.ts';
export * from './device-main.ts';
export * from './virtio-device.ts';
export { VhostUserBackend, BACKEND_PROTOCOL_FEATURES, BASE_PROTOCOL_FEATURES, OPTIONAL_PROTOCOL_FEATURES, type VhostUserBackendOptions } from './vhost-user/backend.ts';
export { VhostUserFrontend, VhostUserClosedError, type FrontendOptions, type FrontendRegion } from './vhost-user/frontend.ts';
export { VhostUserDriver, DriverQueueHandle, DriverIommu, type DriverOptions, type Completion } from './vhost-user/driver.ts';
export { DeviceIotlb, IotlbMissError, IotlbPerm, IotlbType, type IotlbMsg } from './vhost-user/iotlb.ts';
export { VhostUserConnection } from './vhost-user/connection.ts';
export { VhostUserProtocolError, type Message as VhostUserMessage, type MemRegion, type VringAddr, type VringState } from './vhost-user/codec.ts';
export * as vhostUserCodec from './vhost-user/codec.ts';
export {
  Req as VhostUserReq, ProtocolFeature as VhostUserProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, reqName as vhostUserReqName, pf as protocolFeatureBit,
} from './vhost-user/protocol.ts';
export { InflightQueue, inflightRegionSize, inflightQueueStride } from './vhost-user/inflight.ts';
export { processMemory, type ProcessMemory } from './proc-memory.ts';
export { IoRing, IoRingError } from './io-ring.ts';
export { QueueHandle, type QueueHandleOptions } from './queue-handle.ts';
export { BusyPoll, type BusyPollHooks } from './busy-poll.ts';
