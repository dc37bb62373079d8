// Debian archive metadata: the signed InRelease file (its SHA256 section
// is the root of the hash chain) and the Packages index (RFC 822-like
// stanzas, see deb-control(5) and Debian Policy §5.3/§5.6).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { GuestKitError } from './errors.ts';

const run = promisify(execFile);

export interface ReleaseFile {
  codename: string;
  suite: string;
  date: string;
  acquireByHash: boolean;
  /** path relative to dists/<suite>/ → expected SHA256 and size */
  sha256: Map<string, { sha256: string; size: number }>;
}

/** Parses the (clearsigned) InRelease text; only the signed body is read. */
export function parseRelease(text: string): ReleaseFile {
  let body = text;
  const begin = text.indexOf('-----BEGIN PGP SIGNED MESSAGE-----');
  if (begin >= 0) {
    const start = text.indexOf('\n\n', begin);
    const end = text.indexOf('-----BEGIN PGP SIGNATURE-----');
    body = text.slice(start + 2, end >= 0 ? end : undefined);
  }
  const fields = new Map<string, string>();
  const sha256 = new Map<string, { sha256: string; size: number }>();
  let section = '';
  for (const line of body.split('\n')) {
    if (/^\s/.test(line)) {
      if (section === 'sha256') {
        const [h, size, path] = line.trim().split(/\s+/);
        if (h && size && path) sha256.set(path, { sha256: h.toLowerCase(), size: Number(size) });
      }
      continue;
    }
    const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    section = m[1]!.toLowerCase();
    fields.set(section, m[2]!);
  }
  return {
    codename: fields.get('codename') ?? '',
    suite: fields.get('suite') ?? '',
    date: fields.get('date') ?? '',
    acquireByHash: (fields.get('acquire-by-hash') ?? '').toLowerCase() === 'yes',
    sha256,
  };
}

export const DEBIAN_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

/**
 * Verifies the InRelease signature with gpgv against Debian's keyring.
 * Returns null when it is good, or a reason (no gpgv, no keyring, bad or
 * unknown key) the caller turns into a warning or an error.
 */
export async function verifyReleaseSignature(text: string, keyring = DEBIAN_KEYRING): Promise<string | null> {
  if (!existsSync(keyring)) return `keyring ${keyring} not found (Debian package debian-archive-keyring)`;
  const dir = await mkdtemp(join(tmpdir(), 'vmm-gpgv-'));
  try {
    const f = join(dir, 'InRelease');
    await writeFile(f, text);
    try {
      await run('gpgv', ['--keyring', keyring, f]);
      return null;
    } catch (e) {
      const err = e as NodeJS.ErrnoException & { stderr?: string };
      if (err.code === 'ENOENT') return 'gpgv not found (Debian package gpgv)';
      const lines = String(err.stderr ?? err.message).trim().split('\n');
      return `gpgv rejected the signature: ${lines[lines.length - 1]}`;
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface PackageStanza {
  Package: string;
  Version: string;
  Architecture: string;
  Filename: string;
  Size: number;
  SHA256: string;
  Depends: string;
  Provides: string;
}

/** Parses a Packages index into stanzas (only the fields we use). */
export function parsePackages(text: string): PackageStanza[] {
  const out: PackageStanza[] = [];
  for (const chunk of text.split(/\n\n+/)) {
    const f = new Map<string, string>();
    let last = '';
    for (const line of chunk.split('\n')) {
      if (/^\s/.test(line)) {
        if (last) f.set(last, `${f.get(last)}\n${line}`);
        continue;
      }
      const i = line.indexOf(':');
      if (i <= 0) continue;
      last = line.slice(0, i);
      f.set(last, line.slice(i + 1).trim());
    }
    const name = f.get('Package');
    if (!name) continue;
    out.push({
      Package: name,
      Version: f.get('Version') ?? '',
      Architecture: f.get('Architecture') ?? '',
      Filename: f.get('Filename') ?? '',
      Size: Number(f.get('Size') ?? 0),
      SHA256: (f.get('SHA256') ?? '').toLowerCase(),
      Depends: f.get('Depends') ?? '',
      Provides: f.get('Provides') ?? '',
    });
  }
  return out;
}

/**
 * Debian version comparison (Debian Policy §5.6.12): epoch, then upstream
 * and revision compared with the dpkg algorithm ('~' sorts before
 * everything, letters before non-letters).
 */
export function compareDebVersions(a: string, b: string): number {
  const split = (v: string): [number, string, string] => {
    let epoch = 0;
    const c = v.indexOf(':');
    if (c >= 0) {
      epoch = Number(v.slice(0, c));
      v = v.slice(c + 1);
    }
    const d = v.lastIndexOf('-');
    return d >= 0 ? [epoch, v.slice(0, d), v.slice(d + 1)] : [epoch, v, ''];
  };
  const order = (ch: string): number => {
    if (ch === '~') return -1;
    if (/[A-Za-z]/.test(ch)) return ch.charCodeAt(0);
    return ch.charCodeAt(0) + 256;
  };
  const cmpPart = (x: string, y: string): number => {
    let i = 0;
    let j = 0;
    while (i < x.length || j < y.length) {
      while ((i < x.length && !/\d/.test(x[i]!)) || (j < y.length && !/\d/.test(y[j]!))) {
        const ox = i < x.length && !/\d/.test(x[i]!) ? order(x[i]!) : 0;
        const oy = j < y.length && !/\d/.test(y[j]!) ? order(y[j]!) : 0;
        if (ox !== oy) return ox - oy;
        i++;
        j++;
      }
      let nx = '';
      let ny = '';
      while (i < x.length && /\d/.test(x[i]!)) nx += x[i++];
      while (j < y.length && /\d/.test(y[j]!)) ny += y[j++];
      const diff = Number(nx || '0') - Number(ny || '0');
      if (diff !== 0) return diff;
    }
    return 0;
  };
  const [ea, ua, ra] = split(a);
  const [eb, ub, rb] = split(b);
  if (ea !== eb) return ea - eb;
  return cmpPart(ua, ub) || cmpPart(ra, rb);
}

/** The newest stanza of a package, or a typed error naming it. */
export function newest(index: PackageStanza[], name: string): PackageStanza {
  let best: PackageStanza | undefined;
  for (const p of index) if (p.Package === name && (!best || compareDebVersions(p.Version, best.Version) > 0)) best = p;
  if (!best) throw new GuestKitError('ERR_GUEST_RESOLVE', `package ${name} is not in the index`);
  return best;
}
