// One rule for every path Ferry takes over (a pool, an adopted disk, a staging area or its
// copy, a mirror target): it is text a file system can name (absolute, no NUL byte); after
// symlinks are resolved it is nothing of Ferry's data directory (its metadata, keys,
// bitmaps, replica staging areas: any depth, the directory itself, a directory containing
// it) but the default pool Ferry creates there, nothing of the kernel's /proc, /sys or /dev
// but a block device; and no disk, staging area or mirror uses it already, by name or as
// the same file (hard link, symlink) or device.
import fs from 'node:fs';
import { drillMarkers } from './drill-markers.js';
import path from 'node:path';
import { FerryError, fromSystemError } from '../errors.js';
import type { MetadataStore } from './store.js';

/** The directory of the default pool inside the data directory (created by DiskRegistry.load). */
export const DEFAULT_POOL_DIR = 'pool';
/** The kernel's file systems: no data lives there, only views of processes, devices and the kernel. */
const kernelRoots = ['/proc', '/sys', '/dev'];
/** Directory levels of the data directory searched for a hard link to a path (it is a few levels deep). */
const dataDepthMax = 8;

/** Refuses a path given in a request before anything resolves it: a string, absolute, without a NUL byte. */
export function assertPathText(p: unknown, what: string): asserts p is string {
  if (typeof p !== 'string' || !path.isAbsolute(p)) throw new FerryError('INVALID_PATH', `${what} ${JSON.stringify(p)} must be an absolute path`);
  if (p.includes('\0')) throw new FerryError('INVALID_PATH', `${what} ${JSON.stringify(p)} contains a NUL byte`);
}

export function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/**
 * Throws INVALID_PATH when `real` (a resolved path; `stat` its stat, null for a file not yet
 * created) lies in the data directory outside the default pool, or in /proc, /sys or /dev
 * (but is not a block device there). `ownPath`: the one path in the data directory that
 * Ferry itself chose for this request (a replica's staging area), or null.
 */
export function assertNotReserved(dataDir: string, real: string, stat: fs.Stats | null, ownPath: string | null = null): void {
  for (const root of kernelRoots) {
    if (isInside(real, root) && !(root === '/dev' && stat?.isBlockDevice())) {
      throw new FerryError('INVALID_PATH', `${real} is in ${root}, which holds no data Ferry may use${root === '/dev' ? ' (only a block device there)' : ''}`);
    }
  }
  const dataReal = fs.realpathSync(dataDir);
  if (real === ownPath || isInside(real, path.join(dataReal, DEFAULT_POOL_DIR))) return;
  if (isInside(real, dataReal)) throw new FerryError('INVALID_PATH', `${real} is part of Ferry's own data directory ${dataReal}`);
}

/** Throws PATH_IN_USE or INVALID_PATH unless `real` (a resolved path) is free for Ferry to use (see the file comment). */
export function assertPathFree(store: MetadataStore, dataDir: string, real: string, ownPath: string | null = null): void {
  let st: fs.Stats | null = null;
  try {
    st = fs.statSync(real);
  } catch {
    st = null; // a new file: nothing can share it yet
  }
  assertNotReserved(dataDir, real, st, ownPath);
  const scratches = drillMarkers(dataDir).map((m) => ({ path: m.scratch, user: `the scratch area of the test failover of disk '${m.disk}'` }));
  const user = store.pathUser(real) ?? scratches.find((u) => u.path === real)?.user;
  if (user) throw new FerryError('PATH_IN_USE', `${real} is already used by ${user}`);
  if (!st) return;
  const s = st;
  const same = (o: fs.Stats): boolean => (s.isBlockDevice() ? o.isBlockDevice() && o.rdev === s.rdev : o.isFile() && o.dev === s.dev && o.ino === s.ino);
  const twin = sameInDataDir(dataDir, same);
  if (twin) throw new FerryError('INVALID_PATH', `${real} is the same file as ${twin}, part of Ferry's own data directory`);
  for (const u of [...store.usedPaths(), ...scratches]) {
    let o: fs.Stats;
    try {
      o = fs.statSync(u.path);
    } catch {
      continue;
    }
    if (same(o)) throw new FerryError('PATH_IN_USE', `${real} is the same ${s.isBlockDevice() ? 'device' : 'file'} as ${u.path}, already used by ${u.user}`);
  }
}

/** A file of the data directory (any depth, not in the default pool) for which `same` holds, if any. */
function sameInDataDir(dataDir: string, same: (o: fs.Stats) => boolean): string | null {
  const dataReal = fs.realpathSync(dataDir);
  const pool = path.join(dataReal, DEFAULT_POOL_DIR);
  const walk = (dir: string, depth: number): string | null => {
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch {
      return null;
    }
    for (const name of names) {
      const p = path.join(dir, name);
      if (p === pool) continue;
      let o: fs.Stats;
      try {
        o = fs.lstatSync(p);
      } catch {
        continue; // deleted meanwhile (SQLite's journal)
      }
      if (o.isDirectory()) {
        const found = depth < dataDepthMax ? walk(p, depth + 1) : null;
        if (found) return found;
      } else if (same(o)) {
        return p;
      }
    }
    return null;
  };
  return walk(dataReal, 0);
}

/**
 * Resolves a path Ferry will create or take: an existing one to its real path (with its
 * stat), a new one through its (existing) parent directory. Symlinks never hide a clash.
 */
export function resolveTargetPath(p: unknown, what: string): { real: string; stat: fs.Stats | null } {
  assertPathText(p, what);
  if (fs.existsSync(p)) {
    const real = fs.realpathSync(p);
    return { real, stat: fs.statSync(real) };
  }
  let dir: string;
  try {
    dir = fs.realpathSync(path.dirname(p));
  } catch (err) {
    throw fromSystemError(err, `${what} directory`);
  }
  if (!fs.statSync(dir).isDirectory()) throw new FerryError('INVALID_PATH', `${path.dirname(p)} is not a directory`);
  return { real: path.join(dir, path.basename(p)), stat: null };
}
