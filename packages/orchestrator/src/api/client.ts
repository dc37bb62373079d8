// `vmm ctl COMMAND [key=value …]`: a small QMP client for the management
// API, over the QMP unix socket (--qmp PATH) or the WebSocket API
// (--api PORT, token from --token-file or VMM_API_TOKEN).

import { readFileSync } from 'node:fs';
import net from 'node:net';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

export const CTL_USAGE = `usage: vmm ctl (--qmp PATH | --api PORT [--token-file F]) COMMAND [key=value ...]
  COMMAND is a QMP command (query-status, stop, cont, system_reset, system_powerdown,
  quit, query-block, query-processes, device_add, device_del, inject-fault, query-commands).
  Arguments are key=value; values that parse as JSON (numbers, true, false, objects) are sent as such.
  Prints the command's "return" as JSON; an error prints its class and description and exits 1.`;

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

async function viaQmp(path: string, request: object): Promise<Record<string, unknown>> {
  const sock = net.connect(path);
  sock.setEncoding('utf8');
  const replies: Record<string, unknown>[] = [];
  let buf = '';
  let wake: (() => void) | undefined;
  sock.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const obj = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
      buf = buf.slice(nl + 1);
      if (!('event' in obj)) replies.push(obj);
      wake?.();
    }
  });
  const failed = new Promise<never>((_, reject) => sock.once('error', (e) => reject(new Error(`vmm ctl: cannot connect to ${path}: ${e.message}`))));
  const next = async (): Promise<Record<string, unknown>> => {
    while (replies.length === 0) await Promise.race([new Promise<void>((r) => { wake = r; }), failed]);
    return replies.shift()!;
  };
  await next(); // greeting
  sock.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
  await next();
  sock.write(JSON.stringify(request) + '\n');
  const reply = await next();
  sock.end();
  return reply;
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
    err(`vmm ctl: ${(e as Error).message}`);
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
