// vmm on a real terminal, driven as a person drives it: an interactive bash
// in a tmux pane (send-keys to type, capture-pane to read), started from a
// plain environment. Issue 8:
//   part 2: the README's management example typed exactly as written (its
//           lines are read from README.md): `pnpm vmm run … &` keeps running
//           in the background, the `vmm ctl` lines work, then `fg` hands it
//           the keyboard and Ctrl-A x ends it; `--daemonize` returns the
//           prompt with the VM up and `vmm ctl console` attaches to it on
//           the terminal, Ctrl-] detaching;
//   part 4: Ctrl-C and a terminal hang-up (`tmux kill-session`) end the VM
//           with no error or warning in its log; the hang-up leaves the
//           daemonized VM alone.
// The tmux server runs in a mount namespace of its own with a private /tmp,
// so the README's fixed /tmp/vmm.qmp cannot meet another VM's on this machine.
// The prompt shows the last status (PS1='vmmtest[$?]$ '), so each typed
// line's status is read from the pane.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient } from '@vmm/orchestrator';
import { alive, expectQuietShutdown, waitGone } from './shutdown-helpers.ts';

const REPO = dirname(dirname(fileURLToPath(import.meta.url)));
const BOOT_MS = 600_000;
const GUEST_PROMPT = 'vmm:/';
const PROMPT = /vmmtest\[(\d+)\]\$ /g;

/** The README's management example: the lines of the sh block under "Management, hot-plug, fault injection". */
function readmeExample(): string[] {
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('### Management, hot-plug, fault injection'));
  const block = /```sh\n([\s\S]*?)```/.exec(section);
  if (!block) throw new Error('README.md: no sh block under "Management, hot-plug, fault injection"');
  return block[1]!.trimEnd().split('\n');
}

// Under the repository (pnpm finds the workspace from there), in its ignored tmp/.
mkdirSync(join(REPO, 'tmp'), { recursive: true });
const dir = mkdtempSync(join(REPO, 'tmp', 'terminal-test-'));
const tmuxSocket = join(dir, 'tmux.sock');

function tmux(...args: string[]): string {
  return execFileSync('tmux', ['-S', tmuxSocket, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function pane(): string {
  // -J joins wrapped lines, -S - takes the whole history.
  return tmux('capture-pane', '-p', '-J', '-S', '-', '-t', 'vmm');
}

function prompts(): number[] {
  return [...pane().matchAll(PROMPT)].map((m) => Number(m[1]));
}

async function until<T>(what: string, probe: () => T | undefined | false, timeoutMs = BOOT_MS): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms; the terminal shows:\n${pane().slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Type a line and press Enter (literally: nothing in it is a tmux key name). */
function type(line: string): void {
  tmux('send-keys', '-t', 'vmm', '-l', line);
  tmux('send-keys', '-t', 'vmm', 'Enter');
}

/** Type a line, wait for bash's next prompt, return the status it shows. */
async function run(line: string, timeoutMs = 120_000): Promise<number> {
  const before = prompts().length;
  type(line);
  return until(`the shell's prompt after '${line}'`, () => {
    const p = prompts();
    return p.length > before ? p.at(-1)! : undefined;
  }, timeoutMs);
}

function readPid(path: string): number {
  return Number(readFileSync(path, 'utf8').trim());
}

beforeAll(() => {
  try {
    execFileSync('tmux', ['-V'], { stdio: 'ignore' });
  } catch {
    throw new Error('tmux is missing: run scripts/setup.sh (Debian package tmux)');
  }
  writeFileSync(join(dir, 'a.img'), '');
  truncateSync(join(dir, 'a.img'), 16 << 20);
  writeFileSync(join(dir, 'b.img'), '');
  truncateSync(join(dir, 'b.img'), 8 << 20);
  const shell = "exec env -i HOME=\"$HOME\" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TERM=xterm-256color PS1='vmmtest[$?]$ ' bash --norc --noprofile -i";
  // A private /tmp for the tmux server and everything it starts; tmux's own socket lives in `dir`.
  execFileSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c',
    'mount -t tmpfs -o size=256m tmpfs /tmp && exec tmux -S "$0" -f /dev/null new-session -d -s vmm -x 250 -y 50 -c "$1" "$2" \\; set-option -g history-limit 100000',
    tmuxSocket, dir, shell]);
});

/** The daemon the --daemonize test leaves running for the hang-up test. */
let daemonPid = 0;

afterAll(() => {
  try { tmux('kill-server'); } catch { /* already gone: the hang-up test ends it */ }
  if (daemonPid > 0 && alive(daemonPid)) process.kill(daemonPid, 'SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

describe('vmm on a terminal (tmux)', () => {
  it("the README's background example works as written, then fg takes the console and Ctrl-A x ends the VM", async () => {
    await until('the first prompt', () => prompts().length > 0, 30_000);
    const [start, ...ctlLines] = readmeExample();
    expect(start).toBe('pnpm vmm run --disk a.img --qmp /tmp/vmm.qmp &');
    expect(await run(start!)).toBe(0);
    await until('vmm announcing its QMP socket', () => pane().includes('vmm: QMP on /tmp/vmm.qmp'));
    // A background job that touched the terminal would now be "Stopped".
    expect(await run('jobs -l')).toBe(0);
    expect(pane()).toMatch(/\[1\]\+\s+\d+ Running\s+pnpm vmm run --disk a\.img --qmp \/tmp\/vmm\.qmp &/);
    expect(pane()).not.toMatch(/Stopped/);
    for (const line of ctlLines) expect(await run(line), line).toBe(0);
    const text = pane();
    expect(text).toMatch(/"role": "blk"/);
    expect(text).toMatch(/"id": "disk0"/);
    expect(text).toContain('"QMP"'); // socat's plain QMP: the greeting …
    expect(text).toMatch(/\{"return": ?\{\}\}/); // … and qmp_capabilities' reply
    expect(text).not.toMatch(/Stopped|ELIFECYCLE|Error|error:/);

    // Foreground: the held console shows, keys reach the guest, Ctrl-A x quits.
    const beforeFg = pane().length;
    const shown = prompts().length;
    type('fg');
    await until('the guest shell after fg', () => pane().slice(beforeFg).includes(GUEST_PROMPT));
    type('echo fg-$((6*7))');
    await until('the guest answering', () => pane().slice(beforeFg).includes('fg-42'), 120_000);
    tmux('send-keys', '-t', 'vmm', 'C-a', 'x');
    const status = await until('the shell back after Ctrl-A x', () => (prompts().length > shown ? prompts().at(-1)! : undefined), 120_000);
    expect(status).toBe(0);
    expect(await run('test -e /tmp/vmm.qmp')).toBe(1);
  });

  it('Ctrl-C ends a foreground VM (--console none) with a quiet log', async () => {
    const log = join(dir, 'ctrl-c.log');
    const pidfile = join(dir, 'ctrl-c.pid');
    const before = prompts().length;
    type('pnpm vmm run --disk a.img --qmp /tmp/vmm.qmp --console none --log-level info --pidfile ctrl-c.pid 2>ctrl-c.log');
    await until('the disk in use', () => existsSync(log) && readFileSync(log, 'utf8').includes('"msg":"rings started"'));
    const pid = readPid(pidfile);
    tmux('send-keys', '-t', 'vmm', 'C-c');
    await until('the shell back after Ctrl-C', () => prompts().length > before, 120_000);
    await waitGone([pid]);
    await expectQuietShutdown(readFileSync(log, 'utf8'), { signal: 'SIGINT' });
    expect(existsSync(pidfile), 'pidfile removed').toBe(false);
  });

  it('--daemonize gives the prompt back once the VM is up; vmm ctl console attaches on this terminal and Ctrl-] detaches', async () => {
    // Paths under `dir`, outside the private /tmp: the hang-up test below checks on this daemon from outside.
    expect(await run('pnpm vmm run --daemonize --pidfile daemon.pid --qmp daemon.qmp --console unix:daemon.console --disk a.img', BOOT_MS)).toBe(0);
    const pid = readPid(join(dir, 'daemon.pid'));
    daemonPid = pid;
    expect(existsSync(join(dir, 'daemon.qmp'))).toBe(true);
    const before = pane().length;
    const shown = prompts().length;
    type('pnpm vmm ctl console daemon.console');
    await until('the attach message', () => pane().slice(before).includes('Ctrl-] detaches'), 60_000);
    // Enter until the guest's shell prompt shows (it may still be booting).
    await until('the guest shell on the attached console', () => {
      if (pane().slice(before).includes(GUEST_PROMPT)) return true;
      tmux('send-keys', '-t', 'vmm', 'Enter');
      return undefined;
    });
    type('echo attached-$((6*7))');
    await until('the guest answering', () => pane().slice(before).includes('attached-42'), 120_000);
    tmux('send-keys', '-t', 'vmm', 'C-]');
    const status = await until('the shell back after Ctrl-]', () => (prompts().length > shown ? prompts().at(-1)! : undefined), 60_000);
    expect(status).toBe(0);
    expect(pane().slice(before)).toContain('vmm: detached from the console');
    expect(alive(pid), 'detaching leaves the VM running').toBe(true);
  });

  it('a terminal hang-up (tmux kill-session) ends a VM on the console with a quiet log, and not a daemonized one', async () => {
    const log = join(dir, 'hangup.log');
    const pidfile = join(dir, 'hangup.pid');
    const beforeRun = pane().length;
    type('pnpm vmm run --disk a.img --qmp /tmp/vmm.qmp --log-level info --pidfile hangup.pid 2>hangup.log');
    await until('the disk in use', () => existsSync(log) && readFileSync(log, 'utf8').includes('"msg":"rings started"'));
    await until('the guest shell', () => pane().slice(beforeRun).includes(GUEST_PROMPT));
    const pid = readPid(pidfile);
    tmux('kill-session', '-t', 'vmm');
    await waitGone([pid]);
    await expectQuietShutdown(readFileSync(log, 'utf8'), { signal: 'SIGHUP' });
    expect(existsSync(pidfile), 'pidfile removed').toBe(false);
    // The daemon has no terminal: the hang-up did not reach it.
    expect(daemonPid, 'the daemon test ran').toBeGreaterThan(0);
    expect(alive(daemonPid)).toBe(true);
    const c = await QmpClient.connect(join(dir, 'daemon.qmp'));
    expect(await c.cmd('quit')).toEqual({ return: {} });
    await waitGone([daemonPid]);
    daemonPid = 0;
  });
});
