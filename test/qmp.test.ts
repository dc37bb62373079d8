// QMP as clients from the ecosystem speak it, vmm against QEMU in the same
// run: one booted vmm guest and one qemu-system-riscv64 -M virt guest, both
// running the same command over the same kind of disk, asked the same
// things by a client that is not vmm's own. The client writes the way QEMU's
// Python library (python-qemu-qmp) does: no newline after a command,
// "arguments" first, an "id" on every command, replies read as CRLF lines
// and matched by id, events taken as they come between replies. Answers are
// compared whole, after normalising only what legitimately differs (version
// numbers, thread ids, timestamps, QEMU's generated node names).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initrdWithExec, startGuestSession, type GuestSession } from '@vmm/orchestrator';
import { DEFAULT_ENGINE } from '@vmm/vcpu';
import { kitAndInitramfs, requireQemu } from './guest-helpers.ts';

type Json = Record<string, unknown>;

const NAME = 'qmp-e2e';
const SMP = 2;
// One 64 KiB write at offset 64 KiB, bypassing the page cache: a single
// request both guests' drivers send alike, so the write counters must match.
// (The marker is split so that only the command's output contains it.)
const CMD = 'dd if=/dev/zero of=/dev/vda bs=65536 count=1 seek=1 oflag=direct 2>/dev/null; echo @@IO-""DONE@@; sleep 3600';
const IO_DONE = '@@IO-DONE@@';

/** A QMP client in the manner of python-qemu-qmp: byte stream out, CRLF lines in. */
class LibraryStyleClient {
  /** Everything received after the greeting, in order. */
  readonly received: Json[] = [];
  greeting: Json = {};
  closed = false;
  private readonly sock: net.Socket;
  private seq = 0;
  private wake: (() => void) | null = null;

  private constructor(path: string) {
    this.sock = net.connect(path);
    let buf = '';
    this.sock.setEncoding('utf8');
    this.sock.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        if (line.trim()) this.received.push(JSON.parse(line) as Json);
      }
      this.wake?.();
    });
    this.sock.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    this.sock.on('error', () => {});
  }

  static async connect(path: string, negotiate = true): Promise<LibraryStyleClient> {
    const c = new LibraryStyleClient(path);
    c.greeting = await c.next();
    if (negotiate) {
      const r = await c.execute('qmp_capabilities');
      if (!('return' in r)) throw new Error(`negotiation failed: ${JSON.stringify(r)}`);
    }
    return c;
  }

  private async until(pred: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
    const t0 = Date.now();
    while (!pred()) {
      if (this.closed) throw new Error(`connection closed while waiting for ${what}`);
      if (Date.now() - t0 > timeoutMs) throw new Error(`no ${what} within ${timeoutMs} ms; got ${JSON.stringify(this.received.slice(-5))}`);
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 200).unref();
      });
    }
  }

  /** The next message of any kind. */
  async next(): Promise<Json> {
    await this.until(() => this.received.length > 0, 'message');
    return this.received.shift()!;
  }

  /** Run a command; returns what arrived up to and including its reply (events first, as they came). */
  async executeWithEvents(cmd: string, args: Json = {}): Promise<Json[]> {
    const id = `__qmp#${String(++this.seq).padStart(5, '0')}`;
    this.sock.write(JSON.stringify({ arguments: args, execute: cmd, id }));
    await this.until(() => this.received.some((m) => m.id === id), `reply to ${cmd}`);
    const i = this.received.findIndex((m) => m.id === id);
    return this.received.splice(0, i + 1);
  }

  /** Run a command; its reply (events stay queued). */
  async execute(cmd: string, args: Json = {}): Promise<Json> {
    const id = `__qmp#${String(++this.seq).padStart(5, '0')}`;
    this.sock.write(JSON.stringify({ arguments: args, execute: cmd, id }));
    await this.until(() => this.received.some((m) => m.id === id), `reply to ${cmd}`);
    const i = this.received.findIndex((m) => m.id === id);
    return this.received.splice(i, 1)[0]!;
  }

  /** Write raw bytes (in pieces, if given several) and collect the next `n` replies. */
  async raw(pieces: string[], n: number): Promise<Json[]> {
    for (const p of pieces) {
      this.sock.write(p);
      await new Promise((r) => setTimeout(r, 20));
    }
    const replies = (): Json[] => this.received.filter((m) => !('event' in m));
    await this.until(() => replies().length >= n, `${n} replies to ${JSON.stringify(pieces)}`);
    const out: Json[] = [];
    while (out.length < n) {
      const i = this.received.findIndex((m) => !('event' in m));
      out.push(this.received.splice(i, 1)[0]!);
    }
    return out;
  }

  async waitClosed(timeoutMs = 30_000): Promise<void> {
    await this.until(() => this.closed, 'the connection to close', timeoutMs);
  }

  close(): void {
    this.sock.destroy();
  }
}

/** Replace what legitimately differs between the two: timestamps. */
function normaliseEvents(msgs: Json[]): Json[] {
  return msgs.map((m) => ('event' in m ? { ...m, timestamp: '<timestamp>' } : m));
}

let dir: string;
let vmm: GuestSession;
let qemu: ChildProcess;
let qemuOut = '';
let qemuQmp: string;
let a: LibraryStyleClient; // vmm
let b: LibraryStyleClient; // QEMU

async function waitForText(get: () => string, text: string, what: string, timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  while (!get().includes(text)) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what} never printed ${text}; output so far:\n${get().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

beforeAll(async () => {
  requireQemu();
  dir = mkdtempSync(join(tmpdir(), 'vmm-qmp-e2e-'));
  const { kit, initramfs } = await kitAndInitramfs();
  const vmmDisk = join(dir, 'vmm.img');
  const qemuDisk = join(dir, 'qemu.img');
  writeFileSync(vmmDisk, Buffer.alloc(8 << 20));
  writeFileSync(qemuDisk, Buffer.alloc(8 << 20));
  const initrd = join(dir, 'exec.cpio');
  writeFileSync(initrd, (await initrdWithExec(initramfs, CMD)).initrd);
  qemuQmp = join(dir, 'qemu.qmp');
  // The reference: QEMU's riscv virt machine, the same disk as a virtio-blk
  // device with id disk0 (vmm's first disk's id), no default devices.
  qemu = spawn('qemu-system-riscv64', [
    '-M', 'virt', '-smp', String(SMP), '-m', '512M', '-nodefaults', '-display', 'none', '-serial', 'stdio', '-no-reboot',
    '-name', NAME, '-bios', kit.opensbi.fwDynamic, '-kernel', kit.kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet panic=-1',
    '-drive', `file=${qemuDisk},format=raw,if=none,id=disk0`, '-device', 'virtio-blk-device,drive=disk0,id=disk0',
    '-qmp', `unix:${qemuQmp},server=on,wait=off`,
  ], { stdio: ['pipe', 'pipe', 'pipe'] }); // stdin stays open: QEMU's stdio chardev stops at EOF
  qemu.stdout!.on('data', (d: Buffer) => (qemuOut += d.toString('latin1')));
  qemu.stderr!.on('data', (d: Buffer) => (qemuOut += d.toString('latin1')));
  vmm = await startGuestSession({ cmd: CMD, disks: [`${vmmDisk},format=raw`], smp: SMP, name: NAME });
  await Promise.all([
    waitForText(() => qemuOut, IO_DONE, 'QEMU', 300_000),
    vmm.waitFor(IO_DONE, 600_000),
  ]);
});

afterAll(async () => {
  a?.close();
  b?.close();
  qemu?.kill('SIGKILL');
  await vmm?.attached.close();
});

/** Ask both; return [vmm, QEMU]. */
async function both(cmd: string, args: Json = {}): Promise<[Json, Json]> {
  return [await a.execute(cmd, args), await b.execute(cmd, args)];
}

describe('QMP: vmm answers as qemu-system-riscv64 -M virt does', () => {
  it('greets and negotiates alike', async () => {
    // QEMU's QMP socket serves one client at a time: this one first, then the clients the other cases share.
    const fresh = await Promise.all([LibraryStyleClient.connect(vmm.qmpPath, false), LibraryStyleClient.connect(qemuQmp, false)]);
    const shape = (g: Json): unknown => {
      const q = g.QMP as { version: { qemu: Json; package: unknown }; capabilities: unknown[] };
      return { version: { qemu: Object.keys(q.version.qemu).sort(), package: typeof q.version.package }, capabilities: Array.isArray(q.capabilities) };
    };
    try {
      expect(shape(fresh[0].greeting)).toEqual(shape(fresh[1].greeting));
      // Before negotiation: the same refusal, id echoed; then the same acceptance; then the same refusal again.
      const ask = async (c: LibraryStyleClient): Promise<Json[]> => [await c.execute('query-status'), await c.execute('qmp_capabilities'), await c.execute('qmp_capabilities')];
      const [x, y] = [await ask(fresh[0]), await ask(fresh[1])];
      expect(x).toEqual(y);
      expect(x[0]).toMatchObject({ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } });
      expect(x[1]).toMatchObject({ return: {} });
    } finally {
      for (const c of fresh) c.close();
    }
    a = await LibraryStyleClient.connect(vmm.qmpPath);
    b = await LibraryStyleClient.connect(qemuQmp);
  });

  it('query-version, query-name, query-status: the same answers', async () => {
    const [va, vb] = await both('query-version');
    const version = (r: Json): unknown => {
      const v = r.return as { qemu: Record<string, number>; package: string };
      return { qemu: Object.fromEntries(Object.entries(v.qemu).map(([k, n]) => [k, Number.isInteger(n)])), package: typeof v.package, id: r.id };
    };
    expect(version(va)).toEqual(version(vb));
    // vmm's own version numbers (the orchestrator's package version), not QEMU's.
    const pkg = JSON.parse(readFileSync(new URL('../packages/orchestrator/package.json', import.meta.url), 'utf8')) as { version: string };
    const [maj, min, mic] = pkg.version.split('.').map(Number);
    expect(va.return).toEqual({ qemu: { major: maj, minor: min, micro: mic }, package: `vmm ${pkg.version}` });
    const [na, nb] = await both('query-name');
    expect(na).toEqual(nb);
    expect(na.return).toEqual({ name: NAME });
    const [sa, sb] = await both('query-status');
    expect(sa).toEqual(sb);
    expect(sa.return).toEqual({ status: 'running', singlestep: false, running: true });
  });

  it('query-cpus-fast: one entry per hart, real thread ids', async () => {
    const [ca, cb] = await both('query-cpus-fast');
    const cpus = (r: Json) => r.return as { 'thread-id': number; 'cpu-index': number; 'x-engine'?: string }[];
    // vmm's one extension: the engine each hart runs (QEMU's reply has none).
    for (const c of cpus(ca)) expect(c['x-engine']).toBe(DEFAULT_ENGINE);
    const tidless = (r: Json): unknown => ({ ...r, return: cpus(r).map(({ 'x-engine': _engine, ...c }) => ({ ...c, 'thread-id': '<tid>' })) });
    expect(tidless(ca)).toEqual(tidless(cb));
    expect(cpus(ca)).toHaveLength(SMP);
    // vmm's harts run in this process (the session's machine): each thread id is its hart's worker thread.
    for (const c of cpus(ca)) expect(readFileSync(`/proc/${process.pid}/task/${c['thread-id']}/comm`, 'utf8').trim()).toBe(`hart${c['cpu-index']}`);
    for (const c of cpus(cb)) expect(existsSync(`/proc/${qemu.pid}/task/${c['thread-id']}`)).toBe(true);
    expect(new Set(cpus(ca).map((c) => c['thread-id'])).size).toBe(SMP);
  });

  it("query-blockstats: the guest's I/O as counted by the device, in QEMU's shape", async () => {
    const [ra, rb] = await both('query-blockstats');
    const [da, db] = [ra.return as Json[], rb.return as Json[]];
    expect(da).toHaveLength(1);
    expect(db).toHaveLength(1);
    const [ea, eb] = [da[0]!, { ...db[0]! }];
    // QEMU also reports the protocol node under the device (the image file); a vmm disk has none (the optional 'parent').
    expect(eb).toHaveProperty('parent');
    delete eb.parent;
    expect(Object.keys(ea).sort()).toEqual(Object.keys(eb).sort());
    expect(ea).toMatchObject({ device: 'disk0', qdev: 'disk0' });
    expect(eb).toMatchObject({ device: 'disk0', qdev: 'disk0' });
    const [sa, sb] = [ea.stats as Record<string, unknown>, eb.stats as Record<string, unknown>];
    expect(Object.keys(sa).sort()).toEqual(Object.keys(sb).sort());
    // The one direct 64 KiB write at 64 KiB, nothing failed or invalid, no flush, no discard: the same numbers.
    const same = ['wr_operations', 'wr_bytes', 'wr_highest_offset', 'flush_operations', 'unmap_operations', 'unmap_bytes', 'rd_merged', 'wr_merged', 'unmap_merged',
      'failed_rd_operations', 'failed_wr_operations', 'failed_flush_operations', 'failed_unmap_operations',
      'invalid_rd_operations', 'invalid_wr_operations', 'invalid_flush_operations', 'invalid_unmap_operations', 'account_invalid', 'account_failed', 'timed_stats'];
    for (const k of same) expect(sa[k], k).toEqual(sb[k]);
    expect(sa).toMatchObject({ wr_operations: 1, wr_bytes: 65536, wr_highest_offset: 131072 });
    // Reads (partition scan, readahead) depend on the driver's view of the disk; both read something, and timed it.
    for (const s of [sa, sb]) {
      expect(s.rd_operations).toBeGreaterThan(0);
      expect(s.rd_bytes).toBeGreaterThan(0);
      for (const k of ['rd_total_time_ns', 'wr_total_time_ns', 'idle_time_ns']) expect(Number.isInteger(s[k]) && (s[k] as number) > 0, k).toBe(true);
    }
  });

  it('query-commands: every command vmm lists is a QEMU command or one of its own, in the same shape', async () => {
    const [la, lb] = await both('query-commands');
    const names = (r: Json) => (r.return as Json[]).map((c) => { expect(Object.keys(c)).toEqual(['name']); return c.name as string; });
    const [na, nb] = [names(la), new Set(names(lb))];
    const own = ['query-processes', 'inject-fault', 'query-iommu', 'query-nics', 'query-nic-stats']; // vmm's own: query-iommu and query-nics are the IOMMU and NIC kinds' queries (DeviceKind.query), query-nic-stats the NIC processes' counters (DeviceKind.processQuery), as query-blockstats is to query-block
    for (const n of na) if (!own.includes(n)) expect(nb.has(n), n).toBe(true);
    for (const n of ['qmp_capabilities', 'query-version', 'query-name', 'query-status', 'query-cpus-fast', 'query-blockstats', 'query-block', 'query-commands', 'stop', 'cont', 'quit', 'system_reset', 'system_powerdown', 'device_add', 'device_del']) {
      expect(na, n).toContain(n);
    }
  });

  it('refuses bad commands and arguments with the same class and words', async () => {
    const asks: [string, Json][] = [
      ['no-such-command', {}],
      ['query-events', {}], // gone from QEMU 7.2 (query-qmp-schema replaced it); vmm has none either
      ['query-status', { x: 1 }],
      ['query-name', { x: 1 }],
      ['query-version', { verbose: true }],
      ['query-cpus-fast', { x: 1 }],
      ['query-blockstats', { x: 1 }],
      ['query-blockstats', { 'query-nodes': 'yes' }],
      ['device_del', {}],
      ['device_del', { id: 5 }],
      ['device_del', { id: 'nope' }],
      ['qmp_capabilities', {}],
      ['qmp_capabilities', { enable: 'oob' }],
      ['qmp_capabilities', { enable: [1] }],
      ['stop', { now: true }],
    ];
    for (const [cmd, args] of asks) {
      const [x, y] = await both(cmd, args);
      expect(x, `${cmd} ${JSON.stringify(args)}`).toEqual(y);
      expect(x).toHaveProperty('error.class');
    }
  });

  it('frames input as a stream of JSON values and answers garbage alike', async () => {
    const cases: [string[], number][] = [
      [['{"execute":"query-name","id":1}{"execute":"query-status","id":2}'], 2], // two in one write
      [['{"execute":', '\n  "query-name",\n', '  "id": 3}'], 1], // one over three writes and lines
      [["{'execute':'query-name','id':'single-quoted'}"], 1],
      [['{"execute":"query-name","id":"a\\"}b"}'], 1],
      [['{"a": @}'], 2],
      [['hello\n'], 1],
      [['}'], 1],
      [['[1,2]'], 1],
      [['42 '], 1],
      [['{"execute":1,"id":4}'], 1],
      [['{"id":5}'], 1],
      [['{"execute":"query-name","foo":1,"id":6}'], 1],
      [['{"execute":"query-name","arguments":[],"id":7}'], 1],
      [['{"exec-oob":"query-name","id":8}'], 1],
      [['{"execute":"query-name","id":{"nested":[1,{"k":null}]}}'], 1],
      [['{"a":1,"a":2}'], 1],
      [['{"a" 1}'], 1],
      [['{"execute":"query-name","id":"a\tb"}'], 2],
      [['"\\ud800"\n'], 1],
    ];
    for (const [pieces, n] of cases) {
      const x = await a.raw(pieces, n);
      const y = await b.raw(pieces, n);
      expect(x, JSON.stringify(pieces)).toEqual(y);
    }
  });

  it('sends events between replies as QEMU does: STOP before the reply to stop, RESUME before the reply to cont', async () => {
    const [sa, sb] = [normaliseEvents(await a.executeWithEvents('stop')), normaliseEvents(await b.executeWithEvents('stop'))];
    expect(sa).toEqual(sb);
    expect(sa.map((m) => m.event ?? 'reply')).toEqual(['STOP', 'reply']);
    expect((await both('query-status'))[0].return).toMatchObject({ status: 'paused', running: false });
    const [ca, cb] = [normaliseEvents(await a.executeWithEvents('cont')), normaliseEvents(await b.executeWithEvents('cont'))];
    expect(ca).toEqual(cb);
    expect(ca.map((m) => m.event ?? 'reply')).toEqual(['RESUME', 'reply']);
  });

  it('quit: the reply, then SHUTDOWN, then the connection closes', async () => {
    const [qa, qb] = [await a.execute('quit'), await b.execute('quit')];
    expect(qa).toEqual(qb);
    await Promise.all([a.waitClosed(), b.waitClosed()]);
    expect(normaliseEvents(a.received)).toEqual(normaliseEvents(b.received));
    expect(a.received).toMatchObject([{ event: 'SHUTDOWN', data: { guest: false, reason: 'host-qmp-quit' } }]);
  });
});
