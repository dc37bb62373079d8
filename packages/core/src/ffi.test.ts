import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  closeFd, eventfdCreate, eventfdRead, eventfdWait, eventfdWrite, fdSize, isTerminal, memfdCreate, mmapShared, munmapBuffer, openPty, ownsTerminal, parentPid, pollFds, processGroup, terminalIsRaw,
  recvWithFds, sendWithFds, SyscallError, unixAccept, unixConnect, unixListen, unixSocketPair, waitReadable, watchReadable,
} from './ffi.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmm-ffi-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('eventfd', () => {
  it('counts writes and reads back the sum, nonblocking read returns null when empty', () => {
    const fd = eventfdCreate();
    expect(eventfdRead(fd)).toBeNull();
    eventfdWrite(fd, 2n);
    eventfdWrite(fd, 3n);
    expect(eventfdRead(fd)).toBe(5n);
    expect(eventfdRead(fd)).toBeNull();
    closeFd(fd);
  });
  it('blocking wait times out and then sees a signal', () => {
    const fd = eventfdCreate();
    expect(eventfdWait(fd, 0)).toBeNull();
    eventfdWrite(fd);
    expect(eventfdWait(fd, 1000)).toBe(1n);
    closeFd(fd);
  });
  it('a blocking eventfd read returns the counter', () => {
    const fd = eventfdCreate(7, { nonBlocking: false });
    expect(eventfdRead(fd)).toBe(7n);
    closeFd(fd);
  });
  it('wakes the event loop through watchReadable', async () => {
    const fd = eventfdCreate();
    let seen = 0n;
    const done = new Promise<void>((resolve) => {
      const w = watchReadable(fd, () => {
        seen += eventfdRead(fd) ?? 0n;
        if (seen >= 3n) {
          w.close();
          resolve();
        }
      });
    });
    setImmediate(() => eventfdWrite(fd, 3n));
    await done;
    expect(seen).toBe(3n);
    closeFd(fd);
  });
  it('refuses to watch what epoll cannot watch, or an fd watched twice, with typed errors (koffi would abort the process)', () => {
    const m = memfdCreate('not-pollable', 4096);
    expect(() => watchReadable(m, () => {})).toThrow(SyscallError);
    closeFd(m);
    expect(() => watchReadable(m, () => {})).toThrow(SyscallError);
    const fd = eventfdCreate();
    const w = watchReadable(fd, () => {});
    expect(() => watchReadable(fd, () => {})).toThrow(expect.objectContaining({ code: 'ERR_FD_WATCHED' }));
    w.close();
    watchReadable(fd, () => {}).close();
    closeFd(fd);
  });
  it('reports errors on a closed fd with a typed error', () => {
    const fd = eventfdCreate();
    closeFd(fd);
    expect(() => eventfdWrite(fd)).toThrow(SyscallError);
  });
});

describe('memfd and mmap', () => {
  it('two mappings of one memfd see the same bytes; munmap works', () => {
    const fd = memfdCreate('t', 8192);
    expect(fdSize(fd)).toBe(8192);
    const a = new Uint8Array(mmapShared(fd, 8192));
    const b = new Uint8Array(mmapShared(fd, 4096, 4096));
    a[4096 + 5] = 0xab;
    expect(b[5]).toBe(0xab);
    munmapBuffer(b.buffer as ArrayBuffer);
    munmapBuffer(a.buffer as ArrayBuffer);
    closeFd(fd);
  });
});

describe('unix sockets with SCM_RIGHTS', () => {
  it('passes bytes and fds over a socketpair, and sees EOF', () => {
    const [a, b] = unixSocketPair();
    const efd = eventfdCreate();
    sendWithFds(a, new Uint8Array([1, 2, 3]), [efd]);
    const buf = new Uint8Array(16);
    const r = recvWithFds(b, buf);
    expect(r?.bytes).toBe(3);
    expect(r?.fds.length).toBe(1);
    const received = r!.fds[0]!;
    expect(received).not.toBe(efd);
    eventfdWrite(received, 4n);
    expect(eventfdRead(efd)).toBe(4n);
    expect(recvWithFds(b, buf)).toBeNull();
    closeFd(a);
    expect(recvWithFds(b, buf)?.bytes).toBe(0);
    for (const f of [b, efd, received]) closeFd(f);
  });
  it('listen/connect/accept on a path', async () => {
    const path = join(dir, 'l.sock');
    const l = unixListen(path);
    expect(unixAccept(l)).toBeNull();
    const c = unixConnect(path);
    await waitReadable(l);
    const s = unixAccept(l);
    expect(s).not.toBeNull();
    sendWithFds(c, new Uint8Array([9]));
    expect(pollFds([{ fd: s!, events: 'in' }], 1000)[0]?.readable).toBe(true);
    const buf = new Uint8Array(4);
    expect(recvWithFds(s!, buf)?.bytes).toBe(1);
    expect(buf[0]).toBe(9);
    for (const f of [c, s!, l]) closeFd(f);
    expect(() => unixConnect(path)).toThrow(SyscallError);
  });
  it('an eventfd passed to a real child process is signalled back', async () => {
    const [mine, theirs] = unixSocketPair();
    const child = spawn(process.execPath, [join(import.meta.dirname, 'testing/fd-child.ts')], { stdio: ['ignore', 'inherit', 'inherit', theirs] });
    closeFd(theirs);
    const efd = eventfdCreate();
    sendWithFds(mine, new Uint8Array([5, 10, 20]), [efd]);
    let total = 0n;
    while (total < 5n) {
      await waitReadable(efd);
      total += eventfdRead(efd) ?? 0n;
    }
    await waitReadable(mine);
    const buf = new Uint8Array(4);
    expect(recvWithFds(mine, buf)?.bytes).toBe(1);
    expect(buf[0]).toBe(35);
    const [code] = await once(child, 'exit');
    expect(code).toBe(0);
    expect(total).toBe(5n);
    closeFd(mine);
    closeFd(efd);
  });
});

describe('terminals and process lifetime', () => {
  it('a new pty: a /dev/pts path, the master is a terminal; a terminal that is not our controlling one is ours to use', () => {
    const pty = openPty();
    expect(pty.path).toMatch(/^\/dev\/pts\/\d+$/);
    expect(existsSync(pty.path)).toBe(true);
    expect(isTerminal(pty.master)).toBe(true);
    const slave = openSync(pty.path, constants.O_RDWR | constants.O_NOCTTY);
    // Not our controlling terminal (tcgetpgrp: ENOTTY): job control cannot stop us for using it.
    expect(ownsTerminal(slave)).toBe(true);
    // openPty leaves it raw; stty (another process, as a shell would) can make it cooked again, and we see it.
    expect(terminalIsRaw(slave)).toBe(true);
    execFileSync('stty', ['-F', pty.path, 'sane']);
    expect(terminalIsRaw(slave)).toBe(false);
    execFileSync('stty', ['-F', pty.path, 'raw', '-echo']);
    expect(terminalIsRaw(pty.master)).toBe(true);
    closeSync(slave);
    closeFd(pty.master);
  });
  it('what is not a terminal is never ours; the process group and parent are the kernel\'s', () => {
    const fd = eventfdCreate();
    expect(isTerminal(fd)).toBe(false);
    expect(ownsTerminal(fd)).toBe(false);
    closeFd(fd);
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    expect(processGroup()).toBe(Number(fields[2]));
    expect(parentPid()).toBe(process.ppid);
  });
});
