// HTTP downloads for the guest kit: streamed to a temporary file while
// hashing, verified against the SHA256 from the signed index chain, then
// renamed into place (so a crash never leaves a half file under its final
// name). Transient failures are retried with backoff and a clear message.
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { once } from 'node:events';
import { GuestKitError } from './errors.ts';

export interface Reporter {
  /** A line for the person running the command (stderr). */
  info(line: string): void;
  warn(line: string): void;
  /** Progress of one download; `total` may be 0 when unknown. */
  progress?(name: string, done: number, total: number): void;
}

const MiB = 1024 * 1024;
const fmt = (n: number): string => `${(n / MiB).toFixed(1)} MiB`;

/** Progress on stderr: a rewritten line on a TTY, plain start/end lines otherwise or under CI=true. */
export function stderrReporter(stream: NodeJS.WriteStream = process.stderr): Reporter {
  const tty = stream.isTTY === true && process.env.CI !== 'true';
  let lastDraw = 0;
  return {
    info: (l) => stream.write(`guest: ${l}\n`),
    warn: (l) => stream.write(`guest: warning: ${l}\n`),
    progress: (name, done, total) => {
      if (!tty) return;
      const now = Date.now();
      if (done !== total && now - lastDraw < 100) return;
      lastDraw = now;
      const t = total > 0 ? `${fmt(done)}/${fmt(total)} (${Math.floor((done / total) * 100)}%)` : fmt(done);
      stream.write(`\r\x1b[2Kguest: ${name} ${t}${done === total ? '\n' : ''}`);
    },
  };
}

export const silentReporter: Reporter = { info: () => {}, warn: () => {} };

export interface DownloadOptions {
  url: string;
  dest: string;
  /** Expected SHA256 (lower-case hex); when absent the hash is only returned. */
  sha256?: string;
  size?: number;
  label: string;
  reporter: Reporter;
  attempts?: number;
  backoffMs?: number;
}

class HttpStatusError extends Error {
  readonly status: number;
  constructor(status: number, url: string) {
    super(`HTTP ${status} for ${url}`);
    this.status = status;
  }
}

async function once1(o: DownloadOptions): Promise<string> {
  const res = await fetch(o.url);
  if (!res.ok || !res.body) throw new HttpStatusError(res.status, o.url);
  const total = Number(res.headers.get('content-length') ?? o.size ?? 0);
  const tmp = `${o.dest}.partial-${process.pid}`;
  const hash = createHash('sha256');
  const out = createWriteStream(tmp);
  let done = 0;
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      hash.update(chunk);
      done += chunk.length;
      if (!out.write(chunk)) await once(out, 'drain');
      o.reporter.progress?.(o.label, done, total);
    }
    out.end();
    await once(out, 'close');
  } catch (e) {
    out.destroy();
    await rm(tmp, { force: true });
    throw e;
  }
  const got = hash.digest('hex');
  if (o.sha256 && got !== o.sha256) {
    await rm(tmp, { force: true });
    throw new GuestKitError('ERR_GUEST_HASH', `${o.label}: SHA256 ${got} of ${o.url} does not match the index (${o.sha256}); ${done} bytes received${o.size ? ` of ${o.size}` : ''}`);
  }
  await rename(tmp, o.dest);
  return got;
}

/**
 * Downloads `url` to `dest`, verifying the hash. Up to `attempts` tries
 * (default 3) with growing backoff; a 404 is not retried (the file is not
 * there, the index is out of date). Returns the SHA256 of what was written.
 */
export async function download(o: DownloadOptions): Promise<string> {
  const attempts = o.attempts ?? 3;
  const backoff = o.backoffMs ?? 2000;
  let lastErr: unknown;
  if (o.reporter.progress === undefined || process.stderr.isTTY !== true || process.env.CI === 'true') {
    o.reporter.info(`fetching ${o.label}${o.size ? ` (${fmt(o.size)})` : ''}`);
  }
  for (let i = 1; i <= attempts; i++) {
    try {
      return await once1(o);
    } catch (e) {
      lastErr = e;
      if (e instanceof HttpStatusError && e.status === 404) break;
      if (i < attempts) {
        const wait = backoff * i;
        o.reporter.warn(`download of ${o.label} failed (attempt ${i}/${attempts}): ${(e as Error).message}; retrying in ${wait / 1000} s`);
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }
  if (lastErr instanceof GuestKitError) throw lastErr;
  throw new GuestKitError('ERR_GUEST_DOWNLOAD', `${o.label}: download of ${o.url} failed: ${(lastErr as Error).message}`, { cause: lastErr });
}

/** Fetches a small text resource (InRelease) with the same retry policy. */
export async function fetchText(url: string, label: string, reporter: Reporter, attempts = 3, backoffMs = 2000): Promise<string> {
  let lastErr: unknown;
  for (let i = 1; i <= attempts; i++) {
    try {
      const res = await fetch(url);
      if (!res.ok) throw new HttpStatusError(res.status, url);
      return await res.text();
    } catch (e) {
      lastErr = e;
      if (e instanceof HttpStatusError && e.status === 404) break;
      if (i < attempts) {
        reporter.warn(`download of ${label} failed (attempt ${i}/${attempts}): ${(e as Error).message}; retrying in ${(backoffMs * i) / 1000} s`);
        await new Promise((r) => setTimeout(r, backoffMs * i));
      }
    }
  }
  throw new GuestKitError('ERR_GUEST_DOWNLOAD', `${label}: download of ${url} failed: ${(lastErr as Error).message}`, { cause: lastErr });
}
