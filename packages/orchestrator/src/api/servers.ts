// The management API's two transports: QMP on a unix socket (so QMP tools,
// client libraries and `socat` can drive vmm) and JSON over WebSocket on
// 127.0.0.1 guarded by a token. Both frame the input into JSON values the
// way QEMU does (json-stream.ts), hand each to a QmpSession, and push events
// to every client that finished its handshake.

import { randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import type { VmControl } from './control.ts';
import { JsonStream, type JsonStreamItem } from './json-stream.ts';
import { parseErrorReply, QMP_GREETING, QmpSession, type QmpEvent } from './qmp.ts';

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

/** The largest JSON value a client may send (QEMU allows 64 MiB; no vmm command needs more than a few hundred bytes). */
export const QMP_MAX_VALUE_BYTES = 1 << 20;
/** Requests waiting for their replies before the socket stops reading (QEMU's QMP_REQ_QUEUE_LEN_MAX is 8). */
const MAX_PENDING = 8;

/**
 * One connection's requests, answered one at a time in arrival order (a
 * slow command delays the replies after it, as in QEMU). A client that
 * sends faster than it reads is paused: reading stops while more than
 * MAX_PENDING requests wait or the socket's output is backed up.
 */
class ReplyQueue {
  private chain = Promise.resolve();
  private pending = 0;
  private readonly session: QmpSession;
  /** Writes one reply; false if the transport wants a 'drain' first. */
  private readonly write: (reply: Record<string, unknown>) => boolean;
  private readonly sock: net.Socket | undefined;

  constructor(session: QmpSession, write: (reply: Record<string, unknown>) => boolean, sock?: net.Socket) {
    this.session = session;
    this.write = write;
    this.sock = sock;
  }

  /** Resolves once every request so far has been answered. */
  idle(): Promise<void> {
    return this.chain;
  }

  push(item: JsonStreamItem): void {
    this.pending++;
    if (this.pending > MAX_PENDING) this.sock?.pause();
    this.chain = this.chain.then(async () => {
      const reply = 'value' in item ? await this.session.handle(item.value) : parseErrorReply(item.error);
      const sock = this.sock;
      if (!this.write(reply) && sock && !sock.destroyed) {
        await new Promise<void>((r) => {
          const go = (): void => { sock.off('drain', go); sock.off('close', go); r(); };
          sock.on('drain', go);
          sock.on('close', go);
        });
      }
      this.pending--;
      if (this.pending <= MAX_PENDING && this.sock?.isPaused()) this.sock.resume();
    });
  }
}

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

  /**
   * QMP over a unix socket: the greeting, then a stream of JSON values from
   * the client (json-stream.ts: no newline needed), one reply per value in
   * order, events in between, each line ending in CRLF as QEMU's do.
   */
  async listenQmp(path: string): Promise<void> {
    try { unlinkSync(path); } catch { /* no stale socket */ }
    // allowHalfOpen: a client that sends its commands and then EOF (`echo … | socat`) still gets every reply.
    const server = net.createServer({ allowHalfOpen: true }, (sock) => {
      const session = new QmpSession(this.vm, true);
      const client: Client = {
        send: (ev) => { if (session.ready) sock.write(JSON.stringify(ev) + '\r\n'); },
        end: (force) => { if (force) sock.destroy(); else sock.end(); },
      };
      this.clients.add(client);
      sock.write(JSON.stringify(QMP_GREETING) + '\r\n');
      const replies = new ReplyQueue(session, (reply) => sock.destroyed || sock.write(JSON.stringify(reply) + '\r\n'), sock);
      const stream = new JsonStream((item) => replies.push(item), { maxValueBytes: QMP_MAX_VALUE_BYTES });
      sock.on('data', (chunk: Buffer) => stream.feed(chunk));
      // End of the client's input: answer what came (an unfinished value is dropped, as QEMU drops it), then close.
      sock.on('end', () => void replies.idle().then(() => sock.end()));
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
      maxPayload: QMP_MAX_VALUE_BYTES,
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
      const replies = new ReplyQueue(session, (reply) => {
        ws.send(JSON.stringify(reply));
        return true;
      });
      // Each message is a complete input: what it leaves open is answered as QEMU answers input that ends early.
      const stream = new JsonStream((item) => replies.push(item), { maxValueBytes: QMP_MAX_VALUE_BYTES });
      ws.on('message', (data: Buffer) => {
        stream.feed(data);
        stream.flush();
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
