// What a device kind tells the orchestrator about itself (STYLE.md §8b): the
// registration every device package exports from its `./kind` entry and the
// orchestrator's registry lists, one line per kind. Everything else — the
// process, the vhost-user session and its replay, supervision, transport
// reconciliation, the irqfd, eject — is the orchestrator's one generic
// vhost-user device.
//
// Options are parsed once, by the schema here: the same parser (same limits,
// same error wording) for the orchestrator's `--device KIND,opt=…` flag, for
// QMP `device_add driver=KIND opt=…`, and for the device process's own argv
// (`--opt value`), which the orchestrator builds from the parsed values.

import { ConfigError } from './errors.ts';

export type OptionValue = string | number | boolean;
export type OptionValues = Readonly<Record<string, OptionValue | undefined>>;

interface OptionBase {
  readonly name: string;
  readonly help: string;
  readonly required?: boolean;
  /** Other names the device process's argv accepts for it (`--image` for `file`). */
  readonly argvAliases?: readonly string[];
}

export type OptionDef = OptionBase & (
  | { readonly type: 'string'; readonly maxBytes?: number; readonly default?: string }
  | { readonly type: 'int'; readonly min: number; readonly max: number; readonly default?: number }
  | { readonly type: 'bool'; readonly default?: boolean }
  | { readonly type: 'enum'; readonly values: readonly string[]; readonly default?: string }
);

/** A bad device option or device kind: one message naming the kind, the option and the value. */
export class DeviceOptionError extends ConfigError {
  constructor(message: string) {
    super(message, 'ERR_DEVICE_OPTION');
  }
}

const TRUE = ['on', 'true', 'yes', '1', ''];
const FALSE = ['off', 'false', 'no', '0'];

function show(raw: unknown): string {
  return typeof raw === 'string' ? raw : JSON.stringify(raw);
}

/** Parse one option value (a string from a flag or argv, or a JSON value from QMP). */
export function parseOptionValue(kind: string, def: OptionDef, raw: unknown): OptionValue {
  const bad = (expected: string): never => {
    throw new DeviceOptionError(`${kind}: ${def.name}=${show(raw)}: ${expected}`);
  };
  switch (def.type) {
    case 'string': {
      if (typeof raw !== 'string' && typeof raw !== 'number') return bad('expected a string');
      const s = String(raw);
      if (def.required && s === '') return bad('must not be empty');
      if (def.maxBytes !== undefined && Buffer.byteLength(s) > def.maxBytes) return bad(`longer than ${def.maxBytes} bytes`);
      return s;
    }
    case 'int': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^-?\d+$/.test(raw.trim()) ? Number(raw) : NaN;
      if (!Number.isSafeInteger(n) || n < def.min || n > def.max) return bad(`expected an integer from ${def.min} to ${def.max}`);
      return n;
    }
    case 'bool': {
      if (typeof raw === 'boolean') return raw;
      const s = String(raw).toLowerCase();
      if (TRUE.includes(s)) return true;
      if (FALSE.includes(s)) return false;
      return bad('expected on or off');
    }
    case 'enum': {
      const s = String(raw);
      if (!def.values.includes(s)) return bad(`expected ${def.values.join(' or ')}`);
      return s;
    }
  }
}

function unknownOption(kind: string, key: string, defs: readonly OptionDef[]): DeviceOptionError {
  return new DeviceOptionError(`${kind}: unknown option '${key}' (${defs.map((d) => d.name).join(', ')})`);
}

/**
 * Parse a kind's options from key/value pairs (a flag's `k=v` list or QMP
 * arguments). Keys in `ignore` belong to the caller (driver, id, ...).
 */
export function parseDeviceOptions(kind: string, defs: readonly OptionDef[], raw: Readonly<Record<string, unknown>>, ignore: readonly string[] = []): Record<string, OptionValue> {
  const out: Record<string, OptionValue> = {};
  for (const [key, value] of Object.entries(raw)) {
    if (ignore.includes(key) || value === undefined) continue;
    const def = defs.find((d) => d.name === key);
    if (!def) throw unknownOption(kind, key, defs);
    out[key] = parseOptionValue(kind, def, value);
  }
  for (const def of defs) {
    if (out[def.name] !== undefined) continue;
    if (def.default !== undefined) out[def.name] = def.default;
    else if (def.required) throw new DeviceOptionError(`${kind}: option '${def.name}' is required`);
  }
  return out;
}

/** `a=1,b,c=x` (a bare key is a boolean switched on) into pairs; a value may not contain a comma. */
export function splitOptionList(list: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of list.split(',')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    out[eq < 0 ? part : part.slice(0, eq)] = eq < 0 ? '' : part.slice(eq + 1);
  }
  return out;
}

/** The device process's argv for parsed options: `--name value` for each (booleans as on/off). */
export function optionsToArgv(defs: readonly OptionDef[], values: OptionValues): string[] {
  const argv: string[] = [];
  for (const def of defs) {
    const v = values[def.name];
    if (v === undefined) continue;
    argv.push(`--${def.name}`, def.type === 'bool' ? (v ? 'on' : 'off') : String(v));
  }
  return argv;
}

/** Flags every device process takes besides its kind's options. */
export interface DeviceProcessFlags {
  socket: string;
  id: string | undefined;
  logLevel: string;
  options: Record<string, OptionValue>;
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const PROCESS_FLAGS = ['socket', 'id', 'log-level'];

/**
 * Parse a device process's argv: `--socket PATH [--id ID] [--log-level L]`
 * plus `--option value` (or `--option=value`; a boolean may stand alone) for
 * each of the kind's options. Returns null for `--help`. Errors name the
 * option and value in the same words as the orchestrator's flag and QMP.
 */
export function parseDeviceArgv(kind: string, defs: readonly OptionDef[], argv: readonly string[]): DeviceProcessFlags | null {
  const raw: Record<string, string> = {};
  const proc: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') return null;
    if (!a.startsWith('--')) throw new DeviceOptionError(`${kind}: unexpected argument '${a}'`);
    const eq = a.indexOf('=');
    const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
    const def = defs.find((d) => d.name === name || d.argvAliases?.includes(name));
    if (!def && !PROCESS_FLAGS.includes(name)) throw unknownOption(kind, name, defs);
    let value: string;
    if (eq >= 0) value = a.slice(eq + 1);
    else if (def?.type === 'bool' && (i + 1 >= argv.length || argv[i + 1]!.startsWith('--'))) value = '';
    else {
      if (i + 1 >= argv.length) throw new DeviceOptionError(`${kind}: --${name} needs a value`);
      value = argv[++i]!;
    }
    if (def) raw[def.name] = value;
    else proc[name] = value;
  }
  if (!proc.socket) throw new DeviceOptionError(`${kind}: --socket PATH is required`);
  const logLevel = proc['log-level'] ?? process.env.VMM_LOG_LEVEL ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) throw new DeviceOptionError(`${kind}: log-level=${logLevel}: expected ${LOG_LEVELS.join(' or ')}`);
  return { socket: proc.socket, id: proc.id, logLevel, options: parseDeviceOptions(kind, defs, raw) };
}

/** Usage text of a device process, from its kind's options. */
export function deviceUsage(command: string, summary: string, defs: readonly OptionDef[]): string {
  const lines = defs.map((d) => {
    const what = d.type === 'int' ? `N (${d.min}..${d.max})` : d.type === 'enum' ? d.values.join('|') : d.type === 'bool' ? '[on|off]' : 'VALUE';
    const dflt = d.default !== undefined ? ` (default ${String(d.default)})` : d.required ? ' (required)' : '';
    return `  --${`${d.name} ${what}`.padEnd(22)} ${d.help}${dflt}`;
  });
  return `usage: ${command} --socket PATH [options]

${summary}

  --socket PATH            vhost-user unix socket to listen on (replaced if stale)
${lines.join('\n')}
  --id ID                  device id in the logs
  --log-level L            ${LOG_LEVELS.join('|')} (default info, or VMM_LOG_LEVEL)
  --help                   show this text
`;
}

/** A fault a kind's process can be told to inject (QMP `inject-fault kind=NAME device=ID opt=…`). */
export interface DeviceFault {
  readonly help: string;
  readonly options: readonly OptionDef[];
  /** The control message sent to the device process (DeviceProcess.send). */
  message(values: OptionValues): Record<string, unknown>;
}

export interface DeviceKind {
  /** `--device NAME,…` and `device_add driver=NAME`. */
  readonly name: string;
  /** Other driver names accepted (QEMU's `virtio-blk-device`). */
  readonly aliases?: readonly string[];
  /** `query-processes` role. */
  readonly role: string;
  /** Virtio device ID (virtio 1.2 §5). */
  readonly virtioId: number;
  /** Bytes of configuration space the transport reads from the back-end (GET_CONFIG). */
  readonly configSize: number;
  /** Largest ring the transport offers any queue (QueueNumMax); the device model's own per-queue maximum, which its process tells in the ready handshake, may be lower. */
  readonly maxQueueSize: number;
  readonly options: readonly OptionDef[];
  /** The device process's entry point (a .ts file); it parses its argv with parseDeviceArgv and these options. */
  readonly main: string;
  /** Virtqueues the device has with these options. */
  queues(values: OptionValues): number;
  /**
   * Queues whose buffers the device holds until it has something to say
   * (virtio-net's receive queues, virtio-iommu's event queue): buffers
   * outstanding there are normal, not a stall after a restart. Default none.
   */
  heldQueues?(values: OptionValues): readonly number[];
  /**
   * vhost-user protocol features the orchestrator accepts from this kind's
   * back-end on top of the ones every kind gets; a back-end announcing a
   * protocol feature outside both is refused (the wrong process behind the socket).
   */
  readonly protocolFeatures: bigint;
  /** Whether a warm spare process may take over after a crash (not when the process caches state another one changed). */
  warmSpare(values: OptionValues): boolean;
  /**
   * Checks across options or of a value's shape that the schema cannot say
   * (exactly one of two options, a MAC address): throws DeviceOptionError
   * naming the option. Called wherever options are parsed for this kind.
   */
  validate?(values: OptionValues): void;
  /** Options a replacement back-end (device_add … replace=true) must keep. */
  readonly fixedOnReplace?: readonly string[];
  readonly faults?: Readonly<Record<string, DeviceFault>>;
  /** The kind's QMP query (`query-block` for disks): its command and one row per device. */
  readonly query?: { readonly command: string; row(id: string, values: OptionValues): Record<string, unknown> };
  /**
   * A QMP query each device's process answers (`query-blockstats` for disks:
   * counters only the process has): the command, and the control message
   * sent with DeviceProcess.request(); the process's answer is the device's row.
   */
  readonly processQuery?: { readonly command: string; readonly message: Readonly<Record<string, unknown>> };
}
