// Resident memory of a process, with guest RAM counted apart. Every device
// process maps the VM's guest-RAM memfd MAP_SHARED; the pages it touched
// there (the buffers of the requests it served) show in its RSS but belong
// to the guest, not to the process. /proc/PID/smaps lists each mapping with
// its own Rss; a memfd mapping's path is "/memfd:NAME (deleted)".

import { readFileSync } from 'node:fs';

export interface ProcessMemory {
  /** VmRSS: everything resident, shared mappings included. */
  rssBytes: number;
  /** Resident pages of memfd mappings (guest RAM, the inflight region): shared with the VM, not the process's own. */
  sharedMemfdBytes: number;
  /** rssBytes − sharedMemfdBytes: what the process itself costs. */
  ownBytes: number;
}

/** Parse the text of /proc/PID/smaps; exported for tests. */
export function parseSmaps(text: string): { rssBytes: number; sharedMemfdBytes: number } {
  let rss = 0;
  let memfd = 0;
  let inMemfd = false;
  for (const line of text.split('\n')) {
    // A mapping header: "start-end perms offset dev inode [path]".
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      inMemfd = line.includes('/memfd:');
      continue;
    }
    if (line.startsWith('Rss:')) {
      const kb = Number(/^Rss:\s+(\d+) kB/.exec(line)?.[1] ?? 0);
      rss += kb;
      if (inMemfd) memfd += kb;
    }
  }
  return { rssBytes: rss * 1024, sharedMemfdBytes: memfd * 1024 };
}

/** The memory figures of a running process, or null when it is gone or unreadable. */
export function processMemory(pid: number | undefined): ProcessMemory | null {
  if (pid === undefined || pid <= 0) return null;
  try {
    const { rssBytes, sharedMemfdBytes } = parseSmaps(readFileSync(`/proc/${pid}/smaps`, 'utf8'));
    return { rssBytes, sharedMemfdBytes, ownBytes: rssBytes - sharedMemfdBytes };
  } catch {
    return null;
  }
}
