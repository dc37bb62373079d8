// System reset and powerdown end to end: `vmm run --qmp … --disk …` with
// the interactive console on pipes. QMP system_reset restarts the running
// guest in place (the disk's back-end is reset with its transport and serves
// the new boot), and a reboot from inside the guest does the same; each is
// announced by a QMP RESET event shaped as QEMU's. system_powerdown then
// ends the guest through its power button. No timing assertions: every wait is for
// text on the console or an event, with a generous bound against hangs.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { QmpClient } from '@vmm/orchestrator';
import { VMM_CLI } from './guest-helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmm-reset-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const BANNER = "'poweroff' to stop the machine";

it('system_reset and a guest reboot restart the machine in place; the disk serves every boot; system_powerdown powers off', { timeout: 900_000 }, async () => {
  const image = join(dir, 'disk.img');
  writeFileSync(image, new Uint8Array(16 << 20));
  const sock = join(dir, 'qmp.sock');
  const child = spawn(process.execPath, [VMM_CLI, 'run', '--qmp', sock, '--disk', image], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
  child.stdin.on('error', () => {});
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const hang = setTimeout(() => child.kill('SIGKILL'), 840_000);
  /** Resolves with the index just past the next `text` after `from`. */
  const waitFor = async (text: string, from: number): Promise<number> => {
    for (;;) {
      const i = out.indexOf(text, from);
      if (i >= 0) return i + text.length;
      if (child.exitCode !== null) throw new Error(`vmm exited (${child.exitCode}) before printing '${text}'; console:\n${out.slice(-2000)}\nstderr:\n${err.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const send = (line: string): void => { child.stdin.write(`${line}\n`); };

  try {
    let at = await waitFor(BANNER, 0);
    // First boot: leave a mark on the disk (the guest computes the marker, so an echo of the input does not match).
    send('printf BOOT1-DATA | dd of=/dev/vda conv=fsync 2>/dev/null; echo wrote-$((2+2))');
    at = await waitFor('wrote-4', at);

    while (!existsSync(sock)) await new Promise((r) => setTimeout(r, 50));
    const q = await QmpClient.connect(sock);
    expect(await q.cmd('system_reset')).toEqual({ return: {} });
    expect(await q.event('RESET')).toMatchObject({ event: 'RESET', data: { guest: false, reason: 'host-qmp-system-reset' } });
    expect(await q.cmd('query-status')).toMatchObject({ return: { status: 'running', running: true } });

    // Second boot: a fresh initramfs, the same disk, its data intact.
    at = await waitFor(BANNER, at);
    send('echo "[$(head -c 10 /dev/vda)]"; echo second-$((3+3))');
    const before = at;
    at = await waitFor('second-6', at);
    expect(out.slice(before, at)).toContain('[BOOT1-DATA]');

    // A reboot from inside the guest (busybox reboot → SBI SRST) restarts it again.
    send('reboot');
    expect(await q.event('RESET')).toMatchObject({ data: { guest: true, reason: 'guest-reset' } });
    at = await waitFor(BANNER, at);
    send('echo "[$(head -c 10 /dev/vda)]"; echo third-$((4+5))');
    const third = at;
    at = await waitFor('third-9', at);
    expect(out.slice(third, at)).toContain('[BOOT1-DATA]');

    // system_powerdown presses the power button; the guest's agent powers off, vmm exits 0.
    expect(await q.cmd('system_powerdown')).toEqual({ return: {} });
    expect(await q.event('POWERDOWN')).toMatchObject({ event: 'POWERDOWN' });
    expect(await q.event('SHUTDOWN')).toMatchObject({ data: { guest: true, reason: 'guest-shutdown' } });
    expect(await exited, `console:\n${out.slice(-2000)}\nstderr:\n${err.slice(-2000)}`).toBe(0);
    expect(out.slice(at)).toContain('power button pressed');
    q.close();
    expect(out).not.toMatch(/I\/O error/);
  } finally {
    clearTimeout(hang);
    child.kill('SIGKILL');
  }
});
