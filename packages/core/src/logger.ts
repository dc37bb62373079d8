// One pino logger per process, named by its role and device (STYLE.md: logs
// name who speaks). Logs go to stderr so a process's stdout stays free for
// data; the level comes from VMM_LOG_LEVEL (default 'info'). logToFile()
// sends them to a file instead (vmm run --log-file, QEMU's -D), with the
// device processes' logs that DeviceProcess relays (writeLog).

import { openSync, writeSync } from 'node:fs';
import { pino, type Logger } from 'pino';
import { ConfigError } from './errors.ts';

export type { Logger } from 'pino';

const STDERR_FD = 2;
let logFd = STDERR_FD;

export function createLogger(role: string, deviceId?: string, level?: string): Logger {
  const base: Record<string, unknown> = { role, pid: process.pid };
  if (deviceId !== undefined) base.device = deviceId;
  return pino({ base, level: level ?? process.env.VMM_LOG_LEVEL ?? 'info' }, pino.destination({ fd: logFd, sync: true }));
}

/**
 * From now on, loggers made by createLogger and writeLog append to `path`
 * (created if missing) instead of stderr. Throws a ConfigError naming the
 * path when it cannot be opened.
 */
export function logToFile(path: string): void {
  try {
    logFd = openSync(path, 'a');
  } catch (e) {
    throw new ConfigError(`cannot open the log file ${path}: ${(e as Error).message}`, 'ERR_LOG_FILE');
  }
}

/** Append bytes that are log lines (a device process's stderr) to this process's log. */
export function writeLog(bytes: Uint8Array): void {
  if (logFd === STDERR_FD) {
    process.stderr.write(bytes);
    return;
  }
  try {
    writeSync(logFd, bytes);
  } catch {
    // A full disk must not take the VM down; the log just ends there.
  }
}
