// The disk layer: a BlockDevice is one open image file or block device, addressed by
// byte offset, with the primitives the NBD commands map onto (read, write, durable
// sync, discard, zeroing, allocation map, read-ahead). It knows nothing of disks'
// names, journals or mirrors: the volume layer above it adds those. Every call checks
// its range against the device's fixed size, so nothing above can write past the end.
// Small reads are served inline when the page cache holds them, and small client writes
// (writeFrom) run inline while the kernel takes them without waiting; everything else
// runs on the libuv thread pool. An open device holds the file's process lock (file-lock.ts):
// no second ferryd can open it while this one does.
import fs from 'node:fs';
import assert from 'node:assert/strict';
import { FerryError, fromSystemError } from '../errors.js';
import { SpaceOp, WRITE_BATCH_BUFFERS_MAX, cachedPages, deviceSize, dontNeed, readCached, seekData, seekHole, space, willNeed, writeBatch } from './native-io.js';
import { SyncBatcher } from './sync-batcher.js';
import { lockFile, type FileLock } from './file-lock.js';
import type { Store } from './store.js';

/** base:allocation flags of an extent (doc/proto.md, "base:allocation"). */
export const ExtentFlag = { HOLE: 1, ZERO: 2 } as const;

export interface Extent {
  offset: number;
  length: number;
  /** 0 for data, HOLE|ZERO for an unallocated range, ZERO for allocated zeroes. */
  flags: number;
}

export type DeviceKind = 'file' | 'block';

/** Largest single zero-fill write when the file system cannot zero a range itself. */
const zeroFillChunkBytesMax = 1024 * 1024;

/**
 * Largest read first tried inline from the page cache: copying this much blocks the event
 * loop for some tens of microseconds at most; larger reads always go to the thread pool.
 */
const cachedReadBytesMax = 256 * 1024;

/**
 * Client writes up to this size (writeFrom) are written inline on the event loop: a pwrite
 * into the page cache costs a few microseconds, less than a hop through the thread pool.
 */
const inlineWriteBytesMax = 64 * 1024;
/**
 * writeSoon() (a staging area's group-commit batch) is taken inline up to this size: a batch
 * of 32 4 KiB records is 133 KiB, and a thread-pool hop for it leaves the event loop idle
 * until it returns, with nothing else to do (the clients wait for that batch).
 */
const inlineSoonBytesMax = 256 * 1024;
/**
 * A sync runs inline (fdatasync on the event loop, no thread-pool round trip, which costs
 * more than the sync itself at queue depth 1 here) when at most this much was written
 * since the last sync began, so that it is short, and while its own stall budget allows
 * (an InlineWriteGuard of its own: slow syncs do not send writes to the pool, nor the other
 * way round). Zeroing and trimming change allocation (file system metadata): the next sync
 * goes to the pool.
 */
const inlineSyncBytesMax = 256 * 1024;
/**
 * When inline writes must go back to the thread pool (see InlineWriteGuard). A write slower
 * than stallMs means the kernel made the writer wait (dirty-page throttling, a journal
 * commit, a slow file system) or the thread lost its CPU; its whole time is charged to a
 * budget of stall time that refills at refillMsPerS up to budgetMs. When the budget is
 * spent, writes go to the pool until it has refilled to half (so the longer the stalls,
 * the longer the backoff; at most backoffMsMax). The event loop thus loses at most about
 * budgetMs plus one stall at once and refillMsPerS per second (1 %) over time to writes the
 * kernel holds, while the occasional 2–6 ms stall of a busy machine (which with a single
 * 5 ms threshold sent QD1 writes to the pool for a second or more) costs nothing.
 */
export const inlineWritePolicy = {
  stallMs: 2,
  budgetMs: 30,
  refillMsPerS: 10,
  backoffMsMax: 60_000,
} as const;

/** The stall budget of inline writes (see inlineWritePolicy); times in ms on one monotonic clock. */
export class InlineWriteGuard {
  private budgetMs: number = inlineWritePolicy.budgetMs;
  private budgetAtMs = 0;
  /** Writes go to the pool until this time; 0: inline. */
  private poolUntilMs = 0;

  /** `clockMs`: the clock of record()'s `nowMs`, read only while backed off. */
  constructor(private readonly clockMs: () => number = () => performance.now()) {}

  /** Whether a write may run inline now. */
  allowed(): boolean {
    if (this.poolUntilMs === 0) return true;
    if (this.clockMs() < this.poolUntilMs) return false;
    this.poolUntilMs = 0;
    return true;
  }

  /** Accounts one inline write of `elapsedMs` that ended at `nowMs`. */
  record(elapsedMs: number, nowMs: number): void {
    if (elapsedMs <= inlineWritePolicy.stallMs) return;
    const p = inlineWritePolicy;
    const floorMs = -((p.backoffMsMax * p.refillMsPerS) / 1000) + p.budgetMs / 2;
    this.budgetMs = Math.max(floorMs, this.refilled(nowMs) - elapsedMs);
    this.budgetAtMs = nowMs;
    if (this.budgetMs < 0) this.poolUntilMs = nowMs + ((p.budgetMs / 2 - this.budgetMs) * 1000) / p.refillMsPerS;
  }

  private refilled(nowMs: number): number {
    const p = inlineWritePolicy;
    return Math.min(p.budgetMs, this.budgetMs + ((nowMs - this.budgetAtMs) * p.refillMsPerS) / 1000);
  }

  /** Whether writes are on the pool at `nowMs` (for tests and stats). */
  backedOff(nowMs: number): boolean {
    return this.poolUntilMs !== 0 && nowMs < this.poolUntilMs;
  }
}

export class BlockDevice implements Store {
  readonly path: string;
  readonly kind: DeviceKind;
  readonly size: number;
  readonly readOnly: boolean;
  private fd: number;
  private readonly lock: FileLock;
  private readonly syncer: SyncBatcher;
  private closed = false;
  /** When small writes stop running inline (see inlineWritePolicy). */
  private readonly inlineGuard = new InlineWriteGuard();
  /** When syncs stop running inline (see inlineSyncBytesMax). */
  private readonly syncGuard = new InlineWriteGuard();
  /** Bytes written since the last sync began (Infinity after a zero or trim): see inlineSyncBytesMax. */
  private unsyncedBytes = 0;

  private constructor(path: string, fd: number, lock: FileLock, kind: DeviceKind, size: number, readOnly: boolean) {
    this.path = path;
    this.fd = fd;
    this.lock = lock;
    this.kind = kind;
    this.size = size;
    this.readOnly = readOnly;
    this.syncer = new SyncBatcher(() => this.fdatasync());
  }

  /**
   * Opens an existing regular file or block device. The device is never created, truncated or
   * extended here. Throws PATH_LOCKED when another process (another ferryd) has it open.
   */
  static open(path: string, opts: { readOnly?: boolean } = {}): BlockDevice {
    const readOnly = opts.readOnly ?? false;
    let fd: number;
    try {
      fd = fs.openSync(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
    } catch (err) {
      throw fromSystemError(err, `open ${path}`);
    }
    try {
      const st = fs.fstatSync(fd);
      let kind: DeviceKind;
      if (st.isFile()) kind = 'file';
      else if (st.isBlockDevice()) kind = 'block';
      else throw new FerryError('INVALID_PATH', `${path} is neither a regular file nor a block device`);
      const size = kind === 'file' ? st.size : deviceSize(fd);
      const lock = lockFile(path, st, kind === 'file' ? 'file' : 'block device');
      return new BlockDevice(path, fd, lock, kind, size, readOnly);
    } catch (err) {
      fs.closeSync(fd);
      throw fromSystemError(err, `open ${path}`);
    }
  }

  private check(offset: number, length: number): void {
    if (this.closed) throw new FerryError('DISK_UNAVAILABLE', `${this.path} is closed`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new FerryError('OUT_OF_RANGE', `range ${offset}+${length} is outside ${this.path} (size ${this.size})`);
    }
  }

  private checkWritable(offset: number, length: number): void {
    this.check(offset, length);
    if (this.readOnly) throw new FerryError('READ_ONLY', `${this.path} is open read-only`);
  }

  /** Reads exactly `length` bytes at `offset` into `buf` at `bufOffset`. */
  read(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.check(offset, length);
    return new Promise((resolve, reject) => this.readFully(buf, bufOffset, length, offset, (err) => (err ? reject(err) : resolve())));
  }

  /**
   * read() with a callback, for the NBD data path (no promise per request). Calls `done`
   * exactly once, synchronously when the range is in the page cache, else from the pool;
   * a range error is passed to `done` too.
   */
  readTo(buf: Buffer, bufOffset: number, length: number, offset: number, done: (err: Error | null) => void): void {
    try {
      this.check(offset, length);
    } catch (err) {
      return done(err as Error);
    }
    this.readFully(buf, bufOffset, length, offset, done);
  }

  /** Writes `length` bytes of `buf` from `bufOffset` at `offset`. Not durable until sync(). */
  write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.checkWritable(offset, length);
    return new Promise((resolve, reject) => this.writeFully(buf, bufOffset, length, offset, (err) => (err ? reject(err) : resolve())));
  }

  /**
   * write() with a callback, for the NBD data path (see readTo). Small writes are done
   * inline, so `done` may be called synchronously; larger ones (or all of them while inline
   * writes are backed off) go to the thread pool.
   */
  writeFrom(buf: Buffer, bufOffset: number, length: number, offset: number, done: (err: Error | null) => void): void {
    this.writeInlineUpTo(inlineWriteBytesMax, buf, bufOffset, length, offset, done);
  }

  /**
   * write() that takes writes up to 256 KiB inline (no thread-pool hop and wake-up, while the
   * device answers quickly): for a staging area's group-commit batches, which are written
   * into the page cache and made durable by a later sync().
   */
  writeSoon(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    return new Promise((resolve, reject) => this.writeInlineUpTo(inlineSoonBytesMax, buf, bufOffset, length, offset, (err) => (err ? reject(err) : resolve())));
  }

  /** A write done inline when it is at most `inlineMax` bytes and the stall budget allows, else on the pool. */
  private writeInlineUpTo(inlineMax: number, buf: Buffer, bufOffset: number, length: number, offset: number, done: (err: Error | null) => void): void {
    try {
      this.checkWritable(offset, length);
    } catch (err) {
      return done(err as Error);
    }
    if (length > 0 && length <= inlineMax && this.inlineGuard.allowed()) this.writeInline(buf, bufOffset, length, offset, done);
    else this.writeFully(buf, bufOffset, length, offset, done);
  }

  /**
   * Writes each buffer at its offset, in order, as one thread-pool job (see native-io
   * writeBatch): what a journal consumer applies at once. Not durable until sync().
   */
  writeBatch(buffers: Buffer[], offsets: number[]): Promise<void> {
    return BlockDevice.batch(this, buffers, offsets);
  }

  /**
   * writeBatch() across devices: buffer i at offsets[i] of devices[i], all in the given order,
   * as one thread-pool job (a consistency group's records, applied to its members in the
   * group's order: a kill leaves a prefix of that order on the members, not one per member).
   */
  static writeBatchAcross(devices: BlockDevice[], buffers: Buffer[], offsets: number[]): Promise<void> {
    assert.equal(devices.length, buffers.length, 'one device per buffer');
    return BlockDevice.batch(devices, buffers, offsets);
  }

  /** writeBatch() on one device (its one descriptor), or across devices (one descriptor per buffer), in jobs of at most WRITE_BATCH_BUFFERS_MAX. */
  private static async batch(target: BlockDevice | BlockDevice[], buffers: Buffer[], offsets: number[]): Promise<void> {
    assert.equal(buffers.length, offsets.length, 'one offset per buffer');
    const device = (i: number): BlockDevice => (Array.isArray(target) ? target[i]! : target);
    for (let i = 0; i < buffers.length; i++) device(i).checkWritable(offsets[i]!, buffers[i]!.length);
    for (let at = 0; at < buffers.length; at += WRITE_BATCH_BUFFERS_MAX) {
      const end = Math.min(buffers.length, at + WRITE_BATCH_BUFFERS_MAX);
      for (let i = at; i < end; i++) device(i).unsyncedBytes += buffers[i]!.length;
      const fd = Array.isArray(target) ? target.slice(at, end).map((d) => d.fd) : target.fd;
      try {
        await writeBatch(fd, buffers.slice(at, end), offsets.slice(at, end));
      } catch (err) {
        const paths = Array.isArray(target) ? [...new Set(target.slice(at, end).map((d) => d.path))].join(', ') : target.path;
        throw fromSystemError(err, `write ${paths}`);
      }
    }
  }

  private writeInline(buf: Buffer, bufOffset: number, length: number, position: number, done: (err: Error | null) => void): void {
    this.unsyncedBytes += length;
    const started = performance.now();
    let written = 0;
    try {
      while (written < length) written += fs.writeSync(this.fd, buf, bufOffset + written, length - written, position + written);
    } catch (err) {
      return done(fromSystemError(err, `write ${this.path}`));
    }
    const now = performance.now();
    this.inlineGuard.record(now - started, now);
    done(null);
  }

  /**
   * Small reads are first tried inline from the page cache (preadv2 RWF_NOWAIT: a copy of
   * cached pages, never a wait for the device); the rest, or all when not cached, is read
   * on the thread pool. Bytes past the end of a file that shrank underneath us read as zeroes.
   */
  private readFully(buf: Buffer, bufOffset: number, length: number, position: number, done: (err: Error | null) => void): void {
    const fd = this.fd;
    const path = this.path;
    let filled = 0;
    if (length <= cachedReadBytesMax) {
      const n = readCached(fd, buf, bufOffset, length, position);
      if (n === 0 && length > 0) {
        buf.fill(0, bufOffset, bufOffset + length);
        return done(null);
      }
      if (n > 0) filled = n;
    }
    const step = (): void => {
      if (filled === length) return done(null);
      fs.read(fd, buf, bufOffset + filled, length - filled, position + filled, (err, n) => {
        if (err) return done(fromSystemError(err, `read ${path}`));
        if (n === 0) {
          buf.fill(0, bufOffset + filled, bufOffset + length);
          return done(null);
        }
        filled += n;
        step();
      });
    };
    step();
  }

  private writeFully(buf: Buffer, bufOffset: number, length: number, position: number, done: (err: Error | null) => void): void {
    this.unsyncedBytes += length;
    const fd = this.fd;
    const path = this.path;
    let written = 0;
    const step = (): void => {
      fs.write(fd, buf, bufOffset + written, length - written, position + written, (err, n) => {
        if (err) return done(fromSystemError(err, `write ${path}`));
        written += n;
        if (written < length) step();
        else done(null);
      });
    };
    if (length === 0) process.nextTick(done, null);
    else step();
  }

  /**
   * Makes every write that completed before this call durable. Concurrent callers
   * share one fdatasync (group commit): a caller arriving while one runs waits for the next.
   */
  sync(): Promise<void> {
    if (this.closed) return Promise.reject(new FerryError('DISK_UNAVAILABLE', `${this.path} is closed`));
    if (this.readOnly) return Promise.resolve();
    return this.syncer.sync().catch((err) => {
      throw fromSystemError(err, `fdatasync ${this.path}`);
    });
  }

  /** One fdatasync for the SyncBatcher: inline when little was written and the stall budget allows, else on the pool. */
  private fdatasync(): Promise<void> {
    const small = this.unsyncedBytes <= inlineSyncBytesMax;
    this.unsyncedBytes = 0;
    if (!small || !this.syncGuard.allowed()) return fdatasync(this.fd);
    const started = performance.now();
    try {
      fs.fdatasyncSync(this.fd);
    } catch (err) {
      return Promise.reject(err);
    }
    const now = performance.now();
    this.syncGuard.record(now - started, now);
    return Promise.resolve();
  }

  /** Discards a range (advisory: the range then reads as zeroes on files, unspecified on devices). */
  async trim(offset: number, length: number): Promise<void> {
    this.checkWritable(offset, length);
    if (length === 0) return;
    this.unsyncedBytes = Infinity;
    try {
      await space(this.fd, this.kind === 'file' ? SpaceOp.punchHole : SpaceOp.blkDiscard, offset, length);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Discard is a hint: a device or file system without it loses nothing by ignoring it.
      if (code !== 'EOPNOTSUPP' && code !== 'ENOTTY' && code !== 'EINVAL') throw fromSystemError(err, `trim ${this.path}`);
    }
  }

  /**
   * Makes a range read as zeroes. `mayDeallocate` allows a hole (NBD without NO_HOLE);
   * `fastOnly` fails with NOT_SUPPORTED instead of falling back to writing zero buffers.
   */
  async zero(offset: number, length: number, mayDeallocate: boolean, fastOnly: boolean): Promise<void> {
    this.checkWritable(offset, length);
    if (length === 0) return;
    const ops = this.kind === 'file' ? (mayDeallocate ? [SpaceOp.punchHole, SpaceOp.zeroRange] : [SpaceOp.zeroRange]) : [SpaceOp.blkZeroOut];
    this.unsyncedBytes = Infinity;
    for (const op of ops) {
      try {
        await space(this.fd, op, offset, length);
        return;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EOPNOTSUPP' && code !== 'ENOTTY' && code !== 'EINVAL' && code !== 'ENOSYS') throw fromSystemError(err, `zero ${this.path}`);
      }
    }
    if (fastOnly) throw new FerryError('NOT_SUPPORTED', `${this.path} cannot zero a range quickly`);
    const zeroes = Buffer.alloc(Math.min(length, zeroFillChunkBytesMax));
    for (let done = 0; done < length; ) {
      const n = Math.min(zeroes.length, length - done);
      await this.write(zeroes, 0, n, offset + done);
      done += n;
    }
  }

  /**
   * Allocation map of [offset, offset+length), at most `extentsMax` extents, merged and in
   * order; it may end before offset+length when the limit is reached. Block devices report data.
   */
  extents(offset: number, length: number, extentsMax: number): Extent[] {
    this.check(offset, length);
    assert.ok(extentsMax >= 1);
    const end = offset + length;
    if (this.kind === 'block' || length === 0) return length === 0 ? [] : [{ offset, length, flags: 0 }];
    const out: Extent[] = [];
    let pos = offset;
    try {
      while (pos < end && out.length < extentsMax) {
        let dataAt = seekData(this.fd, pos);
        if (dataAt < 0 || dataAt > end) dataAt = end;
        if (dataAt > pos) {
          out.push({ offset: pos, length: dataAt - pos, flags: ExtentFlag.HOLE | ExtentFlag.ZERO });
          pos = dataAt;
          continue;
        }
        let holeAt = seekHole(this.fd, pos);
        if (holeAt < 0 || holeAt > end) holeAt = end;
        assert.ok(holeAt > pos, 'SEEK_HOLE must advance past data');
        out.push({ offset: pos, length: holeAt - pos, flags: 0 });
        pos = holeAt;
      }
    } catch (err) {
      throw fromSystemError(err, `allocation map of ${this.path}`);
    }
    return out;
  }

  /** Starts read-ahead of a range (NBD_CMD_CACHE); a hint, so failures are ignored. */
  prefetch(offset: number, length: number): void {
    this.check(offset, length);
    try {
      willNeed(this.fd, offset, length);
    } catch {
      // Read-ahead is advisory.
    }
  }

  /** Pages of the range in the page cache; -1 where the kernel cannot tell. */
  cachedPages(offset: number, length: number): number {
    this.check(offset, length);
    try {
      return cachedPages(this.fd, offset, length);
    } catch {
      return -1;
    }
  }

  /** The range's pages are not needed again (a hint, so failures are ignored). */
  dropCache(offset: number, length: number): void {
    this.check(offset, length);
    try {
      dontNeed(this.fd, offset, length);
    } catch {
      // Advisory, as read-ahead is.
    }
  }

  /** False once the path no longer names the open file (it was removed or replaced). */
  stillAtPath(): boolean {
    if (this.closed) return false;
    try {
      const open = fs.fstatSync(this.fd);
      const named = fs.statSync(this.path);
      return open.ino === named.ino && open.dev === named.dev;
    } catch {
      return false;
    }
  }

  /** Syncs and closes. Further calls fail with DISK_UNAVAILABLE. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (!this.readOnly) await this.sync().catch(() => undefined);
    this.closed = true;
    fs.closeSync(this.fd);
    this.fd = -1;
    this.lock.release();
  }
}

function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}
