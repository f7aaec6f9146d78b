// The mirror site's undo log: the image a replica had before a resync began, kept so the
// site can fall back to it if the primary site is lost mid-resync. A resync rewrites the
// replica out of order (chunks copied as they come, records streamed at the same time),
// so until it completes the replica is no image the primary site ever had. Before the
// first write to each granule of the disk during the resync, the granule's old contents
// are appended here and made durable; a rollback writes them back, and the disk is again
// exactly the image it held when the log began (the last consistent one). The log lives
// in its own file beside the replica's staging area (`<data>/replica-staging/DISK.undo`);
// it holds each granule at most once, so it never grows beyond the disk's size, and the
// memory it needs is one bit per granule.
//
// Invariants (asserted where entries are written and read back):
//   U1  While a log exists for a replica, every write, zero and trim of the replica's disk
//       goes through UndoGuardStore (undo-guard-store.ts), which is installed before the
//       staging area replays at start.
//   U2  A granule's old contents are durable in the log before the first write to that
//       granule begins (protect() resolves only after the log's fdatasync).
//   U3  A granule is saved at most once per log, so the saved contents are the granule as it
//       was when the log began: nothing wrote it before its entry was durable (U2).
//   U4  Entries are appended in order and only a synced batch is relied on; at open the log
//       is cut after its last valid entry (a torn batch was never relied on, by U2).
//   U5  The log is deleted only after the disk is synced, and only once the replica is
//       recorded consistent again (resync complete) or a rollback has written back every entry.
//   U6  A rollback writes entries back newest first; it is idempotent, so a crash during it
//       leaves the log marked ROLLING_BACK and the next start repeats it.
//
// On-disk format: a 4 KiB header, then fixed-size entries (a 32-byte entry header and
// one granule of data, the disk's short last granule padded), so entry i is at a known
// offset and a rollback needs no index in memory.
//   header: magic "FERRYUND" | u32 version | u32 granuleBytes | u64 diskBytes | u64 baseSeq
//           | u32 state | u32 logId | ... | u32 crc32c of the first 4092 bytes
//   entry:  u32 magic | u32 logId | u64 granule | u32 length | u32 ordinal | u32 crc32c(data)
//           | u32 crc32c(header bytes 0..27) | data (granuleBytes)
import assert from 'node:assert';
import { randomInt } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { crc32c } from '@node-rs/crc32';
import type { DiskStore } from '../disk/store.js';
import { FerryError } from '../errors.js';

export const UNDO_GRANULE_BYTES = 64 * 1024;
const headerBytes = 4096;
const entryHeaderBytes = 32;
const magic = Buffer.from('FERRYUND');
const entryMagic = 0x444e5546; // "FUND"
const version = 1;
/** Old contents gathered into one append and one fdatasync at most (bounds the memory of a batch). */
const batchBytesMax = 16 * 1024 * 1024;
/** Entries read back at once during open and rollback. */
const readEntriesMax = 64;

export const UndoState = { ACTIVE: 0, ROLLING_BACK: 1 } as const;
export type UndoStateValue = (typeof UndoState)[keyof typeof UndoState];

export interface UndoStats {
  /** The newest record of the image the log restores (the replica's position when it began). */
  baseSeq: number;
  state: 'active' | 'rolling-back';
  granules: number;
  bytes: number;
}

interface Batch {
  granules: number[];
  done: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class UndoLog {
  private readonly saved: Uint8Array;
  private readonly pending = new Map<number, Promise<void>>();
  private readonly queued: Batch[] = [];
  private flushing: Promise<void> | null = null;
  private failure: Error | null = null;
  private closed = false;

  private constructor(
    readonly file: string,
    private readonly fd: number,
    private readonly disk: DiskStore,
    readonly diskBytes: number,
    readonly baseSeq: number,
    private stateValue: UndoStateValue,
    private readonly logId: number,
    private entries: number,
  ) {
    this.saved = new Uint8Array(Math.ceil(Math.ceil(diskBytes / UNDO_GRANULE_BYTES) / 8));
  }

  /** Starts a log for `disk` (whose current contents are the image to keep): written and synced before it returns. */
  static create(file: string, disk: DiskStore, diskBytes: number, baseSeq: number): UndoLog {
    fs.rmSync(file, { force: true });
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    const log = new UndoLog(file, fd, disk, diskBytes, baseSeq, UndoState.ACTIVE, randomInt(1, 0xffffffff), 0);
    try {
      log.writeHeader();
      syncDir(file);
    } catch (err) {
      fs.closeSync(fd);
      fs.rmSync(file, { force: true });
      throw err;
    }
    return log;
  }

  /** Opens the log left by an earlier run: reads its entries back and cuts a torn tail (U4). */
  static open(file: string, disk: DiskStore, diskBytes: number): UndoLog {
    const fd = fs.openSync(file, fs.constants.O_RDWR);
    try {
      const h = Buffer.alloc(headerBytes);
      fs.readSync(fd, h, 0, headerBytes, 0);
      if (!h.subarray(0, 8).equals(magic) || h.readUInt32LE(headerBytes - 4) !== crc32c(h.subarray(0, headerBytes - 4))) {
        throw new FerryError('UNDO_LOG_CORRUPT', `${file} is not a valid undo log`);
      }
      if (h.readUInt32LE(8) !== version || h.readUInt32LE(12) !== UNDO_GRANULE_BYTES) throw new FerryError('UNDO_LOG_CORRUPT', `${file}: unsupported undo log version`);
      const loggedBytes = Number(h.readBigUInt64LE(16));
      if (loggedBytes !== diskBytes) throw new FerryError('UNDO_LOG_CORRUPT', `${file} was made for a disk of ${loggedBytes} bytes, not ${diskBytes}`);
      const state = h.readUInt32LE(32) as UndoStateValue;
      assert.ok(state === UndoState.ACTIVE || state === UndoState.ROLLING_BACK, 'undo log state');
      const log = new UndoLog(file, fd, disk, diskBytes, Number(h.readBigUInt64LE(24)), state, h.readUInt32LE(36), 0);
      log.scan();
      return log;
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  get state(): UndoStateValue {
    return this.stateValue;
  }

  stats(): UndoStats {
    return { baseSeq: this.baseSeq, state: this.stateValue === UndoState.ACTIVE ? 'active' : 'rolling-back', granules: this.entries, bytes: headerBytes + this.entries * entrySize() };
  }

  isSaved(granule: number): boolean {
    return (this.saved[granule >> 3]! & (1 << (granule & 7))) !== 0;
  }

  /**
   * Resolves once every granule the range touches is saved (U2); null when they all are
   * already, so a write needs no await in the common case.
   */
  protect(offset: number, length: number): Promise<void> | null {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new FerryError('IO_ERROR', `undo log ${this.file} is closed`));
    if (this.stateValue !== UndoState.ACTIVE) return Promise.reject(new FerryError('DISK_BUSY', 'the replica is rolling back to its last consistent image'));
    if (length <= 0) return null;
    assert.ok(offset >= 0 && offset + length <= this.diskBytes, 'protected range within the disk');
    const first = Math.floor(offset / UNDO_GRANULE_BYTES);
    const last = Math.floor((offset + length - 1) / UNDO_GRANULE_BYTES);
    let waits: Promise<void>[] | null = null;
    for (let g = first; g <= last; g++) {
      if (this.isSaved(g)) continue;
      let p = this.pending.get(g);
      if (!p) {
        p = this.enqueue(g);
        this.pending.set(g, p);
      }
      (waits ??= []).push(p);
    }
    if (!waits) return null;
    return waits.length === 1 ? waits[0]! : Promise.all(waits).then(() => undefined);
  }

  private enqueue(granule: number): Promise<void> {
    let batch = this.queued[this.queued.length - 1];
    if (!batch || batch.granules.length * UNDO_GRANULE_BYTES >= batchBytesMax) {
      let resolve!: () => void;
      let reject!: (err: unknown) => void;
      const done = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      done.catch(() => undefined); // its waiters see the failure; nothing else must
      batch = { granules: [], done, resolve, reject };
      this.queued.push(batch);
      queueMicrotask(() => this.startFlush());
    }
    batch.granules.push(granule);
    return batch.done;
  }

  /** One batch at a time, in order: read old contents, append, fdatasync, then mark saved (U2, U4). */
  private startFlush(): void {
    if (this.flushing || this.queued.length === 0) return;
    const batch = this.queued.shift()!;
    this.flushing = this.flush(batch)
      .then(
        () => {
          for (const g of batch.granules) {
            this.saved[g >> 3]! |= 1 << (g & 7);
            this.pending.delete(g);
          }
          batch.resolve();
        },
        (err) => {
          // Nothing may write a granule whose old contents are not saved: its writers fail.
          // The batch's bytes are cut off (U4: no stale entry may follow the valid ones), so a
          // later attempt (space freed) appends cleanly; if even that fails, the log stops here.
          const e = new FerryError(isNoSpace(err) ? 'NO_SPACE' : 'IO_ERROR', `undo log ${this.file}: ${(err as Error).message}`);
          try {
            fs.ftruncateSync(this.fd, headerBytes + this.entries * entrySize());
          } catch (cut) {
            this.failure ??= new FerryError('IO_ERROR', `undo log ${this.file}: ${(err as Error).message}; cutting the failed append: ${(cut as Error).message}`);
          }
          for (const g of batch.granules) this.pending.delete(g);
          batch.reject(this.failure ?? e);
        },
      )
      .finally(() => {
        this.flushing = null;
        this.startFlush();
      });
  }

  private async flush(batch: Batch): Promise<void> {
    const size = entrySize();
    const buf = Buffer.alloc(batch.granules.length * size);
    let ordinal = this.entries;
    for (let i = 0; i < batch.granules.length; i++) {
      const g = batch.granules[i]!;
      assert.ok(!this.isSaved(g), 'a granule is saved once per log (U3)');
      const length = Math.min(UNDO_GRANULE_BYTES, this.diskBytes - g * UNDO_GRANULE_BYTES);
      const e = buf.subarray(i * size, (i + 1) * size);
      const data = e.subarray(entryHeaderBytes, entryHeaderBytes + length);
      await this.disk.read(data, 0, length, g * UNDO_GRANULE_BYTES);
      e.writeUInt32LE(entryMagic, 0);
      e.writeUInt32LE(this.logId, 4);
      e.writeBigUInt64LE(BigInt(g), 8);
      e.writeUInt32LE(length, 16);
      e.writeUInt32LE(ordinal++ >>> 0, 20);
      e.writeUInt32LE(crc32c(data), 24);
      e.writeUInt32LE(crc32c(e.subarray(0, 28)), 28);
    }
    const at = headerBytes + this.entries * size;
    await writeAll(this.fd, buf, at);
    await new Promise<void>((res, rej) => fs.fdatasync(this.fd, (err) => (err ? rej(err) : res())));
    this.entries += batch.granules.length;
  }

  /** Reads the entries back (at open): marks their granules saved, cuts the file after the last valid one (U4). */
  private scan(): void {
    const size = entrySize();
    const buf = Buffer.alloc(readEntriesMax * size);
    let n = 0;
    outer: for (;;) {
      const got = fs.readSync(this.fd, buf, 0, buf.length, headerBytes + n * size);
      const whole = Math.floor(got / size);
      for (let i = 0; i < whole; i++) {
        const g = this.checkEntry(buf.subarray(i * size, (i + 1) * size), n);
        if (g === null) break outer;
        this.saved[g >> 3]! |= 1 << (g & 7);
        n++;
      }
      if (whole < readEntriesMax) break;
    }
    this.entries = n;
    fs.ftruncateSync(this.fd, headerBytes + n * size);
    fs.fsyncSync(this.fd);
  }

  /** The granule of a valid entry with this ordinal, or null (end of the log). */
  private checkEntry(e: Buffer, ordinal: number): number | null {
    if (e.readUInt32LE(0) !== entryMagic || e.readUInt32LE(4) !== this.logId || e.readUInt32LE(28) !== crc32c(e.subarray(0, 28))) return null;
    if (e.readUInt32LE(20) !== ordinal >>> 0) return null;
    const g = Number(e.readBigUInt64LE(8));
    const length = e.readUInt32LE(16);
    if (g * UNDO_GRANULE_BYTES >= this.diskBytes || length !== Math.min(UNDO_GRANULE_BYTES, this.diskBytes - g * UNDO_GRANULE_BYTES)) return null;
    if (crc32c(e.subarray(entryHeaderBytes, entryHeaderBytes + length)) !== e.readUInt32LE(24)) return null;
    if (this.isSaved(g)) return null; // U3: a second entry for a granule is not ours
    return g;
  }

  /**
   * Writes every saved granule back, newest entry first (U6), and syncs the disk: it then
   * holds the image the log began with. Marks the log ROLLING_BACK first, so a crash here
   * is finished at the next start. `disk` is the raw disk (not the guard).
   */
  async rollback(): Promise<{ granules: number; bytes: number }> {
    assert.ok(this.pending.size === 0 && !this.flushing && this.queued.length === 0, 'no granule is being saved during a rollback');
    if (this.stateValue !== UndoState.ROLLING_BACK) {
      this.stateValue = UndoState.ROLLING_BACK;
      this.writeHeader();
    }
    const size = entrySize();
    const buf = Buffer.alloc(readEntriesMax * size);
    let bytes = 0;
    for (let end = this.entries; end > 0; ) {
      const start = Math.max(0, end - readEntriesMax);
      const want = (end - start) * size;
      const got = fs.readSync(this.fd, buf, 0, want, headerBytes + start * size);
      if (got !== want) throw new FerryError('IO_ERROR', `undo log ${this.file}: short read during rollback`);
      for (let i = end - start - 1; i >= 0; i--) {
        const e = buf.subarray(i * size, (i + 1) * size);
        const g = Number(e.readBigUInt64LE(8));
        const length = e.readUInt32LE(16);
        const data = e.subarray(entryHeaderBytes, entryHeaderBytes + length);
        // Entries were verified at open or written by this process; a change since is a disk fault.
        assert.equal(crc32c(data), e.readUInt32LE(24), 'undo entry read back intact (U6)');
        assert.equal(e.readUInt32LE(20), (start + i) >>> 0, 'undo entries read back in order');
        await this.disk.write(data, 0, length, g * UNDO_GRANULE_BYTES);
        bytes += length;
      }
      end = start;
    }
    await this.disk.sync();
    return { granules: this.entries, bytes };
  }

  /** Closes and deletes the log; the caller has synced the disk and recorded why (U5). */
  async remove(): Promise<void> {
    await this.close();
    fs.rmSync(this.file, { force: true });
    syncDir(this.file);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    while (this.flushing) await this.flushing.catch(() => undefined);
    fs.closeSync(this.fd);
  }

  private writeHeader(): void {
    const h = Buffer.alloc(headerBytes);
    magic.copy(h, 0);
    h.writeUInt32LE(version, 8);
    h.writeUInt32LE(UNDO_GRANULE_BYTES, 12);
    h.writeBigUInt64LE(BigInt(this.diskBytes), 16);
    h.writeBigUInt64LE(BigInt(this.baseSeq), 24);
    h.writeUInt32LE(this.stateValue, 32);
    h.writeUInt32LE(this.logId, 36);
    h.writeUInt32LE(crc32c(h.subarray(0, headerBytes - 4)), headerBytes - 4);
    fs.writeSync(this.fd, h, 0, headerBytes, 0);
    fs.fsyncSync(this.fd);
  }
}

function isNoSpace(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.code === 'ENOSPC' || (err as NodeJS.ErrnoException)?.code === 'EDQUOT';
}

function entrySize(): number {
  return entryHeaderBytes + UNDO_GRANULE_BYTES;
}

async function writeAll(fd: number, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await new Promise<number>((res, rej) => fs.write(fd, buf, done, buf.length - done, position + done, (err, written) => (err ? rej(err) : res(written))));
    assert.ok(n > 0, 'undo log write made progress');
    done += n;
  }
}

function syncDir(file: string): void {
  const fd = fs.openSync(path.dirname(file), 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
