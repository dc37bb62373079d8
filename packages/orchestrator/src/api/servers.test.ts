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
    sock.write('{not json\n');
    const bad = await next();
    expect(bad).toHaveProperty('error.class', 'GenericError');
    expect(String((bad.error as { desc: string }).desc)).toMatch(/JSON parse error/);
    sock.write('{"execute":"no-such-thing"}\n');
    expect(await next()).toEqual({ error: { class: 'CommandNotFound', desc: 'The command no-such-thing has not been found' } });
    sock.write('{"execute":"device_del","arguments":{"id":"vdz"}}\n');
    expect(await next()).toEqual({ error: { class: 'DeviceNotFound', desc: "Device 'vdz' not found" } });
    sock.write('{"execute":"device_add","arguments":{"driver":"virtio-blk"}}\n');
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: "Parameter 'id' is missing or not a string" } });
    sock.write('[1,2]\n');
    expect(await next()).toEqual({ error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
    hub.emit(makeEvent('BACKEND_RESTARTED', { id: 'vda' }));
    const ev = await next();
    expect(ev).toMatchObject({ event: 'BACKEND_RESTARTED', data: { id: 'vda' } });
    expect(ev).toHaveProperty('timestamp.seconds');
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
