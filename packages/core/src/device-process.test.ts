import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { DeviceProcess, DeviceProcessError } from './device-process.ts';
import { createLogger } from './logger.ts';

const DEVICE_PROCESS_TS = fileURLToPath(new URL('./device-process.ts', import.meta.url));

/** Session id of a process (field 6 of /proc/PID/stat, after the parenthesised name). */
function sessionOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const log = createLogger('device-process-test', undefined, 'silent');
// A child that reports ready and then idles; on SIGTERM it exits 0 only if asked to.
// The handler goes in before the handshake: the parent may signal as soon as it reads it.
const script = (handleTerm: boolean) => `
${handleTerm ? "process.on('SIGTERM', () => process.exit(0));" : "process.on('SIGTERM', () => {});"}
process.send({ type: 'vmm-ready', socket: '/nowhere' });
process.channel.unref();
setInterval(() => {}, 1000);
`;

describe('DeviceProcess', () => {
  it('starts on the ready handshake, stops with SIGTERM, restarts', async () => {
    const p = new DeviceProcess({ name: 't', args: ['-e', script(true)], log });
    await p.start();
    expect(p.running).toBe(true);
    expect(p.readyInfo.socket).toBe('/nowhere');
    const pid = p.pid;
    await p.restart();
    expect(p.pid).not.toBe(pid);
    expect(p.restarts).toBe(1);
    expect(await p.stop()).toEqual({ code: 0, signal: null });
    expect(p.running).toBe(false);
  });
  it('escalates to SIGKILL when SIGTERM is ignored', async () => {
    const p = new DeviceProcess({ name: 't', args: ['-e', script(false)], stopGraceMs: 200, log });
    await p.start();
    expect(await p.stop()).toEqual({ code: null, signal: 'SIGKILL' });
  });
  it('reports an unexpected exit (health)', async () => {
    const p = new DeviceProcess({ name: 't', args: ['-e', script(true)], log });
    await p.start();
    const seen = new Promise((resolve) => (p.onUnexpectedExit = resolve));
    p.kill('SIGKILL');
    expect(await seen).toEqual({ code: null, signal: 'SIGKILL' });
  });
  it('fails start() when the child exits before it is ready, or never says so', async () => {
    const early = new DeviceProcess({ name: 't', args: ['-e', 'process.exit(3)'], log });
    await expect(early.start()).rejects.toMatchObject({ code: 'ERR_DEVICE_PROCESS_EXITED' });
    const silent = new DeviceProcess({ name: 't', args: ['-e', 'setInterval(() => {}, 1000)'], readyTimeoutMs: 300, log });
    await expect(silent.start()).rejects.toBeInstanceOf(DeviceProcessError);
    expect(await silent.exited()).toEqual({ code: null, signal: 'SIGKILL' });
  });
  it("holds a child's stderr until it is ready: one that dies first is reported once, by start()'s error (its JSON log lines relayed); a ready one's is all relayed", async () => {
    // An orchestrator stand-in whose stderr is the relayed log: one child dies before its handshake, one gets ready.
    const dies = `process.stderr.write('{"level":60,"msg":"cannot start"}\\n'); process.stderr.write('vmm-x: no such image\\n'); process.exit(2);`;
    const lives = `process.stderr.write('early plain line\\n'); process.send({ type: 'vmm-ready' }); setTimeout(() => {}, 200);`;
    const orchestrator = `
import { DeviceProcess } from ${JSON.stringify(DEVICE_PROCESS_TS)};
import { createLogger } from ${JSON.stringify(fileURLToPath(new URL('./logger.ts', import.meta.url)))};
const log = createLogger('t', undefined, 'silent');
const a = new DeviceProcess({ name: 'a', args: ['-e', ${JSON.stringify(dies)}], log });
await a.start().then(() => process.stdout.write('started?!'), (e) => process.stdout.write(e.message + '\\n'));
const b = new DeviceProcess({ name: 'b', args: ['-e', ${JSON.stringify(lives)}], log });
await b.start();
await b.exited();
`;
    const r = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
      execFile(process.execPath, ['--input-type=module', '-e', orchestrator], { timeout: 30_000 }, (err, stdout, stderr) => (err ? reject(err) : resolve({ stdout, stderr })));
    });
    expect(r.stdout).toBe('a exited before it was ready (code 2, signal null): vmm-x: no such image\n');
    expect(r.stderr).toContain('{"level":60,"msg":"cannot start"}\n');
    expect(r.stderr).not.toContain('no such image');
    expect(r.stderr).toContain('early plain line\n');
  });
  it('carries control messages to the child', async () => {
    // The child echoes a control message back in its exit code.
    const child = `
process.on('message', (m) => { if (m.type === 'vmm-control') process.exit(m.code); });
process.send({ type: 'vmm-ready' });
setInterval(() => {}, 1000);
`;
    const p = new DeviceProcess({ name: 't', args: ['-e', child], log });
    await p.start();
    expect(p.send({ code: 42 })).toBe(true);
    expect(await p.exited()).toEqual({ code: 42, signal: null });
    expect(p.send({ code: 1 })).toBe(false);
  });
  it('runs the child in a session of its own, so terminal signals (Ctrl-C, hang-up) do not reach it', async () => {
    const p = new DeviceProcess({ name: 't', args: ['-e', script(true)], log });
    await p.start();
    const pid = p.pid!;
    expect(sessionOf(pid)).toBe(pid);
    expect(sessionOf(pid)).not.toBe(sessionOf(process.pid));
    await p.stop();
  });
  it('a device process ends when its orchestrator is SIGKILLed (PR_SET_PDEATHSIG), through its SIGTERM cleanup', async () => {
    // A middle process plays the orchestrator: it starts a device process
    // that uses installDeviceProcessSignals, prints its pid, and idles.
    const device = `
import { installDeviceProcessSignals, reportReady } from ${JSON.stringify(DEVICE_PROCESS_TS)};
installDeviceProcessSignals(() => process.stderr.write('cleanup ran\\n'));
reportReady();
setInterval(() => {}, 1000);
`;
    const orchestrator = `
import { DeviceProcess } from ${JSON.stringify(DEVICE_PROCESS_TS)};
import { createLogger } from ${JSON.stringify(fileURLToPath(new URL('./logger.ts', import.meta.url)))};
const p = new DeviceProcess({ name: 'child', args: ['--input-type=module', '-e', ${JSON.stringify(device)}], log: createLogger('t', undefined, 'silent'), stdio: 'ignore' });
await p.start();
process.stdout.write(String(p.pid) + '\\n');
setInterval(() => {}, 1000);
`;
    const middle = execFile(process.execPath, ['--input-type=module', '-e', orchestrator]);
    const devicePid = await new Promise<number>((resolve, reject) => {
      middle.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
      middle.once('exit', (code) => reject(new Error(`orchestrator stand-in exited (${code})`)));
    });
    expect(alive(devicePid)).toBe(true);
    middle.kill('SIGKILL');
    for (let i = 0; i < 100 && alive(devicePid); i++) await new Promise((r) => setTimeout(r, 50));
    expect(alive(devicePid)).toBe(false);
  });
  it("logs about a device process name it with device and devicePid: the line's pid stays the writer's, no key twice", async () => {
    const lines: string[] = [];
    const sink = new Writable({ write(chunk: Buffer, _enc, cb) { lines.push(...chunk.toString().split('\n').filter(Boolean)); cb(); } });
    // The orchestrator's logger: its base binds role and pid (createLogger's shape).
    const orchestratorLog = pino({ base: { role: 'vmm', pid: process.pid } }, sink);
    const p = new DeviceProcess({ name: 'disk9', args: ['-e', script(true)], log: orchestratorLog });
    await p.start();
    const devicePid = p.pid;
    await p.stop();
    expect(lines.length).toBe(2);
    for (const raw of lines) {
      expect(raw.match(/"pid":/g)).toHaveLength(1);
      expect(raw.match(/"device":/g)).toHaveLength(1);
      expect(JSON.parse(raw)).toMatchObject({ pid: process.pid, device: 'disk9', devicePid });
    }
    expect(lines.map((l) => (JSON.parse(l) as { msg: string }).msg)).toEqual(['device process ready', 'device process stopped']);
  });
  it('answers requests through onControlMessage: a result, an error, no answer, no process', async () => {
    // The child is the real device-process side, imported from this module.
    const child = `
import { onControlMessage, reportReady } from ${JSON.stringify(new URL('./device-process.ts', import.meta.url).href)};
let n = 0;
onControlMessage(async (m) => {
  if (m.query === 'count') return { n: ++n };
  if (m.query === 'slow') return new Promise(() => {});
  if (m.query === 'fire') { n += 100; return undefined; }
  throw new RangeError('unknown query ' + JSON.stringify(m.query));
});
reportReady();
setInterval(() => {}, 1000);
`;
    const p = new DeviceProcess({ name: 'q', args: ['--input-type=module', '-e', child], log });
    await p.start();
    expect(await p.request({ query: 'count' })).toEqual({ n: 1 });
    expect(p.send({ query: 'fire' })).toBe(true); // one-way messages still work, in order
    expect(await p.request({ query: 'count' })).toEqual({ n: 102 });
    await expect(p.request({ query: 'nope' })).rejects.toThrow(/q: unknown query "nope"/);
    await expect(p.request({ query: 'slow' }, 200)).rejects.toMatchObject({ code: 'ERR_DEVICE_PROCESS_REQUEST_TIMEOUT' });
    const pending = p.request({ query: 'slow' }, 10_000);
    p.kill('SIGKILL');
    await expect(pending).rejects.toMatchObject({ code: 'ERR_DEVICE_PROCESS_EXITED' });
    await p.exited();
    await expect(p.request({ query: 'count' })).rejects.toMatchObject({ code: 'ERR_DEVICE_PROCESS_NOT_RUNNING' });
  });
});
