export * from './spec.ts';
export { NetDevice, type NetDeviceOptions, type NetStats } from './device.ts';
export { formatMac, parseMac, type Mac } from './ctrl.ts';
export type { NetPort } from './port.ts';
export { Switch, type SwitchOptions } from './switch.ts';
export { SwitchAttachment, querySwitch } from './switch-client.ts';
export { parseNetArgs, type NetArgs } from './main.ts';
export { switchSocketPath, runDir } from './names.ts';
