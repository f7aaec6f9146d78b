// Exclusive ownership of files across processes: one ferryd per data directory, and no file
// (disk, staging area, mirror target) served by two ferryds at once, even when two data
// directories name the same file by different paths.
//
// The lock is flock(LOCK_EX | LOCK_NB) on a descriptor this module opens and keeps: it belongs
// to the process, is dropped by the kernel when the process dies (kill -9 included), and does
// not interfere with the fcntl locks qemu takes. flock is held per open file description, so a
// second open of the same file in this process would conflict with the first: the table below
// keys locks by (device, inode) and counts holders, so one process may open a file as often as
// it likes while every other process is refused. (libuv opens every file close-on-exec, so a
// child process never inherits a lock.)
//
// Invariants:
//   L1  A file is locked by at most one process: take() throws PATH_LOCKED, having changed
//       nothing, when another process holds it.
//   L2  Within the process, a lock lives while any holder has not released it, and its
//       descriptor is closed with the last release (asserted: the count never goes below 0).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { FerryError, fromSystemError } from '../errors.js';
import { lockExclusive } from './native-io.js';

interface Held {
  fd: number;
  holders: number;
}

/** Locks held by this process, by "dev:ino". Bounded by the files the process has open. */
const held = new Map<string, Held>();

/** One holder's share of a lock; release() is idempotent. */
export interface FileLock {
  release(): void;
}

/**
 * Takes (or shares, within this process) the exclusive lock on the file `st` describes,
 * opened at `path`. `what` names the file in the refusal ("staging area", "disk", ...).
 */
export function lockFile(path: string, st: fs.Stats, what: string): FileLock {
  const key = `${st.dev}:${st.ino}`;
  let h = held.get(key);
  if (!h) {
    let fd: number;
    try {
      fd = fs.openSync(path, fs.constants.O_RDONLY);
    } catch (err) {
      throw fromSystemError(err, `lock ${path}`);
    }
    try {
      const again = fs.fstatSync(fd);
      // The path must still name the file the caller opened (not replaced in between).
      if (again.dev !== st.dev || again.ino !== st.ino) throw new FerryError('PATH_LOCKED', `${path} was replaced while being opened`);
      lockExclusive(fd);
    } catch (err) {
      fs.closeSync(fd);
      if ((err as NodeJS.ErrnoException).code === 'EWOULDBLOCK') {
        throw new FerryError('PATH_LOCKED', `${what} ${path} is in use by another process (another ferryd serves it)`, undefined, { cause: err });
      }
      throw err instanceof FerryError ? err : fromSystemError(err, `lock ${path}`);
    }
    h = { fd, holders: 0 };
    held.set(key, h);
  }
  h.holders++;
  const lock = h;
  let released = false;
  return {
    release(): void {
      if (released) return;
      released = true;
      lock.holders--;
      assert.ok(lock.holders >= 0, 'a file lock is released at most once per holder (L2)');
      if (lock.holders === 0) {
        held.delete(key);
        fs.closeSync(lock.fd);
      }
    },
  };
}

/** Opens (creating it, 0600) and locks a lock file, e.g. a data directory's `lock`. */
export function lockPath(path: string, what: string): FileLock {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_CREAT, 0o600);
  } catch (err) {
    throw fromSystemError(err, `lock ${path}`);
  }
  try {
    return lockFile(path, fs.fstatSync(fd), what);
  } finally {
    fs.closeSync(fd);
  }
}
