// The NIC side of a switch attachment: connect to vmm-switch's socket, ask
// for a port, map the link it sends, and hand the device a RingPort. When
// the switch goes away (killed, restarted) the device is unplugged (frames
// it sends are dropped and counted, as with a pulled cable) and the
// attachment reconnects until a switch answers again.

import { closeFd, unixConnect, watchReadable, type FdWatch, type Logger } from '@vmm/core';
import { attachLinkEnd, RingPort } from './ring-port.ts';
import { decodeReply, MessageReader, sendMessage, type StatsReply } from './switch-protocol.ts';

export interface SwitchAttachmentOptions {
  socketPath: string;
  name: string;
  mac: string;
  log: Logger;
  /** Called with the new port after each (re)attach, and with null when the switch went away. */
  onPort: (port: RingPort | null) => void;
  /** Delay between reconnection attempts (default 200 ms). */
  retryMs?: number;
  /** A reconnection attempt found nobody listening (the switch died): e.g. start it again. */
  onUnreachable?: () => void;
}

export class SwitchAttachment {
  private readonly o: SwitchAttachmentOptions;
  private fd = -1;
  private watch: FdWatch | null = null;
  private reader = new MessageReader();
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  port: RingPort | null = null;
  /** Times a port was obtained (1 after the first attach). */
  attaches = 0;
  private firstAttach: { resolve: () => void; reject: (e: Error) => void } | null = null;

  constructor(o: SwitchAttachmentOptions) {
    this.o = o;
  }

  /** Connect and attach; resolves on the first port, rejects if the switch refuses the first attempt. Reconnects on its own afterwards. */
  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.firstAttach = { resolve, reject };
      this.tryConnect();
    });
  }

  private tryConnect(): void {
    this.timer = null;
    if (this.closed) return;
    try {
      this.fd = unixConnect(this.o.socketPath);
    } catch (e) {
      if (this.firstAttach) {
        this.firstAttach.reject(new Error(`cannot reach switch at ${this.o.socketPath}: ${(e as Error).message}`));
        this.firstAttach = null;
        return;
      }
      this.o.onUnreachable?.();
      this.retry();
      return;
    }
    this.reader = new MessageReader();
    this.watch = watchReadable(this.fd, () => this.onReadable());
    sendMessage(this.fd, { type: 'attach', name: this.o.name, mac: this.o.mac });
  }

  private retry(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => this.tryConnect(), this.o.retryMs ?? 200);
  }

  private onReadable(): void {
    let r;
    try {
      r = this.reader.read(this.fd);
      for (const body of r.bodies) {
        const m = decodeReply(body);
        if (m.type === 'attached') {
          const port = new RingPort(attachLinkEnd(this.reader.takeFds()));
          this.port = port;
          this.attaches++;
          this.o.log.info({ port: m.port, ringBytes: m.ringBytes, capacity: m.capacity, attaches: this.attaches }, 'attached to switch');
          this.o.onPort(port);
          this.firstAttach?.resolve();
          this.firstAttach = null;
        } else if (m.type === 'error') throw new Error(`switch refused: ${m.message}`);
      }
    } catch (e) {
      this.o.log.error({ err: (e as Error).message }, 'switch attachment failed');
      this.reader.closeFds();
      if (this.firstAttach) {
        this.firstAttach.reject(e as Error);
        this.firstAttach = null;
        this.closed = true;
      }
      r = { closed: true };
    }
    if (r.closed) this.lost();
  }

  private lost(): void {
    this.watch?.close();
    this.watch = null;
    if (this.fd >= 0) closeFd(this.fd);
    this.fd = -1;
    if (this.port) {
      this.o.log.warn('switch went away; reconnecting');
      this.port = null;
      this.o.onPort(null);
    }
    this.retry();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.watch?.close();
    if (this.fd >= 0) closeFd(this.fd);
    this.fd = -1;
    this.port?.close();
    this.port = null;
  }
}

/** Ask a switch for its counters and address table (tests, diagnostics). */
export async function querySwitch(socketPath: string, timeoutMs = 5000): Promise<StatsReply> {
  const fd = unixConnect(socketPath);
  const reader = new MessageReader();
  try {
    sendMessage(fd, { type: 'stats' });
    return await new Promise<StatsReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        w.close();
        reject(new Error(`switch at ${socketPath} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      const w = watchReadable(fd, () => {
        try {
          const r = reader.read(fd);
          reader.closeFds();
          for (const b of r.bodies) {
            const m = decodeReply(b);
            if (m.type === 'stats-reply') {
              clearTimeout(timer);
              w.close();
              resolve(m);
              return;
            }
          }
          if (r.closed) throw new Error('switch closed the connection');
        } catch (e) {
          clearTimeout(timer);
          w.close();
          reject(e as Error);
        }
      });
    });
  } finally {
    closeFd(fd);
  }
}
