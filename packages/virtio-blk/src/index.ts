export * from './errors.ts';
export * from './spec.ts';
export type { BlockImage } from './image.ts';
export { RawImage, type RawOpenOptions } from './raw.ts';
export { Qcow2Image, openImage, type ImageFormat, type OpenImageOptions, type Qcow2OpenOptions } from './qcow2.ts';
export { parseQcow2Header, type Qcow2Header } from './qcow2-header.ts';
export { parseRequest, executeRequest, type BlkRequest, type BlkLimits, type ChainBuffers, type DwzRange, type ExecuteResult, type RejectedChain } from './request.ts';
export { BlkDevice, type BlkDeviceOptions } from './device.ts';
