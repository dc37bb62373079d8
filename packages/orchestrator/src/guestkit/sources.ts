// Finds the Debian archive this machine already uses, from its own apt
// configuration (sources.list(5): one-line "deb URI suite comps" files and
// deb822 "*.sources" stanzas), so that no mirror host is ever written into
// this code. The security archive is skipped: it carries no trixie kernel.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GuestKitError } from './errors.ts';

export interface AptSource {
  uri: string;
  suites: string[];
  components: string[];
  file: string;
}

const DEBIAN_SUITE = /^(buster|bullseye|bookworm|trixie|forky|duke|sid|stable|testing|unstable|oldstable|oldoldstable)(-updates|-backports|-proposed-updates)?$/;

/** Parses one-line style entries ("deb [opts] uri suite comp..."). */
export function parseOneLineSources(text: string, file: string): AptSource[] {
  const out: AptSource[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) continue;
    const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)(.*)$/.exec(line);
    if (!m) continue;
    out.push({ uri: m[1]!, suites: [m[2]!], components: (m[3] ?? '').trim().split(/\s+/).filter(Boolean), file });
  }
  return out;
}

/** Parses deb822 style stanzas (Types/URIs/Suites/Components/Enabled). */
export function parseDeb822Sources(text: string, file: string): AptSource[] {
  const out: AptSource[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last = '';
    for (const raw of stanza.split('\n')) {
      if (raw.startsWith('#')) continue;
      if (/^\s/.test(raw) && last) {
        fields.set(last, `${fields.get(last)} ${raw.trim()}`);
        continue;
      }
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(raw);
      if (!m) continue;
      last = m[1]!.toLowerCase();
      fields.set(last, m[2]!.trim());
    }
    if (!(fields.get('types') ?? '').split(/\s+/).includes('deb')) continue;
    if ((fields.get('enabled') ?? 'yes').toLowerCase() === 'no') continue;
    const suites = (fields.get('suites') ?? '').split(/\s+/).filter(Boolean);
    const components = (fields.get('components') ?? '').split(/\s+/).filter(Boolean);
    for (const uri of (fields.get('uris') ?? '').split(/\s+/).filter(Boolean)) out.push({ uri, suites, components, file });
  }
  return out;
}

/** All `deb` entries of the system's apt configuration under `root` (default /etc/apt). */
export function readAptSources(root = '/etc/apt'): AptSource[] {
  const out: AptSource[] = [];
  const tryRead = (f: string): string | null => {
    try {
      return readFileSync(f, 'utf8');
    } catch {
      return null;
    }
  };
  const main = tryRead(join(root, 'sources.list'));
  if (main !== null) out.push(...parseOneLineSources(main, join(root, 'sources.list')));
  let names: string[];
  try {
    names = readdirSync(join(root, 'sources.list.d')).sort();
  } catch {
    names = [];
  }
  for (const n of names) {
    const f = join(root, 'sources.list.d', n);
    // apt itself only reads these two suffixes; "*.disabled" etc. are ignored.
    if (n.endsWith('.list')) out.push(...parseOneLineSources(tryRead(f) ?? '', f));
    else if (n.endsWith('.sources')) out.push(...parseDeb822Sources(tryRead(f) ?? '', f));
  }
  return out;
}

/** The base URL of the Debian archive (main, not security), without a trailing slash. */
export function pickDebianMirror(sources: AptSource[]): string | null {
  for (const s of sources) {
    if (!/^https?:\/\//.test(s.uri)) continue;
    const base = s.uri.replace(/\/+$/, '');
    if (/-security$/.test(base)) continue;
    if (!s.components.includes('main')) continue;
    if (!s.suites.some((x) => DEBIAN_SUITE.test(x))) continue;
    return base;
  }
  return null;
}

/** The mirror to use: `VMM_DEBIAN_MIRROR` if set, otherwise the system's Debian archive. */
export function debianMirror(root = '/etc/apt'): string {
  const env = process.env.VMM_DEBIAN_MIRROR;
  if (env) return env.replace(/\/+$/, '');
  const m = pickDebianMirror(readAptSources(root));
  if (!m) {
    throw new GuestKitError(
      'ERR_GUEST_NO_MIRROR',
      `no Debian archive found in ${root}/sources.list or ${root}/sources.list.d/ (need a "deb" entry with component main); set VMM_DEBIAN_MIRROR to the archive's base URL`,
    );
  }
  return m;
}
