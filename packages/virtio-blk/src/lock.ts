// Small async locks for the qcow2 metadata paths. Single-threaded (one
// event loop), so plain counters suffice; waiters run in FIFO order.

/** Mutual exclusion: at most one holder at a time. */
export class AsyncMutex {
  #tail: Promise<void> = Promise.resolve();

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.#tail;
    let release!: () => void;
    this.#tail = new Promise<void>((r) => (release = r));
    await prev;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

/**
 * Readers/writer lock, writer-preferring: once a writer waits, new readers
 * queue behind it, so a stream of reads cannot starve a discard.
 */
export class AsyncRwLock {
  #readers = 0;
  #writer = false;
  #queue: { exclusive: boolean; wake: () => void }[] = [];

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#writer || this.#queue.length > 0) {
      await new Promise<void>((wake) => this.#queue.push({ exclusive: false, wake }));
    } else {
      this.#readers++;
    }
    try {
      return await fn();
    } finally {
      this.#readers--;
      this.#pump();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#writer || this.#readers > 0 || this.#queue.length > 0) {
      await new Promise<void>((wake) => this.#queue.push({ exclusive: true, wake }));
    } else {
      this.#writer = true;
    }
    try {
      return await fn();
    } finally {
      this.#writer = false;
      this.#pump();
    }
  }

  #pump(): void {
    while (this.#queue.length > 0 && !this.#writer) {
      const next = this.#queue[0]!;
      if (next.exclusive) {
        if (this.#readers > 0) return;
        this.#queue.shift();
        this.#writer = true;
        next.wake();
        return;
      }
      this.#queue.shift();
      this.#readers++;
      next.wake();
    }
  }
}
