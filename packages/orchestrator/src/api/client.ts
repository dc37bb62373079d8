// `vmm ctl COMMAND [key=value …]`: a small QMP client for the management
// API, over the QMP unix socket (--qmp PATH) or the WebSocket API
// (--api PORT, token from --token-file or VMM_API_TOKEN).

import { readFileSync } from 'node:fs';
import net from 'node:net';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { argvErrorLine } from '@vmm/core';

export const CTL_USAGE = `usage: vmm ctl (--qmp PATH | --api PORT [--token-file F]) COMMAND [key=value ...]
  COMMAND is a QMP command (query-version, query-name, query-status, query-cpus-fast,
  query-block, query-blockstats, query-nics, query-nic-stats, query-processes, query-iommu, query-commands, stop, cont,
  system_reset, system_powerdown, quit, device_add, device_del, inject-fault).
  Arguments are key=value; values that parse as JSON (numbers, true, false, objects) are sent as such.
  Prints the command's "return" as JSON; an error prints its class and description and exits 1.
usage: vmm ctl console PATH
  Attach to the serial console of a VM started with --console unix:PATH; Ctrl-] detaches.`;

export class CtlUsageError extends Error {
  readonly code = 'ERR_USAGE';
}

/** `["id=vdb", "readonly=true", "count=3"]` → `{ id: "vdb", readonly: true, count: 3 }`. */
export function parseCommandArgs(pairs: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new CtlUsageError(`vmm ctl: argument '${p}' is not key=value`);
    const raw = p.slice(eq + 1);
    let value: unknown = raw;
    if (/^(-?\d+(\.\d+)?|true|false|null|\{.*\}|\[.*\])$/.test(raw)) {
      try { value = JSON.parse(raw); } catch { value = raw; }
    }
    out[p.slice(0, eq)] = value;
  }
  return out;
}

type Json = Record<string, unknown>;

/**
 * A QMP client on a unix socket (QEMU docs/interop/qmp-spec.rst): reads the
 * greeting, negotiates capabilities, then sends commands one at a time and
 * keeps the events that arrive in between. `vmm ctl` and the end-to-end
 * tests use it.
 */
export class QmpClient {
  readonly events: Json[] = [];
  greeting: Json = {};
  private readonly sock: net.Socket;
  private readonly replies: Json[] = [];
  private readonly failed: Promise<never>;
  private wake: (() => void) | undefined;
  /** Set once vmm has closed the connection (it is shutting down): waits then fail instead of hanging. */
  private ended = false;

  private constructor(path: string) {
    this.sock = net.connect(path);
    this.sock.setEncoding('utf8');
    let buf = '';
    this.sock.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const obj = JSON.parse(buf.slice(0, nl)) as Json;
        buf = buf.slice(nl + 1);
        ('event' in obj ? this.events : this.replies).push(obj);
        this.wake?.();
      }
    });
    this.sock.on('close', () => { this.ended = true; this.wake?.(); });
    this.failed = new Promise<never>((_, reject) => this.sock.once('error', (e) => reject(new Error(`vmm ctl: cannot connect to ${path}: ${e.message}`))));
    this.failed.catch(() => {});
  }

  static async connect(path: string): Promise<QmpClient> {
    const c = new QmpClient(path);
    while (c.replies.length === 0) await c.wait();
    c.greeting = c.replies.shift()!;
    await c.cmd('qmp_capabilities');
    return c;
  }

  /** Resolves at the next message, or after 500 ms (so event waits can time out); rejects if the socket failed or closed. */
  private wait(): Promise<void> {
    if (this.ended) return Promise.reject(new Error('vmm closed the QMP connection (the VM has shut down)'));
    return Promise.race([new Promise<void>((r) => { this.wake = r; setTimeout(r, 500).unref(); }), this.failed]);
  }

  /** Send one command and return its reply ({return} or {error}). */
  async cmd(execute: string, args?: Json): Promise<Json> {
    this.sock.write(JSON.stringify({ execute, ...(args ? { arguments: args } : {}) }) + '\n');
    while (this.replies.length === 0) await this.wait();
    return this.replies.shift()!;
  }

  /** Wait for (and take) the next event called `name` (or any of the names). */
  async event(name: string | string[], timeoutMs = 120_000): Promise<Json> {
    const names = typeof name === 'string' ? [name] : name;
    const t0 = Date.now();
    for (;;) {
      const i = this.events.findIndex((e) => names.includes(String(e.event)));
      if (i >= 0) return this.events.splice(i, 1)[0]!;
      if (Date.now() - t0 > timeoutMs) throw new Error(`no ${name} event within ${timeoutMs} ms`);
      await this.wait();
    }
  }

  close(): void {
    this.sock.end();
  }
}

async function viaQmp(path: string, request: { execute: string; arguments?: Json }): Promise<Json> {
  const c = await QmpClient.connect(path);
  try {
    return await c.cmd(request.execute, request.arguments);
  } finally {
    c.close();
  }
}

async function viaWebSocket(port: number, token: string, request: object): Promise<Record<string, unknown>> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { authorization: `Bearer ${token}` } });
  return new Promise((resolve, reject) => {
    let greeted = false;
    ws.on('unexpected-response', (_q, res) => reject(new Error(`vmm ctl: API refused the connection (HTTP ${res.statusCode})`)));
    ws.on('error', (e) => reject(new Error(`vmm ctl: cannot connect to 127.0.0.1:${port}: ${e.message}`)));
    ws.on('message', (d) => {
      const obj = JSON.parse(d.toString()) as Record<string, unknown>;
      if (!greeted) { greeted = true; ws.send(JSON.stringify(request)); return; }
      if ('event' in obj) return;
      ws.close();
      resolve(obj);
    });
  });
}

/** Runs `vmm ctl`; returns the process exit code. */
export async function runCtl(argv: string[], out: (s: string) => void, err: (s: string) => void): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { qmp: { type: 'string' }, api: { type: 'string' }, 'token-file': { type: 'string' }, help: { type: 'boolean' } },
    });
  } catch (e) {
    err(`vmm ctl: ${argvErrorLine(e)} (vmm ctl --help)`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) { out(CTL_USAGE); return 0; }
  const [command, ...rest] = positionals;
  try {
    if (!command) throw new CtlUsageError(`vmm ctl: no command given\n${CTL_USAGE}`);
    const args = parseCommandArgs(rest);
    const request = { execute: command, ...(rest.length ? { arguments: args } : {}) };
    let reply: Record<string, unknown>;
    if (values.qmp) {
      reply = await viaQmp(values.qmp, request);
    } else if (values.api) {
      const port = Number(values.api);
      if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new CtlUsageError(`vmm ctl: --api ${values.api} is not a port number`);
      const token = values['token-file'] ? readFileSync(values['token-file'], 'utf8').trim() : process.env.VMM_API_TOKEN;
      if (!token) throw new CtlUsageError('vmm ctl: --api needs --token-file F or VMM_API_TOKEN');
      reply = await viaWebSocket(port, token, request);
    } else {
      throw new CtlUsageError('vmm ctl: say where the VM is: --qmp PATH or --api PORT');
    }
    if ('error' in reply) {
      const e = reply.error as { class: string; desc: string };
      err(`${e.class}: ${e.desc}`);
      return 1;
    }
    out(JSON.stringify(reply.return, null, 2));
    return 0;
  } catch (e) {
    err((e as Error).message);
    return e instanceof CtlUsageError ? 2 : 1;
  }
}
