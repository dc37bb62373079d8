import { describe, expect, it } from 'vitest';
import { DeviceOptionError, optionsToArgv, parseDeviceArgv, parseDeviceOptions, splitOptionList, type OptionDef } from './device-kind.ts';

const DEFS: readonly OptionDef[] = [
  { name: 'file', type: 'string', required: true, argvAliases: ['image'], help: 'f' },
  { name: 'mode', type: 'enum', values: ['a', 'b'], help: 'm' },
  { name: 'ro', type: 'bool', default: false, help: 'r' },
  { name: 'n', type: 'int', min: 1, max: 8, default: 1, help: 'n' },
  { name: 'tag', type: 'string', maxBytes: 4, help: 't' },
];

function message(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(DeviceOptionError);
    return (e as Error).message;
  }
  throw new Error('accepted');
}

describe('device option schema: one parser for flags, QMP and a device process argv', () => {
  it('parses a flag list and QMP values alike, with defaults', () => {
    const fromFlag = parseDeviceOptions('k', DEFS, splitOptionList('file=x.img,ro,n=3,mode=b'));
    const fromQmp = parseDeviceOptions('k', DEFS, { driver: 'k', id: 'i', file: 'x.img', ro: true, n: 3, mode: 'b' }, ['driver', 'id']);
    expect(fromFlag).toEqual({ file: 'x.img', ro: true, n: 3, mode: 'b' });
    expect(fromQmp).toEqual(fromFlag);
    expect(parseDeviceOptions('k', DEFS, { file: 'y' })).toEqual({ file: 'y', ro: false, n: 1 });
  });

  it('round-trips through the device process argv the orchestrator builds', () => {
    const o = parseDeviceOptions('k', DEFS, { file: 'x.img', ro: 'on', n: '2', tag: 'ab' });
    const argv = ['--socket', '/s', '--id', 'd0', ...optionsToArgv(DEFS, o)];
    expect(parseDeviceArgv('k', DEFS, argv)).toEqual({ socket: '/s', id: 'd0', logLevel: process.env.VMM_LOG_LEVEL ?? 'info', options: o });
    // A bare boolean flag, --opt=value, and an alias.
    expect(parseDeviceArgv('k', DEFS, ['--socket=/s', '--image', 'z', '--ro'])?.options).toEqual({ file: 'z', ro: true, n: 1 });
    expect(parseDeviceArgv('k', DEFS, ['--help'])).toBeNull();
  });

  it('names the kind, the option and the value in the same words whatever the source', () => {
    const want = 'k: n=9: expected an integer from 1 to 8';
    expect(message(() => parseDeviceOptions('k', DEFS, splitOptionList('file=x,n=9')))).toBe(want);
    expect(message(() => parseDeviceOptions('k', DEFS, { file: 'x', n: 9 }))).toBe(want);
    expect(message(() => parseDeviceArgv('k', DEFS, ['--socket', 's', '--file', 'x', '--n', '9']))).toBe(want);
    expect(message(() => parseDeviceOptions('k', DEFS, { file: 'x', n: 1.5 }))).toBe('k: n=1.5: expected an integer from 1 to 8');
    expect(message(() => parseDeviceOptions('k', DEFS, { file: 'x', mode: 'c' }))).toBe('k: mode=c: expected a or b');
    expect(message(() => parseDeviceOptions('k', DEFS, { file: 'x', ro: 'perhaps' }))).toBe('k: ro=perhaps: expected on or off');
    expect(message(() => parseDeviceOptions('k', DEFS, { file: 'x', tag: 'toolong' }))).toBe('k: tag=toolong: longer than 4 bytes');
    expect(message(() => parseDeviceOptions('k', DEFS, { file: 'x', colour: 'red' }))).toBe("k: unknown option 'colour' (file, mode, ro, n, tag)");
    expect(message(() => parseDeviceArgv('k', DEFS, ['--socket', 's', '--file', 'x', '--colour', 'red']))).toBe("k: unknown option 'colour' (file, mode, ro, n, tag)");
    expect(message(() => parseDeviceOptions('k', DEFS, {}))).toBe("k: option 'file' is required");
    expect(message(() => parseDeviceArgv('k', DEFS, ['--file', 'x']))).toBe('k: --socket PATH is required');
    expect(message(() => parseDeviceArgv('k', DEFS, ['--socket', 's', '--file']))).toBe('k: --file needs a value');
  });
});
