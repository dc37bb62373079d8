import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { download, type Reporter } from './download.ts';
import { GuestKitError } from './errors.ts';
import { serveLoopback } from './test-server.ts';

// A real HTTP server on loopback: a good file, one that fails twice
// before succeeding, and a 404.
const body = new Uint8Array(100_000).map((_, i) => (i * 13) & 0xff);
const sha = createHash('sha256').update(body).digest('hex');
let server: Server;
let base = '';
const hits = new Map<string, number>();
const dir = mkdtempSync(join(tmpdir(), 'vmm-dl-'));

beforeAll(async () => {
  const l = await serveLoopback((req, res) => {
    const n = (hits.get(req.url!) ?? 0) + 1;
    hits.set(req.url!, n);
    if (req.url === '/good' || (req.url === '/flaky' && n > 2)) {
      res.writeHead(200, { 'content-length': String(body.length) }).end(body);
    } else if (req.url === '/flaky') {
      res.writeHead(503).end();
    } else {
      res.writeHead(404).end();
    }
  });
  server = l.server;
  base = l.origin;
});
afterAll(() => {
  server.close();
  rmSync(dir, { recursive: true, force: true });
});

function recorder(): Reporter & { lines: string[] } {
  const lines: string[] = [];
  return { lines, info: (l) => lines.push(l), warn: (l) => lines.push(`warn: ${l}`) };
}

describe('download', () => {
  it('writes the file when its SHA256 matches', async () => {
    const dest = join(dir, 'good');
    expect(await download({ url: `${base}/good`, dest, sha256: sha, label: 'good', reporter: recorder(), backoffMs: 1 })).toBe(sha);
    expect(new Uint8Array(readFileSync(dest))).toEqual(body);
  });

  it('rejects a hash mismatch with a typed error and leaves no file behind', async () => {
    const dest = join(dir, 'bad');
    const err = await download({ url: `${base}/good`, dest, sha256: '0'.repeat(64), label: 'bad', reporter: recorder(), attempts: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestKitError);
    expect((err as GuestKitError).code).toBe('ERR_GUEST_HASH');
    expect((err as Error).message).toContain(sha);
    expect(readdirSync(dir).filter((f) => f.startsWith('bad'))).toEqual([]);
  });

  it('retries transient failures with a message per attempt', async () => {
    const r = recorder();
    const dest = join(dir, 'flaky');
    await download({ url: `${base}/flaky`, dest, sha256: sha, label: 'flaky', reporter: r, backoffMs: 1 });
    expect(hits.get('/flaky')).toBe(3);
    expect(r.lines.filter((l) => l.startsWith('warn: download of flaky failed (attempt'))).toHaveLength(2);
    expect(existsSync(dest)).toBe(true);
  });

  it('does not retry a 404 and says which URL', async () => {
    const err = await download({ url: `${base}/missing`, dest: join(dir, 'm'), label: 'missing', reporter: recorder(), backoffMs: 1 }).catch((e: unknown) => e);
    expect((err as GuestKitError).code).toBe('ERR_GUEST_DOWNLOAD');
    expect((err as Error).message).toContain(`${base}/missing`);
    expect(hits.get('/missing')).toBe(1);
  });
});
