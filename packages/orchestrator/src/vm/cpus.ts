// Which OS thread runs each hart (QMP query-cpus-fast's thread-id): every
// hart is a worker thread named hartThreadName(h), and Linux lists a
// process's threads with their names under /proc/PID/task.

import { readdirSync, readFileSync } from 'node:fs';
import { hartThreadName } from '@vmm/vcpu';
import { QmpError, type CpuInfo } from '../api/control.ts';

/** One entry per hart of the machine process `pid`; a hart whose thread is not running (a reset restarting the harts) is an error naming it. */
export function hartThreads(pid: number, harts: number): Omit<CpuInfo, 'engine'>[] {
  const byName = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      byName.set(readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim(), Number(tid));
    } catch {
      // The thread ended while we listed them.
    }
  }
  const out: Omit<CpuInfo, 'engine'>[] = [];
  for (let h = 0; h < harts; h++) {
    const threadId = byName.get(hartThreadName(h));
    if (threadId === undefined) throw new QmpError('GenericError', `hart ${h} has no running thread (the machine is resetting or has stopped)`);
    out.push({ index: h, threadId });
  }
  return out;
}
