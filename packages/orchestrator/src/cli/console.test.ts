// The console back-ends against the real thing: a real pseudo-terminal
// (opened from its /dev/pts path as a terminal program would), a real unix
// socket, a real file.
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tty from 'node:tty';
import { afterAll, describe, expect, it } from 'vitest';
import { closeFd, unixListen } from '@vmm/core';
import { ConsoleError, openConsole, parseConsoleSpec, type ConsoleIo, type HostConsole } from './console.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmm-console-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function io(announced: string[] = []): ConsoleIo {
  return { stdin: process.stdin, stdout: process.stdout, announce: (l) => announced.push(l), onQuit: () => {} };
}

/** Collects what a stream delivers until `pred` holds. */
function collect(stream: NodeJS.ReadableStream, pred: (s: string) => boolean): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    const on = (d: Buffer | string): void => {
      got += d.toString();
      if (pred(got)) {
        stream.off('data', on);
        resolve(got);
      }
    };
    stream.on('data', on);
  });
}

describe('--console values', () => {
  it('parses each choice and nothing else', () => {
    expect(parseConsoleSpec('stdio')).toEqual({ kind: 'stdio' });
    expect(parseConsoleSpec('none')).toEqual({ kind: 'none' });
    expect(parseConsoleSpec('pty')).toEqual({ kind: 'pty' });
    expect(parseConsoleSpec('unix:/a/b')).toEqual({ kind: 'unix', path: '/a/b' });
    expect(parseConsoleSpec('file:x:y')).toEqual({ kind: 'file', path: 'x:y' });
    for (const bad of ['', 'tty', 'unix:', 'file:', 'serial', 'stdio:x']) expect(parseConsoleSpec(bad)).toBeNull();
  });
});

describe('console back-ends', () => {
  it('pty: prints its path as QEMU does; bytes pass unchanged both ways (raw line discipline, no echo)', async () => {
    const announced: string[] = [];
    const c: HostConsole = await openConsole({ kind: 'pty' }, io(announced));
    const m = /^char device redirected to (\/dev\/pts\/\d+) \(label serial0\)$/.exec(announced[0] ?? '');
    expect(m, announced.join('\n')).not.toBeNull();
    const fd = openSync(m![1]!, 'r+');
    const user = new tty.ReadStream(fd);
    const userOut = new tty.WriteStream(fd);
    const echoed: string[] = [];
    c.input!.on('data', (d: Buffer) => echoed.push(d.toString('latin1')));
    // Guest output, with a bare \n and a \x03 that a cooked terminal would translate or act on.
    const seen = collect(user, (s) => s.includes('END'));
    c.write(new TextEncoder().encode('a\nb\x03END'));
    expect(await seen).toBe('a\nb\x03END');
    // Keys from the terminal program reach the guest as typed (\r stays \r).
    const keys = collect(c.input!, (s) => s.includes('!'));
    userOut.write('ls\r\x7f!');
    expect(await keys).toContain('ls\r\x7f!');
    // Nothing the guest wrote came back as its input (no echo).
    expect(echoed.join('')).not.toContain('END');
    user.destroy();
    c.close();
  });

  it('unix: clients get the recent output on attach and everything after; any client types; close removes the socket', async () => {
    const path = join(dir, 'console.sock');
    const c = await openConsole({ kind: 'unix', path }, io());
    c.write(new TextEncoder().encode('boot messages\r\nvmm:/$ '));
    const a = net.connect(path);
    expect(await collect(a, (s) => s.includes('vmm:/$ '))).toBe('boot messages\r\nvmm:/$ ');
    const b = net.connect(path);
    await collect(b, (s) => s.includes('vmm:/$ '));
    const both = Promise.all([collect(a, (s) => s.includes('42')), collect(b, (s) => s.includes('42'))]);
    c.write(new TextEncoder().encode('42\r\n'));
    expect(await both).toEqual(['42\r\n', '42\r\n']);
    const typed = collect(c.input!, (s) => s.includes('\r'));
    b.write('uname\r');
    expect(await typed).toBe('uname\r');
    // A client that has finished typing (socat at the end of its stdin) still gets the answer.
    const halfClosed = collect(b, (s) => s.includes('Linux'));
    b.end();
    await new Promise((r) => setTimeout(r, 50));
    c.write(new TextEncoder().encode('Linux\r\n'));
    expect(await halfClosed).toBe('Linux\r\n');
    const closed = new Promise((r) => a.on('close', r));
    c.close();
    await closed;
    b.destroy();
    expect(existsSync(path)).toBe(false);
  });

  it('unix: a path that exists and is not a socket is refused, naming it; a stale socket is replaced', async () => {
    const file = join(dir, 'not-a-socket');
    writeFileSync(file, 'keep me');
    await expect(openConsole({ kind: 'unix', path: file }, io())).rejects.toThrow(ConsoleError);
    await expect(openConsole({ kind: 'unix', path: file }, io())).rejects.toThrow(`--console unix:${file}: the path exists and is not a socket`);
    expect(readFileSync(file, 'utf8')).toBe('keep me');
    await expect(openConsole({ kind: 'unix', path: join(dir, 'no/such/dir/c.sock') }, io())).rejects.toThrow(/--console unix:.*no\/such\/dir/);
    const live = join(dir, 'live.sock');
    const first = await openConsole({ kind: 'unix', path: live }, io());
    await expect(openConsole({ kind: 'unix', path: live }, io())).rejects.toThrow(`--console unix:${live}: another process is serving that socket`);
    first.close();
    // Left behind as by a vmm that was SIGKILLed: the path stays, nobody listens.
    const stale = join(dir, 'stale.sock');
    closeFd(unixListen(stale));
    expect(existsSync(stale)).toBe(true);
    const second = await openConsole({ kind: 'unix', path: stale }, io());
    second.write(new TextEncoder().encode('second'));
    const client = net.connect(stale);
    expect(await collect(client, (s) => s.includes('second'))).toBe('second');
    client.destroy();
    second.close();
  });

  it('file: output lands in the file, which is truncated first', async () => {
    const path = join(dir, 'console.txt');
    writeFileSync(path, 'old contents that must go');
    const c = await openConsole({ kind: 'file', path }, io());
    expect(c.input).toBeNull();
    c.write(new TextEncoder().encode('Linux version 6.12\r\n'));
    c.close();
    expect(readFileSync(path, 'utf8')).toBe('Linux version 6.12\r\n');
    await expect(openConsole({ kind: 'file', path: join(dir, 'no/dir/x.txt') }, io())).rejects.toThrow(/--console file:.*ENOENT/);
  });
});
