// BusyPoll's loop on an injected clock: it keeps stepping while work comes,
// leaves once `timeoutUs` passed without work, yields to the event loop after
// a long stretch of work, and brackets every session with enter/leave.
import { describe, expect, it } from 'vitest';
import { BusyPoll } from './busy-poll.ts';

/** A clock that advances 1 µs per reading. */
function fakeClock(): { now: () => number; us: () => number } {
  let t = 0;
  return { now: () => (t += 0.001), us: () => Math.round(t * 1000) };
}

describe('BusyPoll', () => {
  it('is inert at 0 µs and refuses a bad window', () => {
    let steps = 0;
    const p = new BusyPoll(0, { step: () => (steps++, false), enter: () => {}, leave: () => {} });
    p.run();
    expect(steps).toBe(0);
    expect(p.enabled).toBe(false);
    expect(() => new BusyPoll(-1, { step: () => false, enter: () => {}, leave: () => {} })).toThrow(/busy-poll -1/);
    expect(() => new BusyPoll(1.5, { step: () => false, enter: () => {}, leave: () => {} })).toThrow(RangeError);
  });

  it('polls until the window passes without work, counting from the last work found', () => {
    const c = fakeClock();
    const log: string[] = [];
    let work = 5; // the first five steps find something
    const p = new BusyPoll(
      20,
      {
        step: () => work-- > 0,
        enter: () => log.push(`enter@${c.us()}`),
        leave: () => log.push(`leave@${c.us()}`),
      },
      c.now,
    );
    p.run();
    expect(p.sessions).toBe(1);
    expect(p.busySteps).toBe(5);
    expect(log[0]).toBe('enter@0');
    // Five busy steps (1 µs each), then 20 µs idle: it left about 25 µs in, not at 20.
    const left = Number(log[1]!.split('@')[1]);
    expect(left).toBeGreaterThanOrEqual(25);
    expect(left).toBeLessThan(30);
  });

  it('does not nest: a step whose work calls run() again is not a second session', () => {
    const c = fakeClock();
    let n = 0;
    const p: BusyPoll = new BusyPoll(5, { step: () => (p.run(), n++ < 2), enter: () => {}, leave: () => {} }, c.now);
    p.run();
    expect(p.sessions).toBe(1);
  });

  it('after a long stretch of work leaves, lets the event loop run, and resumes', async () => {
    const c = fakeClock();
    let leaves = 0;
    let steps = 0;
    const p = new BusyPoll(10, { step: () => ++steps < 5000, enter: () => {}, leave: () => leaves++ }, c.now);
    p.run();
    // Work never stopped within the 2 ms session: it left once and scheduled a resumption.
    expect(leaves).toBe(1);
    expect(steps).toBeLessThan(5000);
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    expect(p.sessions).toBeGreaterThanOrEqual(2);
    expect(steps).toBeGreaterThanOrEqual(5000);
  });

  it('leaves even when a step throws', () => {
    let left = false;
    const p = new BusyPoll(10, { step: () => { throw new Error('boom'); }, enter: () => {}, leave: () => (left = true) });
    expect(() => p.run()).toThrow('boom');
    expect(left).toBe(true);
    // And can run again afterwards.
    expect(() => p.run()).toThrow('boom');
    expect(p.sessions).toBe(2);
  });
});
