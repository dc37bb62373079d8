import { describe, expect, it } from 'vitest';
import { UsageError, kernelCmdline, parseRunArgs, parseSize } from './args.ts';
import { EscapeFilter } from './console.ts';

describe('vmm run flags', () => {
  it('has the documented defaults', () => {
    const o = parseRunArgs([]);
    expect(o).toMatchObject({ smp: 1, memBytes: 512 * 2 ** 20, kernel: null, initrd: null, bios: { kind: 'builtin' }, exec: null, verbose: false, noReboot: false, logLevel: 'warn' });
    expect(kernelCmdline(o)).toBe('console=ttyS0 earlycon=sbi cryptomgr.notests');
  });

  it('parses every flag', () => {
    const o = parseRunArgs(['--smp', '4', '--mem', '1G', '--kernel', 'k', '--initrd', 'i', '--append', 'foo=1', '--bios', 'opensbi', '--dump-dtb', 'd.dtb', '--exec', 'nproc', '--log-level', 'debug']);
    expect(o).toMatchObject({ smp: 4, memBytes: 2 ** 30, kernel: 'k', initrd: 'i', bios: { kind: 'opensbi' }, dumpDtb: 'd.dtb', exec: 'nproc', logLevel: 'debug' });
    expect(kernelCmdline(o)).toBe('console=ttyS0 earlycon=sbi cryptomgr.notests panic=-1 quiet foo=1');
    expect(kernelCmdline({ ...o, verbose: true })).not.toContain('quiet');
    expect(parseRunArgs(['--no-reboot']).noReboot).toBe(true);
    expect(parseRunArgs([]).profile).toBe(false);
    expect(parseRunArgs(['--profile']).profile).toBe(true);
    expect(parseRunArgs(['--bios', '/x/fw.bin']).bios).toEqual({ kind: 'file', path: '/x/fw.bin' });
    const d = parseRunArgs(['--disk', 'a.img', '--disk', 'b.qcow2,format=qcow2,readonly,id=data', '--device', 'virtio-blk,file=c.img,queues=2', '--api-port', '0', '--qmp', '/tmp/q.sock', '--name', 'web1']);
    expect(d.devices.map((x) => [x.kind.name, x.options.file, x.options.format, x.options.readonly, x.options.queues, x.id])).toEqual([
      ['virtio-blk', 'a.img', undefined, false, 1, 'disk0'],
      ['virtio-blk', 'b.qcow2', 'qcow2', true, 1, 'data'],
      ['virtio-blk', 'c.img', undefined, false, 2, 'dev0'],
    ]);
    expect(d).toMatchObject({ apiPort: 0, qmp: '/tmp/q.sock', name: 'web1' });
    expect(parseRunArgs([]).name).toBeNull();
    expect(() => parseRunArgs(['--name', ''])).toThrow(/--name: empty value/);
    expect(kernelCmdline(d)).toBe('console=ttyS0 earlycon=sbi cryptomgr.notests vmm.hotplug=1');
  });

  it('--console, --daemonize, --pidfile: stdio by default, none when daemonized, conflicts refused naming the flag', () => {
    expect(parseRunArgs([]).console).toEqual({ kind: 'stdio' });
    expect(parseRunArgs(['--daemonize', '--pidfile', '/tmp/p']).console).toEqual({ kind: 'none' });
    expect(parseRunArgs(['--daemonize', '--pidfile', '/tmp/p'])).toMatchObject({ daemonize: true, pidfile: '/tmp/p' });
    expect(parseRunArgs(['--console', 'pty']).console).toEqual({ kind: 'pty' });
    expect(parseRunArgs(['--console', 'unix:/tmp/c.sock']).console).toEqual({ kind: 'unix', path: '/tmp/c.sock' });
    expect(parseRunArgs(['--console', 'file:out.txt', '--daemonize']).console).toEqual({ kind: 'file', path: 'out.txt' });
    expect(() => parseRunArgs(['--console', 'tcp:1234'])).toThrow(/--console "tcp:1234": expected one of stdio, none, pty, unix:PATH, file:PATH/);
    expect(() => parseRunArgs(['--console', 'unix:'])).toThrow(/--console "unix:"/);
    expect(() => parseRunArgs(['--daemonize', '--console', 'stdio'])).toThrow(/--console stdio cannot be used with --daemonize/);
    expect(() => parseRunArgs(['--daemonize', '--exec', 'true'])).toThrow(/--exec cannot be used with --daemonize/);
    expect(() => parseRunArgs(['--exec', 'true', '--console', 'pty'])).toThrow(/--console pty: --exec/);
    expect(() => parseRunArgs(['--pidfile', ''])).toThrow(/--pidfile: empty value/);
    expect(parseRunArgs(['--daemonize', '--log-file', 'vmm.log']).logFile).toBe('vmm.log');
    expect(parseRunArgs([]).logFile).toBeNull();
    expect(() => parseRunArgs(['--log-file', ''])).toThrow(/--log-file: empty value/);
  });

  it('parses sizes with K/M/G suffixes, bare numbers as MiB', () => {
    expect(parseSize('512M')).toBe(512 * 2 ** 20);
    expect(parseSize('65536K')).toBe(64 * 2 ** 20);
    expect(parseSize('2g')).toBe(2 * 2 ** 30);
    expect(parseSize('1.5G')).toBe(1.5 * 2 ** 30);
    expect(parseSize('256')).toBe(256 * 2 ** 20);
    expect(parseSize('12X')).toBeNull();
    expect(parseSize('-1M')).toBeNull();
  });

  it('rejects bad values naming the flag and the value', () => {
    const bad: [string[], RegExp][] = [
      [['--smp', '0'], /--smp "0"/],
      [['--smp', '9'], /--smp "9"/],
      [['--smp', 'two'], /--smp "two"/],
      [['--mem', '12X'], /--mem "12X"/],
      [['--mem', '16M'], /--mem "16M".*64M/],
      [['--mem', '100000G'], /--mem "100000G"/],
      [['--mem', '65M'], /--mem "65M".*2M/],
      [['--mem', '8G'], /--mem "8G"/],
      [['--log-level', 'loud'], /--log-level "loud"/],
      [['--disk', 'a.img,bogus=1'], /--disk a\.img,bogus=1: virtio-blk: unknown option 'bogus'/],
      [['--disk', 'a.img,queues=99'], /virtio-blk: queues=99: expected an integer from 1 to 16/],
      [['--device', 'virtio-blk,file=a.img,serial=123456789012345678901'], /virtio-blk: serial=123456789012345678901: longer than 20 bytes/],
      [['--device', 'virtio-gpu,x=1'], /--device virtio-gpu,x=1: driver=virtio-gpu: unknown device kind \(virtio-blk, /],
      [['--device', 'virtio-blk,format=vmdk'], /virtio-blk: format=vmdk: expected raw or qcow2/],
      [['--device', 'virtio-blk'], /virtio-blk: option 'file' is required/],
      [['--api-port', '70000'], /--api-port "70000"/],
      [['--frobnicate'], /--frobnicate/],
      [['--smp'], /--smp/],
      [['stray'], /stray/],
      [['--kernel', ''], /--kernel/],
    ];
    for (const [argv, re] of bad) {
      let err: unknown;
      try {
        parseRunArgs(argv);
      } catch (e) {
        err = e;
      }
      expect(err, argv.join(' ')).toBeInstanceOf(UsageError);
      expect((err as Error).message).toMatch(re);
      expect((err as Error).message).not.toContain('\n');
    }
  });
});

describe('console escape (Ctrl-A)', () => {
  const run = (bytes: number[]): { out: number[]; quit: number; help: number } => {
    let quit = 0;
    let help = 0;
    const f = new EscapeFilter({ quit: () => quit++, help: () => help++ });
    const out: number[] = [];
    for (const b of bytes) out.push(...f.feed(Uint8Array.of(b)));
    return { out, quit, help };
  };

  it('passes ordinary keys, Ctrl-C included', () => {
    expect(run([0x61, 0x03, 0x0d])).toEqual({ out: [0x61, 0x03, 0x0d], quit: 0, help: 0 });
  });
  it('Ctrl-A x quits and forwards nothing after it', () => {
    const f = new EscapeFilter({ quit: () => {}, help: () => {} });
    expect([...f.feed(Uint8Array.of(0x61, 0x01, 0x78, 0x62))]).toEqual([0x61]);
    expect(run([0x01, 0x78]).quit).toBe(1);
  });
  it('Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A h shows help; an unknown escape passes both bytes', () => {
    expect(run([0x01, 0x01])).toEqual({ out: [0x01], quit: 0, help: 0 });
    expect(run([0x01, 0x68])).toEqual({ out: [], quit: 0, help: 1 });
    expect(run([0x01, 0x7a])).toEqual({ out: [0x01, 0x7a], quit: 0, help: 0 });
  });
});
