// Protocol tests of the management API over real sockets. The VM behind it
// is a small state machine here; the end-to-end tests in test/ drive the
// same servers in front of a booted guest.
import { mkdtempSync, statSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { RunStatus, VmControl } from './control.ts';
import { QmpError } from './control.ts';
import { makeEvent } from './qmp.ts';
import { ApiHub, createToken } from './servers.ts';

class StateVm implements VmControl {
  state: RunStatus = 'running';
  name() { return 'test-vm'; }
  queryCpus() { return [{ index: 0, threadId: 4242, engine: 'jit' as const }, { index: 1, threadId: 4243, engine: 'interp' as const }]; }
  async queryBlockstats() { return []; }
  status(): RunStatus { return this.state; }
  async stop() { this.state = 'paused'; }
  async cont() { this.state = 'running'; }
  async reset() {}
  async powerdown() { this.state = 'shutdown'; }
  async quit() { this.state = 'shutdown'; }
  deviceQueries() { return ['query-block']; }
  queryDevices(command: string) { return command === 'query-block' ? [{ device: 'vda', inserted: { file: '/tmp/a.img', ro: false, drv: 'raw', encrypted: false } }] : []; }
  queryProcesses() { return []; }
  async deviceAdd() {}
  async deviceDel(id: string) { throw new QmpError('DeviceNotFound', `Device '${id}' not found`); }
  async injectFault() { return {}; }
}

const warnings: string[] = [];
const log = { info: () => {}, warn: (_o: object, m: string) => { warnings.push(m); } };
let hub: ApiHub | undefined;
afterEach(async () => { await hub?.close(); hub = undefined; });

function lines(sock: net.Socket): () => Promise<Record<string, unknown>> {
  let buf = '';
  const queue: Record<string, unknown>[] = [];
  const waiters: ((v: Record<string, unknown>) => void)[] = [];
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const obj = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
      buf = buf.slice(nl + 1);
      const w = waiters.shift();
      if (w) w(obj); else queue.push(obj);
    }
  });
  return () => new Promise((r) => { const q = queue.shift(); if (q) r(q); else waiters.push(r); });
}

describe('QMP over a unix socket', () => {
  it('greets, insists on qmp_capabilities, answers QMP-shaped, pushes events', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmm-qmp-'));
    const path = join(dir, 'qmp.sock');
    const vm = new StateVm();
    hub = new ApiHub(vm, log);
    await hub.listenQmp(path);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const sock = net.connect(path);
    const next = lines(sock);
    const greeting = await next();
    expect(greeting).toHaveProperty('QMP.capabilities');
    sock.write('{"execute":"query-status"}\n');
    expect(await next()).toEqual({ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } });
    sock.write('{"execute":"qmp_capabilities","id":1}\n');
    expect(await next()).toEqual({ return: {}, id: 1 });
    sock.write('{"execute":"stop","id":"a"}\n{"execute":"query-status","id":"b"}\n');
    expect(await next()).toEqual({ return: {}, id: 'a' });
    expect(await next()).toEqual({ return: { status: 'paused', running: false, singlestep: false }, id: 'b' });
    sock.write('{not json}\n');
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: "JSON parse error, invalid keyword 'not'" } });
    sock.write('{"execute":"no-such-thing"}\n');
    expect(await next()).toEqual({ error: { class: 'CommandNotFound', desc: 'The command no-such-thing has not been found' } });
    sock.write('{"execute":"device_del","arguments":{"id":"vdz"}}\n');
    expect(await next()).toEqual({ error: { class: 'DeviceNotFound', desc: "Device 'vdz' not found" } });
    sock.write('{"execute":"device_add","arguments":{"id":"x"}}\n');
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: "Parameter 'driver' is missing" } });
    sock.write('[1,2]\n');
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
    hub.emit(makeEvent('BACKEND_RESTARTED', { id: 'vda' }));
    const ev = await next();
    expect(ev).toMatchObject({ event: 'BACKEND_RESTARTED', data: { id: 'vda' } });
    expect(ev).toHaveProperty('timestamp.seconds');
    sock.end();
  });
});

describe('QMP input as a stream of JSON values (QEMU json-streamer semantics)', () => {
  async function connected(): Promise<{ sock: net.Socket; next: () => Promise<Record<string, unknown>> }> {
    const dir = mkdtempSync(join(tmpdir(), 'vmm-qmp-'));
    const path = join(dir, 'qmp.sock');
    hub = new ApiHub(new StateVm(), log);
    await hub.listenQmp(path);
    const sock = net.connect(path);
    const next = lines(sock);
    await next(); // greeting
    // The way QEMU's Python library writes: no newline, "arguments" first.
    sock.write('{"arguments":{},"execute":"qmp_capabilities","id":"neg"}');
    expect(await next()).toEqual({ return: {}, id: 'neg' });
    return { sock, next };
  }

  it('answers commands without a newline, split anywhere, several in one write, spanning lines', async () => {
    const { sock, next } = await connected();
    sock.write('{"execute":"query-name","id":1}');
    expect(await next()).toEqual({ return: { name: 'test-vm' }, id: 1 });
    const text = '{"execute":"query-status",\n "id":2}{"execute":"query-cpus-fast","id":3} {"execute":"query-version","id":4}';
    for (let i = 0; i < text.length; i += 7) sock.write(text.slice(i, i + 7));
    expect(await next()).toEqual({ return: { status: 'running', running: true, singlestep: false }, id: 2 });
    expect(await next()).toEqual({
      return: [
        { 'thread-id': 4242, props: { 'core-id': 0 }, 'qom-path': '/machine/soc0/harts[0]', 'cpu-index': 0, target: 'riscv64', 'x-engine': 'jit' },
        { 'thread-id': 4243, props: { 'core-id': 1 }, 'qom-path': '/machine/soc0/harts[1]', 'cpu-index': 1, target: 'riscv64', 'x-engine': 'interp' },
      ],
      id: 3,
    });
    const version = await next();
    expect(version).toMatchObject({ return: { qemu: { major: 0, minor: 1, micro: 0 }, package: 'vmm 0.1.0' }, id: 4 });
    sock.end();
  });

  it('answers garbage as QEMU does and keeps the connection', async () => {
    const { sock, next } = await connected();
    sock.write('{"a": @}');
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: "JSON parse error, stray '@'" } });
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: 'JSON parse error, expecting value' } });
    sock.write('hello\n42 ');
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: "JSON parse error, invalid keyword 'hello'" } });
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
    sock.write('{"execute":"query-name","id":"a\\"}b"}');
    expect(await next()).toEqual({ return: { name: 'test-vm' }, id: 'a"}b' });
    // Request checks (qmp-dispatch.c) and argument checks (the QAPI input visitor), with the id echoed.
    const asks: [string, string, string][] = [
      ['{"execute":1,"id":5}', 'GenericError', "QMP input member 'execute' must be a string"],
      ['{"execute":"query-name","arguments":[],"id":5}', 'GenericError', "QMP input member 'arguments' must be an object"],
      ['{"execute":"query-name","foo":1,"id":5}', 'GenericError', "QMP input member 'foo' is unexpected"],
      ['{"exec-oob":"query-name","id":5}', 'GenericError', "QMP input member 'exec-oob' is unexpected"],
      ['{"id":5}', 'GenericError', "QMP input lacks member 'execute'"],
      ['{"execute":"query-status","arguments":{"x":1},"id":5}', 'GenericError', "Parameter 'x' is unexpected"],
      ['{"execute":"device_del","id":5}', 'GenericError', "Parameter 'id' is missing"],
      ['{"execute":"device_del","arguments":{"id":5},"id":5}', 'GenericError', "Invalid parameter type for 'id', expected: string"],
      ['{"execute":"query-blockstats","arguments":{"query-nodes":"yes"},"id":5}', 'GenericError', "Invalid parameter type for 'query-nodes', expected: boolean"],
      ['{"execute":"qmp_capabilities","arguments":{"enable":"oob"},"id":5}', 'GenericError', "Invalid parameter type for 'enable', expected: array"],
      ['{"execute":"qmp_capabilities","id":5}', 'CommandNotFound', 'Capabilities negotiation is already complete, command ignored'],
      ['{"execute":"query-events","id":5}', 'CommandNotFound', 'The command query-events has not been found'],
    ];
    for (const [ask, cls, desc] of asks) {
      sock.write(ask);
      expect(await next(), ask).toEqual({ error: { class: cls, desc }, id: 5 });
    }
    sock.end();
  });

  it('refuses a value over the size limit without closing, then goes on', async () => {
    const { QMP_MAX_VALUE_BYTES } = await import('./servers.ts');
    const { sock, next } = await connected();
    sock.write(`{"execute":"query-name","id":"${'x'.repeat(QMP_MAX_VALUE_BYTES)}"}`);
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: 'JSON token size limit exceeded' } });
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: 'JSON parse error, expecting value' } });
    sock.write('{"execute":"query-name","id":9}');
    expect(await next()).toEqual({ return: { name: 'test-vm' }, id: 9 });
    sock.end();
  });

  it('answers a burst of requests in order, however fast they come (reading pauses while replies wait)', async () => {
    const { sock, next } = await connected();
    const N = 2000;
    sock.write(Array.from({ length: N }, (_, i) => `{"execute":"${i % 2 ? 'query-name' : 'query-status'}","id":${i}}`).join(''));
    for (let i = 0; i < N; i++) expect((await next()).id).toBe(i);
    sock.end();
  });

  it('answers everything a client sent before its EOF (echo … | socat), then closes', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmm-qmp-'));
    const path = join(dir, 'qmp.sock');
    const vm = new StateVm();
    vm.queryBlockstats = async () => { await new Promise((r) => setTimeout(r, 100)); return []; }; // an answer that takes a while
    hub = new ApiHub(vm, log);
    await hub.listenQmp(path);
    const sock = net.connect({ path, allowHalfOpen: true });
    let out = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => (out += d));
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    sock.end('{"execute":"qmp_capabilities"}{"execute":"query-blockstats","id":1}{"execute":"query-name","id":2}{"execute":"query-na');
    await closed;
    const replies = out.trim().split('\r\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(replies.slice(1)).toEqual([{ return: {} }, { return: [], id: 1 }, { return: { name: 'test-vm' }, id: 2 }]);
  });

  it('lists every command in query-commands', async () => {
    const { QMP_COMMANDS } = await import('./qmp.ts');
    const { sock, next } = await connected();
    sock.write('{"execute":"query-commands"}');
    const names = ((await next()).return as { name: string }[]).map((c) => c.name);
    expect(names).toEqual([...QMP_COMMANDS, 'query-block']); // vmm's own, then the device kinds' queries
    for (const c of ['qmp_capabilities', 'query-version', 'query-name', 'query-cpus-fast', 'query-blockstats', 'query-commands', 'query-status', 'device_add']) expect(names).toContain(c);
    sock.end();
  });
});

describe('WebSocket API', () => {
  it('refuses a client without the token and serves one with it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmm-ws-'));
    const tokenPath = join(dir, 'sub', 'token');
    const token = createToken(tokenPath);
    expect(readFileSync(tokenPath, 'utf8').trim()).toBe(token);
    expect(statSync(tokenPath).mode & 0o777).toBe(0o600);
    hub = new ApiHub(new StateVm(), log);
    const port = await hub.listenWebSocket(0, token);

    const refused = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => resolve(-1));
      ws.on('error', () => {});
    });
    expect(refused).toBe(401);
    expect(warnings.some((w) => /without a valid token/.test(w))).toBe(true);

    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { authorization: `Bearer ${token}` } });
    const msgs: Record<string, unknown>[] = [];
    const waiters: (() => void)[] = [];
    ws.on('message', (d) => { msgs.push(JSON.parse(d.toString()) as Record<string, unknown>); waiters.shift()?.(); });
    const next = async () => { while (msgs.length === 0) await new Promise<void>((r) => waiters.push(r)); return msgs.shift()!; };
    await new Promise((r) => ws.once('open', r));
    expect(await next()).toHaveProperty('QMP');
    ws.send(JSON.stringify({ execute: 'query-block', id: 7 }));
    expect(await next()).toMatchObject({ id: 7, return: [{ device: 'vda', inserted: { drv: 'raw', ro: false } }] });
    // A message is a complete input: several values are several requests; one left open is answered, not kept.
    ws.send('{"execute":"query-name","id":1}{"execute":"query-status","id":2}');
    expect(await next()).toEqual({ return: { name: 'test-vm' }, id: 1 });
    expect(await next()).toMatchObject({ id: 2, return: { status: 'running' } });
    ws.send('{"execute":"query-name"');
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: 'JSON parse error, premature EOI' } });
    ws.send('{"execute":"query-name","id":3}');
    expect(await next()).toEqual({ return: { name: 'test-vm' }, id: 3 });
    ws.close();
  });
});

describe('shutting down', () => {
  it('close() ends connected QMP and WebSocket clients after their last event instead of waiting for them', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmm-close-'));
    const path = join(dir, 'qmp.sock');
    const token = createToken(join(dir, 'token'));
    const h = new ApiHub(new StateVm(), log);
    await h.listenQmp(path);
    const port = await h.listenWebSocket(0, token);
    const sock = net.connect(path);
    const next = lines(sock);
    await next();
    sock.write('{"execute":"qmp_capabilities"}\n');
    await next();
    const sockClosed = new Promise<void>((r) => sock.on('close', () => r()));
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { authorization: `Bearer ${token}` } });
    const wsEvents: string[] = [];
    ws.on('message', (d) => { wsEvents.push((JSON.parse(d.toString()) as { event?: string }).event ?? ''); });
    const wsClosed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
    await new Promise((r) => ws.once('open', r));
    while (wsEvents.length === 0) await new Promise((r) => setTimeout(r, 5)); // the greeting

    h.emit(makeEvent('SHUTDOWN', { guest: true, reason: 'guest-shutdown' }));
    await h.close(); // neither client hangs up by itself
    expect(await next()).toMatchObject({ event: 'SHUTDOWN', data: { guest: true } });
    await sockClosed;
    expect(await wsClosed).toBe(1001);
    expect(wsEvents).toContain('SHUTDOWN');
    // Our own client: a command on a connection vmm has closed fails instead of waiting forever.
    const { QmpClient } = await import('./client.ts');
    const h2 = new ApiHub(new StateVm(), log);
    await h2.listenQmp(path);
    const c = await QmpClient.connect(path);
    await h2.close();
    await expect(c.cmd('query-status')).rejects.toThrow(/closed the QMP connection/);
  });
});

describe('vmm ctl', () => {
  it('parses key=value arguments and talks QMP', async () => {
    const { parseCommandArgs, runCtl } = await import('./client.ts');
    expect(parseCommandArgs(['id=vdb', 'count=3', 'ro=true', 'file=/a=b'])).toEqual({ id: 'vdb', count: 3, ro: true, file: '/a=b' });
    expect(() => parseCommandArgs(['nokey'])).toThrow(/not key=value/);
    const dir = mkdtempSync(join(tmpdir(), 'vmm-ctl-'));
    const path = join(dir, 'qmp.sock');
    const vm = new StateVm();
    hub = new ApiHub(vm, log);
    await hub.listenQmp(path);
    const out: string[] = [];
    const err: string[] = [];
    expect(await runCtl(['--qmp', path, 'stop'], (s) => out.push(s), (s) => err.push(s))).toBe(0);
    expect(vm.state).toBe('paused');
    expect(await runCtl(['--qmp', path, 'device_del', 'id=vdq'], (s) => out.push(s), (s) => err.push(s))).toBe(1);
    expect(err.pop()).toBe("DeviceNotFound: Device 'vdq' not found");
    expect(await runCtl(['--qmp', join(dir, 'nope.sock'), 'stop'], (s) => out.push(s), (s) => err.push(s))).toBe(1);
    expect(err.pop()).toMatch(/cannot connect/);
    expect(await runCtl(['stop'], (s) => out.push(s), (s) => err.push(s))).toBe(2);
  });
});
