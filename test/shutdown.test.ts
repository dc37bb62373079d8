// A normal end of a VM logs no error or warning (issue 8, part 4), and a VM
// can run detached (part 2). Each way of ending a VM ends it, so each gets a
// boot of its own: QMP quit, poweroff typed in the guest, SIGTERM; then a
// daemonized VM with its console on a unix socket, attached with `vmm ctl
// console` and with socat, ended by `vmm ctl … quit`. (Ctrl-C and a terminal
// hang-up need a real terminal: test/terminal.test.ts.) Every VM has a raw
// disk, so a vmm-blk process serves it and a warm spare waits beside it.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { QmpClient } from '@vmm/orchestrator';
import { VMM_CLI } from './guest-helpers.ts';
import { alive, expectQuietShutdown, logLines, sessionOf, waitGone } from './shutdown-helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmm-shutdown-'));
const disk = join(dir, 'a.img');
writeFileSync(disk, '');
truncateSync(disk, 16 << 20);
const GUEST_PROMPT = 'vmm:/';
const BOOT_MS = 600_000;

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  waitFor(which: 'stdout' | 'stderr', text: string, timeoutMs?: number): Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function startVmm(args: string[]): Run {
  const child = spawn(process.execPath, [VMM_CLI, 'run', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  child.stdout!.on('data', (d: Buffer) => (out.stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out.stderr += d.toString()));
  child.stdin!.on('error', () => {});
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  const killer = setTimeout(() => child.kill('SIGKILL'), BOOT_MS + 120_000);
  void exited.then(() => clearTimeout(killer));
  return {
    child,
    stdout: () => out.stdout,
    stderr: () => out.stderr,
    exited,
    async waitFor(which, text, timeoutMs = BOOT_MS) {
      const t0 = Date.now();
      while (!out[which].includes(text)) {
        if (child.exitCode !== null || Date.now() - t0 > timeoutMs) throw new Error(`vmm never wrote '${text}' on ${which}; stderr:\n${out.stderr.slice(-3000)}\nstdout:\n${out.stdout.slice(-2000)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
  };
}

/** Boot with a disk and QMP, logs at info, until the guest's shell prompt (its disk's rings started long before). */
async function bootToShell(name: string): Promise<{ run: Run; qmp: string }> {
  const qmp = join(dir, `${name}.qmp`);
  const run = startVmm(['--disk', disk, '--qmp', qmp, '--log-level', 'info']);
  await run.waitFor('stderr', '"msg":"rings started"');
  await run.waitFor('stdout', GUEST_PROMPT);
  return { run, qmp };
}

function vmmCtl(args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = execFile(process.execPath, [VMM_CLI, 'ctl', ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    if (input !== undefined) c.stdin!.end(input);
  });
}

describe('a normal shutdown logs no error or warning', () => {
  it('QMP quit: the client gets its return, then SHUTDOWN host-qmp-quit; vmm exits 0', async () => {
    const { run, qmp } = await bootToShell('quit');
    const c = await QmpClient.connect(qmp);
    expect(await c.cmd('quit')).toEqual({ return: {} });
    expect(await c.event('SHUTDOWN')).toMatchObject({ data: { guest: false, reason: 'host-qmp-quit' } });
    expect((await run.exited).code, run.stderr().slice(-2000)).toBe(0);
    await expectQuietShutdown(run.stderr(), { msg: 'machine exited' });
  });

  it('poweroff typed in the guest: vmm exits 0', async () => {
    const { run } = await bootToShell('poweroff');
    run.child.stdin!.write('poweroff\n');
    expect((await run.exited).code, run.stderr().slice(-2000)).toBe(0);
    const lines = await expectQuietShutdown(run.stderr(), { msg: 'machine exited' });
    expect(lines.find((l) => l.msg === 'event' && l.event === 'SHUTDOWN')).toMatchObject({ data: { guest: true, reason: 'guest-shutdown' } });
  });

  it('SIGTERM: vmm stops the machine and its processes in order, exits 0', async () => {
    const { run, qmp } = await bootToShell('sigterm');
    const c = await QmpClient.connect(qmp);
    run.child.kill('SIGTERM');
    expect(await c.event('SHUTDOWN')).toMatchObject({ data: { guest: false, reason: 'host-signal' } });
    expect((await run.exited).code, run.stderr().slice(-2000)).toBe(0);
    await expectQuietShutdown(run.stderr(), { signal: 'SIGTERM' });
  });
});

describe('--daemonize', () => {
  it('the parent exits once QMP listens; the daemon has its own session and a pidfile; its unix console works with vmm ctl console and socat; quit ends it; its logs are in --log-file', async () => {
    const qmp = join(dir, 'daemon.qmp');
    const consolePath = join(dir, 'daemon.console');
    const pidfile = join(dir, 'daemon.pid');
    const logFile = join(dir, 'daemon.log');
    const parent = startVmm(['--daemonize', '--pidfile', pidfile, '--qmp', qmp, '--console', `unix:${consolePath}`, '--disk', disk, '--log-file', logFile, '--log-level', 'info']);
    const { code } = await parent.exited;
    expect(code, parent.stderr()).toBe(0);
    // By the time the parent is gone, the VM is up: QMP and the console socket listen.
    expect(parent.stderr()).toContain(`vmm: QMP on ${qmp}`);
    expect(lstatSync(qmp).isSocket()).toBe(true);
    expect(lstatSync(consolePath).isSocket()).toBe(true);
    const pid = Number(readFileSync(pidfile, 'utf8').trim());
    leftDaemon = pid;
    expect(pid).not.toBe(parent.child.pid);
    expect(alive(pid)).toBe(true);
    // setsid: no controlling terminal, no signals from the one it was started on.
    expect(sessionOf(pid)).toBe(pid);

    // Wait on the console socket for the guest's shell, then type through each client.
    await new Promise<void>((resolve, reject) => {
      const s = net.connect(consolePath);
      let seen = '';
      const timer = setTimeout(() => reject(new Error(`no guest prompt on the console; saw:\n${seen.slice(-2000)}`)), BOOT_MS);
      s.on('data', (d: Buffer) => {
        seen += d.toString();
        if (seen.includes(GUEST_PROMPT)) {
          clearTimeout(timer);
          s.destroy();
          resolve();
        }
      });
    });
    const viaCtl = await vmmCtl(['console', consolePath], 'echo ctl-$((6*7))\n');
    expect(viaCtl.code, viaCtl.stderr).toBe(0);
    expect(viaCtl.stdout).toContain('ctl-42');
    const viaSocat = await new Promise<string>((resolve, reject) => {
      const c = execFile('socat', ['-t', '3', '-', `UNIX-CONNECT:${consolePath}`], { timeout: 60_000 }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
      c.stdin!.end('echo socat-$((6*7))\n');
    });
    expect(viaSocat).toContain('socat-42');

    const procs = JSON.parse((await vmmCtl(['--qmp', qmp, 'query-processes'])).stdout) as { pid: number; role: string }[];
    expect(procs.map((p) => p.role)).toEqual(['vmm', 'blk']);
    expect(procs[0]!.pid).toBe(pid);
    const quit = await vmmCtl(['--qmp', qmp, 'quit']);
    expect(quit, 'vmm ctl quit').toMatchObject({ code: 0 });
    expect(JSON.parse(quit.stdout)).toEqual({});
    await waitGone(procs.map((p) => p.pid));
    expect(existsSync(pidfile), 'pidfile removed').toBe(false);
    expect(existsSync(consolePath), 'console socket removed').toBe(false);
    leftDaemon = 0;
    // The daemon's stderr is /dev/null: its log lines, and those its vmm-blk processes wrote, are in the file, none on the parent's stderr.
    expect(logLines(parent.stderr())).toEqual([]);
    const lines = await expectQuietShutdown(readFileSync(logFile, 'utf8'), { msg: 'machine exited' });
    expect(lines.filter((l) => l.role === 'vmm').map((l) => l.pid)).toContain(pid);
    expect(lines.filter((l) => l.role === 'blk').map((l) => l.msg)).toContain('serving');
  });
});

/** A daemon a failed test left running (nobody else would end it): SIGTERM ends it and its device processes. */
let leftDaemon = 0;
afterAll(() => {
  if (leftDaemon > 0 && alive(leftDaemon)) process.kill(leftDaemon, 'SIGTERM');
});
