// `vmm run` flags (node:util parseArgs, strict). Bad values become a
// UsageError naming the flag and the value; the entry point prints it on
// one line and exits 2.
import { parseArgs } from 'node:util';
import { argvErrorLine } from '@vmm/core';
import { DEFAULT_ENGINE, ENGINE_KINDS, MAX_HARTS, WASM_RAM_OFFSET, type EngineKind } from '@vmm/vcpu';
import { parseDeviceFlag, parseDiskFlag, parseNicFlag } from '../vm/device-spec.ts';
import { DeviceRegistry } from '../vm/kinds.ts';
import type { DeviceSpec } from '../vm/vhost-device.ts';
import { CONSOLE_CHOICES, parseConsoleSpec, type ConsoleSpec } from './console.ts';

export class UsageError extends Error {
  readonly code = 'ERR_USAGE';
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export type BiosChoice = { kind: 'builtin' } | { kind: 'opensbi' } | { kind: 'file'; path: string };

export interface RunOptions {
  smp: number;
  memBytes: number;
  kernel: string | null;
  initrd: string | null;
  append: string;
  bios: BiosChoice;
  dumpDtb: string | null;
  exec: string | null;
  verbose: boolean;
  /** A guest reboot ends vmm instead of restarting the machine (always so with --exec). */
  noReboot: boolean;
  logLevel: string;
  help: boolean;
  /** Boot devices, in flag order: `--disk FILE[,opt=…]` (virtio-blk) and `--device KIND[,opt=…]`, each served by its device process. */
  devices: DeviceSpec[];
  /** WebSocket management API port on 127.0.0.1 (0 = any), or null. */
  apiPort: number | null;
  /** QMP unix socket path, or null. */
  qmp: string | null;
  /** What executes guest code: the interpreter, or the translator with the interpreter behind it. */
  engine: EngineKind;
  /** Sample where each hart spends its time (interpreter, translated code, translator, helpers, host): QMP query-processes and a log line per hart at the end. */
  profile: boolean;
  /** The VM's name (QEMU's -name; QMP query-name), or null. */
  name: string | null;
  /** A virtio-iommu (vmm-iommu) translating every other slot's DMA; the IOMMU guest kernel unless --kernel. */
  iommu: boolean;
  /** Where the serial console goes (default stdio; none with --daemonize). */
  console: ConsoleSpec;
  /** Detach from the terminal once the VM is up (QEMU's -daemonize). */
  daemonize: boolean;
  /** Write vmm's pid here while it runs (QEMU's -pidfile). */
  pidfile: string | null;
  /** Append the logs of vmm and its device processes here instead of stderr (QEMU's -D). */
  logFile: string | null;
}

export const MIN_MEM = 64 * 1024 * 1024;
/** Guest RAM lives in a 4 GiB wasm memory above the harts' state area (layout.ts WASM_RAM_OFFSET). */
export const MAX_MEM = 4 * 1024 * 1024 * 1024 - WASM_RAM_OFFSET;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** "512M", "1G", "65536K", "1.5G"; a bare number means MiB (as QEMU's -m). */
export function parseSize(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) return null;
  const unit = { '': 2 ** 20, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[m[2]!.toUpperCase()]!;
  const bytes = Number(m[1]) * unit;
  return Number.isSafeInteger(bytes) ? bytes : Math.floor(bytes);
}

export function parseRunArgs(argv: string[]): RunOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        smp: { type: 'string' },
        mem: { type: 'string', short: 'm' },
        kernel: { type: 'string' },
        initrd: { type: 'string' },
        append: { type: 'string' },
        bios: { type: 'string' },
        'dump-dtb': { type: 'string' },
        exec: { type: 'string' },
        verbose: { type: 'boolean', short: 'v' },
        'no-reboot': { type: 'boolean' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        disk: { type: 'string', multiple: true },
        device: { type: 'string', multiple: true },
        nic: { type: 'string', multiple: true },
        'api-port': { type: 'string' },
        api: { type: 'string' },
        qmp: { type: 'string' },
        engine: { type: 'string' },
        profile: { type: 'boolean' },
        name: { type: 'string' },
        iommu: { type: 'boolean' },
        console: { type: 'string' },
        daemonize: { type: 'boolean' },
        pidfile: { type: 'string' },
        'log-file': { type: 'string' },
      },
    });
  } catch (e) {
    // parseArgs messages already name the flag ("Unknown option '--foo'"); keep them to one line.
    throw new UsageError(`${argvErrorLine(e)} (pnpm vmm run --help)`);
  }
  const v = parsed.values;
  const nonEmpty = (flag: string, s: string | undefined): string | null => {
    if (s === undefined) return null;
    if (s === '') throw new UsageError(`--${flag}: empty value`);
    return s;
  };

  let smp = 1;
  if (v.smp !== undefined) {
    if (!/^\d+$/.test(v.smp) || Number(v.smp) < 1 || Number(v.smp) > MAX_HARTS) {
      throw new UsageError(`--smp ${JSON.stringify(v.smp)}: expected an integer from 1 to ${MAX_HARTS}`);
    }
    smp = Number(v.smp);
  }

  let memBytes = 512 * 2 ** 20;
  if (v.mem !== undefined) {
    const b = parseSize(v.mem);
    if (b === null) throw new UsageError(`--mem ${JSON.stringify(v.mem)}: expected a size such as 512M or 1G`);
    if (b < MIN_MEM || b > MAX_MEM) throw new UsageError(`--mem ${JSON.stringify(v.mem)}: must be between 64M and ${MAX_MEM / 2 ** 20}M`);
    // The kernel maps RAM with 2 MiB pages first; the machine requires whole 2 MiB units.
    if (b % (2 * 2 ** 20) !== 0) throw new UsageError(`--mem ${JSON.stringify(v.mem)}: must be a multiple of 2M`);
    memBytes = b;
  }

  let bios: BiosChoice = { kind: 'builtin' };
  const b = nonEmpty('bios', v.bios);
  if (b === 'opensbi') bios = { kind: 'opensbi' };
  else if (b !== null && b !== 'builtin') bios = { kind: 'file', path: b };

  const logLevel = v['log-level'] ?? 'warn';
  if (!LOG_LEVELS.includes(logLevel)) throw new UsageError(`--log-level ${JSON.stringify(logLevel)}: expected one of ${LOG_LEVELS.join(', ')}`);

  const registry = new DeviceRegistry();
  const deviceFlag = (flag: string, value: string, parse: () => DeviceSpec): DeviceSpec => {
    try {
      return parse();
    } catch (e) {
      // The kind's own words, after the flag: "--disk x.img,foo: virtio-blk: unknown option 'foo' (file, …)".
      throw new UsageError(`--${flag} ${value}: ${(e as Error).message}`);
    }
  };
  const devices = [
    ...(v.disk ?? []).map((d, i) => deviceFlag('disk', d, () => parseDiskFlag(registry, d, i))),
    ...(v.device ?? []).map((d, i) => deviceFlag('device', d, () => parseDeviceFlag(registry, d, i))),
    ...(v.nic ?? []).map((d, i) => deviceFlag('nic', d, () => parseNicFlag(registry, d, i))),
  ];
  let apiPort: number | null = null;
  // --api PORT as the issue names it; --api-port is the same flag.
  if (v.api !== undefined) v['api-port'] ??= v.api;
  if (v['api-port'] !== undefined) {
    if (!/^\d+$/.test(v['api-port']) || Number(v['api-port']) > 65535) throw new UsageError(`--api-port ${JSON.stringify(v['api-port'])}: expected a TCP port 0-65535 (0 = any free port)`);
    apiPort = Number(v['api-port']);
  }

  const daemonize = v.daemonize === true;
  let consoleSpec: ConsoleSpec = { kind: daemonize ? 'none' : 'stdio' };
  if (v.console !== undefined) {
    const c = parseConsoleSpec(v.console);
    if (c === null) throw new UsageError(`--console ${JSON.stringify(v.console)}: expected one of ${CONSOLE_CHOICES}`);
    consoleSpec = c;
  }
  if (daemonize && consoleSpec.kind === 'stdio') throw new UsageError('--console stdio cannot be used with --daemonize (a daemon has no terminal): use pty, unix:PATH, file:PATH or none');
  if (v.exec !== undefined && daemonize) throw new UsageError('--exec cannot be used with --daemonize (the command\'s output goes to this terminal)');
  if (v.exec !== undefined && consoleSpec.kind !== 'stdio') throw new UsageError(`--console ${v.console}: --exec prints the command's output here, so its console is stdio`);
  const engine = v.engine ?? DEFAULT_ENGINE;
  if (!(ENGINE_KINDS as readonly string[]).includes(engine)) throw new UsageError(`--engine ${JSON.stringify(engine)}: expected ${ENGINE_KINDS.join(' or ')}`);

  return {
    smp,
    memBytes,
    kernel: nonEmpty('kernel', v.kernel),
    initrd: nonEmpty('initrd', v.initrd),
    append: v.append ?? '',
    bios,
    dumpDtb: nonEmpty('dump-dtb', v['dump-dtb']),
    exec: nonEmpty('exec', v.exec),
    verbose: v.verbose === true,
    noReboot: v['no-reboot'] === true,
    logLevel,
    help: v.help === true,
    devices,
    apiPort,
    qmp: nonEmpty('qmp', v.qmp),
    engine: engine as EngineKind,
    profile: v.profile === true,
    name: nonEmpty('name', v.name),
    iommu: v.iommu === true,
    console: consoleSpec,
    daemonize,
    pidfile: nonEmpty('pidfile', v.pidfile),
    logFile: nonEmpty('log-file', v['log-file']),
  };
}

/** The kernel command line: console on the UART, SBI early console, `quiet` for --exec unless --verbose, then the user's. */
export function kernelCmdline(o: Pick<RunOptions, 'exec' | 'verbose' | 'append'> & Partial<Pick<RunOptions, 'apiPort' | 'qmp'>>): string {
  // cryptomgr.notests: skip the crypto self-tests at boot; on an interpreted
  // vCPU they are about half of the kernel's boot time (143 s → 77 s measured).
  const parts = ['console=ttyS0', 'earlycon=sbi', 'cryptomgr.notests'];
  // A management API can hot-plug disks: the initramfs then runs the guest's hot-plug helper.
  if ((o.apiPort ?? null) !== null || (o.qmp ?? null) !== null) parts.push('vmm.hotplug=1');
  // panic=-1: a guest that panics resets at once, so vmm exits instead of hanging.
  if (o.exec !== null) parts.push('panic=-1', ...(o.verbose ? [] : ['quiet']));
  if (o.append.trim()) parts.push(o.append.trim());
  return parts.join(' ');
}

export const RUN_HELP = `usage: pnpm vmm run [options]

Boots a RISC-V virtual machine (RV64GC harts emulated by vmm) with the
Debian guest kit's kernel and initramfs, the serial console on this terminal.

options:
  --smp N            number of harts, 1-${MAX_HARTS} (default 1)
  --mem SIZE         guest RAM, K/M/G suffix, 64M-4080M, whole 2M (default 512M)
  --kernel PATH      kernel Image (default: the guest kit's Debian kernel)
  --initrd PATH      initramfs (default: the guest kit's busybox initramfs)
  --append STR       extra kernel command-line arguments
                     (default line: console=ttyS0 earlycon=sbi, plus quiet with --exec)
  --bios KIND        builtin (SBI implemented by vmm, default) | opensbi (the
                     kit's OpenSBI fw_dynamic.bin) | PATH to a firmware binary
  --dump-dtb PATH    write the machine's device tree blob to PATH and exit
  --exec CMD         run CMD (busybox sh) in the guest, print only its output,
                     exit with its status
  --verbose, -v      with --exec: no quiet, full console on stderr
  --no-reboot        a guest reboot ends vmm instead of restarting the machine
                     (always so with --exec, where a panic must end the run)
  --log-level LEVEL  fatal|error|warn|info|debug|trace|silent (default warn), logs on stderr
  --log-file PATH    append the logs (JSON lines, vmm's and its device processes') to PATH
                     instead of stderr (QEMU's -D); a --daemonize'd vmm has no stderr
                     left, so without it the daemon's logs are dropped, as QEMU's are
  --disk SPEC        a virtio-blk disk (repeatable): FILE[,format=raw|qcow2][,readonly]
                     [,id=NAME][,queues=N][,serial=S], served by a vmm-blk process
  --nic SPEC         a virtio-net NIC (repeatable): switch=NAME|tap=IF[,mac=M][,queues=N]
                     [,mtu=N][,id=NAME], served by a vmm-net process; a switch NAME
                     not running yet is started (vmm-switch, it outlives the VM)
  --device SPEC      a device of any registered kind (repeatable): KIND[,id=NAME][,opt=V…],
                     e.g. virtio-blk,file=d.img,queues=2 (options as for QMP device_add)
  --api N            WebSocket management API on 127.0.0.1:N (0 = any free port; also --api-port)
  --qmp PATH         QMP on a unix socket at PATH
  --engine KIND      interp (the interpreter) | jit (hot code translated to
                     WebAssembly, the interpreter for the rest); default ${DEFAULT_ENGINE}
  --profile          sample where each hart's time goes (interpreter, translated code,
                     translator, helpers, host): QMP query-processes harts[].profile, and
                     a 'machine: profile' log line per hart when the VM ends
  --name NAME        the VM's name, as QMP query-name reports it (QEMU's -name)
  --iommu            a virtio-iommu (vmm-iommu process) in the top slot, every other slot
                     its endpoint; boots the IOMMU guest kernel (\`pnpm guest kernel --iommu\`,
                     built on first use) unless --kernel is given
  --console WHERE    the serial console: stdio (this terminal, the default) | none |
                     pty (a new /dev/pts/N, its path printed) | unix:PATH (a socket;
                     attach with 'pnpm vmm ctl console PATH' or socat) | file:PATH (output only)
  --daemonize        detach once the VM is up (QMP socket listening); the parent exits 0
                     (console default none; stdio is refused)
  --pidfile PATH     write vmm's pid to PATH while it runs
  --help, -h         this text

console: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A h shows help;
'poweroff' in the guest ends vmm with status 0; 'reboot' restarts the machine.
A job in the background ('&') keeps running and leaves the terminal alone
(no reads, no mode changes, the guest's output held); 'fg' shows the console
and hands it the keyboard.
SIGINT, SIGTERM and SIGHUP (the terminal closed) end vmm as quit does, status 0.
`;
