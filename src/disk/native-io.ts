// Typed access to the ferry_io addon (native/ferry_io.c): fallocate modes,
// block-device discard/zero-out ioctls, SEEK_DATA/SEEK_HOLE, read-ahead, and reads
// served only from the page cache (inline, no thread-pool hop), and batches of writes
// done in order by one thread-pool job, an exclusive advisory file lock, and a datagram to a
// unix socket (systemd's readiness notification).
import { createRequire } from 'node:module';
import path from 'node:path';
import { packageRoot } from '../package-root.js';

interface Addon {
  space(fd: number, op: number, offset: number, length: number, cb: (err: NodeJS.ErrnoException | null) => void): void;
  seek(fd: number, offset: number, which: number): number;
  willNeed(fd: number, offset: number, length: number): void;
  dontNeed(fd: number, offset: number, length: number): void;
  cachedPages(fd: number, offset: number, length: number): number;
  /** Absent from an addon built before it existed: then every read goes to the pool. */
  readCached?(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number;
  writeBatch(fd: number | number[], buffers: Buffer[], offsets: number[], cb: (err: NodeJS.ErrnoException | null) => void): void;
  lockExclusive(fd: number): void;
  notify(socketPath: string, message: string): void;
}

const addon = createRequire(import.meta.url)(path.join(packageRoot, 'build', 'Release', 'ferry_io.node')) as Addon;

export const SpaceOp = { allocate: 0, punchHole: 1, zeroRange: 2, blkDiscard: 3, blkZeroOut: 4 } as const;
export type SpaceOpValue = (typeof SpaceOp)[keyof typeof SpaceOp];

/** fallocate()/ioctl on the thread pool. Rejects with the errno code (EOPNOTSUPP when the file system lacks the mode). */
export function space(fd: number, op: SpaceOpValue, offset: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => addon.space(fd, op, offset, length, (err) => (err ? reject(err) : resolve())));
}

/** Next offset >= `offset` holding data, or -1 when only a hole follows. */
export function seekData(fd: number, offset: number): number {
  return addon.seek(fd, offset, 0);
}

/** Next offset >= `offset` that starts a hole (the end of file counts as one), or -1 past the end. */
export function seekHole(fd: number, offset: number): number {
  return addon.seek(fd, offset, 1);
}

/** Size of a file or block device (lseek to its end; fstat reports 0 for block devices). */
export function deviceSize(fd: number): number {
  return addon.seek(fd, 0, 2);
}

export function willNeed(fd: number, offset: number, length: number): void {
  addon.willNeed(fd, offset, length);
}

/** The range's pages are not needed again: clean ones leave the page cache (dirty ones are written back first). */
export function dontNeed(fd: number, offset: number, length: number): void {
  addon.dontNeed(fd, offset, length);
}

/** Pages of the range in the page cache, or -1 where the kernel cannot tell (cachestat(2), Linux 6.5). */
export function cachedPages(fd: number, offset: number, length: number): number {
  return addon.cachedPages(fd, offset, length);
}

/**
 * Reads what the page cache holds of [position, position+length) into `buf` at `bufOffset`
 * without waiting for the device: the bytes read (possibly fewer; 0 at end of file), or -1
 * when nothing could be read that way (not cached, or any error: the caller reads on the pool).
 */
export const readCached: (fd: number, buf: Buffer, bufOffset: number, length: number, position: number) => number =
  typeof addon.readCached === 'function' ? addon.readCached.bind(addon) : () => -1;

/** Most buffers in one writeBatch call (the addon refuses more). */
export const WRITE_BATCH_BUFFERS_MAX = 4096;

/**
 * Writes each buffer whole at its offset, in order (a later buffer over an earlier one wins),
 * as one job on the thread pool: runs of buffers that follow each other on the device go as one
 * pwritev. Rejects with the errno code of the first write that fails (those after it are not written).
 * With one descriptor per buffer (a consistency group's members), buffer i goes to fd[i], still
 * in order across all of them.
 */
export function writeBatch(fd: number | number[], buffers: Buffer[], offsets: number[]): Promise<void> {
  return new Promise((resolve, reject) => addon.writeBatch(fd, buffers, offsets, (err) => (err ? reject(err) : resolve())));
}

/** flock(LOCK_EX | LOCK_NB) on `fd`; throws an error with code EWOULDBLOCK when another open file holds the lock. */
export function lockExclusive(fd: number): void {
  addon.lockExclusive(fd);
}

/** Sends `message` as one datagram to the unix socket `socketPath` ('@' first: abstract). */
export function notifySocket(socketPath: string, message: string): void {
  addon.notify(socketPath, message);
}
