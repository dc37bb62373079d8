// Shared by the shutdown and terminal end-to-end tests: what a quiet
// shutdown looks like in vmm's JSON log lines (its own and, relayed through
// its stderr, its device processes').
import { readFileSync } from 'node:fs';
import { expect } from 'vitest';

export interface LogLine {
  level: number;
  msg: string;
  role?: string;
  pid?: number;
  device?: string;
  devicePid?: number;
  signal?: string | null;
  [key: string]: unknown;
}

/** The JSON lines of a log (other lines, such as "vmm: QMP on …", are skipped). */
export function logLines(text: string): LogLine[] {
  return text.split('\n').filter((l) => l.startsWith('{"level":')).map((l) => JSON.parse(l) as LogLine);
}

/** The raw JSON log lines, to check their keys as written (JSON.parse keeps only the last of a repeated key). */
function rawLogLines(text: string): string[] {
  return text.split('\n').filter((l) => l.startsWith('{"level":'));
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function waitGone(pids: number[], timeoutMs = 30_000): Promise<void> {
  const t0 = Date.now();
  while (pids.some(alive) && Date.now() - t0 < timeoutMs) await new Promise((r) => setTimeout(r, 100));
  expect(pids.filter(alive), 'processes still running').toEqual([]);
}

export function sessionOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
}

/**
 * A quiet shutdown: no line at warn level or above from any process; the
 * shutdown said why (`stop`: the signal vmm got, or a line it logs); every
 * device process that was ready got exactly one "device process stopped"
 * line, in the reverse order they became ready (with one disk: its spare,
 * then the process serving it); none is left running; and no line names
 * `pid` or `device` twice.
 */
export async function expectQuietShutdown(log: string, stop: { signal: string } | { msg: string }): Promise<LogLine[]> {
  const lines = logLines(log);
  expect(lines.length, log.slice(-3000)).toBeGreaterThan(0);
  const loud = lines.filter((l) => l.level >= 40);
  expect(loud, 'log lines at warn level or above').toEqual([]);
  for (const raw of rawLogLines(log)) {
    expect(raw.match(/"pid":/g)?.length ?? 0, raw).toBeLessThanOrEqual(1);
    expect(raw.match(/"device":/g)?.length ?? 0, raw).toBeLessThanOrEqual(1);
  }
  if ('signal' in stop) expect(lines.filter((l) => l.msg === 'stopping the machine').map((l) => l.signal)).toEqual([stop.signal]);
  else expect(lines.some((l) => l.msg === stop.msg), `no '${stop.msg}' line`).toBe(true);
  const ready = lines.filter((l) => l.msg === 'device process ready').map((l) => l.devicePid!);
  const stopped = lines.filter((l) => l.msg === 'device process stopped');
  expect(ready.length).toBeGreaterThan(0);
  expect(stopped.map((l) => l.devicePid)).toEqual([...ready].reverse());
  for (const s of stopped) expect(s, 'a device process stopped by SIGTERM exits 0').toMatchObject({ code: 0, signal: null });
  expect(lines.some((l) => /unexpectedly|restart|spare did not start|already running/.test(l.msg)), 'supervision lines in a shutdown').toBe(false);
  await waitGone(ready);
  return lines;
}
