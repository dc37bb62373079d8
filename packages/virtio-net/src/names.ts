// Where a named switch listens. One directory per user for every vmm
// switch on the host, so `--switch lab0` means the same network to every
// process of that user; VMM_RUN_DIR moves it (tests give each run its own).

import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function runDir(): string {
  return process.env.VMM_RUN_DIR ?? join(tmpdir(), `vmm-${process.getuid?.() ?? 0}`);
}

/** A switch given by name ("lab0") or by socket path (anything with a slash). */
export function switchSocketPath(nameOrPath: string): string {
  return nameOrPath.includes('/') ? nameOrPath : join(runDir(), `switch-${nameOrPath}.sock`);
}

/** Switch names: what fits in a file name and a log line. */
export const SWITCH_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
