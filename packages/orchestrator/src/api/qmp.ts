// QMP wire protocol (QEMU docs/interop/qmp-spec.rst), transport-independent:
// a session turns one JSON text into one reply, and events into JSON texts.
// The unix-socket server and the WebSocket server both use it, so both speak
// exactly the same commands with QMP-shaped answers.

import { QmpError, type VmControl } from './control.ts';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export function makeEvent(event: string, data?: Record<string, unknown>): QmpEvent {
  const now = Date.now();
  return { event, ...(data ? { data } : {}), timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 } };
}

export const QMP_GREETING = {
  QMP: { version: { qemu: { major: 0, minor: 1, micro: 0 }, package: 'vmm' }, capabilities: [] as string[] },
};

type Args = Record<string, unknown>;
type Handler = (vm: VmControl, args: Args) => Promise<unknown> | unknown;

function str(args: Args, key: string): string {
  const v = args[key];
  if (typeof v !== 'string' || v === '') throw new QmpError('GenericError', `Parameter '${key}' is missing or not a string`);
  return v;
}

const COMMANDS: Record<string, Handler> = {
  'query-status': (vm) => {
    const status = vm.status();
    return { status, running: status === 'running', singlestep: false };
  },
  stop: async (vm) => { await vm.stop(); return {}; },
  cont: async (vm) => { await vm.cont(); return {}; },
  system_reset: async (vm) => { await vm.reset(); return {}; },
  system_powerdown: async (vm) => { await vm.powerdown(); return {}; },
  quit: async (vm) => { await vm.quit(); return {}; },
  'query-processes': (vm) => vm.queryProcesses(),
  device_add: async (vm, args) => { str(args, 'driver'); str(args, 'id'); await vm.deviceAdd(args); return {}; },
  device_del: async (vm, args) => { await vm.deviceDel(str(args, 'id')); return {}; },
  'inject-fault': (vm, args) => { str(args, 'kind'); return vm.injectFault(args); },
  'query-commands': (vm) => [...Object.keys(COMMANDS), ...vm.deviceQueries(), 'qmp_capabilities'].map((name) => ({ name })),
};

export const QMP_COMMANDS: readonly string[] = [...Object.keys(COMMANDS), 'qmp_capabilities'];

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

  /** Handle one JSON text; returns the reply object. Never throws. */
  async handle(text: string): Promise<Record<string, unknown>> {
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      return errorReply(new QmpError('GenericError', `JSON parse error, ${(e as Error).message}`), undefined);
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      return errorReply(new QmpError('GenericError', 'QMP input must be a JSON object'), undefined);
    }
    const m = msg as Record<string, unknown>;
    const id = m.id;
    const name = m.execute;
    if (typeof name !== 'string') return errorReply(new QmpError('GenericError', "QMP input lacks member 'execute'"), id);
    const args = m.arguments ?? {};
    if (typeof args !== 'object' || args === null || Array.isArray(args)) {
      return errorReply(new QmpError('GenericError', "QMP input member 'arguments' must be an object"), id);
    }
    if (name === 'qmp_capabilities') {
      if (this.negotiated) return errorReply(new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored'), id);
      this.negotiated = true;
      return withId({ return: {} }, id);
    }
    if (!this.negotiated) {
      return errorReply(new QmpError('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'"), id);
    }
    // A device kind's own query (query-block for disks) comes from its registration.
    const handler = COMMANDS[name] ?? (this.vm.deviceQueries().includes(name) ? (vm: VmControl) => vm.queryDevices(name) : undefined);
    if (!handler) return errorReply(new QmpError('CommandNotFound', `The command ${name} has not been found`), id);
    try {
      const result = await handler(this.vm, args as Args);
      return withId({ return: result ?? {} }, id);
    } catch (e) {
      return errorReply(e instanceof QmpError ? e : new QmpError('GenericError', (e as Error).message ?? String(e)), id);
    }
  }
}

function withId(reply: Record<string, unknown>, id: unknown): Record<string, unknown> {
  return id === undefined ? reply : { ...reply, id };
}

function errorReply(e: QmpError, id: unknown): Record<string, unknown> {
  return withId({ error: { class: e.errorClass, desc: e.message } }, id);
}
