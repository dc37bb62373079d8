// One pino logger per process, named by its role and device (STYLE.md: logs
// name who speaks). Logs go to stderr so a process's stdout stays free for
// data; the level comes from VMM_LOG_LEVEL (default 'info').

import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

export function createLogger(role: string, deviceId?: string, level?: string): Logger {
  const base: Record<string, unknown> = { role, pid: process.pid };
  if (deviceId !== undefined) base.device = deviceId;
  return pino({ base, level: level ?? process.env.VMM_LOG_LEVEL ?? 'info' }, pino.destination({ fd: 2, sync: true }));
}
