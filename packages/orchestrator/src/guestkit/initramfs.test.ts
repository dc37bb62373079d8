import { describe, expect, it } from 'vitest';
import { GuestKitError } from './errors.ts';
import { ExecOutputFilter, execMarkers, moduleLoadOrder, parseModulesDep } from './initramfs.ts';
import { checkKernelImage } from './kit.ts';

const DEP = `kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
`;

describe('module load order', () => {
  it('puts every module after its dependencies, including ext4 → crc32c soft dependency', () => {
    const dep = parseModulesDep(DEP);
    const order = moduleLoadOrder(dep, ['virtio_net', 'ext4']);
    expect(new Set(order)).toEqual(new Set(['failover', 'net_failover', 'virtio_net', 'crc32c_generic', 'crc16', 'mbcache', 'jbd2', 'ext4']));
    const at = (m: string): number => order.indexOf(m);
    expect(at('failover')).toBeLessThan(at('net_failover'));
    expect(at('net_failover')).toBeLessThan(at('virtio_net'));
    for (const d of ['crc32c_generic', 'crc16', 'mbcache', 'jbd2']) expect(at(d)).toBeLessThan(at('ext4'));
  });

  it('names a missing module', () => {
    expect(() => moduleLoadOrder(parseModulesDep(DEP), ['virtio_blk'])).toThrow(/virtio_blk/);
  });
});

describe('ExecOutputFilter', () => {
  const m = execMarkers('abc');
  const feed = (chunks: string[]): { out: string; f: ExecOutputFilter } => {
    let out = '';
    const f = new ExecOutputFilter(m, (t) => (out += t));
    for (const c of chunks) f.push(new TextEncoder().encode(c));
    return { out, f };
  };

  it('passes only the command output, CRLF → LF, and captures the status', () => {
    const { out, f } = feed([`[ 0.1] boot noise\r\n${m.begin}\r\nriscv64\r\n2\r\n${m.end} 3\r\n[ 9.0] reboot: Power down\r\n`]);
    expect(out).toBe('riscv64\n2\n');
    expect(f.status).toBe(3);
    expect(f.state).toBe('after');
  });

  it('finds markers split across chunks, at any byte', () => {
    const text = `noise\r\n${m.begin}\r\nhello\r\nno newline${m.end} 0\r\n`;
    for (let cut = 1; cut < text.length; cut += 3) {
      const { out, f } = feed([text.slice(0, cut), text.slice(cut)]);
      expect(out).toBe('hello\nno newline');
      expect(f.status).toBe(0);
    }
  });

  it('stays before the begin marker when the guest never gets there', () => {
    const { out, f } = feed(['Kernel panic - not syncing\r\n']);
    expect(out).toBe('');
    expect(f.status).toBeNull();
    expect(f.transcript).toContain('Kernel panic');
  });
});

describe('kernel image check', () => {
  it('accepts the RISC-V Image magic and rejects anything else', () => {
    const img = new Uint8Array(128);
    img.set([0x4d, 0x5a]);
    new DataView(img.buffer).setBigUint64(0x10, 0x1e6b000n, true);
    img.set(new TextEncoder().encode('RSC\x05'), 0x38);
    expect(checkKernelImage(img, 'k')).toEqual({ imageSize: 0x1e6b000n, efiStub: true });
    expect(() => checkKernelImage(new Uint8Array(128), '/boot/junk')).toThrow(GuestKitError);
    expect(() => checkKernelImage(new Uint8Array(10), '/boot/junk')).toThrow(/\/boot\/junk/);
  });
});
