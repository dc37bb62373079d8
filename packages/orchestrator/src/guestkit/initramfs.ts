// The initramfs: busybox, the modules virtio-mmio/blk/net and ext4 need,
// and a busybox-sh /init. Built in TypeScript (cpio.ts), cached by a hash
// of its inputs. `--exec` appends a second small archive with the command
// (the kernel unpacks concatenated archives), so the base is reused.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CpioWriter, writeCpio } from './cpio.ts';
import { GuestKitError } from './errors.ts';
import { HOTPLUG_HELPER, HOTPLUG_HELPER_PATH } from '../vm/guest-hotplug.ts';
import type { GuestKit } from './kit.ts';
import { PACKAGES_LABEL, PACKAGES_MOUNT } from './image.ts';

const run = promisify(execFile);

/** The modules the initramfs carries (FACTS.md); their dependencies come from modules.dep. */
export const GUEST_MODULES = ['virtio_mmio', 'virtio_blk', 'virtio_net', 'failover', 'net_failover', 'ext4', 'jbd2', 'mbcache', 'crc16', 'crc32c_generic'] as const;

/**
 * Soft dependencies modules.dep does not list (modinfo "softdep=pre: …").
 * ext4 needs a crc32c implementation before it can mount a filesystem
 * with metadata checksums.
 */
const SOFT_PRE: Record<string, string[]> = { ext4: ['crc32c_generic'] };

/** Physical address of the `sifive,test1` finisher (layout.ts MMIO.test, QEMU virt). */
export const FINISHER_ADDR = 0x10_0000;

/** Markers framing the output of an --exec command on the console. */
export function execMarkers(nonce: string): { begin: string; end: string } {
  return { begin: `@@vmm-exec-begin-${nonce}@@`, end: `@@vmm-exec-end-${nonce}@@` };
}

const modName = (path: string): string => path.split('/').pop()!.replace(/\.ko(\.xz|\.zst|\.gz)?$/, '').replace(/-/g, '_');

/** Parses modules.dep ("kernel/x.ko.xz: kernel/y.ko.xz …") into name → {path, deps}. */
export function parseModulesDep(text: string): Map<string, { path: string; deps: string[] }> {
  const out = new Map<string, { path: string; deps: string[] }>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    const path = line.slice(0, i).trim();
    const deps = line.slice(i + 1).trim().split(/\s+/).filter(Boolean).map(modName);
    out.set(modName(path), { path, deps });
  }
  return out;
}

/** Orders `wanted` and their dependencies so each module comes after everything it needs. */
export function moduleLoadOrder(dep: Map<string, { path: string; deps: string[] }>, wanted: readonly string[]): string[] {
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (m: string, from: string): void => {
    if (state.get(m) === 'done') return;
    if (state.get(m) === 'visiting') throw new GuestKitError('ERR_GUEST_KERNEL', `module dependency cycle through ${m}`);
    const e = dep.get(m);
    if (!e) throw new GuestKitError('ERR_GUEST_KERNEL', `module ${m} (needed by ${from}) is not in modules.dep`);
    state.set(m, 'visiting');
    for (const d of [...(SOFT_PRE[m] ?? []), ...e.deps]) visit(d, m);
    state.set(m, 'done');
    order.push(m);
  };
  for (const m of wanted) visit(m, 'the initramfs');
  return order;
}

/**
 * /init (busybox sh). Mounts the API filesystems, loads the modules in
 * order, then either runs /vmm/exec.sh (added by the --exec archive) and
 * reports its status through the finisher, or gives the console a shell
 * with job control (setsid + cttyhack make it the controlling tty).
 */
export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root /sbin /usr/bin /usr/sbin /mnt
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=\${TERM:-vt100}
kver=$(uname -r)
# A kernel with everything built in (the IOMMU kernel, guestkit/kernel.ts)
# has no modules of its own here: nothing to load.
if [ -d /lib/modules/$kver ]; then
  for m in $(cat /lib/modules/load-order); do
    insmod /lib/modules/$kver/$m.ko || echo "init: insmod $m failed"
  done
fi
# A packages disk (\`pnpm guest build --package … --ext4 FILE\`, guestkit/image.ts):
# the first virtio disk whose ext4 label (s_volume_name: superblock, at
# byte 1024, + 0x78, 16 bytes) is ${PACKAGES_LABEL} is mounted read-only at ${PACKAGES_MOUNT}; its
# programs go first on PATH, its libraries on LD_LIBRARY_PATH, its dynamic
# loader to /lib (the ELF interpreter path). One direct 512-byte read per
# disk (no readahead): sector 2 holds the superblock's first bytes.
for b in /sys/block/vd*; do
  [ -e "$b" ] || continue
  d=/dev/\${b##*/}
  [ "$(dd if=$d bs=512 skip=2 count=1 iflag=direct 2>/dev/null | dd bs=1 skip=120 count=16 2>/dev/null | tr -d '\\000')" = ${PACKAGES_LABEL} ] || continue
  mkdir -p ${PACKAGES_MOUNT}
  mount -t ext4 -o ro $d ${PACKAGES_MOUNT} || { echo "init: cannot mount $d (label ${PACKAGES_LABEL}) on ${PACKAGES_MOUNT}"; break; }
  for f in ${PACKAGES_MOUNT}/usr/lib/ld-linux*; do [ -e "$f" ] && [ ! -e "/lib/\${f##*/}" ] && ln -s "$f" /lib/; done
  for f in ${PACKAGES_MOUNT}/etc/*; do [ -e "$f" ] && [ ! -e "/etc/\${f##*/}" ] && ln -s "$f" /etc/; done
  export PATH=${PACKAGES_MOUNT}/usr/sbin:${PACKAGES_MOUNT}/usr/bin:${PACKAGES_MOUNT}/sbin:${PACKAGES_MOUNT}/bin:$PATH
  export LD_LIBRARY_PATH=${PACKAGES_MOUNT}/usr/lib/riscv64-linux-gnu:${PACKAGES_MOUNT}/usr/lib
  break
done
hostname vmm
# The kernel's ip= argument (Documentation/admin-guide/nfs/nfsroot.rst:
# ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>),
# applied here because virtio_net is a module, loaded after the kernel's own
# autoconfiguration ran. Static settings only.
ifconfig lo 127.0.0.1 up 2>/dev/null
ip_setup() {
  case "$1" in
    off|none|"") return ;;
    on|any|dhcp|bootp|rarp|both) echo "init: ip=$1: only static ip= settings are supported"; return ;;
  esac
  o=$IFS; IFS=:; set -- $1; IFS=$o
  dev=\${6:-eth0}
  [ -n "$5" ] && hostname "$5"
  n=0; while [ ! -e /sys/class/net/$dev ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  ifconfig "$dev" "$1" \${4:+netmask $4} up || { echo "init: ip=: cannot configure $dev"; return; }
  [ -n "$3" ] && route add default gw "$3" dev "$dev"
}
for a in $(cat /proc/cmdline); do case "$a" in ip=*) ip_setup "\${a#ip=}" ;; esac; done
# With a management API, vmm adds vmm.hotplug=1: start the guest half of
# virtio-mmio hot-plug (vm/guest-hotplug.ts).
case " $(cat /proc/cmdline) " in *" vmm.hotplug=1 "*) ${HOTPLUG_HELPER_PATH} & ;; esac
# finish STATUS: power off through the sifive,test1 finisher (0x5555 = pass,
# 0x3333 | code << 16 = fail with code), as QEMU's hw/misc/sifive_test.c.
finish() {
  sync
  # Drain the console before the finisher stops the machine: the 8250 driver
  # sends from its buffer on THRE interrupts, and a finisher write does not
  # wait for them. stty applies settings with tcsetattr(TCSADRAIN), which
  # returns only once the tty's output has gone out.
  stty -F /dev/console "$(stty -F /dev/console -g)" 2>/dev/null
  if [ "$1" = 0 ]; then v=0x5555; else v=$(( 0x3333 | (($1 & 0xffff) << 16) )); fi
  devmem ${FINISHER_ADDR} 32 $v
  poweroff -f
}
if [ -f /vmm/exec.sh ]; then
  read -r nonce < /vmm/nonce
  echo "@@vmm-exec-begin-$nonce@@"
  sh /vmm/exec.sh < /dev/null
  rc=$?
  echo "@@vmm-exec-end-$nonce@@ $rc"
  finish $rc
fi
# Interactive: a login shell on the console's real tty (cttyhack) in its
# own session (setsid), so it has job control and Ctrl-C. PID 1 only gets
# signals it handles: busybox poweroff/halt send USR2/USR1, reboot TERM.
trap 'finish 0' USR1 USR2
trap 'sync; reboot -f' TERM
echo "vmm guest: busybox shell; 'poweroff' to stop the machine"
setsid cttyhack sh -l < /dev/console > /dev/console 2>&1 &
shell=$!
while kill -0 $shell 2>/dev/null; do wait $shell; done
finish 0
`;

const enc = new TextEncoder();
const BUILDER_VERSION = '3';

async function unxz(path: string): Promise<Uint8Array> {
  try {
    const { stdout } = await run('xz', ['-dc', path], { encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 });
    return new Uint8Array(stdout);
  } catch (e) {
    throw new GuestKitError('ERR_GUEST_TOOL', `xz -dc ${path} failed: ${(e as Error).message} (Debian package xz-utils)`);
  }
}

export interface BuiltInitramfs {
  path: string;
  /** Modules in the order /init loads them. */
  modules: string[];
}

/** Builds (or finds in the cache) the base initramfs for this kit. */
export async function buildInitramfs(kit: GuestKit): Promise<BuiltInitramfs> {
  const dep = parseModulesDep(readFileSync(join(kit.modulesDir, 'modules.dep'), 'utf8'));
  const order = moduleLoadOrder(dep, GUEST_MODULES);
  const kernelPkg = kit.packages.find((p) => p.role === 'kernel')!;
  const bbPkg = kit.packages.find((p) => p.role === 'busybox')!;
  const key = createHash('sha256')
    .update(JSON.stringify({ v: BUILDER_VERSION, init: INIT_SCRIPT, hotplug: HOTPLUG_HELPER, order, kernel: kernelPkg.sha256, busybox: bbPkg.sha256 }))
    .digest('hex')
    .slice(0, 20);
  const dir = join(kit.cacheDir, 'initramfs');
  const path = join(dir, `initramfs-${key}.cpio`);
  if (existsSync(path)) return { path, modules: order };

  const w = new CpioWriter();
  for (const d of ['bin', 'sbin', 'dev', 'proc', 'sys', 'tmp', 'run', 'root', 'etc', 'mnt', 'usr', 'usr/bin', 'usr/sbin', 'lib', 'lib/modules', `lib/modules/${kit.kernelVersion}`]) {
    w.add({ type: 'dir', path: d, mode: d === 'tmp' ? 0o1777 : 0o755 });
  }
  // /dev/console must exist before devtmpfs is mounted: the kernel opens
  // it as init's stdin/stdout/stderr (init/main.c console_on_rootfs).
  w.add({ type: 'chardev', path: 'dev/console', major: 5, minor: 1 });
  w.add({ type: 'file', path: 'bin/busybox', data: await readFile(kit.busybox), mode: 0o755 });
  w.add({ type: 'symlink', path: 'bin/sh', target: 'busybox' });
  w.add({ type: 'file', path: 'init', data: enc.encode(INIT_SCRIPT), mode: 0o755 });
  w.add({ type: 'file', path: HOTPLUG_HELPER_PATH.slice(1), data: enc.encode(HOTPLUG_HELPER), mode: 0o755 });
  w.add({ type: 'file', path: 'etc/profile', data: enc.encode('export PS1="\\h:\\w\\$ "\n') });
  w.add({ type: 'file', path: 'etc/passwd', data: enc.encode('root:x:0:0:root:/root:/bin/sh\n') });
  w.add({ type: 'file', path: 'etc/group', data: enc.encode('root:x:0:\n') });
  // Busybox insmod does load the .ko.xz files as shipped (the kernel has
  // CONFIG_MODULE_DECOMPRESS; verified under QEMU), but xz-decompressing
  // ~2 MB inside an emulated guest costs tens of seconds of guest CPU (soft
  // lockup warnings on our vCPU). Decompressing once on the host is free.
  for (const m of order) {
    const e = dep.get(m)!;
    if (!e.path.endsWith('.ko.xz')) throw new GuestKitError('ERR_GUEST_KERNEL', `module ${m} is ${e.path}, expected a .ko.xz`);
    w.add({ type: 'file', path: `lib/modules/${kit.kernelVersion}/${m}.ko`, data: await unxz(join(kit.modulesDir, e.path)) });
  }
  w.add({ type: 'file', path: 'lib/modules/load-order', data: enc.encode(`${order.join('\n')}\n`) });
  await mkdir(dir, { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, w.finish());
  await rename(tmp, path);
  return { path, modules: order };
}

export interface ExecArchive {
  archive: Uint8Array;
  nonce: string;
  markers: { begin: string; end: string };
}

/** The small archive appended for `--exec`: the command and a per-run nonce for the markers. */
export function buildExecArchive(command: string, nonce = randomBytes(8).toString('hex')): ExecArchive {
  const archive = writeCpio([
    { type: 'dir', path: 'vmm' },
    { type: 'file', path: 'vmm/exec.sh', data: enc.encode(`${command}\n`), mode: 0o755 },
    { type: 'file', path: 'vmm/nonce', data: enc.encode(`${nonce}\n`) },
  ]);
  return { archive, nonce, markers: execMarkers(nonce) };
}

/** Base initramfs bytes followed by the --exec archive. */
export async function initrdWithExec(basePath: string, command: string): Promise<{ initrd: Uint8Array } & ExecArchive> {
  const base = await readFile(basePath);
  const x = buildExecArchive(command);
  const initrd = new Uint8Array(base.length + x.archive.length);
  initrd.set(base);
  initrd.set(x.archive, base.length);
  return { initrd, ...x };
}

/**
 * Splits console output of an --exec boot: only the bytes between the
 * begin and end markers are passed on (with the tty's CRLF turned back
 * into LF), and the status printed after the end marker is captured.
 */
export class ExecOutputFilter {
  #begin: string;
  #end: string;
  #state: 'before' | 'inside' | 'after' = 'before';
  #pending = '';
  #decoder = new TextDecoder();
  #emit: (text: string) => void;
  status: number | null = null;
  /** Everything seen, for diagnostics when the guest never reaches the command. */
  transcript = '';

  constructor(markers: { begin: string; end: string }, emit: (text: string) => void) {
    this.#begin = markers.begin;
    this.#end = markers.end;
    this.#emit = emit;
  }

  get state(): 'before' | 'inside' | 'after' {
    return this.#state;
  }

  push(bytes: Uint8Array): void {
    const text = this.#decoder.decode(bytes, { stream: true });
    if (this.transcript.length < 1 << 20) this.transcript += text;
    this.#pending += text;
    this.#scan();
  }

  #scan(): void {
    // Work line by line so a marker split across chunks is still seen.
    for (;;) {
      const nl = this.#pending.indexOf('\n');
      if (nl < 0) {
        if (this.#state === 'inside' && this.#pending.length > 0) {
          // A partial line (a prompt, printf without newline): pass it on
          // now, holding back only what could be the start of the end marker.
          const clean = this.#pending.replace(/\r/g, '');
          if (clean.includes(this.#end)) return;
          let hold = 0;
          for (let k = Math.min(this.#end.length, clean.length); k > 0; k--) {
            if (clean.endsWith(this.#end.slice(0, k))) {
              hold = k;
              break;
            }
          }
          if (clean.length > hold) this.#emit(clean.slice(0, clean.length - hold));
          this.#pending = clean.slice(clean.length - hold);
        }
        return;
      }
      const line = this.#pending.slice(0, nl).replace(/\r$/, '');
      this.#pending = this.#pending.slice(nl + 1);
      if (this.#state === 'before') {
        if (line.endsWith(this.#begin)) this.#state = 'inside';
      } else if (this.#state === 'inside') {
        const i = line.indexOf(this.#end);
        if (i >= 0) {
          if (i > 0) this.#emit(line.slice(0, i));
          const m = /^\s*(\d+)/.exec(line.slice(i + this.#end.length));
          this.status = m ? Number(m[1]) : null;
          this.#state = 'after';
        } else {
          this.#emit(`${line}\n`);
        }
      }
    }
  }
}
