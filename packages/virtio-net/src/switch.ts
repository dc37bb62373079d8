// vmm-switch's core: an L2 learning switch (IEEE 802.1D §7.8 filtering
// database: learn source addresses per port, age them out, flood unknown
// unicast, broadcast and multicast to every other port) whose ports are
// shared-memory links to NIC processes. A NIC that dies takes only its port
// with it; a full port ring drops frames for that port and counts them,
// never holding up the others.

import { existsSync, statSync, unlinkSync } from 'node:fs';
import { BusyPoll, closeFd, createLogger, unixAccept, unixListen, watchReadable, type FdWatch, type Logger } from '@vmm/core';
import { formatMac, isMulticast, macFromBytes, type Mac } from './ctrl.ts';
import { RingPort, createLink } from './ring-port.ts';
import { DEFAULT_RING_BYTES } from './ring.ts';
import { ETH_HLEN, MAX_GSO_FRAME, VNET_HDR_LEN } from './spec.ts';
import { decodeRequest, MessageReader, sendMessage, type PortStats, type StatsReply } from './switch-protocol.ts';

export interface SwitchOptions {
  socketPath: string;
  name: string;
  /** Forget a learned address after this long without a frame from it (802.1D default 300 s). */
  ageingMs?: number;
  /** Data area of each ring direction of a port, bytes (a power of 2). */
  ringBytes?: number;
  /** Busy-poll (0: off): after forwarding, keep polling every port's ring for up to this many µs before sleeping on doorbells. */
  busyPollUs?: number;
  log?: Logger;
}

/** Frames handled from one port before the others get a turn. */
const BATCH = 64;
/** Largest record in a ring: a vnet header and the largest GSO frame, so super-frames cross the switch whole. */
export const SWITCH_FRAME_CAPACITY = VNET_HDR_LEN + MAX_GSO_FRAME;

interface Port {
  id: number;
  name: string;
  mac: string;
  link: RingPort;
  conn: number;
  connWatch: FdWatch;
  stats: PortStats;
  scheduled: boolean;
  dirty: boolean;
}

interface Learned {
  port: Port;
  seen: number;
}

export class Switch {
  readonly name: string;
  readonly socketPath: string;
  private readonly log: Logger;
  private readonly ageingMs: number;
  private readonly ringBytes: number;
  private listenFd = -1;
  private listenWatch: FdWatch | null = null;
  private readonly ports = new Map<number, Port>();
  private readonly fdb = new Map<Mac, Learned>();
  private nextPort = 1;
  private flooded = 0;
  private sweep: NodeJS.Timeout | null = null;
  private readonly pending = new Set<{ fd: number; watch: FdWatch; reader: MessageReader }>();
  private socketIno = 0;
  private readonly poller: BusyPoll;
  /** The socket path no longer names our socket (another switch replaced it, or it was removed). */
  onTakenOver: (() => void) | undefined;

  constructor(o: SwitchOptions) {
    this.name = o.name;
    this.socketPath = o.socketPath;
    this.log = o.log ?? createLogger('switch', o.name);
    this.ageingMs = o.ageingMs ?? 300_000;
    this.ringBytes = o.ringBytes ?? DEFAULT_RING_BYTES;
    this.poller = new BusyPoll(o.busyPollUs ?? 0, {
      step: () => {
        let work = false;
        for (const p of this.ports.values()) {
          if (p.link.waiting === 0) continue;
          this.forward(p);
          work = true;
        }
        return work;
      },
      enter: () => {
        for (const p of this.ports.values()) p.link.setPolling(true);
      },
      // Doorbells back on; a port that received meanwhile is forwarded now (its last peek re-arms the doorbell).
      leave: () => {
        for (const p of this.ports.values()) {
          p.link.setPolling(false);
          if (p.link.peek() !== null) this.forward(p);
        }
      },
    });
  }

  listen(): void {
    if (existsSync(this.socketPath)) unlinkSync(this.socketPath);
    this.listenFd = unixListen(this.socketPath);
    this.listenWatch = watchReadable(this.listenFd, () => this.accept());
    this.socketIno = statSync(this.socketPath).ino;
    this.sweep = setInterval(() => {
      this.age(Date.now());
      if (this.onTakenOver && (!existsSync(this.socketPath) || statSync(this.socketPath).ino !== this.socketIno)) this.onTakenOver();
    }, Math.min(this.ageingMs, 2_000));
    this.sweep.unref();
    this.log.info({ socket: this.socketPath }, 'switch listening');
  }

  close(): void {
    this.listenWatch?.close();
    if (this.listenFd >= 0) closeFd(this.listenFd);
    this.listenFd = -1;
    if (this.sweep) clearInterval(this.sweep);
    for (const p of [...this.ports.values()]) this.detach(p, 'switch closing');
    for (const c of this.pending) {
      c.watch.close();
      closeFd(c.fd);
    }
    // Remove the socket only if it is still ours.
    if (existsSync(this.socketPath) && statSync(this.socketPath).ino === this.socketIno) unlinkSync(this.socketPath);
  }

  private accept(): void {
    for (let fd = unixAccept(this.listenFd); fd !== null; fd = unixAccept(this.listenFd)) {
      const reader = new MessageReader();
      const c = { fd, reader, watch: null as unknown as FdWatch };
      c.watch = watchReadable(fd, () => this.onControl(c));
      this.pending.add(c);
    }
  }

  /** A control connection that has not attached yet: it may ask for stats, or attach once. */
  private onControl(c: { fd: number; watch: FdWatch; reader: MessageReader }): void {
    let r;
    try {
      r = c.reader.read(c.fd);
      c.reader.closeFds(); // nobody sends us fds
      for (const body of r.bodies) {
        const m = decodeRequest(body);
        if (m.type === 'stats') sendMessage(c.fd, this.statsReply());
        else {
          this.pending.delete(c);
          c.watch.close();
          this.attach(c.fd, m.name, m.mac, c.reader);
          return;
        }
      }
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'bad control message; closing the connection');
      r = { closed: true };
    }
    if (r.closed) {
      this.pending.delete(c);
      c.watch.close();
      closeFd(c.fd);
    }
  }

  private attach(conn: number, name: string, mac: string, reader: MessageReader): void {
    const { end, peerFds, closeAfterSend } = createLink(this.ringBytes, SWITCH_FRAME_CAPACITY);
    const id = this.nextPort++;
    // A full port ring drops (and counts) instead of waiting, so the NIC never needs to ring us for space.
    const link = new RingPort(end, { waitForSpace: false });
    const p: Port = {
      id, name, mac, link, conn, connWatch: null as unknown as FdWatch, scheduled: false, dirty: false,
      stats: { port: id, name, mac, rx_packets: 0, rx_bytes: 0, rx_largest: 0, tx_packets: 0, tx_bytes: 0, tx_dropped: 0, rx_errors: 0 },
    };
    try {
      sendMessage(conn, { type: 'attached', port: id, ringBytes: this.ringBytes, capacity: SWITCH_FRAME_CAPACITY }, peerFds);
    } catch (e) {
      for (const f of closeAfterSend) closeFd(f);
      link.close();
      closeFd(conn);
      this.log.warn({ err: (e as Error).message, name }, 'attach reply failed');
      return;
    }
    for (const f of closeAfterSend) closeFd(f);
    // The NIC's end of the eventfds went with the message; ours are the same objects, so nothing else to close.
    this.ports.set(id, p);
    link.onReadable = () => this.schedule(p);
    p.connWatch = watchReadable(conn, () => {
      // Anything after attach, or the connection closing, ends the port: the NIC went away.
      let closed = true;
      try {
        const r = reader.read(conn);
        reader.closeFds();
        for (const body of r.bodies) {
          const m = decodeRequest(body);
          if (m.type === 'stats') sendMessage(conn, this.statsReply());
        }
        closed = r.closed;
      } catch (e) {
        this.log.warn({ err: (e as Error).message, port: id }, 'bad message on an attached port');
      }
      if (closed) this.detach(p, 'NIC disconnected');
    });
    this.log.info({ port: id, nic: name, mac }, 'NIC attached');
    this.schedule(p);
  }

  private detach(p: Port, why: string): void {
    if (!this.ports.delete(p.id)) return;
    p.connWatch.close();
    closeFd(p.conn);
    p.link.close();
    for (const [m, l] of this.fdb) if (l.port === p) this.fdb.delete(m);
    this.log.info({ nic: p.name, reason: why, ...p.stats }, 'NIC detached');
  }

  private schedule(p: Port): void {
    if (p.scheduled) return;
    p.scheduled = true;
    setImmediate(() => {
      p.scheduled = false;
      if (this.ports.has(p.id)) this.forward(p);
    });
  }

  /** Move up to BATCH frames from `src`'s ring to their destinations; reschedule if more wait. */
  private forward(src: Port): void {
    const now = Date.now();
    const touched: Port[] = [];
    let n = 0;
    for (; n < BATCH; n++) {
      const f = src.link.peek();
      if (f === null) break;
      if (f.length < VNET_HDR_LEN + ETH_HLEN) {
        src.stats.rx_errors++;
        src.link.release();
        continue;
      }
      src.stats.rx_packets++;
      src.stats.rx_bytes += f.length - VNET_HDR_LEN;
      src.stats.rx_largest = Math.max(src.stats.rx_largest, f.length - VNET_HDR_LEN);
      const dst = macFromBytes(f, VNET_HDR_LEN);
      const from = macFromBytes(f, VNET_HDR_LEN + 6);
      if (!isMulticast(from)) {
        const l = this.fdb.get(from);
        if (l === undefined || l.port !== src) {
          if (l !== undefined) this.log.info({ mac: formatMac(from), from: l.port.id, to: src.id }, 'address moved');
          this.fdb.set(from, { port: src, seen: now });
        } else l.seen = now;
      }
      const known = isMulticast(dst) ? undefined : this.fdb.get(dst);
      if (known !== undefined && now - known.seen <= this.ageingMs) {
        if (known.port !== src) this.send(known.port, f, touched);
      } else {
        this.flooded++;
        for (const p of this.ports.values()) if (p !== src) this.send(p, f, touched);
      }
      src.link.release();
    }
    for (const p of touched) {
      p.dirty = false;
      p.link.flush();
    }
    src.link.flush();
    if (n === BATCH) this.schedule(src);
    this.poller.run();
  }

  private send(p: Port, f: Uint8Array, touched: Port[]): void {
    const buf = p.link.reserve();
    if (buf === null) {
      p.stats.tx_dropped++;
      return;
    }
    buf.set(f);
    p.link.commit(f.length);
    p.stats.tx_packets++;
    p.stats.tx_bytes += f.length - VNET_HDR_LEN;
    if (!p.dirty) {
      p.dirty = true;
      touched.push(p);
    }
  }

  private age(now: number): void {
    for (const [m, l] of this.fdb) if (now - l.seen > this.ageingMs) this.fdb.delete(m);
  }

  statsReply(): StatsReply {
    const now = Date.now();
    return {
      type: 'stats-reply',
      pid: process.pid,
      ports: [...this.ports.values()].map((p) => ({ ...p.stats, rx_errors: p.stats.rx_errors + p.link.corrupt })),
      macs: [...this.fdb].map(([m, l]) => ({ mac: formatMac(m), port: l.port.id, ageMs: now - l.seen })),
      flooded: this.flooded,
    };
  }
}
