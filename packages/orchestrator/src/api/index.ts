export * from './control.ts';
export * from './qmp.ts';
export * from './servers.ts';
export * from './client.ts';
