// Adaptive busy-polling for a device process's single thread: after the
// event-driven work of a wake-up, keep looking for more for up to N µs
// before going back to sleep on eventfds. The idea of NAPI's busy poll and
// of vhost-net's busyloop_timeout (drivers/vhost/net.c: with the ring empty,
// poll it with kicks disabled for up to busyloop_timeout µs, then re-enable
// kicks and check once more). A frame or a chain that arrives within the
// window is handled without a kick, an eventfd wake-up and a trip through
// the scheduler; the price is a core kept busy for up to N µs after the
// last work, which on a machine with fewer cores than busy processes is
// taken from someone else.
//
// The loop is synchronous, so it is bounded: it leaves after `timeoutUs`
// without work, and after SESSION_US of continuous work it yields to the
// event loop (vhost-user messages, signals, timers) and resumes from
// setImmediate.

/** Longest stretch of polling before the event loop gets a turn. */
const SESSION_US = 2_000;

export interface BusyPollHooks {
  /** One pass over every source; true when it found and handled work. */
  step: () => boolean;
  /** Polling starts: ask the peers not to signal (kicks off, doorbell flags down). */
  enter: () => void;
  /** Polling ends: ask the peers to signal again, then look once more (something may have come without a signal). */
  leave: () => void;
}

export class BusyPoll {
  readonly timeoutUs: number;
  private readonly hooks: BusyPollHooks;
  private readonly now: () => number;
  private running = false;
  private resumeScheduled = false;
  /** Polling sessions and steps that found work (diagnostics). */
  sessions = 0;
  busySteps = 0;

  /** `now` is a clock in milliseconds (performance.now by default; tests pass their own). */
  constructor(timeoutUs: number, hooks: BusyPollHooks, now: () => number = () => performance.now()) {
    if (!Number.isInteger(timeoutUs) || timeoutUs < 0 || timeoutUs > 1_000_000) throw new RangeError(`busy-poll ${timeoutUs} µs: expected an integer from 0 (off) to 1000000`);
    this.timeoutUs = timeoutUs;
    this.hooks = hooks;
    this.now = now;
  }

  get enabled(): boolean {
    return this.timeoutUs > 0;
  }

  /** Call after handling a wake-up. Does nothing when off or already polling (a step's own work calls back here). */
  run(): void {
    if (this.timeoutUs === 0 || this.running) return;
    this.running = true;
    this.sessions++;
    let yielded = false;
    try {
      this.hooks.enter();
      const start = this.now();
      let lastWork = start;
      for (;;) {
        const t = this.now();
        if (this.hooks.step()) {
          this.busySteps++;
          lastWork = t;
        } else if ((t - lastWork) * 1000 >= this.timeoutUs) break;
        if ((t - start) * 1000 >= SESSION_US) {
          yielded = true;
          break;
        }
      }
    } finally {
      try {
        this.hooks.leave();
      } finally {
        this.running = false;
      }
    }
    if (yielded && !this.resumeScheduled) {
      this.resumeScheduled = true;
      setImmediate(() => {
        this.resumeScheduled = false;
        this.run();
      });
    }
  }
}
