export * from './device-spec.ts';
export * from './kinds.ts';
export * from './slots.ts';
export * from './vhost-device.ts';
export * from './vm.ts';
export * from './attach.ts';
export * from './guest-hotplug.ts';
export * from './iommu.ts';

export * from './session.ts';
