// What this package's process tests set up around vmm-net and vmm-switch: a
// run directory (the switch sockets live there), a logger named after the
// test, the processes' environment, and the processes and connections the
// test opens, closed and stopped after it with the directory removed.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, DeviceProcess, type Logger } from '@vmm/core';
import { afterAll } from 'vitest';

export const NET_MAIN = join(import.meta.dirname, '..', 'main.ts');
export const SWITCH_MAIN = join(import.meta.dirname, '..', 'switch-main.ts');

export interface NetProcesses {
  dir: string;
  log: Logger;
  env: Record<string, string>;
  /** Run after the tests, before the processes stop (driver connections). */
  closers: (() => void)[];
  /** Start a device process (its ready handshake awaited); it is stopped after the tests. */
  start(name: string, args: string[]): Promise<DeviceProcess>;
}

export function netProcesses(name: string, processLogLevel: 'warn' | 'error' = 'warn'): NetProcesses {
  const dir = mkdtempSync(join(tmpdir(), `vmm-${name}-`));
  const log = createLogger(`${name}-test`, undefined, 'warn');
  const env = { VMM_LOG_LEVEL: processLogLevel, VMM_RUN_DIR: dir };
  const procs: DeviceProcess[] = [];
  const closers: (() => void)[] = [];
  afterAll(async () => {
    for (const c of closers) c();
    await Promise.all(procs.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    dir, log, env, closers,
    async start(pname, args) {
      const p = new DeviceProcess({ name: pname, args, env, log });
      await p.start();
      procs.push(p);
      return p;
    },
  };
}
