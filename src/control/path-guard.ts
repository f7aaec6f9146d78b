// One rule for every path Ferry takes over (an adopted disk, a staging area or its copy,
// a mirror target): it is not Ferry's own metadata, and no disk, staging area or mirror
// uses it already, by name or as the same file (hard link, symlink) or device.
import fs from 'node:fs';
import path from 'node:path';
import { FerryError, fromSystemError } from '../errors.js';
import type { MetadataStore } from './store.js';

/** Throws PATH_IN_USE or INVALID_PATH unless `real` (a resolved path) is free for Ferry to use. */
export function assertPathFree(store: MetadataStore, dataDir: string, real: string): void {
  // Names Ferry's metadata owns even while no such file exists (SQLite creates and deletes
  // ferry.db-journal and ferry.db-wal itself): a file of ours there would be deleted under us.
  const dataReal = fs.realpathSync(dataDir);
  if (real.startsWith(path.join(dataReal, 'ferry.db')) || real.startsWith(path.join(dataReal, 'api-token'))) {
    throw new FerryError('INVALID_PATH', `${real} is part of Ferry's own metadata`);
  }
  const user = store.pathUser(real);
  if (user) throw new FerryError('PATH_IN_USE', `${real} is already used by ${user}`);
  let st: fs.Stats;
  try {
    st = fs.statSync(real);
  } catch {
    return; // a new file: nothing can share it yet
  }
  const same = (p: string): boolean => {
    let o: fs.Stats;
    try {
      o = fs.statSync(p);
    } catch {
      return false;
    }
    return st.isBlockDevice() ? o.isBlockDevice() && o.rdev === st.rdev : o.isFile() && o.dev === st.dev && o.ino === st.ino;
  };
  for (const f of fs.readdirSync(dataReal)) {
    if (same(path.join(dataReal, f))) throw new FerryError('INVALID_PATH', `${real} is the same file as ${path.join(dataReal, f)}, part of Ferry's own data directory`);
  }
  for (const u of store.usedPaths()) {
    if (same(u.path)) throw new FerryError('PATH_IN_USE', `${real} is the same ${st.isBlockDevice() ? 'device' : 'file'} as ${u.path}, already used by ${u.user}`);
  }
}

/**
 * Resolves a path Ferry will create or take: an existing one to its real path (with its
 * stat), a new one through its (existing) parent directory. Symlinks never hide a clash.
 */
export function resolveTargetPath(p: string, what: string): { real: string; stat: fs.Stats | null } {
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
