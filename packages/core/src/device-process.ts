// One abstraction for every device process (STYLE.md §8): spawn a back-end
// executable, wait for its ready handshake, observe its health (exit or
// signal), stop it with SIGTERM then SIGKILL after a grace period, restart it.
//
// Handshake: the child calls reportReady() once its socket is listening,
// which sends {type: 'vmm-ready'} over the Node IPC channel execa opens.
// A child that exits or stays silent past the deadline fails start().
//
// Lifetime: a device process lives exactly as long as its orchestrator says.
// It runs in a session of its own (setsid), so the signals a terminal sends
// to its foreground job or on hang-up (Ctrl-C's SIGINT, SIGHUP when the
// window or ssh session closes, SIGTSTP) reach only the orchestrator, which
// then stops the devices in order; and installDeviceProcessSignals() arms
// PR_SET_PDEATHSIG, so a device process also ends when its orchestrator dies
// without a word (SIGKILL). QEMU's vhost-user back-ends are left to whoever
// started them; here that is always the orchestrator.
//
// Logs: `pid` is always the pid of the process that writes the line (the
// logger's base); lines about a device process carry `device` (its name)
// and `devicePid`.

import { fileURLToPath } from 'node:url';
import type { ResultPromise } from 'execa';
import type { Logger } from 'pino';
import { VmmError } from './errors.ts';
import { parentPid, setParentDeathSignal } from './ffi.ts';
import { createLogger, writeLog } from './logger.ts';

/** Most stderr bytes held back from a child before its ready handshake (then relayed anyway). */
const HELD_STDERR_BYTES = 64 * 1024;

/** The orchestrator's pid, given to each device process so it can tell whether its parent is still the one that started it. */
const PARENT_PID_ENV = 'VMM_PARENT_PID';

export interface DeviceProcessOptions {
  /** Name used in logs and errors (e.g. "blk0"). */
  name: string;
  /** Executable (default: this Node binary) and its arguments (e.g. the backend's .ts entry point and flags). */
  command?: string;
  args: string[];
  env?: Record<string, string>;
  /** How long start() waits for the ready handshake (default 10 s). */
  readyTimeoutMs?: number;
  /** How long stop() waits after SIGTERM before SIGKILL (default 3 s). */
  stopGraceMs?: number;
  /** Where the child's stdout/stderr go (default: inherited, so its pino logs reach ours). */
  stdio?: 'inherit' | 'ignore';
  log?: Logger;
}

export interface ExitInfo {
  code: number | null;
  signal: string | null;
}

/**
 * The shared launcher of device processes (bin/run-ts.sh): finds the
 * project's pinned Node from any shell and applies the device processes'
 * runtime settings. Device bins exec it; DeviceProcess uses it for .ts entries.
 */
export const DEVICE_LAUNCHER = fileURLToPath(new URL('../bin/run-ts.sh', import.meta.url));

export class DeviceProcessError extends VmmError {
  constructor(message: string, code: string) {
    super(message, 'transient', code);
  }
}

/** The message type of a child's answer to DeviceProcess.request(). */
const CONTROL_REPLY = 'vmm-control-reply';

type Child = ResultPromise<{ ipc: true; reject: false }>;

export class DeviceProcess {
  readonly name: string;
  private readonly opts: DeviceProcessOptions;
  private readonly log: Logger;
  private child: Child | null = null;
  private exitPromise: Promise<ExitInfo> | null = null;
  private stopping = false;
  /** Information the child sent with its ready message. */
  readyInfo: Record<string, unknown> = {};
  /** Last exit observed (health). */
  lastExit: ExitInfo | null = null;
  /** Called when the process exits without stop() having been asked (a crash, a kill from outside). */
  onUnexpectedExit: ((info: ExitInfo) => void) | undefined;
  restarts = 0;
  /** The last 4 KiB the child wrote to stderr. */
  stderrTail = '';
  private lastRequestId = 0;

  constructor(opts: DeviceProcessOptions) {
    this.name = opts.name;
    this.opts = opts;
    this.log = opts.log ?? createLogger('device-process');
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== null && this.lastExit === null;
  }

  /** Spawn and wait for the ready handshake. */
  async start(): Promise<void> {
    // Loaded on first use: device processes import core too, and execa with its dependencies costs them RSS they never use.
    const { execa } = await import('execa');
    if (this.running) throw new DeviceProcessError(`${this.name} is already running (pid ${this.pid})`, 'ERR_DEVICE_PROCESS_RUNNING');
    this.lastExit = null;
    this.stopping = false;
    const stdio = this.opts.stdio ?? 'inherit';
    // A .ts entry goes through the device launcher (the same runtime settings as a device bin run from a shell).
    const viaLauncher = this.opts.command === undefined && this.opts.args[0]?.endsWith('.ts') === true;
    const child = execa(this.opts.command ?? (viaLauncher ? DEVICE_LAUNCHER : process.execPath), this.opts.args, {
      ipc: true,
      reject: false,
      stdin: 'ignore',
      stdout: stdio,
      // stderr is forwarded line by line (so the child's logs still reach
      // ours) and its tail kept, to say why a child died before it was ready.
      stderr: stdio === 'inherit' ? 'pipe' : stdio,
      env: { ...this.opts.env, [PARENT_PID_ENV]: String(process.pid) },
      // setsid(): the terminal's job-control and hang-up signals go to the
      // orchestrator only; it decides when a device process ends (see top).
      detached: true,
      cleanup: true,
    }) as Child;
    this.child = child;
    this.stderrTail = '';
    // Until the handshake, the child's stderr is held: if it dies before it
    // is ready, its plain last words become start()'s error (said once, by
    // whoever reports that error) and only its JSON log lines are relayed;
    // once ready, what was held and everything after is relayed as it comes.
    let held: Buffer[] | null = [];
    let heldBytes = 0;
    const release = (all: boolean): void => {
      if (held === null) return;
      const text = Buffer.concat(held);
      held = null;
      if (all) writeLog(text);
      else {
        const json = text.toString('utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => `${l}\n`).join('');
        if (json) writeLog(Buffer.from(json));
      }
    };
    child.stderr?.on('data', (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString('utf8')).slice(-4096);
      if (held === null) writeLog(d);
      else {
        held.push(d);
        heldBytes += d.length;
        if (heldBytes > HELD_STDERR_BYTES) release(true);
      }
    });
    this.exitPromise = child.then((r) => {
      const info: ExitInfo = { code: r.exitCode ?? null, signal: r.signal ?? null };
      this.lastExit = info;
      if (this.child === child) {
        const fields = { device: this.name, devicePid: child.pid, ...info };
        if (this.stopping) {
          release(true);
          this.log.info(fields, 'device process stopped');
        } else if (held !== null) {
          // Before its handshake: start() fails with the child's own words; that error is the report.
          release(false);
          this.log.debug(fields, 'device process exited before it was ready');
          this.onUnexpectedExit?.(info);
        } else {
          this.log.error(fields, 'device process exited unexpectedly');
          this.onUnexpectedExit?.(info);
        }
      }
      return info;
    });
    const timeout = this.opts.readyTimeoutMs ?? 10_000;
    await new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined = undefined;
      const onMessage = (m: unknown) => {
        if (typeof m === 'object' && m !== null && (m as { type?: unknown }).type === 'vmm-ready') {
          this.readyInfo = m as Record<string, unknown>;
          release(true);
          done();
          resolve();
        }
      };
      const done = () => {
        clearTimeout(timer);
        child.off('message', onMessage);
      };
      timer = setTimeout(() => {
        done();
        release(true);
        reject(new DeviceProcessError(`${this.name} sent no ready handshake within ${timeout} ms`, 'ERR_DEVICE_PROCESS_READY_TIMEOUT'));
        child.kill('SIGKILL');
      }, timeout);
      child.on('message', onMessage);
      void this.exitPromise!.then((info) => {
        done();
        // The child's own last words: its last plain (non-JSON-log) stderr line.
        const said = this.stderrTail.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('{')).at(-1);
        reject(new DeviceProcessError(`${this.name} exited before it was ready (code ${info.code}, signal ${info.signal})${said ? `: ${said}` : ''}`, 'ERR_DEVICE_PROCESS_EXITED'));
      });
    });
    const { type: _type, ...said } = this.readyInfo;
    this.log.info({ device: this.name, devicePid: child.pid, ...said }, 'device process ready');
  }

  /** Resolves when the current process exits. */
  exited(): Promise<ExitInfo> {
    if (this.exitPromise === null) throw new DeviceProcessError(`${this.name} was never started`, 'ERR_DEVICE_PROCESS_NOT_STARTED');
    return this.exitPromise;
  }

  /**
   * Send a control message to the running child over its IPC channel (fault
   * injection, for instance); the child handles it with onControlMessage().
   * false if no child is running.
   */
  send(message: Record<string, unknown>): boolean {
    if (!this.child || this.lastExit) return false;
    this.child.send({ type: 'vmm-control', ...message });
    return true;
  }

  /**
   * Ask the running child something over its IPC channel and wait for its
   * answer (a query such as virtio-blk's I/O counters): the child's
   * onControlMessage handler returns the answer. Rejects with a
   * DeviceProcessError if no child is running, if it exits first, if it does
   * not answer within `timeoutMs` (stopped with SIGSTOP, say), or with the
   * error the handler threw.
   */
  request(message: Record<string, unknown>, timeoutMs = 2000): Promise<unknown> {
    const child = this.child;
    if (!child || this.lastExit) return Promise.reject(new DeviceProcessError(`${this.name} is not running`, 'ERR_DEVICE_PROCESS_NOT_RUNNING'));
    const requestId = ++this.lastRequestId;
    return new Promise<unknown>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        child.off('message', onMessage);
      };
      const onMessage = (m: unknown): void => {
        const r = m as { type?: unknown; requestId?: unknown; error?: unknown; result?: unknown };
        if (typeof m !== 'object' || m === null || r.type !== CONTROL_REPLY || r.requestId !== requestId) return;
        done();
        if (typeof r.error === 'string') reject(new DeviceProcessError(`${this.name}: ${r.error}`, 'ERR_DEVICE_PROCESS_REQUEST_FAILED'));
        else resolve(r.result);
      };
      const timer = setTimeout(() => {
        done();
        reject(new DeviceProcessError(`${this.name} did not answer within ${timeoutMs} ms`, 'ERR_DEVICE_PROCESS_REQUEST_TIMEOUT'));
      }, timeoutMs);
      child.on('message', onMessage);
      void this.exitPromise!.then(() => {
        done();
        reject(new DeviceProcessError(`${this.name} exited before it answered`, 'ERR_DEVICE_PROCESS_EXITED'));
      });
      child.send({ type: 'vmm-control', requestId, ...message });
    });
  }

  /** Send a signal (fault injection: 'SIGKILL' to crash it, 'SIGSTOP' to stall it). */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child?.kill(signal);
  }

  /** SIGTERM, then SIGKILL if it has not exited after the grace period. */
  async stop(): Promise<ExitInfo> {
    if (this.child === null || this.exitPromise === null) throw new DeviceProcessError(`${this.name} was never started`, 'ERR_DEVICE_PROCESS_NOT_STARTED');
    if (this.lastExit) return this.lastExit;
    this.stopping = true;
    const child = this.child;
    child.kill('SIGTERM');
    const grace = this.opts.stopGraceMs ?? 3000;
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.log.warn({ device: this.name, devicePid: child.pid, graceMs: grace }, 'no exit after SIGTERM; SIGKILL');
        child.kill('SIGKILL');
        resolve();
      }, grace);
    });
    const info = await Promise.race([this.exitPromise, killed.then(() => this.exitPromise!)]);
    clearTimeout(timer);
    return info;
  }

  /** stop() if running, then start() again. */
  async restart(): Promise<void> {
    if (this.running) await this.stop();
    this.restarts++;
    await this.start();
  }
}

/** In a device process: tell the parent DeviceProcess we are ready (socket listening). */
export function reportReady(info: Record<string, unknown> = {}): void {
  process.send?.({ type: 'vmm-ready', ...info });
}

/**
 * In a device process: handle control messages the parent sends with
 * DeviceProcess.send() or .request(). For a request, what the handler
 * returns (or resolves to) is the answer, and what it throws is sent back as
 * the request's error.
 */
export function onControlMessage(handler: (message: Record<string, unknown>) => unknown): void {
  process.on('message', (m: unknown) => {
    if (typeof m !== 'object' || m === null || (m as { type?: unknown }).type !== 'vmm-control') return;
    const { requestId } = m as { requestId?: unknown };
    const answer = (reply: { result: unknown } | { error: string }): void => {
      if (typeof requestId === 'number') process.send?.({ type: CONTROL_REPLY, requestId, ...reply });
    };
    void (async () => handler(m as Record<string, unknown>))().then(
      (result) => answer({ result }),
      (e: unknown) => answer({ error: e instanceof Error ? e.message : String(e) }),
    );
  });
  // Listening must not keep the process alive on its own.
  process.channel?.unref();
}

/**
 * In a device process: on SIGTERM run `cleanup` then exit 0, so stop() ends
 * cleanly; also drop the IPC channel so it does not keep the process alive.
 * When started by a DeviceProcess, also end (the same way) when the
 * orchestrator does: PR_SET_PDEATHSIG delivers SIGTERM at its death, and a
 * parent that died before that was armed is noticed at once (getppid).
 */
export function installDeviceProcessSignals(cleanup: () => void): void {
  process.channel?.unref();
  let done = false;
  const end = (): void => {
    if (done) return;
    done = true;
    try {
      cleanup();
    } finally {
      process.exit(0);
    }
  };
  process.once('SIGTERM', end);
  const parent = process.env[PARENT_PID_ENV];
  // It names this process's parent only: a process this one starts on its own
  // (vmm-net's on-demand vmm-switch, which must outlive it) must not inherit it.
  delete process.env[PARENT_PID_ENV];
  if (parent !== undefined) {
    setParentDeathSignal('SIGTERM');
    if (parentPid() !== Number(parent)) setImmediate(end);
  }
}
