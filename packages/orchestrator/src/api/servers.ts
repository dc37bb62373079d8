// The management API's two transports: QMP's line protocol on a unix socket
// (so QMP tools and `socat` can drive vmm) and JSON over WebSocket on
// 127.0.0.1 guarded by a token. Both hand each text to a QmpSession and
// push events to every client that finished its handshake.

import { randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import type { VmControl } from './control.ts';
import { QMP_GREETING, QmpSession, type QmpEvent } from './qmp.ts';

/** The part of a pino logger the API uses. */
export interface ApiLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

interface Client {
  send(event: QmpEvent): void;
  /** End the connection after what was sent (vmm is going away); `force` drops it at once. */
  end(force: boolean): void;
}

/** How long connected clients get to read their last replies and events when vmm shuts down. */
const CLOSE_GRACE_MS = 1000;

export class ApiHub {
  private readonly clients = new Set<Client>();
  private readonly closers: (() => Promise<void>)[] = [];
  private readonly vm: VmControl;
  private readonly log: ApiLogger;

  constructor(vm: VmControl, log: ApiLogger) {
    this.vm = vm;
    this.log = log;
  }

  emit(event: QmpEvent): void {
    for (const c of this.clients) c.send(event);
  }

  /** QMP over a unix socket: greeting, then one JSON object per line each way. */
  async listenQmp(path: string): Promise<void> {
    try { unlinkSync(path); } catch { /* no stale socket */ }
    const server = net.createServer((sock) => {
      const session = new QmpSession(this.vm, true);
      const client: Client = {
        send: (ev) => { if (session.ready) sock.write(JSON.stringify(ev) + '\r\n'); },
        end: (force) => { if (force) sock.destroy(); else sock.end(); },
      };
      this.clients.add(client);
      sock.write(JSON.stringify(QMP_GREETING) + '\r\n');
      let buf = '';
      let chain = Promise.resolve();
      sock.setEncoding('utf8');
      sock.on('data', (chunk: string) => {
        buf += chunk;
        if (buf.length > 1 << 20) {
          this.log.warn({ bytes: buf.length }, 'QMP client sent an over-long line; closing');
          sock.destroy();
          return;
        }
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          // Replies go out in request order.
          chain = chain.then(async () => {
            const reply = await session.handle(line);
            if (!sock.destroyed) sock.write(JSON.stringify(reply) + '\r\n');
          });
        }
      });
      sock.on('close', () => this.clients.delete(client));
      sock.on('error', () => this.clients.delete(client));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    chmodSync(path, 0o600);
    this.log.info({ path }, 'QMP listening');
    this.closers.push(() => new Promise((r) => server.close(() => r())));
  }

  /**
   * WebSocket API on 127.0.0.1. The token comes as `Authorization: Bearer T`
   * or `?token=T`; without it the upgrade is refused (401) and logged.
   */
  async listenWebSocket(port: number, token: string): Promise<number> {
    const expected = Buffer.from(token);
    const wss = new WebSocketServer({
      host: '127.0.0.1',
      port,
      verifyClient: (info, cb) => {
        const url = new URL(info.req.url ?? '/', 'http://localhost');
        const header = info.req.headers.authorization;
        const given = header?.startsWith('Bearer ') ? header.slice(7) : url.searchParams.get('token') ?? '';
        const ok = given.length === expected.length && timingSafeEqual(Buffer.from(given), expected);
        if (!ok) this.log.warn({ remote: info.req.socket.remoteAddress }, 'management API: client without a valid token refused');
        cb(ok, 401, 'Unauthorized');
      },
    });
    await new Promise<void>((resolve, reject) => {
      wss.once('error', reject);
      wss.once('listening', () => resolve());
    });
    wss.on('connection', (ws: WebSocket) => {
      const session = new QmpSession(this.vm, false);
      const client: Client = {
        send: (ev) => ws.send(JSON.stringify(ev)),
        end: (force) => { if (force) ws.terminate(); else ws.close(1001, 'vmm is shutting down'); },
      };
      this.clients.add(client);
      ws.send(JSON.stringify(QMP_GREETING));
      ws.on('message', (data) => {
        void session.handle(data.toString()).then((reply) => ws.send(JSON.stringify(reply)));
      });
      ws.on('close', () => this.clients.delete(client));
    });
    const actual = (wss.address() as AddressInfo).port;
    this.log.info({ port: actual }, 'management API listening on 127.0.0.1');
    this.closers.push(() => new Promise((r) => wss.close(() => r())));
    return actual;
  }

  /**
   * Stop listening and end every connection (a server's close waits for its
   * connections, so a client that stays connected must not keep vmm alive):
   * clients get their pending replies and events, then CLOSE_GRACE_MS to go.
   */
  async close(): Promise<void> {
    const closing = Promise.all(this.closers.splice(0).map((c) => c()));
    for (const c of this.clients) c.end(false);
    const grace = setTimeout(() => { for (const c of this.clients) c.end(true); }, CLOSE_GRACE_MS);
    await closing;
    clearTimeout(grace);
  }
}

/** A fresh API token, written to `path` readable by the user only. */
export function createToken(path: string): string {
  const token = randomBytes(24).toString('hex');
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, token + '\n', { mode: 0o600 });
  chmodSync(path, 0o600);
  return token;
}
