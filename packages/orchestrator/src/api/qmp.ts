// QMP (QEMU docs/interop/qmp-spec.rst), transport-independent: a session
// turns each JSON value a client sent (json-stream.ts frames them) into one
// reply, and events into JSON objects. The unix-socket server and the
// WebSocket server both use it, so both speak exactly the same commands.
//
// Answers follow QEMU 7.2's, checked against qemu-system-riscv64 in
// test/qmp.test.ts: the request checks of qapi/qmp-dispatch.c, the argument
// checks of the QAPI input visitor (missing, wrong type, unexpected member),
// QEMU's error classes and wording, and the return shapes of the commands.

import { readFileSync } from 'node:fs';
import { QmpError, type VmControl } from './control.ts';
import type { JsonValue } from './json-stream.ts';

/** Every event vmm sends (qapi's event names and members where QEMU has the event). */
export const QMP_EVENTS = ['SHUTDOWN', 'POWERDOWN', 'RESET', 'STOP', 'RESUME', 'DEVICE_DELETED', 'DEVICE_NEEDS_RESET', 'BACKEND_RESTARTED', 'BACKEND_REPLACED', 'BACKEND_FAILED', 'BACKEND_STALLED'] as const;
export type QmpEventName = (typeof QMP_EVENTS)[number];

export interface QmpEvent {
  event: QmpEventName;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** An event; like QEMU, one without members carries no `data`. */
export function makeEvent(event: QmpEventName, data?: Record<string, unknown>): QmpEvent {
  const now = Date.now();
  const withData = data !== undefined && Object.keys(data).length > 0;
  return { event, ...(withData ? { data } : {}), timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 } };
}

/** vmm's own version (the orchestrator package's), in query-version's shape. */
const VMM_VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
function versionInfo(): { qemu: { major: number; minor: number; micro: number }; package: string } {
  const [major = 0, minor = 0, micro = 0] = VMM_VERSION.split(/[.+-]/).map((n) => Number.parseInt(n, 10) || 0);
  return { qemu: { major, minor, micro }, package: `vmm ${VMM_VERSION}` };
}
export const QMP_VERSION = versionInfo();

export const QMP_GREETING = { QMP: { version: QMP_VERSION, capabilities: [] as string[] } };

type Args = Record<string, JsonValue>;
type Handler = (vm: VmControl, args: Args) => Promise<unknown> | unknown;

/**
 * An argument's QAPI type (the ones vmm's commands use): str, bool, or
 * a list of str; a `*` before the member's name makes it optional, as in
 * qapi/*.json.
 */
type ArgType = 'str' | 'bool' | ['str'];

interface Command {
  args?: Record<string, ArgType>;
  /** More members than `args` are passed on (device_add: the device's properties, QAPI 'gen': false). */
  open?: boolean;
  run: Handler;
}

const noArgs = (run: Handler): Command => ({ run });

const COMMANDS: Record<string, Command> = {
  qmp_capabilities: { args: { '*enable': ['str'] }, run: () => ({}) }, // answered by the session itself
  'query-version': noArgs(() => QMP_VERSION),
  'query-name': noArgs((vm) => {
    const name = vm.name();
    return name === null ? {} : { name };
  }),
  'query-status': noArgs((vm) => {
    const status = vm.status();
    return { status, running: status === 'running', singlestep: false };
  }),
  stop: noArgs(async (vm) => { await vm.stop(); return {}; }),
  cont: noArgs(async (vm) => { await vm.cont(); return {}; }),
  system_reset: noArgs(async (vm) => { await vm.reset(); return {}; }),
  system_powerdown: noArgs(async (vm) => { await vm.powerdown(); return {}; }),
  // As QEMU: the reply goes out first, then the VM ends (SHUTDOWN, and the connection closes).
  quit: noArgs((vm) => {
    setImmediate(() => void vm.quit().catch(() => { /* the VM is going down either way; its parts log their own failures */ }));
    return {};
  }),
  // QEMU's riscv virt machine: harts are /machine/soc0/harts[N] with props {core-id}.
  'query-cpus-fast': noArgs((vm) =>
    vm.queryCpus().map((c) => ({
      'thread-id': c.threadId,
      props: { 'core-id': c.index },
      'qom-path': `/machine/soc0/harts[${c.index}]`,
      'cpu-index': c.index,
      target: 'riscv64',
      // Not in QEMU's CpuInfoFast: which engine the hart runs (x- as QMP names extensions).
      'x-engine': c.engine,
    }))),
  // A vmm disk is one block node named like its device (qdev is the device's
  // id, as QEMU gives it for a device that has one): with query-nodes the same
  // counters come as the node's (QEMU's BlockStats without device/qdev).
  'query-blockstats': {
    args: { '*query-nodes': 'bool' },
    run: async (vm, args) =>
      (await vm.queryBlockstats()).map((b) =>
        args['query-nodes'] === true ? { 'node-name': b.device, stats: b.stats } : { device: b.device, 'node-name': b.device, qdev: b.device, stats: b.stats }),
  },
  'query-processes': noArgs((vm) => vm.queryProcesses()),
  // The device's own options are its kind's, checked by its schema (DeviceKind.options).
  device_add: { args: { driver: 'str', '*id': 'str', '*bus': 'str' }, open: true, run: async (vm, args) => { await vm.deviceAdd(args); return {}; } },
  device_del: { args: { id: 'str' }, run: async (vm, args) => { await vm.deviceDel(args.id as string); return {}; } },
  'inject-fault': {
    // A fault's own options (count, ms, on, …) are the device kind's, checked by its schema (DeviceKind.faults).
    args: { kind: 'str', '*device': 'str', '*id': 'str' },
    open: true,
    run: (vm, args) => vm.injectFault(args),
  },
  // With the device kinds' own queries (query-block for disks).
  'query-commands': noArgs((vm) => [...new Set([...QMP_COMMANDS, ...vm.deviceQueries()])].map((name) => ({ name }))),
};

/** The commands vmm itself has; the device kinds add their queries (VmControl.deviceQueries). */
export const QMP_COMMANDS: readonly string[] = Object.keys(COMMANDS);

/** A device kind's query (DeviceKind.query, e.g. query-block): no arguments, one row per device of the kind. */
const deviceQuery = (name: string): Command => noArgs((vm) => vm.queryDevices(name));

const isObject = (v: unknown): v is Record<string, JsonValue> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** What the QAPI input visitor expects, as its "Invalid parameter type" message names it; null if `v` is one. */
function expected(type: ArgType, v: JsonValue): string | null {
  switch (type) {
    case 'str': return typeof v === 'string' ? null : 'string';
    case 'bool': return typeof v === 'boolean' ? null : 'boolean';
    default: return Array.isArray(v) ? null : 'array';
  }
}

/** The input visitor's checks, in its order: each declared member (missing, type), then members nobody asked for. */
function checkArgs(cmd: Command, args: Args): void {
  const declared = new Set<string>();
  for (const [key, type] of Object.entries(cmd.args ?? {})) {
    const optional = key.startsWith('*');
    const name = optional ? key.slice(1) : key;
    declared.add(name);
    if (!Object.hasOwn(args, name)) {
      if (optional) continue;
      throw new QmpError('GenericError', `Parameter '${name}' is missing`);
    }
    const v = args[name]!;
    const want = expected(type, v);
    if (want !== null) throw new QmpError('GenericError', `Invalid parameter type for '${name}', expected: ${want}`);
    if (Array.isArray(type) && Array.isArray(v)) {
      v.forEach((e, i) => {
        const w = expected(type[0], e);
        if (w !== null) throw new QmpError('GenericError', `Invalid parameter type for '${name}[${i}]', expected: ${w}`);
      });
    }
  }
  if (cmd.open) return;
  for (const k of Object.keys(args)) if (!declared.has(k)) throw new QmpError('GenericError', `Parameter '${k}' is unexpected`);
}

/** QMP capabilities a client may enable; vmm offers none (QEMU offers 'oob'). */
const KNOWN_CAPABILITIES = ['oob'];

/** One client's QMP session: capability negotiation first, then commands. */
export class QmpSession {
  private negotiated: boolean;
  private readonly vm: VmControl;

  /** `requireNegotiation` is true for the QMP socket; the WebSocket API skips it (its token is its handshake). */
  constructor(vm: VmControl, requireNegotiation: boolean) {
    this.vm = vm;
    this.negotiated = !requireNegotiation;
  }

  get ready(): boolean { return this.negotiated; }

  /** Handle one JSON value from the client; returns the reply object. Never throws. */
  async handle(msg: JsonValue): Promise<Record<string, unknown>> {
    // qmp_dispatch(): the request object's own checks.
    if (!isObject(msg)) return errorReply(new QmpError('GenericError', 'QMP input must be a JSON object'), undefined);
    const id = Object.hasOwn(msg, 'id') ? msg.id : undefined;
    try {
      for (const [k, v] of Object.entries(msg)) {
        if (k === 'execute') {
          if (typeof v !== 'string') throw new QmpError('GenericError', "QMP input member 'execute' must be a string");
        } else if (k === 'arguments') {
          if (!isObject(v)) throw new QmpError('GenericError', "QMP input member 'arguments' must be an object");
        } else if (k !== 'id') {
          // exec-oob too: out-of-band execution is a capability vmm does not offer.
          throw new QmpError('GenericError', `QMP input member '${k}' is unexpected`);
        }
      }
      if (!Object.hasOwn(msg, 'execute')) throw new QmpError('GenericError', "QMP input lacks member 'execute'");
      const name = msg.execute as string;
      const args = (msg.arguments ?? {}) as Args;
      // Before negotiation only qmp_capabilities exists (QEMU 7.2 answers any other name so).
      if (!this.negotiated && name !== 'qmp_capabilities') {
        throw new QmpError('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
      }
      const cmd = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : this.vm.deviceQueries().includes(name) ? deviceQuery(name) : undefined;
      if (!cmd) throw new QmpError('CommandNotFound', `The command ${name} has not been found`);
      checkArgs(cmd, args);
      if (name === 'qmp_capabilities') return withId({ return: this.negotiate(args) }, id);
      const result = await cmd.run(this.vm, args);
      return withId({ return: result ?? {} }, id);
    } catch (e) {
      return errorReply(e instanceof QmpError ? e : new QmpError('GenericError', (e as Error).message ?? String(e)), id);
    }
  }

  /** qmp_capabilities: the end of negotiation (monitor/qmp-cmds-control.c). */
  private negotiate(args: Args): Record<string, never> {
    // In QEMU's order: the enum is checked when the arguments are read, then the state, then what is offered.
    const enable = (args.enable ?? []) as string[];
    enable.forEach((c, i) => {
      if (!KNOWN_CAPABILITIES.includes(c)) throw new QmpError('GenericError', `Parameter 'enable[${i}]' does not accept value '${c}'`);
    });
    if (this.negotiated) throw new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
    if (enable.length > 0) throw new QmpError('GenericError', `Capability '${enable[0]}' not available`);
    this.negotiated = true;
    return {};
  }
}

function withId(reply: Record<string, unknown>, id: unknown): Record<string, unknown> {
  return id === undefined ? reply : { ...reply, id };
}

function errorReply(e: QmpError, id: unknown): Record<string, unknown> {
  return withId({ error: { class: e.errorClass, desc: e.message } }, id);
}

/** The reply to input the JSON stream could not parse (no id: there was no request object). */
export function parseErrorReply(desc: string): Record<string, unknown> {
  return errorReply(new QmpError('GenericError', desc), undefined);
}
