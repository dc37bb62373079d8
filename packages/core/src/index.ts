export * from './errors.ts';
export * from './logger.ts';
export * from './ffi.ts';
export * from './memory.ts';
export * from './virtqueue.ts';
