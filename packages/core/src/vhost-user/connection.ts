// One vhost-user connection over a nonblocking unix stream socket: frames
// messages out of the byte stream, keeps the SCM_RIGHTS fds with the message
// they arrived with, and sends messages with fds attached.
//
// Framing: the header is read with its own recvmsg; the kernel delivers the
// fds of a sendmsg() together with its first byte and never glues bytes from
// a later message carrying fds onto an earlier read, so fds received while
// reading a header belong to that message (as rust-vmm's vhost does it).

import { closeFd, MAX_FDS_PER_MESSAGE, recvWithFds, sendWithFds, watchReadable, type FdWatch } from '../ffi.ts';
import { decodeHeader, encodeMessage, VhostUserProtocolError, type Header, type Message } from './codec.ts';
import { HEADER_SIZE } from './protocol.ts';

export interface ConnectionEvents {
  /** A complete message (header validated, payload not yet). The handler owns `fds`. */
  onMessage(m: Message): void;
  /** The connection ended: `error` is set when it ended because of a protocol or OS error. */
  onClose(error?: Error): void;
}

export class VhostUserConnection {
  readonly fd: number;
  private watch: FdWatch | null;
  private readonly header = new Uint8Array(HEADER_SIZE);
  private headerGot = 0;
  private hdr: Header | null = null;
  private payload = new Uint8Array(0);
  private payloadGot = 0;
  private fds: number[] = [];
  private closed = false;
  private readonly events: ConnectionEvents;

  constructor(fd: number, events: ConnectionEvents) {
    this.fd = fd;
    this.events = events;
    this.watch = watchReadable(fd, () => this.onReadable());
  }

  get isClosed(): boolean {
    return this.closed;
  }

  send(request: number, flags: number, payload?: Uint8Array, fds: readonly number[] = []): void {
    if (this.closed) throw new VhostUserProtocolError('send on a closed vhost-user connection', 'ERR_VHOST_USER_CLOSED');
    sendWithFds(this.fd, encodeMessage(request, flags, payload), fds);
  }

  /** Close the socket; `error` is reported to onClose. Fds of a half-read message are closed. */
  close(error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.watch?.close();
    this.watch = null;
    for (const f of this.fds) closeFd(f);
    this.fds = [];
    closeFd(this.fd);
    this.events.onClose(error);
  }

  private onReadable(): void {
    try {
      while (!this.closed) {
        if (this.hdr === null) {
          const r = recvWithFds(this.fd, this.header.subarray(this.headerGot));
          if (r === null) return;
          this.fds.push(...r.fds);
          if (this.fds.length > MAX_FDS_PER_MESSAGE) throw new VhostUserProtocolError(`${this.fds.length} fds with one message`, 'ERR_VHOST_USER_FDS');
          if (r.bytes === 0) {
            this.close(this.headerGot > 0 ? new VhostUserProtocolError('peer closed mid-header', 'ERR_VHOST_USER_TRUNCATED') : undefined);
            return;
          }
          this.headerGot += r.bytes;
          if (this.headerGot < HEADER_SIZE) continue;
          this.hdr = decodeHeader(this.header);
          this.payload = new Uint8Array(this.hdr.size);
          this.payloadGot = 0;
        }
        if (this.payloadGot < this.payload.length) {
          const r = recvWithFds(this.fd, this.payload.subarray(this.payloadGot));
          if (r === null) return;
          // Fds arriving with payload bytes mean the sender attached them oddly; keep them with this message so validation counts them.
          this.fds.push(...r.fds);
          if (r.bytes === 0) {
            this.close(new VhostUserProtocolError('peer closed mid-payload', 'ERR_VHOST_USER_TRUNCATED'));
            return;
          }
          this.payloadGot += r.bytes;
          if (this.payloadGot < this.payload.length) continue;
        }
        const m: Message = { request: this.hdr.request, flags: this.hdr.flags, payload: this.payload, fds: this.fds };
        this.hdr = null;
        this.headerGot = 0;
        this.fds = [];
        this.events.onMessage(m);
      }
    } catch (e) {
      this.close(e as Error);
    }
  }
}
