export * from './disk-spec.ts';
export * from './vhost-blk.ts';
export * from './vm.ts';
export * from './attach.ts';
export * from './guest-hotplug.ts';

export * from './session.ts';
